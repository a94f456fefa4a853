//! The metadata Raft log and hard state, on [`RaftKv`].
//!
//! Each entry is stored at its index as `[ENTRY_FORMAT] ++ MessagePack(entry)` with field
//! names. Appends, truncations, purges and votes are fsynced before openraft hears that they
//! are done: a vote or an entry acknowledged to a peer must survive a power loss.
//!
//! Appends are group-committed. openraft (0.9) hands over one entry per client write and
//! waits for nothing but the append call, so an append that fsynced inline cost one fsync per
//! entry and held the Raft core for its length (logins, each a session entry, were bounded
//! by the disk's fsync rate). An append now writes its entries to the WAL, which makes them
//! readable, and queues openraft's flush callback; one flusher thread syncs the WAL for
//! everything queued since its last sync and then runs those callbacks in order. Only the
//! callback tells openraft an entry is durable, so nothing is acknowledged before its fsync.
//! The committed log id is only written to the WAL: losing it merely means re-applying fewer
//! entries at startup, and any later fsync (the next append) makes it durable anyway, because
//! all column families share one WAL.

// openraft's `StorageError` is large, but it is the error type the storage traits require;
// boxing it in the helpers only to unbox it at the trait boundary would buy nothing.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

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
    flusher: Flusher,
}

/// The queue of appends written to the WAL and waiting for an fsync; its thread stops when
/// the last clone of the store is dropped. Each append brings the database along, and the
/// thread lets go of it before it runs the callbacks: once openraft hears of the last
/// append, the thread holds nothing that keeps the database open.
#[derive(Clone)]
struct Flusher(Arc<mpsc::Sender<(RaftKv, LogFlushed<TypeConfig>)>>);

impl Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flusher")
    }
}

impl Flusher {
    fn start() -> Flusher {
        let (tx, rx) = mpsc::channel::<(RaftKv, LogFlushed<TypeConfig>)>();
        let spawned = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok((kv, first)) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter().map(|(_, callback)| callback));
                    // One fsync covers every append queued before it was taken off the queue.
                    let synced = kv.sync_wal();
                    drop(kv);
                    for callback in waiting {
                        callback.log_io_completed(match &synced {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        });
                    }
                }
            });
        if let Err(e) = spawned {
            // Without the thread the callbacks are dropped unanswered: openraft then sees no
            // entry become durable and the node stops committing, which the health checks show.
            tracing::error!(error = %e, "could not start the Raft log flusher");
        }
        Flusher(Arc::new(tx))
    }
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
        let flusher = Flusher::start();
        LogStore { kv, flusher }
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
        // A WAL write, no fsync: inline. The entries are readable once it returns.
        if let Err(e) = self.kv.append_log(batch, Durability::Wal) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        // The callback is what tells openraft the entries are durable: the flusher runs it
        // after the fsync that covers them.
        if let Err(mpsc::SendError((_, callback))) =
            self.flusher.0.send((self.kv.clone(), callback))
        {
            let e = std::io::Error::other("the Raft log flusher has stopped");
            let detail = e.to_string();
            callback.log_io_completed(Err(e));
            return Err(StorageIOError::write_logs(openraft::AnyError::error(detail)).into());
        }
        Ok(())
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
