//! Structured fuzzing of every decoder that reads bytes from the network or the disk (issue 15,
//! item 13), on stable Rust: `proptest` generators drive the real decoders, one target per
//! decoder, each a `#[test]` named `fuzz_<decoder>_never_panics`.
//!
//! | target | decoder | where the bytes come from |
//! |---|---|---|
//! | `peer_frames` | `PeerRequest::decode`, `PeerResponse::decode` (`cluster::transport`; a stream's end delimits a message, there is no length prefix) | a peer's QUIC stream |
//! | `layout` | `SignedLayout::decode`, `Layout::verify` and what a node does with a verified layout (`owner_of`, `plan`, `next`) | a peer's `LayoutPush`/`HandoffPull`, the stored layout, `layout_file` |
//! | `proof_header` | `proof::parse_header` | a client's `x-dsm-proof` header |
//! | `proof_verify` | `ProofVerifier::verify` | a forwarded `ClientProof` |
//! | `handoff_chunk` | `PartitionData::decode`, the checks of `rebalance::wire::from_wire` (private to `rebalance`, so repeated here), `TransferKey::from_bytes`, `ProofVerifier::import_spent`, `Store::import_partition` | a peer's handoff answer |
//! | `audit_chain` | `chain::verify` (records and checkpoints as JSON), `chain::pruned_range` | an audit directory, as `mesh-ctl audit verify` reads it |
//! | `audit_files` | `log::read_all`, `log::read_checkpoints`, `log::scan`, `AuditLog::open` (recovery) | the node's audit directory |
//! | `crl` | `Trust::install_crls` (PEM, DER, signatures) | `Admin/PushCrl` |
//! | `config` | `Config::load` (TOML, `DSM_*` overrides and the files it names) | `node.toml` and the environment |
//!
//! Inputs are structured, not only random bytes: each target starts from valid encodings (a real
//! signed layout, a real proof, a real audit chain, a real CRL, a real `node.toml`) and mutates
//! them (bit flips, insertions of boundary tokens, deletions, truncation, duplication, splicing
//! of another seed), re-signs what a signature would otherwise stop at the first byte (layouts,
//! CRLs, sealed orders: what a holder of the key could send), edits fields (timestamps, ids,
//! partitions, counts), and also feeds plain arbitrary bytes. Every target asserts the decoder
//! answers `Ok` or `Err` without panicking, and checks a cheap property where there is one (a
//! frame re-encodes to itself, a verified layout re-signs and verifies equal and is safe to use,
//! a parsed proof header round-trips, an untouched proof verifies once, an accepted handoff can
//! be read back, an untouched chain verifies). A failure is shrunk to a minimal input and printed.
//!
//! CI runs each target with 256 cases (`DSM_FUZZ_CASES` unset). A long run, outside CI, sets the
//! case count per target; each target prints its executions and rate:
//!
//! ```text
//! DSM_FUZZ_CASES=2000000 cargo test -p mesh-node --lib fuzz::fuzz_peer_frames -- --nocapture --test-threads=1
//! ```
//!
//! The long run uses the test (debug) profile on purpose: it keeps overflow checks, so an
//! arithmetic overflow on hostile input panics there instead of wrapping silently as in release.
//! SECURITY.md records the runs. Every crash or broken property found is kept at the end of this
//! file as a plain `#[test]` with its minimal input (`regression_*`), and each one was fixed where
//! it failed; an input class a target once skipped is fuzzed again.

use crate::audit::chain::{self, Checkpoint, Record};
use crate::audit::log::{self, AuditLog, CheckpointSigner};
use crate::cluster::layout::{Layout, LayoutError, Member};
use crate::domain::ids::{ContactHandle, OrderId, PARTITIONS, Partition, partition_of};
use crate::security::control_key::{ControlKey, ControlPublicKey};
use crate::security::crypto::{NodeKeys, TransferKey, generate_key_file};
use crate::security::identity::Identity;
use crate::security::pki::{CertificateAuthority, LeafSpec};
use crate::security::proof::{
    MAX_SPENT_PER_PARTITION, ProofError, ProofVerifier, Signer, SpentProofs, parse_header,
};
use crate::security::trust::{Trust, TrustFiles};
use crate::storage::Store;
use crate::storage::handoff::{CustomerExport, PartitionExport};
use base64::Engine as _;
use mesh_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- The runner ----

/// Cases per target: `DSM_FUZZ_CASES`, else 256 (the quick pass CI runs).
fn cases() -> u32 {
    std::env::var("DSM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Nothing is written next to the sources; a failure prints its minimal input instead.
        failure_persistence: None,
        max_shrink_iters: 50_000,
        ..ProptestConfig::default()
    }
}

/// Runs one target: `cases()` inputs from `strategy` through `body`. A panic or a failed property
/// is shrunk to a minimal input and fails the test with it. Prints executions and their rate.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    body: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = config();
    let n = config.cases;
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&strategy, body);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {n} executions in {secs:.1} s ({:.0}/s)",
        f64::from(n) / secs.max(1e-9)
    );
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
}

// ---- Mutations of valid encodings ----

/// Position `i` in a collection of `len` (> 0) elements: generators draw `usize`s, which shrink
/// towards the first element.
fn at(i: impl std::borrow::Borrow<usize>, len: usize) -> usize {
    *i.borrow() % len
}

/// Tokens worth inserting anywhere: numbers at the limits of their types, delimiters of JSON,
/// TOML, PEM and the proof header, protobuf varints and lengths, DER lengths, odd UTF-8.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"-0",
    b"4095",
    b"4096",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1e400",
    b"NaN",
    b"inf",
    b"0x10",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b"[[",
    b",",
    b":",
    b"=",
    b".",
    b"..",
    b"-",
    b"#",
    b"'",
    b"\"\"\"",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    "\u{10FFFF}".as_bytes(),
    "é".as_bytes(),
    b"null",
    b"true",
    b"records ",
    b"records 0-18446744073709551615",
    b"AuditPrune",
    b"-----BEGIN X509 CRL-----\n",
    b"-----END X509 CRL-----\n",
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END",
    b"==",
    b"ms",
    b"18446744073709551615s",
    b"999999999999999999999d",
    b"GiB",
    b"spiffe://",
    b"/node/",
    // protobuf: a 10-byte varint, a u32-sized length, field tags of each wire type
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x12\x00",
    b"\x08\x00",
    b"\x0d\x00\x00\x00\x00",
    b"\x09\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x0b",
    b"\x0c",
    // DER: long-form lengths, an empty INTEGER, an indefinite length
    b"\x30\x84\xff\xff\xff\xff",
    b"\x30\x80",
    b"\x02\x00",
    b"\x02\x01\x00",
    b"\x81\x00",
    b"\x03\x01\x07",
    b"\x17\x0d",
    b"\x18\x0f",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(usize, u8),
    /// Insert random bytes.
    Insert(usize, Vec<u8>),
    /// Insert a token from [`TOKENS`].
    Token(usize, usize),
    /// Overwrite bytes with a token.
    Overwrite(usize, usize),
    /// Remove up to `n + 1` bytes.
    Delete(usize, u8),
    /// Cut the input here.
    Truncate(usize),
    /// Copy a run of the input to another place (repeats fields, lines, PEM blocks).
    Duplicate(usize, usize, u8),
    /// Insert a run of another seed.
    Splice(usize, usize, usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        2 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::Overwrite(i, t)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), any::<u8>())
            .prop_map(|(a, b, n)| Mutation::Duplicate(a, b, n)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>(), any::<u8>())
            .prop_map(|(s, a, b, n)| Mutation::Splice(s, a, b, n)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..6)
}

/// `data` with `ms` applied in order; `pool` feeds splices.
fn apply(pool: &[Vec<u8>], mut data: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = data.len();
        match m {
            Mutation::Flip(i, mask) => {
                if len > 0 {
                    data[at(i, len)] ^= mask;
                }
            }
            Mutation::Insert(i, bytes) => {
                let pos = at(i, len + 1);
                data.splice(pos..pos, bytes.iter().copied());
            }
            Mutation::Token(i, t) => {
                let pos = at(i, len + 1);
                data.splice(pos..pos, TOKENS[at(t, TOKENS.len())].iter().copied());
            }
            Mutation::Overwrite(i, t) => {
                let token = TOKENS[at(t, TOKENS.len())];
                let pos = at(i, len + 1);
                let end = (pos + token.len()).min(len);
                data.splice(pos..end, token.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if len > 0 {
                    let pos = at(i, len);
                    data.drain(pos..(pos + usize::from(*n) + 1).min(len));
                }
            }
            Mutation::Truncate(i) => data.truncate(at(i, len + 1)),
            Mutation::Duplicate(from, to, n) => {
                if len > 0 {
                    let a = at(from, len);
                    let run = data[a..(a + usize::from(*n) + 1).min(len)].to_vec();
                    let pos = at(to, len + 1);
                    data.splice(pos..pos, run);
                }
            }
            Mutation::Splice(s, from, to, n) => {
                if let Some(other) = (!pool.is_empty()).then(|| &pool[at(s, pool.len())])
                    && !other.is_empty()
                {
                    let a = at(from, other.len());
                    let run = &other[a..(a + 4 * usize::from(*n) + 1).min(other.len())];
                    let pos = at(to, len + 1);
                    data.splice(pos..pos, run.iter().copied());
                }
            }
        }
    }
    data
}

