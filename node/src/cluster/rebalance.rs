//! Online rebalancing: how a layout change takes effect and how partitions move between nodes
//! while orders keep flowing.
//!
//! **Applying a layout** ([`Rebalance::apply`], the one path for `Admin/ApplyLayout`, a layout a
//! peer passes on, a layout carried by a pull, and the layout file at start-up): the layout must
//! verify against the control key and be exactly the next version, and this node must have
//! received every partition of the change before it (no second change starts while one is under
//! way). The node persists the new layout, the one it replaces and the partitions it gains (its
//! *pending* set) in one durable write, then routes by the new layout. Partitions it loses become
//! *leftovers*: copies it keeps until their new owner confirms it has them.
//!
//! **Handoff of one partition** (pull-based, per partition, no coordinator):
//! 1. The new owner N pulls it from its owner O under the previous layout ([`Rebalance::pull`]),
//!    at once when a request needs it and otherwise in the background under the rate limit.
//!    The pull carries N's signed layout; O installs it first if it is behind, so O has stopped
//!    admitting requests for the partition before it answers.
//! 2. O takes the partition's gate exclusively (waiting for requests it admitted earlier, so every
//!    acknowledged write is in the export), exports it (orders still sealed, customer data keys
//!    unwrapped for the transfer only, inside the peer TLS) and answers.
//! 3. N imports it in one atomic, durable batch (re-sealed and re-wrapped under its own keys), then
//!    durably marks it received, and only then serves it.
//! 4. O asks the owner of each leftover whether it holds it ([`Rebalance::shred_leftovers`]); once
//!    it does, O deletes its copy and with it the wrapped data keys.
//!
//! Every step is idempotent and its state is on disk (pending set, leftover data), so a `kill -9`
//! of either node at any point is repaired by restarting it: an import is a replace, a pull is
//! repeated until marked, a leftover is shredded only after the new owner has marked it.
//!
//! **Requests during a move** ([`Rebalance::admit`]): a request for a partition takes its gate
//! shared and checks that this node owns it and holds it; a partition still pending is pulled
//! first. A request that arrives at a node that no longer owns the partition fails with
//! [`Error::Moved`], which the gateway retries after routing again, within the request's deadline.

use crate::cluster::dispatch::{Kind, PeerService};
use crate::cluster::layout::{LayoutError, Member};
use crate::cluster::rebalance::journal::{Handoff, Journal, Step};
use crate::cluster::routing::{Mesh, Moving, Route};
use crate::domain::ids::{PARTITIONS, Partition};
use crate::error::Error;
use crate::storage::{SavedLayout, StorageError, Store};
use crate::telemetry::metrics::RebalanceMetrics;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    HandoffAnswer, HandoffPull, HandoffQuery, Holding, PartitionData, PartitionHolding, Ping,
    RebalanceStatus, SignedLayout,
};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;
/// How often the background task looks for work when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("the layout could not be persisted, so it was not applied ({0}); apply it again")]
    Storage(#[from] StorageError),
}

/// What a caller learns of a refused layout (the admin API and a peer passing a layout on alike).
impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Error {
        let message = e.to_string();
        match e {
            ApplyError::Storage(_) => Error::Unavailable(message),
            ApplyError::Layout(LayoutError::BadSignature) => Error::PermissionDenied(message),
            ApplyError::Layout(
                LayoutError::NotNewer { .. }
                | LayoutError::Skipped { .. }
                | LayoutError::InTransition { .. }
                | LayoutError::NoHistory { .. },
            ) => Error::FailedPrecondition(message),
            ApplyError::Layout(_) => Error::InvalidArgument(message),
        }
    }
}

/// This node's side of every rebalance.
#[derive(Debug)]
pub struct Rebalance {
    mesh: Arc<Mesh>,
    store: Arc<Store>,
    metrics: RebalanceMetrics,
    /// Serialises layout changes.
    applying: tokio::sync::Mutex<()>,
    /// Per partition: requests hold it shared, an export holds it exclusively.
    gates: Vec<Arc<RwLock<()>>>,
    /// Per partition: one pull at a time.
    pulls: Vec<tokio::sync::Mutex<()>>,
    throttle: Throttle,
    rate: u64,
    wake: tokio::sync::Notify,
    /// Where every export, import, shred and refused pull is recorded (the audit trail).
    journal: Arc<dyn Journal>,
}

fn moved(p: Partition, owner: &Member) -> Error {
    Error::Moved(format!(
        "partition {p} is served by node {} in this node's layout; retry",
        owner.node_id
    ))
}

