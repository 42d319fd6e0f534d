//! `audit-bench`: what the audit trail costs, and how fast it answers.
//!
//! Two release nodes in one run: one recording every access (durable, fail-closed), one with audit
//! off (`DSM_BENCH_AUDIT_OFF=1`, benchmarks only). CreateOrder and GetOrder at concurrency 64 on
//! each, alternating rounds so drift hits both alike. Then an auditor's query for one principal's
//! 100,000 most recent... records (the maximum page) through the gateway, timed end to end.
//!
//! `cargo run --release -p mesh-tests --bin audit-bench -- [--seconds 5] [--rounds 2]`

use clap::Parser;
use mesh_node::access::policy::Role;
use mesh_proto::v1::AuditQueryRequest;
use mesh_proto::v1::audit_client::AuditClient;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{NodeOptions, NodeProcess, Pki, get_order_request, sample_order};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Create,
    Get,
}

async fn drive(
    chans: &[Channel],
    op: Op,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    seconds: u64,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (channel, ids) = (chans[w % chans.len()].clone(), ids.clone());
            tokio::spawn(async move {
                let mut client = OrderGatewayClient::new(channel);
                let (mut ok, mut i) = (0u64, w * 7919);
                while Instant::now() < deadline {
                    let done = match op {
                        Op::Create => client
                            .create_order(sample_order(&format!("ab-{w}-{}", i % 50), i as u32))
                            .await
                            .is_ok(),
                        Op::Get => client
                            .get_order(get_order_request(&ids[i % ids.len()]))
                            .await
                            .is_ok(),
                    };
                    ok += u64::from(done);
                    i += 1;
                }
                ok
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

struct Target {
    node: NodeProcess,
    create: Vec<Channel>,
    get: Vec<Channel>,
    ids: Arc<Vec<String>>,
}

async fn target(pki: &Pki, id: &str, audit_off: bool) -> Target {
    let env = if audit_off {
        vec![("DSM_BENCH_AUDIT_OFF".to_owned(), "1".to_owned())]
    } else {
        Vec::new()
    };
    let node = NodeProcess::start_with(
        pki,
        id,
        &NodeOptions {
            log_level: "info".into(),
            env,
            ..NodeOptions::default()
        },
    );
    let (sf, oms) = (pki.client(Role::Storefront), pki.client(Role::Oms));
    let mut create = Vec::new();
    let mut get = Vec::new();
    for _ in 0..4 {
        create.push(
            mesh_node::api::client::connect(node.gateway, "localhost", sf.tls())
                .await
                .expect("connect"),
        );
        get.push(
            mesh_node::api::client::connect(node.gateway, "localhost", oms.tls())
                .await
                .expect("connect"),
        );
    }
    let mut seed = OrderGatewayClient::new(create[0].clone());
    let mut ids = Vec::new();
    for i in 0..2000u32 {
        ids.push(
            seed.create_order(sample_order(&format!("seed-{}", i % 500), i))
                .await
                .expect("seed")
                .into_inner()
                .order
                .expect("order")
                .order_id,
        );
    }
    Target {
        node,
        create,
        get,
        ids: Arc::new(ids),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("node binary: {}", mesh_tests::mesh_node_bin().display());
    let pki = Pki::new();
    let mut on = target(&pki, "audit-on", false).await;
    let mut off = target(&pki, "audit-off", true).await;
    let mut sums = [[0.0f64; 2]; 2]; // [op][on/off]
    for _ in 0..args.rounds {
        for (o, op) in [Op::Create, Op::Get].into_iter().enumerate() {
            for (t, tgt) in [&on, &off].into_iter().enumerate() {
                let chans = if op == Op::Create {
                    &tgt.create
                } else {
                    &tgt.get
                };
                sums[o][t] +=
                    drive(chans, op, tgt.ids.clone(), args.concurrency, args.seconds).await;
            }
        }
    }
    println!(
        "audit-bench: concurrency {}, {} rounds of {}s per cell",
        args.concurrency, args.rounds, args.seconds
    );
    println!(
        "{:<12} {:>12} {:>12} {:>8}",
        "op", "audit on/s", "audit off/s", "cost"
    );
    for (o, name) in ["CreateOrder", "GetOrder"].into_iter().enumerate() {
        let (a, b) = (
            sums[o][0] / args.rounds as f64,
            sums[o][1] / args.rounds as f64,
        );
        println!(
            "{name:<12} {a:>12.0} {b:>12.0} {:>7.1}%",
            100.0 * (1.0 - a / b)
        );
    }

    // One principal's records: the oms client's reads on the audited node.
    let auditor = pki.client(Role::Auditor);
    let oms_principal = format!("spiffe://{}/client/oms/test-oms", mesh_tests::TRUST_DOMAIN);
    let mut audit = AuditClient::new(on.node.channel(&auditor).await.expect("connect"));
    let started = Instant::now();
    let mut stream = audit
        .query(AuditQueryRequest {
            principal: oms_principal,
            local_only: true,
            limit: 100_000,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    let mut n = 0u64;
    while stream.message().await.expect("stream").is_some() {
        n += 1;
    }
    println!(
        "audit query: {n} records for one principal in {:.3} s through the gateway (target: 100k in < 1 s)",
        started.elapsed().as_secs_f64()
    );
    on.node.stop();
    off.node.stop();
}
