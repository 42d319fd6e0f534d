//! End-to-end client proof: how the node that owns a shard knows that a request it receives from
//! another node was really sent, unchanged, by a client holding a given certificate.
//!
//! The client signs every request with its certificate key (ECDSA P-256, SHA-256) over
//!
//! ```text
//! "dsm-req-v1" \n <method path> \n <unix ms> \n <nonce hex> \n <hex SHA-256 of the request bytes>
//! ```
//!
//! and sends `x-dsm-proof: <unix ms>.<nonce hex>.<signature base64url>` with it. A gateway that
//! forwards the request sends the owner the request bytes, that proof, and the certificate chain the
//! client presented in its TLS handshake. The owner checks the chain against the mesh CA (the same
//! verifier as its own TLS), the signature against the leaf's key, the timestamp against a freshness
//! window, and the nonce against a replay cache, and only then takes the role from the leaf's
//! identity. A forwarding node therefore cannot invent a request, change one, or change its role;
//! holding only its own node key it cannot sign as any client.

use crate::domain::clock::now_ms;
use crate::security::identity::{Identity, IdentityError};
use aws_lc_rs::{digest, rand, signature};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mesh_proto::v1::ClientProof;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject as _};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// gRPC metadata key carrying the proof.
pub(crate) const PROOF_HEADER: &str = "x-dsm-proof";
/// How far a proof's timestamp may be from the owner's clock.
pub(crate) const FRESHNESS: Duration = Duration::from_secs(60);
const NONCE_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("request carries no client proof ({PROOF_HEADER})")]
    Missing,
    #[error(
        "malformed {PROOF_HEADER} header (expected <unix ms>.<nonce hex>.<signature base64url>)"
    )]
    Malformed,
    #[error("client certificate chain does not verify against the mesh CA: {0}")]
    Chain(String),
    #[error("client certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("proof timestamp is outside the freshness window; check the client's clock")]
    Stale,
    #[error("proof signature does not match the request")]
    Signature,
    #[error("proof was already used (replay)")]
    Replay,
}

/// The bytes a client signs.
pub(crate) fn signing_payload(
    method: &str,
    timestamp_ms: i64,
    nonce: &[u8],
    request: &[u8],
) -> Vec<u8> {
    let digest = digest::digest(&digest::SHA256, request);
    format!(
        "dsm-req-v1\n{method}\n{timestamp_ms}\n{}\n{}",
        hex::encode(nonce),
        hex::encode(digest.as_ref())
    )
    .into_bytes()
}

/// A client's signing key (the private key of its mesh certificate).
pub struct Signer {
    key: signature::EcdsaKeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Loads a PKCS#8 PEM ECDSA P-256 key, as written by `mesh-ctl cert issue`.
    pub fn from_pem_file(path: &Path) -> Result<Signer, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Signer::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The same from PEM bytes.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Signer, String> {
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
        let key = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
        )
        .map_err(|_| "not an ECDSA P-256 key".to_owned())?;
        Ok(Signer { key })
    }

    /// Signs arbitrary bytes (ECDSA P-256 / SHA-256, ASN.1 DER), for example an audit checkpoint.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key
            .sign(&rand::SystemRandom::new(), message)
            .expect("ECDSA signing of an in-memory message cannot fail")
            .as_ref()
            .to_vec()
    }

    /// The `x-dsm-proof` header value for `request` (its prost encoding) sent to `method`.
    pub fn proof_header(&self, method: &str, request: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).expect("system CSPRNG is available");
        let ts = now_ms();
        let sig = self
            .key
            .sign(
                &rand::SystemRandom::new(),
                &signing_payload(method, ts, &nonce, request),
            )
            .expect("ECDSA signing of an in-memory message cannot fail");
        format!("{ts}.{}.{}", hex::encode(nonce), B64.encode(sig.as_ref()))
    }

    /// `msg` as a tonic request carrying its proof.
    pub fn signed<T: prost::Message>(&self, method: &str, msg: T) -> tonic::Request<T> {
        let header = self.proof_header(method, &msg.encode_to_vec());
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = header.parse() {
            req.metadata_mut().insert(PROOF_HEADER, v);
        }
        req
    }
}

