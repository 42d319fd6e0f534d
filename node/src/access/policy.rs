//! The role table: which gateway methods each role may call, which order fields it sees and how,
//! which fields it may reveal with a reason, which statuses it may set, and for how long it sees
//! the buyer at all.
//!
//! This file is the single source of truth for access (ARCHITECTURE.md, "Roles and projections"). It is data, not code
//! paths: the gateway asks the functions at the bottom of this file, `projection::project` builds
//! every response from [`visibility`] and [`window`], and `mesh-ctl access show` prints
//! [`ROLE_TABLE`] itself. Anything not granted here is refused (`PERMISSION_DENIED`) or withheld.

use crate::domain::validate::{Violation, Violations};
use mesh_proto::v1::OrderStatus;
use std::{fmt, str::FromStr};

/// Every role a client certificate can carry (`spiffe://<td>/client/<role>/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Storefront,
    Oms,
    Ims,
    Wms,
    Label,
    Courier,
    Comms,
    Support,
    Marketing,
    Analyst,
    Admin,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 12] = [
        Role::Storefront,
        Role::Oms,
        Role::Ims,
        Role::Wms,
        Role::Label,
        Role::Courier,
        Role::Comms,
        Role::Support,
        Role::Marketing,
        Role::Analyst,
        Role::Admin,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storefront => "storefront",
            Role::Oms => "oms",
            Role::Ims => "ims",
            Role::Wms => "wms",
            Role::Label => "label",
            Role::Courier => "courier",
            Role::Comms => "comms",
            Role::Support => "support",
            Role::Marketing => "marketing",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role `{0}`; known roles: storefront, oms, ims, wms, label, courier, comms, support, marketing, analyst, admin, auditor"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The gateway methods that touch order data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    CreateOrder,
    GetOrder,
    UpdateOrderStatus,
    ListCustomerOrders,
    GetShippingLabel,
    RevealField,
    ResolveContactHandle,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::CreateOrder,
        Method::GetOrder,
        Method::UpdateOrderStatus,
        Method::ListCustomerOrders,
        Method::GetShippingLabel,
        Method::RevealField,
        Method::ResolveContactHandle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::CreateOrder => "CreateOrder",
            Method::GetOrder => "GetOrder",
            Method::UpdateOrderStatus => "UpdateOrderStatus",
            Method::ListCustomerOrders => "ListCustomerOrders",
            Method::GetShippingLabel => "GetShippingLabel",
            Method::RevealField => "RevealField",
            Method::ResolveContactHandle => "ResolveContactHandle",
        }
    }

    /// The gRPC path, as in audit records and client proofs.
    pub const fn path(self) -> &'static str {
        match self {
            Method::CreateOrder => "/dsm.v1.OrderGateway/CreateOrder",
            Method::GetOrder => "/dsm.v1.OrderGateway/GetOrder",
            Method::UpdateOrderStatus => "/dsm.v1.OrderGateway/UpdateOrderStatus",
            Method::ListCustomerOrders => "/dsm.v1.OrderGateway/ListCustomerOrders",
            Method::GetShippingLabel => "/dsm.v1.OrderGateway/GetShippingLabel",
            Method::RevealField => "/dsm.v1.OrderGateway/RevealField",
            Method::ResolveContactHandle => "/dsm.v1.OrderGateway/ResolveContactHandle",
        }
    }

    pub(crate) fn from_path(path: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.path() == path)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of an order that a projection decides on, named as in the proto (dotted paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    CustomerId,
    ExternalRef,
    Channel,
    Name,
    Phone,
    Email,
    AddressLine1,
    AddressLine2,
    City,
    State,
    Pincode,
    ContactHandle,
    ItemSkus,
    ItemNames,
    ItemQuantities,
    ItemPrices,
    Total,
    PaymentMethod,
    PaymentAmount,
    PaymentStatus,
    Status,
    Courier,
    Consent,
}

impl Field {
    pub const ALL: [Field; 23] = [
        Field::CustomerId,
        Field::ExternalRef,
        Field::Channel,
        Field::Name,
        Field::Phone,
        Field::Email,
        Field::AddressLine1,
        Field::AddressLine2,
        Field::City,
        Field::State,
        Field::Pincode,
        Field::ContactHandle,
        Field::ItemSkus,
        Field::ItemNames,
        Field::ItemQuantities,
        Field::ItemPrices,
        Field::Total,
        Field::PaymentMethod,
        Field::PaymentAmount,
        Field::PaymentStatus,
        Field::Status,
        Field::Courier,
        Field::Consent,
    ];

