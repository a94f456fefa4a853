//! Raw key-value space for the Raft log and the metadata state machine.
//!
//! This module knows RocksDB but not openraft: the cluster crate encodes log entries, votes
//! and log ids into bytes and stores them here. Three column families are involved:
//!
//! - [`CF_RAFT_LOG`]: `index (u64 BE)` -> encoded entry, so that RocksDB's byte order is the
//!   log order and ranges, the last entry, truncation and purging are key ranges.
//! - [`CF_RAFT_META`]: [`HardState`] name -> encoded value (vote, committed, last purged).
//! - [`CF_META`]: the state machine's own keys, written in atomic batches together with the
//!   Raft store's `raft/` keys (last applied log id, membership, current snapshot).
//!
//! Every write is one `WriteBatch`, so a crash leaves all of it or none of it. All calls block
//! on RocksDB; callers on an async runtime run them where blocking is allowed.

use std::ops::{Bound, RangeBounds};

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{Durability, Store, CF_META, CF_RAFT_LOG, CF_RAFT_META};
use crate::error::StorageError;

/// One state machine pair: key and value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Length of a Raft log key.
pub const LOG_KEY_LEN: usize = 8;

/// The key of the log entry at `index`: the index as 8 big-endian bytes.
pub fn log_key(index: u64) -> [u8; LOG_KEY_LEN] {
    index.to_be_bytes()
}

/// The index of a log key, or `None` when the key is not 8 bytes long.
pub fn log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; LOG_KEY_LEN] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The named hard-state values of the Raft log store, kept in [`CF_RAFT_META`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardState {
    /// The last vote this node cast or saw.
    Vote,
    /// The last log id known to be committed.
    Committed,
    /// The last log id removed by a purge.
    LastPurged,
}

impl HardState {
    /// The key under which the value is stored.
    pub fn name(self) -> &'static str {
        match self {
            HardState::Vote => "vote",
            HardState::Committed => "committed",
            HardState::LastPurged => "last_purged",
        }
    }
}

/// The Raft log, the Raft hard state and the state machine's key-value pairs, on one
/// [`Store`]. Cheap to clone; all clones share the database.
#[derive(Clone, Debug)]
pub struct RaftKv {
    store: Store,
}

impl RaftKv {
    pub fn new(store: Store) -> RaftKv {
        RaftKv { store }
    }

    /// The database this space lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    // --- Raft log -------------------------------------------------------------------------

