//! Group commit: one writer thread makes every write durable, many at a time.
//!
//! A request prepares its change as [`Writes`] (what to put and delete, in which keyspace) and hands
//! it to the writer with [`GroupCommit::write`], then waits. The writer thread takes every change
//! that has queued up, builds one fjall batch of them, commits it (journal and memtables, atomic),
//! persists the journal with `fdatasync` (`PersistMode::SyncData`), and only then answers every
//! waiter. While one fsync is in flight the next group queues, so under load the number of fsyncs
//! per second stays bounded while throughput grows with concurrency.
//!
//! Why a thread and not each request committing its own batch: fjall holds its journal lock for the
//! whole `persist`, so a request committing its own batch during a group's fsync would block a
//! runtime worker for that fsync. Here only the writer thread ever takes the journal lock.
//!
//! A change is visible to readers once its group is committed, just before that group's fsync;
//! callers hold their customer's lock stripe until the answer, so no second read-modify-write of
//! the same customer starts from a state that could still be lost. A reader that may have seen a
//! group not yet synced waits for that sync before it answers ([`GroupCommit::settled`]): no
//! answer ever shows data a power cut could take back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

/// Why a write was not made durable (the engine's error, shared by every waiter of the group).
pub type CommitError = Arc<fjall::Error>;

/// Which keyspace a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Space {
    /// Orders, customers' wrapped data keys, indexes (keys begin with the partition).
    Data,
    /// Node-level records: format, key check, layouts, the pending set.
    Meta,
}

/// One request's change: the last put or delete of a key wins, so a batch never holds two
/// operations on one key (in an LSM tree both would carry the same sequence number).
#[derive(Debug, Default)]
pub(crate) struct Writes {
    ops: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl Writes {
    pub(crate) fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.insert((space, key.into()), Some(value.into()));
    }

    pub(crate) fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.insert((space, key.into()), None);
    }
}

/// The store's keyspaces, as the writer needs them.
#[derive(Clone)]
pub(crate) struct Spaces {
    pub(crate) db: fjall::Database,
    pub(crate) data: fjall::Keyspace,
    pub(crate) meta: fjall::Keyspace,
}

impl Spaces {
    fn keyspace(&self, space: Space) -> &fjall::Keyspace {
        match space {
            Space::Data => &self.data,
            Space::Meta => &self.meta,
        }
    }
}

type Waiter = oneshot::Sender<Result<(), CommitError>>;

/// Handle to the writer thread. Cloning shares the same writer.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    /// Each job: a change (empty for "tell me when everything before is durable") and its waiter.
    jobs: mpsc::Sender<(Writes, Waiter)>,
    /// The number of the last group made visible (raised just before its batch is committed).
    visible: Arc<AtomicU64>,
    /// The number of the last group synced to disk (or given up on, if its commit failed).
    synced: watch::Receiver<u64>,
    /// Tests hold it to keep the writer between a group's commit and its sync.
    #[cfg(test)]
    pub(crate) sync_gate: Arc<std::sync::Mutex<()>>,
}

/// What the committer reports after each group (for metrics).
pub trait FlushObserver: Send + Sync + 'static {
    fn flushed(&self, batch: usize, seconds: f64);
}

