//! A history checker for the mesh under change: writers create orders and move them along their
//! lifecycle through whichever gateways are live, reading their own orders back as they go, while
//! the test scales, kills and restarts nodes. It checks, as it runs and at the end:
//!
//! - every acknowledged create is present exactly once, and no create (acknowledged or not)
//!   appears twice: each create carries an idempotency key and is retried with it until it is
//!   acknowledged, so a retry of a create that was applied but whose answer was lost cannot
//!   duplicate it;
//! - every order has its latest acknowledged status (or, if the last update was cut off unanswered
//!   when the writers stopped, possibly that update's status);
//! - per order, reads never go back in time, and a read after an acknowledged update sees it
//!   (read-your-writes through any gateway).
//!
//! Failed attempts are expected while nodes die; they are retried with a fresh client proof.

use crate::Credentials;
use mesh_node::access::policy::{Method, Role};
use mesh_node::security::proof::Signer;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_proto::v1::{
    GetOrderRequest, ListCustomerOrdersRequest, OrderStatus, UpdateOrderStatusRequest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::transport::Channel;

/// The lifecycle the writers walk (statuses `oms` may set after PLACED).
const PATH: [OrderStatus; 5] = [
    OrderStatus::Placed,
    OrderStatus::Packed,
    OrderStatus::Shipped,
    OrderStatus::OutForDelivery,
    OrderStatus::Delivered,
];

fn step(status: i32) -> usize {
    PATH.iter()
        .position(|s| *s as i32 == status)
        .unwrap_or(usize::MAX)
}

/// The gateways clients may use; the test updates it as nodes join and leave.
pub type Gateways = Arc<RwLock<Vec<SocketAddr>>>;

#[derive(Debug, Clone)]
struct Tracked {
    order_id: String,
    customer_id: String,
    /// Index in `PATH` of the last acknowledged status.
    acked: usize,
    /// A status whose update was sent but never acknowledged (only when the writers stop).
    maybe: Option<usize>,
    last_read: usize,
}

#[derive(Debug, Default)]
struct WriterLog {
    orders: Vec<Tracked>,
    /// Per customer: acknowledged creates, and creates cut off unanswered.
    creates: BTreeMap<String, (usize, usize)>,
    violations: Vec<String>,
}

/// Counters for the test's report.
#[derive(Debug, Default)]
pub struct Counts {
    pub acked: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub reads: AtomicU64,
    /// Why attempts failed: gRPC code and message (digits masked), or `connect`, with counts.
    pub why: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counts {
    /// One failed attempt, and why.
    fn failed(&self, why: String) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        *self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }

    fn failed_status(&self, s: &tonic::Status) {
        self.failed(failure_shape(s));
    }
}

/// A failed call's code and message with its numbers masked (partitions, milliseconds) and node
/// ids (`n3`) kept: failures of one kind group under one key. Messages name fields, partitions and
/// nodes, never PII (see the node's `error.rs`).
pub fn failure_shape(s: &tonic::Status) -> String {
    let message: String = s
        .message()
        .split(' ')
        .map(|word| {
            let node = word.starts_with('n') && word[1..].starts_with(|c: char| c.is_ascii_digit());
            if node {
                word.to_owned()
            } else {
                word.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{:?}: {}",
        s.code(),
        message.chars().take(160).collect::<String>()
    )
}

struct Clients {
    sf: Credentials,
    oms: Credentials,
    sf_sign: Signer,
    oms_sign: Signer,
    cache: HashMap<SocketAddr, (OrderGatewayClient<Channel>, OrderGatewayClient<Channel>)>,
}

impl Clients {
    async fn pair(
        &mut self,
        addr: SocketAddr,
    ) -> Option<(OrderGatewayClient<Channel>, OrderGatewayClient<Channel>)> {
        if let Some(p) = self.cache.get(&addr) {
            return Some(p.clone());
        }
        let connect = |c: &Credentials| mesh_node::api::client::connect(addr, "localhost", c.tls());
        let sf = tokio::time::timeout(Duration::from_secs(3), connect(&self.sf))
            .await
            .ok()?
            .ok()?;
        let oms = tokio::time::timeout(Duration::from_secs(3), connect(&self.oms))
            .await
            .ok()?
            .ok()?;
        let pair = (OrderGatewayClient::new(sf), OrderGatewayClient::new(oms));
        self.cache.insert(addr, pair.clone());
        Some(pair)
    }
}

/// A tiny deterministic generator (xorshift), seeded per writer.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn with_deadline<T>(mut req: tonic::Request<T>) -> tonic::Request<T> {
    req.set_timeout(Duration::from_secs(5));
    req
}

/// Running writers.
#[derive(Debug)]
pub struct History {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
    pub counts: Arc<Counts>,
    sf: Credentials,
    oms: Credentials,
}

impl History {
    /// Starts `writers` writers, each with its own customers (prefixed `prefix`).
    pub fn start(pki: &crate::Pki, gateways: Gateways, writers: usize, prefix: &str) -> History {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (sf, oms) = (pki.client(Role::Storefront), pki.client(Role::Oms));
        let tasks = (0..writers)
            .map(|w| {
                let clients = Clients {
                    sf_sign: Signer::from_pem_file(&sf.key).expect("key"),
                    oms_sign: Signer::from_pem_file(&oms.key).expect("key"),
                    sf: sf.clone(),
                    oms: oms.clone(),
                    cache: HashMap::new(),
                };
                tokio::spawn(writer(
                    format!("{prefix}-w{w}"),
                    w as u64,
                    clients,
                    gateways.clone(),
                    stop.clone(),
                    counts.clone(),
                ))
            })
            .collect();
        History {
            stop,
            tasks,
            counts,
            sf,
            oms,
        }
    }

    /// Stops the writers and checks the final state through `gateways`. Returns the violations
    /// found (empty when the history is correct) and how many orders were checked.
    pub async fn finish(self, gateways: &[SocketAddr]) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(t.await.expect("writer"));
        }
        let mut clients = Clients {
            sf_sign: Signer::from_pem_file(&self.sf.key).expect("key"),
            oms_sign: Signer::from_pem_file(&self.oms.key).expect("key"),
            sf: self.sf.clone(),
            oms: self.oms.clone(),
            cache: HashMap::new(),
        };
        let mut violations: Vec<String> = logs.iter().flat_map(|l| l.violations.clone()).collect();
        let mut checked = 0;
        for (i, log) in logs.iter().enumerate() {
            for o in &log.orders {
                checked += 1;
                let via = gateways[(i + checked) % gateways.len()];
                let Some((_, mut oms)) = clients.pair(via).await else {
                    violations.push(format!("cannot reach gateway {via}"));
                    continue;
                };
                let req = GetOrderRequest {
                    order_id: o.order_id.clone(),
                    purpose: "history-check".into(),
                    fields: Vec::new(),
                };
                match oms
                    .get_order(with_deadline(
                        clients.oms_sign.signed(Method::GetOrder.path(), req),
                    ))
                    .await
                {
                    Ok(r) => {
                        let got = step(r.into_inner().order.map_or(0, |o| o.status));
                        if got != o.acked && Some(got) != o.maybe {
                            violations.push(format!(
                                "order {}: status step {got}, last acknowledged {} (unacknowledged {:?})",
                                o.order_id, o.acked, o.maybe
                            ));
                        }
                    }
                    Err(s) => violations
                        .push(format!("order {} unreadable at the end: {s:?}", o.order_id)),
                }
            }
            for (customer, (acked, unknown)) in &log.creates {
                let via = gateways[(i + customer.len()) % gateways.len()];
                let Some((_, mut oms)) = clients.pair(via).await else {
                    continue;
                };
                let req = ListCustomerOrdersRequest {
                    customer_id: customer.clone(),
                    purpose: "history-check".into(),
                };
                let listed = match oms
                    .list_customer_orders(with_deadline(
                        clients
                            .oms_sign
                            .signed(Method::ListCustomerOrders.path(), req),
                    ))
                    .await
                {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        let mut orders = Vec::new();
                        while let Ok(Some(m)) = stream.message().await {
                            orders.extend(m.order);
                        }
                        orders
                    }
                    Err(s) => {
                        violations.push(format!("listing a customer failed: {s:?}"));
                        continue;
                    }
                };
                let refs: BTreeSet<&str> = listed.iter().map(|o| o.external_ref.as_str()).collect();
                if refs.len() != listed.len() {
                    violations.push(format!(
                        "a customer has {} orders but {} distinct creates: a create was applied twice",
                        listed.len(),
                        refs.len()
                    ));
                }
                if listed.len() < *acked || listed.len() > acked + unknown {
                    violations.push(format!(
                        "a customer has {} orders; {acked} creates were acknowledged and {unknown} cut off",
                        listed.len()
                    ));
                }
                for o in log.orders.iter().filter(|o| &o.customer_id == customer) {
                    if !listed.iter().any(|l| l.order_id == o.order_id) {
                        violations.push(format!(
                            "acknowledged order {} is missing from its customer's list",
                            o.order_id
                        ));
                    }
                }
            }
        }
        (violations, checked)
    }
}

