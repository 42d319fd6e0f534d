//! Certificate lifecycle of a mesh directory: `cert rotate`, `ca rotate [--finish]`, `cert revoke`.
//!
//! Beside the CA and the control key, `DIR/ca/` holds:
//! - `trust.pem`: the bundle nodes and clients trust: the CA, and during a CA rotation the
//!   previous CA too;
//! - `crl.pem`: one certificate revocation list per trusted CA;
//! - `issued.jsonl`: every certificate issued here (serial, identity, expiry, issuing CA), so a
//!   node or client can be revoked by name;
//! - `revoked.json`: the revocations and the last CRL number, per CA;
//! - `previous/`: the CA being rotated out, until `ca rotate --finish`;
//! - `history.pem`: every CA this mesh has had, to verify old audit checkpoints.
//!
//! Nodes re-read their TLS files every couple of seconds. mesh-ctl also pushes (`Admin/ReloadTls`)
//! and checks every node's answer, so a command returns once each node runs what it wrote, and
//! says which node did not.

use crate::Output;
use crate::control::{MeshDir, admin, all_members, write_atomic};
use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::Member;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{
    CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, IssuedCert, LeafSpec,
};
use mesh_proto::v1::{ReloadTlsRequest, TlsStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

pub const TRUST_FILE: &str = "trust.pem";
pub const CRL_FILE: &str = "crl.pem";
pub const ISSUED_FILE: &str = "issued.jsonl";
const REVOKED_FILE: &str = "revoked.json";
pub const HISTORY_FILE: &str = "history.pem";
const PREVIOUS_DIR: &str = "previous";

#[derive(clap::Args)]
pub struct RotateArgs {
    /// The mesh directory (`mesh-ctl up --dir`).
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// Lifetime of the new certificates.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(clap::Args)]
pub struct CaRotateArgs {
    /// The mesh directory (`mesh-ctl up --dir`).
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// End the overlap: trust only the new CA. Every node and client must hold a certificate
    /// from it first (`mesh-ctl cert rotate`).
    #[arg(long)]
    finish: bool,
    /// Validity of the new CA.
    #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
    validity: Duration,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// Every unexpired certificate issued here for this node id.
    #[arg(long)]
    node: Option<String>,
    /// The certificate in this PEM file.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The certificate with this serial number (hex, as `cert issue` and `check` print it).
    #[arg(long)]
    serial: Option<String>,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The mesh directory (`mesh-ctl up --dir`).
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    #[command(flatten)]
    target: RevokeTarget,
}

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Issued {
    serial: String,
    identity: String,
    not_after: i64,
    ca: String,
}

/// `revoked.json`: per CA serial, the last CRL number and the revoked serials.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Revocations {
    cas: BTreeMap<String, CaRevocations>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CaRevocations {
    crl_number: u64,
    revoked: Vec<Revoked>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Revoked {
    serial: String,
    identity: String,
    at: i64,
}

pub fn trust_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(TRUST_FILE)
}

pub fn crl_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(CRL_FILE)
}

/// The CAs whose certificates verify old audit checkpoints (falls back to the CA itself).
pub fn history_path(ca_dir: &Path) -> PathBuf {
    let history = ca_dir.join(HISTORY_FILE);
    if history.exists() {
        history
    } else {
        ca_dir.join(CA_CERT_FILE)
    }
}

/// Issues a certificate from `ca` and records it in `issued.jsonl`.
pub fn issue(
    ca_dir: &Path,
    ca: &CertificateAuthority,
    spec: &LeafSpec,
) -> anyhow::Result<IssuedCert> {
    let issued = ca.issue(spec)?;
    let line = serde_json::to_string(&Issued {
        serial: issued.serial.clone(),
        identity: issued.identity.clone(),
        not_after: issued.not_after.unix_timestamp(),
        ca: ca.serial(),
    })?;
    use std::io::Write as _;
    let path = ca_dir.join(ISSUED_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    Ok(issued)
}

/// Writes `<stem>.pem` and `<stem>.key` (0600) into `dir`, each replaced atomically. A node that
/// re-reads them in between sees a certificate and key that do not match, refuses that reload and
/// takes the pair at its next one.
pub fn write_issued(
    issued: &IssuedCert,
    dir: &Path,
    stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    let key_tmp = dir.join(format!("{stem}.key.tmp"));
    mesh_node::security::pki::write_secret(&key_tmp, issued.key_pem.as_bytes())?;
    std::fs::rename(&key_tmp, &key).with_context(|| format!("writing {}", key.display()))?;
    write_atomic(&cert, issued.cert_pem.as_bytes())?;
    Ok((cert, key))
}

pub fn previous_dir(ca_dir: &Path) -> PathBuf {
    ca_dir.join(PREVIOUS_DIR)
}

/// The CAs nodes trust now: the CA, then the previous one while a rotation is under way.
fn trusted_cas(ca_dir: &Path) -> anyhow::Result<Vec<CertificateAuthority>> {
    let mut cas = vec![CertificateAuthority::load(ca_dir)?];
    let previous = previous_dir(ca_dir);
    if previous.join(CA_CERT_FILE).exists() {
        cas.push(CertificateAuthority::load(&previous)?);
    }
    Ok(cas)
}

pub fn write_bundle(ca_dir: &Path) -> anyhow::Result<()> {
    let bundle: String = trusted_cas(ca_dir)?
        .iter()
        .map(|ca| ca.cert_pem().to_owned())
        .collect();
    write_atomic(&trust_path(ca_dir), bundle.as_bytes())
}

fn read_revocations(ca_dir: &Path) -> anyhow::Result<Revocations> {
    let path = ca_dir.join(REVOKED_FILE);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
    }
}

/// Signs a fresh CRL (next number) for every trusted CA and writes them to `crl.pem`; returns the
/// PEM that was written.
pub fn write_crls(ca_dir: &Path) -> anyhow::Result<String> {
    let mut revocations = read_revocations(ca_dir)?;
    let mut pem = String::new();
    for ca in trusted_cas(ca_dir)? {
        let entry = revocations.cas.entry(ca.serial()).or_default();
        entry.crl_number += 1;
        let revoked: Vec<(String, OffsetDateTime)> = entry
            .revoked
            .iter()
            .map(|r| {
                (
                    r.serial.clone(),
                    OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                )
            })
            .collect();
        pem.push_str(&ca.crl_pem(entry.crl_number, &revoked)?);
    }
    write_atomic(
        &ca_dir.join(REVOKED_FILE),
        serde_json::to_string_pretty(&revocations)?.as_bytes(),
    )?;
    write_atomic(&crl_path(ca_dir), pem.as_bytes())?;
    Ok(pem)
}

/// Creates `trust.pem`, `crl.pem` and `history.pem` for a mesh directory that has none yet.
pub fn ensure_trust_files(ca_dir: &Path) -> anyhow::Result<()> {
    if !trust_path(ca_dir).exists() {
        write_bundle(ca_dir)?;
    }
    if !crl_path(ca_dir).exists() {
        write_crls(ca_dir)?;
    }
    if !ca_dir.join(HISTORY_FILE).exists() {
        let pem = std::fs::read(ca_dir.join(CA_CERT_FILE))?;
        write_atomic(&ca_dir.join(HISTORY_FILE), &pem)?;
    }
    Ok(())
}

/// Every node of the current and the previous layout.
fn members(mesh: &MeshDir) -> anyhow::Result<Vec<Member>> {
    let (current, _) = mesh.layout()?;
    let previous = mesh.previous_layout()?;
    Ok(all_members(&current, previous.as_ref()))
}

/// Asks `member` to reload now (storing `crl_pem` first, if any); returns what it runs.
async fn reload(mesh: &MeshDir, member: &Member, crl_pem: &str) -> anyhow::Result<TlsStatus> {
    let mut client = admin(member, mesh.admin_tls()?).await?;
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.reload_tls(ReloadTlsRequest {
            crl_pem: crl_pem.to_owned(),
        }),
    )
    .await
    .context("the node did not answer within 10 s")?
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    .into_inner();
    Ok(status)
}

