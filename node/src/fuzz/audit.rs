//! The `audit_chain` and `audit_files` targets: `chain::verify` and `chain::pruned_range` on an
//! audit directory as `mesh-ctl audit verify` reads it, and `log::read_all`,
//! `log::read_checkpoints`, `log::scan` and `AuditLog::open` on the node's audit directory.

use super::{Mutation, TD, apply, at, bytes_from, fuzz, mutations, name_like, node};
use crate::audit::chain::{self, Checkpoint, Record};
use crate::audit::log::{self, AuditLog, CheckpointSigner};
use crate::security::pki::{CertificateAuthority, LeafSpec};
use crate::security::proof::Signer;
use base64::Engine as _;
use proptest::collection::vec;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

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

// ---- Regressions: crashes the target found, as minimal inputs ----

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
