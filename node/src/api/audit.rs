//! `dsm.v1.Audit`: query and watch the audit trail, and sign its head on demand, for `auditor`
//! certificates only.
//!
//! A query through any gateway merges every member's trail: the node asks each peer with the
//! auditor's own client proof (so peers authorise the auditor, not the asking node), answers from
//! its local trail, and streams the union ordered by time. Queries are themselves audited.
//!
//! A watch is a long-lived stream: it re-checks the watcher's certificate against the live trust
//! every [`RECHECK`] and ends once it is revoked or expired, as the next request on the connection
//! would be refused (ARCHITECTURE.md, "The audit chain").

use crate::api::authz::{self, Action};
use crate::api::listener::PeerInfo;
use crate::audit::chain::Record;
use crate::audit::log::{self, AuditLog};
use crate::audit::recorder::{Access, Recorder};
use crate::cluster::dispatch::{Dispatch, Kind, PeerService};
use crate::cluster::routing::Mesh;
use crate::error::Error;
use crate::security::proof::MEMBER_PROOF_HEADER;
use crate::security::trust::Trust;
use crate::storage::{SEALED_NOTE, Store};
use mesh_proto::v1::audit_server::Audit;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    AuditCheckpointRequest, AuditCheckpointResponse, AuditQueryRequest, AuditRecord,
    AuditWatchRequest, ForwardedAuditRecords, ForwardedCall,
};
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub const QUERY: &str = "/dsm.v1.Audit/Query";
pub const WATCH: &str = "/dsm.v1.Audit/Watch";
pub const CHECKPOINT: &str = "/dsm.v1.Audit/Checkpoint";
/// How often an open watch re-checks its watcher's certificate.
pub(crate) const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Every audit method's path starts with this (the forwarded calls registered with `dispatch`).
const SERVICE_PREFIX: &str = "/dsm.v1.Audit/";
pub(crate) const MAX_RESULTS: u32 = 100_000;

#[derive(Debug, Clone)]
pub(crate) struct AuditService {
    /// The node's trail: read by queries, and where each query is itself recorded.
    recorder: Recorder,
    mesh: Arc<Mesh>,
    /// Opens notes sealed under customers' data keys for the auditor.
    store: Arc<Store>,
    /// The live trust an open watch re-checks its watcher against.
    trust: Arc<Trust>,
}

/// A record as an auditor reads it: `line` exactly as stored (for hash checks), `note` opened if
/// it was sealed under a customer's key that still exists.
fn to_proto(r: Record, line: String, store: &Store) -> AuditRecord {
    let note = if r.note.starts_with(SEALED_NOTE) {
        store
            .open_note(&r.note, &r.customer)
            .unwrap_or_else(|| "(sealed; it opens only on the node that wrote it)".into())
    } else {
        r.note
    };
    AuditRecord {
        node: r.node,
        seq: r.seq,
        ts_unix_ms: r.ts,
        principal: r.principal,
        role: r.role,
        action: r.action,
        customer: r.customer,
        order: r.order,
        purpose: r.purpose,
        fields: r.fields,
        decision: r.decision,
        reason: r.reason,
        note,
        prev: r.prev,
        line,
    }
}

/// Whether a record matches a query's filters.
pub fn matches(q: &AuditQueryRequest, r: &Record) -> bool {
    (q.from_unix_ms == 0 || r.ts >= q.from_unix_ms)
        && (q.to_unix_ms == 0 || r.ts <= q.to_unix_ms)
        && (q.principal.is_empty() || r.principal == q.principal)
        && (q.role.is_empty() || r.role == q.role)
        && (q.action.is_empty() || r.action == q.action)
        && (q.subject.is_empty() || r.customer == q.subject || r.order == q.subject)
        && (q.decision.is_empty() || r.decision == q.decision)
}

