//! The one stable 64-bit hash the mesh places keys with: a customer's partition
//! (`ids::partition_of`) and the rendezvous scores of the layout assignment both use it, so it lives
//! below both. Unkeyed on purpose: every node and `mesh-ctl` must compute the same value; it never
//! protects anything (keyed hashes for storage keys and audit subjects are in `security::crypto`).

/// A stable 64-bit mix (the murmur3 finaliser): good avalanche, no allocation.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a over bytes, then mixed. Stable across platforms and releases (pinned by tests).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}
