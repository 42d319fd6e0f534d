//! `route-bench`: CreateOrder throughput of a 3-node mesh driven through all gateways against a
//! single node at the same total concurrency, then p99 latency of the mesh at half its peak rate.
//!
//! Every request is signed (the end-to-end client proof) in both setups, so the client does the
//! same work; in the mesh two thirds of requests take one extra QUIC hop to their owner.
//!
//! `cargo run --release -p mesh-tests --bin route-bench -- [--seconds 5] [--concurrency 64]`

use clap::Parser;
use mesh_node::access::policy::Role;
use mesh_node::api::gateway::CREATE_ORDER;
use mesh_node::security::proof::Signer;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{Credentials, NodeProcess, Pki, TestMesh, sample_order};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
}

struct Run {
    ok: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn p(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
    }
}

async fn channels(
    gateways: &[SocketAddr],
    creds: &Credentials,
    per_gateway: usize,
) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..per_gateway {
        for g in gateways {
            out.push(
                mesh_node::api::client::connect(*g, "localhost", creds.tls())
                    .await
                    .expect("connect"),
            );
        }
    }
    out
}

async fn create(channel: Channel, signer: &Signer, w: usize, i: u64) -> bool {
    let req = signer.signed(
        CREATE_ORDER,
        sample_order(&format!("route-{w}-{}", i % 97), i as u32),
    );
    OrderGatewayClient::new(channel)
        .create_order(req)
        .await
        .is_ok()
}

/// Closed loop: `concurrency` workers, each sending its next request when the last one returns.
async fn closed_loop(
    chans: &[Channel],
    signer: Arc<Signer>,
    concurrency: usize,
    seconds: u64,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (channel, signer) = (chans[w % chans.len()].clone(), signer.clone());
            tokio::spawn(async move {
                let (mut ok, mut err, mut lat, mut i) = (0, 0, Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if create(channel.clone(), &signer, w, i).await {
                        ok += 1
                    } else {
                        err += 1
                    }
                    lat.push(t.elapsed());
                    i += 1;
                }
                (ok, err, lat)
            })
        })
        .collect();
    let mut run = Run {
        ok: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (ok, err, lat) = t.await.expect("worker");
        run.ok += ok;
        run.errors += err;
        run.latencies.extend(lat);
    }
    run.elapsed = started.elapsed();
    run.latencies.sort();
    run
}

/// Open loop: requests start at a fixed rate whatever the latency (no coordinated omission).
async fn open_loop(chans: &[Channel], signer: Arc<Signer>, rate: f64, seconds: u64) -> Run {
    let started = Instant::now();
    let total = (rate * seconds as f64) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (channel, signer) = (chans[i as usize % chans.len()].clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = create(channel, &signer, (i % 64) as usize, i).await;
            (ok, t.elapsed())
        }));
    }
    let mut run = Run {
        ok: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (ok, lat) = t.await.expect("request");
        if ok {
            run.ok += 1
        } else {
            run.errors += 1
        }
        run.latencies.push(lat);
    }
    run.elapsed = started.elapsed();
    run.latencies.sort();
    run
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("node binary: {}", mesh_tests::mesh_node_bin().display());

    let pki = Pki::new();
    let mut single = NodeProcess::start_with_log(&pki, "solo", "info");
    let creds = pki.client(Role::Storefront);
    let signer = Arc::new(Signer::from_pem_file(&creds.key).expect("signer"));
    let chans = channels(&[single.gateway], &creds, 4).await;
    let solo = closed_loop(&chans, signer.clone(), args.concurrency, args.seconds).await;
    single.stop();
    drop(chans);

    let mut mesh = TestMesh::start_with_log(args.nodes, "info");
    let creds = mesh.pki.client(Role::Storefront);
    let signer = Arc::new(Signer::from_pem_file(&creds.key).expect("signer"));
    let gateways: Vec<SocketAddr> = mesh.nodes.iter().map(|n| n.gateway).collect();
    let chans = channels(&gateways, &creds, 2).await;
    let routed = closed_loop(&chans, signer.clone(), args.concurrency, args.seconds).await;
    let half = open_loop(&chans, signer.clone(), routed.rate() / 2.0, args.seconds).await;
    for n in &mut mesh.nodes {
        n.stop();
    }

    println!(
        "route-bench: CreateOrder, signed, concurrency {}, {}s per run",
        args.concurrency, args.seconds
    );
    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>7}",
        "setup", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    let row = |name: &str, r: &Run| {
        println!(
            "{name:<34} {:>9.0} {:>8.2} {:>8.2} {:>7}",
            r.rate(),
            r.p(0.5),
            r.p(0.99),
            r.errors
        )
    };
    row("single node (closed loop)", &solo);
    row(
        &format!("{}-node mesh, all gateways (closed)", args.nodes),
        &routed,
    );
    row(
        &format!("{}-node mesh at half its peak (open)", args.nodes),
        &half,
    );
    println!(
        "mesh / single = {:.0}% (target >= 70%); p99 at half peak = {:.2} ms (target < 10 ms)",
        100.0 * routed.rate() / solo.rate(),
        half.p(0.99)
    );
}
