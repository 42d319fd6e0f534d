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
//!
//! A proof may name the one node it is for (its *audience*): then the header has a fourth part,
//! `.<node id>`, and the signed text starts `"dsm-req-v2" \n <node id> \n` before the method.
//! Any other node refuses it. A mesh-wide audit query needs one such proof per member (see
//! `api::audit`); a gateway call may name no node, since only its partition's owner serves it.
//!
//! A proof is spent once per mesh, not only once per node (ARCHITECTURE.md, "Request life"):
//! - the replay cache is in memory, so a node refuses proofs signed before it started;
//! - a proof spent on a request for partition `p` is remembered with `p`, and the nonces still
//!   fresh travel with the partition when it moves ([`ProofVerifier::export_spent`],
//!   [`ProofVerifier::import_spent`]), together with the exporter's own floor.

use crate::domain::clock::now_ms;
use crate::domain::ids::Partition;
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
/// gRPC metadata key, repeated, carrying one proof per member for a mesh-wide call (each naming
/// its member as audience).
pub const MEMBER_PROOF_HEADER: &str = "x-dsm-member-proof";
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
    #[error("proof is for node {0}, not this one")]
    OtherNode(String),
    #[error(
        "proof was signed before this node started serving the request's data (it restarted, or \
         the partition moved here, since); sign the request again"
    )]
    BeforeServing,
}

/// The bytes a client signs, for `audience` (a node id) or for any node (empty).
pub(crate) fn signing_payload(
    audience: &str,
    method: &str,
    timestamp_ms: i64,
    nonce: &[u8],
    request: &[u8],
) -> Vec<u8> {
    let digest = digest::digest(&digest::SHA256, request);
    let version = if audience.is_empty() {
        "dsm-req-v1".to_owned()
    } else {
        format!("dsm-req-v2\n{audience}")
    };
    format!(
        "{version}\n{method}\n{timestamp_ms}\n{}\n{}",
        hex::encode(nonce),
        hex::encode(digest.as_ref())
    )
    .into_bytes()
}

/// Longest audience (a node id) a proof may name.
const MAX_AUDIENCE: usize = 128;

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

    /// The `x-dsm-proof` header value for `request` (its prost encoding) sent to `method`, for
    /// any node.
    pub fn proof_header(&self, method: &str, request: &[u8]) -> String {
        self.proof_header_for("", method, request)
    }

    /// The same for the one node `audience` (any node when empty).
    pub fn proof_header_for(&self, audience: &str, method: &str, request: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).expect("system CSPRNG is available");
        let ts = now_ms();
        let sig = self
            .key
            .sign(
                &rand::SystemRandom::new(),
                &signing_payload(audience, method, ts, &nonce, request),
            )
            .expect("ECDSA signing of an in-memory message cannot fail");
        let header = format!("{ts}.{}.{}", hex::encode(nonce), B64.encode(sig.as_ref()));
        if audience.is_empty() {
            header
        } else {
            format!("{header}.{audience}")
        }
    }

    /// `msg` as a tonic request carrying one proof for each of `members` (each naming it), for a
    /// call the receiving node fans out to every member (`Audit/Query`), and a proof for any node.
    pub fn signed_for_members<T: prost::Message>(
        &self,
        method: &str,
        msg: T,
        members: &[&str],
    ) -> tonic::Request<T> {
        let bytes = msg.encode_to_vec();
        let mut req = self.signed(method, msg);
        for m in members {
            if let Ok(v) = self.proof_header_for(m, method, &bytes).parse() {
                req.metadata_mut().append(MEMBER_PROOF_HEADER, v);
            }
        }
        req
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

/// Parses an `x-dsm-proof` header into its proof (without the certificate chain, which comes
/// from the TLS handshake).
pub fn parse_header(value: &str) -> Result<ClientProof, ProofError> {
    // The audience is last and may itself hold dots (node ids may).
    let mut parts = value.splitn(4, '.');
    let (Some(ts), Some(nonce), Some(sig), audience) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let audience = audience.unwrap_or_default();
    if audience.len() > MAX_AUDIENCE || (value.ends_with('.') && audience.is_empty()) {
        return Err(ProofError::Malformed);
    }
    let ts = ts.parse().map_err(|_| ProofError::Malformed)?;
    let nonce = hex::decode(nonce)
        .ok()
        .filter(|n| n.len() == NONCE_LEN)
        .ok_or(ProofError::Malformed)?;
    let signature = B64.decode(sig).map_err(|_| ProofError::Malformed)?;
    Ok(ClientProof {
        chain: Vec::new(),
        timestamp_unix_ms: ts,
        nonce,
        signature,
        audience: audience.to_owned(),
    })
}

/// Verifies forwarded proofs on the owner node.
pub struct ProofVerifier {
    chain_verifier: Arc<dyn ClientCertVerifier>,
    /// This node: a proof naming another node is refused.
    node_id: String,
    /// When this node started (unix ms): its replay cache knows nothing older.
    started_ms: i64,
    spent: Mutex<Spent>,
}

/// What the verifier remembers of the proofs it accepted.
#[derive(Debug, Default)]
struct Spent {
    /// Nonces of the fresh proofs seen, by the time slot of their timestamp.
    seen: ReplayCache,
    /// Per partition served here: the proofs spent on it (timestamp, nonce; oldest first) and
    /// the oldest timestamp accepted for it (the floor of the node it came from).
    partitions: std::collections::HashMap<Partition, PartitionProofs>,
}

#[derive(Debug, Default)]
struct PartitionProofs {
    spent: std::collections::VecDeque<(i64, Vec<u8>)>,
    not_before: i64,
}

/// The proofs spent on one partition that are still fresh, and the oldest timestamp its next
/// owner may accept: what travels with the partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpentProofs {
    pub nonces: Vec<(i64, Vec<u8>)>,
    pub not_before_ms: i64,
}

