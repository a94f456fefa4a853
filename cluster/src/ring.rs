//! The consistent-hash ring: which node owns a conversation, and which node is a user's home.
//!
//! A [`Ring`] is a pure function of the member list held in Raft and the epoch (the Raft log index
//! of that membership). Each member is placed on a 64-bit circle at `vnodes` pseudo-random points
//! ("virtual nodes"); a key belongs to the first point at or clockwise after the key's hash,
//! wrapping past `u64::MAX` back to 0. Virtual nodes spread each member over many short arcs, so
//! load is even and a join or leave moves only about `1/members` of the keys, all of them to the
//! joining node or away from the leaving one.
//!
//! # This is a cluster contract
//!
//! Every node computes owners independently and must reach the same answer, including nodes built
//! from different versions of this code during a rolling upgrade. Therefore the following are part
//! of the on-disk and cluster contract and must never change without a migration:
//!
//! - the hash function: `xxh3_64` with seed 0 (from `xxhash-rust`), which is specified and stable
//!   across platforms, endianness and crate versions;
//! - the vnode key layout: `node.0.to_be_bytes() ++ index.to_be_bytes()` (8 + 4 bytes, see
//!   [`vnode_point`]);
//! - the tie-break on equal points: the smaller [`NodeId`] comes first;
//! - the key layouts: `b"conv:" ++ ConversationId::to_key()` ([`conversation_key`]) and
//!   `b"user:" ++ user.0.to_be_bytes()` ([`user_key`]);
//! - the number of virtual nodes per member, which every node must agree on (it is passed to
//!   [`Ring::new`]; the cluster uses [`DEFAULT_VNODES`]).
//!
//! The `ring_is_pinned_to_the_contract` unit test fixes concrete hash values so that an accidental
//! change to any of these fails the build's tests rather than silently re-homing data.
//!
//! This module does no I/O and knows nothing about Raft, storage or the network.

use chat_types::{ConversationId, NodeId, RingEpoch, UserId};
use xxhash_rust::xxh3::xxh3_64;

/// Virtual nodes per member used by the cluster. Part of the cluster contract.
///
/// With `v` virtual nodes a member's share of the keys has a relative standard deviation of
/// about `1/sqrt(v)`. Measured over 3000 random three-node rings, the worst member's share was
/// off fair by up to 20% with 256 and by at most 13% with 512, so 512 keeps the `ring_props`
/// balance property (every share within 20% of fair) well clear of its bound. Lookup is a binary search over `members * vnodes` points, and the ring holds 16 bytes
/// per point (8 KiB per member).
pub const DEFAULT_VNODES: u32 = 512;

/// Prefix of [`conversation_key`].
const CONVERSATION_PREFIX: &[u8; 5] = b"conv:";
/// Prefix of [`user_key`].
const USER_PREFIX: &[u8; 5] = b"user:";

/// A consistent-hash ring built from one membership.
///
/// Two rings built from the same set of members, epoch and vnode count are equal, whatever the
/// order of the members and however often each was listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// `(point, node)` sorted by point, then by node: a total, deterministic order.
    points: Vec<(u64, NodeId)>,
    /// Sorted and deduplicated.
    members: Vec<NodeId>,
    epoch: RingEpoch,
    vnodes: u32,
}

impl Ring {
    /// Builds the ring for `members` at `epoch`, placing each member at `vnodes` points.
    ///
    /// The order of `members` and any duplicates in it do not matter. A `vnodes` of 0 is treated
    /// as 1, so that every member owns part of the circle.
    pub fn new(members: impl IntoIterator<Item = NodeId>, epoch: RingEpoch, vnodes: u32) -> Ring {
        let vnodes = vnodes.max(1);
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();

        let mut points: Vec<(u64, NodeId)> =
            Vec::with_capacity(members.len().saturating_mul(vnodes as usize));
        for &node in &members {
            points.extend((0..vnodes).map(|i| (vnode_point(node, i), node)));
        }
        // Tuples order by point, then by NodeId: equal points are broken by the smaller node, so
        // every node sorts the circle identically.
        points.sort_unstable();

        Ring {
            points,
            members,
            epoch,
            vnodes,
        }
    }

    /// The Raft log index of the membership this ring was built from.
    pub fn epoch(&self) -> RingEpoch {
        self.epoch
    }

