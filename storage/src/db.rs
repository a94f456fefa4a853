//! Opening the node's RocksDB and naming its column families.
//!
//! Column families are named `<key>_<value>` so a reader knows the layout from the name.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::error::StorageError;

/// `conv(17) ++ seq(8)` -> versioned message record.
pub const CF_MSG: &str = "conv_seq_message";
/// `conv(17)` -> versioned last seq.
pub const CF_HEAD: &str = "conv_head";
/// `conv(17) ++ sender(8) ++ client_msg_id` -> versioned seq.
pub const CF_DEDUP: &str = "conv_sender_cmid_seq";
/// `conv(17)` -> versioned seq: every message up to it has reached all members' streams.
pub const CF_DELIVERED: &str = "conv_delivered";
/// `conv(17)` -> versioned ring epoch: the newest owner epoch this replica has seen.
pub const CF_FENCE: &str = "conv_fence";
/// `user(8) ++ event_seq(8)` -> versioned user event.
pub const CF_EVENTS: &str = "user_seq_event";
/// `user(8)` -> versioned last event seq.
pub const CF_EVENT_HEAD: &str = "user_eventhead";
/// `user(8) ++ conv(17) ++ seq(8)` -> versioned event seq: one event per message per user.
pub const CF_EVENT_DEDUP: &str = "user_conv_seq_eventseq";
/// `user(8) ++ conv(17)` -> versioned summary: last message, read mark (derived from events).
pub const CF_CONV_SUMMARY: &str = "user_conv_summary";
/// `index(8)` -> Raft log entry bytes.
pub const CF_RAFT_LOG: &str = "raftidx_entry";
/// name -> Raft hard state (vote, committed, last purged).
pub const CF_RAFT_META: &str = "raftname_state";
/// metadata state machine key -> value (accounts, sessions, applied log id, membership).
pub const CF_META: &str = "metakey_value";
/// name -> node-local facts that are not replicated (this node's id).
pub const CF_LOCAL: &str = "localname_value";
/// Messages written here and not yet in the search index: message key -> nothing.
pub const CF_INDEX_FEED: &str = "convseq_unindexed";

const ALL_CFS: &[&str] = &[
    CF_MSG,
    CF_HEAD,
    CF_DEDUP,
    CF_FENCE,
    CF_DELIVERED,
    CF_EVENTS,
    CF_EVENT_HEAD,
    CF_EVENT_DEDUP,
    CF_CONV_SUMMARY,
    CF_RAFT_LOG,
    CF_RAFT_META,
    CF_META,
    CF_LOCAL,
    CF_INDEX_FEED,
];

/// How hard a write is pushed to disk before it counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Written to the RocksDB WAL (survives a process crash, not a power loss).
    Wal,
    /// Written and fsynced.
    Fsync,
}

/// The node's database. Cheap to clone; all clones share one RocksDB.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating when missing) the database in `dir` with every column family.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Store { db: Arc::new(db) })
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or(StorageError::MissingColumnFamily(name))
    }

    pub(crate) fn write_opts(durability: Durability) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(durability == Durability::Fsync);
        w
    }

    /// Reads a node-local value (not replicated), such as this node's id.
    pub fn local_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_LOCAL)?, name.as_bytes())?)
    }

    /// Writes a node-local value, fsynced.
    pub fn local_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db.put_cf_opt(
            self.cf(CF_LOCAL)?,
            name.as_bytes(),
            value,
            &Self::write_opts(Durability::Fsync),
        )?;
        Ok(())
    }

    /// Flushes memtables and the WAL; called on graceful shutdown.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_values_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.local_put("node_id", b"42").expect("put");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.local_get("node_id").expect("get"),
            Some(b"42".to_vec())
        );
        assert_eq!(store.local_get("other").expect("get"), None);
    }
}
