//! The two kinds of replicated log a node holds, behind one face so that replication,
//! sealing and catch-up are written once: conversation logs (numbered by `Seq`) and user
//! event streams (numbered by `EventSeq`).

use std::sync::Arc;

use chat_cluster::ring::{conversation_key, user_key, Ring};
use chat_storage::{ConversationLog, StorageError, UserEventLog, Written, WrittenEvent};
use chat_types::{ConversationId, EventSeq, NodeId, RingEpoch, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::error::ActorError;

/// Copies of each log, the owner included.
pub const REPLICATION_FACTOR: usize = 3;

/// Which log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogRef {
    Conversation(ConversationId),
    User(UserId),
}

impl std::fmt::Display for LogRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogRef::Conversation(c) => write!(f, "{c}"),
            LogRef::User(u) => write!(f, "user:{u}"),
        }
    }
}

impl LogRef {
    /// The owner under `ring`: the first of the replica set.
    pub fn owner(&self, ring: &Ring) -> Option<NodeId> {
        match self {
            LogRef::Conversation(c) => ring.owner_of_conversation(c),
            LogRef::User(u) => ring.home_of_user(*u),
        }
    }

    /// The replica set under `ring`, owner first.
    pub fn replicas(&self, ring: &Ring) -> Vec<NodeId> {
        match self {
            LogRef::Conversation(c) => ring.successors(&conversation_key(c), REPLICATION_FACTOR),
            LogRef::User(u) => ring.successors(&user_key(*u), REPLICATION_FACTOR),
        }
    }
}

/// Consecutive entries of one log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entries {
    /// Messages with the epoch each was written under (the newer wins a diverged seq).
    Messages(Vec<Written>),
    /// Events with the epoch each was written under.
    Events(Vec<WrittenEvent>),
}

impl Entries {
    /// The position of the first entry.
    pub fn first(&self) -> Option<u64> {
        match self {
            Entries::Messages(m) => m.first().map(|w| w.message.seq.0),
            Entries::Events(e) => e.first().map(|w| w.event.event_seq.0),
        }
    }

    pub fn last(&self) -> Option<u64> {
        match self {
            Entries::Messages(m) => m.last().map(|w| w.message.seq.0),
            Entries::Events(e) => e.last().map(|w| w.event.event_seq.0),
        }
    }

    /// Keeps the entries before position `before`.
    pub fn before(self, before: u64) -> Entries {
        match self {
            Entries::Messages(m) => {
                Entries::Messages(m.into_iter().filter(|w| w.message.seq.0 < before).collect())
            }
            Entries::Events(e) => Entries::Events(
                e.into_iter()
                    .filter(|w| w.event.event_seq.0 < before)
                    .collect(),
            ),
        }
    }

    fn belongs_to(&self, log: &LogRef) -> bool {
        match (self, log) {
            (Entries::Messages(m), LogRef::Conversation(c)) => {
                m.iter().all(|w| w.message.conversation == *c)
            }
            (Entries::Events(_), LogRef::User(_)) => true,
            _ => false,
        }
    }
}

pub(crate) fn storage_error(e: StorageError) -> ActorError {
    match e {
        StorageError::StaleEpoch { fence, .. } => ActorError::StaleEpoch {
            fence: RingEpoch(fence),
        },
        other => {
            tracing::error!(error = %other, "log storage failure");
            ActorError::Storage
        }
    }
}

/// The node's local logs. Writes may fsync, so they run on the blocking pool.
#[derive(Clone)]
pub struct LocalLogs {
    pub conversations: Arc<dyn ConversationLog>,
    pub events: Arc<dyn UserEventLog>,
}

impl std::fmt::Debug for LocalLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLogs").finish_non_exhaustive()
    }
}

/// Runs a log write: on the blocking pool when it fsyncs (milliseconds), inline when it only
/// appends to the WAL (microseconds; a hop to another thread would cost more than the write).
pub(crate) async fn write<T: Send + 'static>(
    syncs: bool,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ActorError> {
    if syncs {
        blocking(f).await
    } else {
        f().map_err(storage_error)
    }
}

/// Runs a log operation on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ActorError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("log task failed: {e}"))))
        .map_err(storage_error)
}

impl LocalLogs {
    fn syncs(&self, log: LogRef) -> bool {
        match log {
            LogRef::Conversation(_) => self.conversations.syncs(),
            LogRef::User(_) => self.events.syncs(),
        }
    }

    pub fn head(&self, log: LogRef) -> Result<u64, ActorError> {
        match log {
            LogRef::Conversation(c) => self.conversations.head(&c).map(|s| s.0),
            LogRef::User(u) => self.events.head(u).map(|s| s.0),
        }
        .map_err(storage_error)
    }

    pub fn read_after(&self, log: LogRef, after: u64, limit: usize) -> Result<Entries, ActorError> {
        match log {
            LogRef::Conversation(c) => self
                .conversations
                .read_written_after(&c, Seq(after), limit)
                .map(Entries::Messages),
            LogRef::User(u) => self
                .events
                .read_written_after(u, EventSeq(after), limit)
                .map(Entries::Events),
        }
        .map_err(storage_error)
    }

    pub async fn apply(
        &self,
        log: LogRef,
        epoch: RingEpoch,
        entries: Entries,
    ) -> Result<u64, ActorError> {
        if !entries.belongs_to(&log) {
            return Err(ActorError::BadPayload(format!(
                "entries of another log than {log}"
            )));
        }
        let me = self.clone();
        let syncs = self.syncs(log);
        write(syncs, move || match (log, entries) {
            (LogRef::Conversation(_), Entries::Messages(m)) => {
                me.conversations.apply_replicated(epoch, &m).map(|s| s.0)
            }
            (LogRef::User(u), Entries::Events(e)) => {
                me.events.apply_replicated(u, epoch, &e).map(|s| s.0)
            }
            _ => Err(StorageError::Io("entries of another log".into())),
        })
        .await
    }

    /// The delivery watermark of a conversation log (event streams have none: 0).
    pub fn watermark(&self, log: LogRef) -> Result<u64, ActorError> {
        match log {
            LogRef::Conversation(c) => self
                .conversations
                .delivered(&c)
                .map(|s| s.0)
                .map_err(storage_error),
            LogRef::User(_) => Ok(0),
        }
    }

    pub fn raise_watermark(&self, log: LogRef, watermark: u64) -> Result<(), ActorError> {
        match log {
            LogRef::Conversation(c) if watermark > 0 => self
                .conversations
                .set_delivered(&c, Seq(watermark))
                .map_err(storage_error),
            _ => Ok(()),
        }
    }

    pub async fn seal(&self, log: LogRef, epoch: RingEpoch) -> Result<u64, ActorError> {
        let me = self.clone();
        let syncs = self.syncs(log);
        write(syncs, move || match log {
            LogRef::Conversation(c) => me.conversations.seal(&c, epoch).map(|s| s.0),
            LogRef::User(u) => me.events.seal(u, epoch).map(|s| s.0),
        })
        .await
    }
}
