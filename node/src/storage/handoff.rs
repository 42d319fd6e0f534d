//! Partition handoff at the storage level: what the old owner sends, how the new owner adopts it,
//! and how the old owner lets it go.
//!
//! - [`Store::export_partition`] reads one partition: each customer's data key unwrapped for
//!   transfer ([`TransferKey`]) and each order still sealed under it, with the storage key it was
//!   sealed against. No order is decrypted on the old owner; nothing here is plaintext PII.
//! - [`Store::import_partition`] replaces the partition on the new owner in one atomic batch: it
//!   opens each order with the transferred key (checking it belongs to this partition and
//!   customer), re-seals it against its own storage key (keyed hashes differ per node), wraps the
//!   data key under its own KEK, and rebuilds the order, contact-handle and idempotency indexes.
//!   Importing the same export twice gives the same store.
//! - [`Store::drop_partition`] deletes every record of the partition, wrapped data keys first
//!   among them, in one batch, and makes that durable: the partition's data is crypto-shredded on
//!   this node (the LSM tree may keep old bytes in its journal and tables until it compacts, but never the keys in the
//!   clear, and the node's KEK can no longer find them).

use super::commit::{Space, Writes};
use super::{Hash, StorageError, Store, body, keys, versioned};
use crate::domain::ids::{OrderId, Partition, partition_of};
use crate::security::crypto::TransferKey;
use mesh_proto::v1::Order;
use prost::Message as _;
use std::collections::BTreeMap;

/// An order as stored: the storage key it was sealed against, and the sealed bytes.
pub(crate) type SealedOrder = (Vec<u8>, Vec<u8>);

/// One customer of an exported partition.
#[derive(Debug)]
pub(crate) struct CustomerExport {
    pub data_key: TransferKey,
    pub orders: Vec<SealedOrder>,
}

/// Everything a partition's new owner needs.
#[derive(Debug)]
pub(crate) struct PartitionExport {
    pub partition: Partition,
    pub customers: Vec<CustomerExport>,
}

