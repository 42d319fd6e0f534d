//! `mesh-ctl check`: a checklist of what a healthy mesh needs, each item passed (√), warned (‼)
//! or failed (×), in the manner of `linkerd check`. Exit 1 if anything failed.
//!
//! - certificates: the trusted CAs and every client certificate in the mesh directory are valid
//!   and not within `--warn-within` of expiry; every node serves a valid certificate (as the node
//!   itself reports it, not as a file says) and its last credentials reload succeeded;
//! - mesh: every member of the layout answers, reaches every other member, and runs exactly the
//!   signed layout in the mesh directory;
//! - audit: every local node's audit chain verifies against its signed checkpoints.

use crate::Output;
use crate::control::{MeshDir, admin, all_members};
use anyhow::Context as _;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::control_key::ControlPublicKey;
use mesh_proto::v1::{
    GetLayoutRequest, GetStatusRequest, GetStatusResponse, MemberStatus, SignedLayout, TlsStatus,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The mesh directory (`mesh-ctl up --dir`).
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// Warn about certificates that expire sooner than this.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    warn_within: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, serde::Serialize)]
struct Item {
    section: &'static str,
    check: String,
    verdict: Verdict,
    detail: String,
}

struct Checklist {
    items: Vec<Item>,
    now: i64,
    warn_within: i64,
}

impl Checklist {
    fn push(&mut self, section: &'static str, check: String, verdict: Verdict, detail: String) {
        self.items.push(Item {
            section,
            check,
            verdict,
            detail,
        });
    }

    /// A certificate's expiry: fails if expired, warns inside the window.
    fn expiry(&mut self, section: &'static str, what: String, not_after: i64) {
        let left = not_after - self.now;
        let (verdict, detail) = if left <= 0 {
            (Verdict::Fail, format!("expired {} ago", human(-left)))
        } else if left < self.warn_within {
            (
                Verdict::Warn,
                format!("expires in {}: rotate it", human(left)),
            )
        } else {
            (Verdict::Ok, format!("valid for {}", human(left)))
        };
        self.push(section, what, verdict, detail);
    }
}

/// Days above two days, else hours and minutes.
fn human(secs: i64) -> String {
    let secs = secs.max(0);
    if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

fn not_after_of(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

fn certs(path: &Path) -> Vec<Vec<u8>> {
    mesh_node::security::tls::load_certs(path)
        .map(|c| c.into_iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default()
}

pub async fn run(args: CheckArgs, output: Output) -> anyhow::Result<bool> {
    let mesh = MeshDir::open(&args.dir)?;
    let mut list = Checklist {
        items: Vec::new(),
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
        warn_within: args.warn_within.as_secs() as i64,
    };
    // Audit chains first: the admin calls of the member checks add records of their own.
    check_audit_chains(&mut list, &mesh).await?;
    let cas = check_cas(&mut list, &mesh);
    check_client_certificates(&mut list, &mesh);
    check_members(&mut list, &mesh, cas).await?;

    // Shown by section, in this order; within a section in the order checked.
    let order = |s: &str| {
        ["certificates", "mesh", "audit"]
            .iter()
            .position(|x| *x == s)
    };
    list.items.sort_by_key(|i| order(i.section));
    let ok = list.items.iter().all(|i| i.verdict != Verdict::Fail);
    print_checklist(&list.items, ok, output)?;
    Ok(ok)
}

/// Audit: each local node's chain (the nodes `mesh.json` lists) against the signed checkpoints,
/// trusting every CA the mesh has had.
async fn check_audit_chains(list: &mut Checklist, mesh: &MeshDir) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(mesh.dir.join("mesh.json")) else {
        return Ok(());
    };
    let file: crate::local::up::MeshFile = serde_json::from_str(&text)?;
    let roots = crate::pki::rotation::history_path(&mesh.ca_dir);
    for n in &file.nodes {
        // Up to a checkpoint the node signs now, so its newest records are covered.
        let (verdict, detail) = match crate::audit::verify_node(&file, n, &roots).await {
            Ok(crate::audit::Checked {
                verified: Ok(v), ..
            }) => (
                Verdict::Ok,
                format!("{} records, {} checkpoints", v.records, v.checkpoints),
            ),
            Ok(crate::audit::Checked {
                verified: Err(e), ..
            }) => (Verdict::Fail, e.to_string()),
            Err(e) => (Verdict::Fail, format!("{e:#}")),
        };
        list.push(
            "audit",
            format!("node {} audit chain", n.id),
            verdict,
            detail,
        );
    }
    Ok(())
}

/// Certificates: the CAs of the trust bundle (the CA certificate alone before any rotation).
/// Returns how many there are, which every node must trust.
fn check_cas(list: &mut Checklist, mesh: &MeshDir) -> usize {
    let bundle = crate::pki::rotation::trust_path(&mesh.ca_dir);
    let bundle = if bundle.exists() {
        bundle
    } else {
        mesh.ca_dir.join(mesh_node::security::pki::CA_CERT_FILE)
    };
    let cas = certs(&bundle);
    if cas.is_empty() {
        list.push(
            "certificates",
            "trust bundle".into(),
            Verdict::Fail,
            format!("{} holds no CA certificate", bundle.display()),
        );
    }
    for (i, ca) in cas.iter().enumerate() {
        let label = if cas.len() > 1 {
            format!("CA {} of {} (rotation under way)", i + 1, cas.len())
        } else {
            "CA certificate".to_owned()
        };
        list.expiry("certificates", label, not_after_of(ca).unwrap_or(0));
    }
    cas.len()
}

/// Certificates: every client certificate in `DIR/clients`, by file name.
fn check_client_certificates(list: &mut Checklist, mesh: &MeshDir) {
    let clients = mesh.dir.join("clients");
    let mut client_files: Vec<PathBuf> = std::fs::read_dir(&clients)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect()
        })
        .unwrap_or_default();
    client_files.sort();
    for path in client_files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let not_after = certs(&path)
            .first()
            .and_then(|c| not_after_of(c))
            .unwrap_or(0);
        list.expiry(
            "certificates",
            format!("client certificate {name}"),
            not_after,
        );
    }
}