    /// Writes log entries `(index, bytes)` in one batch, replacing any entry already at the
    /// same index.
    pub fn append_log<I>(&self, entries: I, durability: Durability) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = (u64, Vec<u8>)>,
    {
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, log_key(index), bytes);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(durability))?;
        Ok(())
    }

    /// Makes every write made before it durable: one fsync of the WAL, which all column
    /// families share. Writes made with [`Durability::Wal`] and synced here together cost one
    /// fsync for all of them (group commit).
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.store.db().flush_wal(true)?;
        Ok(())
    }

    /// The entries whose index lies in `range`, in index order. Missing indexes are skipped.
    pub fn read_log<R>(&self, range: R) -> Result<Vec<(u64, Vec<u8>)>, StorageError>
    where
        R: RangeBounds<u64>,
    {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let from = log_key(start);
        let iter = self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item?;
            let index = log_index(&key).ok_or_else(|| StorageError::corrupt(CF_RAFT_LOG, &key))?;
            if !range.contains(&index) {
                break;
            }
            out.push((index, value.into_vec()));
        }
        Ok(out)
    }

    /// The entry with the highest index, if the log holds any.
    pub fn last_log(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let mut iter = self.store.db().iterator_cf(cf, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                let index =
                    log_index(&key).ok_or_else(|| StorageError::corrupt(CF_RAFT_LOG, &key))?;
                Ok(Some((index, value.into_vec())))
            }
        }
    }

    /// Deletes every entry with an index of `from` or more (a conflicting suffix).
    pub fn truncate_log_from(&self, from: u64, durability: Durability) -> Result<(), StorageError> {
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        // The range end is exclusive, so the entry at u64::MAX goes separately.
        batch.delete_range_cf(cf, log_key(from), log_key(u64::MAX));
        batch.delete_cf(cf, log_key(u64::MAX));
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(durability))?;
        Ok(())
    }

    /// Deletes every entry with an index up to `upto` inclusive and records `last_purged`
    /// as [`HardState::LastPurged`] in the same batch, so that the record of what was purged
    /// is never older than the purge itself.
    pub fn purge_log_upto(
        &self,
        upto: u64,
        last_purged: &[u8],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let log_cf = self.store.cf(CF_RAFT_LOG)?;
        let meta_cf = self.store.cf(CF_RAFT_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            meta_cf,
            HardState::LastPurged.name().as_bytes(),
            last_purged,
        );
        match upto.checked_add(1) {
            Some(end) => batch.delete_range_cf(log_cf, log_key(0), log_key(end)),
            None => {
                batch.delete_range_cf(log_cf, log_key(0), log_key(u64::MAX));
                batch.delete_cf(log_cf, log_key(u64::MAX));
            }
        }
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(durability))?;
        Ok(())
    }

    // --- Raft hard state ------------------------------------------------------------------

    /// Reads one hard-state value.
    pub fn hard_state(&self, which: HardState) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.store.cf(CF_RAFT_META)?;
        Ok(self.store.db().get_cf(cf, which.name().as_bytes())?)
    }

    /// Writes one hard-state value. The vote must be written with [`Durability::Fsync`].
    pub fn put_hard_state(
        &self,
        which: HardState,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let cf = self.store.cf(CF_RAFT_META)?;
        self.store.db().put_cf_opt(
            cf,
            which.name().as_bytes(),
            value,
            &Store::write_opts(durability),
        )?;
        Ok(())
    }

    // --- State machine --------------------------------------------------------------------

    /// Reads one state machine key.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.store.cf(CF_META)?;
        Ok(self.store.db().get_cf(cf, key)?)
    }

    /// Writes `(key, Some(value))` puts and `(key, None)` deletes to the state machine in one
    /// atomic batch, in order (a later write to the same key wins).
    pub fn meta_write<I>(&self, writes: I, durability: Durability) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    {
        let cf = self.store.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(durability))?;
        Ok(())
    }

    /// Every pair of the state machine, in key order.
    pub fn meta_pairs(&self) -> Result<Vec<KvPair>, StorageError> {
        let cf = self.store.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self.store.db().iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    /// Replaces the whole state machine with `pairs` in one atomic batch (installing a
    /// snapshot): a reader or a crash sees the old contents or the new, never a mix.
    pub fn meta_replace<I>(&self, pairs: I, durability: Durability) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = KvPair>,
    {
        let cf = self.store.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        let last = self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::End)
            .next()
            .transpose()?;
        if let Some((last_key, _)) = last {
            // Keys are arbitrary bytes, so there is no fixed upper bound: the range ends just
            // past the current last key. Puts later in the batch get higher sequence numbers
            // than the range deletion, so they survive it.
            let mut end = last_key.into_vec();
            end.push(0);
            batch.delete_range_cf(cf, Vec::new(), end);
        }
        for (key, value) in pairs {
            batch.put_cf(cf, key, value);
        }
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(durability))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must_open() -> (tempfile::TempDir, RaftKv) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        (dir, RaftKv::new(store))
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        indexes.map(|i| (i, vec![i as u8; 3])).collect()
    }

    fn indexes(log: &[(u64, Vec<u8>)]) -> Vec<u64> {
        log.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn log_keys_are_big_endian_indexes() {
        assert_eq!(log_key(0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(log_index(&log_key(0x0102)), Some(0x0102));
        assert_eq!(log_index(&[1, 2, 3]), None);
        // Byte order is numeric order, which a little-endian key would break.
        assert!(log_key(255) < log_key(256));
        assert!(log_key(u64::MAX - 1) < log_key(u64::MAX));
    }

    #[test]
    fn log_is_stored_under_big_endian_keys() {
        let (_dir, kv) = must_open();
        kv.append_log([(256, b"x".to_vec())], Durability::Wal)
            .expect("append");
        let cf = kv.store.cf(CF_RAFT_LOG).expect("cf");
        let raw = kv
            .store
            .db()
            .get_cf(cf, [0, 0, 0, 0, 0, 0, 1, 0])
            .expect("get");
        assert_eq!(raw, Some(b"x".to_vec()));
    }

    #[test]
    fn reads_ranges_in_index_order() {
        let (_dir, kv) = must_open();
        // 255 and 256 would sort the wrong way round under little-endian keys.
        kv.append_log(entries(250..=260), Durability::Fsync)
            .expect("append");
        assert_eq!(
            indexes(&kv.read_log(..).expect("read")),
            (250..=260).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&kv.read_log(254..257).expect("read")),
            vec![254, 255, 256]
        );
        assert_eq!(indexes(&kv.read_log(259..).expect("read")), vec![259, 260]);
        assert_eq!(indexes(&kv.read_log(..=251).expect("read")), vec![250, 251]);
        assert!(kv.read_log(300..400).expect("read").is_empty());
        assert!(kv.read_log(255..255).expect("read").is_empty());
        assert!(kv
            .read_log((Bound::Excluded(u64::MAX), Bound::<u64>::Unbounded))
            .expect("read")
            .is_empty());
        let got = kv.read_log(255..=255).expect("read");
        assert_eq!(got, vec![(255, vec![255u8; 3])]);
    }

    #[test]
    fn last_log_is_the_highest_index() {
        let (_dir, kv) = must_open();
        assert_eq!(kv.last_log().expect("last"), None);
        kv.append_log(entries(1..=300), Durability::Wal)
            .expect("append");
        assert_eq!(kv.last_log().expect("last").map(|(i, _)| i), Some(300));
    }

    #[test]
    fn truncate_deletes_from_an_index_on() {
        let (_dir, kv) = must_open();
        kv.append_log(entries(1..=10), Durability::Wal)
            .expect("append");
        kv.truncate_log_from(6, Durability::Fsync)
            .expect("truncate");
        assert_eq!(
            indexes(&kv.read_log(..).expect("read")),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(kv.last_log().expect("last").map(|(i, _)| i), Some(5));
        kv.truncate_log_from(0, Durability::Fsync)
            .expect("truncate");
        assert_eq!(kv.last_log().expect("last"), None);
    }

    #[test]
    fn truncate_and_purge_handle_the_largest_index() {
        let (_dir, kv) = must_open();
        kv.append_log(
            [(u64::MAX, b"m".to_vec()), (7, b"s".to_vec())],
            Durability::Wal,
        )
        .expect("append");
        kv.truncate_log_from(u64::MAX, Durability::Wal)
            .expect("truncate");
        assert_eq!(indexes(&kv.read_log(..).expect("read")), vec![7]);
        kv.append_log([(u64::MAX, b"m".to_vec())], Durability::Wal)
            .expect("append");
        kv.purge_log_upto(u64::MAX, b"p", Durability::Wal)
            .expect("purge");
        assert!(kv.read_log(..).expect("read").is_empty());
    }

    #[test]
    fn purge_deletes_up_to_an_index_and_records_it() {
        let (_dir, kv) = must_open();
        kv.append_log(entries(1..=10), Durability::Wal)
            .expect("append");
        kv.purge_log_upto(4, b"purged-4", Durability::Fsync)
            .expect("purge");
        assert_eq!(
            indexes(&kv.read_log(..).expect("read")),
            vec![5, 6, 7, 8, 9, 10]
        );
        assert_eq!(
            kv.hard_state(HardState::LastPurged).expect("get"),
            Some(b"purged-4".to_vec())
        );
        kv.purge_log_upto(20, b"purged-20", Durability::Fsync)
            .expect("purge");
        assert!(kv.read_log(..).expect("read").is_empty());
    }

    #[test]
    fn hard_state_values_are_named_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = RaftKv::new(Store::open(dir.path()).expect("open"));
            assert_eq!(kv.hard_state(HardState::Vote).expect("get"), None);
            kv.put_hard_state(HardState::Vote, b"v1", Durability::Fsync)
                .expect("put");
            kv.put_hard_state(HardState::Committed, b"c1", Durability::Wal)
                .expect("put");
            kv.append_log(entries(1..=3), Durability::Fsync)
                .expect("append");
        }
        let kv = RaftKv::new(Store::open(dir.path()).expect("reopen"));
        assert_eq!(
            kv.hard_state(HardState::Vote).expect("get"),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            kv.hard_state(HardState::Committed).expect("get"),
            Some(b"c1".to_vec())
        );
        assert_eq!(kv.hard_state(HardState::LastPurged).expect("get"), None);
        assert_eq!(indexes(&kv.read_log(..).expect("read")), vec![1, 2, 3]);
        let cf = kv.store.cf(CF_RAFT_META).expect("cf");
        assert_eq!(
            kv.store.db().get_cf(cf, b"vote").expect("get"),
            Some(b"v1".to_vec())
        );
    }

    #[test]
    fn meta_writes_are_applied_in_order() {
        let (_dir, kv) = must_open();
        kv.meta_write(
            [
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"b".to_vec(), Some(b"2".to_vec())),
                (b"b".to_vec(), None),
                (b"raft/last_applied".to_vec(), Some(b"9".to_vec())),
            ],
            Durability::Wal,
        )
        .expect("write");
        assert_eq!(
            kv.meta_pairs().expect("pairs"),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"raft/last_applied".to_vec(), b"9".to_vec()),
            ]
        );
        assert_eq!(kv.meta_get(b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.meta_get(b"b").expect("get"), None);
    }

    #[test]
    fn meta_replace_swaps_all_contents() {
        let (_dir, kv) = must_open();
        kv.meta_replace([(b"x".to_vec(), b"0".to_vec())], Durability::Fsync)
            .expect("replace empty");
        kv.meta_write(
            [
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"\xff\xff".to_vec(), Some(b"2".to_vec())),
                (Vec::new(), Some(b"empty key".to_vec())),
            ],
            Durability::Wal,
        )
        .expect("write");
        kv.meta_replace(
            [
                (b"a".to_vec(), b"new".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ],
            Durability::Fsync,
        )
        .expect("replace");
        assert_eq!(
            kv.meta_pairs().expect("pairs"),
            vec![
                (b"a".to_vec(), b"new".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ]
        );
        kv.meta_replace(Vec::new(), Durability::Fsync)
            .expect("replace with nothing");
        assert!(kv.meta_pairs().expect("pairs").is_empty());
    }

    #[test]
    fn raft_log_and_meta_do_not_share_a_column_family() {
        let (_dir, kv) = must_open();
        kv.append_log(entries(1..=2), Durability::Wal)
            .expect("append");
        kv.put_hard_state(HardState::Vote, b"v", Durability::Fsync)
            .expect("put");
        assert!(kv.meta_pairs().expect("pairs").is_empty());
        kv.meta_replace(Vec::new(), Durability::Fsync)
            .expect("replace");
        assert_eq!(kv.read_log(..).expect("read").len(), 2);
        assert_eq!(
            kv.hard_state(HardState::Vote).expect("get"),
            Some(b"v".to_vec())
        );
    }
}
