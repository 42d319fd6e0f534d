//! `dsm.v1.Admin`: mesh operations on every node's gateway, for `admin` certificates only. It
//! installs signed layouts and reports the node's view of the mesh; it never returns order data.

use crate::audit::log::{AuditLog, Entry};
use crate::layout::LayoutError;
use crate::listener::PeerInfo;
use crate::mesh::Mesh;
use crate::policy::Role;
use crate::rebalance::{ApplyError, Rebalance};
use crate::trust::Trust;
use mesh_proto::v1::admin_server::Admin;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::{
    ApplyLayoutRequest, ApplyLayoutResponse, GetLayoutRequest, GetLayoutResponse,
    GetRebalanceRequest, GetStatusRequest, GetStatusResponse, MemberStatus, PeerRequest, Ping,
    RebalanceStatus, ReloadTlsRequest, TlsStatus,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct AdminService {
    mesh: Arc<Mesh>,
    rebalance: Arc<Rebalance>,
    audit: AuditLog,
    trust: Arc<Trust>,
}

pub const APPLY_LAYOUT: &str = "/dsm.v1.Admin/ApplyLayout";
pub const GET_STATUS: &str = "/dsm.v1.Admin/GetStatus";
pub const GET_LAYOUT: &str = "/dsm.v1.Admin/GetLayout";
pub const GET_REBALANCE: &str = "/dsm.v1.Admin/GetRebalance";
pub const RELOAD_TLS: &str = "/dsm.v1.Admin/ReloadTls";

impl AdminService {
    pub fn new(
        mesh: Arc<Mesh>,
        rebalance: Arc<Rebalance>,
        audit: AuditLog,
        trust: Arc<Trust>,
    ) -> AdminService {
        AdminService {
            mesh,
            rebalance,
            audit,
            trust,
        }
    }

    fn tls_status(&self, changed: bool) -> TlsStatus {
        let s = self.trust.current().status.clone();
        TlsStatus {
            generation: s.generation,
            cert_serial: s.cert_serial,
            cert_not_after_unix: s.cert_not_after,
            ca_not_after_unix: s.ca_not_after,
            trusted_cas: s.trusted_cas as u32,
            revoked: s.revoked as u32,
            changed,
            last_error: self.trust.last_error(),
        }
    }

    /// Records an administrative action (fail closed: no record, no action result).
    async fn record<T>(
        &self,
        principal: &str,
        role: &str,
        action: &str,
        note: String,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let entry = Entry {
            principal: principal.to_owned(),
            role: role.to_owned(),
            action: action.to_owned(),
            purpose: note,
            allowed: result.is_ok(),
            reason: result
                .as_ref()
                .err()
                .map(|s| crate::metrics::code_name(s.code()).to_owned())
                .unwrap_or_default(),
            ..Entry::default()
        };
        match self.audit.append(entry).await {
            Ok(_) => result,
            Err(_) => Err(Status::unavailable(
                "the audit trail is unavailable, so the action was refused",
            )),
        }
    }

    /// The admin behind a request, or why not; with the caller's identity and role for the record.
    fn authorize<T>(&self, req: &Request<T>) -> (String, String, Result<(), Status>) {
        let Some(identity) = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|i| i.identity.clone().ok())
        else {
            return (
                "-".into(),
                String::new(),
                Err(Status::unauthenticated("no usable client certificate")),
            );
        };
        let (who, role) = (
            identity.to_string(),
            identity
                .role()
                .map_or_else(|| "node".to_owned(), |r| r.to_string()),
        );
        if identity.trust_domain() != self.mesh.trust_domain || identity.role() != Some(Role::Admin)
        {
            return (
                who,
                role,
                Err(Status::permission_denied(format!(
                    "{identity} is not an admin of this mesh"
                ))),
            );
        }
        (who, role, Ok(()))
    }
}