/// Parses an `x-dsm-proof` header into (timestamp, nonce, signature).
pub fn parse_header(value: &str) -> Result<(i64, Vec<u8>, Vec<u8>), ProofError> {
    let mut parts = value.split('.');
    let (Some(ts), Some(nonce), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let ts = ts.parse().map_err(|_| ProofError::Malformed)?;
    let nonce = hex::decode(nonce)
        .ok()
        .filter(|n| n.len() == NONCE_LEN)
        .ok_or(ProofError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| ProofError::Malformed)?;
    Ok((ts, nonce, sig))
}

/// Verifies forwarded proofs on the owner node.
pub struct ProofVerifier {
    chain_verifier: Arc<dyn ClientCertVerifier>,
    /// Nonces of the fresh proofs seen, by the time slot of their timestamp.
    seen: Mutex<ReplayCache>,
}

/// Width of one time slot of the replay cache.
const SLOT_MS: i64 = 5_000;

/// The nonces of accepted proofs, bucketed by the time slot of the proof's timestamp. A replay
/// carries the same signed timestamp as the original, so it is looked for in one slot; slots
/// whose proofs can no longer be fresh are dropped whole. Insert and expiry cost the same however
/// many proofs are remembered (the old cache pruned with a scan of every nonce under its lock
/// once it held 100k, that is on every request past about 800 forwarded requests a second).
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    slots: std::collections::BTreeMap<i64, std::collections::HashSet<Vec<u8>>>,
    len: usize,
}

impl ReplayCache {
    /// Remembers `nonce` of a proof timestamped `ts` (already checked fresh at `now`); false if it
    /// was seen before (a replay).
    pub(crate) fn insert(&mut self, nonce: &[u8], ts: i64, now: i64) -> bool {
        // A proof older than now - FRESHNESS is refused as stale before it gets here: its slot is
        // no longer needed.
        let oldest = (now - FRESHNESS.as_millis() as i64).div_euclid(SLOT_MS);
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            self.len -= entry.remove().len();
        }
        let fresh = self
            .slots
            .entry(ts.div_euclid(SLOT_MS))
            .or_default()
            .insert(nonce.to_vec());
        if fresh {
            self.len += 1;
        }
        fresh
    }

    /// How many nonces are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl std::fmt::Debug for ProofVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofVerifier(..)")
    }
}

impl ProofVerifier {
    pub fn new(chain_verifier: Arc<dyn ClientCertVerifier>) -> ProofVerifier {
        ProofVerifier {
            chain_verifier,
            seen: Mutex::new(ReplayCache::default()),
        }
    }

    /// The identity that provably sent `request` to `method`.
    pub fn verify(
        &self,
        method: &str,
        request: &[u8],
        proof: &ClientProof,
    ) -> Result<Identity, ProofError> {
        let (leaf, intermediates) = proof.chain.split_first().ok_or(ProofError::Missing)?;
        let leaf = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        self.chain_verifier
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
            .map_err(|e| ProofError::Chain(e.to_string()))?;
        let identity = Identity::from_certificate(&leaf)?;

        let now = now_ms();
        if (now - proof.timestamp_unix_ms).unsigned_abs() > FRESHNESS.as_millis() as u64 {
            return Err(ProofError::Stale);
        }
        let spki = {
            use x509_parser::prelude::*;
            let (_, cert) = X509Certificate::from_der(&leaf)
                .map_err(|_| ProofError::Chain("unparseable leaf".into()))?;
            cert.public_key().subject_public_key.data.to_vec()
        };
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki)
            .verify(
                &signing_payload(method, proof.timestamp_unix_ms, &proof.nonce, request),
                &proof.signature,
            )
            .map_err(|_| ProofError::Signature)?;

