//! The audit chain format and its verification (pure: no I/O).
//!
//! A node's audit log is a sequence of JSON lines, one record each, written in this exact field
//! order with no spaces:
//!
//! ```text
//! {"v":1,"seq":7,"ts":1763900000000,"node":"n1","principal":"spiffe://td/client/oms/x","role":"oms",
//!  "action":"GetOrder","customer":"<hex>","order":"<hex>","purpose":"","fields":["customer.name"],
//!  "decision":"allow","reason":"","note":"","prev":"<hex sha-256 of line 6>"}
//! ```
//!
//! - `hash(line)` is SHA-256 of the line's bytes as stored (no trailing newline). Verifiers hash the
//!   bytes they read; nothing is re-serialised, so there is no canonicalisation to get wrong.
//! - `seq` starts at 1 and grows by one; `prev` of record 1 is 64 zeros. After old segments are
//!   pruned, the first remaining record's `prev` must equal the `head` of a signed checkpoint at
//!   `seq - 1` (the anchor), and the log must hold the `AuditPrune` record that removed them: its
//!   `purpose` names the range, `records A-B`, with `B = seq - 1`. A log that starts late without
//!   one lost its oldest records to someone other than retention.
//! - `customer` and `order` are keyed hashes (HMAC-SHA256 under the node's index key), never ids.
//!
//! Checkpoints are JSON lines too: `{"v":1,"node":..,"seq":..,"head":..,"ts":..,"sig":..,"cert":..}`
//! where `sig` is the node's ECDSA P-256 / SHA-256 signature (ASN.1 DER, base64) over
//! [`checkpoint_payload`] and `cert` the node's certificate (DER, base64), which must chain to the
//! mesh CA and name the node. A checkpoint whose `seq` is beyond the last record means the tail
//! was truncated; one whose `head` differs from the record's hash means the log was rewritten.

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;
/// The action of the record retention writes after it deletes old segments.
pub const PRUNE_ACTION: &str = "AuditPrune";

/// The record range an `AuditPrune` record's purpose names (`... records A-B ...`).
pub fn pruned_range(purpose: &str) -> Option<(u64, u64)> {
    let rest = &purpose[purpose.find("records ")? + "records ".len()..];
    let range: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
pub(crate) const ZERO_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record. Field order here is the order on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: i64,
    pub node: String,
    /// The certificate identity of the caller (a client, an admin, or `-` if none was proven).
    pub principal: String,
    pub role: String,
    pub action: String,
    /// Keyed hash of the customer id, hex, or empty.
    pub customer: String,
    /// Keyed hash of the order id, hex, or empty.
    pub order: String,
    pub purpose: String,
    /// Field paths disclosed unmasked to the caller.
    pub fields: Vec<String>,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why a request was denied (a gRPC code name), or empty.
    pub reason: String,
    /// The caller's own justification, where a method requires one (`RevealField`'s reason text,
    /// screened for contact details), or empty.
    #[serde(default)]
    pub note: String,
    pub prev: String,
}

/// A signed checkpoint of a node's chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    pub node: String,
    pub seq: u64,
    pub head: String,
    pub ts: i64,
    /// Base64 ECDSA P-256 / SHA-256 signature over `checkpoint_payload`.
    pub sig: String,
    /// Base64 DER certificate of the signing node.
    pub cert: String,
}

pub fn hash_line(line: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, line).as_ref())
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_payload(node: &str, seq: u64, head: &str, ts: i64) -> Vec<u8> {
    format!("dsm-audit-checkpoint-v1\n{node}\n{seq}\n{head}\n{ts}").into_bytes()
}

/// The first thing wrong with a chain, named so an auditor can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record at line {line} is not a valid audit record")]
    Unparseable { line: usize },
    #[error(
        "record seq {seq}: expected seq {expected} (a record was deleted, inserted or reordered)"
    )]
    Sequence { seq: u64, expected: u64 },
    #[error(
        "record seq {seq}: prev does not match the hash of record {prev_seq} (a record was edited, deleted or reordered)"
    )]
    Link { seq: u64, prev_seq: u64 },
    #[error(
        "record seq {seq}: the chain starts here but no signed checkpoint anchors seq {anchor}"
    )]
    Unanchored { seq: u64, anchor: u64 },
    #[error(
        "records before seq {seq} are missing and no AuditPrune record says retention pruned them (the oldest records were deleted)"
    )]
    Unpruned { seq: u64 },
    #[error("checkpoint for seq {seq}: signature invalid or not by node {node}")]
    CheckpointSignature { seq: u64, node: String },
    #[error("checkpoint for seq {seq}: head does not match record {seq} (the log was rewritten)")]
    CheckpointHead { seq: u64 },
    #[error("checkpoint for seq {seq} but the log ends at seq {last} (the tail was truncated)")]
    Truncated { seq: u64, last: u64 },
    #[error("no signed checkpoint covers this log: it cannot be told apart from a forgery")]
    NoCheckpoint,
    #[error("seq {seq} belongs to node {found}, but this is the log of node {expected}")]
    ForeignNode {
        seq: u64,
        found: String,
        expected: String,
    },
}

