//! The FROM-scratch image under faults: a 3-node mesh of `mesh-node` containers on a private Docker
//! network (`mesh_tests::containers`), driven through the published gateways with real mTLS and
//! client proofs. Reads through one gateway of orders created through another; `docker kill` of a
//! node; a node cut off the network and reconnected; a rolling restart under client load.
//!
//! Needs a Docker engine (the tests build the image with `tests/docker/build.sh` first, once per
//! process; a cold build is the static release build, minutes). Without one they fail saying so;
//! `NEXTEST_PROFILE=no-docker` leaves them out (counted as skipped, see `.config/nextest.toml`).

use mesh_node::access::policy::Role;
use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER};
use mesh_node::security::proof::Signer;
use mesh_proto::v1::Order;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::containers::{ContainerMesh, build_image, docker, docker_required};
use mesh_tests::{
    Credentials, MeshHarness as _, assert_eventually, get_order_request, keyed_order,
    orders_written_anywhere_are_read_everywhere, within_after,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = OrderGatewayClient<Channel>;

/// One attempt's deadline (the gRPC timeout the client sends). A node that cannot be reached must
/// be reported well before it: a peer that stops answering is given up after QUIC's 3 s idle
/// timeout, and one that is gone from Docker's DNS at once.
const ATTEMPT: Duration = Duration::from_secs(8);

/// Why a client may retry `status`, if it may: UNAVAILABLE from a node (the shard's owner is down
/// or unreachable), or a call the client's own connection failed before any node answered it
/// (the gateway's container went away: connection refused, or a node that stops gracefully sends
/// HTTP/2 GOAWAY and a call already on its way is refused unprocessed, which tonic reports as
/// CANCELLED or INTERNAL). Those carry the transport error as their source, which no status sent by
/// a server has. Every call here is safe to repeat: reads, and creates with an idempotency key.
fn retryable(status: &Status) -> Option<&'static str> {
    if std::error::Error::source(status).is_some() {
        Some("connection")
    } else if status.code() == Code::Unavailable {
        Some("unavailable")
    } else {
        None
    }
}

/// An acknowledged create: what must be readable afterwards.
#[derive(Debug, Clone)]
struct Written {
    order_id: String,
    customer: String,
    external_ref: String,
}

/// One `CreateOrder` attempt for `customer` (order number `n`, idempotency key `key`).
async fn create(
    client: &mut Client,
    signer: &Signer,
    customer: &str,
    n: u32,
    key: &str,
) -> Result<Written, Status> {
    let order = keyed_order(customer, n, key);
    let external_ref = order.external_ref.clone();
    let mut req = signer.signed(CREATE_ORDER, order);
    req.set_timeout(ATTEMPT);
    let order = client
        .create_order(req)
        .await?
        .into_inner()
        .order
        .ok_or_else(|| Status::internal("CreateOrder answered without an order"))?;
    Ok(Written {
        order_id: order.order_id,
        customer: customer.to_owned(),
        external_ref,
    })
}

/// One `GetOrder` attempt.
async fn get(client: &mut Client, signer: &Signer, order_id: &str) -> Result<Order, Status> {
    let mut req = signer.signed(GET_ORDER, get_order_request(order_id));
    req.set_timeout(ATTEMPT);
    client
        .get_order(req)
        .await?
        .into_inner()
        .order
        .ok_or_else(|| Status::internal("GetOrder answered without an order"))
}

/// Reads every write in `written` through `client` and checks it is the order that was created.
/// A node that has just come back may still be unreachable for a moment (peers back off before
/// re-dialling): retryable errors are retried for a while; anything else is a lost write.
async fn assert_all_readable(client: &mut Client, signer: &Signer, written: &[Written], via: &str) {
    for w in written {
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            match get(client, signer, &w.order_id).await {
                Ok(got) => break got,
                Err(s) if retryable(&s).is_some() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!(
                    "acknowledged order {} of customer {} not readable via {via}: {s:?}",
                    w.order_id, w.customer
                ),
            }
        };
        assert_eq!(
            (&got.customer_id, &got.external_ref),
            (&w.customer, &w.external_ref),
            "order {} read via {via} is not the order that was created",
            w.order_id
        );
    }
}

