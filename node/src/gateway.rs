//! The public gRPC API, `dsm.v1.OrderGateway`, and its mesh routing.
//!
//! Every request: authenticate the caller from its TLS certificate; find the partition it touches;
//! if this node owns it, handle it here (authorise against the role table, validate, touch storage,
//! project the answer); otherwise forward it in one hop to the owner with the client's end-to-end
//! proof, and pass the owner's answer back unchanged. The owner authorises against the identity in
//! the proof, never against the forwarding node (see `proof`).

use crate::audit::log::{AuditLog, Entry};
use crate::error::Error;
use crate::identity::Identity;
use crate::ids::{OrderId, Partition, partition_of};
use crate::layout::Member;
use crate::lifecycle::can_transition;
use crate::listener::PeerInfo;
use crate::mesh::{Mesh, Route};
use crate::metrics::Metrics;
use crate::policy::{self, Method, Role};
use crate::projection::project;
use crate::proof::{self, PROOF_HEADER};
use crate::storage::Store;
use crate::transport::{PeerHandler, TransportError};
use crate::validate;
use mesh_proto::v1::order_gateway_server::OrderGateway;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    ClientProof, Consent, CreateOrderRequest, CreateOrderResponse, ForwardedCall, ForwardedOrders,
    GetOrderRequest, GetOrderResponse, ListCustomerOrdersRequest, ListCustomerOrdersResponse,
    Order, OrderStatus, PeerRequest, PeerResponse, PeerStatus, Ping, UpdateOrderStatusRequest,
    UpdateOrderStatusResponse,
};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

pub const CREATE_ORDER: &str = "/dsm.v1.OrderGateway/CreateOrder";
pub const GET_ORDER: &str = "/dsm.v1.OrderGateway/GetOrder";
pub const UPDATE_ORDER_STATUS: &str = "/dsm.v1.OrderGateway/UpdateOrderStatus";
pub const LIST_CUSTOMER_ORDERS: &str = "/dsm.v1.OrderGateway/ListCustomerOrders";

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
}