/// Inputs built from `seeds`: a seed as it is, a mutated seed, or arbitrary bytes.
fn bytes_from(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let seeds = Arc::new(seeds);
    let (s1, s2) = (seeds.clone(), seeds);
    prop_oneof![
        1 => any::<usize>().prop_map(move |i| s1[at(i, s1.len())].clone()),
        8 => (any::<usize>(), mutations())
            .prop_map(move |(i, ms)| apply(&s2, s2[at(i, s2.len())].clone(), &ms)),
        2 => vec(any::<u8>(), 0..300),
    ]
    .boxed()
}

/// A short name-like string: valid ids, near misses and arbitrary text.
fn name_like() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,10}",
        1 => "[A-Za-z0-9 ./_-]{0,70}",
        1 => any::<String>(),
    ]
    .boxed()
}

// ---- Shared fixtures ----

const TD: &str = "mesh.test";

fn member(i: usize) -> Member {
    Member {
        node_id: format!("n{i:02}"),
        peer_addr: format!("127.0.0.1:{}", 7000 + i),
        gateway_addr: format!("127.0.0.1:{}", 8000 + i),
    }
}

/// Layouts of 1, 2, 3 and 5 members, and the next version of the 3-member one (4 members).
fn layouts() -> Vec<Layout> {
    let mut out: Vec<Layout> = [1, 2, 3, 5]
        .iter()
        .map(|&n| Layout::initial((0..n).map(member).collect()).unwrap())
        .collect();
    let next = out[2].next((0..4).map(member).collect()).unwrap();
    out.push(next);
    out
}

/// The signed bytes of a layout as the signer would produce them over `inner`.
fn resign(inner: Vec<u8>, key: &ControlKey) -> pb::SignedLayout {
    let signature = key.sign(&[b"dsm-layout-v1".as_slice(), &inner].concat());
    pb::SignedLayout {
        layout: inner,
        signature,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

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

fn node(id: &str) -> Identity {
    Identity::Node {
        trust_domain: TD.into(),
        node_id: id.into(),
    }
}

// ---- Peer frames ----

fn peer_frame_seeds(key: &ControlKey) -> Vec<Vec<u8>> {
    let signed = layouts()[2].sign(key);
    let order = OrderId::mint(Partition::new(7).unwrap()).to_string();
    let proof = pb::ClientProof {
        chain: vec![
            vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01],
            vec![0x30, 0x00],
        ],
        timestamp_unix_ms: 1_763_900_000_000,
        nonce: vec![7; 16],
        signature: vec![0x30, 0x44, 0x02, 0x20, 1, 2, 3],
        audience: "n01".into(),
    };
    let call = pb::ForwardedCall {
        method: "/dsm.v1.OrderGateway/GetOrder".into(),
        request: pb::GetOrderRequest {
            order_id: order,
            purpose: "support".into(),
            fields: vec!["customer.name".into()],
        }
        .encode_to_vec(),
        proof: Some(proof),
    };
    use pb::peer_request::Body;
    use pb::peer_response::Result as R;
    let request = |body| {
        pb::PeerRequest {
            deadline_unix_ms: 1_763_900_000_000,
            body: Some(body),
        }
        .encode_to_vec()
    };
    let response = |result| {
        pb::PeerResponse {
            result: Some(result),
        }
        .encode_to_vec()
    };
    vec![
        request(Body::Call(call)),
        request(Body::Ping(pb::Ping {})),
        request(Body::Charge(pb::RevealCharge {
            principal: "spiffe://mesh.test/client/oms/desk-1".into(),
        })),
        request(Body::Pull(pb::HandoffPull {
            partition: 7,
            layout: Some(signed.clone()),
        })),
        request(Body::Query(pb::HandoffQuery {
            partitions: vec![0, 7, 4095],
        })),
        request(Body::Layout(pb::LayoutPush {
            layout: Some(signed),
        })),
        response(R::Response(vec![0x0a, 0x03, b'a', b'b', b'c'])),
        response(R::Status(pb::PeerStatus {
            code: 14,
            message: "moving".into(),
            moved: true,
        })),
        response(R::Pong(pb::Ping {})),
        response(R::Allowance(pb::RevealAllowance {
            granted: true,
            remaining: 19,
            retry_after_ms: 0,
            limit: 20,
            window_ms: 3_600_000,
        })),
        response(R::Partition(pb::PartitionData {
            partition: 7,
            customers: vec![pb::TransferredCustomer {
                data_key: vec![9; 32],
                orders: vec![pb::SealedOrder {
                    storage_key: vec![1; 40],
                    sealed: vec![2; 60],
                }],
            }],
            spent_proofs: vec![pb::SpentProof {
                timestamp_unix_ms: 1_763_900_000_000,
                nonce: vec![3; 16],
            }],
            proofs_not_before_unix_ms: 1_763_899_000_000,
        })),
        response(R::Holdings(pb::HandoffAnswer {
            holdings: vec![pb::PartitionHolding {
                partition: 7,
                holding: pb::Holding::Pending as i32,
                pending_from: "n02".into(),
            }],
        })),
    ]
}

#[test]
fn fuzz_peer_frames_never_panics() {
    let (key, _) = ControlKey::generate();
    let public = key.public();
    fuzz("peer_frames", bytes_from(peer_frame_seeds(&key)), |bytes| {
        if let Ok(req) = pb::PeerRequest::decode(bytes.as_slice()) {
            let again = pb::PeerRequest::decode(req.encode_to_vec().as_slice()).ok();
            prop_assert_eq!(again.as_ref(), Some(&req));
            // What the receiver does next with the frames that carry a layout.
            use pb::peer_request::Body;
            let signed = match &req.body {
                Some(Body::Pull(p)) => p.layout.as_ref(),
                Some(Body::Layout(p)) => p.layout.as_ref(),
                _ => None,
            };
            if let Some(signed) = signed {
                let _ = Layout::verify(signed, &public);
            }
        }
        if let Ok(resp) = pb::PeerResponse::decode(bytes.as_slice()) {
            let again = pb::PeerResponse::decode(resp.encode_to_vec().as_slice()).ok();
            prop_assert_eq!(again.as_ref(), Some(&resp));
            if let Some(pb::peer_response::Result::Partition(data)) = &resp.result {
                for c in &data.customers {
                    let _ = TransferKey::from_bytes(&c.data_key);
                }
            }
        }
        Ok(())
    });
}

// ---- Layouts ----

#[derive(Debug, Clone)]
enum LayoutEdit {
    Format(u32),
    Version(u64),
    Partitions(u32),
    Replication(u32),
    Rename(usize, String),
    Drop(usize),
    Add(String),
    Swap(usize, usize),
    Assign(usize, u32),
    TruncateAssignment(usize),
    PushAssignment(u32),
}

fn layout_edit() -> impl Strategy<Value = LayoutEdit> {
    let small = prop_oneof![3 => 0..8u32, 1 => any::<u32>()];
    prop_oneof![
        1 => (0..3u32).prop_map(LayoutEdit::Format),
        1 => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0..5u64].prop_map(LayoutEdit::Version),
        1 => prop_oneof![Just(4096u32), Just(4095), Just(0), any::<u32>()].prop_map(LayoutEdit::Partitions),
        1 => prop_oneof![0..3u32, any::<u32>()].prop_map(LayoutEdit::Replication),
        1 => (any::<usize>(), name_like()).prop_map(|(i, n)| LayoutEdit::Rename(i, n)),
        1 => any::<usize>().prop_map(LayoutEdit::Drop),
        1 => name_like().prop_map(LayoutEdit::Add),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LayoutEdit::Swap(a, b)),
        3 => (any::<usize>(), small.clone()).prop_map(|(i, m)| LayoutEdit::Assign(i, m)),
        1 => any::<usize>().prop_map(LayoutEdit::TruncateAssignment),
        1 => small.prop_map(LayoutEdit::PushAssignment),
    ]
}

