//! The field columns of the role table's rows, built from shared groups (the facts of an order,
//! a full or a reduced address) so that rows that mean the same thing are the same.

use super::{Field, Visibility};
use Field as F;
use Visibility::{Full, Masked};

/// Status, items, totals, payment and courier: what a role that follows an order sees of it.
macro_rules! order_facts {
    () => {
        [
            (F::ExternalRef, Full),
            (F::Channel, Full),
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
        ]
    };
}

/// Where a parcel goes: the full address.
macro_rules! full_address {
    () => {
        [
            (F::AddressLine1, Full),
            (F::AddressLine2, Full),
            (F::City, Full),
            (F::State, Full),
            (F::Pincode, Full),
        ]
    };
}

/// An address "masked": reduced to city, state and pincode.
macro_rules! reduced_address {
    () => {
        [(F::City, Full), (F::State, Full), (F::Pincode, Full)]
    };
}

pub(super) const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [(Field, Visibility); A],
    b: [(Field, Visibility); B],
) -> [(Field, Visibility); N] {
    assert!(A + B == N, "concat: N must be A + B");
    let mut out = [(F::Status, Full); N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

pub(super) const STOREFRONT_FIELDS: [(Field, Visibility); 16] = concat(
    [
        (F::CustomerId, Full),
        (F::Name, Masked),
        (F::Phone, Masked),
        (F::Email, Masked),
    ],
    order_facts!(),
);

pub(super) const OMS_FIELDS: [(Field, Visibility); 20] = concat(
    concat::<5, 3, 8>(
        [
            (F::CustomerId, Full),
            (F::Name, Masked),
            (F::Phone, Masked),
            (F::Email, Masked),
            (F::Consent, Full),
        ],
        reduced_address!(),
    ),
    order_facts!(),
);

pub(super) const SUPPORT_FIELDS: [(Field, Visibility); 20] = concat(
    concat::<5, 3, 8>(
        [
            (F::CustomerId, Full),
            (F::Name, Masked),
            (F::Phone, Masked),
            (F::Email, Masked),
            (F::ContactHandle, Full),
        ],
        reduced_address!(),
    ),
    order_facts!(),
);

pub(super) const WMS_FIELDS: [(Field, Visibility); 12] = concat(
    concat::<2, 5, 7>([(F::Name, Full), (F::Phone, Masked)], full_address!()),
    [
        (F::ItemSkus, Full),
        (F::ItemNames, Full),
        (F::ItemQuantities, Full),
        (F::Status, Full),
        (F::Courier, Full),
    ],
);

/// Label and courier: who and where, a handle instead of the number, and what to collect.
pub(super) const DELIVERY_FIELDS: [(Field, Visibility); 12] = concat(
    concat::<2, 5, 7>([(F::Name, Full), (F::ContactHandle, Full)], full_address!()),
    [
        (F::PaymentMethod, Full),
        (F::PaymentAmount, Full),
        (F::PaymentStatus, Full),
        (F::Status, Full),
        (F::Courier, Full),
    ],
);

/// Contact fields that `RevealField` can show one at a time.
pub(super) const REVEALABLE: &[Field] = &[
    F::Name,
    F::Phone,
    F::Email,
    F::AddressLine1,
    F::AddressLine2,
];
