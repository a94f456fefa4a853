//! The metadata Raft group on openraft: its type configuration and its storage.
//!
//! Storage follows openraft's v2 split: [`LogStore`] holds the log and the hard state (vote,
//! committed, last purged); [`StateMachineStore`] holds the applied
//! [`MetaState`](crate::meta::MetaState), the last applied log id, the membership and the
//! current snapshot. Both live in the node's RocksDB
//! through [`chat_storage::raft_kv::RaftKv`]; neither knows RocksDB.
//!
//! RocksDB calls block. Every storage method runs them on tokio's blocking pool
//! (`blocking`) so that an fsync never stalls a runtime worker; each method awaits its
//! blocking call before returning, so calls stay in the order openraft makes them.

mod log_store;
pub mod network;
mod state_machine;

use std::io::Cursor;

use chat_storage::raft_kv::RaftKv;
use chat_storage::{StorageError, Store};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::meta::{MetaCommand, MetaResponse, NodeInfo};

pub use log_store::LogStore;
pub use state_machine::{SharedMeta, StateMachineStore};

openraft::declare_raft_types!(
    /// The type configuration of the metadata Raft group.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running metadata Raft node.
pub type MetaRaft = openraft::Raft<TypeConfig>;
/// One entry of the metadata log.
pub type MetaEntry = openraft::Entry<TypeConfig>;
/// A log id of the metadata log.
pub type MetaLogId = openraft::LogId<u64>;
/// The metadata group's membership as the state machine stores it.
pub type MetaMembership = openraft::StoredMembership<u64, NodeInfo>;
/// The error every storage method returns to openraft.
pub type RaftStorageError = openraft::StorageError<u64>;

/// Opens the Raft log store and the state machine on the node's database, loading the
/// state machine (metadata, last applied log id, membership, current snapshot) from disk.
pub fn open_stores(store: Store) -> Result<(LogStore, StateMachineStore), StorageError> {
    let kv = RaftKv::new(store);
    let state_machine = StateMachineStore::open(kv.clone())?;
    Ok((LogStore::new(kv), state_machine))
}

/// Runs a blocking storage call on tokio's blocking pool and waits for it. The call maps its
/// own errors to the `StorageIOError` that names what failed; a panic inside it becomes a
/// store error here.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, RaftStorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RaftStorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StorageIOError::new(
            ErrorSubject::Store,
            ErrorVerb::Write,
            AnyError::error(format!("blocking storage task failed: {e}")),
        )
        .into()),
    }
}