/// `count` acknowledged creates through `entry`: customer `i` is `customer_on(i % shards,
/// "<salt>-<i>")`, with order number `first + i` and idempotency key `<salt>-<i>`.
async fn create_across_shards(
    mesh: &ContainerMesh,
    entry: &mut Client,
    signer: &Signer,
    (count, shards, first): (u32, usize, u32),
    salt: &str,
) -> Vec<Written> {
    let mut written = Vec::new();
    for i in 0..count {
        let customer = mesh.customer_on(i as usize % shards, &format!("{salt}-{i}"));
        let w = create(entry, signer, &customer, first + i, &format!("{salt}-{i}"))
            .await
            .unwrap_or_else(|s| {
                panic!("create {salt}-{i} for n{}: {s:?}", i as usize % shards + 1)
            });
        written.push(w);
    }
    written
}

/// Reads every write in `written` through each of the gateways `via` (see
/// [`assert_all_readable`]).
async fn assert_readable_through(
    mesh: &ContainerMesh,
    via: std::ops::Range<usize>,
    oms: &Credentials,
    signer: &Signer,
    written: &[Written],
) {
    for i in via {
        let mut reader = mesh.client(i, oms).await;
        assert_all_readable(&mut reader, signer, written, &mesh.nodes[i].id).await;
    }
}

