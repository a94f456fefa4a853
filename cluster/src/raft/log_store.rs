//! The metadata Raft log and hard state, on [`RaftKv`].
//!
//! Each entry is stored at its index as `[ENTRY_FORMAT] ++ MessagePack(entry)` with field
//! names. Appends, truncations, purges and votes are fsynced before openraft hears that they
//! are done: a vote or an entry acknowledged to a peer must survive a power loss. The
//! committed log id is only written to the WAL: losing it merely means re-applying fewer
//! entries at startup, and any later fsync (the next append) makes it durable anyway, because
//! all column families share one WAL.

// openraft's `StorageError` is large, but it is the error type the storage traits require;
// boxing it in the helpers only to unbox it at the trait boundary would buy nothing.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use chat_storage::db::{CF_RAFT_LOG, CF_RAFT_META};
use chat_storage::keys::{decode_versioned, encode_versioned};
use chat_storage::raft_kv::{log_key, HardState, RaftKv};
use chat_storage::{Durability, StorageError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::{blocking, MetaEntry, MetaLogId, RaftStorageError, TypeConfig};

/// Format of a stored log entry.
const ENTRY_FORMAT: u8 = 1;
/// Format of the stored vote and log ids.
const HARD_STATE_FORMAT: u8 = 1;

/// The Raft log store. Cheap to clone: clones share the database and serve as log readers.
#[derive(Clone, Debug)]
pub struct LogStore {
    kv: RaftKv,
}

fn encode_entry(entry: &MetaEntry) -> Result<Vec<u8>, StorageError> {
    encode_versioned(CF_RAFT_LOG, ENTRY_FORMAT, entry)
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<MetaEntry, StorageError> {
    let key = log_key(index);
    let entry: MetaEntry = decode_versioned(CF_RAFT_LOG, ENTRY_FORMAT, &key, bytes)?;
    // An entry stored under another index is as corrupt as bytes that do not decode.
    if entry.log_id.index != index {
        return Err(StorageError::Corrupt {
            cf: CF_RAFT_LOG,
            key: format!("{index:016x}"),
        });
    }
    Ok(entry)
}

fn read_hard<T: serde::de::DeserializeOwned>(
    kv: &RaftKv,
    which: HardState,
) -> Result<Option<T>, StorageError> {
    match kv.hard_state(which)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode_versioned(
            CF_RAFT_META,
            HARD_STATE_FORMAT,
            which.name().as_bytes(),
            &bytes,
        )?)),
    }
}

fn encode_hard<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    encode_versioned(CF_RAFT_META, HARD_STATE_FORMAT, value)
}

impl LogStore {
    pub fn new(kv: RaftKv) -> LogStore {
        LogStore { kv }
    }

    fn read_entries(
        kv: &RaftKv,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<MetaEntry>, StorageError> {
        kv.read_log(range)?
            .into_iter()
            .map(|(index, bytes)| decode_entry(index, &bytes))
            .collect()
    }

    fn log_state(kv: &RaftKv) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<MetaLogId> = read_hard(kv, HardState::LastPurged)?;
        let last_log_id = match kv.last_log()? {
            Some((index, bytes)) => Some(decode_entry(index, &bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<MetaEntry>, RaftStorageError> {
        let kv = self.kv.clone();
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            Self::read_entries(&kv, range).map_err(|e| StorageIOError::read_logs(&e).into())
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || Self::log_state(&kv).map_err(|e| StorageIOError::read_logs(&e).into()))
            .await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        let kv = self.kv.clone();
        let vote = *vote;
        blocking(move || {
            encode_hard(&vote)
                .and_then(|bytes| kv.put_hard_state(HardState::Vote, &bytes, Durability::Fsync))
                .map_err(|e| StorageIOError::write_vote(&e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || {
            read_hard(&kv, HardState::Vote).map_err(|e| StorageIOError::read_vote(&e).into())
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<MetaLogId>,
    ) -> Result<(), RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || {
            encode_hard(&committed)
                .and_then(|bytes| kv.put_hard_state(HardState::Committed, &bytes, Durability::Wal))
                .map_err(|e| StorageIOError::write(&e).into())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<MetaLogId>, RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || {
            // Stored as `Option<LogId>`: a saved `None` is a value too.
            let stored: Option<Option<MetaLogId>> =
                read_hard(&kv, HardState::Committed).map_err(|e| StorageIOError::read(&e))?;
            Ok(stored.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = MetaEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for entry in entries {
            let bytes = encode_entry(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.push((entry.log_id.index, bytes));
        }
        let kv = self.kv.clone();
        let written = blocking(move || {
            kv.append_log(batch, Durability::Fsync)
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await;
        // The callback is what tells openraft the entries are durable, so it runs only after
        // the fsynced write returned.
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: MetaLogId) -> Result<(), RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || {
            kv.truncate_log_from(log_id.index, Durability::Fsync)
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: MetaLogId) -> Result<(), RaftStorageError> {
        let kv = self.kv.clone();
        blocking(move || {
            encode_hard(&log_id)
                .and_then(|marker| kv.purge_log_upto(log_id.index, &marker, Durability::Fsync))
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
        .await
    }
}