#[derive(Debug, Clone)]
enum LayoutInput {
    /// A stored or received `SignedLayout`, mutated: stops at the signature unless untouched.
    Signed(Vec<u8>),
    /// The layout bytes mutated, then signed: what the control key's holder could send.
    Inner(Vec<u8>),
    /// A real layout with its fields edited, then signed.
    Fields(usize, Vec<LayoutEdit>),
}

fn edit_layout(mut l: pb::Layout, edits: &[LayoutEdit]) -> pb::Layout {
    for e in edits {
        let (n, a) = (l.members.len(), l.assignment.len());
        match e {
            LayoutEdit::Format(f) => l.format = *f,
            LayoutEdit::Version(v) => l.version = *v,
            LayoutEdit::Partitions(p) => l.partitions = *p,
            LayoutEdit::Replication(r) => l.replication = *r,
            LayoutEdit::Rename(i, name) => {
                if n > 0 {
                    l.members[at(i, n)].node_id = name.clone();
                }
            }
            LayoutEdit::Drop(i) => {
                if n > 0 {
                    l.members.remove(at(i, n));
                }
            }
            LayoutEdit::Add(name) => l.members.push(pb::LayoutMember {
                node_id: name.clone(),
                peer_addr: "127.0.0.1:7999".into(),
                gateway_addr: String::new(),
            }),
            LayoutEdit::Swap(i, j) => {
                if n > 0 {
                    l.members.swap(at(i, n), at(j, n));
                }
            }
            LayoutEdit::Assign(i, m) => {
                if a > 0 {
                    l.assignment[at(i, a)] = *m;
                }
            }
            LayoutEdit::TruncateAssignment(i) => l.assignment.truncate(at(i, a + 1)),
            LayoutEdit::PushAssignment(m) => l.assignment.push(*m),
        }
    }
    l
}

#[test]
fn fuzz_layout_never_panics() {
    let (key, _) = ControlKey::generate();
    let public = key.public();
    let bases = layouts();
    let signed: Vec<pb::SignedLayout> = bases.iter().map(|l| l.sign(&key)).collect();
    let inner: Vec<Vec<u8>> = signed.iter().map(|s| s.layout.clone()).collect();
    let outer: Vec<Vec<u8>> = signed.iter().map(|s| s.encode_to_vec()).collect();
    let inner_protos = Arc::new(
        inner
            .iter()
            .map(|b| pb::Layout::decode(b.as_slice()).unwrap())
            .collect::<Vec<_>>(),
    );
    let strategy = prop_oneof![
        2 => bytes_from(outer).prop_map(LayoutInput::Signed),
        4 => bytes_from(inner).prop_map(LayoutInput::Inner),
        4 => (any::<usize>(), vec(layout_edit(), 1..6))
            .prop_map(|(i, e)| LayoutInput::Fields(i, e)),
    ];
    fuzz("layout", strategy, |input| {
        let signed = match input {
            LayoutInput::Signed(bytes) => match pb::SignedLayout::decode(bytes.as_slice()) {
                Ok(s) => s,
                Err(_) => return Ok(()),
            },
            LayoutInput::Inner(bytes) => resign(bytes, &key),
            LayoutInput::Fields(i, edits) => resign(
                edit_layout(inner_protos[at(i, inner_protos.len())].clone(), &edits)
                    .encode_to_vec(),
                &key,
            ),
        };
        let Ok(layout) = Layout::verify(&signed, &public) else {
            return Ok(());
        };
        // A verified layout is checked, re-signs and verifies equal, and is safe to use.
        prop_assert_eq!(layout.check(), Ok(()));
        prop_assert_eq!(
            Layout::verify(&layout.sign(&key), &public),
            Ok(layout.clone())
        );
        let loads = layout.loads();
        prop_assert_eq!(loads.values().sum::<usize>(), usize::from(PARTITIONS));
        for m in layout.members.iter().take(3) {
            let _ = layout.partitions_of(&m.node_id);
        }
        for base in &bases {
            let _ = layout.moved_from(base);
            let _ = layout.may_replace(Some(base));
            let _ =
                crate::cluster::rebalance::plan(&base.members[0].node_id, Some(base), &layout, 0);
        }
        let _ = crate::cluster::rebalance::plan(&layout.members[0].node_id, None, &layout, 0);
        // As the current layout: what the next one is checked against, and computed from.
        for base in &bases {
            let _ = base.may_replace(Some(&layout));
            let _ =
                crate::cluster::rebalance::plan(&base.members[0].node_id, Some(&layout), base, 0);
        }
        let _ = layout.next(bases[3].members.clone());
        Ok(())
    });
}

// ---- Proofs ----

fn header_seeds(signer: &Signer) -> Vec<Vec<u8>> {
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
struct ProofFixture {
    verifier: ProofVerifier,
    signer: Signer,
    leaf: Vec<u8>,
    /// A client of another CA, a node of this CA, this CA's certificate.
    others: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
}

fn proof_fixture() -> ProofFixture {
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

// ---- Handoff chunks ----

/// The partition the handoff target asks for, and customers of it.
fn handoff_partition() -> (Partition, Vec<String>) {
    let p = partition_of("fuzz-0");
    let ids = (0..)
        .map(|i| format!("fuzz-{i}"))
        .filter(|c| partition_of(c) == p)
        .take(3)
        .collect();
    (p, ids)
}

fn valid_order(p: Partition, customer: &str, i: i64) -> pb::Order {
    pb::Order {
        order_id: OrderId::mint(p).to_string(),
        customer_id: customer.to_owned(),
        external_ref: format!("ext-{i}"),
        customer: Some(pb::Customer {
            contact_handle: if i % 2 == 0 {
                ContactHandle::mint(p).to_string()
            } else {
                String::new()
            },
            ..crate::domain::fixtures::buyer()
        }),
        items: crate::domain::fixtures::basket(),
        total_paise: 99_800,
        ..pb::Order::default()
    }
}

#[derive(Debug, Clone)]
struct OrderCase {
    /// Which valid order (an encoded `Order`) to start from, and its mutations.
    seed: usize,
    mutations: Vec<Mutation>,
    /// Sealed under the customer's key (else raw bytes, which do not open).
    sealed: bool,
    storage_key: Vec<u8>,
}

#[derive(Debug, Clone)]
struct CustomerCase {
    /// Which of the partition's customers the orders name.
    customer: usize,
    key: Vec<u8>,
    orders: Vec<OrderCase>,
}

#[derive(Debug, Clone)]
enum HandoffInput {
    /// An encoded `PartitionData`, mutated.
    Wire(Vec<u8>),
    /// A `PartitionData` built from parts (orders sealed under the keys it carries), then encoded.
    Built {
        partition: Option<u32>,
        customers: Vec<CustomerCase>,
        spent: Vec<(i64, Vec<u8>)>,
        not_before: i64,
    },
}

fn handoff_input(wire_seeds: Vec<Vec<u8>>) -> impl Strategy<Value = HandoffInput> {
    let order = (
        any::<usize>(),
        prop_oneof![Just(Vec::new()), mutations()],
        prop::bool::weighted(0.9),
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(seed, mutations, sealed, storage_key)| OrderCase {
            seed,
            mutations,
            sealed,
            storage_key,
        });
    let key = prop_oneof![8 => vec(any::<u8>(), 32), 1 => vec(any::<u8>(), 0..40)];
    let customer =
        (any::<usize>(), key, vec(order, 0..4)).prop_map(|(customer, key, orders)| CustomerCase {
            customer,
            key,
            orders,
        });
    let time = prop_oneof![
        Just(crate::domain::clock::now_ms()),
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX)
    ];
    let spent = vec((time.clone(), vec(any::<u8>(), 0..20)), 0..4);
    prop_oneof![
        1 => bytes_from(wire_seeds).prop_map(HandoffInput::Wire),
        2 => (
            prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
            vec(customer, 0..4),
            spent,
            time,
        )
            .prop_map(|(partition, customers, spent, not_before)| HandoffInput::Built {
                partition,
                customers,
                spent,
                not_before,
            }),
    ]
}

struct HandoffFixture {
    rt: tokio::runtime::Runtime,
    keys: Arc<NodeKeys>,
    /// The store and its directory. Replaced by a fresh one every [`STORE_ROUNDS`] cases: every
    /// accepted import deletes the partition's previous records, and a memtable that never
    /// flushes keeps each deleted version, so prefix scans slow down as a long run goes on.
    store: std::cell::RefCell<(Store, tempfile::TempDir)>,
    rounds: std::cell::Cell<u32>,
    verifier: ProofVerifier,
    p: Partition,
    customers: Vec<String>,
    /// Encoded valid orders, per customer.
    orders: Vec<Vec<Vec<u8>>>,
}

const STORE_ROUNDS: u32 = 2_000;

fn open_store(rt: &tokio::runtime::Runtime, keys: &Arc<NodeKeys>) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let _in = rt.enter();
    (Store::open(dir.path(), keys.clone(), None).unwrap(), dir)
}

