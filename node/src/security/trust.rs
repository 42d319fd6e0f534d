//! The node's live TLS credentials: its certificate and key, the trust bundle and the certificate
//! revocation lists (CRLs), reloaded while the node runs. Certificate rotation, CA rotation with an
//! overlap period and revocation need no restart and drop no connection.
//!
//! One [`Trust`] backs every TLS endpoint of the node: the gateway's server config, both sides of
//! the peer transport and the end-to-end proof check. rustls asks it, per handshake, which
//! certificate to present and whether the other side's chain is acceptable; every answer comes from
//! the current [`Generation`]. A handshake only happens when a connection opens, so long-lived
//! connections are re-checked on every request with [`Trust::admits`], whose verdict is cached per
//! generation and per certificate: a revoked client or node, or one whose CA left the bundle, is
//! refused on its next request, not at its next reconnect.
//!
//! Inputs, all files:
//! - `tls.ca`: the trust bundle (during a CA rotation, the old and the new CA);
//! - `tls.cert` and `tls.key`: this node's certificate and key;
//! - `tls.crl` (optional): CRLs as the operator distributes them (a Kubernetes Secret);
//! - `<data_dir>/tls/crl.pem`: CRLs pushed with `Admin/ReloadTls` (`mesh-ctl cert revoke`).
//!
//! A CRL is only believed if one of the trusted CAs signed it, so a pushed list can revoke but
//! never grant. Per issuer the highest CRL number wins. A reload that would leave this node unable
//! to prove itself (its certificate not for this node, not chaining to the new bundle, revoked,
//! expired, or not matching the key) is refused as a whole and the running generation stays.

use crate::security::identity::Identity;
use crate::security::tls::{self, TlsError};
use crate::telemetry::metrics::TlsMetrics;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{path}: {reason}")]
    Crl { path: String, reason: String },
    #[error("the new credentials were refused: {0}")]
    Refused(String),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Where the credentials come from.
#[derive(Debug, Clone)]
pub struct TrustFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Operator-distributed CRLs; a missing file means none.
    pub crl: Option<PathBuf>,
    /// CRLs pushed through the admin API, kept in the data directory.
    pub pushed_crl: PathBuf,
}

/// What a generation holds, for status, metrics and `mesh-ctl check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStatus {
    pub generation: u64,
    /// Serial number of this node's certificate, lower-case hex.
    pub cert_serial: String,
    /// When this node's certificate expires (Unix seconds).
    pub cert_not_after: i64,
    /// The earliest expiry among the trusted CAs (Unix seconds).
    pub ca_not_after: i64,
    /// How many CAs are trusted (2 during a CA rotation).
    pub trusted_cas: usize,
    /// Revoked serial numbers across the CRLs in force.
    pub revoked: usize,
}

/// One immutable set of credentials and the verifiers built from them.
pub struct Generation {
    pub status: TrustStatus,
    digest: [u8; 32],
    certified: Arc<CertifiedKey>,
    key_pem: Vec<u8>,
    roots: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    /// `admits` verdicts by SHA-256 of the leaf certificate.
    verdicts: RwLock<HashMap<[u8; 32], Result<(), String>>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// This node's certificate chain (DER, leaf first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// This node's private key, PEM (signs audit checkpoints).
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

/// The live credentials. Cheap to share (`Arc<Trust>`); see the module docs.
pub struct Trust {
    files: TrustFiles,
    node: Identity,
    current: RwLock<Arc<Generation>>,
    /// Serialises reloads so two of them never race on the pushed CRL file.
    reloading: Mutex<()>,
    /// Why the last reload failed (empty after a good one).
    last_error: Mutex<String>,
    metrics: Option<TlsMetrics>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("node", &self.node.to_string())
            .field("current", &self.current().status)
            .finish_non_exhaustive()
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn read_optional(path: Option<&Path>) -> Result<Vec<u8>, TlsError> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => match std::fs::read(p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(TlsError::File {
                path: p.into(),
                reason: e.to_string(),
            }),
        },
    }
}

