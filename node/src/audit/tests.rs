//! Audit chain and log tests: every kind of tampering is detected; recovery and checkpoints work.

use super::chain::{self, ChainError, Checkpoint};
use super::log::{self, AuditLog, CheckpointSigner, Entry};
use crate::security::pki::{CertificateAuthority, LeafSpec};
use crate::security::proof::Signer;
use aws_lc_rs::signature;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::Path;
use std::time::Duration;

fn node_signer(dir: &Path) -> (CheckpointSigner, Vec<u8>) {
    let ca = CertificateAuthority::create("mesh.test", Duration::from_secs(3600)).unwrap();
    let id = crate::security::identity::Identity::Node {
        trust_domain: "mesh.test".into(),
        node_id: "n1".into(),
    };
    let (cert, key) = ca
        .issue(&LeafSpec::new(id, Duration::from_secs(3600)))
        .unwrap()
        .write(dir, "n1")
        .unwrap();
    let der = crate::security::tls::load_certs(&cert).unwrap()[0].to_vec();
    (
        CheckpointSigner {
            signer: Signer::from_pem_file(&key).unwrap(),
            cert_der: der.clone(),
            live: None,
        },
        der,
    )
}

/// Signature check as an auditor would do it: the embedded certificate's key over the payload.
fn sig_ok(cp: &Checkpoint) -> bool {
    use x509_parser::prelude::*;
    let Ok(der) = B64.decode(&cp.cert) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    let spki = cert.public_key().subject_public_key.data.to_vec();
    let Ok(sig) = B64.decode(&cp.sig) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki)
        .verify(
            &chain::checkpoint_payload(&cp.node, cp.seq, &cp.head, cp.ts),
            &sig,
        )
        .is_ok()
}

fn entry(i: usize) -> Entry {
    Entry {
        principal: format!("spiffe://mesh.test/client/oms/o{i}"),
        role: "oms".into(),
        action: "GetOrder".into(),
        allowed: true,
        ..Entry::default()
    }
}

async fn write_log(dir: &Path, n: usize) {
    let (signer, _) = node_signer(dir);
    let (log, task) =
        AuditLog::open(&dir.join("audit"), "n1", signer, log::Retention::default()).unwrap();
    for i in 0..n {
        log.append(entry(i)).await.unwrap();
    }
    log.checkpoint().await.unwrap();
    drop(log);
    task.await.unwrap();
}

fn verify(dir: &Path) -> Result<chain::Verified, ChainError> {
    let lines = log::read_all(&dir.join("audit")).unwrap();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    chain::verify(
        &refs,
        &log::read_checkpoints(&dir.join("audit")).unwrap(),
        Some("n1"),
        &sig_ok,
    )
}

fn rewrite(dir: &Path, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let path = dir.join("audit").join("segment-00000001.jsonl");
    let mut lines = log::read_lines(&path).unwrap();
    f(&mut lines);
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    std::fs::write(path, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_verifies_and_recovers_its_head() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 20).await;
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.first_seq, v.last_seq, v.records), (1, 20, 20));
    // Reopen: numbering continues; a torn last line is dropped.
    let seg = dir.path().join("audit").join("segment-00000001.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, b"{\"v\":1,\"seq\":21,\"ts").unwrap();
    write_log(dir.path(), 5).await;
    assert_eq!(verify(dir.path()).unwrap().last_seq, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_detected() {
    type Tamper = Box<dyn Fn(&mut Vec<Vec<u8>>)>;
    let cases: Vec<(&str, ChainError, Tamper)> = vec![
        (
            "flip a byte",
            ChainError::Link {
                seq: 6,
                prev_seq: 5,
            },
            Box::new(|l| {
                // A value byte, so the line still parses: `"role":"oms"` becomes `"role":"xms"`.
                let at = l[4].windows(8).position(|w| w == b"\"role\":\"").unwrap() + 8;
                l[4][at] = b'x';
            }),
        ),
        (
            "delete a record",
            ChainError::Sequence {
                seq: 8,
                expected: 7,
            },
            Box::new(|l| {
                l.remove(6);
            }),
        ),
        (
            "reorder two",
            ChainError::Sequence {
                seq: 5,
                expected: 4,
            },
            Box::new(|l| l.swap(3, 4)),
        ),
        (
            "truncate the tail",
            ChainError::Truncated { seq: 20, last: 15 },
            Box::new(|l| l.truncate(15)),
        ),
        (
            "re-hashed forgery",
            ChainError::CheckpointHead { seq: 20 },
            Box::new(|l| {
                // Rewrite every record (a different principal) and recompute the whole chain.
                let mut prev = chain::ZERO_HASH.to_owned();
                for line in l.iter_mut() {
                    let mut rec: chain::Record = serde_json::from_slice(line).unwrap();
                    rec.principal = "spiffe://mesh.test/client/oms/someone-else".into();
                    rec.prev = prev;
                    *line = serde_json::to_vec(&rec).unwrap();
                    prev = chain::hash_line(line);
                }
            }),
        ),
    ];
    for (what, expected, tamper) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 20).await;
        rewrite(dir.path(), |l| tamper(l));
        assert_eq!(verify(dir.path()), Err(expected), "{what}");
    }
    // A forgery that also deletes the checkpoints cannot pass as anchored.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3).await;
    std::fs::remove_file(dir.path().join("audit").join("checkpoints.jsonl")).unwrap();
    assert_eq!(verify(dir.path()), Err(ChainError::NoCheckpoint));
}