fn handoff_fixture() -> HandoffFixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys = Arc::new(NodeKeys::parse(&generate_key_file()).unwrap());
    let store = std::cell::RefCell::new(open_store(&rt, &keys));
    let (p, customers) = handoff_partition();
    let orders = customers
        .iter()
        .map(|c| {
            (0..3)
                .map(|i| valid_order(p, c, i).encode_to_vec())
                .collect()
        })
        .collect();
    let pf = proof_fixture();
    HandoffFixture {
        rt,
        keys,
        store,
        rounds: std::cell::Cell::new(0),
        verifier: pf.verifier,
        p,
        customers,
        orders,
    }
}

fn build_partition_data(
    f: &HandoffFixture,
    partition: Option<u32>,
    customers: &[CustomerCase],
    spent: &[(i64, Vec<u8>)],
    not_before: i64,
) -> pb::PartitionData {
    let pool: Vec<Vec<u8>> = f.orders.iter().flatten().cloned().collect();
    pb::PartitionData {
        partition: partition.unwrap_or(u32::from(f.p.get())),
        customers: customers
            .iter()
            .map(|c| {
                let ci = at(c.customer, f.customers.len());
                let dek = TransferKey::from_bytes(&c.key).map(|k| k.data_key());
                pb::TransferredCustomer {
                    data_key: c.key.clone(),
                    orders: c
                        .orders
                        .iter()
                        .map(|o| {
                            let seeds = &f.orders[ci];
                            let plain =
                                apply(&pool, seeds[at(o.seed, seeds.len())].clone(), &o.mutations);
                            let sealed = match (&dek, o.sealed) {
                                (Some(dek), true) => dek.seal(&plain, &o.storage_key),
                                _ => plain,
                            };
                            pb::SealedOrder {
                                storage_key: o.storage_key.clone(),
                                sealed,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
        spent_proofs: spent
            .iter()
            .map(|(timestamp_unix_ms, nonce)| pb::SpentProof {
                timestamp_unix_ms: *timestamp_unix_ms,
                nonce: nonce.clone(),
            })
            .collect(),
        proofs_not_before_unix_ms: not_before,
    }
}

/// What the new owner does with a handoff answer for partition `p`: the checks of
/// `rebalance::wire::from_wire` (private to `rebalance`, so repeated here step by step), then the
/// spent proofs into the verifier and the export into the store.
fn receive_handoff(f: &HandoffFixture, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(data) = pb::PartitionData::decode(bytes) else {
        return Ok(());
    };
    let again = pb::PartitionData::decode(data.encode_to_vec().as_slice()).ok();
    prop_assert_eq!(again.as_ref(), Some(&data));
    if data.partition != u32::from(f.p.get()) || data.spent_proofs.len() > MAX_SPENT_PER_PARTITION {
        return Ok(());
    }
    let mut customers = Vec::new();
    for c in &data.customers {
        let Some(data_key) = TransferKey::from_bytes(&c.data_key) else {
            return Ok(());
        };
        customers.push(CustomerExport {
            data_key,
            orders: c
                .orders
                .iter()
                .map(|o| (o.storage_key.clone(), o.sealed.clone()))
                .collect(),
        });
    }
    f.verifier.import_spent(
        f.p,
        SpentProofs {
            nonces: data
                .spent_proofs
                .iter()
                .map(|s| (s.timestamp_unix_ms, s.nonce.clone()))
                .collect(),
            not_before_ms: data.proofs_not_before_unix_ms,
        },
    );
    let _ = f.verifier.export_spent(f.p);
    let export = PartitionExport {
        partition: f.p,
        customers,
    };
    f.rounds.set(f.rounds.get() + 1);
    if f.rounds.get().is_multiple_of(STORE_ROUNDS) {
        let fresh = open_store(&f.rt, &f.keys);
        let _in = f.rt.enter();
        drop(f.store.replace(fresh));
    }
    let store = f.store.borrow();
    let store = &store.0;
    let imported = f.rt.block_on(store.import_partition(&export, false));
    if imported.is_ok() {
        // An accepted import is readable: every order it carried is found and opens.
        for c in &export.customers {
            let dek = c.data_key.data_key();
            for (storage_key, sealed) in &c.orders {
                let plain = dek.open(sealed, storage_key).map_err(|e| {
                    TestCaseError::fail(format!("accepted an order that does not open: {e}"))
                })?;
                let order = pb::Order::decode(plain.as_slice()).map_err(|e| {
                    TestCaseError::fail(format!("accepted an unreadable order: {e}"))
                })?;
                let id: OrderId = order
                    .order_id
                    .parse()
                    .map_err(|e| TestCaseError::fail(format!("accepted a bad order id: {e}")))?;
                let got = store.get_order(&id);
                prop_assert!(
                    matches!(got, Ok(Some(_))),
                    "order {} was imported but reads back as {:?}",
                    id,
                    got.map(|o| o.map(|o| o.order_id))
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_handoff_chunk_never_panics() {
    let f = handoff_fixture();
    let key = [5u8; 32];
    let seeds: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let customers: Vec<CustomerCase> = (0..n)
                .map(|i| CustomerCase {
                    customer: i,
                    key: key.to_vec(),
                    orders: (0..2)
                        .map(|j| OrderCase {
                            seed: j,
                            mutations: Vec::new(),
                            sealed: true,
                            storage_key: vec![j as u8; 40],
                        })
                        .collect(),
                })
                .collect();
            let spent = vec![(crate::domain::clock::now_ms(), vec![1; 16])];
            build_partition_data(&f, None, &customers, &spent, 0).encode_to_vec()
        })
        .collect();
    fuzz("handoff_chunk", handoff_input(seeds), |input| {
        let bytes = match input {
            HandoffInput::Wire(bytes) => bytes,
            HandoffInput::Built {
                partition,
                customers,
                spent,
                not_before,
            } => {
                build_partition_data(&f, partition, &customers, &spent, not_before).encode_to_vec()
            }
        };
        receive_handoff(&f, &bytes)
    });
}

// ---- Audit lines ----

const AUDIT_NODE: &str = "n1";

/// A log as files hold it: record lines, checkpoint lines.
type LogLines = (Vec<Vec<u8>>, Vec<Vec<u8>>);

struct AuditFixture {
    key_pem: Vec<u8>,
    cert_der: Vec<u8>,
    /// Valid logs: (lines, checkpoints as JSON lines).
    logs: Vec<LogLines>,
    _dir: tempfile::TempDir,
}

fn audit_record(seq: u64, prev: String, action: &str, purpose: &str) -> Record {
    Record {
        v: chain::FORMAT,
        seq,
        ts: 1_763_900_000_000 + seq as i64,
        node: AUDIT_NODE.into(),
        principal: format!("spiffe://{TD}/client/oms/o{seq}"),
        role: "oms".into(),
        action: action.into(),
        customer: "ab".repeat(32),
        order: String::new(),
        purpose: purpose.into(),
        fields: vec!["customer.name".into()],
        decision: "allow".into(),
        reason: String::new(),
        note: String::new(),
        prev,
    }
}

fn checkpoint(signer: &Signer, cert_der: &[u8], seq: u64, head: &str) -> Checkpoint {
    let b64 = base64::engine::general_purpose::STANDARD;
    let ts = 1_763_900_000_000;
    Checkpoint {
        v: chain::FORMAT,
        node: AUDIT_NODE.into(),
        seq,
        head: head.into(),
        ts,
        sig: b64.encode(signer.sign(&chain::checkpoint_payload(AUDIT_NODE, seq, head, ts))),
        cert: b64.encode(cert_der),
    }
}

/// A chain of records `first..=last` starting after `prev`, with checkpoints at `at`.
fn audit_log(
    signer: &Signer,
    cert_der: &[u8],
    first: u64,
    last: u64,
    prev: &str,
    prune: Option<u64>,
    at: &[u64],
) -> LogLines {
    let (mut lines, mut cps, mut head) = (Vec::new(), Vec::new(), prev.to_owned());
    if first > 1 {
        cps.push(serde_json::to_vec(&checkpoint(signer, cert_der, first - 1, prev)).unwrap());
    }
    for seq in first..=last {
        let rec = if Some(seq) == prune {
            audit_record(
                seq,
                head.clone(),
                chain::PRUNE_ACTION,
                &format!("segments 1-1; records 1-{}", first - 1),
            )
        } else {
            audit_record(seq, head.clone(), "GetOrder", "")
        };
        let line = serde_json::to_vec(&rec).unwrap();
        head = chain::hash_line(&line);
        lines.push(line);
        if at.contains(&seq) {
            cps.push(serde_json::to_vec(&checkpoint(signer, cert_der, seq, &head)).unwrap());
        }
    }
    (lines, cps)
}

fn audit_fixture() -> AuditFixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let (cert, key) = ca
        .issue(&LeafSpec::new(node(AUDIT_NODE), Duration::from_secs(3600)))
        .unwrap()
        .write(dir.path(), AUDIT_NODE)
        .unwrap();
    let key_pem = std::fs::read(&key).unwrap();
    let cert_der = crate::security::tls::load_certs(&cert).unwrap()[0].to_vec();
    let signer = Signer::from_pem(&key_pem).unwrap();
    let anchor = chain::hash_line(b"a pruned record");
    let logs = vec![
        audit_log(&signer, &cert_der, 1, 6, chain::ZERO_HASH, None, &[3, 6]),
        audit_log(&signer, &cert_der, 5, 9, &anchor, Some(8), &[9]),
        audit_log(&signer, &cert_der, 1, 1, chain::ZERO_HASH, None, &[1]),
    ];
    AuditFixture {
        key_pem,
        cert_der,
        logs,
        _dir: dir,
    }
}

/// The auditor's check of a checkpoint signature (as `mesh-ctl audit verify` does it, without
/// the chain to the CA): the embedded certificate's key over the payload.
fn checkpoint_signed(cp: &Checkpoint) -> bool {
    use x509_parser::prelude::*;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(der), Ok(sig)) = (b64.decode(&cp.cert), b64.decode(&cp.sig)) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.to_vec(),
    )
    .verify(
        &chain::checkpoint_payload(&cp.node, cp.seq, &cp.head, cp.ts),
        &sig,
    )
    .is_ok()
}

#[derive(Debug, Clone)]
enum LineEdit {
    Mutate(usize, Vec<Mutation>),
    Delete(usize),
    Duplicate(usize, usize),
    Swap(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    /// A field of a record or checkpoint set, the line re-serialised (it stays valid JSON).
    Field(usize, FieldEdit),
}

#[derive(Debug, Clone)]
enum FieldEdit {
    Seq(u64),
    Node(String),
    /// The record becomes retention's `AuditPrune` naming records `a-b`.
    Prune(u64, u64),
    /// `prev` (a checkpoint's `head`) becomes the hash of another line, or of nothing.
    Link(Option<usize>),
    Time(i64),
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    let seq = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0..12u64,
        any::<u64>()
    ];
    prop_oneof![
        3 => seq.clone().prop_map(FieldEdit::Seq),
        1 => prop_oneof![Just(AUDIT_NODE.to_owned()), Just("n2".to_owned()), name_like()]
            .prop_map(FieldEdit::Node),
        1 => (seq.clone(), seq).prop_map(|(a, b)| FieldEdit::Prune(a, b)),
        2 => prop::option::of(any::<usize>()).prop_map(FieldEdit::Link),
        1 => any::<i64>().prop_map(FieldEdit::Time),
    ]
}

/// `line` with `edit` applied to its record or checkpoint fields; unchanged if it is neither.
fn edit_fields(line: &[u8], edit: &FieldEdit, link: &str) -> Vec<u8> {
    if let Ok(mut r) = serde_json::from_slice::<Record>(line) {
        match edit {
            FieldEdit::Seq(n) => r.seq = *n,
            FieldEdit::Node(n) => r.node = n.clone(),
            FieldEdit::Prune(a, b) => {
                r.action = chain::PRUNE_ACTION.into();
                r.purpose = format!("segments 1-1; records {a}-{b}");
            }
            FieldEdit::Link(_) => r.prev = link.to_owned(),
            FieldEdit::Time(t) => r.ts = *t,
        }
        return serde_json::to_vec(&r).unwrap();
    }
    if let Ok(mut c) = serde_json::from_slice::<Checkpoint>(line) {
        match edit {
            FieldEdit::Seq(n) | FieldEdit::Prune(_, n) => c.seq = *n,
            FieldEdit::Node(n) => c.node = n.clone(),
            FieldEdit::Link(_) => c.head = link.to_owned(),
            FieldEdit::Time(t) => c.ts = *t,
        }
        return serde_json::to_vec(&c).unwrap();
    }
    line.to_vec()
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        6 => (any::<usize>(), mutations()).prop_map(|(i, m)| LineEdit::Mutate(i, m)),
        1 => any::<usize>().prop_map(LineEdit::Delete),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Duplicate(a, b)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        1 => (any::<usize>(), vec(any::<u8>(), 0..40)).prop_map(|(i, b)| LineEdit::Insert(i, b)),
        1 => any::<usize>().prop_map(LineEdit::Truncate),
        4 => (any::<usize>(), field_edit()).prop_map(|(i, e)| LineEdit::Field(i, e)),
    ]
}

fn edit_lines(pool: &[Vec<u8>], mut lines: Vec<Vec<u8>>, edits: &[LineEdit]) -> Vec<Vec<u8>> {
    for e in edits {
        let n = lines.len();
        match e {
            LineEdit::Mutate(i, ms) => {
                if n > 0 {
                    let k = at(i, n);
                    lines[k] = apply(pool, std::mem::take(&mut lines[k]), ms);
                }
            }
            LineEdit::Delete(i) => {
                if n > 0 {
                    lines.remove(at(i, n));
                }
            }
            LineEdit::Duplicate(a, b) => {
                if n > 0 {
                    let line = lines[at(a, n)].clone();
                    lines.insert(at(b, n + 1), line);
                }
            }
            LineEdit::Swap(a, b) => {
                if n > 0 {
                    lines.swap(at(a, n), at(b, n));
                }
            }
            LineEdit::Insert(i, bytes) => lines.insert(at(i, n + 1), bytes.clone()),
            LineEdit::Truncate(i) => lines.truncate(at(i, n + 1)),
            LineEdit::Field(i, edit) => {
                if n > 0 {
                    let link = match edit {
                        FieldEdit::Link(Some(j)) => chain::hash_line(&pool[at(j, pool.len())]),
                        _ => chain::ZERO_HASH.to_owned(),
                    };
                    let k = at(i, n);
                    lines[k] = edit_fields(&lines[k], edit, &link);
                }
            }
        }
    }
    lines
}

#[derive(Debug, Clone)]
struct AuditCase {
    log: usize,
    lines: Vec<LineEdit>,
    checkpoints: Vec<LineEdit>,
    /// The node the verifier expects: none, the log's, another.
    expected: u8,
    /// How checkpoint signatures are judged: really, all genuine, none genuine.
    signatures: u8,
    /// A retention purpose text, for `pruned_range`.
    purpose: Vec<u8>,
}

fn audit_case() -> impl Strategy<Value = AuditCase> {
    let purposes = bytes_from(vec![
        b"segments 1-3; records 1-42".to_vec(),
        b"records 0-18446744073709551615".to_vec(),
        "records 7-9 é".as_bytes().to_vec(),
    ]);
    (
        any::<usize>(),
        prop_oneof![1 => Just(Vec::new()), 6 => vec(line_edit(), 1..4)],
        prop_oneof![2 => Just(Vec::new()), 1 => vec(line_edit(), 1..3)],
        0..3u8,
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        purposes,
    )
        .prop_map(
            |(log, lines, checkpoints, expected, signatures, purpose)| AuditCase {
                log,
                lines,
                checkpoints,
                expected,
                signatures,
                purpose,
            },
        )
}

/// A case's log: its record lines and checkpoint lines, edited.
fn audit_case_log(f: &AuditFixture, case: &AuditCase) -> LogLines {
    let (lines, cps) = &f.logs[at(case.log, f.logs.len())];
    let pool: Vec<Vec<u8>> = lines.iter().chain(cps).cloned().collect();
    (
        edit_lines(&pool, lines.clone(), &case.lines),
        edit_lines(&pool, cps.clone(), &case.checkpoints),
    )
}

#[test]
fn fuzz_audit_chain_never_panics() {
    let f = audit_fixture();
    fuzz("audit_chain", audit_case(), |case| {
        let (lines, cp_lines) = audit_case_log(&f, &case);
        // A checkpoint line that does not parse stops `read_checkpoints`; the rest are verified.
        let checkpoints: Vec<Checkpoint> = cp_lines
            .iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let expected = [None, Some(AUDIT_NODE), Some("n2")][usize::from(case.expected)];
        let sigs: fn(&Checkpoint) -> bool = match case.signatures {
            0 => checkpoint_signed,
            1 => |_| true,
            _ => |_| false,
        };
        let verified = chain::verify(&refs, &checkpoints, expected, &sigs);
        if case.lines.is_empty()
            && case.checkpoints.is_empty()
            && case.expected < 2
            && case.signatures < 2
        {
            prop_assert!(verified.is_ok(), "an untouched log fails: {:?}", verified);
        }
        for l in &lines {
            if let Ok(r) = serde_json::from_slice::<Record>(l) {
                let _ = chain::pruned_range(&r.purpose);
            }
        }
        let _ = chain::pruned_range(&String::from_utf8_lossy(&case.purpose));
        Ok(())
    });
}

/// Writes a case's log as files, torn tail and all.
fn write_audit_dir(dir: &Path, lines: &[Vec<u8>], cps: &[Vec<u8>], torn: &[u8], split: usize) {
    std::fs::create_dir_all(dir).unwrap();
    // Two segments when there are lines to split.
    let pos = at(split, lines.len() + 1);
    let (a, b) = lines.split_at(pos);
    for (n, part) in [(1, a), (2, b)] {
        if part.is_empty() && n == 2 {
            continue;
        }
        let mut bytes = part.join(&b'\n');
        if !part.is_empty() {
            bytes.push(b'\n');
        }
        if n == 2 || b.is_empty() {
            bytes.extend_from_slice(torn);
        }
        std::fs::write(dir.join(format!("segment-{n:08}.jsonl")), bytes).unwrap();
    }
    let mut bytes = cps.join(&b'\n');
    if !cps.is_empty() {
        bytes.push(b'\n');
    }
    std::fs::write(dir.join("checkpoints.jsonl"), bytes).unwrap();
}

#[test]
fn fuzz_audit_files_never_panics() {
    let f = audit_fixture();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let strategy = (
        audit_case(),
        prop_oneof![Just(Vec::new()), vec(any::<u8>(), 1..30)],
        any::<usize>(),
    );
    fuzz("audit_files", strategy, |(case, torn, split)| {
        let (lines, cps) = audit_case_log(&f, &case);
        let dir = root.path().join("audit");
        let _ = std::fs::remove_dir_all(&dir);
        write_audit_dir(&dir, &lines, &cps, &torn, split);
        // What an auditor reads, then what a node does with the directory when it starts.
        let _ = log::read_all(&dir);
        let _ = log::read_checkpoints(&dir);
        let _ = log::scan(&dir, |_| true);
        let signer = CheckpointSigner {
            signer: Signer::from_pem(&f.key_pem).unwrap(),
            cert_der: f.cert_der.clone(),
            live: None,
        };
        let opened = rt.block_on(async {
            match AuditLog::open(&dir, AUDIT_NODE, signer, log::Retention::default()) {
                Ok((log, task)) => {
                    drop(log);
                    let _ = task.await;
                    true
                }
                Err(_) => false,
            }
        });
        if opened && case.lines.is_empty() && case.checkpoints.is_empty() {
            // The node's own untouched log, recovered, still verifies.
            let lines = log::read_all(&dir).unwrap();
            let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let cps = log::read_checkpoints(&dir).unwrap();
            let verified = chain::verify(&refs, &cps, Some(AUDIT_NODE), &checkpoint_signed);
            prop_assert!(verified.is_ok(), "{:?}", verified);
        }
        Ok(())
    });
}

// ---- CRLs ----

struct CrlFixture {
    ca: CertificateAuthority,
    /// The CA's key, to sign edited lists as only the CA could.
    ca_signer: Signer,
    files: TrustFiles,
    trust: Arc<Trust>,
    serials: Vec<String>,
    _dir: tempfile::TempDir,
}

fn crl_fixture() -> CrlFixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    ca.save_cert_and_key(&dir.path().join("ca")).unwrap();
    let ca_signer =
        Signer::from_pem(&std::fs::read(dir.path().join("ca").join("ca.key")).unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&LeafSpec::new(node("n1"), Duration::from_secs(3600)))
        .unwrap()
        .write(dir.path(), "n1")
        .unwrap();
    let files = TrustFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("n1.pem"),
        key: dir.path().join("n1.key"),
        crl: Some(dir.path().join("crl.pem")),
        pushed_crl: dir.path().join("tls").join("crl.pem"),
    };
    let trust = Trust::load(files.clone(), node("n1"), None).unwrap();
    let serials = (0..3)
        .map(|i| {
            ca.issue(&LeafSpec::new(
                node(&format!("p{i}")),
                Duration::from_secs(3600),
            ))
            .unwrap()
            .serial
        })
        .collect();
    CrlFixture {
        ca,
        ca_signer,
        files,
        trust,
        serials,
        _dir: dir,
    }
}

/// The header and content lengths of the DER element at the start of `der`.
fn der_element(der: &[u8]) -> Option<(usize, usize)> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(2 + i)?);
    }
    Some((2 + n, len))
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![tag, len as u8];
    }
    let bytes: Vec<u8> = (len as u32)
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    [vec![tag, 0x80 | bytes.len() as u8], bytes].concat()
}

