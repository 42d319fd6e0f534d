//! The `handoff_chunk` target: `PartitionData::decode`, the checks of `rebalance::wire::from_wire`,
//! `TransferKey::from_bytes`, `ProofVerifier::import_spent` and `Store::import_partition`, on a
//! peer's handoff answer.

use super::proof::proof_fixture;
use super::{Mutation, apply, at, bytes_from, fuzz, mutations};
use crate::domain::ids::{ContactHandle, OrderId, Partition, partition_of};
use crate::security::crypto::{NodeKeys, TransferKey, generate_key_file};
use crate::security::proof::{MAX_SPENT_PER_PARTITION, ProofVerifier, SpentProofs};
use crate::storage::Store;
use crate::storage::handoff::{CustomerExport, PartitionExport};
use mesh_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message as _;
use std::sync::Arc;

/// The partition the handoff target asks for, and customers of it.
fn handoff_partition() -> (Partition, Vec<String>) {
    let p = partition_of("fuzz-0");
    let ids = (0..)
        .map(|i| format!("fuzz-{i}"))
        .filter(|c| partition_of(c) == p)
        .take(3)
        .collect();
    (p, ids)
}

fn valid_order(p: Partition, customer: &str, i: i64) -> pb::Order {
    pb::Order {
        order_id: OrderId::mint(p).to_string(),
        customer_id: customer.to_owned(),
        external_ref: format!("ext-{i}"),
        customer: Some(pb::Customer {
            contact_handle: if i % 2 == 0 {
                ContactHandle::mint(p).to_string()
            } else {
                String::new()
            },
            ..crate::domain::fixtures::buyer()
        }),
        items: crate::domain::fixtures::basket(),
        total_paise: 99_800,
        ..pb::Order::default()
    }
}

#[derive(Debug, Clone)]
struct OrderCase {
    /// Which valid order (an encoded `Order`) to start from, and its mutations.
    seed: usize,
    mutations: Vec<Mutation>,
    /// Sealed under the customer's key (else raw bytes, which do not open).
    sealed: bool,
    storage_key: Vec<u8>,
}

#[derive(Debug, Clone)]
struct CustomerCase {
    /// Which of the partition's customers the orders name.
    customer: usize,
    key: Vec<u8>,
    orders: Vec<OrderCase>,
}

#[derive(Debug, Clone)]
enum HandoffInput {
    /// An encoded `PartitionData`, mutated.
    Wire(Vec<u8>),
    /// A `PartitionData` built from parts (orders sealed under the keys it carries), then encoded.
    Built {
        partition: Option<u32>,
        customers: Vec<CustomerCase>,
        spent: Vec<(i64, Vec<u8>)>,
        not_before: i64,
    },
}

fn handoff_input(wire_seeds: Vec<Vec<u8>>) -> impl Strategy<Value = HandoffInput> {
    let order = (
        any::<usize>(),
        prop_oneof![Just(Vec::new()), mutations()],
        prop::bool::weighted(0.9),
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(seed, mutations, sealed, storage_key)| OrderCase {
            seed,
            mutations,
            sealed,
            storage_key,
        });
    let key = prop_oneof![8 => vec(any::<u8>(), 32), 1 => vec(any::<u8>(), 0..40)];
    let customer =
        (any::<usize>(), key, vec(order, 0..4)).prop_map(|(customer, key, orders)| CustomerCase {
            customer,
            key,
            orders,
        });
    let time = prop_oneof![
        Just(crate::domain::clock::now_ms()),
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX)
    ];
    let spent = vec((time.clone(), vec(any::<u8>(), 0..20)), 0..4);
    prop_oneof![
        1 => bytes_from(wire_seeds).prop_map(HandoffInput::Wire),
        2 => (
            prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
            vec(customer, 0..4),
            spent,
            time,
        )
            .prop_map(|(partition, customers, spent, not_before)| HandoffInput::Built {
                partition,
                customers,
                spent,
                not_before,
            }),
    ]
}