impl Rebalance {
    /// Takes over the pending set from start-up; every partition held here but owned elsewhere is a
    /// leftover (found with one seek per partition).
    pub fn new(
        mesh: Arc<Mesh>,
        store: Arc<Store>,
        pending: Vec<Partition>,
        rate: u64,
        metrics: RebalanceMetrics,
        journal: Arc<dyn Journal>,
    ) -> Result<Rebalance, StorageError> {
        let leftover = match mesh.layout() {
            None => BTreeSet::new(),
            Some(l) => store
                .partitions_present()?
                .into_iter()
                .filter(|p| l.owner_of(*p).node_id != mesh.node_id)
                .collect(),
        };
        *mesh.moving() = Moving {
            pending: pending.into_iter().collect(),
            leftover,
            holding: BTreeSet::new(),
        };
        let rebalance = Rebalance {
            mesh,
            store,
            metrics,
            applying: tokio::sync::Mutex::new(()),
            gates: (0..PARTITIONS).map(|_| Arc::new(RwLock::new(()))).collect(),
            pulls: (0..PARTITIONS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            throttle: Throttle::new(rate),
            rate,
            wake: tokio::sync::Notify::new(),
            journal,
        };
        rebalance.publish();
        Ok(rebalance)
    }

    fn moving(&self) -> std::sync::MutexGuard<'_, Moving> {
        self.mesh.moving()
    }

    /// Registers this component's peer messages: pulls, holdings queries and layouts.
    pub(crate) fn register(self: &Arc<Self>, dispatch: &crate::cluster::dispatch::Dispatch) {
        for kind in [Kind::Pull, Kind::Holdings, Kind::Layout] {
            dispatch.register(kind, self.clone());
        }
    }

    fn is_pending(&self, p: Partition) -> bool {
        self.moving().pending.contains(&p)
    }

    fn gate(&self, p: Partition) -> Arc<RwLock<()>> {
        self.gates[usize::from(p.get())].clone()
    }

    fn publish(&self) {
        let m = self.moving();
        self.metrics.pending_partitions.set(m.pending.len() as i64);
        self.metrics
            .leftover_partitions
            .set(m.leftover.len() as i64);
    }

    /// Applies a signed layout (see the module docs). Re-applying the current layout is a no-op,
    /// so an interrupted `mesh-ctl layout apply` can simply be run again.
    pub async fn apply(&self, signed: &SignedLayout) -> Result<u64, ApplyError> {
        let _one = self.applying.lock().await;
        let next = self.mesh.verify(signed)?;
        let layouts = self.mesh.layouts();
        if let Some(l) = &layouts
            && l.signed == *signed
        {
            return Ok(next.version);
        }
        let current = layouts.as_ref().map(|l| l.current.clone());
        // Still moving here: partitions to receive, and copies to hand over or shred.
        let unfinished = {
            let m = self.moving();
            m.pending.len() + m.leftover.len()
        };
        let gained = plan(&self.mesh.node_id, current.as_deref(), &next, unfinished)?;
        let lost: Vec<Partition> = current
            .as_ref()
            .map(|c| {
                next.moves_from(c)
                    .filter(|p| c.owner_of(*p).node_id == self.mesh.node_id)
                    .collect()
            })
            .unwrap_or_default();
        self.store
            .save_layout(&SavedLayout {
                current: signed.encode_to_vec(),
                previous: layouts.as_ref().map(|l| l.signed.encode_to_vec()),
                pending: gained.clone(),
            })
            .await?;
        tracing::info!(
            version = next.version,
            gains = gained.len(),
            loses = lost.len(),
            "layout change"
        );
        {
            let mut m = self.moving();
            m.pending = gained.into_iter().collect();
            m.leftover.extend(lost.iter().copied());
            m.holding = lost.into_iter().collect();
        }
        self.publish();
        let version = next.version;
        self.mesh.install(Arc::new(next), signed.clone());
        self.wake.notify_one();
        Ok(version)
    }

    /// Passes the current layout on to every member of it and of the one before (best effort; a
    /// node that misses it gets it with the next pull or the next `mesh-ctl layout apply`).
    pub(crate) fn announce(self: &Arc<Self>) {
        let Some(layouts) = self.mesh.layouts() else {
            return;
        };
        let mut targets: BTreeMap<String, Member> = BTreeMap::new();
        for l in std::iter::once(&layouts.current).chain(layouts.previous.as_ref()) {
            for m in &l.members {
                if m.node_id != self.mesh.node_id {
                    targets.insert(m.node_id.clone(), m.clone());
                }
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let sends = targets.into_values().map(|m| {
                let (this, signed) = (this.clone(), layouts.signed.clone());
                async move {
                    if let Err(e) = this.mesh.peers.push_layout(&m, signed).await {
                        tracing::debug!(peer = %m.node_id, error = %e, "layout not passed on");
                    }
                }
            });
            futures::future::join_all(sends).await;
        });
    }

