//! The `proof_header` and `proof_verify` targets: `proof::parse_header` on a client's
//! `x-dsm-proof` header, and `ProofVerifier::verify` on a forwarded `ClientProof`.

use super::{Mutation, TD, apply, at, bytes_from, fuzz, mutations, name_like, node};
use crate::domain::ids::{PARTITIONS, Partition};
use crate::security::identity::Identity;
use crate::security::pki::{CertificateAuthority, LeafSpec};
use crate::security::proof::{ProofError, ProofVerifier, Signer, parse_header};
use base64::Engine as _;
use mesh_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use std::time::Duration;

fn first_der(pem_text: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem_text.as_bytes())
        .unwrap()
        .to_vec()
}

fn client(name: &str) -> Identity {
    Identity::Client {
        trust_domain: TD.into(),
        role: crate::access::policy::Role::Oms,
        name: name.into(),
    }
}

pub(super) fn header_seeds(signer: &Signer) -> Vec<Vec<u8>> {
    [
        signer.proof_header("/dsm.v1.OrderGateway/GetOrder", b"req"),
        signer.proof_header_for("n1", "/dsm.v1.Audit/Query", b""),
        signer.proof_header_for("n2.dc-1", "/m", b"x"),
        format!("-1.{}.AA", "00".repeat(16)),
        format!("0.{}.AA.n1", "ff".repeat(16)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// The header as a client would write it for `p`.
fn format_header(p: &pb::ClientProof) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = format!(
        "{}.{}.{}",
        p.timestamp_unix_ms,
        hex::encode(&p.nonce),
        b64.encode(&p.signature)
    );
    if p.audience.is_empty() {
        header
    } else {
        format!("{header}.{}", p.audience)
    }
}

/// A client signer, its certificate chain (leaf DER), a verifier for node `n1` and other leaves.
pub(super) struct ProofFixture {
    pub(super) verifier: ProofVerifier,
    pub(super) signer: Signer,
    leaf: Vec<u8>,
    /// A client of another CA, a node of this CA, this CA's certificate.
    others: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
}

pub(super) fn proof_fixture() -> ProofFixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let (cert, key) = ca
        .issue(&LeafSpec::new(client("o"), Duration::from_secs(3600)))
        .unwrap()
        .write(dir.path(), "c")
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let m =
        crate::security::tls::TlsMaterial::load(&dir.path().join("ca.pem"), &cert, &key).unwrap();
    let verifier = crate::security::tls::client_verifier(&m.roots).unwrap();
    let other_ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let others = vec![
        first_der(
            &other_ca
                .issue(&LeafSpec::new(client("o"), Duration::from_secs(3600)))
                .unwrap()
                .cert_pem,
        ),
        first_der(
            &ca.issue(&LeafSpec::new(node("n2"), Duration::from_secs(3600)))
                .unwrap()
                .cert_pem,
        ),
        first_der(ca.cert_pem()),
    ];
    ProofFixture {
        verifier: ProofVerifier::new(verifier, "n1"),
        signer: Signer::from_pem_file(&key).unwrap(),
        leaf: m.chain[0].to_vec(),
        others,
        _dir: dir,
    }
}

#[test]
fn fuzz_proof_header_never_panics() {
    let f = proof_fixture();
    let strategy = prop_oneof![
        4 => bytes_from(header_seeds(&f.signer)).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any::<String>(),
    ];
    fuzz("proof_header", strategy, |header| {
        if let Ok(p) = parse_header(&header) {
            // What parses is what a client writes: it round-trips, and keeps to its limits.
            prop_assert_eq!(parse_header(&format_header(&p)), Ok(p.clone()));
            prop_assert_eq!(p.nonce.len(), 16);
            prop_assert!(p.audience.len() <= 128);
        }
        Ok(())
    });
}

#[derive(Debug, Clone)]
enum Audience {
    Any,
    This,
    Other(String),
}

#[derive(Debug, Clone)]
enum ProofEdit {
    /// No certificate at all.
    NoChain,
    /// The leaf's DER mutated.
    Leaf(Vec<Mutation>),
    /// Another certificate as leaf: another CA's client, a node, the CA itself.
    OtherLeaf(usize),
    /// Extra intermediates, garbage or real.
    Intermediate(Vec<u8>),
    /// The timestamp moved by an offset, or set.
    Shift(i64),
    SetTime(i64),
    Nonce(Vec<Mutation>),
    Signature(Vec<Mutation>),
    SetAudience(String),
    Method(String),
    Request(Vec<u8>),
}

fn proof_edit() -> impl Strategy<Value = ProofEdit> {
    prop_oneof![
        1 => Just(ProofEdit::NoChain),
        2 => mutations().prop_map(ProofEdit::Leaf),
        1 => any::<usize>().prop_map(ProofEdit::OtherLeaf),
        1 => vec(any::<u8>(), 0..64).prop_map(ProofEdit::Intermediate),
        2 => prop_oneof![-200_000..200_000i64, any::<i64>()].prop_map(ProofEdit::Shift),
        2 => prop_oneof![
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(i64::MAX),
            Just(0),
            Just(-1),
            any::<i64>()
        ]
        .prop_map(ProofEdit::SetTime),
        1 => mutations().prop_map(ProofEdit::Nonce),
        2 => mutations().prop_map(ProofEdit::Signature),
        1 => prop_oneof![Just(String::new()), Just("n1".to_owned()), name_like(), "[a-zé]{120,140}"]
            .prop_map(ProofEdit::SetAudience),
        1 => name_like().prop_map(ProofEdit::Method),
        1 => vec(any::<u8>(), 0..16).prop_map(ProofEdit::Request),
    ]
}

#[derive(Debug, Clone)]
struct ProofCase {
    method: String,
    request: Vec<u8>,
    audience: Audience,
    edits: Vec<ProofEdit>,
    partition: Option<u16>,
}

fn proof_case() -> impl Strategy<Value = ProofCase> {
    (
        prop_oneof![
            Just("/dsm.v1.OrderGateway/GetOrder".to_owned()),
            name_like()
        ],
        vec(any::<u8>(), 0..32),
        prop_oneof![
            Just(Audience::Any),
            Just(Audience::This),
            name_like().prop_map(Audience::Other)
        ],
        vec(proof_edit(), 0..4),
        prop_oneof![
            Just(None),
            (0..PARTITIONS).prop_map(Some),
            any::<u16>().prop_map(Some)
        ],
    )
        .prop_map(|(method, request, audience, edits, partition)| ProofCase {
            method,
            request,
            audience,
            edits,
            partition,
        })
}

/// The proof of a case, as a forwarding node would deliver it, and the method and request it
/// is checked against.
fn build_proof(f: &ProofFixture, case: &ProofCase) -> (pb::ClientProof, String, Vec<u8>) {
    let audience = match &case.audience {
        Audience::Any => "",
        Audience::This => "n1",
        Audience::Other(a) => a.as_str(),
    };
    let header = f
        .signer
        .proof_header_for(audience, &case.method, &case.request);
    // An audience holding a dot-free, valid header parses back; any other is set by hand.
    let mut proof = parse_header(&header).unwrap_or_else(|_| pb::ClientProof {
        timestamp_unix_ms: crate::domain::clock::now_ms(),
        nonce: vec![0; 16],
        audience: audience.to_owned(),
        ..pb::ClientProof::default()
    });
    proof.chain = vec![f.leaf.clone()];
    let (mut method, mut request) = (case.method.clone(), case.request.clone());
    let pool = [f.leaf.clone()];
    for e in &case.edits {
        match e {
            ProofEdit::NoChain => proof.chain.clear(),
            ProofEdit::Leaf(ms) => {
                if let Some(leaf) = proof.chain.first_mut() {
                    *leaf = apply(&pool, std::mem::take(leaf), ms);
                }
            }
            ProofEdit::OtherLeaf(i) => {
                let other = f.others[at(i, f.others.len())].clone();
                match proof.chain.first_mut() {
                    Some(leaf) => *leaf = other,
                    None => proof.chain.push(other),
                }
            }
            ProofEdit::Intermediate(bytes) => proof.chain.push(bytes.clone()),
            ProofEdit::Shift(d) => {
                proof.timestamp_unix_ms = proof.timestamp_unix_ms.wrapping_add(*d);
            }
            ProofEdit::SetTime(t) => proof.timestamp_unix_ms = *t,
            ProofEdit::Nonce(ms) => {
                proof.nonce = apply(&pool, std::mem::take(&mut proof.nonce), ms)
            }
            ProofEdit::Signature(ms) => {
                proof.signature = apply(&pool, std::mem::take(&mut proof.signature), ms);
            }
            ProofEdit::SetAudience(a) => proof.audience = a.clone(),
            ProofEdit::Method(m) => method = m.clone(),
            ProofEdit::Request(r) => request = r.clone(),
        }
    }
    (proof, method, request)
}

#[test]
fn fuzz_proof_verify_never_panics() {
    let f = proof_fixture();
    fuzz("proof_verify", proof_case(), |case| {
        let (proof, method, request) = build_proof(&f, &case);
        let partition = case.partition.and_then(Partition::new);
        let first = f.verifier.verify(&method, &request, &proof, partition);
        let untouched = case.edits.is_empty() && !matches!(case.audience, Audience::Other(_));
        if untouched {
            // A client's own proof, delivered as it was signed, is accepted exactly once.
            prop_assert!(
                matches!(&first, Ok(Identity::Client { name, .. }) if name == "o"),
                "{:?}",
                first
            );
        }
        if first.is_ok() {
            prop_assert_eq!(
                f.verifier.verify(&method, &request, &proof, partition),
                Err(ProofError::Replay)
            );
        }
        Ok(())
    });
}

// ---- Regressions: crashes the target found, as minimal inputs ----

/// Found by `fuzz_proof_verify_never_panics`: a client with a valid certificate sends
/// `x-dsm-proof: -9223372036854775808.<nonce>.<any signature>`; the freshness check in
/// `ProofVerifier::verify` (`security/proof.rs`) computes `now - timestamp`, which overflows
/// before the signature is checked: a panic in debug builds, a wrapped difference in release.
#[test]
fn regression_proof_time_overflow() {
    let f = proof_fixture();
    let header = format!("-9223372036854775808.{}.AA", "00".repeat(16));
    let proof = pb::ClientProof {
        chain: vec![f.leaf.clone()],
        ..parse_header(&header).unwrap()
    };
    assert_eq!(
        f.verifier
            .verify("/dsm.v1.OrderGateway/GetOrder", b"", &proof, None),
        Err(ProofError::Stale)
    );
}
