//! Opening the node's RocksDB and naming its column families.
//!
//! Column families are named `<key>_<value>` so a reader knows the layout from the name.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::StorageError;

/// `conv(17) ++ seq(8)` -> versioned message record.
pub const CF_MSG: &str = "conv_seq_message";
/// `conv(17)` -> versioned last seq. No longer written or read (a conversation's head is its
/// last message key); opened so that databases written before still open.
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
/// Messages written here below their conversation's head and not yet in the search index:
/// message key -> nothing (see `index_feed`).
pub const CF_INDEX_FEED: &str = "convseq_unindexed";
/// `conv(17)` -> versioned seq: every message of the conversation written in seq order up to
/// it is in the search index (see `index_feed`).
pub const CF_INDEXED: &str = "conv_indexedseq";

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
    CF_INDEXED,
];

/// The block cache all column families share.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

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
    /// Opens (creating when missing) the database in `dir` with every column family, and
    /// brings an older layout up to date.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        // RocksDB's own LOG file gets fatal messages only. On a full disk a write to it fails,
        // and the RocksDB we link (Debian's, built with assertions) aborts the process at the
        // next line it logs (`WritableFileWriter` asserts that nothing is written after an
        // error); the errors that matter reach the node's log through the calls that fail.
        opts.set_log_level(rocksdb::LogLevel::Fatal);
        // Every column family is read by key (dedup records, summaries, heads, fences) and
        // every append looks a client id up that is, for a new message, not there: a whole-key
        // bloom filter per SST file answers such a miss without reading the file's index
        // (10 bits a key, ~1% false positives). One block cache for all of them, so that the
        // cached blocks have one bound rather than RocksDB's 8 MiB per column family.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let store = Store { db: Arc::new(db) };
        crate::index_feed::migrate(&store)?;
        Ok(store)
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

    /// `Ok` while the database accepts writes; otherwise the error that stopped it (after a
    /// failed write, e.g. a full disk, RocksDB refuses writes until it has recovered, which it
    /// does by itself once 64 MiB are free). Writes nothing.
    pub fn writable(&self) -> Result<(), StorageError> {
        let mut w = WriteOptions::default();
        w.disable_wal(true);
        self.db.write_opt(WriteBatch::default(), &w)?;
        Ok(())
    }

    /// Flushes memtables and the WAL; called on graceful shutdown. A database stopped by a
    /// failed write returns that error and is not touched: everything acknowledged is in the
    /// WAL already, and syncing the log file that failed would abort the process (see
    /// [`Store::open`]).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.writable()?;
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

    /// The files a flush writes carry a bloom filter, so a lookup of a missing key can stop
    /// at the filter.
    #[test]
    fn flushed_files_carry_a_bloom_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.local_put("node_id", b"42").expect("put");
        store.flush().expect("flush");
        let props = store
            .db()
            .property_value_cf(
                store.cf(CF_LOCAL).expect("cf"),
                "rocksdb.aggregated-table-properties",
            )
            .expect("property")
            .expect("a table was written");
        let filter_bytes: u64 = props
            .split("filter block size=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no filter block size in {props}"));
        assert!(filter_bytes > 0, "{props}");
    }

    /// A tmpfs of a given size over a directory, unmounted on drop.
    struct SmallFs(std::path::PathBuf);

    impl SmallFs {
        /// `None` where mounting is not permitted (the test is then skipped).
        fn mount(path: &Path, bytes: u64) -> Option<SmallFs> {
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(path)
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then(|| SmallFs(path.to_owned()))
        }

        fn resize(&self, bytes: u64) {
            let status = std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={bytes}")])
                .arg(&self.0)
                .status()
                .expect("run mount");
            assert!(status.success(), "remount {}", self.0.display());
        }

        /// Writes a file until the file system is full.
        fn fill(&self) {
            use std::io::Write;
            let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
            for block in [1 << 20, 4 << 10, 1] {
                let buf = vec![0u8; block];
                while f.write(&buf).is_ok_and(|n| n > 0) {}
            }
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    /// A full disk makes writes fail; a flush then (as on shutdown) reports the error instead
    /// of taking the process down; once there is room again, writes work without a reopen.
    #[test]
    fn a_full_disk_fails_writes_and_flush_cleanly_and_writes_resume_once_there_is_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Smaller than RocksDB's 70 MiB write-ahead log reservation, which then fails (and is
        // ignored), so that the log needs the file system's space for every write.
        let Some(fs) = SmallFs::mount(dir.path(), 16 << 20) else {
            eprintln!("SKIPPED: mounting a tmpfs is not permitted here");
            return;
        };
        let store = Store::open(&dir.path().join("db")).expect("open");
        store.local_put("before", b"1").expect("put with room");
        fs.fill();
        let value = vec![7u8; 4096];
        let failed = (0..10_000)
            .find_map(|k| store.local_put(&format!("k{k}"), &value).err())
            .expect("writes fail on a full disk");
        assert!(failed.to_string().contains("No space"), "{failed}");
        let again = store.local_put("after", b"2").expect_err("still full");
        assert!(again.to_string().contains("No space"), "{again}");
        let stopped = store
            .writable()
            .expect_err("a stopped database is not writable");
        assert!(stopped.to_string().contains("No space"), "{stopped}");

        let flushed = store
            .flush()
            .expect_err("nothing can be flushed to a full disk");
        assert!(flushed.to_string().contains("No space"), "{flushed}");

        // RocksDB resumes by itself once 64 MiB (its write buffer) are free; it looks every
        // few seconds.
        std::fs::remove_file(dir.path().join("filler")).expect("remove the filler");
        fs.resize(128 << 20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.writable().is_err() {
            assert!(std::time::Instant::now() < deadline, "writes never resumed");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        store.local_put("after", b"2").expect("put after recovery");
        store.flush().expect("flush with room");
        drop(store);
        let store = Store::open(&dir.path().join("db")).expect("reopen");
        assert_eq!(store.local_get("before").expect("get"), Some(b"1".to_vec()));
        assert_eq!(store.local_get("after").expect("get"), Some(b"2".to_vec()));
    }
}
