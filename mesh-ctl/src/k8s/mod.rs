//! `mesh-ctl k8s`: the manifests the Helm chart in `charts/mesh` consumes, from a mesh directory.
//!
//! The chart creates no key material: it mounts Secrets and a ConfigMap by name (the contract in
//! charts/mesh/README.md, "Secrets and the layout"). These commands print exactly those, for
//! `kubectl` to load; nothing here talks to the Kubernetes API.
//!
//! - `k8s init`: the CA (unless DIR has one), the first signed layout with members
//!   `<fullname>-0..N-1` at their peer DNS names, and `DIR/k8s.json`, the release every later
//!   command takes its names from. Afterwards `layout stage|apply`, `cert revoke`, `check` work on
//!   DIR like on any mesh directory.
//! - `k8s secrets`: the CA Secret (trust bundle, control key, CRLs), one `kubernetes.io/tls`
//!   Secret per ordinal with a freshly issued node certificate, and the layout ConfigMap: all for
//!   `kubectl apply`.
//! - `k8s layout`: the layout ConfigMap alone, to replace after every `layout apply`.
//! - `k8s kek`: fresh key-encryption keys, for `kubectl create` once per node (never `apply`).
//! - `k8s ca-rotate [--finish]`: CA rotation of a Kubernetes mesh directory (`k8s/ca_rotate.rs`).
//!
//! | module | what |
//! |--------|------|
//! | `init` | `k8s init`: CA, first layout, `k8s.json`, and the `helm install` flags to match |
//! | `release` | the chart's names (`mesh.fullname`, Secret names, peer DNS names), `k8s.json` |
//! | `manifest` | Secret and ConfigMap objects, as YAML documents or a JSON `List` |
//! | `ca_rotate` | `k8s ca-rotate`: the new CA travels in the CA Secret, not in a push |
//!
//! Manifests go to stdout; what was printed and what to run next go to stderr. Node keys and
//! key-encryption keys exist only in the printed manifests: DIR records the certificates issued
//! (`ca/issued.jsonl`, so `cert revoke --node` works), never their keys.

mod ca_rotate;
mod init;
mod manifest;
mod release;

