//! `mesh-ctl status`: members, partition counts per node, layout agreement and health, asked of
//! every node of a local mesh (from its `mesh.json`) with the admin client certificate.

use crate::Output;
use crate::local::up::MeshFile;
use anyhow::Context as _;
use mesh_proto::v1::GetStatusRequest;
use mesh_proto::v1::admin_client::AdminClient;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The directory of a mesh started with `mesh-ctl up`.
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct NodeStatus {
    id: String,
    gateway: String,
    healthy: bool,
    layout_version: Option<u64>,
    partitions: Option<u32>,
    unreachable_peers: Vec<String>,
    error: Option<String>,
}

/// Prints the status; returns whether everything is healthy and agrees.
pub async fn run(args: StatusArgs, output: Output) -> anyhow::Result<bool> {
    let path = args.dir.join("mesh.json");
    let mesh: MeshFile = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is `mesh-ctl up` running?)", path.display()))?,
    )?;
    let admin = mesh
        .clients
        .get("admin")
        .context("mesh.json has no admin client")?;
    let tls = mesh_node::api::client::client_tls(&mesh.ca_cert, &admin.cert, &admin.key)?;
    let mut rows = Vec::new();
    for node in &mesh.nodes {
        let mut row = NodeStatus {
            id: node.id.clone(),
            gateway: node.gateway.clone(),
            healthy: false,
            layout_version: None,
            partitions: None,
            unreachable_peers: Vec::new(),
            error: None,
        };
        let asked = async {
            let channel = mesh_node::api::client::connect(
                node.gateway.parse()?,
                &mesh.server_name,
                tls.clone(),
            )
            .await?;
            anyhow::Ok(
                AdminClient::new(channel)
                    .get_status(GetStatusRequest {})
                    .await?
                    .into_inner(),
            )
        };
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(s)) => {
                row.healthy = true;
                row.layout_version = Some(s.layout_version);
                row.partitions = s
                    .members
                    .iter()
                    .find(|m| m.node_id == node.id)
                    .map(|m| m.partitions);
                row.unreachable_peers = s
                    .members
                    .iter()
                    .filter(|m| !m.reachable)
                    .map(|m| m.node_id.clone())
                    .collect();
            }
            Ok(Err(e)) => row.error = Some(format!("{e:#}")),
            Err(_) => row.error = Some("no answer within 5s".into()),
        }
        rows.push(row);
    }
    let versions: std::collections::BTreeSet<u64> =
        rows.iter().filter_map(|r| r.layout_version).collect();
    let ok = rows
        .iter()
        .all(|r| r.healthy && r.unreachable_peers.is_empty())
        && versions.len() == 1;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "nodes": rows }))?
        ),
        Output::Table => {
            println!(
                "{:<6} {:<22} {:<8} {:>7} {:>11}  problems",
                "node", "gateway", "health", "layout", "partitions"
            );
            for r in &rows {
                let problems = match (&r.error, r.unreachable_peers.is_empty()) {
                    (Some(e), _) => e.clone(),
                    (None, false) => format!("cannot reach {}", r.unreachable_peers.join(", ")),
                    (None, true) => String::new(),
                };
                println!(
                    "{:<6} {:<22} {:<8} {:>7} {:>11}  {problems}",
                    r.id,
                    r.gateway,
                    if r.healthy { "up" } else { "DOWN" },
                    r.layout_version.map_or("-".into(), |v| format!("v{v}")),
                    r.partitions.map_or("-".into(), |p| p.to_string()),
                );
            }
            if versions.len() > 1 {
                println!("layout versions disagree: {versions:?}");
            }
        }
    }
    Ok(ok)
}
