//! Sharding subjects across replicas: `shard: {index, total}` in `herald.yaml`.
//!
//! Each replica evaluates only the subjects whose stable hash falls in its shard, so N
//! replicas with `total: N` and indexes `0..N` split a large fleet without overlap or gaps.
//! The hash is FNV-1a (64-bit) of the subject's canonical key (`{service="checkout"}`,
//! labels sorted by name), written out here so it is the same on every build, platform and
//! release (Rust's `DefaultHasher` is randomized and may change between releases).
//! This module owns only the assignment; the daemon applies it to every signal's series.

use crate::engine::Subject;

/// This replica's share of the subjects. `total: 1` (the default) owns everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This replica's shard, `0..total`.
    pub index: u32,
    /// How many shards the subjects are split into (>= 1).
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl Shard {
    /// Whether this shard evaluates `subject`.
    pub fn owns(&self, subject: &Subject) -> bool {
        self.total <= 1 || shard_of(subject, self.total) == self.index
    }
}

/// The shard (`0..total`) a subject belongs to. `total` must be at least 1.
pub fn shard_of(subject: &Subject, total: u32) -> u32 {
    (fnv1a64(subject.key().as_bytes()) % u64::from(total.max(1))) as u32
}

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn assignment_is_stable_and_independent_of_label_order() {
        let a = Subject::new([("service", "checkout"), ("region", "eu")]);
        let b = Subject::new([("region", "eu"), ("service", "checkout")]);
        assert_eq!(shard_of(&a, 7), shard_of(&b, 7));
        // Pinned values (cross-checked with an independent FNV-1a): a change here
        // re-shuffles every deployment's subjects.
        let pinned: Vec<u32> = ["checkout", "search", "reports", "billing", "auth"].iter().map(|s| shard_of(&Subject::new([("service", *s)]), 3)).collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u32; 5] = [2, 2, 0, 2, 0];

    #[test]
    fn every_subject_has_exactly_one_owner_and_shards_are_balanced() {
        let shards: Vec<Shard> = (0..4).map(|index| Shard { index, total: 4 }).collect();
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            let s = Subject::new([("service", format!("svc-{i}"))]);
            let owners: Vec<usize> = shards.iter().enumerate().filter(|(_, sh)| sh.owns(&s)).map(|(i, _)| i).collect();
            assert_eq!(owners.len(), 1, "{s} has owners {owners:?}");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|c| (2_200..2_800).contains(c)), "unbalanced: {counts:?}");
        assert!(Shard::default().owns(&Subject::new([("service", "x")])));
    }
}