/// Pushes to every member; returns each one's answer.
async fn push_all(
    mesh: &MeshDir,
    members: &[Member],
    crl_pem: &str,
) -> Vec<(String, anyhow::Result<TlsStatus>)> {
    let mut out = Vec::new();
    for m in members {
        out.push((m.node_id.clone(), reload(mesh, m, crl_pem).await));
    }
    out
}

fn report(output: Output, rows: &[serde_json::Value], title: &str) -> anyhow::Result<()> {
    crate::output::print(output, &serde_json::Value::Array(rows.to_vec()), || {
        let mut s = format!("{title}\n");
        for r in rows {
            let ok = r["ok"].as_bool().unwrap_or(false);
            s += &format!(
                "  {} {:<22} {}\n",
                if ok { "ok  " } else { "FAIL" },
                r["name"].as_str().unwrap_or("?"),
                r["detail"].as_str().unwrap_or("")
            );
        }
        s.trim_end().to_owned()
    })
}

fn row(name: &str, ok: bool, detail: String) -> serde_json::Value {
    serde_json::json!({ "name": name, "ok": ok, "detail": detail })
}

/// `mesh-ctl cert rotate`: new certificates and keys for every node of a local mesh and every
/// client in `DIR/clients`, from the current CA; each node reloads and must report the new serial.
pub async fn rotate(args: RotateArgs, output: Output) -> anyhow::Result<bool> {
    let mesh = MeshDir::open(&args.dir)?;
    ensure_trust_files(&mesh.ca_dir)?;
    let ca = CertificateAuthority::load(&mesh.ca_dir)?;
    let td = ca.trust_domain().to_owned();
    let mut rows = Vec::new();
    let mut ok = true;
    for m in members(&mesh)? {
        let node_dir = mesh.dir.join("nodes").join(&m.node_id);
        if !node_dir.join("node.pem").exists() {
            bail!(
                "node {} has no certificate under {}: `cert rotate` renews the nodes of a local mesh \
                 (on Kubernetes, renew the node's `-tls` Secret instead; see charts/mesh/README.md)",
                m.node_id,
                node_dir.display()
            );
        }
        let identity = Identity::Node {
            trust_domain: td.clone(),
            node_id: m.node_id.clone(),
        };
        let issued = issue(&mesh.ca_dir, &ca, &LeafSpec::new(identity, args.ttl))?;
        write_issued(&issued, &node_dir, "node")?;
        match reload(&mesh, &m, "").await {
            Ok(s) if s.cert_serial == issued.serial => rows.push(row(
                &m.node_id,
                true,
                format!("serial {} (generation {})", issued.serial, s.generation),
            )),
            Ok(s) => {
                ok = false;
                rows.push(row(
                    &m.node_id,
                    false,
                    format!(
                        "still serves serial {}: {}",
                        s.cert_serial,
                        if s.last_error.is_empty() {
                            "no reload yet"
                        } else {
                            &s.last_error
                        }
                    ),
                ));
            }
            Err(e) => {
                ok = false;
                rows.push(row(&m.node_id, false, format!("{e:#}")));
            }
        }
    }
    // Clients last: the admin certificate above is the one that pushed.
    let clients = mesh.dir.join("clients");
    let mut stems: Vec<String> = std::fs::read_dir(&clients)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter_map(|n| n.strip_suffix(".pem").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    stems.sort();
    for stem in stems {
        let Some(identity) =
            mesh_node::security::tls::load_certs(&clients.join(format!("{stem}.pem")))
                .ok()
                .and_then(|c| Identity::from_certificate(&c[0]).ok())
        else {
            continue;
        };
        let issued = issue(
            &mesh.ca_dir,
            &ca,
            &LeafSpec::new(identity.clone(), args.ttl),
        )?;
        write_issued(&issued, &clients, &stem)?;
        rows.push(row(
            &format!("client {stem}"),
            true,
            format!("serial {}", issued.serial),
        ));
    }
    report(output, &rows, "certificates rotated")?;
    Ok(ok)
}

/// `mesh-ctl ca rotate`: a new CA, trusted beside the old one; `--finish`: the old one goes.
pub async fn rotate_ca(args: CaRotateArgs, output: Output) -> anyhow::Result<bool> {
    let mesh = MeshDir::open(&args.dir)?;
    ensure_trust_files(&mesh.ca_dir)?;
    let ca_dir = &mesh.ca_dir;
    let previous = previous_dir(ca_dir);
    let members = members(&mesh)?;
    let want_cas: u32;
    if args.finish {
        if !previous.join(CA_CERT_FILE).exists() {
            bail!(
                "no CA rotation is under way in {} (start one with `mesh-ctl ca rotate`)",
                args.dir.display()
            );
        }
        // Nothing may still depend on the old CA.
        let current = CertificateAuthority::load(ca_dir)?;
        let mut stale = Vec::new();
        let mut check = |what: String, path: PathBuf| {
            if !issued_by(&path, &current) {
                stale.push(what);
            }
        };
        for m in &members {
            check(
                format!("node {}", m.node_id),
                mesh.dir.join("nodes").join(&m.node_id).join("node.pem"),
            );
        }
        if let Ok(d) = std::fs::read_dir(mesh.dir.join("clients")) {
            for e in d.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(".pem") {
                    check(format!("client {stem}"), e.path());
                }
            }
        }
        if !stale.is_empty() {
            bail!(
                "still holding certificates from the old CA: {}; run `mesh-ctl cert rotate --dir {}` first",
                stale.join(", "),
                args.dir.display()
            );
        }
        let old = CertificateAuthority::load(&previous)?;
        // The old CA key is no longer needed by anyone: remove it; its certificate stays in
        // history.pem for audit verification.
        std::fs::remove_file(previous.join(CA_KEY_FILE))
            .with_context(|| format!("removing the old CA key in {}", previous.display()))?;
        std::fs::remove_file(previous.join(CA_CERT_FILE))?;
        let _ = std::fs::remove_dir(&previous);
        eprintln!("mesh-ctl: retired CA {}", old.serial());
        want_cas = 1;
    } else if previous.join(CA_CERT_FILE).exists() {
        // An earlier `ca rotate` stopped before every node took the bundle: push it again.
        want_cas = 2;
    } else {
        let old = CertificateAuthority::load(ca_dir)?;
        let new = CertificateAuthority::create(old.trust_domain(), args.validity)?;
        std::fs::create_dir_all(&previous)?;
        // Copy the old CA aside first, then replace it: at every moment one complete CA is in
        // ca/ and a crash leaves a state `ca rotate` resumes.
        std::fs::copy(ca_dir.join(CA_CERT_FILE), previous.join(CA_CERT_FILE))?;
        std::fs::copy(ca_dir.join(CA_KEY_FILE), previous.join(CA_KEY_FILE))?;
        std::fs::remove_file(ca_dir.join(CA_CERT_FILE))?;
        std::fs::remove_file(ca_dir.join(CA_KEY_FILE))?;
        new.save_cert_and_key(ca_dir)?;
        let mut history = std::fs::read(ca_dir.join(HISTORY_FILE)).unwrap_or_default();
        history.extend_from_slice(new.cert_pem().as_bytes());
        write_atomic(&ca_dir.join(HISTORY_FILE), &history)?;
        want_cas = 2;
    }
    write_bundle(ca_dir)?;
    let crl = write_crls(ca_dir)?;
    let mut ok = true;
    let mut rows = Vec::new();
    for (node, answer) in push_all(&mesh, &members, &crl).await {
        match answer {
            Ok(s) if s.trusted_cas == want_cas => rows.push(row(
                &node,
                true,
                format!(
                    "trusts {} CA(s) (generation {})",
                    s.trusted_cas, s.generation
                ),
            )),
            Ok(s) => {
                ok = false;
                rows.push(row(
                    &node,
                    false,
                    format!("trusts {} CA(s): {}", s.trusted_cas, s.last_error),
                ));
            }
            Err(e) => {
                ok = false;
                rows.push(row(&node, false, format!("{e:#}")));
            }
        }
    }
    let title = if args.finish {
        "CA rotation finished: only the new CA is trusted".to_owned()
    } else {
        format!(
            "CA rotation started: old and new CA trusted ({}).\n\
             Next: give clients the new bundle, `mesh-ctl cert rotate --dir {d}`, then `mesh-ctl ca rotate --finish --dir {d}`",
            trust_path(ca_dir).display(),
            d = args.dir.display()
        )
    };
    report(output, &rows, &title)?;
    Ok(ok)
}

