//! chat-search: the per-node full-text index of the conversation messages this node holds.
//!
//! This crate owns:
//! - the message index ([`MessageIndex`], tantivy on disk): which documents exist, who may read
//!   them, the checkpoint up to which the node's logs have been applied, and searching it;
//! - the one tokenizer used for indexing and for queries ([`ChatTokenizer`], registered as
//!   `"chat"`): lowercased, ASCII-folded words for alphabetic scripts, overlapping bigrams for
//!   CJK text;
//! - the order of result pages (newest first: `ts_ms` desc, conversation asc, seq desc), their
//!   cursors ([`SearchCursor`]) and the merge of pages from several nodes ([`merge_pages`]);
//! - ranking of people and of conversation/group names from in-memory candidates
//!   ([`rank_people`], [`rank_names`]).
//!
//! It must NOT depend on RocksDB/storage, the cluster, actors, the node, networking or any async
//! runtime. Callers feed it [`IndexOp`]s taken from their logs, decide who may read what (the
//! group list in a [`SearchQuery`]), and run its blocking calls (`apply`, `search`, `clear`) off
//! the async runtime (e.g. `spawn_blocking`).
//!
//! Nothing here logs user content (query text, message bodies, names), and no query text or
//! cursor from a client can make it panic: the query text never reaches tantivy's query parser.

mod cursor;
mod distance;
mod error;
mod fold;
mod hit;
mod index;
mod merge;
mod people;
mod query;
mod schema;
mod snippet;
mod tokenizer;

pub use cursor::SearchCursor;
pub use error::SearchError;
pub use hit::{SearchHit, SearchPage};
pub use index::{IndexOp, IndexedMessage, MessageIndex};
pub use merge::{merge_filtered, merge_pages};
pub use people::{rank_names, rank_people, Person};
pub use query::{SearchQuery, MAX_LIMIT};
pub use tokenizer::{chat_analyzer, tokens, ChatTokenizer, TOKENIZER_NAME};
