//! Unit tests of `mod`.

use super::*;
use crate::security::crypto::generate_key_file;
use mesh_proto::v1::Customer;

fn order(customer: &str) -> Order {
    Order {
        order_id: OrderId::mint(partition_of(customer)).to_string(),
        customer_id: customer.into(),
        customer: Some(Customer {
            name: "Asha Rao".into(),
            phone: "+919812345678".into(),
            ..Customer::default()
        }),
        status: 1,
        ..Order::default()
    }
}

fn keys() -> Arc<NodeKeys> {
    Arc::new(NodeKeys::parse(&generate_key_file()).expect("key"))
}

#[tokio::test]
async fn create_get_update_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), keys(), None).expect("open");
    let o = order("cust-1");
    store.create_order(&o, "").await.expect("create");
    let id: OrderId = o.order_id.parse().expect("id");
    assert_eq!(store.get_order(&id).expect("get"), Some(o.clone()));
    let updated = store
        .update_order(&id, |o| {
            o.status = 2;
            Ok(())
        })
        .await
        .expect("update");
    assert_eq!(updated.status, 2);
    let rejected = store.update_order(&id, |_| Err("no".into())).await;
    assert!(matches!(rejected, Err(StorageError::Rejected(_))));
    store
        .create_order(&order("cust-1"), "")
        .await
        .expect("second");
    assert_eq!(store.customer_orders("cust-1").expect("list").len(), 2);
    assert_eq!(store.customer_orders("cust-2").expect("list").len(), 0);
    let inv = store.inventory().expect("inventory");
    assert_eq!((inv.customers, inv.orders, inv.unreadable), (1, 2, 0));
}

#[tokio::test]
async fn idempotency_key_returns_the_first_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), keys(), None).expect("open");
    let first = store.create_order(&order("c"), "k1").await.expect("first");
    let again = store.create_order(&order("c"), "k1").await.expect("again");
    assert_eq!(first.order_id, again.order_id);
    assert_eq!(store.customer_orders("c").expect("list").len(), 1);
}

#[tokio::test]
async fn wrong_key_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    Store::open(dir.path(), keys(), None)
        .expect("open")
        .close()
        .await
        .expect("close");
    assert!(matches!(
        Store::open(dir.path(), keys(), None),
        Err(StorageError::KeyMismatch)
    ));
}
