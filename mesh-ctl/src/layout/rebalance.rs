//! `mesh-ctl rebalance status`: how far the current layout change has got, asked of every node
//! that may hold data (members of the current and the previous layout), and the wait with a
//! progress bar that `layout apply --wait` and `scale` use.

use crate::Output;
use crate::control::{MeshDir, admin, all_members};
use crate::output::print;
use mesh_node::cluster::layout::Layout;
use mesh_proto::v1::{GetRebalanceRequest, RebalanceStatus};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum RebalanceCommand {
    /// Progress of the current layout change on every node (exit 1 if a node cannot be asked).
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// Wait until the change is complete, with a progress bar on stderr.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeProgress {
    pub node_id: String,
    pub layout_version: Option<u64>,
    pub member: bool,
    pub pending_partitions: u32,
    pub leftover_partitions: u32,
    pub received_partitions: u64,
    pub received_bytes: u64,
    pub shredded_partitions: u64,
    pub rate_limit_bytes_per_second: u64,
    pub error: Option<String>,
}

/// The mesh-wide state of the change to `version`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub version: u64,
    /// Partitions that change owner in this change.
    pub moving: usize,
    /// Of those, how many their new owner has received.
    pub moved: usize,
    /// Copies still to shred on nodes that gave partitions away.
    pub leftovers: u64,
    pub bytes_received: u64,
    pub complete: bool,
    pub nodes: Vec<NodeProgress>,
}

async fn ask(
    m: &mesh_node::cluster::layout::Member,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<RebalanceStatus> {
    let mut client = admin(m, tls).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_rebalance(GetRebalanceRequest {}),
    )
    .await??;
    Ok(answer.into_inner())
}

/// Asks every node; a node not yet on `current` counts all it gains as pending.
pub async fn progress(dir: &MeshDir) -> anyhow::Result<Progress> {
    let (current, _) = dir.layout()?;
    let previous = dir.previous_layout()?;
    let tls = dir.admin_tls()?;
    let members = all_members(&current, previous.as_ref());
    let asked = futures::future::join_all(members.iter().map(|m| ask(m, tls.clone()))).await;
    let gains = |node: &str, prev: &Layout| {
        current
            .moves_from(prev)
            .filter(|p| current.owner_of(*p).node_id == node)
            .count() as u32
    };
    let mut nodes = Vec::new();
    for (m, answer) in members.iter().zip(asked) {
        nodes.push(match answer {
            Ok(s) => {
                let behind = s.layout_version < current.version;
                NodeProgress {
                    node_id: m.node_id.clone(),
                    layout_version: Some(s.layout_version),
                    member: current.is_member(&m.node_id),
                    pending_partitions: match (&previous, behind) {
                        (Some(prev), true) => gains(&m.node_id, prev),
                        _ => s.pending_partitions,
                    },
                    leftover_partitions: s.leftover_partitions,
                    received_partitions: s.received_partitions,
                    received_bytes: s.received_bytes,
                    shredded_partitions: s.shredded_partitions,
                    rate_limit_bytes_per_second: s.rate_limit_bytes_per_second,
                    error: None,
                }
            }
            Err(e) => NodeProgress {
                node_id: m.node_id.clone(),
                layout_version: None,
                member: current.is_member(&m.node_id),
                pending_partitions: previous.as_ref().map_or(0, |p| gains(&m.node_id, p)),
                leftover_partitions: 0,
                received_partitions: 0,
                received_bytes: 0,
                shredded_partitions: 0,
                rate_limit_bytes_per_second: 0,
                error: Some(format!("{e:#}")),
            },
        });
    }
    let moving = previous.as_ref().map_or(0, |p| current.moved_from(p));
    let pending: usize = nodes.iter().map(|n| n.pending_partitions as usize).sum();
    let complete = nodes.iter().all(|n| {
        n.error.is_none()
            && n.layout_version == Some(current.version)
            && n.pending_partitions == 0
            && n.leftover_partitions == 0
    });
    Ok(Progress {
        version: current.version,
        moving,
        moved: moving.saturating_sub(pending),
        leftovers: nodes.iter().map(|n| u64::from(n.leftover_partitions)).sum(),
        bytes_received: nodes.iter().map(|n| n.received_bytes).sum(),
        complete,
        nodes,
    })
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1 << 20))
}

