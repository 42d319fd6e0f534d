//! `mesh-ctl scale --nodes N`: stage, apply and wait for a membership change of a local mesh
//! (`mesh-ctl up`), starting the nodes that join and stopping the nodes that leave once they have
//! handed everything over. Running it again after an interruption (even `kill -9`) finishes the
//! change under way before anything else.

use crate::Output;
use crate::control::{MeshDir, Staged, StagedMember};
use crate::local::up::{
    MeshFile, NodeEntry, node_command, port, prepare_node, wait_gone, wait_ready,
};
use crate::output::print;
use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::pki::CertificateAuthority;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// The number of nodes to end with.
    #[arg(long)]
    nodes: usize,
    /// The directory of a mesh running under `mesh-ctl up`.
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// The mesh-node binary for joining nodes (default: next to mesh-ctl).
    #[arg(long, env = "DSM_MESH_NODE_BIN")]
    node_bin: Option<PathBuf>,
    /// Give up waiting for the rebalance after this long (it continues on the nodes).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn number(id: &str) -> Option<usize> {
    id.strip_prefix('n')?.parse().ok()
}

/// The membership change from `current` to `n` nodes: joining nodes take the lowest free `nK`
/// ids, leaving nodes are the highest-numbered.
fn plan(current: &Layout, n: usize, base_port: u16) -> Staged {
    let mut ids: Vec<&str> = current.members.iter().map(|m| m.node_id.as_str()).collect();
    ids.sort_by_key(|id| (number(id).unwrap_or(usize::MAX), *id));
    let mut staged = Staged::default();
    if n < ids.len() {
        staged.remove = ids[n..].iter().map(|s| (*s).to_owned()).collect();
    }
    let mut k = 1;
    while ids.len() + staged.add.len() < n {
        let id = format!("n{k}");
        if !ids.contains(&id.as_str()) {
            staged.add.push(StagedMember {
                gateway_addr: format!("127.0.0.1:{}", port(base_port, k - 1, 0)),
                peer_addr: format!("127.0.0.1:{}", port(base_port, k - 1, 2000)),
                node_id: id,
            });
        }
        k += 1;
    }
    staged
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

pub async fn run(args: ScaleArgs, output: Output) -> anyhow::Result<bool> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes {}: a local mesh has 1 to 64 nodes", args.nodes);
    }
    let dir = MeshDir::open(&args.dir)?;
    let mut mesh = MeshFile::load(&dir.dir).context(
        "scale starts and stops local node processes; for another mesh use `mesh-ctl layout stage` and `layout apply`",
    )?;
    let started = Instant::now();
    let (mut current, signed) = dir.layout()?;

    // Finish whatever change is under way: push the newest layout again (a no-op on nodes that
    // have it) and wait for its rebalance.
    crate::layout::push(&dir, &current, &signed).await?;
    crate::layout::rebalance::wait(&dir, args.timeout).await?;
    let from = current.members.len();

    if current.members.len() != args.nodes {
        let staged = plan(&current, args.nodes, mesh.base_port);
        dir.save_staged(&staged)?;
        // Joining nodes start on the current layout, so they learn which partitions they gain
        // (and from whom) when the next one is applied.
        let node_bin = crate::local::up::node_binary(args.node_bin.clone())?;
        let ca = CertificateAuthority::load(&dir.ca_dir)?;
        for add in &staged.add {
            if mesh
                .nodes
                .iter()
                .any(|n| n.id == add.node_id && alive(n.pid))
            {
                continue;
            }
            mesh.nodes.retain(|n| n.id != add.node_id);
            let member = Member {
                node_id: add.node_id.clone(),
                gateway_addr: add.gateway_addr.clone(),
                peer_addr: add.peer_addr.clone(),
            };
            let i = number(&add.node_id).unwrap_or(1) - 1;
            let files = prepare_node(&dir.dir, &ca, &member, port(mesh.base_port, i, 1000))?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&files.log)?;
            let child = node_command(&node_bin, &files)
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: the node outlives this command; `up` stops it.
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", node_bin.display()))?;
            let pid = child.id();
            eprintln!(
                "started {} (pid {pid}, log {})",
                add.node_id,
                files.log.display()
            );
            // Recorded at once, so a rerun after a kill -9 knows this process.
            mesh.nodes.push(NodeEntry {
                id: add.node_id.clone(),
                gateway: add.gateway_addr.clone(),
                ops: String::new(),
                peer: add.peer_addr.clone(),
                partitions: 0,
                pid,
                data_dir: files.data_dir.clone(),
                leaving: false,
            });
            mesh.save(&dir.dir)?;
            let ready = wait_ready(&add.node_id, &files, || {
                (!alive(pid)).then(|| format!("see {}", files.log.display()))
            })
            .await?;
            if let Some(n) = mesh.nodes.iter_mut().find(|n| n.id == add.node_id) {
                (n.gateway, n.ops, n.peer) = (ready.gateway, ready.ops, ready.peer);
            }
            mesh.save(&dir.dir)?;
        }
        current = crate::layout::apply(&dir, current.version + 1).await?;
        eprintln!(
            "layout v{}: {} -> {} nodes",
            current.version,
            from,
            current.members.len()
        );
        crate::layout::rebalance::wait(&dir, args.timeout).await?;
    }

    // Stop the nodes that left: they have handed over and shredded everything.
    let leaving: Vec<NodeEntry> = mesh
        .nodes
        .iter()
        .filter(|n| !current.is_member(&n.id))
        .cloned()
        .collect();
    // Marked leaving (so `up` expects their exit), stopped, then forgotten: a rerun after a kill -9
    // still finds them in mesh.json.
    for n in &mut mesh.nodes {
        n.leaving |= !current.is_member(&n.id);
    }
    mesh.save(&dir.dir)?;
    for n in &leaving {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(n.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_gone(n.pid, Duration::from_secs(15)).await;
        eprintln!(
            "stopped {} (its data directory holds no customer data)",
            n.id
        );
    }
    mesh.nodes.retain(|n| current.is_member(&n.id));
    let loads = current.loads();
    for n in &mut mesh.nodes {
        n.partitions = loads.get(&n.id).copied().unwrap_or(0);
    }
    mesh.layout_version = current.version;
    mesh.save(&dir.dir)?;
    let summary = serde_json::json!({
        "layout_version": current.version,
        "nodes": mesh.nodes.iter().map(|n| &n.id).collect::<Vec<_>>(),
        "stopped": leaving.iter().map(|n| &n.id).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    print(output, &summary, || {
        format!(
            "mesh at {} nodes (layout v{}) in {:.1}s",
            mesh.nodes.len(),
            current.version,
            started.elapsed().as_secs_f64()
        )
    })?;
    Ok(true)
}