/// Buyer fields a role receives unmasked: what an allowed read discloses.
fn disclosed(role: Role) -> Vec<String> {
    policy::Field::ALL
        .into_iter()
        .filter(|f| f.is_buyer_field() && policy::visibility(role, *f) == policy::Visibility::Full)
        .map(|f| f.path().to_owned())
        .collect()
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
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
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

impl Gateway {
    pub fn new(
        store: Arc<Store>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        mesh: Arc<Mesh>,
        forward_timeout: Duration,
    ) -> Gateway {
        Gateway {
            store,
            audit,
            metrics,
            mesh,
            forward_timeout,
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

    /// May this identity call `method`? The role comes from the certificate only.
    fn authorize(&self, identity: Arc<Identity>, method: Method) -> Result<Caller, Error> {
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
        if !policy::may_call(role, method) {
            return Err(Error::PermissionDenied(format!(
                "role `{role}` may not call {method}"
            )));
        }
        Ok(Caller { identity, role })
    }

    /// The caller of a request that arrived on this node's TLS listener.
    fn tls_caller<T>(
        &self,
        req: &Request<T>,
        method: Method,
        access: &mut Access,
    ) -> Result<Caller, Error> {
        let info = req.extensions().get::<PeerInfo>().ok_or_else(|| {
            Error::Unauthenticated("no verified client certificate on this connection".into())
        })?;
        let identity = info.identity.clone().map_err(|e| {
            Error::Unauthenticated(format!(
                "client certificate has no usable mesh identity: {e}"
            ))
        })?;
        access.caller(&identity);
        self.authorize(identity, method)
    }

    /// Runs one request inside a span, counting and timing it. Spans carry the method and the
    /// caller's certificate identity, never request contents.
    async fn observe<T, F>(&self, method: Method, work: F) -> Result<T, Status>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("gateway", method = method.as_str());
        let result = work.instrument(span.clone()).await.map_err(Status::from);
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics
            .observe_request(method.as_str(), code, started.elapsed().as_secs_f64());
        if let Err(status) = &result {
            span.in_scope(|| tracing::debug!(code = ?status.code(), "request refused"));
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
        let budget = grpc_timeout(req)
            .unwrap_or(self.forward_timeout)
            .min(self.forward_timeout);
        let deadline = Instant::now() + budget.saturating_sub(Duration::from_millis(20));
        let request = PeerRequest {
            deadline_unix_ms: 0,
            body: Some(Body::Call(call)),
        };
        match self.mesh.transport.call(owner, request, deadline).await {
            Ok(PeerResponse {
                result: Some(PeerResult::Response(bytes)),
            }) => Resp::decode(bytes.as_slice()).map_err(|_| {
                Error::Unavailable(format!("node {} sent an unreadable answer", owner.node_id))
            }),
            Ok(PeerResponse {
                result: Some(PeerResult::Status(s)),
            }) => Err(Error::Remote(tonic::Code::from(s.code), s.message)),
            Ok(_) => Err(Error::Unavailable(format!(
                "node {} sent an empty answer",
                owner.node_id
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

    /// A forwarded request must land on its owner; after a layout change it may not any more.
    fn ensure_local(&self, p: Partition) -> Result<(), Error> {
        match self.mesh.route(p) {
            Route::Local => Ok(()),
            Route::Remote(owner) => Err(Error::Unavailable(format!(
                "partition {p} is served by node {} in this node's layout; retry",
                owner.node_id
            ))),
        }
    }

    // ---- The handlers, run on the owner node -------------------------------------------------

    async fn do_create(
        &self,
        caller: &Caller,
        req: CreateOrderRequest,
        access: &mut Access,
    ) -> Result<Order, Error> {
        if validate::is_valid_customer_id(&req.customer_id) {
            access.customer = self.store.customer_subject(&req.customer_id);
        }
        validate::create_order(&req)?;
        let at = now();
        let order = Order {
            order_id: OrderId::mint(partition_of(&req.customer_id)).to_string(),
            customer_id: req.customer_id,
            external_ref: req.external_ref,
            channel: req.channel,
            customer: req.customer,
            items: req.items,
            total_paise: req.total_paise,
            payment: req.payment,
            status: OrderStatus::Placed as i32,
            courier: None,
            consent: Some(req.consent.unwrap_or(Consent { marketing: false })),
            created_at: Some(at),
            updated_at: Some(at),
            view: None,
        };
        let stored = self
            .store
            .create_order(&order, &req.idempotency_key)
            .await?;
        if stored.order_id == order.order_id {
            self.metrics.orders_created.inc();
        }
        tracing::debug!(principal = %caller.identity, order_id = %stored.order_id, "order created");
        access.order = self.store.order_subject(&stored.order_id);
        access.fields = disclosed(caller.role);
        Ok(project(&stored, caller.role))
    }

    fn do_get(
        &self,
        caller: &Caller,
        req: &GetOrderRequest,
        access: &mut Access,
    ) -> Result<Order, Error> {
        let id = validate::order_id(&req.order_id)?;
        access.order = self.store.order_subject(&req.order_id);
        validate::purpose(&req.purpose)?;
        access.purpose.clone_from(&req.purpose);
        let order = self
            .store
            .get_order(&id)?
            .ok_or_else(|| Error::NotFound("order not found".into()))?;
        access.customer = self.store.customer_subject(&order.customer_id);
        access.fields = disclosed(caller.role);
        Ok(project(&order, caller.role))
    }

    async fn do_update(
        &self,
        caller: &Caller,
        req: &UpdateOrderStatusRequest,
        access: &mut Access,
    ) -> Result<Order, Error> {
        if req.order_id.parse::<OrderId>().is_ok() {
            access.order = self.store.order_subject(&req.order_id);
        }
        let update = validate::update_status(req)?;
        let courier = req.courier.clone();
        let at = now();
        let order = self
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
                order.updated_at = Some(at);
                Ok(())
            })
            .await?;
        access.customer = self.store.customer_subject(&order.customer_id);
        access.fields = disclosed(caller.role);
        Ok(project(&order, caller.role))
    }

    fn do_list(
        &self,
        caller: &Caller,
        req: &ListCustomerOrdersRequest,
        access: &mut Access,
    ) -> Result<Vec<Order>, Error> {
        validate::customer_id(&req.customer_id)?;
        access.customer = self.store.customer_subject(&req.customer_id);
        validate::purpose(&req.purpose)?;
        access.purpose.clone_from(&req.purpose);
        let orders = self.store.customer_orders(&req.customer_id)?;
        access.fields = disclosed(caller.role);
        Ok(orders.iter().map(|o| project(o, caller.role)).collect())
    }

    // ---- Entry points: route, then handle or forward ------------------------------------------

    /// The partition a customer id routes to; an invalid id is handled (and refused) locally.
    fn route_customer(&self, customer_id: &str) -> (Route, Option<Partition>) {
        if validate::is_valid_customer_id(customer_id) {
            let p = partition_of(customer_id);
            (self.mesh.route(p), Some(p))
        } else {
            (Route::Local, None)
        }
    }

    fn route_order(&self, order_id: &str) -> (Route, Option<Partition>) {
        match order_id.parse::<OrderId>() {
            Ok(id) => (self.mesh.route(id.partition()), Some(id.partition())),
            Err(_) => (Route::Local, None),
        }
    }

    async fn create_order(&self, req: Request<CreateOrderRequest>) -> Result<Order, Error> {
        let mut access = Access::default();
        let result = self.create_order_routed(req, &mut access).await;
        self.audited(CREATE_ORDER, access, result).await
    }

    async fn create_order_routed(
        &self,
        req: Request<CreateOrderRequest>,
        access: &mut Access,
    ) -> Result<Order, Error> {
        let caller = self.tls_caller(&req, Method::CreateOrder, access)?;
        match self.route_customer(&req.get_ref().customer_id) {
            (Route::Remote(owner), Some(p)) => {
                let answer = self
                    .forward::<_, CreateOrderResponse>(&req, CREATE_ORDER, &owner, p)
                    .await;
                access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                Ok(answer?.order.unwrap_or_default())
            }
            _ => self.do_create(&caller, req.into_inner(), access).await,
        }
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Order, Error> {
        let mut access = Access::default();
        let result = self.get_order_routed(req, &mut access).await;
        self.audited(GET_ORDER, access, result).await
    }

    async fn get_order_routed(
        &self,
        req: Request<GetOrderRequest>,
        access: &mut Access,
    ) -> Result<Order, Error> {
        let caller = self.tls_caller(&req, Method::GetOrder, access)?;
        match self.route_order(&req.get_ref().order_id) {
            (Route::Remote(owner), Some(p)) => {
                let answer = self
                    .forward::<_, GetOrderResponse>(&req, GET_ORDER, &owner, p)
                    .await;
                access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                Ok(answer?.order.unwrap_or_default())
            }
            _ => self.do_get(&caller, req.get_ref(), access),
        }
    }

    async fn update_status(&self, req: Request<UpdateOrderStatusRequest>) -> Result<Order, Error> {
        let mut access = Access::default();
        let result = self.update_status_routed(req, &mut access).await;
        self.audited(UPDATE_ORDER_STATUS, access, result).await
    }

    async fn update_status_routed(
        &self,
        req: Request<UpdateOrderStatusRequest>,
        access: &mut Access,
    ) -> Result<Order, Error> {
        let caller = self.tls_caller(&req, Method::UpdateOrderStatus, access)?;
        match self.route_order(&req.get_ref().order_id) {
            (Route::Remote(owner), Some(p)) => {
                let answer = self
                    .forward::<_, UpdateOrderStatusResponse>(&req, UPDATE_ORDER_STATUS, &owner, p)
                    .await;
                access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                Ok(answer?.order.unwrap_or_default())
            }
            _ => self.do_update(&caller, req.get_ref(), access).await,
        }
    }

    async fn list_orders(
        &self,
        req: Request<ListCustomerOrdersRequest>,
    ) -> Result<Vec<Order>, Error> {
        let mut access = Access::default();
        let result = self.list_orders_routed(req, &mut access).await;
        self.audited(LIST_CUSTOMER_ORDERS, access, result).await
    }

    async fn list_orders_routed(
        &self,
        req: Request<ListCustomerOrdersRequest>,
        access: &mut Access,
    ) -> Result<Vec<Order>, Error> {
        let caller = self.tls_caller(&req, Method::ListCustomerOrders, access)?;
        match self.route_customer(&req.get_ref().customer_id) {
            (Route::Remote(owner), Some(p)) => {
                let answer = self
                    .forward::<_, ForwardedOrders>(&req, LIST_CUSTOMER_ORDERS, &owner, p)
                    .await;
                access.forwarded = matches!(answer, Ok(_) | Err(Error::Remote(..)));
                Ok(answer?.orders)
            }
            _ => self.do_list(&caller, req.get_ref(), access),
        }
    }

    /// A request forwarded by a peer. The owner keeps its one audit record, refusals included.
    async fn forwarded(&self, from: &str, call: ForwardedCall) -> Result<Vec<u8>, Error> {
        // Only known method names reach the trail: a peer cannot write arbitrary strings into it.
        let method = match call.method.as_str() {
            CREATE_ORDER
            | GET_ORDER
            | UPDATE_ORDER_STATUS
            | LIST_CUSTOMER_ORDERS
            | crate::audit::service::QUERY => call.method.clone(),
            _ => "unknown-forwarded-method".to_owned(),
        };
        let mut access = Access::default();
        let result = self.forwarded_inner(from, call, &mut access).await;
        self.audited(&method, access, result).await
    }

    /// Verifies the client's proof, authorises that client, and handles the request.
    async fn forwarded_inner(
        &self,
        from: &str,
        call: ForwardedCall,
        access: &mut Access,
    ) -> Result<Vec<u8>, Error> {
        let proof = call.proof.ok_or_else(|| {
            Error::Unauthenticated("forwarded request carries no client proof".into())
        })?;
        let identity = Arc::new(
            self.mesh
                .proofs
                .verify(&call.method, &call.request, &proof)
                .map_err(|e| Error::Unauthenticated(format!("client proof refused: {e}")))?,
        );
        access.caller(&identity);
        tracing::debug!(forwarded_by = from, principal = %identity, method = %call.method, "forwarded request");
        let bad = |_| Error::Unauthenticated("forwarded request does not decode".into());
        let bytes = call.request.as_slice();
        match call.method.as_str() {
            CREATE_ORDER => {
                let caller = self.authorize(identity, Method::CreateOrder)?;
                let req = CreateOrderRequest::decode(bytes).map_err(bad)?;
                if validate::is_valid_customer_id(&req.customer_id) {
                    self.ensure_local(partition_of(&req.customer_id))?;
                }
                let order = self
                    .observe(Method::CreateOrder, self.do_create(&caller, req, access))
                    .await
                    .map_err(status_error)?;
                Ok(CreateOrderResponse { order: Some(order) }.encode_to_vec())
            }
            GET_ORDER => {
                let caller = self.authorize(identity, Method::GetOrder)?;
                let req = GetOrderRequest::decode(bytes).map_err(bad)?;
                let id = validate::order_id(&req.order_id)?;
                self.ensure_local(id.partition())?;
                let order = self
                    .observe(Method::GetOrder, async {
                        self.do_get(&caller, &req, access)
                    })
                    .await
                    .map_err(status_error)?;
                Ok(GetOrderResponse { order: Some(order) }.encode_to_vec())
            }
            UPDATE_ORDER_STATUS => {
                let caller = self.authorize(identity, Method::UpdateOrderStatus)?;
                let req = UpdateOrderStatusRequest::decode(bytes).map_err(bad)?;
                let id = validate::order_id(&req.order_id)?;
                self.ensure_local(id.partition())?;
                let order = self
                    .observe(
                        Method::UpdateOrderStatus,
                        self.do_update(&caller, &req, access),
                    )
                    .await
                    .map_err(status_error)?;
                Ok(UpdateOrderStatusResponse { order: Some(order) }.encode_to_vec())
            }
            LIST_CUSTOMER_ORDERS => {
                let caller = self.authorize(identity, Method::ListCustomerOrders)?;
                let req = ListCustomerOrdersRequest::decode(bytes).map_err(bad)?;
                validate::customer_id(&req.customer_id)?;
                self.ensure_local(partition_of(&req.customer_id))?;
                let orders = self
                    .observe(Method::ListCustomerOrders, async {
                        self.do_list(&caller, &req, access)
                    })
                    .await
                    .map_err(status_error)?;
                Ok(ForwardedOrders { orders }.encode_to_vec())
            }
            crate::audit::service::QUERY => {
                if identity.trust_domain() != self.mesh.trust_domain
                    || identity.role() != Some(Role::Auditor)
                {
                    return Err(Error::PermissionDenied(
                        "only auditors of this mesh may read the audit trail".into(),
                    ));
                }
                crate::audit::service::AuditService::new(self.audit.clone(), self.mesh.clone())
                    .forwarded(bytes)
                    .map_err(status_error)
            }
            other => Err(Error::PermissionDenied(format!(
                "method {other} cannot be forwarded"
            ))),
        }
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
                    let s = Status::from(e);
                    PeerResponse {
                        result: Some(PeerResult::Status(PeerStatus {
                            code: s.code() as i32,
                            message: s.message().to_owned(),
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
        let order = {
            let this = self.clone();
            detached(async move {
                this.observe(Method::CreateOrder, Gateway::create_order(&this, req))
                    .await
            })
            .await?
        };
        Ok(Response::new(CreateOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order = {
            let this = self.clone();
            detached(async move {
                this.observe(Method::GetOrder, Gateway::get_order(&this, req))
                    .await
            })
            .await?
        };
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    async fn update_order_status(
        &self,
        req: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        let order = {
            let this = self.clone();
            detached(async move {
                this.observe(Method::UpdateOrderStatus, this.update_status(req))
                    .await
            })
            .await?
        };
        Ok(Response::new(UpdateOrderStatusResponse {
            order: Some(order),
        }))
    }

    type ListCustomerOrdersStream = OrderStream;

    async fn list_customer_orders(
        &self,
        req: Request<ListCustomerOrdersRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let orders = {
            let this = self.clone();
            detached(async move {
                this.observe(Method::ListCustomerOrders, this.list_orders(req))
                    .await
            })
            .await?
        };
        let stream = futures::stream::iter(
            orders
                .into_iter()
                .map(|o| Ok(ListCustomerOrdersResponse { order: Some(o) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