    /// Whether this node serves `p` now (see [`Mesh::route`]): it owns it and has it, or gave it
    /// away but still holds it.
    fn serves(&self, p: Partition) -> Result<(), Error> {
        match self.mesh.route(p, false) {
            Route::Serve => Ok(()),
            Route::Forward(owner) | Route::Relay(owner) => Err(moved(p, &owner)),
        }
    }

    /// Whether this node may serve partition `p` now, pulling it first if it is still on its way.
    pub async fn ready(&self, p: Partition) -> Result<(), Error> {
        if self.is_pending(p) {
            self.pull(p, false).await?;
        }
        self.serves(p)
    }

    /// Admits one request for partition `p`: the returned guard keeps the partition from being
    /// exported until the request is done.
    pub(crate) async fn admit(&self, p: Partition) -> Result<OwnedRwLockReadGuard<()>, Error> {
        loop {
            self.ready(p).await?;
            let guard = self.gate(p).read_owned().await;
            if self.is_pending(p) {
                continue;
            }
            self.serves(p)?;
            return Ok(guard);
        }
    }

    /// Receives pending partition `p` from its previous owner. `background` pulls respect the
    /// rate limit; a pull a request is waiting for only counts against it.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "rebalance.pull",
        skip_all,
        fields(
            dsm.partition = i64::from(p.get()),
            dsm.background = background,
            dsm.peer = tracing::field::Empty,
        )
    )]
    pub async fn pull(&self, p: Partition, background: bool) -> Result<(), Error> {
        if background {
            self.throttle.ready().await;
        }
        let _one = self.pulls[usize::from(p.get())].lock().await;
        if !self.is_pending(p) {
            return Ok(());
        }
        let Some(layouts) = self.mesh.layouts() else {
            return Ok(());
        };
        let Some(from) = layouts.previous.as_ref().map(|l| l.owner_of(p).clone()) else {
            return Err(Error::Unavailable(format!(
                "partition {p} is pending but this node has no previous layout"
            )));
        };
        tracing::Span::current().record("dsm.peer", from.node_id.as_str());
        let data = self
            .mesh
            .peers
            .pull(&from, p, layouts.signed.clone())
            .await
            .map_err(|e| {
                Error::Moved(format!(
                    "partition {p} is moving to this node from node {}, which did not hand it over \
                     ({e}); retry",
                    from.node_id
                ))
            })?;
        let bytes = data.encoded_len();
        let (export, spent) = from_wire(p, data)?;
        let stats = self.store.import_partition(&export, true).await?;
        drop(export);
        // Not served before it is on the record; an import is a replace, so a retry is harmless.
        self.journal
            .record(Handoff {
                step: Step::Imported,
                partition: p,
                peer: from.node_id.clone(),
                layout: layouts.current.version,
                detail: format!("{} customers, {} orders", stats.customers, stats.orders),
                refused: None,
            })
            .await?;
        // Before it is served here: the proofs spent on it there are spent here too.
        self.mesh.proofs.import_spent(p, spent);
        crate::fault::point_at("handoff-received", p.get());
        self.moving().pending.remove(&p);
        self.publish();
        self.throttle.charge(bytes);
        self.metrics.received_partitions.inc();
        self.metrics.received_orders.inc_by(stats.orders);
        self.metrics.received_bytes.inc_by(bytes as u64);
        tracing::info!(
            partition = p.get(),
            from = %from.node_id,
            customers = stats.customers,
            orders = stats.orders,
            bytes,
            "partition received"
        );
        Ok(())
    }

    /// Serves a pull from `from`, the partition's owner under the layout the pull carries.
    pub(crate) async fn serve_pull(
        &self,
        from: &str,
        pull: HandoffPull,
    ) -> Result<PartitionData, Error> {
        let p = u16::try_from(pull.partition)
            .ok()
            .and_then(Partition::new)
            .ok_or_else(|| Error::FailedPrecondition(format!("no partition {}", pull.partition)))?;
        let signed = pull.layout.ok_or_else(|| {
            Error::FailedPrecondition("a pull must carry the puller's layout".into())
        })?;
        let theirs = self
            .mesh
            .verify(&signed)
            .map_err(|e| Error::PermissionDenied(format!("the pull's layout is not valid: {e}")))?;
        if self
            .mesh
            .layout()
            .is_none_or(|mine| mine.version < theirs.version)
        {
            // Catch up first: from then on this node admits no request for the partition.
            match self.apply(&signed).await {
                Ok(_) => tracing::info!(version = theirs.version, "layout taken from a pull"),
                Err(e) => {
                    return Err(Error::Moved(format!(
                        "this node cannot take layout v{} yet: {e}",
                        theirs.version
                    )));
                }
            }
        }
        let named = theirs.version;
        if let Err(refusal) = self.may_pull(from, p, named) {
            let refused = crate::error::code_name(refusal.code());
            self.journal
                .record(Handoff {
                    step: Step::Refused,
                    partition: p,
                    peer: from.to_owned(),
                    layout: self.mesh.layout().map_or(0, |l| l.version),
                    detail: refusal.to_string(),
                    refused: Some(refused),
                })
                .await?;
            return Err(refusal);
        }
        if self.is_pending(p) {
            return Err(Error::Moved(format!(
                "partition {p} has not reached this node yet"
            )));
        }
        // Wait for the requests this node admitted, then admit none: from here on the new owner
        // serves the partition (once it has imported this export).
        let _frozen = self.gate(p).write_owned().await;
        let export = self.store.export_partition(p)?;
        // Nothing leaves this node before it is on the record.
        self.journal
            .record(Handoff {
                step: Step::Exported,
                partition: p,
                peer: from.to_owned(),
                layout: named,
                detail: format!(
                    "{} customers, {} orders",
                    export.customers.len(),
                    export.orders()
                ),
                refused: None,
            })
            .await?;
        self.moving().holding.remove(&p);
        crate::fault::point_at("handoff-exported", p.get());
        let data = to_wire(&export, self.mesh.proofs.export_spent(p));
        self.metrics.sent_bytes.inc_by(data.encoded_len() as u64);
        tracing::info!(
            partition = p.get(),
            to = from,
            orders = export.orders(),
            "partition sent"
        );
        Ok(data)
    }

    /// Whether `from` may pull `p` naming layout `named`: only the node that owns `p` in this node's
    /// current layout, naming that layout, from the node that owned it in the layout before. Any
    /// older signed layout a breached node kept would otherwise name it the owner of partitions
    /// long gone elsewhere.
    fn may_pull(&self, from: &str, p: Partition, named: u64) -> Result<(), Error> {
        let layouts = self.mesh.layouts().ok_or_else(|| {
            Error::FailedPrecondition("this node has no layout: it holds no partition".into())
        })?;
        let current = &layouts.current;
        if named != current.version {
            return Err(Error::PermissionDenied(format!(
                "a pull must name this node's current layout v{} (it named v{named})",
                current.version
            )));
        }
        if current.owner_of(p).node_id != from {
            return Err(Error::PermissionDenied(format!(
                "node {from} does not own partition {p} in layout v{named}"
            )));
        }
        match &layouts.previous {
            Some(prev) if prev.owner_of(p).node_id == self.mesh.node_id => Ok(()),
            _ => Err(Error::FailedPrecondition(format!(
                "partition {p} was not this node's before layout v{named}: it has nothing to hand over"
            ))),
        }
    }

    /// Whether this node holds the partitions asked about (see [`Holding`]).
    pub(crate) fn holdings(&self, query: &HandoffQuery) -> HandoffAnswer {
        let layouts = self.mesh.layouts();
        let holdings = query
            .partitions
            .iter()
            .map(|&raw| {
                let p = u16::try_from(raw).ok().and_then(Partition::new);
                let (holding, pending_from) = match (p, &layouts) {
                    (Some(p), Some(l)) if l.current.owner_of(p).node_id == self.mesh.node_id => {
                        if self.is_pending(p) {
                            let from = l
                                .previous
                                .as_ref()
                                .map(|prev| prev.owner_of(p).node_id.clone())
                                .unwrap_or_default();
                            (Holding::Pending, from)
                        } else {
                            (Holding::Held, String::new())
                        }
                    }
                    _ => (Holding::NotOwner, String::new()),
                };
                PartitionHolding {
                    partition: raw,
                    holding: holding as i32,
                    pending_from,
                }
            })
            .collect();
        HandoffAnswer { holdings }
    }

    /// Deletes the copies this node no longer owns whose owners confirm they hold them.
    pub(crate) async fn shred_leftovers(&self) {
        let Some(layout) = self.mesh.layout() else {
            return;
        };
        let leftover: Vec<Partition> = self.moving().leftover.iter().copied().collect();
        let mut by_owner: BTreeMap<String, (Member, Vec<u32>)> = BTreeMap::new();
        for p in leftover {
            let owner = layout.owner_of(p);
            if owner.node_id == self.mesh.node_id {
                // Owned here again: it is pending or held, not a leftover.
                self.moving().leftover.remove(&p);
                continue;
            }
            by_owner
                .entry(owner.node_id.clone())
                .or_insert_with(|| (owner.clone(), Vec::new()))
                .1
                .push(u32::from(p.get()));
        }
        for (owner, partitions) in by_owner.into_values() {
            let answer = match self.mesh.peers.holdings(&owner, partitions).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(owner = %owner.node_id, error = %e, "cannot confirm handoffs yet");
                    continue;
                }
            };
            for h in answer.holdings {
                let confirmed = matches!(Holding::try_from(h.holding), Ok(Holding::Held));
                let Some(p) = u16::try_from(h.partition).ok().and_then(Partition::new) else {
                    continue;
                };
                if confirmed && let Err(e) = self.shred(p, &owner.node_id, layout.version).await {
                    tracing::warn!(partition = p.get(), error = %e, "shredding a moved partition failed");
                }
            }
        }
        self.publish();
    }

    /// Deletes this node's copy of `p`, which `holder` confirmed it holds under layout `version`.
    /// It stays a leftover (and is deleted again, a no-op) until the deletion is on the record.
    async fn shred(&self, p: Partition, holder: &str, version: u64) -> Result<(), Error> {
        let _frozen = self.gate(p).write_owned().await;
        if self.mesh.owns(p) {
            return Ok(());
        }
        let records = self.store.drop_partition(p).await?;
        crate::fault::point_at("handoff-shredded", p.get());
        self.journal
            .record(Handoff {
                step: Step::Shredded,
                partition: p,
                peer: holder.to_owned(),
                layout: version,
                detail: format!("{records} records deleted"),
                refused: None,
            })
            .await?;
        self.moving().leftover.remove(&p);
        self.metrics.shredded_partitions.inc();
        tracing::info!(
            partition = p.get(),
            records,
            "moved partition shredded here"
        );
        Ok(())
    }

    /// Pulls every pending partition (throttled) and shreds confirmed leftovers, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            let pending: Vec<Partition> = self.moving().pending.iter().copied().collect();
            let mut unreachable = BTreeSet::new();
            for p in pending {
                if shutdown.is_cancelled() {
                    return;
                }
                let from = self
                    .mesh
                    .layouts()
                    .and_then(|l| l.previous.map(|prev| prev.owner_of(p).node_id.clone()));
                if from.as_ref().is_some_and(|f| unreachable.contains(f)) {
                    continue;
                }
                if let Err(e) = self.pull(p, true).await {
                    tracing::debug!(partition = p.get(), error = %e, "pull failed; will retry");
                    unreachable.extend(from);
                }
            }
            self.shred_leftovers().await;
        }
    }

    /// This node's rebalance progress (for `Admin/GetRebalance`).
    pub fn status(&self) -> RebalanceStatus {
        let layout = self.mesh.layout();
        let m = self.moving();
        RebalanceStatus {
            node_id: self.mesh.node_id.clone(),
            layout_version: layout.as_ref().map_or(0, |l| l.version),
            pending_partitions: m.pending.len() as u32,
            leftover_partitions: m.leftover.len() as u32,
            received_partitions: self.metrics.received_partitions.get(),
            received_orders: self.metrics.received_orders.get(),
            received_bytes: self.metrics.received_bytes.get(),
            shredded_partitions: self.metrics.shredded_partitions.get(),
            rate_limit_bytes_per_second: self.rate,
            member: layout.is_some_and(|l| l.is_member(&self.mesh.node_id)),
        }
    }
}

/// The handoff message for an export. Data keys are copied into it raw (see `TransferredCustomer`).
impl PeerService for Rebalance {
    async fn serve(self: Arc<Self>, from: String, body: Body) -> Result<PeerResult, Error> {
        match body {
            Body::Pull(pull) => Ok(PeerResult::Partition(self.serve_pull(&from, pull).await?)),
            Body::Query(query) => Ok(PeerResult::Holdings(self.holdings(&query))),
            Body::Layout(push) => {
                let signed = push
                    .layout
                    .ok_or_else(|| Error::InvalidArgument("layout: is required".into()))?;
                match self.apply(&signed).await {
                    Ok(_) | Err(ApplyError::Layout(LayoutError::NotNewer { .. })) => {
                        Ok(PeerResult::Pong(Ping {}))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(Error::Unavailable(
                "rebalance does not serve that message".into(),
            )),
        }
    }
}

pub mod journal;
mod plan;
mod throttle;
mod wire;

pub(crate) use plan::{initial_layouts, plan};
use throttle::Throttle;
use wire::{from_wire, to_wire};

#[cfg(test)]
mod tests;