/// What every member must run: the mesh directory's current layout, exactly as signed.
struct AgreedLayout {
    layout: Layout,
    signed: SignedLayout,
    control: ControlPublicKey,
}

/// Every member of the current and previous layout, asked once over its admin API; each answer
/// feeds the node certificate checks and the mesh checks, in member order.
async fn check_members(list: &mut Checklist, mesh: &MeshDir, cas: usize) -> anyhow::Result<()> {
    let (layout, signed) = mesh.layout()?;
    let previous = mesh.previous_layout()?;
    let tls = mesh.admin_tls()?;
    let agreed = AgreedLayout {
        layout,
        signed,
        control: mesh.control_key()?.public(),
    };
    for m in all_members(&agreed.layout, previous.as_ref()) {
        let id = m.node_id.clone();
        let (status, runs) = match ask_member(&m, tls.clone()).await {
            Ok(answer) => answer,
            Err(detail) => {
                list.push("mesh", format!("node {id} answers"), Verdict::Fail, detail);
                continue;
            }
        };
        list.push(
            "mesh",
            format!("node {id} answers"),
            Verdict::Ok,
            m.gateway_addr.clone(),
        );
        if let Some(t) = &status.tls {
            check_node_certificate(list, &id, t, cas);
        }
        check_peers_reachable(list, &id, &status.members);
        check_layout_agreed(list, &id, &runs, &agreed);
    }
    Ok(())
}

