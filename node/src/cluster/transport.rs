//! The peer transport: mutually authenticated QUIC between mesh nodes (quinn on rustls/aws-lc-rs).
//!
//! - One endpoint per node (one UDP socket) serves peers and dials them. TLS 1.3 with the hybrid
//!   post-quantum key exchange preferred, client certificates required (built in `tls`).
//! - A peer is accepted only if its certificate names a node (`spiffe://<td>/node/<id>`) of this
//!   trust domain that is a member of the current layout; a dialled peer must be the node we meant.
//! - One long-lived connection per peer; one request per bidirectional stream, delimited by the
//!   stream's end. The absolute deadline travels in the request.
//! - Bounded in-flight requests per peer (a semaphore; waiting for a permit is the backpressure) and
//!   at most 256 concurrent streams per connection on the serving side.
//! - Certificates come from the node's live [`Trust`]: a rotated certificate or trust bundle is used
//!   from the next handshake on, and every request on an open connection re-checks the peer's
//!   certificate (revoked, expired, CA removed: the connection is closed).
//! - A peer that fails is retried with exponential backoff (100 ms doubling to 5 s); until then
//!   requests for it fail fast with `Unavailable` instead of hanging to their deadline, except
//!   that a retry due within 250 ms is waited for (a single blip costs a request milliseconds). A layout
//!   that adds a member (a node joining or rejoining) clears its backoff and cached connection
//!   ([`PeerTransport::forget_failures`], called by `Mesh::install`).

use crate::cluster::layout::Member;
use crate::cluster::link_filter::{LinkFilter, Verdict};
use crate::security::identity::Identity;
use crate::security::tls::{self, TlsError};
use crate::security::trust::Trust;
use mesh_proto::v1::{PeerRequest, PeerResponse};
use prost::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub const ALPN: &[u8] = b"dsm-peer/1";
/// Largest message accepted on a stream.
const MAX_MESSAGE: usize = 16 << 20;
const MAX_STREAMS: u32 = 256;
const MAX_IN_FLIGHT_PER_PEER: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_millis(750);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A peer whose next attempt is due within this is waited for instead of refused.
const BACKOFF_WAIT: Duration = Duration::from_millis(250);
/// QUIC application close code for a refused peer.
const REFUSED: u32 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer transport setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("node {node} is unreachable: {reason}")]
    Unavailable { node: String, reason: String },
    #[error("node {node} did not answer before the deadline")]
    Deadline { node: String },
    #[error("node {node} sent an unreadable response")]
    Protocol { node: String },
}

/// Handles requests arriving from peers. `from` is the verified node id of the caller.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(
        &self,
        from: String,
        req: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + '_>>;
}

/// Decides whether a verified node id may talk to us (membership of the current layout).
pub(crate) type Membership = Arc<dyn Fn(&str) -> bool + Send + Sync>;

struct PeerState {
    connection: Option<quinn::Connection>,
    /// The credentials generation the connection was dialled with: after a rotation new requests
    /// go over a fresh connection (presenting the new certificate) while the old one finishes
    /// its in-flight requests and closes when the last of them drops it.
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    in_flight: Arc<Semaphore>,
}

/// This node's QUIC endpoint and its connections to peers.
pub struct PeerTransport {
    endpoint: quinn::Endpoint,
    trust_domain: String,
    /// Re-checks open connections; `None` only for test endpoints with fixed TLS configs.
    trust: Option<Arc<Trust>>,
    peers: Mutex<HashMap<String, PeerState>>,
    /// Cuts or delays links in tests (`link_filter`); passes everything in shipped builds.
    filter: LinkFilter,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT.try_into().expect("3s is a valid idle timeout"),
        ));
    Arc::new(t)
}

/// The certificate chain a QUIC connection's peer presented.
fn peer_chain(
    conn: &quinn::Connection,
) -> Option<Box<Vec<rustls_pki_types::CertificateDer<'static>>>> {
    conn.peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()
}

/// The node identity a QUIC connection's peer proved.
pub(crate) fn peer_node(conn: &quinn::Connection) -> Option<Identity> {
    Identity::from_certificate(peer_chain(conn)?.first()?).ok()
}

impl PeerTransport {
    /// Binds the endpoint on `addr` with this node's live credentials.
    pub fn bind(
        addr: SocketAddr,
        trust: &Arc<Trust>,
        trust_domain: &str,
        node_id: &str,
    ) -> Result<PeerTransport, TransportError> {
        let mut transport = PeerTransport::bind_with(
            addr,
            tls::live_server_config(trust, &[ALPN])?,
            tls::live_client_config(trust, &[ALPN])?,
            trust_domain,
        )?;
        transport.trust = Some(trust.clone());
        transport.filter = LinkFilter::from_env(node_id);
        Ok(transport)
    }

    /// The generation of this node's credentials (0 for fixed test configs).
    fn generation(&self) -> u64 {
        self.trust
            .as_ref()
            .map_or(0, |t| t.current().status.generation)
    }

