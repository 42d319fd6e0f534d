//! The on-disk key layout: one keyspace, every key starting with the partition, so a partition is
//! one contiguous range (ready for handoff), followed by a kind byte and keyed hashes. No key
//! contains a customer id or an order id.
//!
//! | kind | key                                                  | value                        |
//! |------|------------------------------------------------------|------------------------------|
//! | `C`  | partition(2) ‖ `C` ‖ H(customer_id)(32)              | v1 ‖ DEK wrapped by the KEK  |
//! | `O`  | partition(2) ‖ `O` ‖ H(customer_id) ‖ H(order_id)    | v1 ‖ order sealed by the DEK |
//! | `I`  | partition(2) ‖ `I` ‖ H(order_id)                     | H(customer_id)               |
//! | `D`  | partition(2) ‖ `D` ‖ H(customer_id) ‖ H(key)         | H(order_id)                  |
//! | `H`  | partition(2) ‖ `H` ‖ H(contact_handle)               | H(order_id)                  |
//!
//! `H` is HMAC-SHA256 under the node's index key, with a domain per kind of value. The separate
//! `meta` tree holds the format version and the key check.

use crate::domain::ids::Partition;
use crate::security::crypto::NodeKeys;

pub(crate) const HASH_LEN: usize = 32;
pub type Hash = [u8; HASH_LEN];

pub(crate) const CUSTOMER: u8 = b'C';
pub(crate) const ORDER: u8 = b'O';
pub(crate) const INDEX: u8 = b'I';
pub(crate) const IDEMPOTENCY: u8 = b'D';
pub(crate) const HANDLE: u8 = b'H';

pub(crate) fn customer_hash(keys: &NodeKeys, customer_id: &str) -> Hash {
    keys.keyed_hash(b"customer", customer_id.as_bytes())
}

pub(crate) fn order_hash(keys: &NodeKeys, order_id: &str) -> Hash {
    keys.keyed_hash(b"order", order_id.as_bytes())
}

pub(crate) fn handle_hash(keys: &NodeKeys, handle: &str) -> Hash {
    keys.keyed_hash(b"contact-handle", handle.as_bytes())
}

pub(crate) fn idempotency_hash(keys: &NodeKeys, key: &str) -> Hash {
    keys.keyed_hash(b"idempotency", key.as_bytes())
}

fn key(p: Partition, kind: u8, parts: &[&Hash]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + parts.len() * HASH_LEN);
    k.extend_from_slice(&p.to_be_bytes());
    k.push(kind);
    for part in parts {
        k.extend_from_slice(&part[..]);
    }
    k
}

pub(crate) fn customer_key(p: Partition, customer: &Hash) -> Vec<u8> {
    key(p, CUSTOMER, &[customer])
}

/// The prefix of every order of one customer.
pub(crate) fn customer_orders_prefix(p: Partition, customer: &Hash) -> Vec<u8> {
    key(p, ORDER, &[customer])
}

pub(crate) fn order_key(p: Partition, customer: &Hash, order: &Hash) -> Vec<u8> {
    key(p, ORDER, &[customer, order])
}

pub(crate) fn index_key(p: Partition, order: &Hash) -> Vec<u8> {
    key(p, INDEX, &[order])
}

pub(crate) fn handle_key(p: Partition, handle: &Hash) -> Vec<u8> {
    key(p, HANDLE, &[handle])
}

pub fn idempotency_key(p: Partition, customer: &Hash, idem: &Hash) -> Vec<u8> {
    key(p, IDEMPOTENCY, &[customer, idem])
}

/// Partition and kind of a storage key.
pub fn parse(key: &[u8]) -> Option<(Partition, u8)> {
    let p = Partition::new(u16::from_be_bytes(key.get(..2)?.try_into().ok()?))?;
    Some((p, *key.get(2)?))
}

/// The customer key an order key belongs to.
pub(crate) fn customer_key_of_order(order_key: &[u8]) -> Option<Vec<u8>> {
    let (p, kind) = parse(order_key)?;
    (kind == ORDER && order_key.len() == 3 + 2 * HASH_LEN).then(|| {
        customer_key(
            p,
            order_key[3..3 + HASH_LEN]
                .try_into()
                .expect("length checked"),
        )
    })
}

/// Hashes out of a key, after the partition and kind.
pub fn hashes(key: &[u8]) -> impl Iterator<Item = Hash> + '_ {
    key.get(3..)
        .unwrap_or_default()
        .chunks_exact(HASH_LEN)
        .map(|c| c.try_into().expect("exact chunk"))
}
