//! `mesh-ctl k8s ca-rotate [--finish]`: CA rotation of a mesh directory whose nodes are pods.
//!
//! `mesh-ctl ca rotate` pushes the new trust bundle to nodes that read it from the mesh directory
//! (a local mesh), and its `--finish` looks for each node's certificate under `DIR/nodes/`. Pods
//! read their bundle from the CA Secret and their certificate from their `-tls` Secret, so here:
//!
//! - the start writes the same files as `ca rotate` (the new CA in `ca/`, the old one in
//!   `ca/previous/`, a two-CA `trust.pem`, CRLs from both, `history.pem`) and pushes nothing: the
//!   bundle reaches the pods in the CA Secret (`k8s secrets`), which they re-read without a
//!   restart;
//! - `--finish` refuses until every member's newest certificate in `ca/issued.jsonl` is from the
//!   new CA and every member, asked over Admin/ReloadTls, runs one of those (a pod takes its new
//!   `-tls` Secret only when it restarts). Then it retires the old CA exactly as `ca rotate
//!   --finish` does; the one-CA bundle again travels in the CA Secret.

use crate::Output;
use crate::control::{MeshDir, admin, all_members, write_atomic};
use crate::pki::rotation;
use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::Member;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, LeafSpec};
use mesh_proto::v1::ReloadTlsRequest;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::release::{self, Release};

#[derive(clap::Args)]
pub struct CaRotateArgs {
    /// The mesh directory (`mesh-ctl k8s init --dir`).
    #[arg(long)]
    dir: PathBuf,
    /// End the overlap: trust only the new CA. Every node must run a certificate from it (its
    /// renewed `-tls` Secret, after a restart) and every client must hold one.
    #[arg(long)]
    finish: bool,
    /// Validity of the new CA.
    #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
    validity: Duration,
    /// With --finish: do not ask the nodes which certificate they run (for when mesh-ctl cannot
    /// reach them). Check `kubectl rollout status` first: a node still on the old CA is cut off.
    #[arg(long)]
    skip_node_check: bool,
}

/// One line of `ca/issued.jsonl` (written by `rotation::issue`).
#[derive(serde::Deserialize)]
struct IssuedLine {
    serial: String,
    identity: String,
    not_after: i64,
    ca: String,
}

pub async fn run(args: CaRotateArgs, output: Output) -> anyhow::Result<bool> {
    let (mesh, release) = super::open(&args.dir)?;
    rotation::ensure_trust_files(&mesh.ca_dir)?;
    if args.finish {
        finish(&mesh, &release, args.skip_node_check, output).await
    } else {
        start(&mesh, &release, args.validity, output)
    }
}

/// `--ordinals` for every member of the current and previous layout.
fn member_ordinals(mesh: &MeshDir, release: &Release) -> anyhow::Result<(Vec<Member>, String)> {
    let (current, _) = mesh.layout()?;
    let members = all_members(&current, mesh.previous_layout()?.as_ref());
    let ordinals: BTreeSet<u32> = members
        .iter()
        .filter_map(|m| release.ordinal_of(&m.node_id))
        .collect();
    Ok((members, release::ordinals_arg(&ordinals)))
}

