//! The audit log on disk: append-only JSON-lines segments (`segment-NNNNNNNN.jsonl`) and signed
//! checkpoints (`checkpoints.jsonl`) in the node's audit directory.
//!
//! One writer task owns the files. Callers hand it an [`Entry`] and wait: the writer gathers every
//! pending entry, assigns sequence numbers and chain hashes, appends the lines, `fdatasync`s once
//! and answers them all (group commit, as for orders). An access is served only after its record
//! is durable; if the append fails, the caller gets an error and the access is refused (fail closed).
//! A signed checkpoint of the head is written every second while records arrive, and on shutdown.
//! On start the writer recovers the head from the last segment, dropping a torn final line (its
//! append was never acknowledged).

use super::chain::{self, Checkpoint, Record, ZERO_HASH};
use crate::domain::clock::now_ms;
use crate::durable_fs;
use crate::security::proof::Signer;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::io::{BufRead as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// How a log rotates and how long it keeps records.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Start a new segment past this size (a signed checkpoint closes every segment, so it anchors
    /// the next one even after older segments are pruned).
    pub segment_bytes: u64,
    /// Segments whose newest record is older than this are deleted.
    pub keep: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        // Longer than any order retention: audit outlives the data it describes.
        Retention {
            segment_bytes: 64 << 20,
            keep: Duration::from_secs(3 * 365 * 86_400),
        }
    }
}

/// Group commit: at most this many short pauses to let concurrent requests join one fsync.
const GATHER_ROUNDS: usize = 4;
const GATHER_PAUSE: Duration = Duration::from_micros(100);

/// How often pruning is considered.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log I/O: {0}")]
    Io(String),
    #[error("the audit log is not running")]
    Stopped,
}

fn io(e: impl std::fmt::Display) -> AuditError {
    AuditError::Io(e.to_string())
}

/// What a caller records; the writer adds seq, time, node and chain link.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub principal: String,
    pub role: String,
    pub action: String,
    pub customer: String,
    pub order: String,
    pub purpose: String,
    pub fields: Vec<String>,
    pub allowed: bool,
    pub reason: String,
    /// The caller's justification (see `chain::Record::note`), or empty.
    pub note: String,
}

enum Cmd {
    Append(Box<Entry>, oneshot::Sender<Result<u64, AuditError>>),
    Checkpoint(oneshot::Sender<Result<u64, AuditError>>),
}

/// Handle to a node's audit log.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    /// Benchmarks only (`DSM_BENCH_AUDIT_OFF=1`): appends succeed without writing anything.
    off: bool,
    tx: mpsc::UnboundedSender<Cmd>,
    live: broadcast::Sender<Arc<String>>,
    dir: PathBuf,
}

/// Signs checkpoints with the node's key and names the node's certificate.
pub(crate) struct CheckpointSigner {
    pub signer: Signer,
    pub cert_der: Vec<u8>,
    /// When set, the signer follows the node's live credentials: after a certificate rotation the
    /// next checkpoint is signed with the new key and carries the new certificate.
    pub live: Option<(std::sync::Arc<crate::security::trust::Trust>, u64)>,
}

impl CheckpointSigner {
    /// A signer that follows `trust` from its current generation on.
    pub fn live(
        trust: std::sync::Arc<crate::security::trust::Trust>,
    ) -> Result<CheckpointSigner, String> {
        let g = trust.current();
        Ok(CheckpointSigner {
            signer: Signer::from_pem(g.key_pem())?,
            cert_der: g.chain()[0].to_vec(),
            live: Some((trust.clone(), g.status.generation)),
        })
    }

    /// Picks up a rotated key and certificate, if any.
    fn refresh(&mut self) {
        let Some((trust, seen)) = &mut self.live else {
            return;
        };
        let g = trust.current();
        if g.status.generation == *seen {
            return;
        }
        match Signer::from_pem(g.key_pem()) {
            Ok(signer) => {
                self.signer = signer;
                self.cert_der = g.chain()[0].to_vec();
                *seen = g.status.generation;
            }
            Err(e) => tracing::error!(error = %e, "audit checkpoints keep the previous key"),
        }
    }
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointSigner(..)")
    }
}

struct Writer {
    dir: PathBuf,
    node: String,
    segment: std::fs::File,
    segment_no: u64,
    segment_len: u64,
    seq: u64,
    head: String,
    checkpointed_seq: u64,
    signer: CheckpointSigner,
    live: broadcast::Sender<Arc<String>>,
    fail: bool,
    retention: Retention,
    last_prune: std::time::Instant,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:08}.jsonl"))
}

