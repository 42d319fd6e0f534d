//! `mesh-ctl audit query` (the mesh-wide trail through any gateway, as an auditor), `mesh-ctl audit
//! watch` (records as they are written, on one node) and `mesh-ctl audit verify` (each node's chain
//! and checkpoint signatures, read from disk up to a checkpoint each running node signs for the
//! run). `access` (`mesh-ctl access show`) is here too: the role
//! table is what the trail is read against.

pub mod access;

use crate::Output;
use crate::local::up::{MeshFile, NodeEntry};
use anyhow::Context as _;
use base64::Engine as _;
use mesh_node::audit::chain::{self, Checkpoint};
use mesh_node::audit::log;
use mesh_node::security::identity::Identity;
use mesh_proto::v1::audit_client::AuditClient;
use mesh_proto::v1::{AuditCheckpointRequest, AuditQueryRequest, AuditRecord};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Record filters shared by `query` and `watch`; empty matches anything.
#[derive(clap::Args, Debug, Clone)]
pub struct Filter {
    /// A certificate identity, for example spiffe://mesh.local/client/oms/local-oms.
    #[arg(long, default_value = "")]
    principal: String,
    #[arg(long, default_value = "")]
    role: String,
    /// Full method path, for example /dsm.v1.OrderGateway/GetOrder.
    #[arg(long, default_value = "")]
    action: String,
    /// allow or deny.
    #[arg(long, default_value = "")]
    decision: String,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Query the audit trail of every node through one gateway, with the auditor certificate.
    Query {
        /// The directory of a mesh started with `mesh-ctl up`.
        #[arg(long, default_value = "mesh-local")]
        dir: PathBuf,
        #[command(flatten)]
        filter: Filter,
        /// A keyed hash of a customer or order, as found in records.
        #[arg(long, default_value = "")]
        subject: String,
        /// Only records newer than this (for example 15m, 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Follow every node's audit trail live (each node's Watch, merged), until interrupted.
    Watch {
        /// The directory of a mesh started with `mesh-ctl up`.
        #[arg(long, default_value = "mesh-local")]
        dir: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
    /// Verify every node's audit chain and checkpoint signatures; exit 1 naming the first bad record.
    Verify {
        /// The directory of a mesh started with `mesh-ctl up`.
        #[arg(long, default_value = "mesh-local")]
        dir: PathBuf,
        /// Verify one audit directory instead (with --ca).
        #[arg(long)]
        audit_dir: Option<PathBuf>,
        #[arg(long)]
        ca: Option<PathBuf>,
        /// With --audit-dir: the node whose log this must be.
        #[arg(long)]
        node: Option<String>,
    },
}

/// Whether a checkpoint is genuinely signed by the node it names, with a certificate from `ca` that
/// was valid when the checkpoint was made.
fn checkpoint_genuine(
    cp: &Checkpoint,
    verifier: &dyn rustls::server::danger::ClientCertVerifier,
) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(der), Ok(sig)) = (b64.decode(&cp.cert), b64.decode(&cp.sig)) else {
        return false;
    };
    let at = UnixTime::since_unix_epoch(Duration::from_millis(cp.ts.max(0) as u64));
    if verifier
        .verify_client_cert(&CertificateDer::from(der.as_slice()), &[], at)
        .is_err()
    {
        return false;
    }
    match Identity::from_certificate(&der) {
        Ok(Identity::Node { node_id, .. }) if node_id == cp.node => {}
        _ => return false,
    }
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    let spki = cert.public_key().subject_public_key.data.to_vec();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        spki,
    )
    .verify(
        &chain::checkpoint_payload(&cp.node, cp.seq, &cp.head, cp.ts),
        &sig,
    )
    .is_ok()
}

/// One node's log, verified as far as a checkpoint covers it.
#[derive(Debug)]
pub struct Checked {
    pub verified: Result<chain::Verified, chain::ChainError>,
    /// Records written after the checkpoint the verifier asked for (a live node keeps writing):
    /// not checked by this run, and not suspect either.
    pub pending: usize,
    /// Whether the node signed a checkpoint for this run (else its log was read as it lay).
    pub live: bool,
}

