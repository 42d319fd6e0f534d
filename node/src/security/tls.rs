//! TLS configuration, built in one place for the gateway, the clients and the peer
//! transport: TLS 1.3 only, aws-lc-rs as the only provider, the hybrid post-quantum key exchange
//! X25519MLKEM768 preferred, and client certificates required and chained to the mesh CA.

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// aws-lc-rs with key exchange groups in our order of preference: the post-quantum hybrid first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
        aws_lc_rs::kx_group::SECP256R1,
        aws_lc_rs::kx_group::SECP384R1,
    ];
    Arc::new(provider)
}

/// Certificates, a key and the trust bundle, loaded from PEM files.
#[derive(Debug)]
pub struct TlsMaterial {
    pub roots: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsMaterial {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            roots: load_certs(ca)?,
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    })?;
    parse_certs(&bytes, path)
}

/// PEM certificates from `bytes` (read from `path`, which errors name); at least one.
pub(crate) fn parse_certs(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.into(),
            reason: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.into(),
            reason: "contains no certificate".into(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.into(),
        reason: format!("not a PEM private key: {e}"),
    })
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    Ok(store)
}

/// The verifier of client certificates: chains to the mesh CA, unexpired, client-auth usage. Shared
/// by every TLS server and by the end-to-end proof check, so they accept exactly the same clients.
pub fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider())
            .build()?,
    )
}

/// Server side of an mTLS endpoint: TLS 1.3 only, a client certificate chaining to the mesh CA
/// required, ALPN `alpn` (h2 for the gateway, `dsm-peer/1` for the peer transport).
pub fn server_config(m: &TlsMaterial, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(&m.roots)?)
        .with_single_cert(m.chain.clone(), m.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Server side backed by live credentials (the node's `trust::Trust`): the certificate presented
/// and the client chains accepted follow every reload of `trust`, without rebuilding this config.
/// Every connection makes a full handshake (no resumption), so it is verified against the trust in
/// force. Generic so that this module, the one place TLS configs are built, does not depend on
/// where the live credentials come from.
pub(crate) fn live_server_config<T>(
    trust: &Arc<T>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError>
where
    T: ClientCertVerifier + rustls::server::ResolvesServerCert + 'static,
{
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(trust.clone())
        .with_cert_resolver(trust.clone());
    // No session resumption: a resumed session skips certificate verification and keeps the
    // certificates of the session it resumes, so a rotation or revocation would not be seen.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client side backed by the node's live credentials (the peer transport dialling other nodes).
pub(crate) fn live_client_config<T>(
    trust: &Arc<T>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError>
where
    T: rustls::client::danger::ServerCertVerifier + rustls::client::ResolvesClientCert + 'static,
{
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(trust.clone())
        .with_client_cert_resolver(trust.clone());
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client side: TLS 1.3 only, the server verified against the mesh CA, our certificate presented.
pub fn client_config(m: &TlsMaterial, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(&m.roots)?)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    #[test]
    fn post_quantum_hybrid_is_preferred() {
        let p = super::provider();
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768);
    }
}