/// A CRL that one of `roots` signed, with what we need to pick the newest per issuer.
struct VerifiedCrl {
    issuer: Vec<u8>,
    number: Vec<u8>,
    revoked: usize,
    der: CertificateRevocationListDer<'static>,
}

/// Parses PEM CRLs and keeps those a trusted CA signed; `what` names the source in errors.
fn verified_crls(
    pem: &[u8],
    roots: &[CertificateDer<'static>],
    what: &str,
) -> Result<Vec<VerifiedCrl>, TrustError> {
    use x509_parser::prelude::*;
    let bad = |reason: String| TrustError::Crl {
        path: what.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| bad(format!("unparseable CRL: {e}")))?;
        let mut signed_by_root = false;
        for root in roots {
            let Ok((_, ca)) = X509Certificate::from_der(root.as_ref()) else {
                continue;
            };
            if ca.subject().as_raw() != crl.issuer().as_raw() {
                continue;
            }
            let spki = ca.public_key().subject_public_key.data.as_ref();
            let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                spki,
            );
            if key
                .verify(
                    crl.tbs_cert_list.as_ref(),
                    crl.signature_value.data.as_ref(),
                )
                .is_ok()
            {
                signed_by_root = true;
                break;
            }
        }
        if !signed_by_root {
            // A list from a CA that is no longer trusted is simply moot; anything else is forged.
            let known_issuer = roots.iter().any(|r| {
                X509Certificate::from_der(r.as_ref())
                    .is_ok_and(|(_, ca)| ca.subject().as_raw() == crl.issuer().as_raw())
            });
            if known_issuer {
                return Err(bad(
                    "a CRL names a trusted CA as issuer but that CA did not sign it".into(),
                ));
            }
            continue;
        }
        // The TLS stack parses CRLs more strictly than x509-parser (a revocation dated before
        // 1970, a version-1 list): one it refuses would be stored and then fail every reload.
        tls_stack_accepts(&der, roots).map_err(|e| bad(format!("unusable CRL: {e}")))?;
        out.push(VerifiedCrl {
            issuer: crl.issuer().as_raw().to_vec(),
            number: crl
                .crl_number()
                .map(|n| n.to_bytes_be())
                .unwrap_or_default(),
            revoked: crl.iter_revoked_certificates().count(),
            der,
        });
    }
    Ok(out)
}

/// Whether rustls (webpki) takes `der` as a CRL, as the verifiers built from it will have to.
fn tls_stack_accepts(
    der: &CertificateRevocationListDer<'static>,
    roots: &[CertificateDer<'static>],
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| e.to_string())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), tls::provider())
        .with_crls([der.clone()])
        .allow_unknown_revocation_status()
        .build()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Big-endian unsigned comparison of CRL numbers.
fn newer(a: &[u8], b: &[u8]) -> bool {
    let strip = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|b| *b == 0).collect() };
    let (a, b) = (strip(a), strip(b));
    (a.len(), a) > (b.len(), b)
}

/// The newest CRL per issuer.
fn newest_per_issuer(crls: Vec<VerifiedCrl>) -> Vec<VerifiedCrl> {
    let mut by_issuer: HashMap<Vec<u8>, VerifiedCrl> = HashMap::new();
    for crl in crls {
        match by_issuer.get(&crl.issuer) {
            Some(have) if !newer(&crl.number, &have.number) => {}
            _ => {
                by_issuer.insert(crl.issuer.clone(), crl);
            }
        }
    }
    let mut out: Vec<_> = by_issuer.into_values().collect();
    out.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    out
}

fn not_after(der: &[u8]) -> i64 {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0)
}

fn serial_hex(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der)
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_default()
}

/// Everything a generation is built from, read in one go.
struct Inputs {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    crl: Vec<u8>,
    pushed_crl: Vec<u8>,
}