/// Verifies one node's audit directory, up to record `upto` when given (the last record of a
/// checkpoint the node signed for this run; later ones are left as pending).
pub fn verify_dir(
    dir: &Path,
    ca: &Path,
    node: Option<&str>,
    upto: Option<u64>,
) -> anyhow::Result<Checked> {
    let roots = mesh_node::security::tls::load_certs(ca)?;
    let verifier = mesh_node::security::tls::client_verifier(&roots)?;
    // Checkpoints first: a live node only checkpoints records already on disk.
    let checkpoints = log::read_checkpoints(dir)?;
    let lines = log::read_all(dir)?;
    // Cut by position, not by what the lines say: a deleted or inserted line still shows.
    let first_seq = lines
        .first()
        .and_then(|l| serde_json::from_slice::<chain::Record>(l).ok())
        .map(|r| r.seq);
    let keep = match (upto, first_seq) {
        (Some(upto), Some(first)) => usize::try_from((upto + 1).saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(lines.len()),
        _ => lines.len(),
    };
    let refs: Vec<&[u8]> = lines[..keep].iter().map(Vec::as_slice).collect();
    Ok(Checked {
        verified: chain::verify(&refs, &checkpoints, node, &|cp| {
            checkpoint_genuine(cp, verifier.as_ref())
        }),
        pending: lines.len() - keep,
        live: upto.is_some(),
    })
}

/// Asks a running node to sign its chain head now (`Audit/Checkpoint`, as the auditor); the last
/// record the checkpoint covers.
async fn fresh_checkpoint(mesh: &MeshFile, node: &NodeEntry) -> anyhow::Result<u64> {
    let (_, tls) = auditor_tls(mesh)?;
    let ask = async {
        let channel =
            mesh_node::api::client::connect(node.gateway.parse()?, &mesh.server_name, tls).await?;
        let answer = AuditClient::new(channel)
            .checkpoint(AuditCheckpointRequest {})
            .await?
            .into_inner();
        anyhow::ensure!(
            answer.node == node.id,
            "{} answered for node {}",
            node.gateway,
            answer.node
        );
        Ok(answer.seq)
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .context("no answer within 5 s")?
}

/// Verifies the log of a node of a local mesh: up to a checkpoint it signs for this run when it
/// runs (so its newest records are covered, not taken for forgeries), else as it lies on disk.
pub async fn verify_node(mesh: &MeshFile, node: &NodeEntry, ca: &Path) -> anyhow::Result<Checked> {
    let upto = match fresh_checkpoint(mesh, node).await {
        Ok(seq) => Some(seq),
        Err(e) => {
            tracing::debug!(node = %node.id, error = %format!("{e:#}"), "verifying the log as it lies");
            None
        }
    };
    verify_dir(&node.data_dir.join("audit"), ca, Some(&node.id), upto)
}

pub async fn run(cmd: AuditCommand, output: Output) -> anyhow::Result<bool> {
    match cmd {
        AuditCommand::Query {
            dir,
            filter,
            subject,
            since,
            limit,
        } => query(&dir, filter, subject, since, limit, output).await,
        AuditCommand::Watch { dir, filter } => watch(&dir, filter, output).await,
        AuditCommand::Verify {
            dir,
            audit_dir,
            ca,
            node,
        } => verify(&dir, audit_dir, ca, node, output).await,
    }
}

/// `audit query`: one gateway answers for the whole mesh, so the first node listed is enough.
async fn query(
    dir: &Path,
    filter: Filter,
    subject: String,
    since: Option<Duration>,
    limit: u32,
    output: Output,
) -> anyhow::Result<bool> {
    let mesh = read_mesh(dir)?;
    let (auditor, tls) = auditor_tls(&mesh)?;
    let node = mesh.nodes.first().context("mesh.json lists no node")?;
    let channel =
        mesh_node::api::client::connect(node.gateway.parse()?, &mesh.server_name, tls).await?;
    // Signed with the auditor's key: the nodes the gateway forwards the query to check the proof.
    let signer = mesh_node::security::proof::Signer::from_pem_file(&auditor.key)
        .map_err(anyhow::Error::msg)?;
    let from = since.map_or(0, |d| {
        mesh_node::domain::clock::now_ms() - d.as_millis() as i64
    });
    let q = AuditQueryRequest {
        from_unix_ms: from,
        principal: filter.principal,
        role: filter.role,
        action: filter.action,
        subject,
        decision: filter.decision,
        limit,
        ..Default::default()
    };
    // One proof per member, each naming it: the gateway forwards each member only its own.
    let members: Vec<&str> = mesh.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut stream = AuditClient::new(channel)
        .query(signer.signed_for_members(mesh_node::api::audit::QUERY, q, &members))
        .await?
        .into_inner();
    if output == Output::Table {
        println!(
            "{:<6} {:>6} {:<24} {:<8} {:<42} {:<6} principal",
            "node", "seq", "time", "role", "action", "result"
        );
    }
    while let Some(r) = stream.message().await? {
        match output {
            Output::Json => println!("{}", r.line),
            Output::Table => println!("{}", query_row(&r)),
        }
    }
    Ok(true)
}

/// One `audit query` table row: time as RFC 3339, a denial with its reason.
fn query_row(r: &AuditRecord) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.ts_unix_ms) * 1_000_000)
        .map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let result = if r.decision == "allow" {
        "allow".to_owned()
    } else {
        format!("deny:{}", r.reason)
    };
    format!(
        "{:<6} {:>6} {:<24} {:<8} {:<42} {:<6} {}",
        r.node, r.seq, t, r.role, r.action, result, r.principal
    )
}