/// Whether the certificate in `path` was issued by `ca` (by issuer name; CA names are unique).
pub fn issued_by(path: &Path, ca: &CertificateAuthority) -> bool {
    use x509_parser::prelude::*;
    let (Ok(leaf), Ok(ca_der)) = (mesh_node::security::tls::load_certs(path), {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
    }) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        X509Certificate::from_der(&leaf[0]),
        X509Certificate::from_der(&ca_der[0]),
    ) else {
        return false;
    };
    leaf.issuer().as_raw() == ca.subject().as_raw()
}

/// `mesh-ctl cert revoke`: adds certificates to the CRL of their CA and pushes the CRLs to every
/// node, which refuses them from then on (new handshakes and requests on open connections).
pub async fn revoke(args: RevokeArgs, output: Output) -> anyhow::Result<bool> {
    let mesh = MeshDir::open(&args.dir)?;
    ensure_trust_files(&mesh.ca_dir)?;
    let ca_dir = &mesh.ca_dir;
    let cas = trusted_cas(ca_dir)?;
    let issued: Vec<Issued> = std::fs::read_to_string(ca_dir.join(ISSUED_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // (CA serial, certificate serial, identity)
    let targets: Vec<(String, String, String)> = if let Some(node) = &args.target.node {
        let td = cas[0].trust_domain().to_owned();
        let identity = Identity::Node {
            trust_domain: td,
            node_id: node.clone(),
        }
        .to_string();
        let found: Vec<_> = issued
            .iter()
            .filter(|i| i.identity == identity && i.not_after > now)
            .map(|i| (i.ca.clone(), i.serial.clone(), i.identity.clone()))
            .collect();
        if found.is_empty() {
            bail!(
                "no unexpired certificate for node `{node}` was issued from {}",
                ca_dir.display()
            );
        }
        found
    } else if let Some(path) = &args.target.cert {
        use x509_parser::prelude::*;
        let der = mesh_node::security::tls::load_certs(path)?;
        let (_, cert) = X509Certificate::from_der(&der[0])
            .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
        let ca = cas.iter().find(|ca| issued_by(path, ca)).with_context(|| {
            format!("{} was not issued by a CA this mesh trusts", path.display())
        })?;
        let identity =
            Identity::from_certificate(&der[0]).map_or_else(|_| "-".to_owned(), |i| i.to_string());
        vec![(ca.serial(), hex::encode(cert.raw_serial()), identity)]
    } else if let Some(serial) = &args.target.serial {
        let serial = serial.to_ascii_lowercase();
        let i = issued
            .iter()
            .find(|i| i.serial == serial)
            .with_context(|| format!("serial {serial} was not issued from {}", ca_dir.display()))?;
        vec![(i.ca.clone(), i.serial.clone(), i.identity.clone())]
    } else {
        bail!("name what to revoke: --node, --cert or --serial");
    };
    let mut revocations = read_revocations(ca_dir)?;
    for (ca, serial, identity) in &targets {
        if !cas.iter().any(|c| &c.serial() == ca) {
            continue; // its CA is no longer trusted at all
        }
        let entry = revocations.cas.entry(ca.clone()).or_default();
        if !entry.revoked.iter().any(|r| &r.serial == serial) {
            entry.revoked.push(Revoked {
                serial: serial.clone(),
                identity: identity.clone(),
                at: now,
            });
        }
    }
    write_atomic(
        &ca_dir.join(REVOKED_FILE),
        serde_json::to_string_pretty(&revocations)?.as_bytes(),
    )?;
    let crl = write_crls(ca_dir)?;
    let members = members(&mesh)?;
    let revoked_node = args.target.node.clone();
    let mut ok = true;
    let mut rows: Vec<serde_json::Value> = targets
        .iter()
        .map(|(_, serial, identity)| row(&format!("revoked {serial}"), true, identity.clone()))
        .collect();
    for (node, answer) in push_all(&mesh, &members, &crl).await {
        let itself = revoked_node.as_deref() == Some(node.as_str());
        match answer {
            Ok(s) => rows.push(row(
                &node,
                true,
                format!("enforces {} revocation(s)", s.revoked),
            )),
            // The revoked node refuses a list that revokes itself, and the others refuse it: both
            // are the point.
            Err(e) if itself => rows.push(row(&node, true, format!("cut off ({e:#})"))),
            Err(e) => {
                ok = false;
                rows.push(row(&node, false, format!("{e:#}")));
            }
        }
    }
    report(output, &rows, "revocation pushed")?;
    Ok(ok)
}
