//! The cluster crate's error type.

use chat_storage::StorageError;
use chat_types::{ErrorCode, WireError};

use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no metadata leader is known yet; retry")]
    NoLeader,
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("joining the cluster through {seed} failed: {detail}")]
    Join { seed: String, detail: String },
    #[error("bad payload from a peer: {0}")]
    BadPayload(String),
    #[error("this node is shutting down")]
    ShuttingDown,
}

impl ClusterError {
    /// How this error reaches a client.
    pub fn to_wire(&self) -> WireError {
        match self {
            ClusterError::NoLeader | ClusterError::Transport(_) | ClusterError::ShuttingDown => {
                WireError::new(ErrorCode::Unavailable, self.to_string())
            }
            _ => WireError::new(ErrorCode::Internal, "cluster metadata is unavailable"),
        }
    }
}