fn layout_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Storage(_) => Status::unavailable(e.to_string()),
        ApplyError::Layout(LayoutError::BadSignature) => Status::permission_denied(e.to_string()),
        ApplyError::Layout(
            LayoutError::NotNewer { .. }
            | LayoutError::Skipped { .. }
            | LayoutError::InTransition { .. }
            | LayoutError::NoHistory { .. },
        ) => Status::failed_precondition(e.to_string()),
        ApplyError::Layout(_) => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_layout(
        &self,
        req: Request<ApplyLayoutRequest>,
    ) -> Result<Response<ApplyLayoutResponse>, Status> {
        let (who, role, allowed) = self.authorize(&req);
        let signed = req.into_inner().layout;
        let result = async {
            allowed?;
            let signed = signed.ok_or_else(|| Status::invalid_argument("layout: is required"))?;
            // Verified, persisted, then installed (so a restart never comes back to an older
            // layout than the one acknowledged), then passed on to every other member.
            // Detached: a caller that gives up must not cut the change off between disk and memory.
            let rebalance = self.rebalance.clone();
            let version = tokio::spawn(async move { rebalance.apply(&signed).await })
                .await
                .map_err(|_| Status::internal("applying the layout failed; see the node's log"))?
                .map_err(layout_status)?;
            self.rebalance.announce();
            Ok(version)
        }
        .await;
        let note = result
            .as_ref()
            .map_or_else(|_| String::new(), |v| format!("layout v{v}"));
        let version = self.record(&who, &role, APPLY_LAYOUT, note, result).await?;
        Ok(Response::new(ApplyLayoutResponse { version }))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let (who, role, allowed) = self.authorize(&req);
        self.record(&who, &role, GET_STATUS, String::new(), allowed)
            .await?;
        let Some(layout) = self.mesh.layout() else {
            return Ok(Response::new(GetStatusResponse {
                node_id: self.mesh.node_id.clone(),
                layout_version: 0,
                members: Vec::new(),
                tls: Some(self.tls_status(false)),
            }));
        };
        let loads = layout.loads();
        let mut members = Vec::new();
        for m in &layout.members {
            let reachable = m.node_id == self.mesh.node_id
                || self
                    .mesh
                    .transport
                    .call(
                        m,
                        PeerRequest {
                            deadline_unix_ms: 0,
                            body: Some(Body::Ping(Ping {})),
                        },
                        Instant::now() + Duration::from_secs(1),
                    )
                    .await
                    .is_ok();
            members.push(MemberStatus {
                node_id: m.node_id.clone(),
                gateway_addr: m.gateway_addr.clone(),
                peer_addr: m.peer_addr.clone(),
                partitions: loads.get(&m.node_id).copied().unwrap_or(0) as u32,
                reachable,
            });
        }
        Ok(Response::new(GetStatusResponse {
            node_id: self.mesh.node_id.clone(),
            layout_version: layout.version,
            members,
            tls: Some(self.tls_status(false)),
        }))
    }

    async fn get_layout(
        &self,
        req: Request<GetLayoutRequest>,
    ) -> Result<Response<GetLayoutResponse>, Status> {
        let (who, role, allowed) = self.authorize(&req);
        self.record(&who, &role, GET_LAYOUT, String::new(), allowed)
            .await?;
        Ok(Response::new(GetLayoutResponse {
            layout: self.mesh.layouts().map(|l| l.signed),
        }))
    }

    async fn get_rebalance(
        &self,
        req: Request<GetRebalanceRequest>,
    ) -> Result<Response<RebalanceStatus>, Status> {
        let (who, role, allowed) = self.authorize(&req);
        self.record(&who, &role, GET_REBALANCE, String::new(), allowed)
            .await?;
        Ok(Response::new(self.rebalance.status()))
    }

    async fn reload_tls(
        &self,
        req: Request<ReloadTlsRequest>,
    ) -> Result<Response<TlsStatus>, Status> {
        let (who, role, allowed) = self.authorize(&req);
        let crl_pem = req.into_inner().crl_pem;
        let result = async {
            allowed?;
            let trust = self.trust.clone();
            tokio::task::spawn_blocking(move || {
                if crl_pem.is_empty() {
                    trust.reload()
                } else {
                    trust.install_crls(crl_pem.as_bytes())
                }
            })
            .await
            .map_err(|_| Status::internal("reloading failed; see the node's log"))?
            .map_err(|e| Status::failed_precondition(e.to_string()))
        }
        .await;
        let note = match &result {
            Ok(_) => format!("tls generation {}", self.trust.current().status.generation),
            Err(_) => String::new(),
        };
        let changed = self.record(&who, &role, RELOAD_TLS, note, result).await?;
        Ok(Response::new(self.tls_status(changed)))
    }
}
