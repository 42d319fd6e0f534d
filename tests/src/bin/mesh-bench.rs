//! `mesh-bench`: gateway throughput and latency against the transport ceiling, in one run.
//!
//! Starts a real `mesh-node` (release build, real fjall store, durable group commit) and, as the ceiling, a
//! plain tonic unary echo server in a separate process with the same TLS settings (TLS 1.3, mTLS,
//! aws-lc-rs, X25519MLKEM768). Drives each at several concurrencies over the same number of HTTP/2
//! connections and prints a table: throughput, p50, p99, and the ratio to the echo ceiling.
//!
//! `cargo run --release -p mesh-tests --bin mesh-bench -- [--seconds 5] [--concurrency 1,16,64]`

use clap::Parser;
use mesh_node::access::policy::Role;
use mesh_proto::dsm::bench::v1::EchoMessage;
use mesh_proto::dsm::bench::v1::echo_client::EchoClient;
use mesh_proto::dsm::bench::v1::echo_server::{Echo, EchoServer};
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{NodeProcess, Pki, get_order_request, sample_order};
use prost::Message as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Seconds of load per cell.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections shared by the workers (same for every target).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Internal: serve the echo ceiling until killed.
    EchoServer {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        req: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

async fn serve_echo(ca: PathBuf, cert: PathBuf, key: PathBuf) -> anyhow::Result<()> {
    let material = mesh_node::security::tls::TlsMaterial::load(&ca, &cert, &key)?;
    let tls = mesh_node::security::tls::server_config(&material, &[b"h2"])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let metrics = Arc::new(mesh_node::telemetry::metrics::Metrics::new("echo"));
    let incoming = mesh_node::api::listener::incoming(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        Duration::from_secs(5),
        metrics,
        tokio_util::sync::CancellationToken::new(),
    );
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Echo,
    Create,
    Get,
}

/// Reads a counter or a histogram's `_sum`/`_count` from the node's /metrics.
fn metric(node: &NodeProcess, name: &str) -> f64 {
    let (_, text) = node.ops_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Group-commit figures of the node: (flushes, writes per flush, ms per flush), cumulative.
fn commit_stats(node: &NodeProcess) -> (f64, f64, f64) {
    (
        metric(node, "dsm_storage_flushes_total"),
        metric(node, "dsm_storage_flush_batch_writes_sum"),
        metric(node, "dsm_storage_flush_duration_seconds_sum"),
    )
}

struct Cell {
    ops: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Cell {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn quantile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

async fn drive(
    target: Target,
    channels: &[Channel],
    concurrency: usize,
    seconds: u64,
    order_ids: Arc<Vec<String>>,
    payload: Arc<Vec<u8>>,
) -> Cell {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let channel = channels[w % channels.len()].clone();
        let (order_ids, payload) = (order_ids.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut gw = OrderGatewayClient::new(channel.clone());
            let mut echo = EchoClient::new(channel);
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = w * 7919;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match target {
                    Target::Echo => echo
                        .echo(EchoMessage {
                            payload: payload.to_vec(),
                        })
                        .await
                        .map(|_| ()),
                    Target::Create => gw
                        .create_order(sample_order(&format!("bench-{w}-{}", i % 50), i as u32))
                        .await
                        .map(|_| ()),
                    Target::Get => gw
                        .get_order(get_order_request(&order_ids[i % order_ids.len()]))
                        .await
                        .map(|_| ()),
                };
                lat.push(t.elapsed());
                match result {
                    Ok(()) => ok += 1,
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (ok, errors, lat)
        }));
    }
    let mut cell = Cell {
        ops: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (ok, errors, lat) = t.await.expect("worker");
        cell.ops += ok;
        cell.errors += errors;
        cell.latencies.extend(lat);
    }
    cell.elapsed = started.elapsed();
    cell.latencies.sort();
    cell
}

async fn channels(
    addr: SocketAddr,
    creds: &mesh_tests::Credentials,
    n: usize,
) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(mesh_node::api::client::connect(addr, "localhost", creds.tls()).await?);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Mode::EchoServer { ca, cert, key }) = args.mode {
        return serve_echo(ca, cert, key).await;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures nothing useful; use cargo run --release");
    }
    let pki = Pki::new();
    let mut node = NodeProcess::start_with_log(&pki, "bench", "info");
    let echo_creds = pki.node("echo");
    let mut echo_proc = std::process::Command::new(std::env::current_exe()?)
        .arg("echo-server")
        .arg("--ca")
        .arg(&echo_creds.ca)
        .arg("--cert")
        .arg(&echo_creds.cert)
        .arg("--key")
        .arg(&echo_creds.key)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(echo_proc.stdout.take().expect("stdout")),
        &mut line,
    )?;
    let echo_addr: SocketAddr = line.trim().parse()?;

    let storefront = pki.client(Role::Storefront);
    let oms = pki.client(Role::Oms);
    let payload = Arc::new(sample_order("bench-payload", 1).encode_to_vec());
    let echo_channels = channels(echo_addr, &storefront, args.connections).await?;
    let create_channels = channels(node.gateway, &storefront, args.connections).await?;
    let get_channels = channels(node.gateway, &oms, args.connections).await?;

    // Orders for GetOrder to read.
    let mut sf = OrderGatewayClient::new(create_channels[0].clone());
    let mut ids = Vec::new();
    for i in 0..2000u32 {
        let o = sf
            .create_order(sample_order(&format!("seed-{}", i % 500), i))
            .await?
            .into_inner()
            .order
            .expect("order");
        ids.push(o.order_id);
    }
    let ids = Arc::new(ids);

    println!(
        "mesh-bench: {}s per cell, {} HTTP/2 connections per target, payload {} bytes",
        args.seconds,
        args.connections,
        payload.len()
    );
    println!(
        "{:<14} {:>5} {:>10} {:>9} {:>9} {:>7} {:>9}",
        "target", "conc", "ops/s", "p50 ms", "p99 ms", "errors", "vs echo"
    );
    for &c in &args.concurrency {
        let echo = drive(
            Target::Echo,
            &echo_channels,
            c,
            args.seconds,
            ids.clone(),
            payload.clone(),
        )
        .await;
        println!(
            "{:<14} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>9}",
            "echo (ceiling)",
            c,
            echo.throughput(),
            echo.quantile(0.5),
            echo.quantile(0.99),
            echo.errors,
            "100%"
        );
        for (name, target, chans) in [
            ("CreateOrder", Target::Create, &create_channels),
            ("GetOrder", Target::Get, &get_channels),
        ] {
            let before = commit_stats(&node);
            let cell = drive(target, chans, c, args.seconds, ids.clone(), payload.clone()).await;
            let after = commit_stats(&node);
            println!(
                "{:<14} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>8.0}%",
                name,
                c,
                cell.throughput(),
                cell.quantile(0.5),
                cell.quantile(0.99),
                cell.errors,
                100.0 * cell.throughput() / echo.throughput()
            );
            let flushes = after.0 - before.0;
            if flushes > 0.0 {
                println!(
                    "{:<14} {:>5} group commit: {:.0} fsyncs/s, {:.1} writes per fsync, {:.2} ms per fsync",
                    "",
                    "",
                    flushes / cell.elapsed.as_secs_f64(),
                    (after.1 - before.1) / flushes,
                    1000.0 * (after.2 - before.2) / flushes
                );
            }
        }
    }
    let _ = echo_proc.kill();
    node.stop();
    Ok(())
}
