//! Test PKI: a mesh CA in a temporary directory that issues node and client certificates (and,
//! through [`Pki::issue`], deliberately bad ones), and the [`Credentials`] a client holds.

use mesh_node::access::policy::Role;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, LeafSpec};
use mesh_node::security::proof::Signer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The trust domain of every test CA ([`Pki::new`]) and of the container meshes.
pub const TRUST_DOMAIN: &str = "mesh.test";

/// Paths of a certificate, its key, and the CA bundle to trust.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Credentials {
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        mesh_node::api::client::client_tls(&self.ca, &self.cert, &self.key)
            .expect("client TLS config")
    }

    /// The end-to-end proof signer of this key: what a client attaches so that a gateway may
    /// forward its request to the owner.
    pub fn signer(&self) -> Signer {
        Signer::from_pem_file(&self.key).expect("signing key")
    }
}

/// A mesh CA in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_trust_domain(TRUST_DOMAIN)
    }

    pub fn with_trust_domain(td: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::create(td, Duration::from_secs(86_400)).expect("CA");
        ca.save(&dir.path().join("ca")).expect("save CA");
        Pki { dir, ca }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join(mesh_node::security::pki::CA_CERT_FILE)
    }

    /// Issues `spec` and writes it under a unique stem.
    pub fn issue(&self, spec: &LeafSpec, stem: &str) -> Credentials {
        let (cert, key) = self
            .ca
            .issue(spec)
            .expect("issue")
            .write(&self.dir.path().join("certs"), stem)
            .expect("write");
        Credentials {
            ca: self.ca_cert(),
            cert,
            key,
        }
    }

    pub fn client(&self, role: Role) -> Credentials {
        self.client_named(role, &format!("test-{role}"))
    }

    pub fn client_named(&self, role: Role, name: &str) -> Credentials {
        let id = Identity::Client {
            trust_domain: self.ca.trust_domain().into(),
            role,
            name: name.into(),
        };
        self.issue(
            &LeafSpec::new(id, Duration::from_secs(3600)),
            &format!("client-{role}-{name}"),
        )
    }

    pub fn node(&self, id: &str) -> Credentials {
        let identity = Identity::Node {
            trust_domain: self.ca.trust_domain().into(),
            node_id: id.into(),
        };
        self.issue(
            &LeafSpec::new(identity, Duration::from_secs(3600)),
            &format!("node-{id}"),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A peer endpoint speaking the peer protocol directly with `creds`: what an attacker holding a
/// node's stolen certificate and key can do (the containment tests).
pub fn stolen_transport(creds: &Credentials) -> mesh_node::cluster::transport::PeerTransport {
    use mesh_node::cluster::transport::{ALPN, PeerTransport};
    use mesh_node::security::tls::{self, TlsMaterial};
    let m = TlsMaterial::load(&creds.ca, &creds.cert, &creds.key).expect("material");
    PeerTransport::bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        tls::server_config(&m, &[ALPN]).expect("server tls"),
        tls::client_config(&m, &[ALPN]).expect("client tls"),
        TRUST_DOMAIN,
    )
    .expect("bind")
}