/// A CRL's to-be-signed part and signature algorithm.
fn crl_parts(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (h, _) = der_element(der)?;
    let body = der.get(h..)?;
    let (th, tl) = der_element(body)?;
    let tbs = body.get(..th + tl)?.to_vec();
    let rest = body.get(th + tl..)?;
    let (ah, al) = der_element(rest)?;
    Some((tbs, rest.get(..ah + al)?.to_vec()))
}

/// A CRL with this to-be-signed part, signed by the CA.
fn crl_signed(signer: &Signer, tbs: &[u8], alg: &[u8]) -> Vec<u8> {
    let sig = signer.sign(tbs);
    let bits = [der_header(0x03, sig.len() + 1), vec![0], sig].concat();
    let body = [tbs, alg, &bits].concat();
    [der_header(0x30, body.len()), body].concat()
}

#[derive(Debug, Clone)]
enum CrlInput {
    /// PEM text, mutated (signatures break unless only the armour changed).
    Pem(Vec<u8>),
    /// A real list's to-be-signed part mutated, signed by the CA, then PEM.
    Resigned(usize, Vec<Mutation>),
    /// A list the CA makes: a number, revoked serials (hex of these bytes) and times.
    Made(u64, Vec<(Vec<u8>, i64)>),
    /// Several inputs in one PEM file.
    Concat(Vec<CrlInput>),
}

