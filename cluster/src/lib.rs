//! chat-cluster: how nodes form one cluster.
//!
//! Owns the consistent-hash ring and placement (`ring`), the replicated metadata
//! (`meta`: accounts, sessions, profiles, settings, contacts, requests and blocks) and its
//! Raft machinery on openraft (`raft`), the node's
//! handle on all of it (`metadata`: bootstrap, join, forwarded writes, the current ring), and
//! the node-to-node transport (`transport`): framed, versioned MessagePack over TCP with
//! request ids, size limits and one place for fault injection.
//!
//! This is the only crate that knows openraft or the peer wire. It must not depend on the
//! actor or node crates, on actix-web, or on RocksDB directly (it stores through
//! chat-storage).

pub mod error;
pub mod meta;
pub mod metadata;
pub mod raft;
pub mod ring;
pub mod transport;

pub use error::ClusterError;
pub use meta::{
    BlobRef, MediaCommand, MediaRecord, MetaCommand, MetaResponse, MetaState, NodeInfo, ThumbRecord,
};
pub use metadata::{ClusterSettings, Metadata, MAX_VOTERS};
pub use ring::Ring;