    /// Whether the peer of `conn` still holds an acceptable certificate (see [`Trust::admits`]).
    fn still_trusted(&self, conn: &quinn::Connection) -> Result<(), String> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let chain = peer_chain(conn).ok_or_else(|| "no peer certificate".to_owned())?;
        trust.admits(&chain)
    }

    /// Binds with explicit TLS configs (tests use this to present bad certificates on purpose).
    pub fn bind_with(
        addr: SocketAddr,
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        trust_domain: &str,
    ) -> Result<PeerTransport, TransportError> {
        let setup = |e: &dyn std::fmt::Display| TransportError::Setup(e.to_string());
        let server =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| setup(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport_config());
        let client =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| setup(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport_config());
        let mut endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|e| setup(&format!("cannot bind UDP {addr}: {e}")))?;
        endpoint.set_default_client_config(client);
        Ok(PeerTransport {
            endpoint,
            trust_domain: trust_domain.to_owned(),
            trust: None,
            peers: Mutex::new(HashMap::new()),
            // Test endpoints name no node of their own: nothing to filter.
            filter: LinkFilter::from_env(""),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerState>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what this node knew of the connections to `nodes`, so the next call dials them
    /// afresh: a layout that makes them members says they are (back) up. A backoff from when one
    /// was down would otherwise refuse requests for its partitions for up to [`BACKOFF_MAX`], and a
    /// connection cached from before it restarted would fail the first call (and start a backoff).
    pub fn forget_failures<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        let mut peers = self.state();
        for node in nodes {
            if let Some(s) = peers.get_mut(node) {
                s.failures = 0;
                s.retry_at = None;
                s.connection = None;
            }
        }
    }

    fn fail(&self, node: &str, reason: String) -> TransportError {
        tracing::debug!(peer = node, %reason, "peer call failed");
        let mut peers = self.state();
        if let Some(s) = peers.get_mut(node) {
            s.connection = None;
            let backoff = BACKOFF_START
                .saturating_mul(1 << s.failures.min(6))
                .min(BACKOFF_MAX);
            s.failures += 1;
            s.retry_at = Some(Instant::now() + backoff);
        }
        TransportError::Unavailable {
            node: node.to_owned(),
            reason,
        }
    }

    async fn connection(
        &self,
        peer: &Member,
        deadline: Instant,
    ) -> Result<quinn::Connection, TransportError> {
        let unavailable = |reason: String| TransportError::Unavailable {
            node: peer.node_id.clone(),
            reason,
        };
        let wait_until = {
            let mut peers = self.state();
            let s = peers
                .entry(peer.node_id.clone())
                .or_insert_with(|| PeerState {
                    connection: None,
                    generation: 0,
                    failures: 0,
                    retry_at: None,
                    in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER)),
                });
            let generation = self.generation();
            if let Some(c) = s
                .connection
                .as_ref()
                .filter(|c| c.close_reason().is_none() && s.generation == generation)
            {
                return Ok(c.clone());
            }
            if let Some(at) = s.retry_at.filter(|at| *at > Instant::now()) {
                // A retry due within a moment (and before the deadline) is waited for: a blip
                // (a restarted peer, a stale connection) then costs a request a few milliseconds,
                // not a failure. A peer that keeps failing backs off past this and fails fast.
                if at - Instant::now() > BACKOFF_WAIT || at >= deadline {
                    return Err(unavailable(format!(
                        "last attempt failed; retrying in {} ms",
                        (at - Instant::now()).as_millis()
                    )));
                }
                Some(at)
            } else {
                None
            }
        };
        if let Some(at) = wait_until {
            tokio::time::sleep_until(at.into()).await;
        }
        let dialled_with = self.generation();
        let addr = tokio::net::lookup_host(&peer.peer_addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                self.fail(&peer.node_id, format!("cannot resolve {}", peer.peer_addr))
            })?;
        let connecting = self
            .endpoint
            .connect(addr, &peer.node_id)
            .map_err(|e| self.fail(&peer.node_id, e.to_string()))?;
        let timeout = CONNECT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.fail(&peer.node_id, e.to_string())),
            Err(_) => return Err(self.fail(&peer.node_id, "connect timed out".into())),
        };
        // We dialled a node id; the certificate must say exactly that node, in our trust domain.
        match peer_node(&conn) {
            Some(Identity::Node {
                trust_domain,
                node_id,
            }) if trust_domain == self.trust_domain && node_id == peer.node_id => {}
            other => {
                conn.close(quinn::VarInt::from_u32(REFUSED), b"unexpected identity");
                let got = other.map_or_else(|| "no identity".to_owned(), |i| i.to_string());
                return Err(self.fail(&peer.node_id, format!("answered as {got}")));
            }
        }
        let mut peers = self.state();
        if let Some(s) = peers.get_mut(&peer.node_id) {
            s.connection = Some(conn.clone());
            s.generation = dialled_with;
            s.failures = 0;
            s.retry_at = None;
        }
        Ok(conn)
    }

    /// Sends `req` to `peer` and waits for its response until `deadline`.
    pub async fn call(
        &self,
        peer: &Member,
        mut req: PeerRequest,
        deadline: Instant,
    ) -> Result<PeerResponse, TransportError> {
        match self.filter.verdict(&peer.node_id) {
            Verdict::Pass => {}
            Verdict::Cut => {
                return Err(TransportError::Unavailable {
                    node: peer.node_id.clone(),
                    reason: "the link is cut by the test link filter".into(),
                });
            }
            Verdict::Delay(d) => tokio::time::sleep(d).await,
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        req.deadline_unix_ms = crate::domain::clock::now_ms() + remaining.as_millis() as i64;
        let conn = self.connection(peer, deadline).await?;
        if let Err(reason) = self.still_trusted(&conn) {
            conn.close(
                quinn::VarInt::from_u32(REFUSED),
                b"certificate no longer trusted",
            );
            return Err(self.fail(
                &peer.node_id,
                format!("its certificate is no longer trusted: {reason}"),
            ));
        }
        let permits = self.state().get(&peer.node_id).map(|s| s.in_flight.clone());
        let exchange = async {
            let _permit = match permits {
                Some(p) => Some(
                    p.acquire_owned()
                        .await
                        .map_err(|_| "shutting down".to_owned())?,
                ),
                None => None,
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&req.encode_to_vec())
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(MAX_MESSAGE)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(remaining, exchange).await {
            Err(_) => Err(TransportError::Deadline {
                node: peer.node_id.clone(),
            }),
            Ok(Err(reason)) => Err(self.fail(&peer.node_id, reason)),
            Ok(Ok(bytes)) => {
                PeerResponse::decode(bytes.as_slice()).map_err(|_| TransportError::Protocol {
                    node: peer.node_id.clone(),
                })
            }
        }
    }

    /// Serves peers until `shutdown`: verifies each connection's node identity and membership, then
    /// answers every stream with `handler`.
    pub fn serve(
        self: &Arc<Self>,
        handler: Arc<dyn PeerHandler>,
        membership: Membership,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    i = this.endpoint.accept() => match i { Some(i) => i, None => break },
                };
                let (this, handler, membership) =
                    (this.clone(), handler.clone(), membership.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "peer handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let from = match peer_node(&conn) {
                        Some(Identity::Node {
                            trust_domain,
                            node_id,
                        }) if trust_domain == this.trust_domain && membership(&node_id) => node_id,
                        other => {
                            let who =
                                other.map_or_else(|| "no identity".to_owned(), |i| i.to_string());
                            tracing::warn!(%remote, peer = %who, "refusing peer: not a node of the current layout");
                            conn.close(
                                quinn::VarInt::from_u32(REFUSED),
                                b"not a member of the current layout",
                            );
                            return;
                        }
                    };
                    let span = tracing::info_span!("peer", from = %from);
                    let _enter = span.enter();
                    tracing::debug!("peer connected");
                    drop(_enter);
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        // Membership is re-checked per request: a node removed by a newer layout
                        // loses its connection at its next request.
                        if !membership(&from) {
                            tracing::warn!(peer = %from, "closing a peer that left the layout");
                            conn.close(
                                quinn::VarInt::from_u32(REFUSED),
                                b"not a member of the current layout",
                            );
                            break;
                        }
                        // So is the certificate: revocation or a CA leaving the bundle takes
                        // effect on the next request, not at the next reconnect.
                        if let Err(reason) = this.still_trusted(&conn) {
                            tracing::warn!(peer = %from, %reason, "closing a peer whose certificate is no longer trusted");
                            conn.close(
                                quinn::VarInt::from_u32(REFUSED),
                                b"certificate no longer trusted",
                            );
                            break;
                        }
                        let (handler, from) = (handler.clone(), from.clone());
                        let verdict = this.filter.verdict(&from);
                        if verdict == Verdict::Cut {
                            // Behind a partition the request never arrives: no answer at all.
                            continue;
                        }
                        tokio::spawn(async move {
                            if let Verdict::Delay(d) = verdict {
                                tokio::time::sleep(d).await;
                            }
                            let Ok(bytes) = recv.read_to_end(MAX_MESSAGE).await else {
                                return;
                            };
                            let Ok(req) = PeerRequest::decode(bytes.as_slice()) else {
                                return;
                            };
                            let left = req
                                .deadline_unix_ms
                                .saturating_sub(crate::domain::clock::now_ms());
                            if left <= 0 {
                                return;
                            }
                            let answer = tokio::time::timeout(
                                Duration::from_millis(left as u64),
                                handler.handle(from, req),
                            )
                            .await;
                            if let Ok(resp) = answer {
                                let _ = send.write_all(&resp.encode_to_vec()).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        })
    }

    /// Closes every connection and the endpoint.
    pub async fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
