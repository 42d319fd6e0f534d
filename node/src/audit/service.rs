//! `dsm.v1.Audit`: query and watch the audit trail, for `auditor` certificates only.
//!
//! A query through any gateway merges every member's trail: the node asks each peer with the
//! auditor's own client proof (so peers authorise the auditor, not the asking node), answers from
//! its local trail, and streams the union ordered by time. Queries are themselves audited.

use super::chain::Record;
use super::log::{self, AuditLog, Entry};
use crate::listener::PeerInfo;
use crate::mesh::Mesh;
use crate::policy::Role;
use crate::proof::PROOF_HEADER;
use crate::storage::{SEALED_NOTE, Store};
use mesh_proto::v1::audit_server::Audit;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    AuditQueryRequest, AuditRecord, AuditWatchRequest, ClientProof, ForwardedAuditRecords,
    ForwardedCall, PeerRequest,
};
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub const QUERY: &str = "/dsm.v1.Audit/Query";
pub const WATCH: &str = "/dsm.v1.Audit/Watch";
pub const MAX_RESULTS: u32 = 100_000;

#[derive(Debug, Clone)]
pub struct AuditService {
    log: AuditLog,
    mesh: Arc<Mesh>,
    /// Opens notes sealed under customers' data keys for the auditor.
    store: Arc<Store>,
}

/// A record as an auditor reads it: `line` exactly as stored (for hash checks), `note` opened if
/// it was sealed under a customer's key that still exists.
fn to_proto(r: Record, line: String, store: &Store) -> AuditRecord {
    let note = if r.note.starts_with(SEALED_NOTE) {
        store
            .open_note(&r.note, &r.customer)
            .unwrap_or_else(|| "(sealed; the customer's data key no longer exists)".into())
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
    pub fn new(log: AuditLog, mesh: Arc<Mesh>, store: Arc<Store>) -> AuditService {
        AuditService { log, mesh, store }
    }

    /// This node's records matching `q`, oldest first.
    pub fn local(&self, q: &AuditQueryRequest) -> Result<Vec<AuditRecord>, Status> {
        let limit = if q.limit == 0 {
            MAX_RESULTS
        } else {
            q.limit.min(MAX_RESULTS)
        } as usize;
        let dir = self.log.dir().to_owned();
        let mut out = Vec::new();
        // A sequential scan of files: off the async workers, so the gateway keeps serving.
        let found = tokio::task::block_in_place(|| log::scan(&dir, |r| matches(q, r)))
            .map_err(|e| Status::unavailable(e.to_string()))?;
        for (r, line) in found.into_iter().take(limit) {
            out.push(to_proto(r, line, &self.store));
        }
        Ok(out)
    }

    /// The identity behind a request on the TLS listener, which must be an auditor.
    fn auditor<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let id = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|i| i.identity.clone().ok())
            .ok_or_else(|| Status::unauthenticated("no usable client certificate"))?;
        if id.trust_domain() != self.mesh.trust_domain || id.role() != Some(Role::Auditor) {
            return Err(Status::permission_denied(format!(
                "role `{}` may not read the audit trail",
                id.role().map_or("node".into(), |r| r.to_string())
            )));
        }
        Ok(id.to_string())
    }

    /// Authorises an auditor and records the access (allowed or refused, with the caller's actual
    /// role) before anything is answered. Returns the auditor's identity.
    async fn admit<T>(&self, req: &Request<T>, action: &str) -> Result<String, Status> {
        let identity = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|i| i.identity.clone().ok());
        let (principal, role) = identity
            .as_ref()
            .map_or(("-".to_owned(), String::new()), |i| {
                (
                    i.to_string(),
                    i.role().map_or("node".into(), |r| r.to_string()),
                )
            });
        let verdict = self.auditor(req);
        let entry = Entry {
            principal: principal.clone(),
            role,
            action: action.into(),
            allowed: verdict.is_ok(),
            reason: verdict
                .as_ref()
                .err()
                .map(|s| crate::metrics::code_name(s.code()).to_owned())
                .unwrap_or_default(),
            ..Entry::default()
        };
        self.log.append(entry).await.map_err(|_| {
            Status::unavailable("the audit trail is unavailable, so the access was refused")
        })?;
        verdict.map(|_| principal)
    }

    /// Answers a query forwarded by a peer (already proof-verified as an auditor's): local records.
    pub fn forwarded(&self, request: &[u8]) -> Result<Vec<u8>, Status> {
        let q = AuditQueryRequest::decode(request)
            .map_err(|_| Status::invalid_argument("query does not decode"))?;
        Ok(ForwardedAuditRecords {
            records: self.local(&q)?,
        }
        .encode_to_vec())
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
        if !q.local_only
            && let Some(layout) = self.mesh.layout()
        {
            let header = req.metadata().get(PROOF_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                    Status::unauthenticated(format!("a mesh-wide query must carry the auditor's client proof ({PROOF_HEADER}); or set local_only"))
                })?;
            let (ts, nonce, sig) = crate::proof::parse_header(header)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            let chain = req
                .extensions()
                .get::<PeerInfo>()
                .map(|i| i.chain.to_vec())
                .unwrap_or_default();
            for m in layout
                .members
                .iter()
                .filter(|m| m.node_id != self.mesh.node_id)
            {
                let call = ForwardedCall {
                    method: QUERY.into(),
                    request: q.encode_to_vec(),
                    proof: Some(ClientProof {
                        chain: chain.clone(),
                        timestamp_unix_ms: ts,
                        nonce: nonce.clone(),
                        signature: sig.clone(),
                    }),
                };
                let answer = self
                    .mesh
                    .transport
                    .call(
                        m,
                        PeerRequest {
                            deadline_unix_ms: 0,
                            body: Some(Body::Call(call)),
                        },
                        Instant::now() + Duration::from_secs(10),
                    )
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "node {} did not answer the audit query: {e}",
                            m.node_id
                        ))
                    })?;
                match answer.result {
                    Some(PeerResult::Response(b)) => records.extend(
                        ForwardedAuditRecords::decode(b.as_slice())
                            .map_err(|_| Status::unavailable("unreadable answer"))?
                            .records,
                    ),
                    Some(PeerResult::Status(s)) => {
                        return Err(Status::new(
                            tonic::Code::from(s.code),
                            format!("node {}: {}", m.node_id, s.message),
                        ));
                    }
                    _ => {
                        return Err(Status::unavailable(format!(
                            "node {} sent no answer",
                            m.node_id
                        )));
                    }
                }
            }
            records.sort_by(|a, b| {
                (a.ts_unix_ms, &a.node, a.seq).cmp(&(b.ts_unix_ms, &b.node, b.seq))
            });
            let limit = if q.limit == 0 {
                MAX_RESULTS
            } else {
                q.limit.min(MAX_RESULTS)
            } as usize;
            records.truncate(limit);
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
        let w = req.into_inner();
        let q = AuditQueryRequest {
            principal: w.principal,
            role: w.role,
            action: w.action,
            decision: w.decision,
            ..Default::default()
        };
        let rx = self.log.subscribe();
        let store = self.store.clone();
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let q = q.clone();
            let store = store.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            if let Ok(r) = serde_json::from_str::<Record>(&line)
                                && matches(&q, &r)
                            {
                                return Some((Ok(to_proto(r, line.to_string(), &store)), rx));
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            return Some((
                                Err(Status::data_loss(format!(
                                    "the watcher fell behind and missed {n} records; query them"
                                ))),
                                rx,
                            ));
                        }
                        Err(_) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
