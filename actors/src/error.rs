//! The actor crate's error type, small and serializable because it crosses nodes.

use chat_types::{ErrorCode, NodeId, RingEpoch, WireError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ActorError {
    /// The node asked is not the owner under its ring; retry at `owner`.
    #[error("not the owner; owner is node {owner} at ring epoch {epoch}")]
    NotOwner { owner: NodeId, epoch: RingEpoch },
    #[error("not a member of this conversation")]
    Forbidden,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure")]
    Storage,
    /// A replica refused a write from an older ring epoch: a newer owner has taken over.
    #[error("stale epoch; the conversation is fenced at epoch {fence}")]
    StaleEpoch { fence: RingEpoch },
    /// A replica is missing entries before the ones sent to it; it holds up to `head`.
    #[error("replica is behind at position {head}")]
    Gap { head: u64 },
    #[error("bad payload: {0}")]
    BadPayload(String),
}

impl ActorError {
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            ActorError::Forbidden => ErrorCode::Forbidden,
            ActorError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ActorError::NotOwner { .. }
            | ActorError::Unavailable(_)
            | ActorError::StaleEpoch { .. }
            | ActorError::Gap { .. } => ErrorCode::Unavailable,
            ActorError::Storage | ActorError::BadPayload(_) => ErrorCode::Internal,
        };
        WireError::new(code, self.to_string())
    }
}
