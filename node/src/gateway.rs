//! The public gRPC API, `dsm.v1.OrderGateway`, and its mesh routing.
//!
//! Every request: authenticate the caller from its TLS certificate; refuse a role that sees no
//! buyer field if the request carries or asks for one; find the partition it touches; if this node
//! owns it, handle it here (authorise against the role table, validate, touch storage, project the
//! answer); otherwise forward it in one hop to the owner with the client's end-to-end proof, and
//! pass the owner's answer back unchanged. The owner authorises against the identity in the proof,
//! never against the forwarding node (see `proof`).
//!
//! Each method is one [`Call`]: its types, its routing key, the buyer fields its request carries,
//! and its handler on the owner. Routing, forwarding, auditing and metrics are written once.

use crate::access::{self, AccessRules, Exhausted, RevealLimiter};
use crate::audit::log::{AuditLog, Entry};
use crate::clock::Clock;
use crate::error::Error;
use crate::identity::Identity;
use crate::ids::{ContactHandle, OrderId, Partition, partition_of};
use crate::layout::LayoutError;
use crate::layout::Member;
use crate::lifecycle::can_transition;
use crate::listener::PeerInfo;
use crate::mesh::{Mesh, Route};
use crate::metrics::Metrics;
use crate::policy::{self, Field, Method, Role, Visibility};
use crate::projection::{At, buyer_text, project, project_fields};
use crate::proof::{self, PROOF_HEADER};
use crate::rebalance::{ApplyError, Rebalance};
use crate::storage::Store;
use crate::telemetry::{self, Hop};
use crate::transport::{PeerHandler, TransportError};
use crate::validate;
use mesh_proto::v1::order_gateway_server::OrderGateway;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    ClientProof, Consent, CreateOrderRequest, CreateOrderResponse, Customer, ForwardedCall,
    ForwardedOrders, GetOrderRequest, GetOrderResponse, GetShippingLabelRequest,
    GetShippingLabelResponse, ListCustomerOrdersRequest, ListCustomerOrdersResponse, Order,
    OrderStatus, OrderView, PaymentMethod, PeerRequest, PeerResponse, PeerStatus, Ping,
    ResolveContactHandleRequest, ResolveContactHandleResponse, RevealAllowance, RevealCharge,
    RevealFieldRequest, RevealFieldResponse, ShippingLabel, UpdateOrderStatusRequest,
    UpdateOrderStatusResponse,
};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

pub const CREATE_ORDER: &str = Method::CreateOrder.path();
pub const GET_ORDER: &str = Method::GetOrder.path();
pub const UPDATE_ORDER_STATUS: &str = Method::UpdateOrderStatus.path();
pub const LIST_CUSTOMER_ORDERS: &str = Method::ListCustomerOrders.path();
pub const GET_SHIPPING_LABEL: &str = Method::GetShippingLabel.path();
pub const REVEAL_FIELD: &str = Method::RevealField.path();
pub const RESOLVE_CONTACT_HANDLE: &str = Method::ResolveContactHandle.path();

/// The authenticated, authorised caller of one request.
#[derive(Debug)]
struct Caller {
    identity: Arc<Identity>,
    role: Role,
}

/// What one request touched, filled in as it is handled, for its audit record.
#[derive(Debug, Default)]
struct Access {
    principal: String,
    role: String,
    customer: String,
    order: String,
    purpose: String,
    note: String,
    fields: Vec<String>,
    /// Handled by the owner node, which keeps the record.
    forwarded: bool,
}

impl Access {
    fn caller(&mut self, identity: &Identity) {
        self.principal = identity.to_string();
        self.role = identity
            .role()
            .map_or_else(|| "node".to_owned(), |r| r.to_string());
    }

    /// Records the buyer fields a projection disclosed unmasked (those neither masked nor
    /// withheld in its view).
    fn disclosed(&mut self, view: Option<&OrderView>) {
        let Some(view) = view else { return };
        for f in Field::ALL.into_iter().filter(|f| f.is_buyer_field()) {
            let path = f.path();
            let hidden = view.masked_fields.iter().any(|p| p == path)
                || view.withheld_fields.iter().any(|p| p == path);
            if !hidden && !self.fields.iter().any(|p| p == path) {
                self.fields.push(path.to_owned());
            }
        }
    }
}