impl PartitionExport {
    pub fn orders(&self) -> usize {
        self.customers.iter().map(|c| c.orders.len()).sum()
    }
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ImportStats {
    pub customers: u64,
    pub orders: u64,
}

fn partition_prefix(p: Partition) -> [u8; 2] {
    p.to_be_bytes()
}

impl Store {
    /// Reads partition `p` for its new owner.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.export_partition",
        skip_all,
        fields(
            dsm.storage.op = "export",
            dsm.partition = i64::from(p.get()),
        )
    )]
    pub(crate) fn export_partition(&self, p: Partition) -> Result<PartitionExport, StorageError> {
        let mut customers: BTreeMap<Vec<u8>, CustomerExport> = BTreeMap::new();
        let mut orders: BTreeMap<Vec<u8>, Vec<SealedOrder>> = BTreeMap::new();
        for kv in self.data.prefix(partition_prefix(p)) {
            let (k, v) = kv.into_inner()?;
            match keys::parse(&k).map(|(_, kind)| kind) {
                Some(keys::CUSTOMER) => {
                    let data_key = self
                        .keys
                        .export_data_key(body(&v, "customer key")?, &k)
                        .map_err(|_| StorageError::Corrupt("customer key"))?;
                    customers.insert(
                        k.to_vec(),
                        CustomerExport {
                            data_key,
                            orders: Vec::new(),
                        },
                    );
                }
                Some(keys::ORDER) => {
                    let ck =
                        keys::customer_key_of_order(&k).ok_or(StorageError::Corrupt("order"))?;
                    orders
                        .entry(ck)
                        .or_default()
                        .push((k.to_vec(), body(&v, "order")?.to_vec()));
                }
                // Indexes are rebuilt by the new owner under its own keyed hashes.
                _ => {}
            }
        }
        for (ck, list) in orders {
            customers
                .get_mut(&ck)
                .ok_or(StorageError::Corrupt("order without its customer key"))?
                .orders = list;
        }
        Ok(PartitionExport {
            partition: p,
            customers: customers.into_values().collect(),
        })
    }

    /// Replaces partition `export.partition` on this node with the export, atomically and
    /// durably. Refuses (changing nothing) an export whose records do not open with their keys or
    /// belong to another partition or customer.
    /// With `received`, also clears the partition from the node's pending set (`SavedLayout`) in
    /// the same atomic step, so "received" is never durable without the data.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.import_partition",
        skip_all,
        fields(
            dsm.storage.op = "import",
            dsm.partition = i64::from(export.partition.get()),
        )
    )]
    pub(crate) async fn import_partition(
        &self,
        export: &PartitionExport,
        received: bool,
    ) -> Result<ImportStats, StorageError> {
        let p = export.partition;
        // A replace: whatever this node held of the partition goes, in the same batch (the last
        // write of a key wins, so a key both removed and re-imported is simply re-imported).
        let mut batch = Writes::default();
        for kv in self.data.prefix(partition_prefix(p)) {
            batch.delete(Space::Data, kv.key()?.to_vec());
        }
        let mut stats = ImportStats::default();
        // Each customer once: a second entry would overwrite the first's data key, and the first
        // entry's orders could never be opened again.
        let mut seen = std::collections::HashSet::new();
        for customer in &export.customers {
            let dek = customer.data_key.data_key();
            let mut ch: Option<(String, Hash)> = None;
            for (old_key, sealed) in &customer.orders {
                let plain = dek
                    .open(sealed, old_key)
                    .map_err(|_| StorageError::Corrupt("transferred order"))?;
                let order =
                    Order::decode(plain.as_slice()).map_err(|_| StorageError::Corrupt("order"))?;
                let id: OrderId = order
                    .order_id
                    .parse()
                    .map_err(|_| StorageError::Corrupt("transferred order id"))?;
                if partition_of(&order.customer_id) != p || id.partition() != p {
                    return Err(StorageError::Rejected(format!(
                        "a transferred order does not belong to partition {p}"
                    )));
                }
                let customer_hash = match &ch {
                    Some((cid, h)) if *cid == order.customer_id => *h,
                    Some(_) => {
                        return Err(StorageError::Rejected(
                            "a transferred customer's orders name different customers".into(),
                        ));
                    }
                    None => {
                        let h = keys::customer_hash(&self.keys, &order.customer_id);
                        if !seen.insert(h) {
                            return Err(StorageError::Rejected(format!(
                                "a transferred partition {p} lists one customer twice"
                            )));
                        }
                        let ck = keys::customer_key(p, &h);
                        let wrapped = self.keys.import_data_key(&customer.data_key, &ck);
                        batch.put(Space::Data, ck, versioned(&wrapped));
                        stats.customers += 1;
                        ch = Some((order.customer_id.clone(), h));
                        h
                    }
                };
                let oh = keys::order_hash(&self.keys, &order.order_id);
                let ok = keys::order_key(p, &customer_hash, &oh);
                batch.put(
                    Space::Data,
                    ok.as_slice(),
                    versioned(&dek.seal(&plain, &ok)),
                );
                batch.put(Space::Data, keys::index_key(p, &oh), &customer_hash[..]);
                self.index_handle(&mut batch, p, &order, &oh);
                if !order.idempotency_key.is_empty() {
                    let ih = keys::idempotency_hash(&self.keys, &order.idempotency_key);
                    batch.put(
                        Space::Data,
                        keys::idempotency_key(p, &customer_hash, &ih),
                        &oh[..],
                    );
                }
                stats.orders += 1;
            }
        }
        // One atomic batch across the data and meta keyspaces, one fsync. The pending set is read
        // and rewritten under the meta lock, so concurrent imports cannot undo each other.
        let _meta = if received {
            let guard = self.meta_lock.lock().await;
            let bits = super::pending_without(self.meta.get("pending")?.as_deref(), p);
            batch.put(Space::Meta, "pending", bits);
            Some(guard)
        } else {
            None
        };
        // The `handoff-imported` crash point is in the writer, between this batch's commit and
        // its sync (`commit.rs`).
        self.write(batch).await?;
        Ok(stats)
    }

    /// Deletes every record of partition `p` (its wrapped data keys among them) and makes the
    /// deletion durable. Returns how many records were removed.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.drop_partition",
        skip_all,
        fields(
            dsm.storage.op = "drop",
            dsm.partition = i64::from(p.get()),
        )
    )]
    pub(crate) async fn drop_partition(&self, p: Partition) -> Result<u64, StorageError> {
        let mut batch = Writes::default();
        let mut n = 0;
        for kv in self.data.prefix(partition_prefix(p)) {
            batch.delete(Space::Data, kv.key()?.to_vec());
            n += 1;
        }
        self.write(batch).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::ContactHandle;
    use crate::security::crypto::{NodeKeys, generate_key_file};
    use mesh_proto::v1::Customer;
    use std::sync::Arc;

    fn store(dir: &std::path::Path) -> Store {
        let keys = Arc::new(NodeKeys::parse(&generate_key_file()).expect("key"));
        Store::open(dir, keys, None).expect("open")
    }

    /// Customer ids that all live in one partition.
    fn neighbours(n: usize) -> (Partition, Vec<String>) {
        let p = partition_of("handoff-0");
        let ids = (0..)
            .map(|i| format!("handoff-{i}"))
            .filter(|c| partition_of(c) == p)
            .take(n)
            .collect();
        (p, ids)
    }

    fn order(customer: &str, i: u32) -> Order {
        let p = partition_of(customer);
        Order {
            order_id: OrderId::mint(p).to_string(),
            customer_id: customer.into(),
            customer: Some(Customer {
                name: format!("Asha Rao{i}"),
                phone: "+919812345678".into(),
                contact_handle: ContactHandle::mint(p).to_string(),
                ..Customer::default()
            }),
            status: 1,
            idempotency_key: format!("idem-{i}"),
            ..Order::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_moves_whole_to_a_node_with_other_keys_and_leaves_nothing_behind() {
        let (da, db) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (a, b) = (store(da.path()), store(db.path()));
        let (p, customers) = neighbours(3);
        let mut created = Vec::new();
        for (i, c) in customers.iter().enumerate() {
            for j in 0..2 {
                let o = order(c, (i * 2 + j) as u32);
                a.create_order(&o, &o.idempotency_key)
                    .await
                    .expect("create");
                created.push(o);
            }
        }
        let other = order("someone-else", 99);
        a.create_order(&other, "").await.expect("create");

        let export = a.export_partition(p).expect("export");
        assert_eq!((export.customers.len(), export.orders()), (3, 6));
        for c in &export.customers {
            for (_, sealed) in &c.orders {
                assert!(
                    !sealed.windows(8).any(|w| w == b"Asha Rao"),
                    "sealed in transit"
                );
            }
        }
        // Twice: an import is a replace, so a retried handoff cannot duplicate anything.
        for _ in 0..2 {
            let stats = b.import_partition(&export, false).await.expect("import");
            assert_eq!(
                stats,
                ImportStats {
                    customers: 3,
                    orders: 6
                }
            );
        }

        for o in &created {
            let id: OrderId = o.order_id.parse().expect("id");
            assert_eq!(b.get_order(&id).expect("read").as_ref(), Some(o));
            let handle = o
                .customer
                .as_ref()
                .expect("c")
                .contact_handle
                .parse()
                .expect("h");
            assert_eq!(
                b.order_by_handle(&handle).expect("handle").as_ref(),
                Some(o)
            );
            // A retry with the same idempotency key on the new owner returns the same order.
            let retry = Order {
                order_id: OrderId::mint(p).to_string(),
                ..o.clone()
            };
            let again = b
                .create_order(&retry, &o.idempotency_key)
                .await
                .expect("retry");
            assert_eq!(again.order_id, o.order_id);
        }
        assert_eq!(b.customer_orders(&customers[0]).expect("list").len(), 2);
        let inv = b.inventory().expect("inventory");
        assert_eq!(
            (
                inv.customers,
                inv.orders,
                inv.unreadable,
                inv.dangling_index
            ),
            (3, 6, 0, 0)
        );

        // The old owner lets go: nothing of the partition is left, its other data is untouched.
        assert!(a.drop_partition(p).await.expect("drop") > 0);
        let inv = a.inventory().expect("inventory");
        assert!(!inv.partitions.contains_key(&p.get()), "{inv:?}");
        assert_eq!(inv.orders, 1);
        let id: OrderId = created[0].order_id.parse().expect("id");
        assert_eq!(a.get_order(&id).expect("read"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_imports_each_keep_their_received_mark() {
        let (da, db) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (a, b) = (store(da.path()), store(db.path()));
        let mut exports = Vec::new();
        for i in 0..8 {
            let customer = format!("mark-{i}");
            let o = order(&customer, i);
            a.create_order(&o, "").await.expect("create");
            exports.push(a.export_partition(partition_of(&customer)).expect("export"));
        }
        let pending: Vec<Partition> = exports.iter().map(|e| e.partition).collect();
        b.save_layout(&crate::storage::SavedLayout {
            current: b"layout".to_vec(),
            previous: None,
            pending,
        })
        .await
        .expect("save");
        // On several threads at once, as request-driven and background pulls run.
        let b = Arc::new(b);
        let tasks: Vec<_> = exports
            .into_iter()
            .map(|e| {
                let b = b.clone();
                tokio::spawn(async move { b.import_partition(&e, true).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("import");
        }
        let saved = b.saved_layout().expect("read").expect("saved");
        assert!(saved.pending.is_empty(), "marks lost: {:?}", saved.pending);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tampered_or_misplaced_export_changes_nothing() {
        let (da, db) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (a, b) = (store(da.path()), store(db.path()));
        let (p, customers) = neighbours(1);
        let o = order(&customers[0], 1);
        a.create_order(&o, "").await.expect("create");
        let mut export = a.export_partition(p).expect("export");
        let last = export.customers[0].orders[0].1.len() - 1;
        export.customers[0].orders[0].1[last] ^= 1;
        assert!(b.import_partition(&export, false).await.is_err());
        assert_eq!(b.inventory().expect("inv").orders, 0);

        let mut export = a.export_partition(p).expect("export");
        export.partition =
            Partition::new((p.get() + 1) % crate::domain::ids::PARTITIONS).expect("p");
        assert!(matches!(
            b.import_partition(&export, false).await,
            Err(StorageError::Rejected(_))
        ));
        assert_eq!(b.inventory().expect("inv").orders, 0);
    }
}
