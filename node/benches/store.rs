//! Store benchmark: durable creates and reads straight on `Store` (no gRPC, no TLS), to separate
//! storage cost from transport cost. Prints throughput and group-commit batching per concurrency.
//!
//! `cargo bench -p mesh-node --bench store`

use mesh_node::domain::ids::{OrderId, partition_of};
use mesh_node::security::crypto::{NodeKeys, generate_key_file};
use mesh_node::storage::Store;
use mesh_node::storage::commit::FlushObserver;
use mesh_proto::v1::{Address, Customer, LineItem, Order};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Count {
    flushes: AtomicU64,
    writes: AtomicU64,
    micros: AtomicU64,
}

impl FlushObserver for Count {
    fn flushed(&self, batch: usize, seconds: f64) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(batch as u64, Ordering::Relaxed);
        self.micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

fn order(customer: &str, n: u64) -> Order {
    Order {
        order_id: OrderId::mint(partition_of(customer)).to_string(),
        customer_id: customer.into(),
        customer: Some(Customer {
            name: format!("Buyer {n}"),
            phone: "+919812345678".into(),
            email: "buyer@example.in".into(),
            address: Some(Address {
                line1: "1 Main Road".into(),
                line2: String::new(),
                city: "Pune".into(),
                state: "Maharashtra".into(),
                pincode: "411001".into(),
            }),
            ..Customer::default()
        }),
        items: vec![LineItem {
            sku: "SKU-1".into(),
            name: "Item".into(),
            quantity: 1,
            unit_price_paise: 10_000,
        }],
        total_paise: 10_000,
        status: 1,
        ..Order::default()
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(NodeKeys::parse(&generate_key_file()).expect("key"));
    let count = Arc::new(Count::default());
    let store = Arc::new(Store::open(dir.path(), keys, Some(count.clone())).expect("open"));
    println!(
        "{:<12} {:>5} {:>10} {:>14} {:>12}",
        "op", "conc", "ops/s", "writes/fsync", "ms/fsync"
    );
    for conc in [1usize, 16, 64] {
        let (f0, w0, m0) = (
            count.flushes.load(Ordering::Relaxed),
            count.writes.load(Ordering::Relaxed),
            count.micros.load(Ordering::Relaxed),
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        let started = Instant::now();
        let tasks: Vec<_> = (0..conc)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        store
                            .create_order(&order(&format!("c-{w}-{}", n % 10), n), "")
                            .await
                            .expect("create");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        let flushes = (count.flushes.load(Ordering::Relaxed) - f0).max(1) as f64;
        println!(
            "{:<12} {:>5} {:>10.0} {:>14.1} {:>12.2}",
            "create",
            conc,
            total as f64 / secs,
            (count.writes.load(Ordering::Relaxed) - w0) as f64 / flushes,
            (count.micros.load(Ordering::Relaxed) - m0) as f64 / flushes / 1000.0
        );
    }
}
