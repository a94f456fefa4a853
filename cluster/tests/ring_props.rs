//! Property tests of the consistent-hash ring: agreement between nodes, balance, and bounded
//! movement when a node joins or leaves.
//!
//! Keys are derived from a random seed and a counter rather than generated one by one, so that a
//! case can look at tens of thousands of keys and still run quickly in a debug build.

use std::collections::BTreeSet;

use chat_cluster::ring::{Ring, DEFAULT_VNODES};
use chat_types::{NodeId, RingEpoch};
use proptest::prelude::*;

/// Keys per case for the statistical properties.
const KEYS: u64 = 30_000;

/// `count` distinct-looking keys from `seed`: `seed BE ++ i BE`.
fn keys(seed: u64, count: u64) -> impl Iterator<Item = [u8; 16]> {
    (0..count).map(move |i| {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&seed.to_be_bytes());
        k[8..].copy_from_slice(&i.to_be_bytes());
        k
    })
}

fn ring(members: impl IntoIterator<Item = u64>) -> Ring {
    Ring::new(
        members.into_iter().map(NodeId),
        RingEpoch(1),
        DEFAULT_VNODES,
    )
}

fn must_owner(ring: &Ring, key: &[u8]) -> NodeId {
    ring.owner(key).expect("a ring with members owns every key")
}

/// A non-empty set of distinct node ids together with a shuffled copy of it.
fn members_and_shuffle(max: usize) -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
    prop::collection::btree_set(any::<u64>(), 1..=max).prop_flat_map(|set| {
        let sorted: Vec<u64> = set.into_iter().collect();
        (Just(sorted.clone()), Just(sorted).prop_shuffle())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every node builds the ring from the member list it reads from Raft, in whatever order and
    /// possibly with repeats; all must agree on every owner and replica set.
    #[test]
    fn rings_from_the_same_members_agree_on_owners(
        (sorted, shuffled) in members_and_shuffle(8),
        repeats in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        random_keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..64),
        seed in any::<u64>(),
    ) {
        let mut with_repeats = shuffled.clone();
        with_repeats.extend(repeats.iter().map(|ix| *ix.get(&sorted)));
        let a = ring(sorted.iter().copied());
        let b = ring(with_repeats.iter().rev().copied());
        prop_assert_eq!(&a, &b);

        for k in &random_keys {
            prop_assert_eq!(a.owner(k), b.owner(k));
            prop_assert_eq!(a.successors(k, 3), b.successors(k, 3));
        }
        for k in keys(seed, 2_000) {
            prop_assert_eq!(a.owner(&k), b.owner(&k));
        }
    }

    /// Three nodes each get within 20% of a third of the keys.
    #[test]
    fn three_nodes_share_keys_evenly(
        ids in prop::collection::btree_set(any::<u64>(), 3),
        seed in any::<u64>(),
    ) {
        let ring = ring(ids.iter().copied());
        let mut counts = [0u64; 3];
        for k in keys(seed, KEYS) {
            let owner = must_owner(&ring, &k);
            let slot = ring
                .members()
                .iter()
                .position(|&m| m == owner)
                .expect("the owner is a member");
            counts[slot] += 1;
        }
        for (node, &count) in ring.members().iter().zip(&counts) {
            let share = count as f64 / KEYS as f64;
            prop_assert!(
                (0.8 / 3.0..=1.2 / 3.0).contains(&share),
                "node {} has share {:.4} ({:?})", node, share, counts
            );
        }
    }

    /// A fourth node takes about a quarter of the keys, and keys only ever move to it.
    #[test]
    fn adding_a_node_moves_a_quarter_of_keys_only_to_it(
        ids in prop::collection::btree_set(any::<u64>(), 4),
        newcomer in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let ids: Vec<u64> = ids.into_iter().collect();
        let new = ids[newcomer.index(ids.len())];
        let before = ring(ids.iter().copied().filter(|&id| id != new));
        let after = ring(ids.iter().copied());

        let mut moved = 0u64;
        for k in keys(seed, KEYS) {
            let (was, now) = (must_owner(&before, &k), must_owner(&after, &k));
            if was != now {
                prop_assert_eq!(now, NodeId(new), "a key moved between old nodes");
                moved += 1;
            }
        }
        let fraction = moved as f64 / KEYS as f64;
        prop_assert!(
            (0.18..=0.32).contains(&fraction),
            "{:.4} of keys moved to the new node", fraction
        );
    }

    /// When a node leaves, only the keys it owned move; everything else stays put.
    #[test]
    fn removing_a_node_moves_only_its_keys(
        ids in prop::collection::btree_set(any::<u64>(), 2..=6),
        leaver in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let ids: Vec<u64> = ids.into_iter().collect();
        let gone = NodeId(ids[leaver.index(ids.len())]);
        let before = ring(ids.iter().copied());
        let after = ring(ids.iter().copied().filter(|&id| NodeId(id) != gone));
        prop_assert!(!after.members().contains(&gone));

        let remaining: BTreeSet<NodeId> = after.members().iter().copied().collect();
        for k in keys(seed, 5_000) {
            let (was, now) = (must_owner(&before, &k), must_owner(&after, &k));
            if was == gone {
                prop_assert!(remaining.contains(&now));
            } else {
                prop_assert_eq!(was, now, "a key not owned by the leaver moved");
            }
        }
    }
}
