//! The seven gateway methods, each a [`Call`]: what it routes by, which buyer fields its request
//! carries, and how the owner node handles it (validate, authorise the fields, touch storage,
//! project for the role). Everything around them (routing, forwarding, audit) is in `gateway`.

use super::{Call, Gateway};
use crate::access::policy::{self, Field, Method, Role, Visibility, Write};
use crate::access::projection::{buyer_text, project, project_fields, value_of};
use crate::access::windows;
use crate::api::authz::Caller;
use crate::audit::recorder::Access;
use crate::domain::ids::{ContactHandle, OrderId, Partition, partition_of};
use crate::domain::lifecycle::can_transition;
use crate::domain::validate;
use crate::error::Error;
use mesh_proto::v1::{
    Consent, CreateOrderRequest, CreateOrderResponse, Customer, ForwardedOrders, GetOrderRequest,
    GetOrderResponse, GetShippingLabelRequest, GetShippingLabelResponse, ListCustomerOrdersRequest,
    Order, OrderStatus, PaymentMethod, ResolveContactHandleRequest, ResolveContactHandleResponse,
    RevealFieldRequest, RevealFieldResponse, ShippingLabel, UpdateOrderStatusRequest,
    UpdateOrderStatusResponse,
};

fn customer_partition(customer_id: &str) -> Option<Partition> {
    validate::is_valid_customer_id(customer_id).then(|| partition_of(customer_id))
}

fn order_partition(order_id: &str) -> Option<Partition> {
    order_id.parse::<OrderId>().ok().map(|id| id.partition())
}

pub(super) struct Create;
pub(super) struct Get;
pub(super) struct Update;
pub(super) struct List;
pub(super) struct Label;
pub(super) struct Reveal;
pub(super) struct Resolve;

impl Call for Create {
    const METHOD: Method = Method::CreateOrder;
    const WRITES: bool = true;
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
                let field = Field::named("fields", path)?;
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
    const WRITES: bool = true;
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
        // Field by field, as the role table's `writes` column says (ARCHITECTURE.md, "Roles and
        // projections"): a field a role may not set is refused whatever the status.
        let mut courier_once = false;
        for (field, asked) in [
            (Field::PaymentStatus, update.payment_status.is_some()),
            (Field::Courier, req.courier.is_some()),
        ] {
            match policy::may_write(caller.role, field) {
                _ if !asked => {}
                None => {
                    return Err(Error::PermissionDenied(format!(
                        "role `{}` may not set `{}`",
                        caller.role,
                        field.path()
                    )));
                }
                // Only the courier is assigned once (a role-table unit test keeps it so).
                Some(Write::WhileUnset) => courier_once = field == Field::Courier,
                Some(Write::Always) => {}
            }
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
                if courier_once
                    && let (Some(have), Some(want)) = (&order.courier, &courier)
                    && have != want
                {
                    return Err(format!(
                        "this order's courier is already assigned; role `{}` may assign one only \
                         while none is (the OMS can reassign it)",
                        caller.role
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
                if windows::closes(update.status) && order.closed_at.is_none() {
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
        let field = Field::named("field", &req.field)?;
        validate::reveal_reason(&req.reason_code, &req.reason_text)?;
        if !policy::may_reveal(caller.role, field) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` may not reveal `{}`",
                caller.role,
                field.path()
            )));
        }
        let order = gw.order(&id, access)?;
        // The words go into the trail sealed under this node's key (see `Store::seal_note`).
        access.note = gw.store.seal_note(
            &gw.store.customer_subject(&order.customer_id),
            &req.reason_text,
        );
        let at = gw.at();
        if !windows::in_window(&order, policy::window(caller.role), at.now, at.grace) {
            return Err(Error::PermissionDenied(format!(
                "role `{}` no longer sees this order's buyer fields",
                caller.role
            )));
        }
        let remaining = gw.ledger.charge(&caller.identity.to_string()).await?;
        let value = value_of(&order, field);
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
        if !windows::handle_resolves(&order, at.now, at.grace) {
            return Err(Error::FailedPrecondition(format!(
                "this contact handle has expired: its order closed more than {} ago",
                humantime::format_duration(at.grace)
            )));
        }
        access.fields = vec![Field::Phone.path().to_owned()];
        Ok(ResolveContactHandleResponse {
            valid_until: windows::handle_valid_until(&order, at.grace).map(Into::into),
            phone: order.customer.map(|c| c.phone).unwrap_or_default(),
        })
    }
}