    /// The proto path of the field, as reported in `OrderView` and in error messages.
    pub fn path(self) -> &'static str {
        match self {
            Field::CustomerId => "customer_id",
            Field::ExternalRef => "external_ref",
            Field::Channel => "channel",
            Field::Name => "customer.name",
            Field::Phone => "customer.phone",
            Field::Email => "customer.email",
            Field::AddressLine1 => "customer.address.line1",
            Field::AddressLine2 => "customer.address.line2",
            Field::City => "customer.address.city",
            Field::State => "customer.address.state",
            Field::Pincode => "customer.address.pincode",
            Field::ContactHandle => "customer.contact_handle",
            Field::ItemSkus => "items.sku",
            Field::ItemNames => "items.name",
            Field::ItemQuantities => "items.quantity",
            Field::ItemPrices => "items.unit_price_paise",
            Field::Total => "total_paise",
            Field::PaymentMethod => "payment.method",
            Field::PaymentAmount => "payment.amount_paise",
            Field::PaymentStatus => "payment.status",
            Field::Status => "status",
            Field::Courier => "courier",
            Field::Consent => "consent",
        }
    }

    pub(crate) fn from_path(path: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.path() == path)
    }

    /// The field a client names in request field `name` (a field mask entry, a field to reveal),
    /// or the violation that says what a field path is.
    pub fn named(name: &str, path: &str) -> Result<Field, Violations> {
        Field::from_path(path).ok_or_else(|| {
            Violations(vec![Violation {
                field: name.into(),
                problem: "is not a field path of an order (for example `customer.phone`; see OrderView)",
            }])
        })
    }

    /// Whether the field identifies or reaches the buyer (the fields sealed as PII, and the
    /// handle that stands in for the phone).
    pub(crate) fn is_buyer_field(self) -> bool {
        matches!(
            self,
            Field::CustomerId
                | Field::Name
                | Field::Phone
                | Field::Email
                | Field::AddressLine1
                | Field::AddressLine2
                | Field::City
                | Field::State
                | Field::Pincode
                | Field::ContactHandle
        )
    }
}

/// How much of a field a role sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// The stored value.
    Full,
    /// The field's mask (see `mask`): `+91******3210`, `r***@example.com`, `R*** K***`. Only
    /// fields with a masking rule (name, phone, email) may be masked.
    Masked,
    /// The first word of the name (`Ravi`): enough to greet, not to identify. Name only.
    FirstName,
    /// Nothing: the field is left empty and listed in `OrderView.withheld_fields`.
    Withheld,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Full => "full",
            Visibility::Masked => "masked",
            Visibility::FirstName => "first-name",
            Visibility::Withheld => "withheld",
        }
    }
}

/// For how long a role sees the buyer's fields of an order. Outside its window a role still sees
/// the order's non-buyer fields (status, SKUs); every buyer field is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// For as long as the order exists.
    Always,
    /// Until the grace period after the order closes (DELIVERED, RTO or CANCELLED).
    UntilClosed,
    /// While the order is with the courier (SHIPPED, OUT_FOR_DELIVERY, DELIVERY_FAILED) and for
    /// the grace period after it is DELIVERED or RTO. Never before shipping, never if cancelled.
    InTransit,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Always => "always",
            Window::UntilClosed => "until closed + grace",
            Window::InTransit => "in transit until closed + grace",
        }
    }
}

/// One row of the role table.
#[derive(Debug)]
pub struct RolePolicy {
    pub role: Role,
    /// The job the role does, as in ARCHITECTURE.md, "Roles and projections".
    pub job: &'static str,
    /// The methods the role may call. Anything else is `PERMISSION_DENIED`.
    pub methods: &'static [Method],
    /// Fields the role sees in full, masked or reduced; every other field is withheld.
    pub fields: &'static [(Field, Visibility)],
    /// Fields the role may see unmasked one at a time with `RevealField` and a reason.
    pub reveal: &'static [Field],
    /// The statuses the role may move an order to (`UpdateOrderStatus`); the lifecycle decides
    /// from which.
    pub statuses: &'static [OrderStatus],
    /// The other order fields the role may set with a status update, and when; every field not
    /// listed is refused (`PERMISSION_DENIED`), whatever the status.
    pub writes: &'static [(Field, Write)],
    /// For how long the role sees the buyer's fields.
    pub window: Window,
}

use Field as F;
use Method as M;
use OrderStatus as S;
use Visibility::{FirstName, Full};
use rows::{
    DELIVERY_FIELDS, OMS_FIELDS, REVEALABLE, STOREFRONT_FIELDS, SUPPORT_FIELDS, WMS_FIELDS,
};

mod rows;

