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
//! DSM_FUZZ_CASES=2000000 cargo test -p mesh-node --lib fuzz::peer::fuzz_peer_frames -- --nocapture --test-threads=1
//! ```
//!
//! The long run uses the test (debug) profile on purpose: it keeps overflow checks, so an
//! arithmetic overflow on hostile input panics there instead of wrapping silently as in release.
//! SECURITY.md records the runs. Every crash or broken property found is kept at the end of its
//! target's file as a plain `#[test]` with its minimal input (`regression_*`), and each one was
//! fixed where it failed; an input class a target once skipped is fuzzed again.
//!
//! Layout of `node/src/fuzz/`: this file holds the runner, the mutations and the fixtures several
//! targets share, and the check that every seed is valid; each target lives in the file named
//! after what it fuzzes: `peer.rs` (`peer_frames`), `layout.rs`, `proof.rs` (`proof_header`,
//! `proof_verify`), `handoff.rs` (`handoff_chunk`), `audit.rs` (`audit_chain`, `audit_files`),
//! `crl.rs` and `config.rs`.

mod audit;
mod config;
mod crl;
mod handoff;
mod layout;
mod peer;
mod proof;

use crate::cluster::layout::{Layout, LayoutError, Member};
use crate::security::control_key::{ControlKey, ControlPublicKey};
use crate::security::identity::Identity;
use crate::security::proof::parse_header;
use crl::{crl_fixture, crl_parts, crl_signed, first_der_crl, pem};
use mesh_proto::v1 as pb;
use peer::peer_frame_seeds;
use proof::{header_seeds, proof_fixture};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message as _;
use std::sync::Arc;
use std::time::Instant;

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
pub(super) fn fuzz<S: Strategy>(
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
pub(super) fn at(i: impl std::borrow::Borrow<usize>, len: usize) -> usize {
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
pub(super) enum Mutation {
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

pub(super) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..6)
}

/// `data` with `ms` applied in order; `pool` feeds splices.
pub(super) fn apply(pool: &[Vec<u8>], mut data: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
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
pub(super) fn bytes_from(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
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
pub(super) fn name_like() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9][a-z0-9._-]{0,10}",
        1 => "[A-Za-z0-9 ./_-]{0,70}",
        1 => any::<String>(),
    ]
    .boxed()
}

// ---- Shared fixtures ----

pub(super) const TD: &str = "mesh.test";

pub(super) fn member(i: usize) -> Member {
    Member {
        node_id: format!("n{i:02}"),
        peer_addr: format!("127.0.0.1:{}", 7000 + i),
        gateway_addr: format!("127.0.0.1:{}", 8000 + i),
    }
}

/// Layouts of 1, 2, 3 and 5 members, and the next version of the 3-member one (4 members).
pub(super) fn layouts() -> Vec<Layout> {
    let mut out: Vec<Layout> = [1, 2, 3, 5]
        .iter()
        .map(|&n| Layout::initial((0..n).map(member).collect()).unwrap())
        .collect();
    let next = out[2].next((0..4).map(member).collect()).unwrap();
    out.push(next);
    out
}

pub(super) fn node(id: &str) -> Identity {
    Identity::Node {
        trust_domain: TD.into(),
        node_id: id.into(),
    }
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