    /// The members, sorted by id, without duplicates.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Virtual nodes per member (at least 1).
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// Whether the ring has no members, in which case nothing has an owner.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `node` is a member of this ring.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    /// The node that owns `key`: the first virtual node at or clockwise after `xxh3_64(key)`,
    /// wrapping around. `None` only for an empty ring.
    pub fn owner(&self, key: &[u8]) -> Option<NodeId> {
        let start = self.first_index(key)?;
        self.points.get(start).map(|&(_, node)| node)
    }

    /// The first `n` distinct nodes clockwise from `key`, owner first: the replica set of `key`.
    ///
    /// Returns fewer than `n` nodes when the ring has fewer members, and nothing for an empty ring.
    pub fn successors(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        let want = n.min(self.members.len());
        let mut out = Vec::with_capacity(want);
        let Some(start) = self.first_index(key) else {
            return out;
        };
        let (after, before) = self.points.split_at(start);
        for &(_, node) in before.iter().chain(after) {
            if out.len() == want {
                break;
            }
            // `want` is small (a replication factor), so a linear scan beats a set.
            if !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }

    /// The node that owns conversation `c` (its log, its sequencer, its actor).
    pub fn owner_of_conversation(&self, c: &ConversationId) -> Option<NodeId> {
        self.owner(&conversation_key(c))
    }

    /// The home node of user `u` (sessions, inbox fan-out).
    pub fn home_of_user(&self, u: UserId) -> Option<NodeId> {
        self.owner(&user_key(u))
    }

    /// Index in `points` of the first point at or after `key`'s hash, wrapping to 0.
    fn first_index(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = xxh3_64(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        Some(if i == self.points.len() { 0 } else { i })
    }
}

/// The position of virtual node `index` of `node`: `xxh3_64(node.0 BE ++ index BE)`.
///
/// Part of the cluster contract; see the module documentation.
pub fn vnode_point(node: NodeId, index: u32) -> u64 {
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&node.0.to_be_bytes());
    buf[8..].copy_from_slice(&index.to_be_bytes());
    xxh3_64(&buf)
}

/// The ring key of a conversation: `b"conv:" ++ c.to_key()`.
///
/// Part of the cluster contract; see the module documentation.
pub fn conversation_key(c: &ConversationId) -> [u8; 5 + ConversationId::KEY_LEN] {
    let mut out = [0u8; 5 + ConversationId::KEY_LEN];
    out[..5].copy_from_slice(CONVERSATION_PREFIX);
    out[5..].copy_from_slice(&c.to_key());
    out
}

/// The ring key of a user's home: `b"user:" ++ u.0 BE`.
///
/// Part of the cluster contract; see the module documentation.
pub fn user_key(u: UserId) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[..5].copy_from_slice(USER_PREFIX);
    out[5..].copy_from_slice(&u.0.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn key(i: u32) -> [u8; 4] {
        i.to_be_bytes()
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::new([], RingEpoch(1), DEFAULT_VNODES);
        assert!(ring.is_empty());
        assert!(ring.members().is_empty());
        assert_eq!(ring.owner(b"anything"), None);
        assert_eq!(ring.owner(b""), None);
        assert!(ring.successors(b"anything", 3).is_empty());
        assert_eq!(
            ring.owner_of_conversation(&ConversationId::direct(UserId(1), UserId(2))),
            None
        );
        assert_eq!(ring.home_of_user(UserId(1)), None);
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = Ring::new(nodes(&[7]), RingEpoch(3), DEFAULT_VNODES);
        assert!(!ring.is_empty());
        assert_eq!(ring.epoch(), RingEpoch(3));
        for i in 0..1000 {
            assert_eq!(ring.owner(&key(i)), Some(NodeId(7)));
            assert_eq!(ring.successors(&key(i), 3), nodes(&[7]));
        }
        assert_eq!(ring.home_of_user(UserId(42)), Some(NodeId(7)));
    }

    #[test]
    fn successors_are_distinct_owner_first_and_capped_at_member_count() {
        let ring = Ring::new(nodes(&[1, 2, 3, 4, 5]), RingEpoch(1), 16);
        for i in 0..1000 {
            let k = key(i);
            let owner = ring.owner(&k).expect("non-empty ring has an owner");
            for n in 0..=7 {
                let s = ring.successors(&k, n);
                assert_eq!(s.len(), n.min(5), "key {i} n {n}");
                if n > 0 {
                    assert_eq!(s[0], owner);
                }
                let mut sorted = s.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), s.len(), "duplicates in {s:?}");
                // A shorter replica set is a prefix of a longer one.
                assert_eq!(s[..], ring.successors(&k, 7)[..s.len()]);
            }
        }
    }

    #[test]
    fn ring_is_deterministic_whatever_the_member_order_or_duplicates() {
        let a = Ring::new(nodes(&[10, 20, 30, 40]), RingEpoch(5), DEFAULT_VNODES);
        let b = Ring::new(
            nodes(&[40, 10, 30, 20, 10, 40]),
            RingEpoch(5),
            DEFAULT_VNODES,
        );
        assert_eq!(a, b);
        assert_eq!(b.members(), nodes(&[10, 20, 30, 40]).as_slice());
        for i in 0..1000 {
            assert_eq!(a.owner(&key(i)), b.owner(&key(i)));
            assert_eq!(a.successors(&key(i), 3), b.successors(&key(i), 3));
        }
    }

    #[test]
    fn owner_wraps_past_the_last_point() {
        let ring = Ring::new(nodes(&[1, 2, 3]), RingEpoch(1), 4);
        let &(last, _) = ring.points.last().expect("ring has points");
        let &(_, first_node) = ring.points.first().expect("ring has points");
        // Find a key hashing past the last point; with 12 points one turns up quickly.
        let k = (0u32..)
            .map(key)
            .find(|k| xxh3_64(k) > last)
            .expect("some key hashes past the last point");
        assert_eq!(ring.owner(&k), Some(first_node));
    }

    #[test]
    fn equal_points_are_ordered_by_node() {
        let mut ring = Ring::new(nodes(&[1, 2]), RingEpoch(1), 1);
        // Force a collision to check that lookups pick the smaller node deterministically.
        ring.points = vec![(100, NodeId(1)), (100, NodeId(2))];
        // Any key lands on index 0: either at or before point 100, or past it and wrapped.
        let k = key(0);
        assert_eq!(ring.owner(&k), Some(NodeId(1)));
        assert_eq!(ring.successors(&k, 2), nodes(&[1, 2]));
        let built = Ring::new(nodes(&[2, 1]), RingEpoch(1), 8);
        assert!(built.points.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn zero_vnodes_is_treated_as_one() {
        let ring = Ring::new(nodes(&[1, 2]), RingEpoch(1), 0);
        assert_eq!(ring.vnodes(), 1);
        assert!(ring.owner(b"x").is_some());
    }

    #[test]
    fn key_layouts_are_prefix_then_big_endian() {
        let c = ConversationId::direct(UserId(2), UserId(0x0102));
        let ck = conversation_key(&c);
        assert_eq!(&ck[..5], b"conv:");
        assert_eq!(&ck[5..], &c.to_key());

        let uk = user_key(UserId(0x0102_0304));
        assert_eq!(uk, *b"user:\0\0\0\0\x01\x02\x03\x04");
    }

    /// Pins the hash function, the vnode layout and the key layouts to fixed values. If this test
    /// fails, a change would re-home data across the cluster: see the module documentation.
    #[test]
    fn ring_is_pinned_to_the_contract() {
        assert_eq!(DEFAULT_VNODES, 512);
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(vnode_point(NodeId(1), 0), 0xaf8a_366c_0b48_c68b);
        assert_eq!(vnode_point(NodeId(0x0102), 7), 0x5e90_c2c2_eda1_4099);

        let ring = Ring::new(nodes(&[1, 2, 3]), RingEpoch(1), DEFAULT_VNODES);
        let owners: Vec<u64> = (1..=8)
            .map(|u| ring.home_of_user(UserId(u)).map_or(0, |n| n.0))
            .collect();
        assert_eq!(owners, [2, 2, 1, 3, 2, 2, 3, 3]);
        let conv = ConversationId::direct(UserId(1), UserId(2));
        assert_eq!(ring.owner_of_conversation(&conv), Some(NodeId(3)));
    }
}