/// `audit watch`: each node streams only its own records, so one Watch per node, merged.
async fn watch(dir: &Path, filter: Filter, output: Output) -> anyhow::Result<bool> {
    use futures::StreamExt as _;
    let mesh = read_mesh(dir)?;
    let (_, tls) = auditor_tls(&mesh)?;
    let w = mesh_proto::v1::AuditWatchRequest {
        principal: filter.principal,
        role: filter.role,
        action: filter.action,
        decision: filter.decision,
    };
    let mut streams = Vec::new();
    for node in &mesh.nodes {
        let channel =
            mesh_node::api::client::connect(node.gateway.parse()?, &mesh.server_name, tls.clone())
                .await?;
        streams.push(
            AuditClient::new(channel)
                .watch(w.clone())
                .await?
                .into_inner(),
        );
    }
    let mut merged = futures::stream::select_all(streams);
    while let Some(r) = merged.next().await {
        let r = r?;
        match output {
            Output::Json => println!("{}", r.line),
            Output::Table => println!(
                "{:<6} {:>6} {:<8} {:<42} {:<6} {}",
                r.node, r.seq, r.role, r.action, r.decision, r.principal
            ),
        }
    }
    Ok(true)
}

/// `audit verify`: every node of the mesh in `dir` (each asked for a fresh checkpoint first), or
/// the one `--audit-dir`. Ok(false) when a chain is bad, so the command exits 1.
async fn verify(
    dir: &Path,
    audit_dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    node: Option<String>,
    output: Output,
) -> anyhow::Result<bool> {
    let checked: Vec<(String, Checked)> = match (audit_dir, ca) {
        (Some(a), Some(ca)) => vec![(
            a.display().to_string(),
            verify_dir(&a, &ca, node.as_deref(), None)?,
        )],
        (Some(_), None) => anyhow::bail!("--audit-dir needs --ca"),
        _ => {
            let mesh = read_mesh(dir)?;
            // Every CA the mesh has had: checkpoints signed before a CA rotation carry
            // certificates from the old one.
            let ca = crate::pki::rotation::history_path(&dir.join("ca"));
            let mut checked = Vec::new();
            for n in &mesh.nodes {
                checked.push((n.id.clone(), verify_node(&mesh, n, &ca).await?));
            }
            checked
        }
    };
    let mut ok = true;
    let mut report = Vec::new();
    for (name, c) in checked {
        match c.verified {
            Ok(v) => report.push(serde_json::json!({ "node": name, "ok": true, "records": v.records, "checkpoints": v.checkpoints, "last_seq": v.last_seq, "head": v.head, "pending": c.pending, "live": c.live })),
            Err(e) => {
                ok = false;
                report.push(serde_json::json!({ "node": name, "ok": false, "error": e.to_string(), "live": c.live }));
            }
        }
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_verify_table(&report),
    }
    Ok(ok)
}

/// The `audit verify` report as a table, one line per log.
fn print_verify_table(report: &[serde_json::Value]) {
    for r in report {
        match r["ok"].as_bool() {
            Some(true) => println!(
                "{:<8} ok   {} records, {} checkpoints, head {}{}",
                r["node"].as_str().unwrap_or("?"),
                r["records"],
                r["checkpoints"],
                r["head"].as_str().unwrap_or(""),
                match r["pending"].as_u64() {
                    Some(n) if n > 0 => format!(" ({n} newer records left for the next run)"),
                    _ => String::new(),
                }
            ),
            _ => println!(
                "{:<8} FAIL {}",
                r["node"].as_str().unwrap_or("?"),
                r["error"].as_str().unwrap_or("")
            ),
        }
    }
}

/// The auditor client of a local mesh and its TLS settings.
fn auditor_tls(
    mesh: &MeshFile,
) -> anyhow::Result<(
    &crate::local::up::ClientEntry,
    std::sync::Arc<rustls::ClientConfig>,
)> {
    let auditor = mesh
        .clients
        .get("auditor")
        .context("mesh.json has no auditor client")?;
    Ok((
        auditor,
        mesh_node::api::client::client_tls(&mesh.ca_cert, &auditor.cert, &auditor.key)?,
    ))
}

fn read_mesh(dir: &Path) -> anyhow::Result<MeshFile> {
    let path = dir.join("mesh.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is `mesh-ctl up` running?)", path.display()))?,
    )?)
}