/// What a verified chain looks like.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Verified {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub head: String,
}

/// Verifies `lines` (records in file order) against `checkpoints`. `check_sig` decides whether a
/// checkpoint's signature and certificate are genuine (the caller knows the CA).
pub fn verify(
    lines: &[&[u8]],
    checkpoints: &[Checkpoint],
    expected_node: Option<&str>,
    check_sig: &dyn Fn(&Checkpoint) -> bool,
) -> Result<Verified, ChainError> {
    // Every record and checkpoint must belong to one node: the expected one, or else the node the
    // log itself starts with. Otherwise another node's key could vouch for a rewritten log.
    let first_node = lines
        .first()
        .and_then(|l| serde_json::from_slice::<Record>(l).ok())
        .map(|r| r.node)
        .or_else(|| checkpoints.first().map(|c| c.node.clone()));
    let node = expected_node
        .map(str::to_owned)
        .or(first_node)
        .unwrap_or_default();
    for cp in checkpoints {
        if cp.node != node {
            return Err(ChainError::ForeignNode {
                seq: cp.seq,
                found: cp.node.clone(),
                expected: node,
            });
        }
    }
    for cp in checkpoints {
        if !check_sig(cp) {
            return Err(ChainError::CheckpointSignature {
                seq: cp.seq,
                node: cp.node.clone(),
            });
        }
    }
    // The ranges retention pruned, as the log itself records them.
    let pruned_to: std::collections::HashSet<u64> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .filter(|r| r.action == PRUNE_ACTION)
        .filter_map(|r| pruned_range(&r.purpose).map(|(_, last)| last))
        .collect();
    let mut out = Verified::default();
    let mut hashes: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut prev: Option<(u64, String)> = None;
    for (i, line) in lines.iter().enumerate() {
        let rec: Record =
            serde_json::from_slice(line).map_err(|_| ChainError::Unparseable { line: i + 1 })?;
        if rec.node != node {
            return Err(ChainError::ForeignNode {
                seq: rec.seq,
                found: rec.node,
                expected: node,
            });
        }
        match &prev {
            // Sequence numbers start at 1: a record 0 was never written by a node.
            None if rec.seq == 0 => {
                return Err(ChainError::Sequence {
                    seq: 0,
                    expected: 1,
                });
            }
            None => {
                out.first_seq = rec.seq;
                let anchored = if rec.seq == 1 {
                    rec.prev == ZERO_HASH
                } else {
                    checkpoints
                        .iter()
                        .any(|cp| cp.seq == rec.seq - 1 && cp.head == rec.prev)
                };
                if anchored && rec.seq > 1 && !pruned_to.contains(&(rec.seq - 1)) {
                    return Err(ChainError::Unpruned { seq: rec.seq });
                }
                if !anchored {
                    return Err(if rec.seq == 1 {
                        ChainError::Link {
                            seq: 1,
                            prev_seq: 0,
                        }
                    } else {
                        ChainError::Unanchored {
                            seq: rec.seq,
                            anchor: rec.seq - 1,
                        }
                    });
                }
            }
            Some((pseq, phash)) => {
                if rec.seq != pseq + 1 {
                    return Err(ChainError::Sequence {
                        seq: rec.seq,
                        expected: pseq + 1,
                    });
                }
                if &rec.prev != phash {
                    return Err(ChainError::Link {
                        seq: rec.seq,
                        prev_seq: *pseq,
                    });
                }
            }
        }
        let h = hash_line(line);
        hashes.insert(rec.seq, h.clone());
        prev = Some((rec.seq, h));
        out.records += 1;
    }
    let (last, head) = prev.unwrap_or((0, ZERO_HASH.to_owned()));
    if out.records > 0 && checkpoints.is_empty() {
        return Err(ChainError::NoCheckpoint);
    }
    out.last_seq = last;
    out.head = head;
    for cp in checkpoints {
        if cp.seq > last {
            return Err(ChainError::Truncated { seq: cp.seq, last });
        }
        if let Some(h) = hashes.get(&cp.seq)
            && *h != cp.head
        {
            return Err(ChainError::CheckpointHead { seq: cp.seq });
        }
        out.checkpoints += 1;
    }
    Ok(out)
}