fn crl_input(pem_seeds: Vec<Vec<u8>>) -> impl Strategy<Value = CrlInput> {
    let leaf = prop_oneof![
        4 => bytes_from(pem_seeds).prop_map(CrlInput::Pem),
        3 => (any::<usize>(), mutations()).prop_map(|(i, m)| CrlInput::Resigned(i, m)),
        2 => (
            prop_oneof![0..5u64, any::<u64>()],
            vec((vec(any::<u8>(), 0..22), -62_135_596_800..253_402_300_799i64), 0..3)
        )
            .prop_map(|(n, r)| CrlInput::Made(n, r)),
    ];
    leaf.prop_recursive(1, 4, 3, |inner| vec(inner, 2..4).prop_map(CrlInput::Concat))
}

fn crl_bytes(f: &CrlFixture, ders: &[Vec<u8>], input: &CrlInput) -> Vec<u8> {
    match input {
        CrlInput::Pem(b) => b.clone(),
        CrlInput::Resigned(i, ms) => {
            let der = &ders[at(i, ders.len())];
            let Some((tbs, alg)) = crl_parts(der) else {
                return Vec::new();
            };
            let tbs = apply(ders, tbs, ms);
            pem("X509 CRL", &crl_signed(&f.ca_signer, &tbs, &alg)).into_bytes()
        }
        CrlInput::Made(number, revoked) => {
            let revoked: Vec<(String, time::OffsetDateTime)> = revoked
                .iter()
                .filter_map(|(serial, at)| {
                    Some((
                        hex::encode(serial),
                        time::OffsetDateTime::from_unix_timestamp(*at).ok()?,
                    ))
                })
                .collect();
            f.ca.crl_pem(*number, &revoked)
                .map(String::into_bytes)
                .unwrap_or_default()
        }
        CrlInput::Concat(parts) => parts.iter().flat_map(|p| crl_bytes(f, ders, p)).collect(),
    }
}

