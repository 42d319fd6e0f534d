//! A node's lifecycle: build everything from a validated config, bind, serve, and on shutdown drain
//! in-flight requests and flush storage.
//!
//! One `CancellationToken` reaches every long-running task. `start` returns once the node is ready
//! (ports bound, store open, `/readyz` green) so callers and tests never guess with sleeps.

use crate::api::admin::AdminService;
use crate::api::audit::AuditService;
use crate::api::gateway::Gateway;
use crate::api::listener;
use crate::audit::log::{AuditLog, CheckpointSigner};
use crate::cluster::dispatch::Dispatch;
use crate::cluster::peer::PeerClient;
use crate::cluster::rebalance::Rebalance;
use crate::cluster::routing::Mesh;
use crate::cluster::transport::{PeerTransport, TransportError};
use crate::ops::config::Config;
use crate::ops::port::{self, OpsState};
use crate::security::crypto::{CryptoError, NodeKeys};
use crate::security::proof::ProofVerifier;
use crate::security::tls::{self, TlsError};
use crate::security::trust::{Trust, TrustError, TrustFiles};
use crate::storage::{StorageError, Store};
use crate::telemetry::metrics::Metrics;
use mesh_proto::v1::admin_server::AdminServer;
use mesh_proto::v1::audit_server::AuditServer;
use mesh_proto::v1::order_gateway_server::OrderGatewayServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node key: {0}")]
    Keys(#[from] CryptoError),
    #[error("store in the data directory: {0}")]
    Store(#[from] StorageError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS credentials: {0}")]
    Trust(#[from] TrustError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("peer transport: {0}")]
    Transport(#[from] TransportError),
    #[error("stored layout: {0}")]
    Layout(#[from] crate::cluster::layout::LayoutError),
    #[error("audit log: {0}")]
    Audit(String),
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    pub gateway_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    transport: Arc<PeerTransport>,
    peer_task: JoinHandle<()>,
    shutdown: CancellationToken,
    gateway_task: JoinHandle<()>,
    ops_task: JoinHandle<()>,
    ops_state: Arc<OpsState>,
    store: Arc<Store>,
    audit: AuditLog,
    audit_task: JoinHandle<()>,
    rebalance_task: JoinHandle<()>,
    trust_task: JoinHandle<()>,
    drain_timeout: std::time::Duration,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// What the first phase opens: the node's keys, metrics, store and live credentials.
struct Foundation {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    trust: Arc<Trust>,
}

/// The node's part of the mesh, built in the third phase.
struct Cluster {
    mesh: Arc<Mesh>,
    transport: Arc<PeerTransport>,
    peer_addr: SocketAddr,
    audit: AuditLog,
    audit_task: JoinHandle<()>,
    rebalance: Arc<Rebalance>,
}

/// Builds and starts a node, phase by phase: open what is on disk, bind the ports, join the mesh,
/// build the services and serve. Returns when it is ready to serve.
pub async fn start(config: &Config) -> Result<RunningNode, StartError> {
    let Foundation {
        metrics,
        store,
        trust,
    } = open(config)?;
    let ops_listener = bind("ops", config.ops_listen).await?;
    let gateway_listener = bind("gateway", config.gateway_listen).await?;
    let ops_addr = local_addr(&ops_listener, "ops", config.ops_listen)?;
    let gateway_addr = local_addr(&gateway_listener, "gateway", config.gateway_listen)?;

    let shutdown = CancellationToken::new();
    let ops_state = Arc::new(OpsState {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let ops_task = tokio::spawn(port::serve(
        ops_listener,
        ops_state.clone(),
        shutdown.clone(),
    ));

    let cluster = join_mesh(config, &store, &trust, &metrics).await?;
    let (mesh, transport, audit, rebalance) = (
        cluster.mesh,
        cluster.transport,
        cluster.audit,
        cluster.rebalance,
    );
    let rebalance_task = tokio::spawn(rebalance.clone().run(shutdown.clone()));
    let gateway = Gateway::new(
        store.clone(),
        audit.clone(),
        metrics.clone(),
        mesh.clone(),
        config.request_timeout,
        config.access.clone(),
        crate::domain::clock::Clock::system(),
        rebalance.clone(),
    );
    let admin = AdminService::new(
        mesh.clone(),
        rebalance.clone(),
        audit.clone(),
        trust.clone(),
    );
    let audit_service =
        AuditService::new(audit.clone(), mesh.clone(), store.clone(), trust.clone());
    // Each component answers its own peer messages (ARCHITECTURE.md, "Layers").
    let dispatch = Arc::new(Dispatch::new());
    rebalance.register(&dispatch);
    gateway.register(&dispatch);
    audit_service.register(&dispatch);
    let membership_view = mesh.clone();
    let peer_task = transport.serve(
        dispatch,
        Arc::new(move |node: &str| membership_view.is_member(node)),
        shutdown.clone(),
    );
    let trust_task = tokio::spawn(
        trust
            .clone()
            .watch(config.tls_reload_interval, shutdown.clone()),
    );
    let gateway_task = serve_gateway(
        config,
        gateway_listener,
        &trust,
        &metrics,
        Services {
            gateway,
            admin,
            audit: audit_service,
        },
        shutdown.clone(),
    )
    .await?;

    ops_state.ready.store(true, Ordering::Release);
    tracing::info!(node_id = %config.node_id, %gateway_addr, %ops_addr, "node ready");
    Ok(RunningNode {
        gateway_addr,
        ops_addr,
        peer_addr: cluster.peer_addr,
        transport,
        peer_task,
        shutdown,
        gateway_task,
        ops_task,
        ops_state,
        store,
        audit,
        audit_task: cluster.audit_task,
        rebalance_task,
        trust_task,
        drain_timeout: config.drain_timeout,
    })
}

fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Phase 1: the node key, the store in the data directory, and the live TLS credentials.
fn open(config: &Config) -> Result<Foundation, StartError> {
    let keys = Arc::new(NodeKeys::load(&config.key_file)?);
    let metrics = Arc::new(Metrics::new(&config.node_id));
    crate::durable_fs::create_dir_all(&config.data_dir)
        .map_err(|e| StorageError::Io(format!("creating the data directory: {e}")))?;
    let store = Arc::new(Store::open(&config.data_dir, keys, Some(metrics.clone()))?);
    // Live credentials: every TLS endpoint follows their reloads (rotation, revocation).
    let trust = Trust::load(
        TrustFiles {
            ca: config.tls_ca.clone(),
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
            crl: config.tls_crl.clone(),
            pushed_crl: config.data_dir.join("tls").join("crl.pem"),
        },
        crate::security::identity::Identity::Node {
            trust_domain: config.trust_domain.clone(),
            node_id: config.node_id.clone(),
        },
        Some(metrics.tls.clone()),
    )?;
    Ok(Foundation {
        metrics,
        store,
        trust,
    })
}

/// Phase 3: the stored layouts, moved on to the configured one if newer (the same rule as
/// `Admin/ApplyLayout`), the peer endpoint, the audit trail and the rebalancer.
async fn join_mesh(
    config: &Config,
    store: &Arc<Store>,
    trust: &Arc<Trust>,
    metrics: &Metrics,
) -> Result<Cluster, StartError> {
    let (layouts, pending) = crate::cluster::rebalance::initial_layouts(
        &config.node_id,
        store,
        config.control_public_key.as_ref(),
        config.layout_signed.as_ref(),
    )
    .await?;
    let transport = Arc::new(PeerTransport::bind(
        config.peer_listen,
        trust,
        &config.trust_domain,
        &config.node_id,
    )?);
    let peer_addr = transport.local_addr().map_err(|source| StartError::Bind {
        what: "peer",
        addr: config.peer_listen,
        source,
    })?;
    let mesh = Arc::new(Mesh::new(
        config.node_id.clone(),
        config.trust_domain.clone(),
        config.control_public_key.clone(),
        layouts,
        PeerClient::new(transport.clone()),
        ProofVerifier::new(trust.clone(), &config.node_id),
    ));
    // The audit trail, in the data directory, checkpoints signed with this node's key.
    let checkpoint_signer = CheckpointSigner::live(trust.clone()).map_err(StartError::Audit)?;
    let (audit, audit_task) = AuditLog::open(
        &config.data_dir.join("audit"),
        &config.node_id,
        checkpoint_signer,
        config.audit_retention,
    )
    .map_err(|e| StartError::Audit(e.to_string()))?;
    #[cfg(feature = "bench-switches")]
    let audit = {
        let mut audit = audit;
        if std::env::var("DSM_BENCH_AUDIT_OFF").is_ok_and(|v| v == "1") {
            audit.disable_for_benchmarks();
        }
        audit
    };
    let rebalance = Arc::new(Rebalance::new(
        mesh.clone(),
        store.clone(),
        pending,
        config.rebalance_rate,
        metrics.rebalance.clone(),
        Arc::new(audit.clone()),
    )?);
    Ok(Cluster {
        mesh,
        transport,
        peer_addr,
        audit,
        audit_task,
        rebalance,
    })
}

/// The gRPC services of the gateway port.
struct Services {
    gateway: Gateway,
    admin: AdminService,
    audit: AuditService,
}

/// Phase 5: health, reflection and the services on the gateway's TLS listener, every request
/// re-checked against the live trust.
async fn serve_gateway(
    config: &Config,
    listener: TcpListener,
    trust: &Arc<Trust>,
    metrics: &Arc<Metrics>,
    services: Services,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, StartError> {
    let server_tls = tls::live_server_config(trust, &[b"h2"])?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderGatewayServer<Gateway>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    // Every request on an open connection re-checks the client's certificate against the current
    // trust: a revoked certificate is refused on its next call, not at its next reconnect.
    let gate = trust.clone();
    let certificate_gate = tonic::service::InterceptorLayer::new(
        move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(info) = req.extensions().get::<listener::PeerInfo>()
                && let Err(reason) = gate.admits(&info.chain)
            {
                return Err(crate::error::Error::Unauthenticated(format!(
                    "the client certificate is no longer accepted: {reason}"
                ))
                .into());
            }
            Ok(req)
        },
    );
    let incoming = listener::incoming(
        listener,
        tokio_rustls::TlsAcceptor::from(server_tls),
        config.handshake_timeout,
        metrics.clone(),
        shutdown.clone(),
    );
    let router = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_concurrent_requests,
        ))
        .layer(certificate_gate)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(OrderGatewayServer::new(services.gateway))
        .add_service(AdminServer::new(services.admin))
        .add_service(AuditServer::new(services.audit));
    Ok(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gateway stopped with an error");
        }
    }))
}

impl RunningNode {
    /// Stops accepting, drains in-flight requests (up to the drain timeout) and flushes storage.
    pub async fn shutdown(self) {
        self.ops_state.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        if tokio::time::timeout(self.drain_timeout, self.gateway_task)
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; dropping the remaining requests");
        }
        let _ = self.ops_task.await;
        let _ = self.peer_task.await;
        let _ = self.rebalance_task.await;
        let _ = self.trust_task.await;
        self.transport.close().await;
        // A final signed checkpoint covers every record, so truncating the tail is detectable.
        if let Err(e) = self.audit.checkpoint().await {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
        drop(self.audit);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.audit_task).await;
        let flushed = match Arc::try_unwrap(self.store) {
            Ok(store) => store.close().await,
            // A request task still holds the store (drain timed out): flush what is there.
            Err(store) => store.flush(),
        };
        if let Err(e) = flushed {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!("node stopped");
    }
}