impl Inputs {
    fn read(files: &TrustFiles) -> Result<Inputs, TlsError> {
        Ok(Inputs {
            ca: read(&files.ca)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            crl: read_optional(files.crl.as_deref())?,
            pushed_crl: read_optional(Some(&files.pushed_crl))?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        sha256(&[&self.ca, &self.cert, &self.key, &self.crl, &self.pushed_crl])
    }
}

impl Trust {
    /// Loads the credentials for node `node`; fails if they cannot serve it.
    pub fn load(
        files: TrustFiles,
        node: Identity,
        metrics: Option<TlsMetrics>,
    ) -> Result<Arc<Trust>, TrustError> {
        let inputs = Inputs::read(&files)?;
        let generation = Trust::build(&files, &node, &inputs, 1)?;
        if let Some(m) = &metrics {
            let s = &generation.status;
            m.observe(
                s.cert_not_after,
                s.ca_not_after,
                s.trusted_cas,
                s.revoked,
                true,
            );
        }
        Ok(Arc::new(Trust {
            files,
            node,
            current: RwLock::new(Arc::new(generation)),
            reloading: Mutex::new(()),
            last_error: Mutex::new(String::new()),
            metrics,
        }))
    }

    /// Why the last reload failed, if it did.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads every input; installs a new generation if anything changed. Returns whether it did.
    /// On error the running generation stays in force.
    pub fn reload(&self) -> Result<bool, TrustError> {
        let result = self.reload_inner();
        let error = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        if !error.is_empty() && error != self.last_error() {
            tracing::error!(%error, "TLS credentials not reloaded; the running ones stay");
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
        if let Some(m) = &self.metrics {
            let s = &self.current().status;
            m.observe(
                s.cert_not_after,
                s.ca_not_after,
                s.trusted_cas,
                s.revoked,
                result.is_ok(),
            );
        }
        result
    }

    fn reload_inner(&self) -> Result<bool, TrustError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inputs = Inputs::read(&self.files)?;
        let current = self.current();
        if inputs.digest() == current.digest {
            return Ok(false);
        }
        let next = Trust::build(
            &self.files,
            &self.node,
            &inputs,
            current.status.generation + 1,
        )?;
        tracing::info!(
            generation = next.status.generation,
            cert_serial = %next.status.cert_serial,
            trusted_cas = next.status.trusted_cas,
            revoked = next.status.revoked,
            "TLS credentials reloaded"
        );
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(true)
    }

    /// Stores CRLs pushed by an operator (only lists a trusted CA signed are accepted, and an
    /// older list never replaces a newer one), then reloads. The file is replaced atomically.
    pub(crate) fn install_crls(&self, pem: &[u8]) -> Result<bool, TrustError> {
        let current = self.current();
        let roots = current.roots.clone();
        let pushed = verified_crls(pem, &roots, "pushed CRL")?;
        if pushed.is_empty() {
            return Err(TrustError::Crl {
                path: "pushed CRL".into(),
                reason: "contains no CRL signed by a trusted CA".into(),
            });
        }
        {
            let _one = self
                .reloading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let have = read_optional(Some(&self.files.pushed_crl))?;
            let mut all = verified_crls(&have, &roots, "stored CRL").unwrap_or_default();
            all.extend(pushed);
            let keep = newest_per_issuer(all);
            let mut out = String::new();
            for crl in &keep {
                out.push_str(&pem_encode("X509 CRL", crl.der.as_ref()));
            }
            let path = &self.files.pushed_crl;
            let write = |e: std::io::Error| TrustError::Write {
                path: path.clone(),
                reason: e.to_string(),
            };
            if let Some(dir) = path.parent() {
                crate::durable_fs::create_dir_all(dir).map_err(write)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, out.as_bytes()).map_err(write)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(write)?;
            std::fs::rename(&tmp, path).map_err(write)?;
            // The rename is the revocation taking effect: it must survive a power cut too.
            if let Some(dir) = path.parent() {
                crate::durable_fs::sync_dir(dir).map_err(write)?;
            }
        }
        self.reload()
    }

    fn build(
        files: &TrustFiles,
        node: &Identity,
        inputs: &Inputs,
        number: u64,
    ) -> Result<Generation, TrustError> {
        let roots = tls::parse_certs(&inputs.ca, &files.ca)?;
        let chain = tls::parse_certs(&inputs.cert, &files.cert)?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&inputs.key).map_err(|e| {
            TlsError::File {
                path: files.key.clone(),
                reason: format!("not a PEM private key: {e}"),
            }
        })?;
        let provider = tls::provider();
        let certified = CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| TrustError::Refused(format!("certificate and key: {e}")))?;
        let identity = Identity::from_certificate(&chain[0])
            .map_err(|e| TrustError::Refused(format!("certificate: {e}")))?;
        if &identity != node {
            return Err(TrustError::Refused(format!(
                "the certificate is for {identity}, but this node is {node}"
            )));
        }

        let crl_name = files
            .crl
            .as_ref()
            .map_or_else(|| "tls.crl".to_owned(), |p| p.display().to_string());
        let mut crls = verified_crls(&inputs.crl, &roots, &crl_name)?;
        // A stored list can only have been accepted before; one that no longer verifies (its CA
        // left the bundle) is dropped, not fatal.
        crls.extend(verified_crls(&inputs.pushed_crl, &roots, "stored CRL").unwrap_or_default());
        let crls = newest_per_issuer(crls);
        let revoked = crls.iter().map(|c| c.revoked).sum();
        let crl_ders: Vec<_> = crls.into_iter().map(|c| c.der).collect();

        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(TlsError::from)?;
        }
        let store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
                .with_crls(crl_ders.clone())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()
                .map_err(TlsError::from)?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(store, provider)
            .with_crls(crl_ders)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TrustError::Refused(format!("server verifier: {e}")))?;
        // This node must still be able to prove itself under the new trust.
        client_verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                TrustError::Refused(format!(
                    "this node's certificate would not be accepted by its peers: {e}"
                ))
            })?;
        let status = TrustStatus {
            generation: number,
            cert_serial: serial_hex(&chain[0]),
            cert_not_after: not_after(&chain[0]),
            ca_not_after: roots.iter().map(|r| not_after(r)).min().unwrap_or(0),
            trusted_cas: roots.len(),
            revoked,
        };
        Ok(Generation {
            status,
            digest: inputs.digest(),
            certified: Arc::new(certified),
            key_pem: inputs.key.clone(),
            roots,
            client_verifier,
            server_verifier,
            verdicts: RwLock::new(HashMap::new()),
        })
    }

    /// Whether a certificate chain (DER, leaf first) that authenticated a connection is still
    /// acceptable now: chains to a trusted CA, unexpired, not revoked. Cached per generation.
    pub(crate) fn admits(&self, chain: &[impl AsRef<[u8]>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no client certificate".into());
        };
        let g = self.current();
        let key = sha256(&[leaf.as_ref()]);
        // Every request asks: a shared lock for the common hit, the verification outside any lock.
        if let Some(v) = g
            .verdicts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return v.clone();
        }
        let leaf = CertificateDer::from(leaf.as_ref());
        let intermediates: Vec<_> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let verdict = g
            .client_verifier
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string());
        // Expiry is re-checked once the cache is cleared; keep the map bounded.
        let mut verdicts = g
            .verdicts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verdicts.len() >= 4096 {
            verdicts.clear();
        }
        verdicts.insert(key, verdict.clone());
        verdict
    }

    /// Forgets cached verdicts (expiry moves on even when no file changes).
    pub(crate) fn expire_verdicts(&self) {
        self.current()
            .verdicts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Reloads every `interval` until `shutdown`; errors are logged and counted, never fatal.
    pub async fn watch(
        self: Arc<Self>,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            ticks += 1;
            if ticks.is_multiple_of(30) {
                self.expire_verdicts();
            }
            let trust = self.clone();
            // Errors are logged and counted by `reload`.
            let _ = tokio::task::spawn_blocking(move || trust.reload()).await;
        }
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

mod handshake;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod watch_tests;