#[test]
fn fuzz_crl_never_panics() {
    let f = crl_fixture();
    let now = time::OffsetDateTime::now_utc();
    let other = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let pems: Vec<String> = vec![
        f.ca.crl_pem(1, &[]).unwrap(),
        f.ca.crl_pem(2, &[(f.serials[0].clone(), now)]).unwrap(),
        f.ca.crl_pem(
            3,
            &f.serials
                .iter()
                .map(|s| (s.clone(), now))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
        other.crl_pem(9, &[(f.serials[1].clone(), now)]).unwrap(),
    ];
    let ders: Vec<Vec<u8>> = pems
        .iter()
        .map(|p| {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(p.as_bytes())
                .unwrap()
                .to_vec()
        })
        .collect();
    let mut seeds: Vec<Vec<u8>> = pems.iter().map(|p| p.clone().into_bytes()).collect();
    seeds.push(format!("{}{}", pems[1], pems[3]).into_bytes());
    fuzz("crl", crl_input(seeds), |input| {
        let bytes = crl_bytes(&f, &ders, &input);
        // Each case starts from the same state: no pushed list.
        if f.files.pushed_crl.exists() {
            std::fs::remove_file(&f.files.pushed_crl).unwrap();
            let reset = f.trust.reload();
            prop_assert!(reset.is_ok(), "{:?}", reset);
        }
        let installed = f.trust.install_crls(&bytes);
        if installed.is_ok() || f.files.pushed_crl.exists() {
            // What was stored lets the node reload and restart with it.
            let reloaded = f.trust.reload();
            prop_assert!(
                reloaded.is_ok(),
                "install_crls answered {:?}, then the stored list breaks reload: {:?}",
                installed,
                reloaded
            );
            let restarted = Trust::load(f.files.clone(), node("n1"), None);
            prop_assert!(restarted.is_ok(), "{:?}", restarted.err());
        }
        Ok(())
    });
}

// ---- Config ----

struct ConfigFixture {
    dir: tempfile::TempDir,
    /// Valid `node.toml` texts.
    tomls: Vec<Vec<u8>>,
    /// Files the configuration names: (environment override, valid contents).
    side: Vec<(&'static str, Vec<u8>)>,
}

fn config_fixture() -> ConfigFixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&LeafSpec::new(node("n1"), Duration::from_secs(3600)))
        .unwrap()
        .write(d, "n1")
        .unwrap();
    std::fs::write(d.join("node.kek"), generate_key_file()).unwrap();
    let (control, _) = ControlKey::generate();
    std::fs::write(d.join("control.pub"), control.public().to_text()).unwrap();
    let layout = Layout::initial(vec![Member {
        node_id: "n1".into(),
        peer_addr: "127.0.0.1:7444".into(),
        gateway_addr: "127.0.0.1:7443".into(),
    }])
    .unwrap();
    std::fs::write(d.join("layout.bin"), layout.sign(&control).encode_to_vec()).unwrap();
    std::fs::write(d.join("crl.pem"), ca.crl_pem(1, &[]).unwrap()).unwrap();
    let p = |name: &str| d.join(name).display().to_string();
    let full = format!(
        r#"node_id = "n1"
trust_domain = "{TD}"
data_dir = "{data}"
key_file = "{kek}"
gateway_listen = "127.0.0.1:7443"
ops_listen = "127.0.0.1:9090"
peer_listen = "127.0.0.1:7444"
control_public_key = "{control}"
layout_file = "{layout}"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
reload_interval = "2s"
[limits]
max_concurrent_requests = 512
request_timeout = "10s"
handshake_timeout = "5s"
drain_timeout = "10s"
[log]
format = "json"
level = "info,mesh_node=debug"
[audit]
retention = "1095d"
segment_bytes = 67108864
[access]
contact_grace = "72h"
reveal_limit = 20
reveal_window = "1h"
require_purpose = ["comms", "support"]
[rebalance]
rate = "32MiB"
[telemetry]
otlp_endpoint = "http://127.0.0.1:4317"
service_name = "mesh-node"
sample_ratio = 1.0
"#,
        data = p("data"),
        kek = p("node.kek"),
        control = p("control.pub"),
        layout = p("layout.bin"),
        ca = p("ca.pem"),
        cert = p("n1.pem"),
        key = p("n1.key"),
        crl = p("crl.pem"),
    );
    let minimal = format!(
        "node_id = \"n1\"\ntrust_domain = \"{TD}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        p("data"),
        p("node.kek"),
        p("ca.pem"),
        p("n1.pem"),
        p("n1.key"),
    );
    let side = [
        ("DSM_KEY_FILE", "node.kek"),
        ("DSM_CONTROL_PUBLIC_KEY", "control.pub"),
        ("DSM_LAYOUT_FILE", "layout.bin"),
        ("DSM_TLS_CA", "ca.pem"),
        ("DSM_TLS_CERT", "n1.pem"),
        ("DSM_TLS_KEY", "n1.key"),
    ]
    .into_iter()
    .map(|(env, name)| (env, std::fs::read(d.join(name)).unwrap()))
    .collect();
    ConfigFixture {
        dir,
        tomls: vec![full.into_bytes(), minimal.into_bytes()],
        side,
    }
}

/// Every `DSM_*` override `Config::load` reads.
const CONFIG_ENV: &[&str] = &[
    "DSM_NODE_ID",
    "DSM_TRUST_DOMAIN",
    "DSM_DATA_DIR",
    "DSM_GATEWAY_LISTEN",
    "DSM_OPS_LISTEN",
    "DSM_PEER_LISTEN",
    "DSM_TLS_CRL",
    "DSM_TLS_RELOAD_INTERVAL",
    "DSM_MAX_CONCURRENT_REQUESTS",
    "DSM_REQUEST_TIMEOUT",
    "DSM_HANDSHAKE_TIMEOUT",
    "DSM_DRAIN_TIMEOUT",
    "DSM_LOG_FORMAT",
    "DSM_LOG_LEVEL",
    "DSM_AUDIT_RETENTION",
    "DSM_AUDIT_SEGMENT_BYTES",
    "DSM_ACCESS_CONTACT_GRACE",
    "DSM_ACCESS_REVEAL_LIMIT",
    "DSM_ACCESS_REVEAL_WINDOW",
    "DSM_ACCESS_REQUIRE_PURPOSE",
    "DSM_REBALANCE_RATE",
    "DSM_OTLP_ENDPOINT",
    "DSM_TELEMETRY_SERVICE_NAME",
    "DSM_TELEMETRY_SAMPLE_RATIO",
];

#[derive(Debug, Clone)]
struct ConfigCase {
    toml: Vec<u8>,
    /// One of the files it names, replaced by mutated contents (through its override).
    side: Option<(usize, Vec<Mutation>)>,
    env: Vec<(usize, Vec<u8>)>,
}

fn config_case(tomls: Vec<Vec<u8>>) -> impl Strategy<Value = ConfigCase> {
    let values = bytes_from(vec![
        b"10s".to_vec(),
        b"1h".to_vec(),
        b"127.0.0.1:7443".to_vec(),
        b"json".to_vec(),
        b"info,mesh_node[span{field=\"x\"}]=debug".to_vec(),
        b"32MiB".to_vec(),
        b"0.5".to_vec(),
        b"comms, support".to_vec(),
        b"http://127.0.0.1:4317".to_vec(),
        b"100000".to_vec(),
    ]);
    (
        bytes_from(tomls),
        prop_oneof![3 => Just(None), 1 => (any::<usize>(), mutations()).prop_map(Some)],
        prop_oneof![2 => Just(Vec::new()), 1 => vec((any::<usize>(), values), 1..3)],
    )
        .prop_map(|(toml, side, env)| ConfigCase { toml, side, env })
}

