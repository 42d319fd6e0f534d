//! The public gRPC API, `dsm.v1.OrderGateway`, and its mesh routing.
//!
//! Every request: authenticate the caller from its TLS certificate and authorise it (`authz`: a
//! role that sees no buyer field is refused a request that carries or asks for one); find the
//! partition it touches and ask the one routing answer (`cluster::routing`) where it is served;
//! serve it here (validate, touch storage, project the answer for the role), or forward it in one
//! hop with the client's end-to-end proof and pass the answer back unchanged. The owner authorises
//! against the identity in the proof, never against the forwarding node. The node that serves a
//! request keeps its one audit record, durable before the answer leaves (`audit::recorder`).
//! ARCHITECTURE.md, "The life of a request", walks one forwarded GetOrder through this file.
//!
//! Each method is one [`Call`] (in `calls`): its types, its routing key, the buyer fields its
//! request carries, and its handler on the owner. Routing, forwarding, auditing and metrics are
//! written once, here.

mod calls;

use crate::access::policy::{Field, Method};
use crate::access::projection::At;
use crate::access::windows::{AccessRules, RevealLimiter};
use crate::api::authz::{self, Action, Caller};
use crate::api::ledger::RevealLedger;
use crate::audit::log::AuditLog;
use crate::audit::recorder::{Access, Recorder};
use crate::cluster::dispatch::{Dispatch, Kind, PeerService};
use crate::cluster::layout::Member;
use crate::cluster::rebalance::Rebalance;
use crate::cluster::routing::{Mesh, Route};
use crate::domain::clock::Clock;
use crate::domain::ids::{OrderId, Partition};
use crate::error::Error;
use crate::security::proof::PROOF_HEADER;
use crate::storage::Store;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::{self, Hop};
use calls::{Create, Get, Label, List, Resolve, Reveal, Update};
use mesh_proto::v1::order_gateway_server::OrderGateway;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    CreateOrderRequest, CreateOrderResponse, ForwardedCall, GetOrderRequest, GetOrderResponse,
    GetShippingLabelRequest, GetShippingLabelResponse, ListCustomerOrdersRequest,
    ListCustomerOrdersResponse, Order, ResolveContactHandleRequest, ResolveContactHandleResponse,
    RevealFieldRequest, RevealFieldResponse, UpdateOrderStatusRequest, UpdateOrderStatusResponse,
};
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedRwLockReadGuard;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

pub const CREATE_ORDER: &str = Method::CreateOrder.path();
pub const GET_ORDER: &str = Method::GetOrder.path();
pub const UPDATE_ORDER_STATUS: &str = Method::UpdateOrderStatus.path();
pub const LIST_CUSTOMER_ORDERS: &str = Method::ListCustomerOrders.path();
pub const GET_SHIPPING_LABEL: &str = Method::GetShippingLabel.path();
pub const REVEAL_FIELD: &str = Method::RevealField.path();
pub const RESOLVE_CONTACT_HANDLE: &str = Method::ResolveContactHandle.path();
/// Every gateway method's path starts with this (the forwarded calls registered with `dispatch`).
const SERVICE_PREFIX: &str = "/dsm.v1.OrderGateway/";

/// The gateway service of one node; also answers requests forwarded by peers.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    store: Arc<Store>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    mesh: Arc<Mesh>,
    /// Upper bound on a forwarded request when the client sent no deadline.
    forward_timeout: Duration,
    rules: Arc<AccessRules>,
    /// Each principal's reveal allowance, mesh-wide.
    ledger: Arc<RevealLedger>,
    clock: Clock,
    /// Admits requests to partitions in motion (and pulls one a request needs).
    rebalance: Arc<Rebalance>,
}

