//! `mesh-ctl layout show | stage | apply | revert`: staged membership changes, signed into the next
//! layout version and pushed to every node (garage's model: stage, review, `apply --version
//! current+1`, and nodes refuse anything else).

pub mod rebalance;
pub mod scale;

use crate::Output;
use crate::control::{MeshDir, Staged, StagedMember, admin, all_members};
use crate::output::print;
use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::Layout;
use mesh_proto::v1::{ApplyLayoutRequest, GetLayoutRequest, SignedLayout};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum LayoutCommand {
    /// The current layout, what each node runs, and the staged changes with their effect.
    Show(DirArg),
    /// Stage a membership change for the next `layout apply`.
    Stage {
        #[command(subcommand)]
        change: StageCommand,
    },
    /// Sign the staged changes as layout version V (exactly current + 1) and push it to every
    /// node; with the current version, push it again (resuming an interrupted apply).
    Apply {
        #[arg(long)]
        version: u64,
        #[command(flatten)]
        dir: DirArg,
        /// Then wait for the rebalance, with a progress bar on stderr.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Discard the staged changes.
    Revert(DirArg),
}

#[derive(clap::Args)]
pub struct DirArg {
    /// The mesh directory (CA, control key, layouts).
    #[arg(long, default_value = "mesh-local")]
    pub dir: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum StageCommand {
    /// Add a node (it must be running, started with the current layout, before `apply`).
    Add {
        node_id: String,
        /// Where clients reach its gateway (host:port).
        #[arg(long)]
        gateway: String,
        /// Where peers reach it over QUIC (host:port).
        #[arg(long)]
        peer: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Remove a node (its partitions move to the others; stop it once `rebalance status` is complete).
    Remove {
        node_id: String,
        #[command(flatten)]
        dir: DirArg,
    },
}

/// The next layout from the current one and the staged changes.
pub fn next_layout(current: &Layout, staged: &Staged) -> anyhow::Result<Layout> {
    if staged.is_empty() {
        bail!("nothing is staged (use `mesh-ctl layout stage add|remove`)");
    }
    Ok(current.next(staged.members_after(current))?)
}

/// Signs the staged changes as version `version`, records it, and pushes it to every node; or,
/// for the current version, pushes it again. Refuses to start a change while one is under way.
pub async fn apply(dir: &MeshDir, version: u64) -> anyhow::Result<Layout> {
    let (current, current_signed) = dir.layout()?;
    let (layout, signed) = if version == current.version {
        (current, current_signed)
    } else if version == current.version + 1 {
        let staged = dir.staged()?;
        let next = next_layout(&current, &staged)?;
        let p = crate::layout::rebalance::progress(dir).await?;
        if !p.complete {
            bail!(
                "layout v{} is still being rolled out ({}/{} partitions moved, {} old copies to shred{}); wait for `mesh-ctl rebalance status --wait` before applying v{version}",
                current.version,
                p.moved,
                p.moving,
                p.leftovers,
                match p.nodes.iter().find(|n| n.error.is_some()) {
                    Some(n) => format!(", node {} cannot be asked", n.node_id),
                    None => String::new(),
                }
            );
        }
        let signed = next.sign(&dir.control_key()?);
        dir.save_layout(&signed)?;
        dir.save_staged(&Staged::default())?;
        (next, signed)
    } else {
        bail!(
            "--version {version}: the mesh is at layout v{} and a layout may not skip a version; apply v{}",
            current.version,
            current.version + 1
        );
    };
    push(dir, &layout, &signed).await?;
    Ok(layout)
}

/// Sends `signed` to every member of it and of the layout before it; every one must accept it.
pub async fn push(dir: &MeshDir, layout: &Layout, signed: &SignedLayout) -> anyhow::Result<()> {
    let tls = dir.admin_tls()?;
    let previous = dir.previous_layout()?;
    let members = all_members(layout, previous.as_ref());
    let sends = members.iter().map(|m| {
        let tls = tls.clone();
        async move {
            let mut client = admin(m, tls).await?;
            client
                .apply_layout(ApplyLayoutRequest {
                    layout: Some(signed.clone()),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
        }
    });
    let results = futures::future::join_all(sends).await;
    // Every node must take it, leaving ones too: a leaving node still on the older layout would
    // refuse the connections of nodes that join, so they could never pull from it.
    let mut refused = Vec::new();
    for (m, r) in members.iter().zip(results) {
        match r {
            Ok(_) => tracing::info!(node = %m.node_id, version = layout.version, "layout applied"),
            Err(e) => refused.push(format!("{}: {e:#}", m.node_id)),
        }
    }
    if !refused.is_empty() {
        bail!(
            "layout v{} was not applied everywhere ({}); run `mesh-ctl layout apply --version {}` again",
            layout.version,
            refused.join("; "),
            layout.version
        );
    }
    Ok(())
}

fn members_json(l: &Layout) -> serde_json::Value {
    let loads = l.loads();
    l.members
        .iter()
        .map(|m| {
            serde_json::json!({
                "node_id": m.node_id,
                "gateway": m.gateway_addr,
                "peer": m.peer_addr,
                "partitions": loads.get(&m.node_id).copied().unwrap_or(0),
            })
        })
        .collect()
}

pub async fn run(command: LayoutCommand, output: Output) -> anyhow::Result<bool> {
    match command {
        LayoutCommand::Show(args) => show(&MeshDir::open(&args.dir)?, output).await,
        LayoutCommand::Stage { change } => {
            let (dir, change) = match change {
                StageCommand::Add {
                    node_id,
                    gateway,
                    peer,
                    dir,
                } => (dir, Ok((node_id, gateway, peer))),
                StageCommand::Remove { node_id, dir } => (dir, Err(node_id)),
            };
            let dir = MeshDir::open(&dir.dir)?;
            let (current, _) = dir.layout()?;
            let mut staged = dir.staged()?;
            match change {
                Ok((node_id, gateway_addr, peer_addr)) => {
                    if !mesh_node::security::identity::is_valid_name(&node_id) {
                        bail!(
                            "node id `{node_id}`: 1-63 lowercase letters, digits, `-`, `_` or `.`"
                        );
                    }
                    if current.is_member(&node_id) && !staged.remove.contains(&node_id) {
                        bail!(
                            "{node_id} is already a member of layout v{}",
                            current.version
                        );
                    }
                    if staged.add.iter().any(|a| a.node_id == node_id) {
                        bail!("{node_id} is already staged to join");
                    }
                    for (what, addr) in [("--gateway", &gateway_addr), ("--peer", &peer_addr)] {
                        if addr
                            .rsplit_once(':')
                            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                        {
                            bail!("{what} `{addr}` is not host:port");
                        }
                    }
                    staged.add.push(StagedMember {
                        node_id,
                        gateway_addr,
                        peer_addr,
                    });
                }
                Err(node_id) => {
                    if let Some(i) = staged.add.iter().position(|a| a.node_id == node_id) {
                        staged.add.remove(i);
                    } else if !current.is_member(&node_id) {
                        bail!("{node_id} is not a member of layout v{}", current.version);
                    } else if !staged.remove.contains(&node_id) {
                        staged.remove.push(node_id);
                    }
                }
            }
            // Check the result is a valid layout now, not at apply time.
            if !staged.is_empty() {
                next_layout(&current, &staged)?;
            }
            dir.save_staged(&staged)?;
            show(&dir, output).await
        }
        LayoutCommand::Revert(args) => {
            let dir = MeshDir::open(&args.dir)?;
            let staged = dir.staged()?;
            dir.save_staged(&Staged::default())?;
            print(output, &serde_json::to_value(&staged)?, || {
                if staged.is_empty() {
                    "nothing was staged".into()
                } else {
                    format!(
                        "discarded: add {:?}, remove {:?}",
                        staged.add.iter().map(|a| &a.node_id).collect::<Vec<_>>(),
                        staged.remove
                    )
                }
            })?;
            Ok(true)
        }
        LayoutCommand::Apply {
            version,
            dir,
            wait,
            timeout,
        } => {
            let dir = MeshDir::open(&dir.dir)?;
            let layout = apply(&dir, version).await?;
            let progress = if wait {
                Some(crate::layout::rebalance::wait(&dir, timeout).await?)
            } else {
                None
            };
            print(
                output,
                &serde_json::json!({
                    "version": layout.version,
                    "members": members_json(&layout),
                    "rebalance": progress,
                }),
                || format!("layout v{} applied to every node", layout.version),
            )?;
            Ok(true)
        }
    }
}

async fn show(dir: &MeshDir, output: Output) -> anyhow::Result<bool> {
    let (current, current_signed) = dir.layout()?;
    let staged = dir.staged()?;
    let next = if staged.is_empty() {
        None
    } else {
        Some(next_layout(&current, &staged).context("the staged changes")?)
    };
    let tls = dir.admin_tls()?;
    let previous = dir.previous_layout()?;
    let mut running = Vec::new();
    for m in all_members(&current, previous.as_ref()) {
        // The exact signed layout each node runs: the same version signed differently (or not
        // by this directory's control key) is a disagreement too.
        let version = async {
            let mut c = admin(&m, tls.clone()).await?;
            let runs =
                tokio::time::timeout(Duration::from_secs(5), c.get_layout(GetLayoutRequest {}))
                    .await??
                    .into_inner()
                    .layout
                    .context("runs no layout")?;
            let layout = Layout::verify(&runs, &dir.control_key()?.public())
                .context("runs a layout this control key did not sign")?;
            if layout.version == current.version && runs != current_signed {
                anyhow::bail!("runs a different layout v{}", layout.version);
            }
            anyhow::Ok(layout.version)
        }
        .await;
        running.push((m.node_id.clone(), version.map_err(|e| format!("{e:#}"))));
    }
    let agreed = running
        .iter()
        .all(|(_, v)| v.as_ref().is_ok_and(|v| *v == current.version));
    let json = serde_json::json!({
        "version": current.version,
        "members": members_json(&current),
        "nodes": running.iter().map(|(id, v)| match v {
            Ok(v) => serde_json::json!({"node_id": id, "layout_version": v}),
            Err(e) => serde_json::json!({"node_id": id, "error": e}),
        }).collect::<Vec<_>>(),
        "staged": staged,
        "next": next.as_ref().map(|n| serde_json::json!({
            "version": n.version,
            "members": members_json(n),
            "moves": n.moved_from(&current),
        })),
    });
    print(output, &json, || {
        let mut s = format!(
            "layout v{} ({} members)\n",
            current.version,
            current.members.len()
        );
        let loads = current.loads();
        for m in &current.members {
            let runs =
                running
                    .iter()
                    .find(|(id, _)| *id == m.node_id)
                    .map_or("-".to_owned(), |(_, v)| match v {
                        Ok(v) => format!("runs v{v}"),
                        Err(e) => format!("unreachable: {e}"),
                    });
            s += &format!(
                "  {:<6} {:>5} partitions  gateway {:<21} {}\n",
                m.node_id,
                loads.get(&m.node_id).copied().unwrap_or(0),
                m.gateway_addr,
                runs
            );
        }
        match &next {
            None => s += "no staged changes\n",
            Some(n) => {
                s += &format!(
                    "staged for v{}: add {:?}, remove {:?}; {} partitions would move\n  apply with: mesh-ctl layout apply --version {}\n",
                    n.version,
                    staged.add.iter().map(|a| &a.node_id).collect::<Vec<_>>(),
                    staged.remove,
                    n.moved_from(&current),
                    n.version
                );
            }
        }
        s.trim_end().to_owned()
    })?;
    Ok(agreed)
}