struct HandoffFixture {
    rt: tokio::runtime::Runtime,
    keys: Arc<NodeKeys>,
    /// The store and its directory. Replaced by a fresh one every [`STORE_ROUNDS`] cases: every
    /// accepted import deletes the partition's previous records, and a memtable that never
    /// flushes keeps each deleted version, so prefix scans slow down as a long run goes on.
    store: std::cell::RefCell<(Store, tempfile::TempDir)>,
    rounds: std::cell::Cell<u32>,
    verifier: ProofVerifier,
    p: Partition,
    customers: Vec<String>,
    /// Encoded valid orders, per customer.
    orders: Vec<Vec<Vec<u8>>>,
}

const STORE_ROUNDS: u32 = 2_000;

fn open_store(rt: &tokio::runtime::Runtime, keys: &Arc<NodeKeys>) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let _in = rt.enter();
    (Store::open(dir.path(), keys.clone(), None).unwrap(), dir)
}

fn handoff_fixture() -> HandoffFixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys = Arc::new(NodeKeys::parse(&generate_key_file()).unwrap());
    let store = std::cell::RefCell::new(open_store(&rt, &keys));
    let (p, customers) = handoff_partition();
    let orders = customers
        .iter()
        .map(|c| {
            (0..3)
                .map(|i| valid_order(p, c, i).encode_to_vec())
                .collect()
        })
        .collect();
    let pf = proof_fixture();
    HandoffFixture {
        rt,
        keys,
        store,
        rounds: std::cell::Cell::new(0),
        verifier: pf.verifier,
        p,
        customers,
        orders,
    }
}