/// The most spent proofs one partition's handoff may carry (a peer bound, far above what a
/// partition sees in a freshness window).
pub const MAX_SPENT_PER_PARTITION: usize = 1 << 20;

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
    /// The verifier of node `node_id`, starting now.
    pub fn new(chain_verifier: Arc<dyn ClientCertVerifier>, node_id: &str) -> ProofVerifier {
        ProofVerifier {
            chain_verifier,
            node_id: node_id.to_owned(),
            started_ms: now_ms(),
            spent: Mutex::new(Spent::default()),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identity that provably sent `request` to `method`, spending the proof. `partition` is
    /// the partition the request is for (its owner is this node, and it is admitted there), if any.
    pub fn verify(
        &self,
        method: &str,
        request: &[u8],
        proof: &ClientProof,
        partition: Option<Partition>,
    ) -> Result<Identity, ProofError> {
        if !proof.audience.is_empty() && proof.audience != self.node_id {
            return Err(ProofError::OtherNode(
                proof.audience.chars().take(MAX_AUDIENCE).collect(),
            ));
        }
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
        if now.abs_diff(proof.timestamp_unix_ms) > FRESHNESS.as_millis() as u64 {
            return Err(ProofError::Stale);
        }
        let not_before = partition
            .and_then(|p| self.spent().partitions.get(&p).map(|pp| pp.not_before))
            .unwrap_or(0)
            .max(self.started_ms);
        if proof.timestamp_unix_ms < not_before {
            return Err(ProofError::BeforeServing);
        }
        let spki = {
            use x509_parser::prelude::*;
            let (_, cert) = X509Certificate::from_der(&leaf)
                .map_err(|_| ProofError::Chain("unparseable leaf".into()))?;
            cert.public_key().subject_public_key.data.to_vec()
        };
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki)
            .verify(
                &signing_payload(
                    &proof.audience,
                    method,
                    proof.timestamp_unix_ms,
                    &proof.nonce,
                    request,
                ),
                &proof.signature,
            )
            .map_err(|_| ProofError::Signature)?;

        // Only a valid proof may occupy the replay cache.
        let mut spent = self.spent();
        if !spent
            .seen
            .insert(&proof.nonce, proof.timestamp_unix_ms, now)
        {
            return Err(ProofError::Replay);
        }
        if let Some(p) = partition {
            let pp = spent.partitions.entry(p).or_default();
            let stale = now - FRESHNESS.as_millis() as i64;
            while pp.spent.front().is_some_and(|(ts, _)| *ts < stale) {
                pp.spent.pop_front();
            }
            pp.spent
                .push_back((proof.timestamp_unix_ms, proof.nonce.clone()));
        }
        Ok(identity)
    }

    /// What partition `p`'s next owner must know to refuse the proofs already spent on it here:
    /// the fresh ones, and this node's floor for it. The partition is forgotten here.
    pub fn export_spent(&self, p: Partition) -> SpentProofs {
        let stale = now_ms() - FRESHNESS.as_millis() as i64;
        let pp = self.spent().partitions.remove(&p).unwrap_or_default();
        SpentProofs {
            not_before_ms: pp.not_before.max(self.started_ms),
            nonces: pp
                .spent
                .into_iter()
                .filter(|(ts, _)| *ts >= stale)
                .collect(),
        }
    }

    /// Takes over what the previous owner of partition `p` spent (see [`Self::export_spent`]).
    pub fn import_spent(&self, p: Partition, proofs: SpentProofs) {
        let now = now_ms();
        let stale = now - FRESHNESS.as_millis() as i64;
        let fresh: Vec<(i64, Vec<u8>)> = proofs
            .nonces
            .into_iter()
            .filter(|(ts, nonce)| *ts >= stale && nonce.len() == NONCE_LEN)
            .collect();
        let mut spent = self.spent();
        for (ts, nonce) in &fresh {
            spent.seen.insert(nonce, *ts, now);
        }
        let pp = spent.partitions.entry(p).or_default();
        pp.not_before = pp.not_before.max(proofs.not_before_ms);
        // Passed on again if the partition moves on within the window.
        pp.spent.extend(fresh);
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
            ProofVerifier::new(verifier, "n1"),
            Signer::from_pem_file(&key).unwrap(),
            m.chain[0].to_vec(),
            dir,
        )
    }

    fn proof(signer: &Signer, chain: &[u8], method: &str, request: &[u8]) -> ClientProof {
        ClientProof {
            chain: vec![chain.to_vec()],
            ..parse_header(&signer.proof_header(method, request)).unwrap()
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
            v.verify("/m", b"req", &p, None),
            Ok(Identity::Client {
                role: Role::Oms,
                ..
            })
        ));
        assert_eq!(v.verify("/m", b"req", &p, None), Err(ProofError::Replay));
    }

    #[test]
    fn a_proof_for_one_node_is_refused_by_every_other() {
        let (v, s, chain, _d) = setup();
        let for_n2 = |s: &Signer| ClientProof {
            chain: vec![chain.clone()],
            ..parse_header(&s.proof_header_for("n2", "/m", b"req")).unwrap()
        };
        assert_eq!(
            v.verify("/m", b"req", &for_n2(&s), None),
            Err(ProofError::OtherNode("n2".into()))
        );
        // Re-addressed to this node: the signature covers the audience.
        let readdressed = ClientProof {
            audience: "n1".into(),
            ..for_n2(&s)
        };
        assert_eq!(
            v.verify("/m", b"req", &readdressed, None),
            Err(ProofError::Signature)
        );
        let n2 = ProofVerifier::new(v.chain_verifier.clone(), "n2");
        assert!(n2.verify("/m", b"req", &for_n2(&s), None).is_ok());
        // Node ids may hold dots: the audience is the rest of the header.
        let dotted = parse_header(&s.proof_header_for("n2.dc-1", "/m", b"req")).unwrap();
        assert_eq!(dotted.audience, "n2.dc-1");
    }

    #[test]
    fn a_spent_proof_travels_with_its_partition() {
        let (old, s, chain, _d) = setup();
        // Both started before the proofs were signed.
        let new = ProofVerifier::new(old.chain_verifier.clone(), "n2");
        std::thread::sleep(Duration::from_millis(2));
        let p = Partition::new(7).unwrap();
        let spent = proof(&s, &chain, "/m", b"req");
        let other = proof(&s, &chain, "/m", b"other");
        old.verify("/m", b"req", &spent, Some(p)).unwrap();
        old.verify("/m", b"other", &other, Some(Partition::new(8).unwrap()))
            .unwrap();
        let moved = old.export_spent(p);
        assert_eq!(moved.nonces.len(), 1, "only partition 7's proof travels");
        assert_eq!(moved.not_before_ms, old.started_ms);
        new.import_spent(p, moved);
        assert_eq!(
            new.verify("/m", b"req", &spent, Some(p)),
            Err(ProofError::Replay)
        );
        // The floor travels too: a proof older than the old owner's start is refused for p.
        let mut older = proof(&s, &chain, "/m", b"req");
        older.timestamp_unix_ms = old.started_ms - 1;
        new.import_spent(
            p,
            SpentProofs {
                nonces: Vec::new(),
                not_before_ms: old.started_ms,
            },
        );
        assert_eq!(
            new.verify("/m", b"req", &older, Some(p)),
            Err(ProofError::BeforeServing)
        );
    }

    #[test]
    fn altered_requests_methods_and_times_are_refused() {
        let (v, s, chain, _d) = setup();
        assert_eq!(
            v.verify("/m", b"other", &proof(&s, &chain, "/m", b"req"), None),
            Err(ProofError::Signature)
        );
        assert_eq!(
            v.verify("/other", b"req", &proof(&s, &chain, "/m", b"req"), None),
            Err(ProofError::Signature)
        );
        let mut old = proof(&s, &chain, "/m", b"req");
        old.timestamp_unix_ms -= 10 * 60 * 1000;
        assert_eq!(v.verify("/m", b"req", &old, None), Err(ProofError::Stale));
        let mut garbage = proof(&s, &chain, "/m", b"req");
        garbage.chain = vec![b"not a certificate".to_vec()];
        assert!(matches!(
            v.verify("/m", b"req", &garbage, None),
            Err(ProofError::Chain(_))
        ));
    }
}