async fn writer(
    name: String,
    seed: u64,
    mut clients: Clients,
    gateways: Gateways,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let customers: Vec<String> = (0..4).map(|c| format!("{name}-c{c}")).collect();
    let mut i: u32 = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let gateway = {
            let g = gateways.read().expect("gateways");
            g[rng.below(g.len())]
        };
        let Some((_, mut oms)) = clients.pair(gateway).await else {
            counts.failed("connect".into());
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let open: Vec<usize> = (0..log.orders.len())
            .filter(|&k| log.orders[k].acked + 1 < PATH.len())
            .collect();
        let op = if log.orders.is_empty() {
            0
        } else {
            rng.below(3)
        };
        match op {
            // Create, retried with the same idempotency key until acknowledged.
            0 => {
                let customer = customers[rng.below(customers.len())].clone();
                let mut req = crate::keyed_order(&customer, i, &format!("{name}-{i}"));
                req.external_ref = format!("{name}-{i}");
                let entry = log.creates.entry(customer.clone()).or_default();
                entry.1 += 1;
                loop {
                    let gateway = {
                        let g = gateways.read().expect("gateways");
                        g[rng.below(g.len())]
                    };
                    if let Some((mut sf, _)) = clients.pair(gateway).await {
                        let signed = clients
                            .sf_sign
                            .signed(Method::CreateOrder.path(), req.clone());
                        match sf.create_order(with_deadline(signed)).await {
                            Ok(r) => {
                                let order = r.into_inner().order.expect("order");
                                let entry = log.creates.entry(customer.clone()).or_default();
                                entry.0 += 1;
                                entry.1 -= 1;
                                log.orders.push(Tracked {
                                    order_id: order.order_id,
                                    customer_id: customer.clone(),
                                    acked: 0,
                                    maybe: None,
                                    last_read: 0,
                                });
                                counts.acked.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(s) => {
                                counts.failed_status(&s);
                                clients.cache.remove(&gateway);
                            }
                        }
                    } else {
                        counts.failed("connect".into());
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // Move an order one step, retried until acknowledged (setting the same status again
            // is an idempotent retry).
            1 if !open.is_empty() => {
                let k = open[rng.below(open.len())];
                let next = log.orders[k].acked + 1;
                let req = UpdateOrderStatusRequest {
                    order_id: log.orders[k].order_id.clone(),
                    status: PATH[next] as i32,
                    purpose: "history".into(),
                    ..Default::default()
                };
                loop {
                    let signed = clients
                        .oms_sign
                        .signed(Method::UpdateOrderStatus.path(), req.clone());
                    match oms.update_order_status(with_deadline(signed)).await {
                        Ok(r) => {
                            let got = step(r.into_inner().order.map_or(0, |o| o.status));
                            if got != next {
                                log.violations.push(format!(
                                    "order {}: update to step {next} answered step {got}",
                                    log.orders[k].order_id
                                ));
                            }
                            log.orders[k].acked = next;
                            log.orders[k].maybe = None;
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::NotFound => {
                            log.violations.push(format!(
                                "acknowledged order {} not found on update: {}",
                                log.orders[k].order_id,
                                s.message()
                            ));
                            break;
                        }
                        Err(s) => {
                            counts.failed_status(&s);
                            log.orders[k].maybe = Some(next);
                            clients.cache.remove(&gateway);
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let g = {
                                let g = gateways.read().expect("gateways");
                                g[rng.below(g.len())]
                            };
                            match clients.pair(g).await {
                                Some((_, o)) => oms = o,
                                None => continue,
                            }
                        }
                    }
                }
            }
            // Read one of its own orders back through this gateway.
            _ => {
                let k = rng.below(log.orders.len());
                let req = GetOrderRequest {
                    order_id: log.orders[k].order_id.clone(),
                    purpose: "history".into(),
                    fields: Vec::new(),
                };
                let signed = clients.oms_sign.signed(Method::GetOrder.path(), req);
                match oms.get_order(with_deadline(signed)).await {
                    Ok(r) => {
                        counts.reads.fetch_add(1, Ordering::Relaxed);
                        let got = step(r.into_inner().order.map_or(0, |o| o.status));
                        let o = &mut log.orders[k];
                        if got < o.last_read {
                            log.violations.push(format!(
                                "order {}: read step {got} after step {} (went back in time)",
                                o.order_id, o.last_read
                            ));
                        }
                        if got != o.acked && Some(got) != o.maybe {
                            log.violations.push(format!(
                                "order {}: read step {got}, last acknowledged {} (stale read)",
                                o.order_id, o.acked
                            ));
                        }
                        o.last_read = o.last_read.max(got);
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        log.violations.push(format!(
                            "acknowledged order {} not found: {}",
                            log.orders[k].order_id,
                            s.message()
                        ));
                    }
                    Err(s) => {
                        counts.failed_status(&s);
                        clients.cache.remove(&gateway);
                    }
                }
            }
        }
    }
    log
}
