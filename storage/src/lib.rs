//! chat-storage: everything this node keeps on disk, in one embedded RocksDB.
//!
//! Owns the column families and their key codecs (fixed-width big-endian keys, values that
//! start with a format version), the conversation logs (messages and client-message-id dedup,
//! written in one `WriteBatch` per append), the users' event streams, the list of messages the
//! search index has not taken yet (`index_feed`), and the raw key-value space that the
//! cluster crate builds its Raft log and state machine on.
//!
//! This is the only crate that knows RocksDB. It must not depend on the cluster, actor or
//! node crates, on any async runtime, or on any networking: callers that live on an async
//! runtime run its blocking calls where blocking is allowed.

pub mod conversation_log;
pub mod db;
pub mod error;
mod fence;
mod index_feed;
pub mod keys;
pub mod raft_kv;
pub mod user_events;

pub use conversation_log::{
    AppendOutcome, AppendRequest, Breakage, ConversationLog, RocksConversationLog, Written,
};
pub use db::{Durability, Store};
pub use error::StorageError;
pub use user_events::{RocksUserEventLog, UserEventLog, WrittenEvent};