fn load_config_case(
    f: &ConfigFixture,
    case: &ConfigCase,
) -> Result<crate::ops::config::Config, crate::ops::config::ConfigErrors> {
    let file: PathBuf = f.dir.path().join("node.toml");
    std::fs::write(&file, &case.toml).unwrap();
    let mut env: HashMap<String, String> = HashMap::new();
    if let Some((i, ms)) = &case.side {
        let pool: Vec<Vec<u8>> = f.side.iter().map(|(_, b)| b.clone()).collect();
        let (key, valid) = &f.side[at(i, f.side.len())];
        let path = f.dir.path().join("mutated");
        std::fs::write(&path, apply(&pool, valid.clone(), ms)).unwrap();
        env.insert((*key).to_owned(), path.display().to_string());
    }
    for (i, value) in &case.env {
        env.insert(
            CONFIG_ENV[at(i, CONFIG_ENV.len())].to_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    crate::ops::config::Config::load(Some(&file), &env)
}

#[test]
fn fuzz_config_never_panics() {
    let f = config_fixture();
    for toml in &f.tomls {
        let case = ConfigCase {
            toml: toml.clone(),
            side: None,
            env: Vec::new(),
        };
        assert!(load_config_case(&f, &case).is_ok(), "the seed loads");
    }
    fuzz("config", config_case(f.tomls.clone()), |case| {
        let _ = load_config_case(&f, &case);
        Ok(())
    });
}

// ---- Sanity of the seeds: an untouched input takes the decoder's success path ----

#[test]
fn the_seeds_are_valid() {
    let (key, _) = ControlKey::generate();
    for bytes in peer_frame_seeds(&key) {
        assert!(
            pb::PeerRequest::decode(bytes.as_slice()).is_ok()
                || pb::PeerResponse::decode(bytes.as_slice()).is_ok()
        );
    }
    for l in layouts() {
        assert_eq!(Layout::verify(&l.sign(&key), &key.public()), Ok(l.clone()));
    }
    let wrong: ControlPublicKey = ControlKey::generate().0.public();
    assert_eq!(
        Layout::verify(&layouts()[0].sign(&key), &wrong),
        Err(LayoutError::BadSignature)
    );
    let f = proof_fixture();
    for h in header_seeds(&f.signer) {
        assert!(parse_header(std::str::from_utf8(&h).unwrap()).is_ok());
    }
    let c = crl_fixture();
    let der = first_der_crl(&c.ca.crl_pem(4, &[]).unwrap());
    let (tbs, alg) = crl_parts(&der).unwrap();
    let resigned = pem("X509 CRL", &crl_signed(&c.ca_signer, &tbs, &alg));
    assert!(c.trust.install_crls(resigned.as_bytes()).unwrap());
}

fn first_der_crl(pem_text: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem_text.as_bytes())
        .unwrap()
        .to_vec()
}

// ---- Regressions: crashes the targets found, as minimal inputs ----

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

/// Found by `fuzz_crl_never_panics`: a CRL signed by the mesh CA that revokes a certificate as of
/// a time before 1970 (here 1969-12-31T23:59:59Z, as `mesh-ctl` writes it from a `revoked.json`
/// entry with a negative `at`). `Trust::install_crls` (`security/trust.rs`) checks pushed lists
/// with x509-parser, which accepts it, stores and syncs it, and only then reloads: the TLS stack
/// (webpki) refuses the list, `install_crls` answers an error, but the list stays stored, so
/// every later reload fails and the node no longer starts (`Trust::load` fails the same way).
#[test]
fn regression_crl_dated_before_1970_is_stored_then_breaks_reload() {
    let f = crl_fixture();
    let at = time::OffsetDateTime::from_unix_timestamp(-1).unwrap();
    let crl = f.ca.crl_pem(1, &[(f.serials[0].clone(), at)]).unwrap();
    let _ = f.trust.install_crls(crl.as_bytes());
    assert!(f.trust.reload().is_ok(), "{}", f.trust.last_error());
    assert!(Trust::load(f.files.clone(), node("n1"), None).is_ok());
}

/// Found by `fuzz_crl_never_panics` too, the same fault with another trigger: a version 1 CRL
/// (no `version` field, as `openssl ca -gencrl` writes without CRL extensions) signed by the mesh
/// CA. x509-parser accepts it, webpki refuses it (a parse error); it stays stored.
#[test]
fn regression_crl_version_1_is_stored_then_breaks_reload() {
    let f = crl_fixture();
    let der = first_der_crl(&f.ca.crl_pem(1, &[]).unwrap());
    let (tbs, alg) = crl_parts(&der).unwrap();
    let (h, _) = der_element(&tbs).unwrap();
    // The TBS starts with `version INTEGER 1` (v2) and ends with `[0] crlExtensions`: drop both.
    assert_eq!(&tbs[h..h + 3], &[0x02, 0x01, 0x01]);
    let mut content = Vec::new();
    let mut rest = &tbs[h + 3..];
    while !rest.is_empty() {
        let (eh, el) = der_element(rest).unwrap();
        if rest[0] != 0xa0 {
            content.extend_from_slice(&rest[..eh + el]);
        }
        rest = &rest[eh + el..];
    }
    let v1 = [der_header(0x30, content.len()), content].concat();
    let crl = pem("X509 CRL", &crl_signed(&f.ca_signer, &v1, &alg));
    let _ = f.trust.install_crls(crl.as_bytes());
    assert!(f.trust.reload().is_ok(), "{}", f.trust.last_error());
    assert!(Trust::load(f.files.clone(), node("n1"), None).is_ok());
}

/// Found by `fuzz_handoff_chunk_never_panics`: a handoff answer whose `PartitionData` lists the
/// same customer twice, each entry with its own data key and one valid order sealed under it.
/// `Store::import_partition` (`storage/handoff.rs`) accepts it: the customer's stored key is the
/// second entry's, so the first entry's order (re-sealed under the first key) is imported but can
/// never be read again (`get_order` answers `Corrupt("order")`), although the import promises to
/// refuse, changing nothing, an export whose records do not open with their keys.
#[test]
fn regression_handoff_naming_a_customer_twice() {
    let f = handoff_fixture();
    let entry = |key: u8, order: usize| CustomerCase {
        customer: 0,
        key: vec![key; 32],
        orders: vec![OrderCase {
            seed: order,
            mutations: Vec::new(),
            sealed: true,
            storage_key: Vec::new(),
        }],
    };
    let data = build_partition_data(&f, None, &[entry(0, 0), entry(1, 1)], &[], 0);
    receive_handoff(&f, &data.encode_to_vec()).unwrap();
}

/// Found by `fuzz_layout_never_panics`: a layout signed at version `u64::MAX` verifies
/// (`Layout::check` asks only for a version of at least 1); `Layout::next` then computes
/// `self.version + 1` (`cluster/layout/mod.rs`), which overflows: a panic in debug builds, a wrap
/// to version 0 in release (refused then by `check`).
#[test]
fn regression_layout_at_the_last_version() {
    let (key, _) = ControlKey::generate();
    let base = Layout::initial((0..3).map(member).collect()).unwrap();
    let mut inner = pb::Layout::decode(base.sign(&key).layout.as_slice()).unwrap();
    inner.version = u64::MAX;
    let last = Layout::verify(&resign(inner.encode_to_vec(), &key), &key.public()).unwrap();
    assert!(last.next((0..4).map(member).collect()).is_err());
}

/// Found by `fuzz_audit_chain_never_panics`: a log whose first record has `"seq":0`.
/// `chain::verify` (`audit/chain.rs`) computes `rec.seq - 1` for the anchor it looks for (with
/// checkpoints) and for the `Unanchored` error it returns (without), which overflows: a panic in
/// debug builds (`mesh-ctl audit verify` on a tampered directory), an anchor of `u64::MAX` in the
/// error in release.
#[test]
fn regression_audit_chain_starting_at_seq_0() {
    let f = audit_fixture();
    let line = edit_fields(&f.logs[0].0[0], &FieldEdit::Seq(0), "");
    let verified = chain::verify(&[line.as_slice()], &[], Some(AUDIT_NODE), &|_| true);
    assert!(verified.is_err());
}

/// Found by `fuzz_audit_files_never_panics`: an audit directory whose last record has
/// `"seq":18446744073709551615` beyond the last checkpoint. `AuditLog::open` recovers it and
/// appends `AuditRecovered`: `append_batch` (`audit/log.rs`) computes `seq += 1`, which
/// overflows: the node panics at start in debug builds and writes a record with seq 0 in release.
#[test]
fn regression_audit_recovery_after_the_last_seq() {
    let f = audit_fixture();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("audit");
    let (lines, cps) = &f.logs[2];
    let lines = vec![edit_fields(&lines[0], &FieldEdit::Seq(u64::MAX), "")];
    write_audit_dir(&dir, &lines, cps, &[], 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let signer = CheckpointSigner {
        signer: Signer::from_pem(&f.key_pem).unwrap(),
        cert_der: f.cert_der.clone(),
        live: None,
    };
    rt.block_on(async {
        if let Ok((log, task)) = AuditLog::open(&dir, AUDIT_NODE, signer, log::Retention::default())
        {
            drop(log);
            task.await.unwrap();
        }
    });
}