impl AuditService {
    pub fn new(
        log: AuditLog,
        mesh: Arc<Mesh>,
        store: Arc<Store>,
        trust: Arc<Trust>,
    ) -> AuditService {
        AuditService {
            recorder: Recorder::new(log),
            mesh,
            store,
            trust,
        }
    }

    /// Registers the audit calls other nodes forward (a mesh-wide query's part on this node).
    pub(crate) fn register(&self, dispatch: &Dispatch) {
        dispatch.register(Kind::Call(SERVICE_PREFIX), Arc::new(self.clone()));
    }

    /// This node's records matching `q`, oldest first.
    pub fn local(&self, q: &AuditQueryRequest) -> Result<Vec<AuditRecord>, Error> {
        let dir = self.recorder.log().dir().to_owned();
        // A sequential scan of files: off the async workers, so the gateway keeps serving.
        let found = tokio::task::block_in_place(|| log::scan(&dir, |r| matches(q, r)))
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(found
            .into_iter()
            .take(limit(q))
            .map(|(r, line)| to_proto(r, line, &self.store))
            .collect())
    }

    /// Authorises an auditor on this node's listener and records the access (allowed or refused,
    /// with the caller's actual role) before anything is answered.
    async fn admit<T>(&self, req: &Request<T>, action: &str) -> Result<(), Status> {
        let mut access = Access::default();
        let verdict = authz::admit(&self.mesh, req, Action::ReadAudit, &mut access);
        self.recorder
            .record(action, access, verdict.map(|_| ()))
            .await
            .map_err(Status::from)
    }

    /// Answers a query forwarded by a peer with this node's records, for the auditor whose proof
    /// it carries; recorded here like any access.
    async fn forwarded(&self, from: &str, call: ForwardedCall) -> Result<Vec<u8>, Error> {
        let mut access = Access::default();
        let result = async {
            if call.method != QUERY {
                return Err(Error::PermissionDenied(format!(
                    "method {} cannot be forwarded",
                    call.method
                )));
            }
            // Bound to a node: a member passing the call on gets nothing from the others. (The
            // proof check refuses a proof for another node; here, one for any node.)
            if call.proof.as_ref().is_some_and(|p| p.audience.is_empty()) {
                return Err(Error::Unauthenticated(format!(
                    "a forwarded audit query needs the auditor's proof for this node ({}); this \
                     one is for any node",
                    self.mesh.node_id
                )));
            }
            let identity = authz::proof_identity(&self.mesh, from, &call, None, &mut access)?;
            authz::authorize(&self.mesh.trust_domain, identity, Action::ReadAudit)?;
            let q = AuditQueryRequest::decode(call.request.as_slice())
                .map_err(|_| Error::InvalidArgument("query does not decode".into()))?;
            Ok(ForwardedAuditRecords {
                records: self.local(&q)?,
            }
            .encode_to_vec())
        }
        .await;
        let action = if call.method == QUERY {
            QUERY
        } else {
            "unknown-forwarded-method"
        };
        self.recorder.record(action, access, result).await
    }

    /// Every member's records matching `q` but this node's, each asked with the auditor's proof
    /// for that member (a proof one member received is refused by every other).
    async fn members(
        &self,
        req: &Request<AuditQueryRequest>,
        q: &AuditQueryRequest,
    ) -> Result<Vec<AuditRecord>, Error> {
        let Some(layout) = self.mesh.layout() else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        for m in layout
            .members
            .iter()
            .filter(|m| m.node_id != self.mesh.node_id)
        {
            let mut call = authz::forwarded_call(req, QUERY, Some(&m.node_id), || {
                Error::Unauthenticated(format!(
                    "a mesh-wide query must carry one client proof of the auditor per member, \
                     each naming it ({MEMBER_PROOF_HEADER}); none names node {}; or set local_only",
                    m.node_id
                ))
            })?;
            call.request = q.encode_to_vec();
            let answer = self.mesh.peers.audit_query(m, call).await?;
            records.extend(
                ForwardedAuditRecords::decode(answer.as_slice())
                    .map_err(|_| {
                        Error::Unavailable(format!("node {} sent an unreadable answer", m.node_id))
                    })?
                    .records,
            );
        }
        Ok(records)
    }
}

