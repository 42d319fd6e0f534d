//! Routing keys: which partition a customer lives in, and order ids that carry their partition.
//!
//! The key space is split into [`PARTITIONS`] partitions. A customer's partition is a stable,
//! unkeyed hash of the customer id, so every node computes it alike. An order id minted by the mesh
//! embeds the partition of its customer, so `GetOrder(order_id)` routes in one hop with no lookup.
//!
//! Order id format (version 1): `o1-PPPP-RRRRRRRRRRRRRRRRRRRR`: `PPPP` is the partition in four
//! lowercase hex digits and `R...` are 80 random bits in hex. Nothing in it reveals the customer.

use aws_lc_rs::digest;
use std::{fmt, str::FromStr};

/// Number of partitions of the key space. Fixed for the life of a mesh (a power of two).
pub const PARTITIONS: u16 = 1024;
const PARTITION_BITS: u32 = PARTITIONS.trailing_zeros();

/// One partition of the key space, `0..PARTITIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

impl Partition {
    pub fn new(p: u16) -> Option<Partition> {
        (p < PARTITIONS).then_some(Partition(p))
    }
    pub fn get(self) -> u16 {
        self.0
    }
    /// Big-endian bytes: the prefix of every storage key in this partition.
    pub fn to_be_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The partition a customer's data lives in: the top bits of SHA-256 of the customer id.
pub fn partition_of(customer_id: &str) -> Partition {
    let d = digest::digest(&digest::SHA256, customer_id.as_bytes());
    let mut top = [0u8; 8];
    top.copy_from_slice(&d.as_ref()[..8]);
    Partition((u64::from_be_bytes(top) >> (64 - PARTITION_BITS)) as u16)
}

/// An order id minted by the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderId {
    partition: Partition,
    random: [u8; 10],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a mesh order id (expected o1-PPPP-<20 hex digits>)")]
pub struct BadOrderId;

impl OrderId {
    /// Mints a fresh id in `partition` with 80 bits from the system CSPRNG.
    pub fn mint(partition: Partition) -> OrderId {
        let mut random = [0u8; 10];
        aws_lc_rs::rand::fill(&mut random).expect("system CSPRNG is available");
        OrderId { partition, random }
    }
    pub fn partition(&self) -> Partition {
        self.partition
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "o1-{:04x}-{}",
            self.partition.0,
            hex::encode(self.random)
        )
    }
}

impl FromStr for OrderId {
    type Err = BadOrderId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("o1-").ok_or(BadOrderId)?;
        let (p, r) = rest.split_once('-').ok_or(BadOrderId)?;
        let lower_hex = |x: &str| {
            x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if p.len() != 4 || r.len() != 20 || !lower_hex(p) || !lower_hex(r) {
            return Err(BadOrderId);
        }
        let partition = u16::from_str_radix(p, 16)
            .ok()
            .and_then(Partition::new)
            .ok_or(BadOrderId)?;
        let mut random = [0u8; 10];
        hex::decode_to_slice(r, &mut random).map_err(|_| BadOrderId)?;
        Ok(OrderId { partition, random })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_is_stable() {
        // Pinned: a change here would re-home every customer of every existing mesh.
        assert_eq!(partition_of("cust-1").get(), partition_of("cust-1").get());
        let d = digest::digest(&digest::SHA256, b"cust-1");
        let expect = (u16::from(d.as_ref()[0]) << 2) | (u16::from(d.as_ref()[1]) >> 6);
        assert_eq!(partition_of("cust-1").get(), expect);
    }

    #[test]
    fn rejects_malformed_order_ids() {
        for bad in [
            "",
            "o1-",
            "o2-0001-00000000000000000000",
            "o1-0400-00000000000000000000",
            "o1-00a-00000000000000000000",
            "o1-0001-0000000000000000000G",
            "o1-0001-ABCDEF00000000000000",
        ] {
            assert!(bad.parse::<OrderId>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn order_ids_round_trip(p in 0u16..PARTITIONS) {
            let id = OrderId::mint(Partition::new(p).unwrap());
            prop_assert_eq!(id.to_string().parse::<OrderId>(), Ok(id));
        }

        #[test]
        fn partitions_are_in_range(s in ".{0,40}") {
            prop_assert!(partition_of(&s).get() < PARTITIONS);
        }
    }
}
