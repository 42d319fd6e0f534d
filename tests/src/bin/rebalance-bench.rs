//! `rebalance-bench`: scale a loaded mesh from 3 to 4 nodes under client traffic (issue 6).
//!
//! Starts 3 release nodes, stores `--orders` orders (4 per customer), then runs a steady client
//! workload (GetOrder and UpdateOrderStatus on random stored orders, through the 3 original
//! gateways, no client retries) and measures its latency before the change and while it runs.
//! The change is made with the real control plane: a 4th node starts on the current layout,
//! `mesh-ctl layout stage add` + `layout apply --version 2`, then `rebalance status` until
//! complete. Reports bytes and orders moved against the ideal quarter, time to complete, p50/p99
//! before and during, and failed client requests.
//!
//! `cargo run --release -p mesh-tests --bin rebalance-bench -- [--orders 200000] [--workers 16]`

use clap::Parser;
use mesh_node::access::policy::{Method, Role};
use mesh_node::security::proof::Signer;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_proto::v1::{GetOrderRequest, GetRebalanceRequest, OrderStatus, UpdateOrderStatusRequest};
use mesh_tests::{TestMesh, mesh_ctl, sample_order};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    orders: usize,
    /// Concurrent client workers during the measurement.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Pause between a worker's requests (keeps the load steady, below saturation).
    #[arg(long, default_value_t = 5)]
    think_ms: u64,
    /// Seconds of the before-window.
    #[arg(long, default_value_t = 10)]
    before_seconds: u64,
    /// The joining node's `[rebalance] rate` (default: the node default, 32MiB).
    #[arg(long)]
    rate: Option<String>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[derive(Default)]
