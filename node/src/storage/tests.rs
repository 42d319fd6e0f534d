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

/// A data directory of the sled releases (format 1) is refused with a message that says what was
/// found and what to do, and nothing in it is touched: no file changes, nothing is added.
#[tokio::test]
async fn an_old_sled_data_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What sled 0.34 leaves at the top of a data directory, beside the node's audit trail.
    std::fs::write(
        dir.path().join("conf"),
        b"segment_size: 524288\nuse_compression: false\n",
    )
    .expect("conf");
    std::fs::write(dir.path().join("db"), vec![7u8; 4096]).expect("db");
    std::fs::create_dir(dir.path().join("blobs")).expect("blobs");
    std::fs::create_dir(dir.path().join("audit")).expect("audit");
    let snapshot = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect();
        all.sort();
        all
    };
    let before = snapshot(dir.path());
    let err = Store::open(dir.path(), keys(), None).expect_err("a sled directory is refused");
    let message = err.to_string();
    for needle in [
        "format v1",
        "sled",
        "changed nothing",
        "empty data directory",
    ] {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "the old directory was changed"
    );
}

/// A write is durable when acknowledged and a reopened store has it, including its indexes.
#[tokio::test]
async fn a_closed_and_reopened_store_has_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let mut ids = Vec::new();
    {
        let store = Store::open(dir.path(), keys.clone(), None).expect("open");
        for i in 0..50 {
            let o = order(&format!("cust-{i}"));
            store.create_order(&o, "").await.expect("create");
            ids.push(o.order_id);
        }
        store.close().await.expect("close");
    }
    let store = Store::open(dir.path(), keys, None).expect("reopen");
    for id in &ids {
        let id: OrderId = id.parse().expect("id");
        assert!(
            store.get_order(&id).expect("read").is_some(),
            "order {id} lost"
        );
    }
    let inv = store.inventory().expect("inventory");
    assert_eq!((inv.orders, inv.unreadable, inv.dangling_index), (50, 0, 0));
}

/// A read never answers with data that is not durable yet: a write whose group is committed but
/// not synced is visible to the store's readers, and `settled` holds the answer until the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_until_what_it_could_have_seen_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), keys(), None).expect("open"));
    let o = order("cust-dirty");
    let id: OrderId = o.order_id.parse().expect("id");
    // Nothing in flight: settling costs nothing and returns at once.
    tokio::time::timeout(std::time::Duration::from_secs(5), store.settled())
        .await
        .expect("settled with nothing in flight");
    let held = store.hold_syncs();
    let writer = {
        let (store, o) = (store.clone(), o.clone());
        tokio::spawn(async move { store.create_order(&o, "").await })
    };
    // The write becomes visible (committed) while its sync is held back.
    let mut visible = false;
    for _ in 0..500 {
        if store.get_order(&id).expect("read").is_some() {
            visible = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(visible, "the committed write never became visible");
    assert!(
        !writer.is_finished(),
        "the write was acknowledged before its sync"
    );
    // A reader that saw it must not answer yet.
    let waiting =
        tokio::time::timeout(std::time::Duration::from_millis(300), store.settled()).await;
    assert!(
        waiting.is_err(),
        "a read of a not-yet-durable write settled before the sync"
    );
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(5), store.settled())
        .await
        .expect("settled once synced");
    writer.await.expect("task").expect("create");
}
