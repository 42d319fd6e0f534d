//! The buyer and basket the node's unit tests build orders from (one fixture, so every layer's
//! tests describe the same customer). Test builds only.

use mesh_proto::v1::{Address, Customer, LineItem};

/// A buyer with every contact field set.
pub(crate) fn buyer() -> Customer {
    Customer {
        name: "Ravi Kumar".into(),
        phone: "+919876543210".into(),
        email: "ravi@example.com".into(),
        address: Some(Address {
            line1: "12 MG Road".into(),
            line2: String::new(),
            city: "Bengaluru".into(),
            state: "Karnataka".into(),
            pincode: "560001".into(),
        }),
        ..Customer::default()
    }
}

/// Two kurtas at 499 rupees: 99,800 paise.
pub(crate) fn basket() -> Vec<LineItem> {
    vec![LineItem {
        sku: "SKU-1".into(),
        name: "Kurta".into(),
        quantity: 2,
        unit_price_paise: 49_900,
    }]
}
