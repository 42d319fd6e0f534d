//! The on-disk key layout. Every key starts with the partition (so a partition is one contiguous
//! range, ready for handoff) followed by keyed hashes: no key contains a customer id or order id.
//!
//! | tree          | key                                            | value                        |
//! |---------------|------------------------------------------------|------------------------------|
//! | `customers`   | partition(2) ‖ H(customer_id)(32)              | v1 ‖ DEK wrapped by the KEK  |
//! | `orders`      | partition(2) ‖ H(customer_id) ‖ H(order_id)    | v1 ‖ order sealed by the DEK |
//! | `order_index` | partition(2) ‖ H(order_id)                     | H(customer_id)               |
//! | `idempotency` | partition(2) ‖ H(customer_id) ‖ H(key)         | H(order_id)                  |
//! | `meta`        | `format`, `key_check`                          | format version, KEK check    |
//!
//! `H` is HMAC-SHA256 under the node's index key, with a domain per kind of value.

use crate::crypto::NodeKeys;
use crate::ids::Partition;

pub const HASH_LEN: usize = 32;
pub const CUSTOMER_KEY_LEN: usize = 2 + HASH_LEN;

pub fn customer_hash(keys: &NodeKeys, customer_id: &str) -> [u8; HASH_LEN] {
    keys.keyed_hash(b"customer", customer_id.as_bytes())
}

pub fn order_hash(keys: &NodeKeys, order_id: &str) -> [u8; HASH_LEN] {
    keys.keyed_hash(b"order", order_id.as_bytes())
}

pub fn idempotency_hash(keys: &NodeKeys, key: &str) -> [u8; HASH_LEN] {
    keys.keyed_hash(b"idempotency", key.as_bytes())
}

pub fn customer_key(p: Partition, customer: &[u8; HASH_LEN]) -> Vec<u8> {
    [&p.to_be_bytes()[..], customer].concat()
}

pub fn order_key(p: Partition, customer: &[u8; HASH_LEN], order: &[u8; HASH_LEN]) -> Vec<u8> {
    [&p.to_be_bytes()[..], customer, order].concat()
}

pub fn index_key(p: Partition, order: &[u8; HASH_LEN]) -> Vec<u8> {
    [&p.to_be_bytes()[..], order].concat()
}

pub fn idempotency_key(p: Partition, customer: &[u8; HASH_LEN], key: &[u8; HASH_LEN]) -> Vec<u8> {
    [&p.to_be_bytes()[..], customer, key].concat()
}

/// The partition a storage key belongs to.
pub fn partition_of_key(key: &[u8]) -> Option<Partition> {
    let bytes: [u8; 2] = key.get(..2)?.try_into().ok()?;
    Partition::new(u16::from_be_bytes(bytes))
}
