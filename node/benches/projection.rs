//! Projection benchmark: the cost of building one role's view of an order (field copies, masks,
//! the window check and the `OrderView` lists), which every GetOrder pays on the owner node.
//! Target (issue 5): under 5 microseconds per GetOrder.
//!
//! `cargo bench -p mesh-node --bench projection`

use mesh_node::access::policy::Role;
use mesh_node::access::projection::{At, project};
use mesh_proto::v1::{Address, Courier, Customer, LineItem, Order, OrderStatus, Payment};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

fn order() -> Order {
    Order {
        order_id: "o1-025f-0123456789abcdef0123".into(),
        customer_id: "cust-1".into(),
        external_ref: "SF-1001".into(),
        channel: 1,
        customer: Some(Customer {
            name: "Meenakshi Sundaram".into(),
            phone: "+919876543210".into(),
            email: "meenakshi@example.in".into(),
            address: Some(Address {
                line1: "12 Lakshmi Nagar Main Road".into(),
                line2: "Near Ganesh Temple".into(),
                city: "Coimbatore".into(),
                state: "Tamil Nadu".into(),
                pincode: "641001".into(),
            }),
            contact_handle: "ch1-025f-00112233445566778899aabb".into(),
        }),
        items: (0..3)
            .map(|i| LineItem {
                sku: format!("SKU-{i}"),
                name: format!("Item {i}"),
                quantity: 1 + i,
                unit_price_paise: 49_900,
            })
            .collect(),
        total_paise: 299_400,
        payment: Some(Payment {
            method: 1,
            amount_paise: 299_400,
            status: 1,
        }),
        status: OrderStatus::Shipped as i32,
        courier: Some(Courier {
            name: "Delhivery".into(),
            awb: "DL123456789IN".into(),
        }),
        created_at: Some(SystemTime::now().into()),
        updated_at: Some(SystemTime::now().into()),
        ..Order::default()
    }
}

/// Median nanoseconds per projection over `rounds` rounds of `per_round` calls.
fn measure(order: &Order, role: Role, at: At, rounds: usize, per_round: u32) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(project(black_box(order), black_box(role), black_box(at)));
            }
            start.elapsed().as_nanos() as f64 / f64::from(per_round)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let order = order();
    let at = At {
        now: SystemTime::now(),
        grace: Duration::from_secs(72 * 3600),
    };
    // Warm up caches and the allocator.
    for role in Role::ALL {
        measure(&order, role, at, 3, 10_000);
    }
    println!("projection per GetOrder (median of 25 rounds x 20000 calls), target < 5000 ns");
    println!("{:<11} {:>9}", "role", "ns/op");
    let mut worst: f64 = 0.0;
    for role in Role::ALL {
        let ns = measure(&order, role, at, 25, 20_000);
        worst = worst.max(ns);
        println!("{:<11} {:>9.0}", role.as_str(), ns);
    }
    println!(
        "worst role: {worst:.0} ns ({})",
        if worst < 5_000.0 { "met" } else { "MISSED" }
    );
}
