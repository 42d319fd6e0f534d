//! The public gRPC API, `dsm.v1.OrderGateway`: authenticate the caller from its certificate,
//! authorise against the role table, validate, touch storage, and project the answer for the role.
//!
//! Every handler follows the same four steps, in this order, so that nothing is read or stored for
//! a caller who may not call the method, and nothing invalid is stored at all.

use crate::error::Error;
use crate::identity::Identity;
use crate::ids::{OrderId, partition_of};
use crate::lifecycle::can_transition;
use crate::listener::PeerInfo;
use crate::metrics::Metrics;
use crate::policy::{self, Method, Role};
use crate::projection::project;
use crate::storage::Store;
use crate::validate;
use mesh_proto::v1::order_gateway_server::OrderGateway;
use mesh_proto::v1::{
    Consent, CreateOrderRequest, CreateOrderResponse, GetOrderRequest, GetOrderResponse,
    ListCustomerOrdersRequest, ListCustomerOrdersResponse, Order, OrderStatus,
    UpdateOrderStatusRequest, UpdateOrderStatusResponse,
};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// The authenticated, authorised caller of one request.
#[derive(Debug)]
struct Caller {
    identity: Arc<Identity>,
    role: Role,
}

/// The gateway service of one node.
#[derive(Debug, Clone)]
pub struct Gateway {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    trust_domain: Arc<str>,
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

impl Gateway {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, trust_domain: &str) -> Gateway {
        Gateway {
            store,
            metrics,
            trust_domain: trust_domain.into(),
        }
    }

    /// Who is calling, and may they call `method`? The role comes from the certificate only.
    fn authorize<T>(&self, req: &Request<T>, method: Method) -> Result<Caller, Error> {
        let info = req.extensions().get::<PeerInfo>().ok_or_else(|| {
            Error::Unauthenticated("no verified client certificate on this connection".into())
        })?;
        let identity = info.identity.clone().map_err(|e| {
            Error::Unauthenticated(format!(
                "client certificate has no usable mesh identity: {e}"
            ))
        })?;
        if identity.trust_domain() != &*self.trust_domain {
            return Err(Error::Unauthenticated(format!(
                "certificate is for trust domain `{}`, this mesh is `{}`",
                identity.trust_domain(),
                self.trust_domain
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

    async fn create_order(&self, req: Request<CreateOrderRequest>) -> Result<Order, Error> {
        let caller = self.authorize(&req, Method::CreateOrder)?;
        let req = req.into_inner();
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
        Ok(project(&stored, caller.role))
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Order, Error> {
        let caller = self.authorize(&req, Method::GetOrder)?;
        let req = req.into_inner();
        let id = validate::order_id(&req.order_id)?;
        validate::purpose(&req.purpose)?;
        let order = self
            .store
            .get_order(&id)?
            .ok_or_else(|| Error::NotFound("order not found".into()))?;
        Ok(project(&order, caller.role))
    }

    async fn update_status(&self, req: Request<UpdateOrderStatusRequest>) -> Result<Order, Error> {
        let caller = self.authorize(&req, Method::UpdateOrderStatus)?;
        let req = req.into_inner();
        let update = validate::update_status(&req)?;
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
        Ok(project(&order, caller.role))
    }

    async fn list_orders(
        &self,
        req: Request<ListCustomerOrdersRequest>,
    ) -> Result<Vec<Order>, Error> {
        let caller = self.authorize(&req, Method::ListCustomerOrders)?;
        let req = req.into_inner();
        validate::customer_id(&req.customer_id)?;
        validate::purpose(&req.purpose)?;
        let orders = self.store.customer_orders(&req.customer_id)?;
        Ok(orders.iter().map(|o| project(o, caller.role)).collect())
    }
}

type OrderStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ListCustomerOrdersResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl OrderGateway for Gateway {
    async fn create_order(
        &self,
        req: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let order = self
            .observe(Method::CreateOrder, Gateway::create_order(self, req))
            .await?;
        Ok(Response::new(CreateOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        req: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order = self
            .observe(Method::GetOrder, Gateway::get_order(self, req))
            .await?;
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    async fn update_order_status(
        &self,
        req: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        let order = self
            .observe(Method::UpdateOrderStatus, self.update_status(req))
            .await?;
        Ok(Response::new(UpdateOrderStatusResponse {
            order: Some(order),
        }))
    }

    type ListCustomerOrdersStream = OrderStream;

    async fn list_customer_orders(
        &self,
        req: Request<ListCustomerOrdersRequest>,
    ) -> Result<Response<OrderStream>, Status> {
        let orders = self
            .observe(Method::ListCustomerOrders, self.list_orders(req))
            .await?;
        let stream = futures::stream::iter(
            orders
                .into_iter()
                .map(|o| Ok(ListCustomerOrdersResponse { order: Some(o) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