struct Phase {
    latencies: Mutex<Vec<f64>>,
    failures: AtomicU64,
    /// Each failure's gRPC code and message (messages name partitions and nodes, never PII).
    why: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Phase {
    fn failed(&self, status: &tonic::Status) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self
            .why
            .lock()
            .expect("why")
            .entry(mesh_tests::history::failure_shape(status))
            .or_default() += 1;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut mesh = TestMesh::start_with_log(3, "info");
    let sf = mesh.pki.client(Role::Storefront);
    let oms = mesh.pki.client(Role::Oms);
    let sf_sign = Arc::new(Signer::from_pem_file(&sf.key).map_err(anyhow::Error::msg)?);
    let oms_sign = Arc::new(Signer::from_pem_file(&oms.key).map_err(anyhow::Error::msg)?);
    let mut sf_clients = Vec::new();
    let mut oms_clients: Vec<OrderGatewayClient<Channel>> = Vec::new();
    for n in &mesh.nodes {
        sf_clients.push(n.client(&sf).await);
        oms_clients.push(n.client(&oms).await);
    }

    // Load.
    eprintln!("storing {} orders ...", args.orders);
    let started = Instant::now();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(args.orders)));
    let next = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for w in 0..64 {
        let (mut client, sign, ids, next) = (
            sf_clients[w % sf_clients.len()].clone(),
            sf_sign.clone(),
            ids.clone(),
            next.clone(),
        );
        let total = args.orders as u64;
        loaders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let req = sample_order(&format!("bench-{}", i / 4), i as u32);
                let order = client
                    .create_order(sign.signed(Method::CreateOrder.path(), req))
                    .await
                    .expect("create")
                    .into_inner()
                    .order
                    .expect("order");
                ids.lock().expect("ids").push(order.order_id);
            }
        }));
    }
    for l in loaders {
        l.await?;
    }
    let ids: Arc<Vec<String>> = Arc::new(std::mem::take(&mut *ids.lock().expect("ids")));
    eprintln!(
        "stored {} orders in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    // Steady client load, measured per phase.
    let phase = Arc::new(Mutex::new(Arc::new(Phase::default())));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (mut client, sign, ids, phase, stop) = (
            oms_clients[w % oms_clients.len()].clone(),
            oms_sign.clone(),
            ids.clone(),
            phase.clone(),
            stop.clone(),
        );
        let think = Duration::from_millis(args.think_ms);
        workers.push(tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9 + w as u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = ids[(x % ids.len() as u64) as usize].clone();
                let t = Instant::now();
                let result = if x.is_multiple_of(4) {
                    let req = UpdateOrderStatusRequest {
                        order_id: id,
                        status: OrderStatus::Packed as i32,
                        ..Default::default()
                    };
                    client
                        .update_order_status(sign.signed(Method::UpdateOrderStatus.path(), req))
                        .await
                        .map(|_| ())
                } else {
                    let req = GetOrderRequest {
                        order_id: id,
                        ..Default::default()
                    };
                    client
                        .get_order(sign.signed(Method::GetOrder.path(), req))
                        .await
                        .map(|_| ())
                };
                let p = phase.lock().expect("phase").clone();
                match result {
                    Ok(()) => p
                        .latencies
                        .lock()
                        .expect("lat")
                        .push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(status) => p.failed(&status),
                }
                tokio::time::sleep(think).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.before_seconds)).await;
    let before = std::mem::replace(
        &mut *phase.lock().expect("phase"),
        Arc::new(Phase::default()),
    );

    // The change: n4 joins through mesh-ctl.
    let env: Vec<(&str, &str)> = args
        .rate
        .as_deref()
        .map(|r| vec![("DSM_REBALANCE_RATE", r)])
        .unwrap_or_default();
    let i = mesh.stage_join("n4", &env).await;
    let dir = mesh.dir();
    let dir = dir.to_str().expect("utf-8");
    let change = Instant::now();
    mesh_ctl(&["layout", "apply", "--version", "2", "--dir", dir]).await?;
    loop {
        let out = mesh_ctl(&["rebalance", "status", "-o", "json", "--dir", dir]).await?;
        let s: serde_json::Value = serde_json::from_str(&out)?;
        if s["complete"] == true {
            break;
        }
        // As often as `rebalance status --wait` polls.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = change.elapsed().as_secs_f64();
    let during = std::mem::replace(
        &mut *phase.lock().expect("phase"),
        Arc::new(Phase::default()),
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }

    let admin = mesh.pki.client(Role::Admin);
    let mut a =
        mesh_proto::v1::admin_client::AdminClient::new(mesh.nodes[i].channel(&admin).await?);
    let s = a.get_rebalance(GetRebalanceRequest {}).await?.into_inner();
    let ideal_orders = ids.len() as f64 / 4.0;
    let bytes_per_order = s.received_bytes as f64 / s.received_orders.max(1) as f64;
    let summary = |name: &str, p: &Phase| {
        let mut l = p.latencies.lock().expect("lat").clone();
        l.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
        println!(
            "{name:<8} requests {:>7}  failed {:>3}  p50 {:>6.2} ms  p99 {:>6.2} ms",
            l.len(),
            p.failures.load(Ordering::Relaxed),
            p50,
            p99
        );
        for (why, n) in p.why.lock().expect("why").iter() {
            println!("         {n:>5} x {why}");
        }
        p99
    };
    println!(
        "scale 3 -> 4 with {} orders (rate limit {} B/s)",
        ids.len(),
        s.rate_limit_bytes_per_second
    );
    println!(
        "moved    {} partitions, {} orders, {} bytes ({:.3} x the ideal quarter: {:.0} orders, {:.0} bytes)",
        s.received_partitions,
        s.received_orders,
        s.received_bytes,
        s.received_orders as f64 / ideal_orders,
        ideal_orders,
        ideal_orders * bytes_per_order
    );
    println!("complete in {took:.2}s");
    let p99_before = summary("before", &before);
    let p99_during = summary("during", &during);
    println!("p99 during / before: {:.2}", p99_during / p99_before);
    Ok(())
}