/// How many records a query may return.
fn limit(q: &AuditQueryRequest) -> usize {
    (if q.limit == 0 {
        MAX_RESULTS
    } else {
        q.limit.min(MAX_RESULTS)
    }) as usize
}

impl PeerService for AuditService {
    async fn serve(self: Arc<Self>, from: String, body: Body) -> Result<PeerResult, Error> {
        match body {
            Body::Call(call) => Ok(PeerResult::Response(self.forwarded(&from, call).await?)),
            _ => Err(Error::Unavailable(
                "the audit service does not serve that message".into(),
            )),
        }
    }
}

type RecordStream = Pin<Box<dyn futures::Stream<Item = Result<AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type QueryStream = RecordStream;

    async fn query(
        &self,
        req: Request<AuditQueryRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        self.admit(&req, QUERY).await?;
        let q = req.get_ref().clone();
        let mut records = self.local(&q)?;
        if !q.local_only {
            records.extend(self.members(&req, &q).await?);
            records.sort_by(|a, b| {
                (a.ts_unix_ms, &a.node, a.seq).cmp(&(b.ts_unix_ms, &b.node, b.seq))
            });
            records.truncate(limit(&q));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            records.into_iter().map(Ok),
        ))))
    }

    type WatchStream = RecordStream;

    async fn watch(
        &self,
        req: Request<AuditWatchRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        self.admit(&req, WATCH).await?;
        let chain = req
            .extensions()
            .get::<PeerInfo>()
            .map(|i| i.chain.clone())
            .unwrap_or_default();
        let w = req.into_inner();
        let q = AuditQueryRequest {
            principal: w.principal,
            role: w.role,
            action: w.action,
            decision: w.decision,
            ..Default::default()
        };
        let rx = self.recorder.log().subscribe();
        let (store, trust) = (self.store.clone(), self.trust.clone());
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = futures::stream::unfold(Some((rx, recheck)), move |state| {
            let (q, store, trust, chain) = (q.clone(), store.clone(), trust.clone(), chain.clone());
            async move {
                let (mut rx, mut recheck) = state?;
                loop {
                    let next = tokio::select! {
                        next = rx.recv() => next,
                        _ = recheck.tick() => {
                            if let Err(reason) = trust.admits(&chain) {
                                let end = Error::Unauthenticated(format!(
                                    "the client certificate is no longer accepted: {reason}; the watch ends"
                                ));
                                return Some((Err(Status::from(end)), None));
                            }
                            continue;
                        }
                    };
                    match next {
                        Ok(line) => {
                            if let Ok(r) = serde_json::from_str::<Record>(&line)
                                && matches(&q, &r)
                            {
                                let record = to_proto(r, line.to_string(), &store);
                                return Some((Ok(record), Some((rx, recheck))));
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            return Some((
                                Err(Status::from(Error::DataLoss(format!(
                                    "the watcher fell behind and missed {n} records; query them"
                                )))),
                                Some((rx, recheck)),
                            ));
                        }
                        Err(_) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn checkpoint(
        &self,
        req: Request<AuditCheckpointRequest>,
    ) -> Result<Response<AuditCheckpointResponse>, Status> {
        // Recorded first, so the checkpoint covers this call's own record too.
        self.admit(&req, CHECKPOINT).await?;
        let seq = self.recorder.log().checkpoint().await.map_err(|e| {
            Status::from(Error::Unavailable(format!(
                "the audit trail could not sign a checkpoint ({e}); retry"
            )))
        })?;
        Ok(Response::new(AuditCheckpointResponse {
            node: self.mesh.node_id.clone(),
            seq,
        }))
    }
}
