//! The storage crate's error type.

/// Everything that can go wrong below the conversation log and the Raft store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt value in column family {cf} at key {key}")]
    Corrupt { cf: &'static str, key: String },
    #[error("value in column family {cf} has unknown format version {version}")]
    UnknownVersion { cf: &'static str, version: u8 },
    #[error("encoding a value for {cf}: {detail}")]
    Encode { cf: &'static str, detail: String },
    /// A write from an owner whose ring epoch is older than one this log has already seen:
    /// a newer owner has taken over, so the write must not land.
    #[error("stale epoch {epoch}: this conversation is fenced at epoch {fence}")]
    StaleEpoch { epoch: u64, fence: u64 },
    #[error("storage task failed: {0}")]
    Io(String),
    /// An append batch mixed conversations or epochs (a caller's mistake; nothing written).
    #[error("an append batch must hold one conversation under one epoch")]
    MixedBatch,
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
}

impl StorageError {
    pub(crate) fn corrupt(cf: &'static str, key: &[u8]) -> Self {
        StorageError::Corrupt {
            cf,
            key: key.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}