fn start(
    mesh: &MeshDir,
    release: &Release,
    validity: Duration,
    output: Output,
) -> anyhow::Result<bool> {
    let ca_dir = &mesh.ca_dir;
    let previous = rotation::previous_dir(ca_dir);
    let d = mesh.dir.display().to_string();
    let ns = &release.namespace;
    if previous.join(CA_CERT_FILE).exists() {
        bail!(
            "a CA rotation is already under way in {d}: load the two-CA bundle (`mesh-ctl k8s secrets \
             --dir {d} | kubectl -n {ns} apply -f -`), renew every node's certificate, then \
             `mesh-ctl k8s ca-rotate --finish --dir {d}`"
        );
    }
    let old = CertificateAuthority::load(ca_dir)?;
    let new = CertificateAuthority::create(old.trust_domain(), validity)?;
    // The same steps as `ca rotate`: the old CA aside first, then the new one in its place, so
    // `ca/` always holds one complete CA.
    std::fs::create_dir_all(&previous)
        .with_context(|| format!("creating {}", previous.display()))?;
    for file in [CA_CERT_FILE, CA_KEY_FILE] {
        std::fs::copy(ca_dir.join(file), previous.join(file))
            .with_context(|| format!("copying {file} to {}", previous.display()))?;
    }
    for file in [CA_CERT_FILE, CA_KEY_FILE] {
        std::fs::remove_file(ca_dir.join(file))
            .with_context(|| format!("removing the old {file} from {}", ca_dir.display()))?;
    }
    new.save_cert_and_key(ca_dir)?;
    let history = ca_dir.join(rotation::HISTORY_FILE);
    let mut pem = std::fs::read(&history).unwrap_or_default();
    pem.extend_from_slice(new.cert_pem().as_bytes());
    write_atomic(&history, &pem)?;
    rotation::write_bundle(ca_dir)?;
    rotation::write_crls(ca_dir)?;

    let (_, ordinals) = member_ordinals(mesh, release)?;
    let f = &release.fullname;
    let next = [
        format!(
            "mesh-ctl k8s secrets --dir {d} | kubectl -n {ns} apply -f -   # the CA Secret with both CAs; \
             nodes trust both within about a minute, no restart (dsm_tls_trusted_cas = 2 on each)"
        ),
        format!(
            "give every client the new bundle ({}), then a certificate from the new CA",
            rotation::trust_path(ca_dir).display()
        ),
        format!(
            "mesh-ctl k8s secrets --dir {d} --ordinals {ordinals} | kubectl -n {ns} apply -f - && \
             kubectl -n {ns} rollout restart statefulset {f} && kubectl -n {ns} rollout status statefulset {f}"
        ),
        format!(
            "mesh-ctl k8s ca-rotate --finish --dir {d}, then load the CA Secret again (the first step)"
        ),
    ];
    crate::output::print(
        output,
        &serde_json::json!({
            "old_ca": old.serial(),
            "new_ca": new.serial(),
            "trust_bundle": rotation::trust_path(ca_dir),
            "next": next,
        }),
        || {
            let mut s = format!(
                "CA rotation started in {d}: new CA {} trusted beside the old one {} (nothing pushed: \
                 pods get the bundle from the CA Secret).\nNext, in this order:\n",
                new.serial(),
                old.serial()
            );
            for (i, n) in next.iter().enumerate() {
                s += &format!("  {}. {n}\n", i + 1);
            }
            s.trim_end().to_owned()
        },
    )?;
    Ok(true)
}