use crate::Output;
use crate::control::MeshDir;
use crate::pki::rotation;
use anyhow::{Context as _, bail};
use manifest::{Component, Manifest};
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CONTROL_PUB_FILE, CertificateAuthority, LeafSpec};
use prost::Message as _;
use release::{Release, ReleaseSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum K8sCommand {
    /// Set up DIR for a Helm release: the CA (unless DIR has one), the first signed layout with
    /// pods <fullname>-0..N-1 as members, and DIR/k8s.json (the release's names).
    Init(init::InitArgs),
    /// Print the CA Secret, a node certificate Secret per --ordinals (freshly issued) and the
    /// layout ConfigMap, for `kubectl apply -f -`.
    Secrets(SecretsArgs),
    /// Print the layout ConfigMap with DIR's current signed layout (after every `layout apply`).
    Layout(DirArg),
    /// Print new nodes' key-encryption-key Secrets, freshly generated, for `kubectl create -f -`
    /// (never apply: a replaced key makes that node's data unreadable).
    Kek(KekArgs),
    /// Rotate the CA of a Kubernetes mesh directory: a new CA beside the old one in the CA
    /// Secret; after every node runs a certificate from it, --finish drops the old one.
    CaRotate(ca_rotate::CaRotateArgs),
}

/// The chart values that shape names. `k8s init` records them in DIR/k8s.json.
#[derive(clap::Args)]
pub struct ReleaseArgs {
    /// The Helm release name (`helm install <release>`).
    #[arg(long)]
    release: Option<String>,
    /// The namespace of the release; part of every node's DNS name.
    #[arg(long)]
    namespace: Option<String>,
    /// The chart's nameOverride, if the release sets one.
    #[arg(long)]
    name_override: Option<String>,
    /// The chart's fullnameOverride, if the release sets one.
    #[arg(long)]
    fullname_override: Option<String>,
    /// The chart's clusterDomain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The chart's ports.gateway.
    #[arg(long, default_value_t = 7443)]
    gateway_port: u16,
    /// The chart's ports.peer.
    #[arg(long, default_value_t = 7444)]
    peer_port: u16,
    /// The chart's secrets.caSecretName (default <fullname>-ca).
    #[arg(long)]
    ca_secret_name: Option<String>,
    /// The chart's secrets.nodeSecretPrefix (default <fullname>-node-).
    #[arg(long)]
    node_secret_prefix: Option<String>,
    /// The chart's layout.configMapName (default <fullname>-layout).
    #[arg(long = "layout-configmap-name")]
    layout_config_map_name: Option<String>,
}

#[derive(clap::Args)]
pub struct SecretsArgs {
    /// The mesh directory (`mesh-ctl k8s init --dir`).
    #[arg(long)]
    dir: PathBuf,
    /// Pod ordinals to issue node certificates for: a list and inclusive ranges, e.g. `0-2` or
    /// `0-2,5`. Without it only the CA Secret and the layout ConfigMap are printed.
    #[arg(long)]
    ordinals: Option<String>,
    /// Lifetime of the node certificates. Short by design: renew rather than extend.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// A further DNS name for every node certificate (repeatable), e.g. the external name of a
    /// LoadBalancer gateway.
    #[arg(long)]
    dns: Vec<String>,
    /// Refuse unless DIR belongs to this release (a guard against the wrong directory).
    #[arg(long)]
    release: Option<String>,
    /// Refuse unless DIR belongs to a release in this namespace.
    #[arg(long)]
    namespace: Option<String>,
}

#[derive(clap::Args)]
pub struct DirArg {
    /// The mesh directory (`mesh-ctl k8s init --dir`).
    #[arg(long)]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct KekArgs {
    /// Take the release's names from this mesh directory (otherwise from --release and friends).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    release: ReleaseArgs,
    /// Pod ordinals to make keys for: a list and inclusive ranges, e.g. `0-2` or `3,4`.
    #[arg(long)]
    ordinals: String,
}

impl ReleaseArgs {
    pub(crate) fn spec(&self) -> anyhow::Result<ReleaseSpec> {
        let release = self.release.clone().context(
            "--release is required: the Helm release name the chart is (or will be) installed as",
        )?;
        let namespace = self.namespace.clone().context(
            "--namespace is required: the release's namespace is part of every node's DNS name",
        )?;
        Ok(ReleaseSpec {
            release,
            namespace,
            name_override: self.name_override.clone(),
            fullname_override: self.fullname_override.clone(),
            cluster_domain: self.cluster_domain.clone(),
            gateway_port: self.gateway_port,
            peer_port: self.peer_port,
            ca_secret_name: self.ca_secret_name.clone(),
            node_secret_prefix: self.node_secret_prefix.clone(),
            layout_config_map_name: self.layout_config_map_name.clone(),
        })
    }
}

/// Refuses a directory that belongs to another release or namespace than the flags say.
fn guard(
    dir: &Path,
    release: &Release,
    want_release: Option<&str>,
    want_namespace: Option<&str>,
) -> anyhow::Result<()> {
    for (flag, want, have) in [
        ("--release", want_release, &release.release),
        ("--namespace", want_namespace, &release.namespace),
    ] {
        if let Some(want) = want
            && want != have
        {
            bail!(
                "{flag} {want}: {} belongs to release `{}` in namespace `{}`",
                dir.display(),
                release.release,
                release.namespace
            );
        }
    }
    Ok(())
}

/// Opens a mesh directory set up by `k8s init`.
pub(crate) fn open(dir: &Path) -> anyhow::Result<(MeshDir, Release)> {
    let mesh = MeshDir::open(dir)?;
    let release = Release::require(&mesh.dir)?;
    Ok((mesh, release))
}

pub async fn run(command: K8sCommand, output: Output) -> anyhow::Result<bool> {
    match command {
        K8sCommand::Init(args) => init::run(args, output).map(|()| true),
        K8sCommand::Secrets(args) => secrets(args, output).map(|()| true),
        K8sCommand::Layout(args) => {
            let (mesh, release) = open(&args.dir)?;
            let layout = layout_config_map(&mesh, &release)?;
            print(output, &release, "layout ConfigMap", &[layout])?;
            eprintln!(
                "mesh-ctl: replace it with `kubectl -n {} apply -f -`; pods do not restart for it \
                 (it bootstraps pods that start later)",
                release.namespace
            );
            Ok(true)
        }
        K8sCommand::Kek(args) => kek(args, output).map(|()| true),
        K8sCommand::CaRotate(args) => ca_rotate::run(args, output).await,
    }
}

/// Prints manifests: YAML documents, or a JSON `List` for `-o json`.
fn print(
    output: Output,
    release: &Release,
    what: &str,
    manifests: &[Manifest],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = match output {
        Output::Table => manifest::to_yaml(
            &format!(
                "{what} for Helm release `{}` (fullname {}) in namespace `{}`, printed by mesh-ctl {}",
                release.release,
                release.fullname,
                release.namespace,
                env!("CARGO_PKG_VERSION")
            ),
            manifests,
        ),
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&manifest::to_json_list(manifests))?
        ),
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the manifests to stdout")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The CA Secret: the trust bundle (two CAs during a rotation), the control public key that
/// verifies layouts, and one CRL per trusted CA. Directory-mounted, so nodes pick up changes.
fn ca_secret(mesh: &MeshDir, release: &Release) -> anyhow::Result<Manifest> {
    rotation::ensure_trust_files(&mesh.ca_dir)?;
    let trust_path = rotation::trust_path(&mesh.ca_dir);
    let cas = mesh_node::security::tls::load_certs(&trust_path)
        .with_context(|| format!("reading {}", trust_path.display()))?
        .len();
    let data = BTreeMap::from([
        ("ca.crt", read(&trust_path)?),
        ("control.pub", read(&mesh.ca_dir.join(CONTROL_PUB_FILE))?),
        ("crl.pem", read(&rotation::crl_path(&mesh.ca_dir))?),
    ]);
    Ok(Manifest {
        comment: format!(
            "The trust bundle ({cas} CA{}), the control public key and the CRLs. `kubectl apply`: \
             running nodes pick up changes without a restart.",
            if cas == 1 {
                ""
            } else {
                "s, a CA rotation is under way"
            }
        ),
        object: manifest::secret(release, &release.ca_secret, Component::Ca, "Opaque", &data),
    })
}

/// Issues pod `ordinal`'s node certificate (recorded in `issued.jsonl`) as its TLS Secret.
fn node_tls_secret(
    mesh: &MeshDir,
    release: &Release,
    ca: &CertificateAuthority,
    ordinal: u32,
    ttl: Duration,
    extra_dns: &[String],
) -> anyhow::Result<Manifest> {
    let identity = Identity::Node {
        trust_domain: ca.trust_domain().to_owned(),
        node_id: release.node_id(ordinal),
    };
    let mut spec = LeafSpec::new(identity, ttl);
    spec.dns_names = release.node_dns_names(ordinal, extra_dns);
    // Pods have no stable IP: names only.
    spec.ip_addresses = Vec::new();
    let issued = rotation::issue(&mesh.ca_dir, ca, &spec)?;
    let data = BTreeMap::from([
        ("tls.crt", issued.cert_pem.clone().into_bytes()),
        ("tls.key", issued.key_pem.clone().into_bytes()),
    ]);
    Ok(Manifest {
        comment: format!(
            "Node {}: {}, serial {}, valid until {}.",
            release.node_id(ordinal),
            issued.identity,
            issued.serial,
            issued
                .not_after
                .replace_nanosecond(0)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_else(|| issued.not_after.to_string())
        ),
        object: manifest::secret(
            release,
            &release.tls_secret(ordinal),
            Component::NodeTls,
            "kubernetes.io/tls",
            &data,
        ),
    })
}

/// The layout ConfigMap: DIR's newest signed layout, verified against the control key first.
fn layout_config_map(mesh: &MeshDir, release: &Release) -> anyhow::Result<Manifest> {
    if !mesh.dir.join("layout.bin").exists() {
        bail!(
            "{} has no layout.bin; `mesh-ctl k8s init --dir {}` creates the first one",
            mesh.dir.display(),
            mesh.dir.display()
        );
    }
    let (layout, signed) = mesh.layout()?;
    let data = BTreeMap::from([("layout.bin", signed.encode_to_vec())]);
    Ok(Manifest {
        comment: format!(
            "Signed layout version {}: {}. Bootstraps pods that start later; `kubectl apply` after \
             every `mesh-ctl layout apply`.",
            layout.version,
            layout
                .members
                .iter()
                .map(|m| m.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        object: manifest::binary_config_map(
            release,
            &release.layout_config_map,
            Component::Layout,
            &data,
        ),
    })
}

fn check_dns(names: &[String]) -> anyhow::Result<()> {
    for n in names {
        let bare = n.strip_prefix("*.").unwrap_or(n);
        if !release::is_dns_subdomain(bare) {
            bail!("--dns `{n}`: not a DNS name (lowercase letters, digits, `-` and `.`)");
        }
    }
    Ok(())
}

/// `mesh-ctl k8s secrets`.
fn secrets(args: SecretsArgs, output: Output) -> anyhow::Result<()> {
    let (mesh, release) = open(&args.dir)?;
    guard(
        &mesh.dir,
        &release,
        args.release.as_deref(),
        args.namespace.as_deref(),
    )?;
    let ordinals = match &args.ordinals {
        Some(s) => release::parse_ordinals(s)?,
        None => BTreeSet::new(),
    };
    if args.ttl < Duration::from_secs(3600) {
        bail!("--ttl: at least 1h (pods must start and run with the certificate)");
    }
    check_dns(&args.dns)?;
    let ca = CertificateAuthority::load(&mesh.ca_dir)
        .with_context(|| format!("loading the CA in {}", mesh.ca_dir.display()))?;
    let layout_manifest = layout_config_map(&mesh, &release)?;
    let mut manifests = vec![ca_secret(&mesh, &release)?];
    for &i in &ordinals {
        manifests.push(node_tls_secret(
            &mesh, &release, &ca, i, args.ttl, &args.dns,
        )?);
    }
    manifests.push(layout_manifest);
    print(
        output,
        &release,
        "CA Secret, node certificates and layout",
        &manifests,
    )?;

    let ns = &release.namespace;
    let names: Vec<String> = ordinals.iter().map(|&i| release.tls_secret(i)).collect();
    eprintln!(
        "mesh-ctl: printed Secret {}{}, ConfigMap {}; load them with `kubectl -n {ns} apply -f -`",
        release.ca_secret,
        if names.is_empty() {
            " (no --ordinals: no node certificates)".to_owned()
        } else {
            format!(
                ", Secrets {} (node certificates valid for {})",
                names.join(", "),
                humantime::format_duration(args.ttl)
            )
        },
        release.layout_config_map
    );
    if !ordinals.is_empty() {
        eprintln!(
            "mesh-ctl: a running node takes a renewed certificate only when it restarts (the chart \
             mounts it with subPath): `kubectl -n {ns} rollout restart statefulset {}`",
            release.fullname
        );
    }
    if let Some(high) = ordinals.iter().find(|&&i| i >= 16) {
        eprintln!(
            "mesh-ctl: the chart mounts node Secrets only for ordinals below its maxNodes (default \
             16): raise maxNodes above {high} before pod {} starts",
            release.node_id(*high)
        );
    }
    let (layout, _) = mesh.layout()?;
    let outside: Vec<u32> = ordinals
        .iter()
        .copied()
        .filter(|&i| !layout.is_member(&release.node_id(i)))
        .collect();
    if !outside.is_empty() {
        eprintln!(
            "mesh-ctl: not in layout version {}, so owning nothing yet: {}. Once their pods run \
             (their KEK Secrets come from `mesh-ctl k8s kek`), add them:",
            layout.version,
            outside
                .iter()
                .map(|&i| release.node_id(i))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for i in &outside {
            let m = release.member(*i);
            eprintln!(
                "  mesh-ctl layout stage add {} --gateway {} --peer {} --dir {}",
                m.node_id,
                m.gateway_addr,
                m.peer_addr,
                mesh.dir.display()
            );
        }
        eprintln!(
            "  mesh-ctl layout apply --version {} --wait --dir {}",
            layout.version + 1,
            mesh.dir.display()
        );
    }
    Ok(())
}

/// `mesh-ctl k8s kek`.
fn kek(args: KekArgs, output: Output) -> anyhow::Result<()> {
    let release = match &args.dir {
        Some(dir) => {
            let release = Release::require(
                &std::path::absolute(dir)
                    .with_context(|| format!("resolving {}", dir.display()))?,
            )?;
            guard(
                dir,
                &release,
                args.release.release.as_deref(),
                args.release.namespace.as_deref(),
            )?;
            release
        }
        None => args.release.spec()?.resolve()?,
    };
    let ordinals = release::parse_ordinals(&args.ordinals)?;
    let manifests: Vec<Manifest> = ordinals
        .iter()
        .map(|&i| {
            let data = BTreeMap::from([(
                "node.kek",
                mesh_node::security::crypto::generate_key_file().into_bytes(),
            )]);
            Manifest {
                comment: format!(
                    "Node {}: its key-encryption key, made once. `kubectl create` (never apply): \
                     replacing it makes the node's data unreadable. Keep an offline copy.",
                    release.node_id(i)
                ),
                object: manifest::secret(
                    &release,
                    &release.kek_secret(i),
                    Component::NodeKek,
                    "Opaque",
                    &data,
                ),
            }
        })
        .collect();
    print(output, &release, "Key-encryption keys", &manifests)?;
    let ns = &release.namespace;
    eprintln!(
        "mesh-ctl: WARNING: these are NEW key-encryption keys for {}.\n  Load them with `kubectl -n {ns} \
         create -f <file>`, which refuses to overwrite a node's existing key; never `kubectl apply`: \
         a replaced key makes that node's data unreadable.\n  Keep the file offline (not in the \
         cluster, not in git): it is the only way to read the node's volume or its backups.",
        ordinals
            .iter()
            .map(|&i| release.node_id(i))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
