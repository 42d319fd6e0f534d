//! `mesh-ctl k8s init`: sets a mesh directory up for a Helm release of charts/mesh. Creates the CA
//! unless the directory has one (as `mesh-ctl up` does), writes `k8s.json` (the release's names),
//! and signs the first layout with members `<fullname>-0..N-1` at the addresses the chart gives
//! its pods. Idempotent, so an interrupted or repeated init is harmless; it never overwrites a
//! layout, a CA or another release's directory.

use crate::Output;
use crate::control::MeshDir;
use crate::pki::rotation;
use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::Layout;
use mesh_node::security::identity::is_valid_trust_domain;
use mesh_node::security::pki::{CA_CERT_FILE, CertificateAuthority};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::ReleaseArgs;
use super::release::{self, Release, ReleaseSpec};

#[derive(clap::Args)]
pub struct InitArgs {
    /// The mesh directory for this release (CA, control key, layouts, k8s.json). Keep it off
    /// the cluster: it holds the CA key and the control key.
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    release: ReleaseArgs,
    /// Members of the first layout: pods <fullname>-0 .. <fullname>-(N-1) (the chart's
    /// replicaCount). Later changes go through `mesh-ctl layout stage|apply`.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Trust domain of a new CA (default mesh.local); the chart's config.trustDomain must match.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Validity of a new CA.
    #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
    ca_validity: Duration,
}

/// The ordinals of the layout's members that are pods of this release.
fn layout_ordinals(release: &Release, layout: &Layout) -> BTreeSet<u32> {
    layout
        .members
        .iter()
        .filter_map(|m| release.ordinal_of(&m.node_id))
        .collect()
}

/// `--set` flags for `helm install` that make the chart agree with this directory.
fn helm_sets(args: &InitArgs, spec: &ReleaseSpec, trust_domain: &str) -> Vec<String> {
    let mut sets = Vec::new();
    let mut set = |key: &str, value: &str| sets.push(format!("--set {key}={value}"));
    if args.replicas != 3 {
        set("replicaCount", &args.replicas.to_string());
    }
    if args.replicas > 16 {
        // The chart mounts node Secrets for ordinals below maxNodes (default 16).
        set("maxNodes", &args.replicas.to_string());
    }
    if trust_domain != "mesh.local" {
        set("config.trustDomain", trust_domain);
    }
    for (key, value) in [
        ("nameOverride", &spec.name_override),
        ("fullnameOverride", &spec.fullname_override),
        ("secrets.caSecretName", &spec.ca_secret_name),
        ("secrets.nodeSecretPrefix", &spec.node_secret_prefix),
        ("layout.configMapName", &spec.layout_config_map_name),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            set(key, v);
        }
    }
    if spec.cluster_domain != "cluster.local" {
        set("clusterDomain", &spec.cluster_domain);
    }
    if spec.gateway_port != 7443 {
        set("ports.gateway", &spec.gateway_port.to_string());
    }
    if spec.peer_port != 7444 {
        set("ports.peer", &spec.peer_port.to_string());
    }
    sets
}

/// `mesh-ctl k8s init`. Idempotent: run again with the same flags, it changes nothing.
pub fn run(args: InitArgs, output: Output) -> anyhow::Result<()> {
    let spec = args.release.spec()?;
    let release = spec.resolve()?;
    if args.replicas == 0 || args.replicas > release::MAX_ORDINALS {
        bail!(
            "--replicas {}: 1 to {} (the chart's largest maxNodes)",
            args.replicas,
            release::MAX_ORDINALS
        );
    }
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match Release::load(&dir)? {
        Some(have) => {
            if let Some((flag, was, now)) = have.difference(&release) {
                bail!(
                    "{} is set up for release `{}` in namespace `{}`, where {flag} gives `{was}`, \
                     not `{now}`; use another --dir for another release",
                    dir.display(),
                    have.release,
                    have.namespace
                );
            }
        }
        None if dir.join("layout.bin").exists() => bail!(
            "{} already holds a layout but no {} (a `mesh-ctl up` directory?); use a fresh --dir \
             for a Kubernetes release",
            dir.display(),
            release::RELEASE_FILE
        ),
        None => {}
    }

    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join(CA_CERT_FILE).exists() {
        let ca = CertificateAuthority::load(&ca_dir)
            .with_context(|| format!("loading the CA in {}", ca_dir.display()))?;
        if let Some(td) = args.trust_domain.as_deref()
            && td != ca.trust_domain()
        {
            bail!(
                "--trust-domain {td}: the CA in {} is for `{}` (leave the flag out, or use a fresh --dir)",
                ca_dir.display(),
                ca.trust_domain()
            );
        }
        ca
    } else {
        let td = args.trust_domain.as_deref().unwrap_or("mesh.local");
        if !is_valid_trust_domain(td) {
            bail!("--trust-domain `{td}`: use lowercase letters, digits, `.` and `-`");
        }
        let ca = CertificateAuthority::create(td, args.ca_validity)?;
        ca.save(&ca_dir)
            .with_context(|| format!("saving the CA in {}", ca_dir.display()))?;
        ca
    };
    rotation::ensure_trust_files(&ca_dir)?;
    // k8s.json before the layout: an interrupted init resumes instead of refusing the directory.
    release.save(&dir)?;

    let mesh = MeshDir::open(&dir)?;
    let layout = if dir.join("layout.bin").exists() {
        // Run again: keep the layout, which may have moved on since (`layout apply`).
        let (layout, _) = mesh.layout()?;
        if layout.members.len() != args.replicas as usize {
            bail!(
                "{} already has layout version {} with {} members; --replicas only shapes the \
                 first layout: change membership with `mesh-ctl layout stage add|remove` and \
                 `layout apply` (charts/mesh/README.md, Festive peaks)",
                dir.display(),
                layout.version,
                layout.members.len()
            );
        }
        layout
    } else {
        let members = (0..args.replicas).map(|i| release.member(i)).collect();
        let layout = Layout::initial(members)?;
        mesh.save_layout(&layout.sign(&mesh.control_key()?))?;
        layout
    };

    let td = ca.trust_domain().to_owned();
    let d = dir.display().to_string();
    let ns = &release.namespace;
    let ordinals = release::ordinals_arg(&layout_ordinals(&release, &layout));
    let sets = helm_sets(&args, &spec, &td);
    let next = [
        format!(
            "mesh-ctl k8s kek --dir {d} --ordinals {ordinals} > kek.yaml && kubectl -n {ns} create -f kek.yaml   # then keep kek.yaml offline"
        ),
        format!(
            "mesh-ctl k8s secrets --dir {d} --ordinals {ordinals} | kubectl -n {ns} apply -f -"
        ),
        format!(
            "helm install {} charts/mesh -n {ns}{}",
            release.release,
            sets.iter().map(|s| format!(" {s}")).collect::<String>()
        ),
    ];
    crate::output::print(
        output,
        &serde_json::json!({
            "dir": dir,
            "release": release,
            "trust_domain": td,
            "layout_version": layout.version,
            "members": layout.members,
            "helm_set": sets,
            "next": next,
        }),
        || {
            let mut s = format!(
                "{d}: release `{}` in namespace `{ns}`, fullname {}\n  trust domain  {td}\n  layout        \
                 version {}: {}\nNext:\n",
                release.release,
                release.fullname,
                layout.version,
                layout
                    .members
                    .iter()
                    .map(|m| m.node_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for n in &next {
                s += &format!("  {n}\n");
            }
            s.trim_end().to_owned()
        },
    )
}
