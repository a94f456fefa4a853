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
    /// The same error for another caller (a batched write fails for all of its commands).
    pub fn for_another(&self) -> ClusterError {
        match self {
            ClusterError::NoLeader => ClusterError::NoLeader,
            ClusterError::Raft(d) => ClusterError::Raft(d.clone()),
            ClusterError::Transport(e) => ClusterError::Transport(e.clone()),
            ClusterError::Storage(e) => ClusterError::Raft(e.to_string()),
            ClusterError::Join { seed, detail } => ClusterError::Join {
                seed: seed.clone(),
                detail: detail.clone(),
            },
            ClusterError::BadPayload(d) => ClusterError::BadPayload(d.clone()),
            ClusterError::ShuttingDown => ClusterError::ShuttingDown,
        }
    }

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