fn build_partition_data(
    f: &HandoffFixture,
    partition: Option<u32>,
    customers: &[CustomerCase],
    spent: &[(i64, Vec<u8>)],
    not_before: i64,
) -> pb::PartitionData {
    let pool: Vec<Vec<u8>> = f.orders.iter().flatten().cloned().collect();
    pb::PartitionData {
        partition: partition.unwrap_or(u32::from(f.p.get())),
        customers: customers
            .iter()
            .map(|c| {
                let ci = at(c.customer, f.customers.len());
                let dek = TransferKey::from_bytes(&c.key).map(|k| k.data_key());
                pb::TransferredCustomer {
                    data_key: c.key.clone(),
                    orders: c
                        .orders
                        .iter()
                        .map(|o| {
                            let seeds = &f.orders[ci];
                            let plain =
                                apply(&pool, seeds[at(o.seed, seeds.len())].clone(), &o.mutations);
                            let sealed = match (&dek, o.sealed) {
                                (Some(dek), true) => dek.seal(&plain, &o.storage_key),
                                _ => plain,
                            };
                            pb::SealedOrder {
                                storage_key: o.storage_key.clone(),
                                sealed,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
        spent_proofs: spent
            .iter()
            .map(|(timestamp_unix_ms, nonce)| pb::SpentProof {
                timestamp_unix_ms: *timestamp_unix_ms,
                nonce: nonce.clone(),
            })
            .collect(),
        proofs_not_before_unix_ms: not_before,
    }
}

/// What the new owner does with a handoff answer for partition `p`: the checks of
/// `rebalance::wire::from_wire` (private to `rebalance`, so repeated here step by step), then the
/// spent proofs into the verifier and the export into the store.
fn receive_handoff(f: &HandoffFixture, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(data) = pb::PartitionData::decode(bytes) else {
        return Ok(());
    };
    let again = pb::PartitionData::decode(data.encode_to_vec().as_slice()).ok();
    prop_assert_eq!(again.as_ref(), Some(&data));
    if data.partition != u32::from(f.p.get()) || data.spent_proofs.len() > MAX_SPENT_PER_PARTITION {
        return Ok(());
    }
    let mut customers = Vec::new();
    for c in &data.customers {
        let Some(data_key) = TransferKey::from_bytes(&c.data_key) else {
            return Ok(());
        };
        customers.push(CustomerExport {
            data_key,
            orders: c
                .orders
                .iter()
                .map(|o| (o.storage_key.clone(), o.sealed.clone()))
                .collect(),
        });
    }
    f.verifier.import_spent(
        f.p,
        SpentProofs {
            nonces: data
                .spent_proofs
                .iter()
                .map(|s| (s.timestamp_unix_ms, s.nonce.clone()))
                .collect(),
            not_before_ms: data.proofs_not_before_unix_ms,
        },
    );
    let _ = f.verifier.export_spent(f.p);
    let export = PartitionExport {
        partition: f.p,
        customers,
    };
    f.rounds.set(f.rounds.get() + 1);
    if f.rounds.get().is_multiple_of(STORE_ROUNDS) {
        let fresh = open_store(&f.rt, &f.keys);
        let _in = f.rt.enter();
        drop(f.store.replace(fresh));
    }
    let store = f.store.borrow();
    let store = &store.0;
    let imported = f.rt.block_on(store.import_partition(&export, false));
    if imported.is_ok() {
        // An accepted import is readable: every order it carried is found and opens.
        for c in &export.customers {
            let dek = c.data_key.data_key();
            for (storage_key, sealed) in &c.orders {
                let plain = dek.open(sealed, storage_key).map_err(|e| {
                    TestCaseError::fail(format!("accepted an order that does not open: {e}"))
                })?;
                let order = pb::Order::decode(plain.as_slice()).map_err(|e| {
                    TestCaseError::fail(format!("accepted an unreadable order: {e}"))
                })?;
                let id: OrderId = order
                    .order_id
                    .parse()
                    .map_err(|e| TestCaseError::fail(format!("accepted a bad order id: {e}")))?;
                let got = store.get_order(&id);
                prop_assert!(
                    matches!(got, Ok(Some(_))),
                    "order {} was imported but reads back as {:?}",
                    id,
                    got.map(|o| o.map(|o| o.order_id))
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_handoff_chunk_never_panics() {
    let f = handoff_fixture();
    let key = [5u8; 32];
    let seeds: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let customers: Vec<CustomerCase> = (0..n)
                .map(|i| CustomerCase {
                    customer: i,
                    key: key.to_vec(),
                    orders: (0..2)
                        .map(|j| OrderCase {
                            seed: j,
                            mutations: Vec::new(),
                            sealed: true,
                            storage_key: vec![j as u8; 40],
                        })
                        .collect(),
                })
                .collect();
            let spent = vec![(crate::domain::clock::now_ms(), vec![1; 16])];
            build_partition_data(&f, None, &customers, &spent, 0).encode_to_vec()
        })
        .collect();
    fuzz("handoff_chunk", handoff_input(seeds), |input| {
        let bytes = match input {
            HandoffInput::Wire(bytes) => bytes,
            HandoffInput::Built {
                partition,
                customers,
                spent,
                not_before,
            } => {
                build_partition_data(&f, partition, &customers, &spent, not_before).encode_to_vec()
            }
        };
        receive_handoff(&f, &bytes)
    });
}

// ---- Regressions: crashes the target found, as minimal inputs ----

/// Found by `fuzz_handoff_chunk_never_panics`: a handoff answer whose `PartitionData` lists the
/// same customer twice, each entry with its own data key and one valid order sealed under it.
/// `Store::import_partition` (`storage/handoff.rs`) accepts it: the customer's stored key is the
/// second entry's, so the first entry's order (re-sealed under the first key) is imported but can
/// never be read again (`get_order` answers `Corrupt("order")`), although the import promises to
/// refuse, changing nothing, an export whose records do not open with their keys.
#[test]
fn regression_handoff_naming_a_customer_twice() {
    let f = handoff_fixture();
    let entry = |key: u8, order: usize| CustomerCase {
        customer: 0,
        key: vec![key; 32],
        orders: vec![OrderCase {
            seed: order,
            mutations: Vec::new(),
            sealed: true,
            storage_key: Vec::new(),
        }],
    };
    let data = build_partition_data(&f, None, &[entry(0, 0), entry(1, 1)], &[], 0);
    receive_handoff(&f, &data.encode_to_vec()).unwrap();
}