        // Only a valid proof may occupy the replay cache.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.insert(&proof.nonce, proof.timestamp_unix_ms, now) {
            return Err(ProofError::Replay);
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::policy::Role;
    use crate::security::pki::{CertificateAuthority, LeafSpec};

    fn setup() -> (ProofVerifier, Signer, Vec<u8>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create("mesh.test", Duration::from_secs(3600)).unwrap();
        let id = Identity::Client {
            trust_domain: "mesh.test".into(),
            role: Role::Oms,
            name: "o".into(),
        };
        let (cert, key) = ca
            .issue(&LeafSpec::new(id, Duration::from_secs(600)))
            .unwrap()
            .write(dir.path(), "c")
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let m = crate::security::tls::TlsMaterial::load(&dir.path().join("ca.pem"), &cert, &key)
            .unwrap();
        let verifier = crate::security::tls::client_verifier(&m.roots).unwrap();
        (
            ProofVerifier::new(verifier),
            Signer::from_pem_file(&key).unwrap(),
            m.chain[0].to_vec(),
            dir,
        )
    }

    fn proof(signer: &Signer, chain: &[u8], method: &str, request: &[u8]) -> ClientProof {
        let (ts, nonce, sig) = parse_header(&signer.proof_header(method, request)).unwrap();
        ClientProof {
            chain: vec![chain.to_vec()],
            timestamp_unix_ms: ts,
            nonce,
            signature: sig,
        }
    }

    #[test]
    fn the_replay_cache_refuses_a_nonce_while_fresh_and_forgets_it_after() {
        let mut cache = ReplayCache::default();
        let t = 1_800_000_000_000;
        let window = FRESHNESS.as_millis() as i64;
        assert!(cache.insert(b"n1", t, t));
        assert!(
            !cache.insert(b"n1", t, t + window / 2),
            "a replay while fresh"
        );
        assert!(cache.insert(b"n2", t, t + 1));
        // Many proofs over the window, and past it: what is kept stays within the window.
        for i in 0..200_000i64 {
            let ts = t + i * 10;
            assert!(cache.insert(&i.to_be_bytes(), ts, ts));
        }
        let now = t + 200_000 * 10;
        let per_window = usize::try_from((window + 2 * SLOT_MS) / 10).expect("small");
        assert!(
            cache.len() <= per_window,
            "{} nonces kept, at most {per_window} can still be fresh",
            cache.len()
        );
        // The first nonces are forgotten (their proofs are stale and refused as such anyway).
        assert!(cache.insert(b"n1", now, now));
    }

    #[test]
    fn a_valid_proof_names_the_client_once() {
        let (v, s, chain, _d) = setup();
        let p = proof(&s, &chain, "/m", b"req");
        assert!(matches!(
            v.verify("/m", b"req", &p),
            Ok(Identity::Client {
                role: Role::Oms,
                ..
            })
        ));
        assert_eq!(v.verify("/m", b"req", &p), Err(ProofError::Replay));
    }

    #[test]
    fn altered_requests_methods_and_times_are_refused() {
        let (v, s, chain, _d) = setup();
        assert_eq!(
            v.verify("/m", b"other", &proof(&s, &chain, "/m", b"req")),
            Err(ProofError::Signature)
        );
        assert_eq!(
            v.verify("/other", b"req", &proof(&s, &chain, "/m", b"req")),
            Err(ProofError::Signature)
        );
        let mut old = proof(&s, &chain, "/m", b"req");
        old.timestamp_unix_ms -= 10 * 60 * 1000;
        assert_eq!(v.verify("/m", b"req", &old), Err(ProofError::Stale));
        let mut garbage = proof(&s, &chain, "/m", b"req");
        garbage.chain = vec![b"not a certificate".to_vec()];
        assert!(matches!(
            v.verify("/m", b"req", &garbage),
            Err(ProofError::Chain(_))
        ));
    }
}