/// Waits until the change is complete, drawing progress on stderr. Once complete, the previous
/// layout is retired from the directory (its members have shredded everything they gave away).
pub async fn wait(dir: &MeshDir, timeout: Duration) -> anyhow::Result<Progress> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (mut last_line, mut last_print) = (String::new(), Instant::now());
    let first = progress(dir).await?;
    let bytes_at_start = first.bytes_received;
    let mut p = first;
    loop {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let bytes = p.bytes_received.saturating_sub(bytes_at_start) as f64;
        let rate = bytes / elapsed;
        let remaining = p.moving - p.moved;
        let eta = if p.moved > 0 && remaining > 0 {
            format!(
                "ETA {}s",
                (remaining as f64 * elapsed / p.moved as f64).ceil() as u64
            )
        } else if remaining == 0 && !p.complete {
            format!("shredding {} old copies", p.leftovers)
        } else {
            "ETA -".into()
        };
        let width = 30;
        let filled = if p.moving == 0 {
            width
        } else {
            p.moved * width / p.moving
        };
        let line = format!(
            "layout v{} [{}{}] {}/{} partitions  {} moved  {}/s  {}",
            p.version,
            "#".repeat(filled),
            "-".repeat(width - filled),
            p.moved,
            p.moving,
            mib(bytes),
            mib(rate),
            eta
        );
        if tty {
            eprint!("\r{line:<100}");
            let _ = std::io::stderr().flush();
        } else if line != last_line && last_print.elapsed() >= Duration::from_secs(1) || p.complete
        {
            eprintln!("{line}");
            last_print = Instant::now();
        }
        last_line = line;
        if p.complete {
            if tty {
                eprintln!();
            }
            dir.retire_previous()?;
            return Ok(p);
        }
        if started.elapsed() > timeout {
            if tty {
                eprintln!();
            }
            let stuck: Vec<String> = p
                .nodes
                .iter()
                .filter(|n| {
                    n.error.is_some() || n.pending_partitions > 0 || n.leftover_partitions > 0
                })
                .map(|n| match &n.error {
                    Some(e) => format!("{} ({e})", n.node_id),
                    None => format!(
                        "{} ({} to receive, {} to shred)",
                        n.node_id, n.pending_partitions, n.leftover_partitions
                    ),
                })
                .collect();
            anyhow::bail!(
                "the rebalance to layout v{} did not finish within {}; waiting on: {}. It continues on the nodes; check again with `mesh-ctl rebalance status --wait`",
                p.version,
                humantime::format_duration(timeout),
                stuck.join(", ")
            );
        }
        // Once a second: each poll is an audited admin call on every node.
        tokio::time::sleep(Duration::from_secs(1)).await;
        p = progress(dir).await?;
    }
}

pub async fn run(command: RebalanceCommand, output: Output) -> anyhow::Result<bool> {
    let RebalanceCommand::Status(args) = command;
    let dir = MeshDir::open(&args.dir)?;
    let p = if args.wait {
        wait(&dir, args.timeout).await?
    } else {
        progress(&dir).await?
    };
    print(output, &serde_json::to_value(&p)?, || {
        let mut s = format!(
            "layout v{}: {}/{} moving partitions received, {} old copies to shred{}\n",
            p.version,
            p.moved,
            p.moving,
            p.leftovers,
            if p.complete { " (complete)" } else { "" }
        );
        s += &format!(
            "{:<8} {:>7} {:>8} {:>9} {:>9} {:>12}  {}\n",
            "NODE", "LAYOUT", "MEMBER", "PENDING", "LEFTOVER", "RECEIVED", "ERROR"
        );
        for n in &p.nodes {
            s += &format!(
                "{:<8} {:>7} {:>8} {:>9} {:>9} {:>12}  {}\n",
                n.node_id,
                n.layout_version.map_or("-".into(), |v| format!("v{v}")),
                if n.member { "yes" } else { "leaving" },
                n.pending_partitions,
                n.leftover_partitions,
                mib(n.received_bytes as f64),
                n.error.as_deref().unwrap_or("")
            );
        }
        s.trim_end().to_owned()
    })?;
    Ok(p.nodes.iter().all(|n| n.error.is_none()))
}
