//! chat-actors: the actors that carry a message from one user's socket to another's.
//!
//! Owns the connection actor (one per WebSocket, on the node that holds the socket), the user
//! session actor (one per user, on the user's home node: knows every live connection of the
//! user on any node), the conversation actor (one per conversation, on its owner node: the
//! single writer of its log), and the per-node [`Router`] that finds the right node for each
//! request through the ring and speaks to other nodes' routers over the peer transport in a
//! versioned envelope (`peer_wire`).
//!
//! Must not depend on actix-web or any HTTP framework, nor on RocksDB or openraft directly:
//! it reaches storage through `chat_storage::ConversationLog` and the cluster through
//! `chat_cluster::Metadata` and its transport.

pub mod connection;
pub mod conversation;
pub mod error;
pub mod logs;
pub mod offline;
pub mod peer_wire;
pub mod replication;
pub mod router;
pub mod session;

pub use connection::{ConnRef, Outbound, PushFrame};
pub use error::ActorError;
pub use logs::LocalLogs;
pub use offline::{OfflineNotice, OfflinePush};
pub use peer_wire::{Appended, Draft};
pub use router::{LocalLogPage, Router, RouterBreakage, RouterStats};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
