//! Hashes and hash maps.

use std::collections::HashMap;

/// Hash map of the projections (foldhash: seeded per process, much faster than SipHash).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// FNV-1a, 64 bit: a stable hash for content keys and session/project names (it is written
/// into events, so it must never change with a compiler or library version).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
