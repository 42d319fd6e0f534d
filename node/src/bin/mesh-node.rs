//! `mesh-node`: run a Dark Store Mesh node, or inspect a node's data directory offline.
//!
//! Thin: parses arguments, sets up logging, and calls the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use mesh_node::ops::config::{Config, Env, LogFormat};
use mesh_node::telemetry::trace;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mesh-node", version, about = "A Dark Store Mesh node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway until SIGINT/SIGTERM, then drain and flush.
    Run {
        /// TOML configuration file; every key can also come from a DSM_* environment variable.
        #[arg(long, env = "DSM_CONFIG")]
        config: Option<PathBuf>,
        /// Once ready, write the bound addresses here as JSON (for supervisors and tests).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Count (and decrypt, to verify) the customers, orders and partitions in a data directory.
    /// The node must be stopped: the store is opened exclusively.
    Inspect {
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's key file (`dsm-kek-v1:...`).
        #[arg(long)]
        key_file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Exit 0 if the node on this host is ready (`GET /readyz` on its ops port answers 200), else
    /// 1: the container image's HEALTHCHECK. The port comes from --addr (DSM_OPS_LISTEN), else
    /// from the configuration `run` uses (--config / DSM_CONFIG and DSM_* overrides).
    Healthcheck {
        /// The ops address to ask; an unspecified host (0.0.0.0, [::]) means loopback.
        #[arg(long, env = "DSM_OPS_LISTEN")]
        addr: Option<String>,
        #[arg(long, env = "DSM_CONFIG")]
        config: Option<PathBuf>,
        /// Give up (unhealthy) after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Logs to stderr and, with `[telemetry] otlp_endpoint`, exports spans over OTLP (see
/// `mesh_node::telemetry::trace`). Returns the exporter, to be shut down once the node has drained.
fn init_logging(config: &Config) -> anyhow::Result<Option<trace::Exporter>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Transport internals are noise at info level and could only ever log framing, not data.
    // The exported spans are for the exporter only, so the log is the same with or without it.
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},h2=warn,hyper=warn,tower=warn,rustls=warn,{}=off",
        config.log_level,
        trace::TARGET
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (otel, exporter) = trace::layer(&config.telemetry, &config.node_id)?.unzip();
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Ok(exporter)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(config: Option<PathBuf>, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref(), &Env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let exporter = init_logging(&config)?;
    let node = mesh_node::ops::server::start(&config)
        .await
        .context("starting the node")?;
    if let Some(path) = ready_file {
        let ready = serde_json::json!({
            "node_id": config.node_id,
            "gateway": node.gateway_addr.to_string(),
            "ops": node.ops_addr.to_string(),
            "peer": node.peer_addr.to_string(),
            "pid": std::process::id(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    Ok(())
}

async fn inspect(data_dir: PathBuf, key_file: PathBuf, output: Output) -> anyhow::Result<bool> {
    let keys = mesh_node::security::crypto::NodeKeys::load(&key_file)?;
    anyhow::ensure!(
        data_dir.is_dir(),
        "{} is not a data directory",
        data_dir.display()
    );
    let store = mesh_node::storage::Store::open(&data_dir, std::sync::Arc::new(keys), None)
        .with_context(|| {
            format!(
                "opening {} (is the node still running?)",
                data_dir.display()
            )
        })?;
    let inv = store.inventory()?;
    store.close().await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&inv)?),
        Output::Table => {
            println!("customers   {}", inv.customers);
            println!("orders      {}", inv.orders);
            println!("partitions  {}", inv.partitions.len());
            println!("unreadable  {}", inv.unreadable);
        }
    }
    Ok(inv.unreadable == 0)
}

/// The ops address `healthcheck` asks: --addr, else the configuration's `ops_listen`, with an
/// unspecified host replaced by loopback (the check runs next to the node).
fn ops_address(addr: Option<String>, config: Option<PathBuf>) -> anyhow::Result<SocketAddr> {
    let mut addr = match addr {
        Some(raw) => raw.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
                "--addr / DSM_OPS_LISTEN: `{raw}` is not an address like 127.0.0.1:9090"
            )
        })?,
        None => match Config::load(config.as_deref(), &Env) {
            Ok(config) => config.ops_listen,
            Err(e) => anyhow::bail!(
                "finding the ops port (pass --addr, or the node's config with --config or \
                 DSM_CONFIG): {e}"
            ),
        },
    };
    anyhow::ensure!(
        addr.port() != 0,
        "the ops port is 0 (picked at start-up); pass the bound address with --addr"
    );
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// One HTTP/1.0 `GET /readyz`; true if it answered 200 within `timeout`. Hand-written: the ops
/// port speaks plain HTTP/1 and this must not need anything the node does not already have.
async fn healthcheck(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        // The status line is all we need; the body is a word.
        let mut response = Vec::with_capacity(256);
        stream.take(4096).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout, ask).await {
        Err(_) => {
            eprintln!("mesh-node healthcheck: {addr} did not answer within {timeout:?}");
            return false;
        }
        Ok(Err(e)) => {
            eprintln!("mesh-node healthcheck: {addr}: {e}");
            return false;
        }
        Ok(Ok(r)) => r,
    };
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or_default();
    let ok = status_line.split_whitespace().nth(1) == Some("200");
    if ok {
        println!("ready");
    } else {
        eprintln!("mesh-node healthcheck: {addr}/readyz answered `{status_line}`");
    }
    ok
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, ready_file } => run(config, ready_file).await.map(|()| true),
        Command::Inspect {
            data_dir,
            key_file,
            output,
        } => inspect(data_dir, key_file, output).await,
        Command::Healthcheck {
            addr,
            config,
            timeout,
        } => match ops_address(addr, config) {
            Ok(addr) => Ok(healthcheck(addr, timeout).await),
            // Unhealthy, not 2: Docker reserves exit code 2 of a health check.
            Err(e) => {
                eprintln!("mesh-node healthcheck: {e:#}");
                Ok(false)
            }
        },
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mesh-node: {e:#}");
            ExitCode::from(2)
        }
    }
}