/// A member's status and the layout it runs, or why it gave neither within 10 s.
async fn ask_member(
    m: &Member,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(GetStatusResponse, SignedLayout), String> {
    let asked = async {
        let mut c = admin(m, tls).await?;
        let status = c.get_status(GetStatusRequest {}).await?.into_inner();
        let runs = c
            .get_layout(GetLayoutRequest {})
            .await?
            .into_inner()
            .layout
            .context("runs no layout")?;
        anyhow::Ok((status, runs))
    };
    match tokio::time::timeout(Duration::from_secs(10), asked).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// Certificates: the certificate a node serves (as it reports it, not as a file says), whether
/// its last credentials reload succeeded, and whether it trusts the whole bundle.
fn check_node_certificate(list: &mut Checklist, id: &str, t: &TlsStatus, cas: usize) {
    list.expiry(
        "certificates",
        format!("node {id} certificate (serial {})", t.cert_serial),
        t.cert_not_after_unix,
    );
    if t.last_error.is_empty() {
        list.push(
            "certificates",
            format!("node {id} credentials"),
            Verdict::Ok,
            format!(
                "generation {}, {} CA(s) trusted, {} revoked",
                t.generation, t.trusted_cas, t.revoked
            ),
        );
    } else {
        list.push(
            "certificates",
            format!("node {id} credentials"),
            Verdict::Fail,
            format!("last reload failed: {}", t.last_error),
        );
    }
    if t.trusted_cas as usize != cas {
        list.push(
            "certificates",
            format!("node {id} trust bundle"),
            Verdict::Fail,
            format!("trusts {} CA(s), the bundle has {}", t.trusted_cas, cas),
        );
    }
}

/// Mesh: whether a node reaches every member it knows of.
fn check_peers_reachable(list: &mut Checklist, id: &str, members: &[MemberStatus]) {
    let unreachable: Vec<String> = members
        .iter()
        .filter(|p| !p.reachable)
        .map(|p| p.node_id.clone())
        .collect();
    if members.is_empty() {
        // A node that left the mesh has no members to reach.
    } else if unreachable.is_empty() {
        list.push(
            "mesh",
            format!("node {id} reaches its peers"),
            Verdict::Ok,
            format!("{} member(s)", members.len()),
        );
    } else {
        list.push(
            "mesh",
            format!("node {id} reaches its peers"),
            Verdict::Fail,
            format!("cannot reach {}", unreachable.join(", ")),
        );
    }
}

/// Mesh: whether a node runs exactly the signed layout of the mesh directory.
fn check_layout_agreed(list: &mut Checklist, id: &str, runs: &SignedLayout, agreed: &AgreedLayout) {
    match Layout::verify(runs, &agreed.control) {
        Err(e) => list.push(
            "mesh",
            format!("node {id} layout"),
            Verdict::Fail,
            format!("runs a layout this control key did not sign: {e}"),
        ),
        Ok(l) if l.version == agreed.layout.version && *runs == agreed.signed => list.push(
            "mesh",
            format!("node {id} layout"),
            Verdict::Ok,
            format!("v{} agreed", l.version),
        ),
        Ok(l) => list.push(
            "mesh",
            format!("node {id} layout"),
            Verdict::Fail,
            format!(
                "runs v{}, the mesh is at v{}",
                l.version, agreed.layout.version
            ),
        ),
    }
}

/// The sorted checklist, as JSON or as sections with a mark per item and a closing verdict.
fn print_checklist(items: &[Item], ok: bool, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "checks": items }))?
        ),
        Output::Table => {
            let mut section = "";
            for i in items {
                if i.section != section {
                    section = i.section;
                    println!("\n{section}\n{}", "-".repeat(section.len()));
                }
                let mark = match i.verdict {
                    Verdict::Ok => "√",
                    Verdict::Warn => "‼",
                    Verdict::Fail => "×",
                };
                println!("{mark} {}: {}", i.check, i.detail);
            }
            println!(
                "\nStatus check results are {}",
                if ok { "√" } else { "× (see above)" }
            );
        }
    }
    Ok(())
}
