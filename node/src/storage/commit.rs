//! Group commit: writers share fsyncs instead of each paying for one.
//!
//! A writer applies its change to sled (in memory), then asks the committer for durability and
//! waits. The committer takes every request that has queued up, runs one `flush` (write + fsync),
//! and answers them all. While a flush runs, new requests queue and form the next batch, so under
//! load the number of fsyncs per second stays bounded while throughput grows with concurrency.
//! Because each writer's change was applied before it queued, the flush that answers it covers it.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), Arc<sled::Error>>>;

/// Upper bound on gathering rounds before a flush (each round is one `yield_now`).
const GATHER_ROUNDS: usize = 8;

/// Handle to the committer task. Cloning shares the same committer.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    requests: mpsc::UnboundedSender<Waiter>,
}

/// What the committer reports after each flush (for metrics).
pub trait FlushObserver: Send + Sync + 'static {
    fn flushed(&self, batch: usize, seconds: f64);
}

impl GroupCommit {
    /// Starts the committer on the current runtime. It ends when every handle is dropped; the
    /// returned task handle tells when.
    pub fn start(
        db: sled::Db,
        observer: Arc<dyn FlushObserver>,
    ) -> (GroupCommit, tokio::task::JoinHandle<()>) {
        // Unbounded is safe here: each waiter belongs to a request that already holds a concurrency
        // permit on the gateway, so the queue is bounded by the gateway's in-flight limit.
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Gather: let runnable writers reach the queue before paying for an fsync. Each
                // round yields once; stop when a round adds nobody (or after a few rounds), so a
                // lone writer pays one yield, not a timer tick.
                for _ in 0..GATHER_ROUNDS {
                    let before = batch.len();
                    tokio::task::yield_now().await;
                    while let Ok(next) = rx.try_recv() {
                        batch.push(next);
                    }
                    if batch.len() == before {
                        break;
                    }
                }
                let db = db.clone();
                let started = std::time::Instant::now();
                let result = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Arc::new(e)),
                    Err(_) => Err(Arc::new(sled::Error::ReportableBug(
                        "flush task panicked".into(),
                    ))),
                };
                observer.flushed(batch.len(), started.elapsed().as_secs_f64());
                for waiter in batch.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        (GroupCommit { requests: tx }, task)
    }

    /// Waits until everything this task wrote before calling is durable on disk.
    pub async fn durable(&self) -> Result<(), Arc<sled::Error>> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| Arc::new(sled::Error::ReportableBug("committer stopped".into())))?;
        rx.await
            .map_err(|_| Arc::new(sled::Error::ReportableBug("committer stopped".into())))?
    }
}

impl FlushObserver for crate::telemetry::metrics::Metrics {
    fn flushed(&self, batch: usize, seconds: f64) {
        self.flushes.inc();
        self.flush_batch.observe(batch as f64);
        self.flush_duration.observe(seconds);
    }
}
