//! Key sharding over several standalone Redis servers (PROXY mode with more than one
//! endpoint), by consistent hashing.
//!
//! The algorithm: every endpoint gets 160 points on a 64-bit ring, at hash("host:port-i")
//! (FNV-1a with a finalizer). A key hashes (its hash tag only, with `enableHashtagging`) to one
//! of 16384 buckets; a bucket belongs
//! to the endpoint of the first point at or after the bucket's own hash (wrapping). Adding an
//! endpoint to N takes over about 1/(N+1) of the keys, all from the others; removing one moves
//! only its own keys. The buckets make a fixed [`Topology`], so that the cluster machinery
//! (routing, splitting multi-key commands, merging) serves sharding unchanged.

use super::slot::{SLOTS, hash_tag};
use super::topology::{Shard, SlotMap, Topology};

const POINTS_PER_ENDPOINT: usize = 160;

/// FNV-1a, 64 bits, followed by MurmurHash3's 64-bit finalizer so that short, similar inputs
/// (`host-1`, `host-2`...) spread over the whole ring.
pub fn hash(data: &[u8]) -> u64 {
    let mut h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucket of a key.
#[inline]
pub fn key_bucket(key: &[u8], hashtags: bool) -> u16 {
    let k = if hashtags { hash_tag(key) } else { key };
    (hash(k) % SLOTS as u64) as u16
}

/// A fixed topology: each bucket owned by an endpoint, by consistent hashing.
pub fn topology(endpoints: &[String]) -> Topology {
    let mut points: Vec<(u64, usize)> = Vec::with_capacity(endpoints.len() * POINTS_PER_ENDPOINT);
    for (i, ep) in endpoints.iter().enumerate() {
        for p in 0..POINTS_PER_ENDPOINT {
            points.push((hash(format!("{ep}-{p}").as_bytes()), i));
        }
    }
    points.sort_unstable();
    let table = (0..SLOTS)
        .map(|b| {
            // Spread the buckets over the ring with a second hash, so that neighbouring
            // buckets do not land on the same arc.
            let h = hash(&(b as u32).to_be_bytes());
            let i = points.partition_point(|&(p, _)| p < h);
            points[if i == points.len() { 0 } else { i }].1 as u16
        })
        .collect();
    Topology {
        nodes: endpoints.to_vec(),
        shards: (0..endpoints.len()).map(|i| Shard { primary: i, replicas: Vec::new() }).collect(),
        slots: SlotMap::new(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:6379")).collect()
    }

    #[test]
    fn keys_spread_evenly() {
        let t = topology(&endpoints(3));
        let mut count = [0usize; 3];
        for k in 0..30_000 {
            let b = key_bucket(format!("key:{k}").as_bytes(), false);
            count[t.slots.get(b).unwrap() as usize] += 1;
        }
        for c in count {
            assert!((7_000..13_000).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn adding_an_endpoint_moves_about_one_in_n_plus_one_keys() {
        let (before, after) = (topology(&endpoints(4)), topology(&endpoints(5)));
        let mut moved = 0;
        let n = 50_000;
        for k in 0..n {
            let b = key_bucket(format!("user:{k}").as_bytes(), false);
            let (x, y) = (
                &before.nodes[before.slots.get(b).unwrap() as usize],
                &after.nodes[after.slots.get(b).unwrap() as usize],
            );
            if x != y {
                assert_eq!(y, "10.0.0.4:6379", "keys only move to the new endpoint");
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        assert!((0.13..0.27).contains(&share), "{share}");
    }

    #[test]
    fn hash_tags_group_keys_only_when_enabled() {
        assert_eq!(key_bucket(b"{user1}.a", true), key_bucket(b"{user1}.b", true));
        assert_ne!(key_bucket(b"{user1}.a", false), key_bucket(b"{user1}.b", false));
    }
}