/// The gateway service of one node; also answers requests forwarded by peers.
#[derive(Debug, Clone)]
pub struct Gateway {
    store: Arc<Store>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    mesh: Arc<Mesh>,
    /// Upper bound on a forwarded request when the client sent no deadline.
    forward_timeout: Duration,
    rules: Arc<AccessRules>,
    reveals: Arc<RevealLimiter>,
    clock: Clock,
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

fn customer_partition(customer_id: &str) -> Option<Partition> {
    validate::is_valid_customer_id(customer_id).then(|| partition_of(customer_id))
}

fn order_partition(order_id: &str) -> Option<Partition> {
    order_id.parse::<OrderId>().ok().map(|id| id.partition())
}

impl Gateway {
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
        let reveals = Arc::new(RevealLimiter::new(rules.reveal_limit, rules.reveal_window));
        Gateway {
            store,
            audit,
            metrics,
            mesh,
            forward_timeout,
            rules: Arc::new(rules),
            reveals,
            clock,
            rebalance,
        }
    }

    fn at(&self) -> At {
        At {
            now: self.clock.now(),
            grace: self.rules.contact_grace,
        }
    }

    /// Records the request's one audit record, durably, before anything is returned. If the record
    /// cannot be written the access is refused (fail closed). A request the owner handled was
    /// recorded there.
    async fn audited<T>(
        &self,
        method: &str,
        access: Access,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if access.forwarded {
            return result;
        }
        let reason = match &result {
            Ok(_) => String::new(),
            Err(e) => crate::metrics::code_name(e.code()).to_owned(),
        };
        let entry = Entry {
            principal: if access.principal.is_empty() {
                "-".into()
            } else {
                access.principal
            },
            role: access.role,
            action: method.to_owned(),
            customer: access.customer,
            order: access.order,
            purpose: access.purpose,
            fields: if result.is_ok() {
                access.fields
            } else {
                Vec::new()
            },
            allowed: result.is_ok(),
            reason,
            note: access.note,
        };
        match self.audit.append(entry).await {
            Ok(_) => result,
            Err(e) => {
                tracing::error!(error = %e, method, "audit record not written; access refused");
                Err(Error::Unavailable(
                    "the audit trail is unavailable, so the access was refused; retry later".into(),
                ))
            }
        }
    }

    /// May this identity call `method` with a request carrying or asking for `buyer_fields`? The
    /// role comes from the certificate only.
    fn authorize(
        &self,
        identity: Arc<Identity>,
        method: Method,
        buyer_fields: &[Field],
    ) -> Result<Caller, Error> {
        if identity.trust_domain() != self.mesh.trust_domain {
            return Err(Error::Unauthenticated(format!(
                "certificate is for trust domain `{}`, this mesh is `{}`",
                identity.trust_domain(),
                self.mesh.trust_domain
            )));
        }
        let role = identity.role().ok_or_else(|| {
            Error::PermissionDenied(
                "node certificates cannot call the gateway; use a client certificate".into(),
            )
        })?;
        if let Some(field) = buyer_fields.first()
            && policy::sees_no_buyer_field(role)
        {
            return Err(Error::PermissionDenied(format!(
                "role `{role}` gets no buyer fields, and this {method} request carries or asks for `{}`",
                field.path()
            )));
        }
        if !policy::may_call(role, method) {
            return Err(Error::PermissionDenied(format!(
                "role `{role}` may not call {method}"
            )));
        }
        Ok(Caller { identity, role })
    }

    /// The certificate identity of a request that arrived on this node's TLS listener.
    fn tls_identity<T>(
        &self,
        req: &Request<T>,
        access: &mut Access,
    ) -> Result<Arc<Identity>, Error> {
        let info = req.extensions().get::<PeerInfo>().ok_or_else(|| {
            Error::Unauthenticated("no verified client certificate on this connection".into())
        })?;
        let identity = info.identity.clone().map_err(|e| {
            Error::Unauthenticated(format!(
                "client certificate has no usable mesh identity: {e}"
            ))
        })?;
        access.caller(&identity);
        Ok(identity)
    }

    /// Checks and records a read's purpose; roles configured to need one are refused without it.
    fn purpose(&self, caller: &Caller, purpose: &str, access: &mut Access) -> Result<(), Error> {
        validate::purpose(purpose)?;
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
    /// `telemetry`) carries no identity either. `forwarded_by` names the node that forwarded it.
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
        let trace = telemetry::request(method, forwarded_by);
        let result = work
            .instrument(trace.clone())
            .instrument(span.clone())
            .await;
        let code = result
            .as_ref()
            .map_or_else(Error::code, |_| tonic::Code::Ok);
        telemetry::finish_request(&trace, code);
        self.metrics
            .observe_request(method.as_str(), code, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            span.in_scope(|| tracing::debug!(code = ?e.code(), "request refused"));
        }
        result
    }

