//! Shared fixtures: the one sample order every test and benchmark creates (with distinctive,
//! searchable PII), the plain requests and the create built around it, and byte searches of what a node keeps on
//! disk.

use crate::{GatewayClient, NodeProcess, Pki};
use mesh_node::access::policy::Role;
use mesh_proto::v1::{
    Address, Channel, CreateOrderRequest, Customer, GetOrderRequest, LineItem, Order, Payment,
    PaymentMethod, PaymentStatus,
};
use std::path::Path;

/// A valid order with PII derived from `n`, distinctive enough to search for on disk.
pub fn sample_order(customer_id: &str, n: u32) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer_id.into(),
        external_ref: format!("SF-{n}"),
        channel: Channel::Storefront as i32,
        customer: Some(Customer {
            name: format!("Meenakshi Sundaram{n}"),
            phone: format!("+9198{:08}", n % 100_000_000),
            email: format!("meenakshi.{n}@example.in"),
            address: Some(Address {
                line1: format!("{n} Lakshmi Nagar Main Road"),
                line2: "Near Ganesh Temple".into(),
                city: "Coimbatore".into(),
                state: "Tamil Nadu".into(),
                pincode: "641001".into(),
            }),
            ..Customer::default()
        }),
        items: vec![
            LineItem {
                sku: "SAREE-SILK-01".into(),
                name: "Silk saree".into(),
                quantity: 1,
                unit_price_paise: 349_900,
            },
            LineItem {
                sku: "BLOUSE-02".into(),
                name: "Blouse piece".into(),
                quantity: 2,
                unit_price_paise: 29_900,
            },
        ],
        total_paise: 409_700,
        payment: Some(Payment {
            method: PaymentMethod::Cod as i32,
            amount_paise: 409_700,
            status: PaymentStatus::Pending as i32,
        }),
        consent: None,
        idempotency_key: String::new(),
    }
}

/// [`sample_order`] with idempotency key `key`: a create that may be retried (through any
/// gateway) without making a second order.
pub fn keyed_order(customer_id: &str, n: u32, key: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        idempotency_key: key.to_owned(),
        ..sample_order(customer_id, n)
    }
}

/// A plain read of order `order_id`: no purpose, the role's default fields.
pub fn get_order_request(order_id: &str) -> GetOrderRequest {
    GetOrderRequest {
        order_id: order_id.to_owned(),
        purpose: String::new(),
        fields: Vec::new(),
    }
}

/// Every file under `dir`, concatenated: for byte searches of what a node keeps on disk.
pub fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                // Space a store preallocates (a journal is created at its full size) is zeros to
                // its end and can hold no text: leave it out, so searching stays fast.
                let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                out.extend_from_slice(&bytes[..used]);
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack` (as bytes).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Creates `req` through `client` and returns the order the gateway acknowledged; panics with
/// the status if it refused.
pub async fn create_ok(
    client: &mut GatewayClient,
    req: impl tonic::IntoRequest<CreateOrderRequest>,
) -> Order {
    client
        .create_order(req)
        .await
        .unwrap_or_else(|s| panic!("create: {s:?}"))
        .into_inner()
        .order
        .expect("an acknowledged create answers with the order")
}

/// Order `order_id`'s contact handle, as support reads it (purpose `ndr-callback`) through
/// `node`'s gateway.
pub async fn contact_handle(node: &NodeProcess, pki: &Pki, order_id: &str) -> String {
    node.client(&pki.client(Role::Support))
        .await
        .get_order(GetOrderRequest {
            order_id: order_id.to_owned(),
            purpose: "ndr-callback".into(),
            fields: vec!["customer.contact_handle".into()],
        })
        .await
        .expect("support read")
        .into_inner()
        .order
        .and_then(|o| o.customer)
        .expect("customer")
        .contact_handle
}
