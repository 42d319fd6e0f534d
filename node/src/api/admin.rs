//! `dsm.v1.Admin`: mesh operations on every node's gateway, for `admin` certificates only. It
//! installs signed layouts and reports the node's view of the mesh; it never returns order data.

use crate::api::authz::{self, Action};
use crate::audit::log::AuditLog;
use crate::audit::recorder::{Access, Recorder};
use crate::cluster::rebalance::Rebalance;
use crate::cluster::routing::Mesh;
use crate::error::Error;
use crate::security::trust::Trust;
use mesh_proto::v1::admin_server::Admin;
use mesh_proto::v1::{
    ApplyLayoutRequest, ApplyLayoutResponse, GetLayoutRequest, GetLayoutResponse,
    GetRebalanceRequest, GetStatusRequest, GetStatusResponse, MemberStatus, RebalanceStatus,
    ReloadTlsRequest, TlsStatus,
};
use std::future::Future;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    mesh: Arc<Mesh>,
    rebalance: Arc<Rebalance>,
    recorder: Recorder,
    trust: Arc<Trust>,
}

pub const APPLY_LAYOUT: &str = "/dsm.v1.Admin/ApplyLayout";
pub(crate) const GET_STATUS: &str = "/dsm.v1.Admin/GetStatus";
pub(crate) const GET_LAYOUT: &str = "/dsm.v1.Admin/GetLayout";
pub(crate) const GET_REBALANCE: &str = "/dsm.v1.Admin/GetRebalance";
pub(crate) const RELOAD_TLS: &str = "/dsm.v1.Admin/ReloadTls";

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
            recorder: Recorder::new(audit),
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

    /// Authorises an admin on this node's listener, runs `action` if allowed, and records it
    /// with `note(result)` as its summary (fail closed: no record, no result).
    async fn run<R, T, F>(
        &self,
        req: &Request<R>,
        path: &str,
        action: F,
        note: impl FnOnce(&T) -> String,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut access = Access::default();
        let result = match authz::admit(&self.mesh, req, Action::Administer, &mut access) {
            Ok(_) => action.await,
            Err(e) => Err(e),
        };
        if let Ok(value) = &result {
            access.purpose = note(value);
        }
        Ok(self.recorder.record(path, access, result).await?)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_layout(
        &self,
        req: Request<ApplyLayoutRequest>,
    ) -> Result<Response<ApplyLayoutResponse>, Status> {
        let signed = req.get_ref().layout.clone();
        let apply = async {
            let signed =
                signed.ok_or_else(|| Error::InvalidArgument("layout: is required".into()))?;
            // Verified, persisted, then installed (so a restart never comes back to an older
            // layout than the one acknowledged), then passed on to every other member.
            // Detached: a caller that gives up must not cut the change off between disk and memory.
            let rebalance = self.rebalance.clone();
            let version = tokio::spawn(async move { rebalance.apply(&signed).await })
                .await
                .map_err(|_| {
                    Error::Internal("applying the layout failed; see the node's log".into())
                })??;
            self.rebalance.announce();
            Ok(version)
        };
        let version = self
            .run(&req, APPLY_LAYOUT, apply, |v| format!("layout v{v}"))
            .await?;
        Ok(Response::new(ApplyLayoutResponse { version }))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.run(&req, GET_STATUS, async { Ok(()) }, |_| String::new())
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
            let reachable = m.node_id == self.mesh.node_id || self.mesh.peers.ping(m).await.is_ok();
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
        self.run(&req, GET_LAYOUT, async { Ok(()) }, |_| String::new())
            .await?;
        Ok(Response::new(GetLayoutResponse {
            layout: self.mesh.layouts().map(|l| l.signed),
        }))
    }

    async fn get_rebalance(
        &self,
        req: Request<GetRebalanceRequest>,
    ) -> Result<Response<RebalanceStatus>, Status> {
        self.run(&req, GET_REBALANCE, async { Ok(()) }, |_| String::new())
            .await?;
        Ok(Response::new(self.rebalance.status()))
    }

    async fn reload_tls(
        &self,
        req: Request<ReloadTlsRequest>,
    ) -> Result<Response<TlsStatus>, Status> {
        let crl_pem = req.get_ref().crl_pem.clone();
        let trust = self.trust.clone();
        let reload = async move {
            tokio::task::spawn_blocking(move || {
                if crl_pem.is_empty() {
                    trust.reload()
                } else {
                    trust.install_crls(crl_pem.as_bytes())
                }
            })
            .await
            .map_err(|_| Error::Internal("reloading failed; see the node's log".into()))?
            .map_err(|e| Error::FailedPrecondition(e.to_string()))
        };
        let generation = || self.trust.current().status.generation;
        let changed = self
            .run(&req, RELOAD_TLS, reload, |_| {
                format!("tls generation {}", generation())
            })
            .await?;
        Ok(Response::new(self.tls_status(changed)))
    }
}