    /// Sends a request this node does not own to the owner, with the client's proof and chain.
    async fn forward<Req: Message, Resp: Message + Default>(
        &self,
        req: &Request<Req>,
        path: &str,
        owner: &Member,
        p: Partition,
    ) -> Result<Resp, Error> {
        let header = req.metadata().get(PROOF_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            Error::Unauthenticated(format!(
                "partition {p} is served by node {} ({}); a request another node forwards must carry a client proof \
                 ({PROOF_HEADER}, see SECURITY.md) - sign it, or send it to that node's gateway",
                owner.node_id, owner.gateway_addr
            ))
        })?;
        let (timestamp_unix_ms, nonce, signature) =
            proof::parse_header(header).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        let chain = req
            .extensions()
            .get::<PeerInfo>()
            .map(|i| i.chain.to_vec())
            .unwrap_or_default();
        let call = ForwardedCall {
            method: path.to_owned(),
            request: req.get_ref().encode_to_vec(),
            proof: Some(ClientProof {
                chain,
                timestamp_unix_ms,
                nonce,
                signature,
            }),
        };
        let deadline = Instant::now() + self.budget(req).saturating_sub(Duration::from_millis(20));
        let bytes = telemetry::hop(
            Hop::Forward,
            &owner.node_id,
            p,
            self.send_call(owner, call, deadline, p),
        )
        .await?;
        Resp::decode(bytes.as_slice()).map_err(|_| {
            Error::Unavailable(format!("node {} sent an unreadable answer", owner.node_id))
        })
    }

    /// Sends a forwarded call to `to` and returns its encoded answer, or its status (`Moved` when
    /// it refused the call unopened because partition `p` is moving).
    async fn send_call(
        &self,
        to: &Member,
        call: ForwardedCall,
        deadline: Instant,
        p: Partition,
    ) -> Result<Vec<u8>, Error> {
        let request = PeerRequest {
            deadline_unix_ms: 0,
            body: Some(Body::Call(call)),
        };
        match self.mesh.transport.call(to, request, deadline).await {
            Ok(PeerResponse {
                result: Some(PeerResult::Response(bytes)),
            }) => Ok(bytes),
            Ok(PeerResponse {
                result: Some(PeerResult::Status(s)),
            }) if s.moved => Err(Error::Moved(s.message)),
            Ok(PeerResponse {
                result: Some(PeerResult::Status(s)),
            }) => Err(Error::Remote(tonic::Code::from(s.code), s.message)),
            Ok(_) => Err(Error::Unavailable(format!(
                "node {} sent an empty answer",
                to.node_id
            ))),
            Err(TransportError::Unavailable { node, reason }) => Err(Error::Unavailable(format!(
                "the shard holding partition {p} (node {node}) is unreachable: {reason}"
            ))),
            Err(TransportError::Deadline { node }) => Err(Error::Unavailable(format!(
                "the shard holding partition {p} (node {node}) did not answer before the deadline"
            ))),
            Err(e) => Err(Error::Unavailable(format!(
                "the shard holding partition {p}: {e}"
            ))),
        }
    }

    /// Takes one reveal from `principal`'s allowance, which the owner of the principal's home
    /// partition keeps for the whole mesh (so spreading reveals over shards does not multiply the
    /// limit). Fails closed: if the home node cannot be asked, the reveal is refused.
    async fn charge_reveal(&self, principal: &str) -> Result<u32, Error> {
        let home = partition_of(principal);
        let allowance = match self.mesh.route(home) {
            Route::Local => self.reveals.take(principal, self.clock.now()),
            Route::Remote(owner) => {
                let request = PeerRequest {
                    deadline_unix_ms: 0,
                    body: Some(Body::Charge(RevealCharge {
                        principal: principal.to_owned(),
                    })),
                };
                let deadline = Instant::now() + self.forward_timeout;
                match self.mesh.transport.call(&owner, request, deadline).await {
                    Ok(PeerResponse {
                        result: Some(PeerResult::Allowance(a)),
                    }) if a.granted => Ok(a.remaining),
                    Ok(PeerResponse {
                        result: Some(PeerResult::Allowance(a)),
                    }) => Err(Exhausted {
                        limit: a.limit,
                        window: Duration::from_millis(a.window_ms),
                        retry_after: Duration::from_millis(a.retry_after_ms),
                    }),
                    other => {
                        tracing::warn!(node = %owner.node_id, error = ?other.err(), "reveal ledger unreachable");
                        return Err(Error::Unavailable(format!(
                            "the reveal ledger for this principal (node {}) is unreachable, so the reveal was refused; retry",
                            owner.node_id
                        )));
                    }
                }
            }
        };
        allowance.map_err(|e| {
            Error::ResourceExhausted(format!(
                "reveal limit reached: {} per {} for this principal across the mesh; the next reveal is possible in {}",
                e.limit,
                humantime::format_duration(e.window),
                humantime::format_duration(Duration::from_secs(e.retry_after.as_secs().max(1)))
            ))
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

    // ---- Entry points: authenticate, route, then handle or forward ---------------------------

    /// A request that arrived on this node's gateway, with its one audit record.
    async fn entry<C: Call>(&self, req: Request<C::Req>) -> Result<C::Resp, Error> {
        let mut access = Access::default();
        let result = self.entry_routed::<C>(req, &mut access).await;
        self.audited(C::METHOD.path(), access, result).await
    }

    async fn entry_routed<C: Call>(
        &self,
        req: Request<C::Req>,
        access: &mut Access,
    ) -> Result<C::Resp, Error> {
        let identity = self.tls_identity(&req, access)?;
        let caller = self.authorize(identity, C::METHOD, &C::buyer_fields(req.get_ref()))?;
        telemetry::record_caller(caller.role, C::partition(req.get_ref()));
        // While a partition changes owner, a request can meet a node that has just given it up:
        // route again and retry until the request's deadline (see `rebalance`).
        let deadline = Instant::now() + self.budget(&req);
        let mut backoff = Duration::from_millis(5);
        loop {
            access.forwarded = false;
            // A partition still on its way here is served by its previous owner until it hands it
            // over (a signed request can be sent there; an unsigned one waits for the pull).
            let route = C::partition(req.get_ref()).map(|p| {
                let target = match self.mesh.route(p) {
                    Route::Local if req.metadata().contains_key(PROOF_HEADER) => self
                        .rebalance
                        .proxy_target(p)
                        .map_or(Route::Local, Route::Remote),
                    route => route,
                };
                (p, target)
            });
            let answer = match route {
                Some((p, Route::Remote(owner))) => {
                    let answer = self.forward(&req, C::METHOD.path(), &owner, p).await;
                    access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                    match answer {
                        // The previous owner refused it unopened because it has handed the
                        // partition over: it is served here, once pulled. (Any other failure may
                        // have been applied there, so it is not run again here.)
                        Err(Error::Moved(_)) if self.mesh.route(p) == Route::Local => {
                            self.owned::<C>(&caller, req.get_ref().clone(), access)
                                .await
                        }
                        answer => answer,
                    }
                }
                _ => {
                    self.owned::<C>(&caller, req.get_ref().clone(), access)
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

    /// Passes a forwarded call on, unchanged (its proof is for the client's request, not for a
    /// node), to the node that still serves partition `p`.
    async fn relay(
        &self,
        to: &Member,
        call: &ForwardedCall,
        p: Partition,
    ) -> Result<Vec<u8>, Error> {
        // Anything but a definite refusal may have run there, so it must not run here too.
        let deadline = Instant::now() + self.forward_timeout;
        telemetry::hop(
            Hop::Relay,
            &to.node_id,
            p,
            self.send_call(to, call.clone(), deadline, p),
        )
        .await
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
    ) -> Result<C::Resp, Error> {
        telemetry::record_caller(caller.role, C::partition(&req));
        // Held until the request is done, so the partition cannot be handed off under it.
        let _admitted = match C::partition(&req) {
            Some(p) => Some(self.rebalance.admit(p).await?),
            None => None,
        };
        if let Some(id) = C::order_id(&req)
            && id.parse::<OrderId>().is_ok()
        {
            access.order = self.store.order_subject(id);
        }
        if let Some(purpose) = C::purpose(&req) {
            self.purpose(caller, purpose, access)?;
        }
        C::handle(self, caller, req, access).await
    }

    /// A request forwarded by a peer. The owner keeps its one audit record, refusals included.
    async fn forwarded(&self, from: &str, call: ForwardedCall) -> Result<Vec<u8>, Error> {
        // Only known method names reach the trail: a peer cannot write arbitrary strings into it.
        let method = match Method::from_path(&call.method) {
            Some(m) => m.path(),
            None if call.method == crate::audit::service::QUERY => crate::audit::service::QUERY,
            None => "unknown-forwarded-method",
        };
        let mut access = Access::default();
        let result = self.forwarded_inner(from, call, &mut access).await;
        // Sent back unopened because its partition is moving: nothing was touched, no caller was
        // verified, and the gateway retries it elsewhere (its final answer is recorded there).
        if matches!(result, Err(Error::Moved(_))) && access.principal.is_empty() {
            return result;
        }
        self.audited(method, access, result).await
    }

    /// Dispatches a forwarded request to its method.
    async fn forwarded_inner(
        &self,
        from: &str,
        call: ForwardedCall,
        access: &mut Access,
    ) -> Result<Vec<u8>, Error> {
        match Method::from_path(&call.method) {
            Some(Method::CreateOrder) => self.owner_call::<Create>(from, &call, access).await,
            Some(Method::GetOrder) => self.owner_call::<Get>(from, &call, access).await,
            Some(Method::UpdateOrderStatus) => self.owner_call::<Update>(from, &call, access).await,
            Some(Method::ListCustomerOrders) => self.owner_call::<List>(from, &call, access).await,
            Some(Method::GetShippingLabel) => self.owner_call::<Label>(from, &call, access).await,
            Some(Method::RevealField) => self.owner_call::<Reveal>(from, &call, access).await,
            Some(Method::ResolveContactHandle) => {
                self.owner_call::<Resolve>(from, &call, access).await
            }
            None if call.method == crate::audit::service::QUERY => {
                let identity = self.verify_proof(from, &call, access)?;
                if identity.trust_domain() != self.mesh.trust_domain
                    || identity.role() != Some(Role::Auditor)
                {
                    return Err(Error::PermissionDenied(
                        "only auditors of this mesh may read the audit trail".into(),
                    ));
                }
                crate::audit::service::AuditService::new(
                    self.audit.clone(),
                    self.mesh.clone(),
                    self.store.clone(),
                )
                .forwarded(&call.request)
                .map_err(status_error)
            }
            None => Err(Error::PermissionDenied(format!(
                "method {} cannot be forwarded",
                call.method
            ))),
        }
    }

    /// The client behind a forwarded request, from its end-to-end proof (which spends its nonce).
    fn verify_proof(
        &self,
        from: &str,
        call: &ForwardedCall,
        access: &mut Access,
    ) -> Result<Arc<Identity>, Error> {
        let proof = call.proof.as_ref().ok_or_else(|| {
            Error::Unauthenticated("forwarded request carries no client proof".into())
        })?;
        let identity = Arc::new(
            self.mesh
                .proofs
                .verify(&call.method, &call.request, proof)
                .map_err(|e| Error::Unauthenticated(format!("client proof refused: {e}")))?,
        );
        access.caller(&identity);
        tracing::debug!(forwarded_by = from, principal = %identity, method = %call.method, "forwarded request");
        Ok(identity)
    }

    /// Handles a forwarded call of method `C` on this (owner) node: checks the partition is here
    /// before the proof is verified (so a request sent back to be routed again keeps its unspent
    /// nonce for the next node), then verifies the proof, authorises that client, and handles it.
    async fn owner_call<C: Call>(
        &self,
        from: &str,
        call: &ForwardedCall,
        access: &mut Access,
    ) -> Result<Vec<u8>, Error> {
        let req = C::Req::decode(call.request.as_slice())
            .map_err(|_| Error::Unauthenticated("forwarded request does not decode".into()))?;
        if let Some(p) = C::partition(&req) {
            // Still on its way here: its previous owner serves it until it hands it over.
            if let Some(previous) = self.rebalance.proxy_target(p) {
                match self.relay(&previous, call, p).await {
                    Err(Error::Moved(_)) => {}
                    answer => {
                        access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                        return answer;
                    }
                }
            }
            self.rebalance.ready(p).await?;
        }
        let identity = self.verify_proof(from, call, access)?;
        let caller = self.authorize(identity, C::METHOD, &C::buyer_fields(&req))?;
        let resp = self
            .observe(C::METHOD, Some(from), self.owned::<C>(&caller, req, access))
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

// ---- The methods, run on the owner node ------------------------------------------------------

struct Create;
struct Get;
struct Update;
struct List;
struct Label;
struct Reveal;
struct Resolve;

impl Call for Create {
    const METHOD: Method = Method::CreateOrder;
    type Req = CreateOrderRequest;
    type Resp = CreateOrderResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        customer_partition(&req.customer_id)
    }

    fn buyer_fields(req: &Self::Req) -> Vec<Field> {
        let empty = Customer::default();
        let c = req.customer.as_ref().unwrap_or(&empty);
        Field::ALL
            .into_iter()
            .filter(|f| buyer_text(&req.customer_id, c, *f).is_some_and(|v| !v.is_empty()))
            .collect()
    }

    fn order_id(_: &Self::Req) -> Option<&str> {
        None
    }

    fn purpose(_: &Self::Req) -> Option<&str> {
        None
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        if validate::is_valid_customer_id(&req.customer_id) {
            access.customer = gw.store.customer_subject(&req.customer_id);
        }
        validate::create_order(&req)?;
        let p = partition_of(&req.customer_id);
        let at = prost_types::Timestamp::from(gw.clock.now());
        let mut customer = req.customer;
        if let Some(c) = &mut customer {
            c.contact_handle = ContactHandle::mint(p).to_string();
        }
        let order = Order {
            order_id: OrderId::mint(p).to_string(),
            customer_id: req.customer_id,
            external_ref: req.external_ref,
            channel: req.channel,
            customer,
            items: req.items,
            total_paise: req.total_paise,
            payment: req.payment,
            status: OrderStatus::Placed as i32,
            courier: None,
            consent: Some(req.consent.unwrap_or(Consent { marketing: false })),
            created_at: Some(at),
            updated_at: Some(at),
            view: None,
            closed_at: None,
            idempotency_key: req.idempotency_key.clone(),
        };
        let stored = gw.store.create_order(&order, &req.idempotency_key).await?;
        if stored.order_id == order.order_id {
            gw.metrics.orders_created.inc();
        }
        tracing::debug!(principal = %caller.identity, order_id = %stored.order_id, "order created");
        access.order = gw.store.order_subject(&stored.order_id);
        let order = project(&stored, caller.role, gw.at());
        access.disclosed(order.view.as_ref());
        Ok(CreateOrderResponse { order: Some(order) })
    }
}

impl Call for Get {
    const METHOD: Method = Method::GetOrder;
    type Req = GetOrderRequest;
    type Resp = GetOrderResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        order_partition(&req.order_id)
    }

    fn buyer_fields(req: &Self::Req) -> Vec<Field> {
        req.fields
            .iter()
            .filter_map(|p| Field::from_path(p))
            .filter(|f| f.is_buyer_field())
            .collect()
    }

    fn order_id(req: &Self::Req) -> Option<&str> {
        Some(&req.order_id)
    }

    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.purpose)
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        let id = validate::order_id(&req.order_id)?;
        let only = if req.fields.is_empty() {
            None
        } else {
            let mut only = Vec::with_capacity(req.fields.len());
            for path in &req.fields {
                let field = validate::field_path("fields", path)?;
                if policy::visibility(caller.role, field) == Visibility::Withheld {
                    return Err(Error::PermissionDenied(format!(
                        "role `{}` may not see `{}`",
                        caller.role,
                        field.path()
                    )));
                }
                only.push(field);
            }
            Some(only)
        };
        let order = gw.order(&id, access)?;
        let order = project_fields(&order, caller.role, gw.at(), only.as_deref());
        access.disclosed(order.view.as_ref());
        Ok(GetOrderResponse { order: Some(order) })
    }
}

impl Call for Update {
    const METHOD: Method = Method::UpdateOrderStatus;
    type Req = UpdateOrderStatusRequest;
    type Resp = UpdateOrderStatusResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        order_partition(&req.order_id)
    }

    fn buyer_fields(_: &Self::Req) -> Vec<Field> {
        Vec::new()
    }

    fn order_id(req: &Self::Req) -> Option<&str> {
        Some(&req.order_id)
    }

    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.purpose)
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        let update = validate::update_status(&req)?;
        if !policy::may_set_status(caller.role, update.status) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` may not move an order to {}",
                caller.role,
                update.status.as_str_name()
            )));
        }
        let courier = req.courier;
        let at = gw.clock.now();
        let order = gw
            .store
            .update_order(&update.order_id, |order| {
                let from = OrderStatus::try_from(order.status).unwrap_or(OrderStatus::Unspecified);
                if !can_transition(from, update.status) {
                    return Err(format!(
                        "an order in status {} cannot move to {}",
                        from.as_str_name(),
                        update.status.as_str_name()
                    ));
                }
                order.status = update.status as i32;
                if let Some(c) = &courier {
                    order.courier = Some(c.clone());
                }
                if let Some(ps) = update.payment_status {
                    order.payment.get_or_insert_default().status = ps as i32;
                }
                order.updated_at = Some(at.into());
                // The first close starts the grace period; an idempotent retry must not extend it.
                if access::closes(update.status) && order.closed_at.is_none() {
                    order.closed_at = Some(at.into());
                }
                Ok(())
            })
            .await?;
        access.customer = gw.store.customer_subject(&order.customer_id);
        let order = project(&order, caller.role, gw.at());
        access.disclosed(order.view.as_ref());
        Ok(UpdateOrderStatusResponse { order: Some(order) })
    }
}

impl Call for List {
    const METHOD: Method = Method::ListCustomerOrders;
    type Req = ListCustomerOrdersRequest;
    type Resp = ForwardedOrders;

    fn partition(req: &Self::Req) -> Option<Partition> {
        customer_partition(&req.customer_id)
    }

    fn buyer_fields(req: &Self::Req) -> Vec<Field> {
        if req.customer_id.is_empty() {
            Vec::new()
        } else {
            vec![Field::CustomerId]
        }
    }

    fn order_id(_: &Self::Req) -> Option<&str> {
        None
    }

    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.purpose)
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        validate::customer_id(&req.customer_id)?;
        access.customer = gw.store.customer_subject(&req.customer_id);
        let at = gw.at();
        let orders: Vec<Order> = gw
            .store
            .customer_orders(&req.customer_id)?
            .iter()
            .map(|o| project(o, caller.role, at))
            .collect();
        for o in &orders {
            access.disclosed(o.view.as_ref());
        }
        Ok(ForwardedOrders { orders })
    }
}

impl Call for Label {
    const METHOD: Method = Method::GetShippingLabel;
    type Req = GetShippingLabelRequest;
    type Resp = GetShippingLabelResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        order_partition(&req.order_id)
    }

    /// Asking for a label asks for every buyer field the label role's row shows.
    fn buyer_fields(_: &Self::Req) -> Vec<Field> {
        policy::policy_of(Role::Label)
            .fields
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| f.is_buyer_field())
            .collect()
    }

    fn order_id(req: &Self::Req) -> Option<&str> {
        Some(&req.order_id)
    }

    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.purpose)
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        let id = validate::order_id(&req.order_id)?;
        let order = project(&gw.order(&id, access)?, caller.role, gw.at());
        access.disclosed(order.view.as_ref());
        let customer = order.customer.unwrap_or_default();
        let payment = order.payment.unwrap_or_default();
        let cod = payment.method == PaymentMethod::Cod as i32;
        let label = ShippingLabel {
            order_id: order.order_id,
            name: customer.name,
            address: customer.address,
            contact_handle: customer.contact_handle,
            cod_amount_paise: if cod { payment.amount_paise } else { 0 },
            courier: order.courier,
            status: order.status,
            view: order.view,
        };
        Ok(GetShippingLabelResponse { label: Some(label) })
    }
}

impl Call for Reveal {
    const METHOD: Method = Method::RevealField;
    type Req = RevealFieldRequest;
    type Resp = RevealFieldResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        order_partition(&req.order_id)
    }

    fn buyer_fields(req: &Self::Req) -> Vec<Field> {
        Field::from_path(&req.field)
            .filter(|f| f.is_buyer_field())
            .into_iter()
            .collect()
    }

    fn order_id(req: &Self::Req) -> Option<&str> {
        Some(&req.order_id)
    }

    /// The reason code is the reveal's purpose (required for every role; see `reveal_reason`).
    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.reason_code)
    }

    async fn handle(
        gw: &Gateway,
        caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        let id = validate::order_id(&req.order_id)?;
        let field = validate::field_path("field", &req.field)?;
        validate::reveal_reason(&req.reason_code, &req.reason_text)?;
        if !policy::may_reveal(caller.role, field) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` may not reveal `{}`",
                caller.role,
                field.path()
            )));
        }
        let order = gw.order(&id, access)?;
        // The words go into the trail sealed under the customer's key (see `Store::seal_note`).
        access.note = gw.store.seal_note(&order.customer_id, &req.reason_text)?;
        let at = gw.at();
        if !access::in_window(&order, policy::window(caller.role), at.now, at.grace) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` no longer sees this order's buyer fields",
                caller.role
            )));
        }
        let remaining = gw.charge_reveal(&caller.identity.to_string()).await?;
        let value = crate::projection::value_of(&order, field);
        access.fields = vec![field.path().to_owned()];
        Ok(RevealFieldResponse {
            order_id: order.order_id,
            field: field.path().to_owned(),
            value,
            remaining,
        })
    }
}

impl Call for Resolve {
    const METHOD: Method = Method::ResolveContactHandle;
    type Req = ResolveContactHandleRequest;
    type Resp = ResolveContactHandleResponse;

    fn partition(req: &Self::Req) -> Option<Partition> {
        req.contact_handle
            .parse::<ContactHandle>()
            .ok()
            .map(|h| h.partition())
    }

    /// Carries a handle, asks for the phone behind it.
    fn buyer_fields(_: &Self::Req) -> Vec<Field> {
        vec![Field::ContactHandle, Field::Phone]
    }

    fn order_id(_: &Self::Req) -> Option<&str> {
        None
    }

    fn purpose(req: &Self::Req) -> Option<&str> {
        Some(&req.purpose)
    }

    async fn handle(
        gw: &Gateway,
        _caller: &Caller,
        req: Self::Req,
        access: &mut Access,
    ) -> Result<Self::Resp, Error> {
        let handle = validate::contact_handle(&req.contact_handle)?;
        let order = gw
            .store
            .order_by_handle(&handle)?
            .ok_or_else(|| Error::NotFound("contact handle not found".into()))?;
        access.order = gw.store.order_subject(&order.order_id);
        access.customer = gw.store.customer_subject(&order.customer_id);
        let at = gw.at();
        if !access::handle_resolves(&order, at.now, at.grace) {
            return Err(Error::FailedPrecondition(format!(
                "this contact handle has expired: its order closed more than {} ago",
                humantime::format_duration(at.grace)
            )));
        }
        access.fields = vec![Field::Phone.path().to_owned()];
        Ok(ResolveContactHandleResponse {
            valid_until: access::handle_valid_until(&order, at.grace).map(Into::into),
            phone: order.customer.map(|c| c.phone).unwrap_or_default(),
        })
    }
}

fn status_error(s: Status) -> Error {
    Error::Remote(s.code(), s.message().to_owned())
}

impl PeerHandler for Gateway {
    fn handle(
        &self,
        from: String,
        req: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + '_>> {
        Box::pin(async move {
            let result = match req.body {
                Some(Body::Ping(_)) => {
                    return PeerResponse {
                        result: Some(PeerResult::Pong(Ping {})),
                    };
                }
                Some(Body::Charge(charge)) => {
                    let allowance = match self.reveals.take(&charge.principal, self.clock.now()) {
                        Ok(remaining) => RevealAllowance {
                            granted: true,
                            remaining,
                            ..RevealAllowance::default()
                        },
                        Err(e) => RevealAllowance {
                            granted: false,
                            remaining: 0,
                            retry_after_ms: u64::try_from(e.retry_after.as_millis())
                                .unwrap_or(u64::MAX),
                            limit: e.limit,
                            window_ms: u64::try_from(e.window.as_millis()).unwrap_or(u64::MAX),
                        },
                    };
                    return PeerResponse {
                        result: Some(PeerResult::Allowance(allowance)),
                    };
                }
                Some(Body::Pull(pull)) => {
                    // Detached: a caller giving up must not cut a layout change off half-way.
                    let rebalance = self.rebalance.clone();
                    match tokio::spawn(async move { rebalance.serve_pull(&from, pull).await }).await
                    {
                        Ok(Ok(data)) => {
                            return PeerResponse {
                                result: Some(PeerResult::Partition(data)),
                            };
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(Error::Unavailable("the handoff handler failed".into())),
                    }
                }
                Some(Body::Query(query)) => {
                    return PeerResponse {
                        result: Some(PeerResult::Holdings(self.rebalance.holdings(&query))),
                    };
                }
                Some(Body::Layout(push)) => match push.layout {
                    None => Err(Error::FailedPrecondition("layout: is required".into())),
                    Some(signed) => match self.rebalance.apply(&signed).await {
                        Ok(_) | Err(ApplyError::Layout(LayoutError::NotNewer { .. })) => {
                            return PeerResponse {
                                result: Some(PeerResult::Pong(Ping {})),
                            };
                        }
                        Err(e) => Err(Error::FailedPrecondition(e.to_string())),
                    },
                },
                Some(Body::Call(call)) => {
                    // Detached like gateway requests: the caller's deadline must not cut a write
                    // off from its audit record.
                    let this = self.clone();
                    match tokio::spawn(async move { this.forwarded(&from, call).await }).await {
                        Ok(result) => result,
                        Err(_) => Err(Error::Unavailable("the request handler failed".into())),
                    }
                }
                None => Err(Error::Unauthenticated("empty peer request".into())),
            };
            match result {
                Ok(bytes) => PeerResponse {
                    result: Some(PeerResult::Response(bytes)),
                },
                Err(e) => {
                    let moved = matches!(e, Error::Moved(_));
                    let s = Status::from(e);
                    PeerResponse {
                        result: Some(PeerResult::Status(PeerStatus {
                            code: s.code() as i32,
                            message: s.message().to_owned(),
                            moved,
                        })),
                    }
                }
            }
        })
    }
}

/// Runs a request to completion even if its caller goes away: tonic drops a handler whose client
/// cancels or whose deadline passes, which could otherwise leave a committed write without its
/// audit record.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|_| Status::internal("the request handler failed; see the node's log"))?
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