/// The role table (ARCHITECTURE.md, "Roles and projections").
pub static ROLE_TABLE: &[RolePolicy] = &[
    RolePolicy {
        role: Role::Storefront,
        job: "create orders, read status of orders",
        methods: &[M::CreateOrder, M::GetOrder, M::ListCustomerOrders],
        fields: &STOREFRONT_FIELDS,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Oms,
        job: "read and update any order",
        methods: &[
            M::GetOrder,
            M::UpdateOrderStatus,
            M::ListCustomerOrders,
            M::RevealField,
        ],
        fields: &OMS_FIELDS,
        reveal: REVEALABLE,
        statuses: &[
            S::Packed,
            S::Shipped,
            S::OutForDelivery,
            S::Delivered,
            S::DeliveryFailed,
            S::Rto,
            S::Cancelled,
        ],
        writes: &[
            (F::PaymentStatus, Write::Always),
            (F::Courier, Write::Always),
        ],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Ims,
        job: "stock and SKU events only",
        methods: &[M::GetOrder],
        fields: &[
            (F::ItemSkus, Full),
            (F::ItemQuantities, Full),
            (F::Status, Full),
        ],
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Wms,
        job: "pick, pack, status updates",
        methods: &[M::GetOrder, M::UpdateOrderStatus],
        fields: &WMS_FIELDS,
        reveal: &[],
        statuses: &[S::Packed, S::Shipped],
        // Hands the parcel to a courier once; replacing an assigned AWB is the OMS's call.
        writes: &[(F::Courier, Write::WhileUnset)],
        window: Window::UntilClosed,
    },
    RolePolicy {
        role: Role::Label,
        job: "shipping label",
        methods: &[M::GetShippingLabel],
        fields: &DELIVERY_FIELDS,
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::UntilClosed,
    },
    RolePolicy {
        role: Role::Courier,
        job: "delivery, status updates",
        methods: &[M::GetOrder, M::UpdateOrderStatus],
        fields: &DELIVERY_FIELDS,
        reveal: &[],
        statuses: &[S::OutForDelivery, S::Delivered, S::DeliveryFailed],
        writes: &[],
        window: Window::InTransit,
    },
    RolePolicy {
        role: Role::Comms,
        job: "notifications; resolves contact handles",
        methods: &[M::GetOrder, M::ResolveContactHandle],
        fields: &[
            (F::Name, FirstName),
            (F::Phone, Full),
            (F::Status, Full),
            (F::Courier, Full),
        ],
        reveal: &[],
        statuses: &[],
        writes: &[],
        // Messages about an order end with it: the number stops being readable when the
        // order's handle stops resolving.
        window: Window::UntilClosed,
    },
    RolePolicy {
        role: Role::Support,
        job: "NDR / RTO handling",
        methods: &[
            M::GetOrder,
            M::UpdateOrderStatus,
            M::ListCustomerOrders,
            M::RevealField,
        ],
        fields: &SUPPORT_FIELDS,
        reveal: REVEALABLE,
        statuses: &[S::OutForDelivery, S::Rto],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Marketing,
        job: "audiences (governed exports only; no direct reads)",
        methods: &[],
        fields: &[],
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Analyst,
        job: "reports (governed exports only; no direct reads)",
        methods: &[],
        fields: &[],
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Admin,
        job: "mesh operations (Admin service); no buyer PII",
        methods: &[],
        fields: &[],
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
    RolePolicy {
        role: Role::Auditor,
        job: "reads the audit trail (Audit service); no buyer PII",
        methods: &[],
        fields: &[],
        reveal: &[],
        statuses: &[],
        writes: &[],
        window: Window::Always,
    },
];

/// The row of `role`. Every role has exactly one row (checked by a unit test).
pub(crate) fn policy_of(role: Role) -> &'static RolePolicy {
    ROLE_TABLE
        .iter()
        .find(|p| p.role == role)
        .unwrap_or(&DENY_ALL)
}

static DENY_ALL: RolePolicy = RolePolicy {
    role: Role::Admin,
    job: "",
    methods: &[],
    fields: &[],
    reveal: &[],
    statuses: &[],
    writes: &[],
    window: Window::Always,
};

/// Whether `role` may call `method` at all.
pub fn may_call(role: Role, method: Method) -> bool {
    policy_of(role).methods.contains(&method)
}

/// How much of `field` the role sees (inside its window).
pub fn visibility(role: Role, field: Field) -> Visibility {
    policy_of(role)
        .fields
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(Visibility::Withheld, |(_, v)| *v)
}

/// For how long the role sees buyer fields.
pub fn window(role: Role) -> Window {
    policy_of(role).window
}

/// Whether `role` may reveal `field` with `RevealField`.
pub(crate) fn may_reveal(role: Role, field: Field) -> bool {
    policy_of(role).reveal.contains(&field)
}

/// When a role may set a field with a status update (the `writes` column of the role table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Whenever the status update itself is allowed.
    Always,
    /// Only while the order has no value for it yet (assign once, never replace).
    WhileUnset,
}

impl Write {
    pub fn as_str(self) -> &'static str {
        match self {
            Write::Always => "always",
            Write::WhileUnset => "while unset",
        }
    }
}

/// Whether and when `role` may set `field` with a status update.
pub fn may_write(role: Role, field: Field) -> Option<Write> {
    policy_of(role)
        .writes
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, w)| *w)
}

/// Whether `role` may move an order to `status`.
pub(crate) fn may_set_status(role: Role, status: OrderStatus) -> bool {
    policy_of(role).statuses.contains(&status)
}

/// Roles that see no buyer field at all must not send one either: a request from them that
/// carries or asks for a buyer field is refused at the interface.
pub(crate) fn sees_no_buyer_field(role: Role) -> bool {
    Field::ALL
        .into_iter()
        .filter(|f| f.is_buyer_field())
        .all(|f| visibility(role, f) == Visibility::Withheld)
}

#[cfg(test)]
mod tests;