/// Asks a node which certificate it serves now (Admin/ReloadTls, which also makes it re-read
/// its files).
async fn serving_serial(
    member: &Member,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<String> {
    let ask = async {
        let mut client = admin(member, tls).await?;
        let status = client
            .reload_tls(ReloadTlsRequest {
                crl_pem: String::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        anyhow::Ok(status.cert_serial)
    };
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .context("no answer within 10 s")?
}

async fn finish(
    mesh: &MeshDir,
    release: &Release,
    skip_node_check: bool,
    output: Output,
) -> anyhow::Result<bool> {
    let ca_dir = &mesh.ca_dir;
    let previous = rotation::previous_dir(ca_dir);
    let d = mesh.dir.display().to_string();
    let ns = &release.namespace;
    if !previous.join(CA_CERT_FILE).exists() {
        bail!(
            "no CA rotation is under way in {d} (start one with `mesh-ctl k8s ca-rotate --dir {d}`)"
        );
    }
    let current = CertificateAuthority::load(ca_dir)?;
    let new_ca = current.serial();
    let issued_path = ca_dir.join(rotation::ISSUED_FILE);
    let issued: Vec<IssuedLine> = std::fs::read_to_string(&issued_path)
        .with_context(|| format!("reading {}", issued_path.display()))?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (members, ordinals) = member_ordinals(mesh, release)?;
    let renew = format!(
        "`mesh-ctl k8s secrets --dir {d} --ordinals {ordinals} | kubectl -n {ns} apply -f -`, then \
         `kubectl -n {ns} rollout restart statefulset {}`",
        release.fullname
    );

    let mut problems = Vec::new();
    for m in &members {
        let identity = Identity::Node {
            trust_domain: current.trust_domain().to_owned(),
            node_id: m.node_id.clone(),
        }
        .to_string();
        match issued.iter().rev().find(|i| i.identity == identity) {
            Some(i) if i.ca == new_ca && i.not_after > now => {}
            Some(i) if i.ca == new_ca => problems.push(format!(
                "node {}: its newest certificate from the new CA has expired",
                m.node_id
            )),
            Some(_) => problems.push(format!(
                "node {}: its newest certificate is from the old CA",
                m.node_id
            )),
            None => problems.push(format!(
                "node {}: no certificate was issued for it from {d}",
                m.node_id
            )),
        }
    }
    let stale_nodes = !problems.is_empty();
    if !skip_node_check && !stale_nodes {
        let tls = mesh.admin_tls()?;
        let answers =
            futures::future::join_all(members.iter().map(|m| serving_serial(m, tls.clone()))).await;
        for (m, answer) in members.iter().zip(answers) {
            match answer {
                Ok(serial) => match issued.iter().find(|i| i.serial == serial) {
                    Some(i) if i.ca == new_ca => {}
                    _ => problems.push(format!(
                        "node {} still serves certificate {serial}, not one from the new CA (has it \
                         restarted since its Secret was renewed? `kubectl -n {ns} rollout restart \
                         statefulset {}`)",
                        m.node_id, release.fullname
                    )),
                },
                Err(e) => problems.push(format!(
                    "node {}: cannot ask which certificate it serves ({e:#}); run this where mesh-ctl \
                     reaches the pods, or pass --skip-node-check once `kubectl -n {ns} rollout status \
                     statefulset {}` shows every pod restarted",
                    m.node_id, release.fullname
                )),
            }
        }
    }
    // Clients whose certificates live in DIR. mesh-ctl's own admin certificate is renewed here;
    // any other is the operator's to renew.
    let clients = mesh.dir.join("clients");
    let mut renew_admin = None;
    if let Ok(entries) = std::fs::read_dir(&clients) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".pem") else {
                continue;
            };
            if rotation::issued_by(&e.path(), &current) {
                continue;
            }
            if stem == "admin" {
                renew_admin = Some(e.path());
            } else {
                problems.push(format!(
                    "client {stem} ({}) holds a certificate from the old CA: issue it a new one \
                     (`mesh-ctl cert issue client --ca-dir {d}/ca --out {d}/clients ...`)",
                    e.path().display()
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "not finishing the CA rotation: the old CA is still needed.\n  {}\n{}then run \
             `mesh-ctl k8s ca-rotate --finish --dir {d}` again",
            problems.join("\n  "),
            if stale_nodes {
                format!("Renew the node certificates: {renew}; ")
            } else {
                String::new()
            }
        );
    }
    if let Some(path) = renew_admin {
        let identity = mesh_node::security::tls::load_certs(&path)
            .ok()
            .and_then(|c| Identity::from_certificate(&c[0]).ok())
            .with_context(|| format!("reading {}", path.display()))?;
        let issued = rotation::issue(
            ca_dir,
            &current,
            &LeafSpec::new(identity, Duration::from_secs(86_400)),
        )?;
        rotation::write_issued(&issued, &clients, "admin")?;
    }

    // As `ca rotate --finish`: the old key goes; its certificate stays in history.pem.
    let old = CertificateAuthority::load(&previous)?;
    std::fs::remove_file(previous.join(CA_KEY_FILE))
        .with_context(|| format!("removing the old CA key in {}", previous.display()))?;
    std::fs::remove_file(previous.join(CA_CERT_FILE))
        .with_context(|| format!("removing the old CA in {}", previous.display()))?;
    let _ = std::fs::remove_dir(&previous);
    rotation::write_bundle(ca_dir)?;
    rotation::write_crls(ca_dir)?;

    let next = format!("mesh-ctl k8s secrets --dir {d} | kubectl -n {ns} apply -f -");
    crate::output::print(
        output,
        &serde_json::json!({ "retired_ca": old.serial(), "ca": new_ca, "next": [next] }),
        || {
            format!(
                "CA rotation finished in {d}: CA {} retired, only {new_ca} is trusted.\nNext: {next}\n  \
                 (nodes stop trusting the old CA within about a minute, without a restart)",
                old.serial()
            )
        },
    )?;
    Ok(true)
}