/// The client's deadline from the `grpc-timeout` header, if any.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One gateway method, as the routing, forwarding and audit code sees it.
trait Call: Send + 'static {
    const METHOD: Method;
    /// Whether the method writes: its answer is then what its own durable write holds (its
    /// customer's stripe is held until the write is on disk), and it waits for nobody else's.
    const WRITES: bool = false;
    type Req: Message + Default + Clone + Send + Sync + 'static;
    /// The gRPC answer (for the streaming list: all of it, streamed by the service).
    type Resp: Message + Default + Send + 'static;
    /// The partition the request touches, or `None` if its key is malformed (then it is handled,
    /// and refused, locally).
    fn partition(req: &Self::Req) -> Option<Partition>;
    /// The buyer fields the request carries or asks for.
    fn buyer_fields(req: &Self::Req) -> Vec<Field>;
    /// The order the request names, for its audit record (before anything else is checked).
    fn order_id(req: &Self::Req) -> Option<&str>;
    /// The request's purpose (its reason code, for a reveal), or `None` for a method that shows
    /// the caller nothing it did not send (CreateOrder). Checked before the handler runs.
    fn purpose(req: &Self::Req) -> Option<&str>;
    /// Handles the request on the owner node, filling in what it touched.
    fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> impl Future<Output = Result<Self::Resp, Error>> + Send;
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        mesh: Arc<Mesh>,
        forward_timeout: Duration,
        rules: AccessRules,
        clock: Clock,
        rebalance: Arc<Rebalance>,
    ) -> Gateway {
        let limiter = RevealLimiter::new(rules.reveal_limit, rules.reveal_window);
        let ceiling = RevealLimiter::new(rules.reveal_limit, rules.reveal_window);
        let ledger = Arc::new(RevealLedger::new(
            mesh.clone(),
            limiter,
            ceiling,
            clock.clone(),
            forward_timeout,
        ));
        Gateway {
            store,
            recorder: Recorder::new(audit),
            metrics,
            mesh,
            forward_timeout,
            rules: Arc::new(rules),
            ledger,
            clock,
            rebalance,
        }
    }

    /// Registers the peer messages the gateway owns: forwarded gateway calls (and every forwarded
    /// call no other service claims, refused and recorded), and the reveal ledger's charges.
    pub(crate) fn register(&self, dispatch: &Dispatch) {
        dispatch.register(Kind::Call(SERVICE_PREFIX), Arc::new(self.clone()));
        // Any other forwarded method is refused here, and the refusal recorded (as
        // `unknown-forwarded-method`): a member cannot probe without leaving a trace.
        dispatch.register(Kind::Call(""), Arc::new(self.clone()));
        self.ledger.register(dispatch);
    }

    fn at(&self) -> At {
        At {
            now: self.clock.now(),
            grace: self.rules.contact_grace,
        }
    }

    /// Checks and records a read's purpose; roles configured to need one are refused without it.
    fn purpose(&self, caller: &Caller, purpose: &str, access: &mut Access) -> Result<(), Error> {
        crate::domain::validate::purpose(purpose)?;
        if purpose.is_empty() && self.rules.requires_purpose(caller.role) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` must state a purpose (the `purpose` field, for example `ndr-callback`)",
                caller.role
            )));
        }
        access.purpose = purpose.to_owned();
        Ok(())
    }

    /// Runs one request inside a span, counting and timing it. Spans carry the method and the
    /// caller's certificate identity, never request contents; the exported request span (see
    /// `telemetry::trace`) carries no identity either. `forwarded_by` names the node that
    /// forwarded it.
    async fn observe<T, F>(
        &self,
        method: Method,
        forwarded_by: Option<&str>,
        work: F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("gateway", method = method.as_str());
        let trace = trace::request(method, forwarded_by);
        let result = work
            .instrument(trace.clone())
            .instrument(span.clone())
            .await;
        let code = result
            .as_ref()
            .map_or_else(Error::code, |_| tonic::Code::Ok);
        trace::finish_request(&trace, code);
        self.metrics
            .observe_request(method.as_str(), code, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            span.in_scope(|| tracing::debug!(code = ?e.code(), "request refused"));
        }
        result
    }

    /// Sends a request to `to`, which serves partition `p`, with the client's proof and chain.
    async fn forward<Req: Message, Resp: Message + Default>(
        &self,
        req: &Request<Req>,
        path: &str,
        to: &Member,
        p: Partition,
    ) -> Result<Resp, Error> {
        let call = authz::forwarded_call(req, path, None, || {
            Error::Unauthenticated(format!(
                "partition {p} is served by node {} ({}); a request another node forwards must carry a client proof \
                 ({PROOF_HEADER}, see SECURITY.md) - sign it, or send it to that node's gateway",
                to.node_id, to.gateway_addr
            ))
        })?;
        let deadline = Instant::now() + self.budget(req).saturating_sub(Duration::from_millis(20));
        let bytes = self
            .mesh
            .peers
            .hop(Hop::Forward, to, call, deadline, p)
            .await?;
        Resp::decode(bytes.as_slice()).map_err(|_| {
            Error::Unavailable(format!("node {} sent an unreadable answer", to.node_id))
        })
    }

    /// Reads an order this node owns, or NOT_FOUND.
    fn order(&self, id: &OrderId, access: &mut Access) -> Result<Order, Error> {
        let order = self
            .store
            .get_order(id)?
            .ok_or_else(|| Error::NotFound("order not found".into()))?;
        access.customer = self.store.customer_subject(&order.customer_id);
        Ok(order)
    }

    // ---- Entry points: authenticate, route, then serve or forward ----------------------------

    /// A request that arrived on this node's gateway, with its one audit record.
    async fn entry<C: Call>(&self, req: Request<C::Req>) -> Result<C::Resp, Error> {
        let mut access = Access::default();
        let result = self.entry_routed::<C>(req, &mut access).await;
        self.recorder.record(C::METHOD.path(), access, result).await
    }

    async fn entry_routed<C: Call>(
        &self,
        req: Request<C::Req>,
        access: &mut Access,
    ) -> Result<C::Resp, Error> {
        let fields = C::buyer_fields(req.get_ref());
        let caller = authz::admit(
            &self.mesh,
            &req,
            Action::Gateway(C::METHOD, &fields),
            access,
        )?;
        trace::record_caller(caller.role, C::partition(req.get_ref()));
        let signed = req.metadata().contains_key(PROOF_HEADER);
        // While a partition changes owner, a request can meet a node that has just given it up:
        // route again and retry until the request's deadline (see `cluster::rebalance`).
        let deadline = Instant::now() + self.budget(&req);
        let mut backoff = Duration::from_millis(5);
        loop {
            access.forwarded = false;
            let route = C::partition(req.get_ref()).map(|p| (p, self.mesh.route(p, signed)));
            let answer = match route {
                Some((p, Route::Forward(to) | Route::Relay(to))) => {
                    let answer = self.forward(&req, C::METHOD.path(), &to, p).await;
                    access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                    match answer {
                        // Refused unopened because the partition has moved on: if it is served
                        // here now, serve it. (Any other failure may have been applied there, so
                        // it is not run again here.)
                        Err(Error::Moved(_)) if self.mesh.route(p, false) == Route::Serve => {
                            self.owned::<C>(&caller, req.get_ref().clone(), access, None)
                                .await
                        }
                        answer => answer,
                    }
                }
                Some((_, Route::Serve)) | None => {
                    self.owned::<C>(&caller, req.get_ref().clone(), access, None)
                        .await
                }
            };
            match answer {
                Err(Error::Moved(why)) if Instant::now() + backoff < deadline => {
                    tracing::debug!(method = C::METHOD.as_str(), %why, "partition moving; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                answer => return answer,
            }
        }
    }

    /// How long a request may take: the client's deadline, capped by the node's own timeout.
    fn budget<T>(&self, req: &Request<T>) -> Duration {
        grpc_timeout(req)
            .unwrap_or(self.forward_timeout)
            .min(self.forward_timeout)
    }

    /// Runs method `C` on its owner: records the order named, checks the purpose, handles.
    async fn owned<C: Call>(
        &self,
        caller: &Caller,
        req: C::Req,
        access: &mut Access,
        admitted: Option<OwnedRwLockReadGuard<()>>,
    ) -> Result<C::Resp, Error> {
        trace::record_caller(caller.role, C::partition(&req));
        // Held until the request is done, so the partition cannot be handed off under it.
        let _admitted = match (admitted, C::partition(&req)) {
            (Some(guard), _) => Some(guard),
            (None, Some(p)) => Some(self.rebalance.admit(p).await?),
            (None, None) => None,
        };
        if let Some(id) = C::order_id(&req)
            && id.parse::<OrderId>().is_ok()
        {
            access.order = self.store.order_subject(id);
        }
        if let Some(purpose) = C::purpose(&req) {
            self.purpose(caller, purpose, access)?;
        }
        let answer = C::handle(self, caller, req, access).await;
        // No answer, refusals included, shows data a power cut could take back: a request that
        // may have seen a write still on its way to disk waits for it (ARCHITECTURE.md,
        // "Storage"). A write answers only with what it made durable itself, so it does not wait
        // for other requests' groups.
        if !C::WRITES {
            self.store.settled().await;
        }
        answer
    }

    /// A request forwarded by a peer. The owner keeps its one audit record, refusals included.
    async fn forwarded(&self, from: &str, call: ForwardedCall) -> Result<Vec<u8>, Error> {
        // Only known method names reach the trail: a peer cannot write arbitrary strings into it.
        let method =
            Method::from_path(&call.method).map_or("unknown-forwarded-method", |m| m.path());
        let mut access = Access::default();
        let result = self.forwarded_inner(from, call, &mut access).await;
        // Sent back unopened because its partition is moving: nothing was touched, no caller was
        // verified, and the gateway retries it elsewhere (its final answer is recorded there).
        if matches!(result, Err(Error::Moved(_))) && access.principal.is_empty() {
            return result;
        }
        self.recorder.record(method, access, result).await
    }

    /// Dispatches a forwarded request to its method.
    async fn forwarded_inner(
        &self,
        from: &str,
        call: ForwardedCall,
        access: &mut Access,
    ) -> Result<Vec<u8>, Error> {
        match Method::from_path(&call.method) {
            Some(Method::CreateOrder) => self.owner_call::<Create>(from, call, access).await,
            Some(Method::GetOrder) => self.owner_call::<Get>(from, call, access).await,
            Some(Method::UpdateOrderStatus) => self.owner_call::<Update>(from, call, access).await,
            Some(Method::ListCustomerOrders) => self.owner_call::<List>(from, call, access).await,
            Some(Method::GetShippingLabel) => self.owner_call::<Label>(from, call, access).await,
            Some(Method::RevealField) => self.owner_call::<Reveal>(from, call, access).await,
            Some(Method::ResolveContactHandle) => {
                self.owner_call::<Resolve>(from, call, access).await
            }
            None => Err(Error::PermissionDenied(format!(
                "method {} cannot be forwarded",
                call.method
            ))),
        }
    }

    /// Handles a forwarded call of method `C` on this node: relays it while its partition is
    /// still on its way here, and admits it to the partition before the proof is verified (so a
    /// request sent back to be routed again keeps its unspent nonce for the next node, and a
    /// proof spent here is spent before the partition can be exported, so it travels with it);
    /// then verifies the proof, authorises that client, and handles it.
    async fn owner_call<C: Call>(
        &self,
        from: &str,
        call: ForwardedCall,
        access: &mut Access,
    ) -> Result<Vec<u8>, Error> {
        let req = C::Req::decode(call.request.as_slice())
            .map_err(|_| Error::Unauthenticated("forwarded request does not decode".into()))?;
        if let Some(p) = C::partition(&req)
            && let Route::Relay(previous) = self.mesh.route(p, true)
        {
            // Anything but a definite refusal may have run there, so it must not run here too.
            let deadline = Instant::now() + self.forward_timeout;
            match self
                .mesh
                .peers
                .hop(Hop::Relay, &previous, call.clone(), deadline, p)
                .await
            {
                Err(Error::Moved(_)) => {}
                answer => {
                    access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                    return answer;
                }
            }
        }
        let admitted = match C::partition(&req) {
            Some(p) => Some(self.rebalance.admit(p).await?),
            None => None,
        };
        let identity = authz::proof_identity(&self.mesh, from, &call, C::partition(&req), access)?;
        let fields = C::buyer_fields(&req);
        let caller = authz::authorize(
            &self.mesh.trust_domain,
            identity,
            Action::Gateway(C::METHOD, &fields),
        )?;
        let resp = self
            .observe(
                C::METHOD,
                Some(from),
                self.owned::<C>(&caller, req, access, admitted),
            )
            .await?;
        Ok(resp.encode_to_vec())
    }

    /// Serves a gateway call: detached from the client (see [`detached`]), observed, audited.
    async fn serve<C: Call>(&self, req: Request<C::Req>) -> Result<C::Resp, Status> {
        let this = self.clone();
        detached(async move {
            this.observe(C::METHOD, None, this.entry::<C>(req))
                .await
                .map_err(Status::from)
        })
        .await
    }
}

impl PeerService for Gateway {
    async fn serve(self: Arc<Self>, from: String, body: Body) -> Result<PeerResult, Error> {
        match body {
            Body::Call(call) => Ok(PeerResult::Response(self.forwarded(&from, call).await?)),
            _ => Err(Error::Unavailable(
                "the gateway does not serve that message".into(),
            )),
        }
    }
}

/// Runs a request to completion even if its caller goes away: tonic drops a handler whose client
/// cancels or whose deadline passes, which could otherwise leave a committed write without its
/// audit record.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work).await.map_err(|_| {
        Status::from(Error::Internal(
            "the request handler failed; see the node's log".into(),
        ))
    })?
}

type OrderStream =
    Pin<Box<dyn futures::Stream<Item = Result<ListCustomerOrdersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl OrderGateway for Gateway {
    async fn create_order(
        &self,
        req: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        self.serve::<Create>(req).await.map(Response::new)
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        self.serve::<Get>(req).await.map(Response::new)
    }

    async fn update_order_status(
        &self,
        req: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        self.serve::<Update>(req).await.map(Response::new)
    }

    type ListCustomerOrdersStream = OrderStream;

    async fn list_customer_orders(
        &self,
        req: Request<ListCustomerOrdersRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let orders = self.serve::<List>(req).await?.orders;
        let stream = futures::stream::iter(
            orders
                .into_iter()
                .map(|o| Ok(ListCustomerOrdersResponse { order: Some(o) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_shipping_label(
        &self,
        req: Request<GetShippingLabelRequest>,
    ) -> Result<Response<GetShippingLabelResponse>, Status> {
        self.serve::<Label>(req).await.map(Response::new)
    }

    async fn reveal_field(
        &self,
        req: Request<RevealFieldRequest>,
    ) -> Result<Response<RevealFieldResponse>, Status> {
        self.serve::<Reveal>(req).await.map(Response::new)
    }

    async fn resolve_contact_handle(
        &self,
        req: Request<ResolveContactHandleRequest>,
    ) -> Result<Response<ResolveContactHandleResponse>, Status> {
        self.serve::<Resolve>(req).await.map(Response::new)
    }
}
