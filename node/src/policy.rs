//! The role table: which gateway methods each role may call and which order fields it may see.
//!
//! This file is the single source of truth for access (DESIGN.md section 5). It is data, not code
//! paths: the gateway asks [`may_call`] and [`projection`] (via `projection::project`) and nothing
//! else decides who sees what. Roles that are not granted a method here are refused with
//! `PERMISSION_DENIED`; fields not listed for a role are withheld.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    CreateOrder,
    GetOrder,
    UpdateOrderStatus,
    ListCustomerOrders,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::CreateOrder,
        Method::GetOrder,
        Method::UpdateOrderStatus,
        Method::ListCustomerOrders,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::CreateOrder => "CreateOrder",
            Method::GetOrder => "GetOrder",
            Method::UpdateOrderStatus => "UpdateOrderStatus",
            Method::ListCustomerOrders => "ListCustomerOrders",
        }
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
    pub const ALL: [Field; 22] = [
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

    /// Whether the field identifies or contacts the buyer (the fields sealed as PII).
    pub fn is_buyer_field(self) -> bool {
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
        )
    }
}

/// How much of a field a role sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// The stored value.
    Full,
    /// A masked value (see `mask`): `+91******3210`, `r***@example.com`, `R*** K***`.
    Masked,
    /// Nothing: the field is left empty and listed in `OrderView.withheld_fields`.
    Withheld,
}

/// One row of the role table.
#[derive(Debug)]
pub struct RolePolicy {
    pub role: Role,
    /// The methods the role may call. Anything else is `PERMISSION_DENIED`.
    pub methods: &'static [Method],
    /// Fields the role sees in full or masked; every other field is withheld.
    pub fields: &'static [(Field, Visibility)],
}

use Field as F;
use Method as M;
use Visibility::{Full, Masked};

/// The role table. Roles whose rows grant no methods are refused everything on the gateway until
/// their capabilities land (issue 5 fills in the rest of DESIGN.md section 5).
pub static ROLE_TABLE: &[RolePolicy] = &[
    RolePolicy {
        role: Role::Storefront,
        methods: &[M::CreateOrder, M::GetOrder, M::ListCustomerOrders],
        // Status, items and totals; the buyer's contact masked; no address.
        fields: &[
            (F::CustomerId, Full),
            (F::ExternalRef, Full),
            (F::Channel, Full),
            (F::Name, Masked),
            (F::Phone, Masked),
            (F::Email, Masked),
            (F::ItemSkus, Full),
            (F::ItemNames, Full),
            (F::ItemQuantities, Full),
            (F::ItemPrices, Full),
            (F::Total, Full),
            (F::PaymentMethod, Full),
            (F::PaymentAmount, Full),
            (F::PaymentStatus, Full),
            (F::Status, Full),
            (F::Courier, Full),
        ],
    },
    RolePolicy {
        role: Role::Oms,
        methods: &[M::GetOrder, M::UpdateOrderStatus, M::ListCustomerOrders],
        // Reads every order; phone and email masked.
        fields: &[
            (F::CustomerId, Full),
            (F::ExternalRef, Full),
            (F::Channel, Full),
            (F::Name, Full),
            (F::Phone, Masked),
            (F::Email, Masked),
            (F::AddressLine1, Full),
            (F::AddressLine2, Full),
            (F::City, Full),
            (F::State, Full),
            (F::Pincode, Full),
            (F::ItemSkus, Full),
            (F::ItemNames, Full),
            (F::ItemQuantities, Full),
            (F::ItemPrices, Full),
            (F::Total, Full),
            (F::PaymentMethod, Full),
            (F::PaymentAmount, Full),
            (F::PaymentStatus, Full),
            (F::Status, Full),
            (F::Courier, Full),
            (F::Consent, Full),
        ],
    },
    RolePolicy {
        role: Role::Ims,
        methods: &[],
        fields: ORDER_FACTS_NO_BUYER,
    },
    RolePolicy {
        role: Role::Wms,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Label,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Courier,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Comms,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Support,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Marketing,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Analyst,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Admin,
        methods: &[],
        fields: &[],
    },
    RolePolicy {
        role: Role::Auditor,
        methods: &[],
        fields: &[],
    },
];

/// IMS sees stock facts only: SKU, quantity and order status, never a buyer field.
const ORDER_FACTS_NO_BUYER: &[(Field, Visibility)] = &[
    (F::ItemSkus, Full),
    (F::ItemQuantities, Full),
    (F::Status, Full),
];

/// The row of `role`. Every role has exactly one row (checked by a unit test).
pub fn policy_of(role: Role) -> &'static RolePolicy {
    ROLE_TABLE
        .iter()
        .find(|p| p.role == role)
        .unwrap_or(&DENY_ALL)
}

static DENY_ALL: RolePolicy = RolePolicy {
    role: Role::Admin,
    methods: &[],
    fields: &[],
};

/// Whether `role` may call `method` at all.
pub fn may_call(role: Role, method: Method) -> bool {
    policy_of(role).methods.contains(&method)
}

/// How much of `field` the role sees.
pub fn visibility(role: Role, field: Field) -> Visibility {
    policy_of(role)
        .fields
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(Visibility::Withheld, |(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_exactly_one_row() {
        for role in Role::ALL {
            assert_eq!(
                ROLE_TABLE.iter().filter(|p| p.role == role).count(),
                1,
                "{role}"
            );
        }
    }

    #[test]
    fn no_field_is_listed_twice_for_a_role() {
        for row in ROLE_TABLE {
            for field in Field::ALL {
                let n = row.fields.iter().filter(|(f, _)| *f == field).count();
                assert!(n <= 1, "{} lists {} {n} times", row.role, field.path());
            }
        }
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn ims_sees_no_buyer_field() {
        for field in Field::ALL.into_iter().filter(|f| f.is_buyer_field()) {
            assert_eq!(
                visibility(Role::Ims, field),
                Visibility::Withheld,
                "{}",
                field.path()
            );
        }
    }
}
