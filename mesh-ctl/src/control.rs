//! The control plane's view of a mesh: its directory (CA, control key, the layouts mesh-ctl signed,
//! staged changes, the admin client) and admin calls to its nodes.
//!
//! Files in DIR (a `mesh-ctl up` directory, or any directory with a `ca/` from `mesh-ctl ca init`):
//! - `ca/`: the CA and the control key that signs layouts;
//! - `layout.bin`: the newest layout mesh-ctl signed (`dsm.v1.SignedLayout`); `layout.previous.bin`
//!   the one before it, whose members may still hold partitions on their way out;
//! - `layout.staged.json`: member changes waiting for `layout apply`;
//! - `clients/admin.pem|.key`: the admin certificate mesh-ctl calls nodes with (issued on first use).

use anyhow::{Context as _, bail};
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::control_key::ControlKey;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, LeafSpec};
use mesh_proto::v1::SignedLayout;
use mesh_proto::v1::admin_client::AdminClient;
use prost::Message as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Member changes waiting for `layout apply`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Staged {
    pub add: Vec<StagedMember>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StagedMember {
    pub node_id: String,
    pub gateway_addr: String,
    pub peer_addr: String,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// The member list after these changes.
    pub fn members_after(&self, current: &Layout) -> Vec<Member> {
        let mut members: Vec<Member> = current
            .members
            .iter()
            .filter(|m| !self.remove.contains(&m.node_id))
            .cloned()
            .collect();
        members.extend(self.add.iter().map(|a| Member {
            node_id: a.node_id.clone(),
            gateway_addr: a.gateway_addr.clone(),
            peer_addr: a.peer_addr.clone(),
        }));
        members
    }
}

pub struct MeshDir {
    pub dir: PathBuf,
    pub ca_dir: PathBuf,
}

impl MeshDir {
    pub fn open(dir: &Path) -> anyhow::Result<MeshDir> {
        let dir =
            std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let ca_dir = dir.join("ca");
        if !ca_dir.join(mesh_node::security::pki::CA_CERT_FILE).exists() {
            bail!(
                "{} holds no mesh CA (ca/); start a mesh with `mesh-ctl up --dir {}` or point --dir at one",
                dir.display(),
                dir.display()
            );
        }
        Ok(MeshDir { dir, ca_dir })
    }

    fn layout_path(&self) -> PathBuf {
        self.dir.join("layout.bin")
    }

    fn previous_path(&self) -> PathBuf {
        self.dir.join("layout.previous.bin")
    }

    fn staged_path(&self) -> PathBuf {
        self.dir.join("layout.staged.json")
    }

    pub fn control_key(&self) -> anyhow::Result<ControlKey> {
        Ok(CertificateAuthority::load_control_key(&self.ca_dir)?)
    }

    fn read_layout(&self, path: &Path) -> anyhow::Result<Option<(Layout, SignedLayout)>> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(None);
        };
        let signed = SignedLayout::decode(bytes.as_slice())
            .with_context(|| format!("{} is not a signed layout", path.display()))?;
        let layout = Layout::verify(&signed, &self.control_key()?.public())
            .with_context(|| format!("{} does not verify", path.display()))?;
        Ok(Some((layout, signed)))
    }

    /// The newest layout mesh-ctl signed for this mesh.
    pub fn layout(&self) -> anyhow::Result<(Layout, SignedLayout)> {
        self.read_layout(&self.layout_path())?.with_context(|| {
            format!(
                "{} has no layout.bin (start the mesh with `mesh-ctl up`)",
                self.dir.display()
            )
        })
    }

    pub fn previous_layout(&self) -> anyhow::Result<Option<Layout>> {
        Ok(self.read_layout(&self.previous_path())?.map(|(l, _)| l))
    }

    /// Records a newly signed layout (the current one becomes the previous), atomically per file.
    pub fn save_layout(&self, signed: &SignedLayout) -> anyhow::Result<()> {
        if let Ok(current) = std::fs::read(self.layout_path()) {
            write_atomic(&self.previous_path(), &current)?;
        }
        write_atomic(&self.layout_path(), &signed.encode_to_vec())
    }

    /// Forgets the previous layout once every partition has left it.
    pub fn retire_previous(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.previous_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.previous_path().display()))
            }
            _ => Ok(()),
        }
    }

    pub fn staged(&self) -> anyhow::Result<Staged> {
        match std::fs::read_to_string(self.staged_path()) {
            Err(_) => Ok(Staged::default()),
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}", self.staged_path().display())),
        }
    }

    pub fn save_staged(&self, staged: &Staged) -> anyhow::Result<()> {
        if staged.is_empty() {
            let _ = std::fs::remove_file(self.staged_path());
            return Ok(());
        }
        write_atomic(
            &self.staged_path(),
            serde_json::to_string_pretty(staged)?.as_bytes(),
        )
    }

    /// The admin client TLS config, issuing mesh-ctl an admin certificate on first use.
    pub fn admin_tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let clients = self.dir.join("clients");
        let (cert, key) = (clients.join("admin.pem"), clients.join("admin.key"));
        if !cert.exists() || !key.exists() {
            let ca = CertificateAuthority::load(&self.ca_dir)?;
            let identity = Identity::Client {
                trust_domain: ca.trust_domain().to_owned(),
                role: Role::Admin,
                name: "mesh-ctl".into(),
            };
            let issued = crate::pki::rotation::issue(
                &self.ca_dir,
                &ca,
                &LeafSpec::new(identity, Duration::from_secs(86_400)),
            )?;
            crate::pki::rotation::write_issued(&issued, &clients, "admin")?;
        }
        // The trust bundle (both CAs during a CA rotation), or the CA of an older directory.
        let roots = crate::pki::rotation::trust_path(&self.ca_dir);
        let roots = if roots.exists() {
            roots
        } else {
            self.ca_dir.join(mesh_node::security::pki::CA_CERT_FILE)
        };
        Ok(mesh_node::api::client::client_tls(&roots, &cert, &key)?)
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// An admin connection to `member`'s gateway (its certificate names its node id).
pub async fn admin(
    member: &Member,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<AdminClient<Channel>> {
    let addr = tokio::net::lookup_host(&member.gateway_addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("cannot resolve {}", member.gateway_addr))?;
    let channel = tokio::time::timeout(
        Duration::from_secs(5),
        mesh_node::api::client::connect(addr, &member.node_id, tls),
    )
    .await
    .context("connect timed out")??;
    Ok(AdminClient::new(channel))
}

/// Every node that may hold data: the members of the current and the previous layout.
pub fn all_members(current: &Layout, previous: Option<&Layout>) -> Vec<Member> {
    let mut all: BTreeMap<String, Member> = BTreeMap::new();
    for l in std::iter::once(current).chain(previous) {
        for m in &l.members {
            all.entry(m.node_id.clone()).or_insert_with(|| m.clone());
        }
    }
    all.into_values().collect()
}
