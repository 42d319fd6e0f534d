//! Calls any gateway method with one set of arguments: how the role-by-method tests drive a node.

use mesh_node::access::policy::Method;
use mesh_node::security::proof::Signer;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_proto::v1::{
    GetOrderRequest, GetShippingLabelRequest, ListCustomerOrdersRequest, Order, OrderStatus,
    ResolveContactHandleRequest, ResolveContactHandleResponse, RevealFieldRequest,
    RevealFieldResponse, ShippingLabel, UpdateOrderStatusRequest,
};
use tonic::Status;
use tonic::transport::Channel;

/// The order, customer and handle a probe aims at, and what it asks for.
#[derive(Debug, Clone)]
pub struct Target {
    pub order_id: String,
    pub customer_id: String,
    pub handle: String,
    pub purpose: String,
    /// The status an `UpdateOrderStatus` probe asks for.
    pub status: OrderStatus,
    /// The field a `RevealField` probe asks for.
    pub reveal: String,
    /// The customer a `CreateOrder` probe creates an order for.
    pub new_customer: String,
}

/// What a method answered.
#[derive(Debug, Clone)]
pub enum Answer {
    Orders(Vec<Order>),
    Label(Box<ShippingLabel>),
    Revealed(RevealFieldResponse),
    Resolved(ResolveContactHandleResponse),
}

impl Answer {
    pub fn orders(self) -> Vec<Order> {
        match self {
            Answer::Orders(o) => o,
            other => panic!("expected orders, got {other:?}"),
        }
    }
}

fn req<T>(signer: Option<&Signer>, m: Method, body: T) -> tonic::Request<T>
where
    T: prost::Message,
{
    match signer {
        Some(s) => s.signed(m.path(), body),
        None => tonic::Request::new(body),
    }
}

/// Calls `method` through `client`, signing the request when `signer` is given.
pub async fn call(
    client: &mut OrderGatewayClient<Channel>,
    signer: Option<&Signer>,
    method: Method,
    t: &Target,
) -> Result<Answer, Status> {
    let get = GetOrderRequest {
        order_id: t.order_id.clone(),
        purpose: t.purpose.clone(),
        fields: Vec::new(),
    };
    Ok(match method {
        Method::CreateOrder => Answer::Orders(
            client
                .create_order(req(
                    signer,
                    method,
                    crate::fixtures::sample_order(&t.new_customer, 901),
                ))
                .await?
                .into_inner()
                .order
                .into_iter()
                .collect(),
        ),
        Method::GetOrder => Answer::Orders(
            client
                .get_order(req(signer, method, get))
                .await?
                .into_inner()
                .order
                .into_iter()
                .collect(),
        ),
        Method::UpdateOrderStatus => Answer::Orders(
            client
                .update_order_status(req(
                    signer,
                    method,
                    UpdateOrderStatusRequest {
                        order_id: t.order_id.clone(),
                        status: t.status as i32,
                        purpose: t.purpose.clone(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .order
                .into_iter()
                .collect(),
        ),
        Method::ListCustomerOrders => {
            let mut stream = client
                .list_customer_orders(req(
                    signer,
                    method,
                    ListCustomerOrdersRequest {
                        customer_id: t.customer_id.clone(),
                        purpose: t.purpose.clone(),
                    },
                ))
                .await?
                .into_inner();
            let mut orders = Vec::new();
            while let Some(item) = stream.message().await? {
                orders.extend(item.order);
            }
            Answer::Orders(orders)
        }
        Method::GetShippingLabel => Answer::Label(Box::new(
            client
                .get_shipping_label(req(
                    signer,
                    method,
                    GetShippingLabelRequest {
                        order_id: t.order_id.clone(),
                        purpose: t.purpose.clone(),
                    },
                ))
                .await?
                .into_inner()
                .label
                .unwrap_or_default(),
        )),
        Method::RevealField => Answer::Revealed(
            client
                .reveal_field(req(
                    signer,
                    method,
                    RevealFieldRequest {
                        order_id: t.order_id.clone(),
                        field: t.reveal.clone(),
                        reason_code: "ndr-callback".into(),
                        reason_text: "buyer missed the delivery and asked for a call back".into(),
                    },
                ))
                .await?
                .into_inner(),
        ),
        Method::ResolveContactHandle => Answer::Resolved(
            client
                .resolve_contact_handle(req(
                    signer,
                    method,
                    ResolveContactHandleRequest {
                        contact_handle: t.handle.clone(),
                        purpose: t.purpose.clone(),
                    },
                ))
                .await?
                .into_inner(),
        ),
    })
}