/// Cuts a file back to its last complete line (a crash can leave half a line behind).
fn truncate_torn_tail(path: &Path) -> Result<(), AuditError> {
    if !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        f.set_len(complete as u64).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(())
}

/// Segment numbers present in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>, AuditError> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("segment-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Complete lines of a file (a torn last line without its newline is left out).
pub(crate) fn read_lines(path: &Path) -> Result<Vec<Vec<u8>>, AuditError> {
    let bytes = std::fs::read(path).map_err(io)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(bytes[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Every record line of the log in `dir`, oldest first.
pub fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>, AuditError> {
    let mut out = Vec::new();
    for n in segments(dir)? {
        out.extend(read_lines(&segment_path(dir, n))?);
    }
    Ok(out)
}

pub fn read_checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    let path = dir.join(CHECKPOINTS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    read_lines(&path)?
        .iter()
        .map(|l| serde_json::from_slice(l).map_err(io))
        .collect()
}

impl Writer {
    fn open(
        dir: &Path,
        node: &str,
        signer: CheckpointSigner,
        live: broadcast::Sender<Arc<String>>,
        retention: Retention,
    ) -> Result<Writer, AuditError> {
        durable_fs::create_dir_all(dir).map_err(io)?;
        let segs = segments(dir)?;
        let segment_no = segs.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment_no);
        // Drop a torn final line: it was never acknowledged.
        truncate_torn_tail(&path)?;
        let mut seq = 0;
        let mut head = ZERO_HASH.to_owned();
        for n in segs.iter().rev() {
            if let Some(last) = read_lines(&segment_path(dir, *n))?.last() {
                let rec: Record = serde_json::from_slice(last).map_err(io)?;
                seq = rec.seq;
                head = chain::hash_line(last);
                break;
            }
        }
        truncate_torn_tail(&dir.join(CHECKPOINTS_FILE))?;
        let checkpointed_seq = read_checkpoints(dir)?
            .iter()
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        let mut segment = durable_fs::open_append(&path).map_err(io)?;
        let segment_len = segment.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        // Test builds only (`fault`): every append fails, so accesses must be refused.
        let fail = crate::fault::fails("audit-append");
        Ok(Writer {
            retention,
            last_prune: std::time::Instant::now(),
            dir: dir.to_owned(),
            node: node.to_owned(),
            segment,
            segment_no,
            segment_len,
            seq,
            head,
            checkpointed_seq,
            signer,
            live,
            fail,
        })
    }

    fn append_batch(&mut self, entries: &[Entry]) -> Result<Vec<u64>, AuditError> {
        if self.fail {
            // Set by an earlier batch that could not be cut back (logged then), or by a test's
            // failure point (`fault`).
            return Err(AuditError::Io(
                "the audit log refuses appends after an earlier write failure".into(),
            ));
        }
        if self.segment_len > self.retention.segment_bytes {
            self.segment.sync_all().map_err(io)?;
            // Close the segment with a signed checkpoint: it anchors the next one.
            self.checkpoint()?;
            self.segment_no += 1;
            self.segment =
                durable_fs::open_append(&segment_path(&self.dir, self.segment_no)).map_err(io)?;
            self.segment_len = 0;
        }
        let (mut seq, mut head) = (self.seq, self.head.clone());
        let mut buf = Vec::new();
        let mut lines = Vec::with_capacity(entries.len());
        let mut seqs = Vec::with_capacity(entries.len());
        for e in entries {
            // A log at the last sequence number (only a hand-edited one can be) takes no more.
            seq = seq.checked_add(1).ok_or_else(|| {
                AuditError::Io("the audit log is at its last sequence number".into())
            })?;
            let rec = Record {
                v: chain::FORMAT,
                seq,
                ts: now_ms(),
                node: self.node.clone(),
                principal: e.principal.clone(),
                role: e.role.clone(),
                action: e.action.clone(),
                customer: e.customer.clone(),
                order: e.order.clone(),
                purpose: e.purpose.clone(),
                fields: e.fields.clone(),
                decision: if e.allowed { "allow" } else { "deny" }.into(),
                reason: e.reason.clone(),
                note: e.note.clone(),
                prev: head,
            };
            let line = serde_json::to_string(&rec).map_err(io)?;
            head = chain::hash_line(line.as_bytes());
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            lines.push(line);
            seqs.push(seq);
        }
        // A batch is all or nothing: if it cannot be made durable, cut the file back to where it
        // was, so the next batch reuses these sequence numbers on a clean chain.
        let durable = self
            .segment
            .write_all(&buf)
            .and_then(|()| self.segment.sync_data());
        if let Err(e) = durable {
            if let Err(cut) = self
                .segment
                .set_len(self.segment_len)
                .and_then(|()| self.segment.sync_data())
            {
                tracing::error!(error = %cut, "cannot cut a failed audit batch back; refusing all further appends");
                self.fail = true;
            }
            return Err(io(e));
        }
        self.segment_len += buf.len() as u64;
        self.seq = seq;
        self.head = head;
        for line in lines {
            let _ = self.live.send(Arc::new(line));
        }
        Ok(seqs)
    }

    /// Deletes whole segments whose newest record is older than the retention period, then records
    /// the pruning in the trail itself. The checkpoint that closed the last pruned segment anchors
    /// what remains, so the log still verifies.
    fn prune(&mut self) -> Result<(), AuditError> {
        self.last_prune = std::time::Instant::now();
        let horizon = now_ms() - self.retention.keep.as_millis() as i64;
        let mut pruned = Vec::new();
        // The records the pruned segments held, first and last: the trail names them, so a log
        // that starts late can be told from one whose oldest records were deleted.
        let mut records: Option<(u64, u64)> = None;
        for n in segments(&self.dir)?
            .into_iter()
            .filter(|n| *n < self.segment_no)
        {
            let path = segment_path(&self.dir, n);
            let lines = read_lines(&path)?;
            let seq_of = |l: &Vec<u8>| serde_json::from_slice::<Record>(l).ok();
            let newest = lines.last().and_then(seq_of);
            if newest.as_ref().is_some_and(|r| r.ts < horizon) {
                let first = lines.first().and_then(seq_of).map_or(0, |r| r.seq);
                let last = newest.map_or(0, |r| r.seq);
                records = Some((records.map_or(first, |(a, _)| a), last));
                std::fs::remove_file(&path).map_err(io)?;
                pruned.push(n);
            } else {
                break; // segments are in time order: the rest are newer
            }
        }
        if let (Some(first), Some(last), Some((a, b))) = (pruned.first(), pruned.last(), records) {
            tracing::info!(first, last, "pruned audit segments past retention");
            durable_fs::sync_dir(&self.dir).map_err(io)?;
            let entry = Entry {
                principal: format!("node:{}", self.node),
                role: "node".into(),
                action: chain::PRUNE_ACTION.into(),
                purpose: format!("segments {first}-{last}; records {a}-{b}"),
                allowed: true,
                ..Entry::default()
            };
            self.append_batch(&[entry])?;
        }
        Ok(())
    }

    /// Signs the head (if anything is new since the last checkpoint); the last seq covered.
    fn checkpoint(&mut self) -> Result<u64, AuditError> {
        if self.seq == self.checkpointed_seq {
            return Ok(self.seq);
        }
        self.signer.refresh();
        let ts = now_ms();
        let sig = self.signer.signer.sign(&chain::checkpoint_payload(
            &self.node, self.seq, &self.head, ts,
        ));
        let cp = Checkpoint {
            v: chain::FORMAT,
            node: self.node.clone(),
            seq: self.seq,
            head: self.head.clone(),
            ts,
            sig: B64.encode(sig),
            cert: B64.encode(&self.signer.cert_der),
        };
        let mut f = durable_fs::open_append(&self.dir.join(CHECKPOINTS_FILE)).map_err(io)?;
        let mut line = serde_json::to_vec(&cp).map_err(io)?;
        line.push(b'\n');
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)?;
        self.checkpointed_seq = self.seq;
        Ok(self.seq)
    }
}

impl AuditLog {
    /// Opens (recovering) the log in `dir` and starts its writer; the task ends when every handle is
    /// dropped, after a final checkpoint.
    pub fn open(
        dir: &Path,
        node: &str,
        signer: CheckpointSigner,
        retention: Retention,
    ) -> Result<(AuditLog, tokio::task::JoinHandle<()>), AuditError> {
        let (live, _) = broadcast::channel(4096);
        let mut writer = Writer::open(dir, node, signer, live.clone(), retention)?;
        // Records recovered past the last checkpoint (a crash or power cut came before the next
        // tick) are signed now, before anything new is appended, so a restarted node's log is
        // covered. The trail says so first: whoever could write the data volume while the node
        // was down (its key may live elsewhere, in a Secret) could have appended those records,
        // and an auditor can tell them from records signed as they were written.
        if writer.seq > writer.checkpointed_seq {
            let (first, last) = (writer.checkpointed_seq + 1, writer.seq);
            tracing::warn!(
                first,
                last,
                "audit records recovered past the last checkpoint"
            );
            writer.append_batch(&[Entry {
                principal: format!("node:{node}"),
                role: "node".into(),
                action: "AuditRecovered".into(),
                purpose: format!(
                    "records {first}-{last} were found past the last checkpoint at start; signed from here"
                ),
                allowed: true,
                ..Entry::default()
            }])?;
        }
        writer.checkpoint()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let task = tokio::task::spawn_blocking(move || {
            let mut last_checkpoint = std::time::Instant::now();
            let runtime = tokio::runtime::Handle::current();
            loop {
                // Wait for work, or for the next checkpoint tick.
                let first = runtime
                    .block_on(async { tokio::time::timeout(CHECKPOINT_EVERY, rx.recv()).await });
                let mut appends = Vec::new();
                let mut checkpoint_waiters = Vec::new();
                let mut closed = false;
                match first {
                    Ok(Some(cmd)) => {
                        let mut push = |cmd| match cmd {
                            Cmd::Append(e, done) => appends.push((e, done)),
                            Cmd::Checkpoint(done) => checkpoint_waiters.push(done),
                        };
                        push(cmd);
                        while let Ok(cmd) = rx.try_recv() {
                            push(cmd);
                        }
                        // Gather: while requests keep arriving, wait a moment for more before
                        // paying for one fsync (bounded; a lone request waits one short pause).
                        for _ in 0..GATHER_ROUNDS {
                            std::thread::sleep(GATHER_PAUSE);
                            let mut more = false;
                            while let Ok(cmd) = rx.try_recv() {
                                push(cmd);
                                more = true;
                            }
                            if !more {
                                break;
                            }
                        }
                    }
                    Ok(None) => closed = true,
                    Err(_) => {}
                }
                if !appends.is_empty() {
                    let entries: Vec<Entry> = appends.iter().map(|(e, _)| (**e).clone()).collect();
                    match writer.append_batch(&entries) {
                        Ok(seqs) => {
                            for ((_, done), seq) in appends.into_iter().zip(seqs) {
                                let _ = done.send(Ok(seq));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "audit append failed; refusing the accesses it was for");
                            for (_, done) in appends {
                                let _ = done.send(Err(e.clone()));
                            }
                        }
                    }
                }
                if writer.last_prune.elapsed() >= PRUNE_EVERY
                    && let Err(e) = writer.prune()
                {
                    tracing::error!(error = %e, "audit pruning failed");
                }
                if closed
                    || !checkpoint_waiters.is_empty()
                    || last_checkpoint.elapsed() >= CHECKPOINT_EVERY
                {
                    let r = writer.checkpoint();
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "audit checkpoint failed");
                    }
                    last_checkpoint = std::time::Instant::now();
                    for done in checkpoint_waiters {
                        let _ = done.send(r.clone());
                    }
                }
                if closed {
                    return;
                }
            }
        });
        Ok((
            AuditLog {
                off: false,
                tx,
                live,
                dir: dir.to_owned(),
            },
            task,
        ))
    }

    /// Turns recording off, for measuring what audit costs. Only in builds with the
    /// `bench-switches` feature (benchmarks); shipped binaries cannot do this.
    #[cfg(feature = "bench-switches")]
    pub(crate) fn disable_for_benchmarks(&mut self) {
        tracing::warn!(
            "AUDIT IS OFF (DSM_BENCH_AUDIT_OFF=1): accesses are not recorded; benchmarks only"
        );
        self.off = true;
    }

    /// Appends one record and waits until it is durable; returns its sequence number.
    pub async fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        if self.off {
            return Ok(0);
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(Box::new(entry), done))
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Writes a signed checkpoint of the current head now; the last record it covers.
    pub async fn checkpoint(&self) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Checkpoint(done))
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Every record appended from now on, as its JSON line.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<String>> {
        self.live.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Records of the log in `dir` that match `keep`, oldest first, each with its line exactly as
/// stored (a sequential scan).
pub(crate) fn scan(
    dir: &Path,
    mut keep: impl FnMut(&Record) -> bool,
) -> Result<Vec<(Record, String)>, AuditError> {
    let mut out = Vec::new();
    for n in segments(dir)? {
        let f = std::fs::File::open(segment_path(dir, n)).map_err(io)?;
        for line in std::io::BufReader::new(f).split(b'\n') {
            let line = line.map_err(io)?;
            if let Ok(rec) = serde_json::from_slice::<Record>(&line)
                && keep(&rec)
            {
                out.push((rec, String::from_utf8_lossy(&line).into_owned()));
            }
        }
    }
    Ok(out)
}