impl GroupCommit {
    /// Starts the writer thread. It ends when every handle is dropped; join the returned handle to
    /// know it has stopped (its last act is a full `fsync` of the journal).
    pub(crate) fn start(
        spaces: Spaces,
        observer: Arc<dyn FlushObserver>,
    ) -> std::io::Result<(GroupCommit, std::thread::JoinHandle<()>)> {
        // Unbounded is safe here: each job belongs to a request that already holds a concurrency
        // permit on the gateway, so the queue is bounded by the gateway's in-flight limit.
        let (tx, rx) = mpsc::channel::<(Writes, Waiter)>();
        let visible = Arc::new(AtomicU64::new(0));
        let (synced_tx, synced) = watch::channel(0);
        let progress = Progress {
            visible: visible.clone(),
            synced: synced_tx,
            #[cfg(test)]
            sync_gate: Arc::default(),
        };
        let commit = GroupCommit {
            jobs: tx,
            visible,
            synced,
            #[cfg(test)]
            sync_gate: progress.sync_gate.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("dsm-store-writer".into())
            .spawn(move || writer(spaces, rx, observer, progress))?;
        Ok((commit, thread))
    }

    /// Commits `writes` in the next group and waits until the group is durable.
    pub(crate) async fn write(&self, writes: Writes) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((writes, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits until everything committed before this call is durable.
    pub(crate) async fn durable(&self) -> Result<(), CommitError> {
        self.write(Writes::default()).await
    }

    /// Waits until every group a read made before this call could have seen is on disk: free when
    /// nothing is in flight, one sync otherwise. Called after reading, before answering.
    pub(crate) async fn settled(&self) {
        let seen = self.visible.load(Ordering::SeqCst);
        let mut synced = self.synced.clone();
        // The writer only stops when every handle is gone, and this is one: the wait ends.
        let _ = synced.wait_for(|n| *n >= seen).await;
    }
}

/// The writer's progress, as readers see it (see [`GroupCommit::settled`]).
struct Progress {
    visible: Arc<AtomicU64>,
    synced: watch::Sender<u64>,
    #[cfg(test)]
    sync_gate: Arc<std::sync::Mutex<()>>,
}

fn stopped() -> CommitError {
    Arc::new(fjall::Error::Io(std::io::Error::other(
        "the store's writer has stopped",
    )))
}

/// The writer thread: gather, commit, fsync, answer; until every handle is gone.
fn writer(
    spaces: Spaces,
    jobs: mpsc::Receiver<(Writes, Waiter)>,
    observer: Arc<dyn FlushObserver>,
    progress: Progress,
) {
    let mut group = Vec::new();
    let mut number = 0;
    while let Ok(first) = jobs.recv() {
        group.push(first);
        // Everything that queued while the last group was being written joins this one.
        group.extend(jobs.try_iter());
        number += 1;
        let started = std::time::Instant::now();
        let result = commit_group(&spaces, &mut group, number, &progress).map_err(Arc::new);
        if let Err(e) = &result {
            // After a failed commit or fsync the state of the journal on disk is unknown, and what
            // the group made visible may be served by readers and never reach the disk (the
            // "fsyncgate" lesson). The only safe answer is PostgreSQL's: stop, and let the restart
            // recover from what the journal really holds. No waiter was told its write is durable.
            tracing::error!(error = %e, writes = group.len(), "store group commit failed; stopping the node");
            eprintln!("mesh-node: the store could not make a write durable ({e}); stopping");
            std::process::abort();
        }
        progress.synced.send_replace(number);
        observer.flushed(group.len(), started.elapsed().as_secs_f64());
        for (_, waiter) in group.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
    if let Err(e) = spaces.db.persist(fjall::PersistMode::SyncAll) {
        tracing::error!(error = %e, "final store sync failed");
    }
}

/// One atomic batch of every change in the group, then one `fdatasync` of the journal. Changes are
/// merged in arrival order first, so a key two requests wrote appears once, with the later value.
fn commit_group(
    spaces: &Spaces,
    group: &mut [(Writes, Waiter)],
    number: u64,
    progress: &Progress,
) -> fjall::Result<()> {
    let mut merged = BTreeMap::new();
    for (writes, _) in group.iter_mut() {
        merged.append(&mut writes.ops);
    }
    // Data keys start with their partition (big-endian), so an import names its partitions (a
    // group can merge several imports). Only the crash point needs them: shipped builds skip this.
    #[cfg(feature = "fault-injection")]
    let imported: std::collections::BTreeSet<u16> =
        if merged.contains_key(&(Space::Meta, b"pending".to_vec())) {
            merged
                .keys()
                .filter(|(space, key)| *space == Space::Data && key.len() >= 2)
                .map(|(_, key)| u16::from_be_bytes([key[0], key[1]]))
                .collect()
        } else {
            std::collections::BTreeSet::new()
        };
    if !merged.is_empty() {
        // Raised before the batch is visible, so a reader that sees it also sees this number.
        progress.visible.store(number, Ordering::SeqCst);
        let mut batch = spaces.db.batch();
        for ((space, key), value) in merged {
            let keyspace = spaces.keyspace(space);
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
        batch.commit()?;
        // A partition import (data with the pending set, in one batch): committed, not yet synced.
        #[cfg(feature = "fault-injection")]
        for p in imported {
            crate::fault::point_at("handoff-imported", p);
        }
    }
    #[cfg(test)]
    let _held = progress
        .sync_gate
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    spaces.db.persist(fjall::PersistMode::SyncData)
}

impl FlushObserver for crate::telemetry::metrics::Metrics {
    fn flushed(&self, batch: usize, seconds: f64) {
        self.flushes.inc();
        self.flush_batch.observe(batch as f64);
        self.flush_duration.observe(seconds);
    }
}
