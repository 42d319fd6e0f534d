//! Peer messages, handed to the component that registered for their kind.
//!
//! The transport delivers every `dsm.v1.PeerRequest` a verified member sends to one
//! [`Dispatch`]; each component registers a [`PeerService`] for the messages it owns when the node
//! starts (rebalance: pulls, holdings queries, layouts; the reveal ledger: charges; the gateway and
//! the audit service: forwarded calls of their own gRPC service). The dispatcher knows no handler,
//! so a new kind of message gets a room of its own instead of a branch here.
//!
//! Every handler runs detached from the caller: a peer that gives up (its deadline passed) must not
//! cut a layout change, a handoff or a write off from its audit record half-way. Failures become a
//! `PeerStatus` through the one mapping of [`Error`] to a gRPC status.

use crate::cluster::transport::PeerHandler;
use crate::error::Error;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{PeerRequest, PeerResponse, PeerStatus, Ping};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

/// The kinds of peer message, one per `PeerRequest.body` case a component can own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A partition pull (`HandoffPull`).
    Pull,
    /// Which partitions a node holds (`HandoffQuery`).
    Holdings,
    /// A signed layout passed on (`LayoutPush`).
    Layout,
    /// One reveal taken from a principal's allowance (`RevealCharge`).
    Charge,
    /// A client's request forwarded with its proof, for the gRPC service whose path starts with
    /// this prefix (for example `/dsm.v1.OrderGateway/`); the longest matching prefix wins, so
    /// an empty prefix catches what no service claims.
    Call(&'static str),
}

/// A component's handler for the peer messages it registered for.
pub(crate) trait PeerService: Send + Sync + 'static {
    /// Answers `body` from the verified member `from`.
    fn serve(
        self: Arc<Self>,
        from: String,
        body: Body,
    ) -> impl Future<Output = Result<PeerResult, Error>> + Send;
}

/// A [`PeerService`] as the registry holds it: its future boxed, so services of any type sit in
/// one table.
trait Registered: Send + Sync + 'static {
    fn serve_boxed(
        self: Arc<Self>,
        from: String,
        body: Body,
    ) -> Pin<Box<dyn Future<Output = Result<PeerResult, Error>> + Send>>;
}

impl<S: PeerService> Registered for S {
    fn serve_boxed(
        self: Arc<Self>,
        from: String,
        body: Body,
    ) -> Pin<Box<dyn Future<Output = Result<PeerResult, Error>> + Send>> {
        Box::pin(self.serve(from, body))
    }
}

type Handlers = Vec<(Kind, Arc<dyn Registered>)>;

/// The registry of peer-message handlers; the transport's one [`PeerHandler`].
#[derive(Default)]
pub(crate) struct Dispatch {
    handlers: RwLock<Handlers>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<Kind> = self.handlers().iter().map(|(k, _)| *k).collect();
        f.debug_struct("Dispatch").field("kinds", &kinds).finish()
    }
}

impl Dispatch {
    pub fn new() -> Dispatch {
        Dispatch::default()
    }

    fn handlers(&self) -> std::sync::RwLockReadGuard<'_, Handlers> {
        self.handlers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends messages of `kind` to `service` from now on.
    pub(crate) fn register<S: PeerService>(&self, kind: Kind, service: Arc<S>) {
        self.handlers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((kind, service));
    }

    /// The handler of a message, or why there is none.
    fn handler(&self, body: &Body) -> Result<Arc<dyn Registered>, Error> {
        let wanted = |kind: &Kind| match (kind, body) {
            (Kind::Pull, Body::Pull(_))
            | (Kind::Holdings, Body::Query(_))
            | (Kind::Layout, Body::Layout(_))
            | (Kind::Charge, Body::Charge(_)) => true,
            (Kind::Call(prefix), Body::Call(call)) => call.method.starts_with(prefix),
            _ => false,
        };
        // The most specific registration wins (a service's own prefix over a catch-all).
        let specificity = |kind: &Kind| match kind {
            Kind::Call(prefix) => prefix.len(),
            _ => 0,
        };
        self.handlers()
            .iter()
            .filter(|(kind, _)| wanted(kind))
            .max_by_key(|(kind, _)| specificity(kind))
            .map(|(_, service)| service.clone())
            .ok_or_else(|| match body {
                Body::Call(call) => {
                    Error::PermissionDenied(format!("method {} cannot be forwarded", call.method))
                }
                _ => Error::Unavailable("this node does not serve that peer message".into()),
            })
    }

    async fn answer(&self, from: String, body: Option<Body>) -> Result<PeerResult, Error> {
        let body = body.ok_or_else(|| Error::Unauthenticated("empty peer request".into()))?;
        if let Body::Ping(_) = body {
            return Ok(PeerResult::Pong(Ping {}));
        }
        let service = self.handler(&body)?;
        tokio::spawn(service.serve_boxed(from, body))
            .await
            .map_err(|_| {
                Error::Internal("the peer request handler failed; see the node's log".into())
            })?
    }
}

impl PeerHandler for Dispatch {
    fn handle(
        &self,
        from: String,
        req: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + '_>> {
        Box::pin(async move {
            let result = match self.answer(from, req.body).await {
                Ok(result) => result,
                Err(e) => {
                    let moved = matches!(e, Error::Moved(_));
                    let status = tonic::Status::from(e);
                    PeerResult::Status(PeerStatus {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        moved,
                    })
                }
            };
            PeerResponse {
                result: Some(result),
            }
        })
    }
}