/// The image itself: two static binaries, a non-root user, exec-form entrypoint and a health check
/// that runs `mesh-node healthcheck` (which the mesh start-up just waited on).
async fn assert_image_shape(mesh: &ContainerMesh) {
    let container = &mesh.nodes[0].container;
    let config = docker(&["inspect", "--format", "{{json .Config}}", container])
        .await
        .expect("inspect");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/mesh-node"])
    );
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/mesh-node", "healthcheck"])
    );
    // No shell: nothing but what we copied in.
    assert!(
        docker(&["exec", container, "/bin/sh", "-c", "true"])
            .await
            .is_err(),
        "the image has a shell"
    );
    let ready = docker(&["exec", container, "/usr/local/bin/mesh-node", "healthcheck"])
        .await
        .expect("mesh-node healthcheck in the container");
    assert_eq!(ready, "ready");
    // Unhealthy is exit 1 (Docker reserves 2), with the reason.
    let refused = docker(&[
        "exec",
        container,
        "/usr/local/bin/mesh-node",
        "healthcheck",
        "--addr",
        "127.0.0.1:1",
    ])
    .await
    .expect_err("nothing listens on port 1");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("exit status: 1") && refused.contains("127.0.0.1:1"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_created_through_one_container_are_read_through_the_others() {
    docker_required();
    within_after(build_image, 180, async {
        let mesh = ContainerMesh::start("read", 3).await;
        assert_image_shape(&mesh).await;
        let (sf, oms) = (
            mesh.pki.client(Role::Storefront),
            mesh.pki.client(Role::Oms),
        );
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut entry = mesh.client(0, &sf).await;
        // Four customers on each shard, all created through n1.
        let written = create_across_shards(&mesh, &mut entry, &sf_sign, (12, 3, 0), "read").await;
        assert_readable_through(&mesh, 1..3, &oms, &oms_sign, &written).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_fails_only_its_shard_and_the_others_keep_serving() {
    docker_required();
    within_after(build_image, 240, async {
        let mesh = ContainerMesh::start("kill", 3).await;
        let (sf, oms) = (
            mesh.pki.client(Role::Storefront),
            mesh.pki.client(Role::Oms),
        );
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut entry = mesh.client(0, &sf).await;
        let mut written =
            create_across_shards(&mesh, &mut entry, &sf_sign, (9, 3, 0), "kill").await;

        mesh.kill(2).await;
        assert_ne!(mesh.health(2).await, "healthy");
        for via in 0..2 {
            let mut reader = mesh.client(via, &oms).await;
            for w in &written {
                let started = Instant::now();
                let result = get(&mut reader, &oms_sign, &w.order_id).await;
                if mesh.owner_of_customer(&w.customer) == 2 {
                    let status = result.expect_err("the killed node's shard cannot be served");
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(
                        status.message().contains("n3"),
                        "the error names the node: {}",
                        status.message()
                    );
                    assert!(
                        started.elapsed() < ATTEMPT,
                        "failed after {:?}: it should fail fast, not wait out the deadline",
                        started.elapsed()
                    );
                } else {
                    let got = result.unwrap_or_else(|s| {
                        panic!("n{}'s shard must keep serving: {s:?}", via + 1)
                    });
                    assert_eq!(got.external_ref, w.external_ref);
                }
            }
        }
        // New orders on the live shards are taken too.
        written.extend(
            create_across_shards(&mesh, &mut entry, &sf_sign, (6, 2, 100), "kill-after").await,
        );

        // Back on the same volume: nothing acknowledged before the SIGKILL is lost.
        mesh.start_node(2).await;
        mesh.wait_healthy(2, Duration::from_secs(60)).await;
        let mut reader = mesh.client(0, &oms).await;
        let n3_order = written
            .iter()
            .find(|w| mesh.owner_of_customer(&w.customer) == 2)
            .expect("an order on n3")
            .order_id
            .clone();
        assert_eventually!(
            Duration::from_secs(30),
            get(&mut reader, &oms_sign, &n3_order).await.is_ok(),
            "n3's shard did not come back through n1"
        );
        assert_readable_through(&mesh, 0..3, &oms, &oms_sign, &written).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cut_off_the_network_loses_no_acknowledged_write() {
    docker_required();
    within_after(build_image, 240, async {
        let mesh = ContainerMesh::start("cut", 3).await;
        let (sf, oms) = (
            mesh.pki.client(Role::Storefront),
            mesh.pki.client(Role::Oms),
        );
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut writers = [mesh.client(0, &sf).await, mesh.client(1, &sf).await];
        let mut acknowledged = Vec::new();
        for i in 0..9u32 {
            let customer = mesh.customer_on(i as usize % 3, &format!("cut-{i}"));
            acknowledged.push(
                create(
                    &mut writers[i as usize % 2],
                    &sf_sign,
                    &customer,
                    i,
                    &format!("cut-{i}"),
                )
                .await
                .unwrap_or_else(|s| panic!("create: {s:?}")),
            );
        }

        mesh.disconnect(2).await;
        // During the cut: every write to n1's and n2's shards is taken, through either gateway;
        // writes to n3's shard are refused promptly as UNAVAILABLE (and are not acknowledged).
        let (mut live_ok, mut cut_refused, mut slowest_refusal) = (0, 0, Duration::ZERO);
        for i in 0..18u32 {
            let shard = i as usize % 3;
            let customer = mesh.customer_on(shard, &format!("during-{i}"));
            let started = Instant::now();
            let result = create(
                &mut writers[i as usize % 2],
                &sf_sign,
                &customer,
                200 + i,
                &format!("during-{i}"),
            )
            .await;
            match (shard, result) {
                (2, Err(s)) => {
                    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                    assert!(
                        started.elapsed() < ATTEMPT,
                        "refused after {:?}, not promptly",
                        started.elapsed()
                    );
                    cut_refused += 1;
                    slowest_refusal = slowest_refusal.max(started.elapsed());
                }
                (2, Ok(w)) => panic!("a write to the cut-off shard was acknowledged: {w:?}"),
                (_, Ok(w)) => {
                    acknowledged.push(w);
                    live_ok += 1;
                }
                (_, Err(s)) => panic!("a write to a live shard failed during the cut: {s:?}"),
            }
        }
        assert_eq!((live_ok, cut_refused), (12, 6));
        eprintln!("during the cut: 12 writes to live shards taken, 6 to n3's refused (slowest refusal {slowest_refusal:.1?})");
        // Reads of the live shards go on too.
        let mut reader = mesh.client(0, &oms).await;
        let live: Vec<Written> = acknowledged
            .iter()
            .filter(|w| mesh.owner_of_customer(&w.customer) != 2)
            .cloned()
            .collect();
        assert_all_readable(&mut reader, &oms_sign, &live, "n1 during the cut").await;

        mesh.reconnect(2).await;
        let n3_order = acknowledged
            .iter()
            .find(|w| mesh.owner_of_customer(&w.customer) == 2)
            .expect("an order on n3")
            .order_id
            .clone();
        assert_eventually!(
            Duration::from_secs(30),
            get(&mut reader, &oms_sign, &n3_order).await.is_ok(),
            "n3's shard was not reachable through n1 within 30s of reconnecting"
        );
        // Writes to n3's shard are taken again.
        for i in 0..3u32 {
            let customer = mesh.customer_on(2, &format!("after-{i}"));
            acknowledged.push(
                create(
                    &mut writers[i as usize % 2],
                    &sf_sign,
                    &customer,
                    300 + i,
                    &format!("after-{i}"),
                )
                .await
                .unwrap_or_else(|s| panic!("create on n3's shard after reconnecting: {s:?}")),
            );
        }
        assert_readable_through(&mesh, 0..3, &oms, &oms_sign, &acknowledged).await;
    })
    .await;
}

/// What the client load saw.
#[derive(Debug, Default)]
struct LoadStats {
    /// Operations that succeeded (possibly after retries).
    ok: u64,
    /// Attempts retried, by why (see [`retryable`]).
    retries: std::collections::BTreeMap<&'static str, u64>,
    /// Operations that failed for good: a non-retryable error or the deadline, with the reason.
    failures: Vec<String>,
    /// Acknowledged creates.
    written: Vec<Written>,
}

/// How long one operation may keep retrying UNAVAILABLE (through the next gateway each time).
const OPERATION_DEADLINE: Duration = Duration::from_secs(60);

/// What every load worker shares.
#[derive(Debug)]
struct Load {
    sf_sign: Signer,
    oms_sign: Signer,
    /// Customers on every shard, so every restart meets requests for the stopped node's shard.
    customers: Vec<String>,
    stats: Mutex<LoadStats>,
    stop: CancellationToken,
}

impl Load {
    fn ok(&self) -> u64 {
        self.stats.lock().expect("stats").ok
    }
}

/// One client worker: creates (two in three) and reads back acknowledged orders (one in three)
/// through the gateways in turn, retrying UNAVAILABLE on the next gateway until the operation's
/// deadline. Creates carry an idempotency key, so a retry never makes a second order.
async fn load_worker(
    worker: usize,
    mut storefronts: Vec<Client>,
    mut omses: Vec<Client>,
    load: Arc<Load>,
) {
    let gateways = storefronts.len();
    for op in 0u32.. {
        if load.stop.is_cancelled() {
            return;
        }
        let read_target = (op % 3 == 2)
            .then(|| {
                let s = load.stats.lock().expect("stats");
                (!s.written.is_empty())
                    .then(|| s.written[(op as usize * 7 + worker) % s.written.len()].clone())
            })
            .flatten();
        let customer = &load.customers[(op as usize + worker * 5) % load.customers.len()];
        let key = format!("roll-{worker}-{op}");
        let started = Instant::now();
        let mut attempt = 0usize;
        let outcome = loop {
            let via = (op as usize + worker + attempt) % gateways;
            let result = match &read_target {
                Some(w) => get(&mut omses[via], &load.oms_sign, &w.order_id)
                    .await
                    .and_then(|got| {
                        if got.external_ref == w.external_ref && got.customer_id == w.customer {
                            Ok(None)
                        } else {
                            Err(Status::data_loss(format!(
                                "order {} read back wrong",
                                w.order_id
                            )))
                        }
                    }),
                None => create(
                    &mut storefronts[via],
                    &load.sf_sign,
                    customer,
                    worker as u32 * 1_000_000 + op,
                    &key,
                )
                .await
                .map(Some),
            };
            match result {
                Ok(w) => break Ok(w),
                Err(s)
                    if let Some(why) = retryable(&s)
                        && started.elapsed() < OPERATION_DEADLINE =>
                {
                    *load
                        .stats
                        .lock()
                        .expect("stats")
                        .retries
                        .entry(why)
                        .or_default() += 1;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => {
                    break Err(format!(
                        "worker {worker} op {op} via n{} after {attempt} retries: {:?} {}",
                        via + 1,
                        s.code(),
                        s.message()
                    ));
                }
            }
        };
        let mut s = load.stats.lock().expect("stats");
        match outcome {
            Ok(w) => {
                s.ok += 1;
                s.written.extend(w);
            }
            Err(e) => s.failures.push(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_write() {
    docker_required();
    within_after(build_image, 420, async {
        let mesh = ContainerMesh::start("roll", 3).await;
        let (sf, oms) = (
            mesh.pki.client(Role::Storefront),
            mesh.pki.client(Role::Oms),
        );
        let load = Arc::new(Load {
            sf_sign: sf.signer(),
            oms_sign: oms.signer(),
            customers: (0..24)
                .map(|i| mesh.customer_on(i % 3, &format!("roll-{i}")))
                .collect(),
            stats: Mutex::new(LoadStats::default()),
            stop: CancellationToken::new(),
        });
        let mut workers = Vec::new();
        for worker in 0..4 {
            let mut storefronts = Vec::new();
            let mut omses = Vec::new();
            for i in 0..3 {
                storefronts.push(mesh.client(i, &sf).await);
                omses.push(mesh.client(i, &oms).await);
            }
            workers.push(tokio::spawn(load_worker(
                worker,
                storefronts,
                omses,
                load.clone(),
            )));
        }
        let ok = || load.ok();
        assert_eventually!(
            Duration::from_secs(30),
            ok() >= 30,
            "the load did not get going"
        );

        for i in 0..3 {
            let before = ok();
            let started = Instant::now();
            mesh.stop(i, Duration::from_secs(30)).await;
            mesh.start_node(i).await;
            mesh.wait_healthy(i, Duration::from_secs(60)).await;
            eprintln!(
                "restarted {} in {:.1?} ({} operations completed meanwhile)",
                mesh.nodes[i].id,
                started.elapsed(),
                ok() - before
            );
            // The load goes on (and reaches the restarted node) before the next one stops.
            let mark = ok();
            assert_eventually!(
                Duration::from_secs(60),
                ok() >= mark + 30,
                "the load stalled after restarting {}",
                mesh.nodes[i].id
            );
        }
        load.stop.cancel();
        for w in workers {
            w.await.expect("load worker");
        }

        let stats = std::mem::take(&mut *load.stats.lock().expect("stats"));
        eprintln!(
            "rolling restart: {} operations succeeded, attempts retried {:?}, {} failed, {} orders \
             acknowledged",
            stats.ok,
            stats.retries,
            stats.failures.len(),
            stats.written.len()
        );
        assert!(
            stats.failures.is_empty(),
            "requests failed beyond retries:\n{}",
            stats.failures.join("\n")
        );
        let mut reader = mesh.client(0, &oms).await;
        assert_all_readable(
            &mut reader,
            &load.oms_sign,
            &stats.written,
            "n1 after the restarts",
        )
        .await;
    })
    .await;
}

/// The scenario every harness runs (`mesh_tests::scenario`), here on containers: written through
/// every gateway, read through every gateway, and again after n3 is `docker kill`ed and started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_scenario_orders_written_anywhere_are_read_everywhere_on_containers() {
    docker_required();
    within_after(build_image, 240, async {
        let mut mesh = ContainerMesh::start("scenario", 3).await;
        let written = orders_written_anywhere_are_read_everywhere(&mut mesh, "containers").await;
        assert_eq!(written.len(), 9);
    })
    .await;
}
