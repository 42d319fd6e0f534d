//! Routing keys: which partition a customer lives in, and order ids that carry their partition.
//!
//! The key space is split into [`PARTITIONS`] partitions. A customer's partition is a stable,
//! unkeyed hash of the customer id (FNV-1a, mixed; pinned by a test), so every node computes it
//! alike in a few nanoseconds. 4096 partitions keep every node's share within 1.6% of the mean for
//! meshes of up to 64 nodes (1024 would allow 5.5%, for example 18 vs 17.07 at 60 nodes). An order id minted by the mesh
//! embeds the partition of its customer, so `GetOrder(order_id)` routes in one hop with no lookup.
//!
//! Order id format (version 1): `o1-PPPP-RRRRRRRRRRRRRRRRRRRR`: `PPPP` is the partition in four
//! lowercase hex digits and `R...` are 80 random bits in hex. Nothing in it reveals the customer.

use std::{fmt, str::FromStr};

/// Number of partitions of the key space. Fixed for the life of a mesh (a power of two).
pub const PARTITIONS: u16 = 4096;
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
    pub(crate) fn to_be_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The partition a customer's data lives in: the top bits of a stable hash of the customer id.
pub fn partition_of(customer_id: &str) -> Partition {
    Partition(
        (crate::domain::hash::hash_bytes(customer_id.as_bytes()) >> (64 - PARTITION_BITS)) as u16,
    )
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
        OrderId {
            partition,
            random: random_bytes(),
        }
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
        let (partition, random) = parse_tagged(s, "o1-").ok_or(BadOrderId)?;
        Ok(OrderId { partition, random })
    }
}

/// Parses `<prefix>PPPP-<2N lowercase hex>`: a partition and N random bytes.
fn parse_tagged<const N: usize>(s: &str, prefix: &str) -> Option<(Partition, [u8; N])> {
    let rest = s.strip_prefix(prefix)?;
    let (p, r) = rest.split_once('-')?;
    let lower_hex = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if p.len() != 4 || r.len() != 2 * N || !lower_hex(p) || !lower_hex(r) {
        return None;
    }
    let partition = u16::from_str_radix(p, 16).ok().and_then(Partition::new)?;
    let mut random = [0u8; N];
    hex::decode_to_slice(r, &mut random).ok()?;
    Some((partition, random))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut random = [0u8; N];
    aws_lc_rs::rand::fill(&mut random).expect("system CSPRNG is available");
    random
}

/// A contact handle: stands in for the buyer's phone number on one order (`ch1-PPPP-<24 hex>`,
/// 96 random bits). It carries the order's partition so `ResolveContactHandle` routes in one hop;
/// nothing in it reveals the buyer or the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContactHandle {
    partition: Partition,
    random: [u8; 12],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a contact handle (expected ch1-PPPP-<24 hex digits>)")]
pub struct BadContactHandle;

impl ContactHandle {
    pub fn mint(partition: Partition) -> ContactHandle {
        ContactHandle {
            partition,
            random: random_bytes(),
        }
    }
    pub fn partition(&self) -> Partition {
        self.partition
    }
}

impl fmt::Display for ContactHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ch1-{:04x}-{}",
            self.partition.0,
            hex::encode(self.random)
        )
    }
}

impl FromStr for ContactHandle {
    type Err = BadContactHandle;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (partition, random) = parse_tagged(s, "ch1-").ok_or(BadContactHandle)?;
        Ok(ContactHandle { partition, random })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partition_is_pinned() {
        // A change here re-homes every customer of every existing mesh: it needs a migration.
        assert_eq!(partition_of("cust-1").get(), PINNED_CUST_1);
        assert_eq!(partition_of("").get(), 3837);
    }

    const PINNED_CUST_1: u16 = 607;

    #[test]
    fn partitions_spread_evenly() {
        let mut counts = vec![0u32; usize::from(PARTITIONS)];
        for i in 0..409_600 {
            counts[usize::from(partition_of(&format!("customer-{i}")).get())] += 1;
        }
        // 100 expected per partition; a fair hash stays well inside +-50%.
        assert!(
            counts.iter().all(|&c| (50..150).contains(&c)),
            "{:?}",
            counts.iter().max()
        );
    }

    #[test]
    fn rejects_malformed_order_ids() {
        for bad in [
            "",
            "o1-",
            "o2-0001-00000000000000000000",
            "o1-1000-00000000000000000000",
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
        fn contact_handles_round_trip(p in 0u16..PARTITIONS) {
            let h = ContactHandle::mint(Partition::new(p).unwrap());
            prop_assert_eq!(h.to_string().parse::<ContactHandle>(), Ok(h));
            prop_assert!(h.to_string().parse::<OrderId>().is_err());
        }

        #[test]
        fn partitions_are_in_range(s in ".{0,40}") {
            prop_assert!(partition_of(&s).get() < PARTITIONS);
        }
    }
}
