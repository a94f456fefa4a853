//! The search index's to-do list: every message written on this node (appended as owner or
//! stored as a replica) also leaves its key in `convseq_unindexed`, in the same `WriteBatch`.
//! The indexer reads the list, indexes those messages and then deletes their keys, so that
//! a crash in between only indexes a message twice (which replaces it: indexing is
//! idempotent) and nothing written is ever missed. A rebuild puts every key back.
//!
//! The list is also kept in memory ([`Feed`]), in the order the messages were written, so
//! that the indexer does not scan the column family while it runs: the keys it deleted stay
//! in RocksDB as tombstones until a flush, and a scan from the start walked every one of
//! them, once per poll (a cost that grew with every message indexed). The column family is
//! read only after a start, a rebuild, or when more was queued than memory holds.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use chat_types::{ConversationId, Message, Seq};
use rocksdb::{IteratorMode, WriteBatch};

use crate::conversation_log::RocksConversationLog;
use crate::db::{Durability, Store, CF_INDEX_FEED, CF_MSG};
use crate::error::StorageError;
use crate::keys::{message_key, split_message_key};

/// Messages to index kept in memory at most; beyond, the column family is read again once
/// the indexer has caught up with memory.
const FEED_IN_MEMORY: usize = 65_536;

/// The in-memory copy of the to-do list.
#[derive(Debug)]
pub(crate) struct Feed {
    state: Mutex<FeedState>,
    capacity: usize,
}

#[derive(Debug)]
struct FeedState {
    queue: VecDeque<(ConversationId, Seq)>,
    /// The column family may hold keys the queue does not (the queue was full, a rebuild
    /// queued everything, or nothing was read since the start).
    spilled: bool,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::with_capacity(FEED_IN_MEMORY)
    }
}

impl Feed {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Feed {
            state: Mutex::new(FeedState {
                queue: VecDeque::new(),
                spilled: true,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records messages just written to the column family (called after the write, with the
    /// conversation's lock held, so that one conversation's messages queue in seq order).
    pub(crate) fn written(&self, written: impl IntoIterator<Item = (ConversationId, Seq)>) {
        let mut state = self.lock();
        for pos in written {
            if state.spilled || state.queue.len() >= self.capacity {
                // The column family has it; the next read of it finds it.
                state.spilled = true;
                return;
            }
            state.queue.push_back(pos);
        }
    }

    /// Marks the column family as holding keys the queue does not.
    fn spill(&self) {
        self.lock().spilled = true;
    }
}

impl RocksConversationLog {
    /// Up to `limit` messages written here that the index has not taken yet, oldest first
    /// (by key order after a start).
    pub fn unindexed(&self, limit: usize) -> Result<Vec<(ConversationId, Seq)>, StorageError> {
        let feed = self.feed();
        let mut state = feed.lock();
        if state.queue.is_empty() && state.spilled {
            // Memory has caught up: read what only the column family holds. A message written
            // meanwhile may come twice (from here and from `written`), and is indexed twice,
            // harmlessly.
            let store = self.store();
            for item in store
                .db()
                .iterator_cf(store.cf(CF_INDEX_FEED)?, IteratorMode::Start)
            {
                if state.queue.len() >= feed.capacity {
                    break;
                }
                let (k, _) = item?;
                let pos = split_message_key(&k)
                    .ok_or_else(|| StorageError::corrupt(CF_INDEX_FEED, &k))?;
                state.queue.push_back(pos);
            }
            state.spilled = state.queue.len() >= feed.capacity;
        }
        Ok(state.queue.iter().take(limit).copied().collect())
    }

    /// The index holds these now.
    pub fn mark_indexed(&self, done: &[(ConversationId, Seq)]) -> Result<(), StorageError> {
        let store = self.store();
        let mut batch = WriteBatch::default();
        for (conv, seq) in done {
            batch.delete_cf(store.cf(CF_INDEX_FEED)?, message_key(conv, *seq));
        }
        store
            .db()
            .write_opt(batch, &Store::write_opts(Durability::Wal))?;
        // What `unindexed` returned is at the front of the queue.
        let done: HashSet<&(ConversationId, Seq)> = done.iter().collect();
        let mut state = self.feed().lock();
        while state.queue.front().is_some_and(|p| done.contains(p)) {
            state.queue.pop_front();
        }
        Ok(())
    }

    /// Puts every message held here back on the list (for a rebuilt index). Returns how many.
    pub fn reindex_all(&self) -> Result<u64, StorageError> {
        let store = self.store();
        let mut count = 0u64;
        let mut batch = WriteBatch::default();
        for item in store
            .db()
            .iterator_cf(store.cf(CF_MSG)?, IteratorMode::Start)
        {
            let (k, _) = item?;
            batch.put_cf(store.cf(CF_INDEX_FEED)?, &k, []);
            count += 1;
            if batch.len() >= 10_000 {
                let full = std::mem::take(&mut batch);
                store
                    .db()
                    .write_opt(full, &Store::write_opts(Durability::Wal))?;
            }
        }
        store
            .db()
            .write_opt(batch, &Store::write_opts(Durability::Wal))?;
        self.feed().spill();
        Ok(count)
    }

    /// One message held here, if it is.
    pub fn message(
        &self,
        conv: &ConversationId,
        seq: Seq,
    ) -> Result<Option<Message>, StorageError> {
        let store = self.store();
        let key = message_key(conv, seq);
        match store.db().get_pinned_cf(store.cf(CF_MSG)?, key)? {
            Some(v) => Ok(Some(Self::decode_written(&key, &v)?.message)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_types::{ClientMsgId, RingEpoch, UserId};

    use crate::conversation_log::{AppendRequest, ConversationLog, Written};
    use crate::db::Store;

    use super::*;

    fn append(log: &RocksConversationLog, conv: ConversationId, cmid: &str) -> Message {
        log.append(AppendRequest {
            conversation: conv,
            sender: UserId(1),
            client_msg_id: ClientMsgId::new(cmid).expect("valid"),
            body: format!("body {cmid}"),
            ts_ms: 7,
            refers: None,
            attachments: Vec::new(),
            epoch: RingEpoch(1),
        })
        .expect("append")
        .message
    }

    #[test]
    fn appends_and_replicated_writes_wait_for_the_index_until_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            RocksConversationLog::new(Store::open(dir.path()).expect("open"), Durability::Wal);
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        let m1 = append(&log, a, "x1");
        append(&log, a, "x2");
        // A replica's copy of another conversation.
        let mut copy = m1.clone();
        copy.conversation = b;
        log.apply_replicated(
            RingEpoch(1),
            &[Written {
                message: copy,
                epoch: RingEpoch(1),
            }],
        )
        .expect("replicate");
        // A retried append writes nothing, so it adds nothing to do.
        append(&log, a, "x1");

        let todo = log.unindexed(10).expect("feed");
        assert_eq!(todo.len(), 3);
        assert!(
            todo.contains(&(a, Seq(1)))
                && todo.contains(&(a, Seq(2)))
                && todo.contains(&(b, Seq(1)))
        );
        assert_eq!(log.unindexed(2).expect("feed").len(), 2);
        assert_eq!(
            log.message(&a, Seq(2)).expect("read").map(|m| m.body),
            Some("body x2".to_owned())
        );
        assert_eq!(log.message(&a, Seq(9)).expect("read"), None);

        log.mark_indexed(&todo[..2]).expect("mark");
        assert_eq!(log.unindexed(10).expect("feed"), todo[2..].to_vec());
        log.mark_indexed(&todo[2..]).expect("mark");
        assert!(log.unindexed(10).expect("feed").is_empty());

        // A rebuild puts everything back; the list survives a reopen.
        assert_eq!(log.reindex_all().expect("reindex"), 3);
        drop(log);
        let log =
            RocksConversationLog::new(Store::open(dir.path()).expect("reopen"), Durability::Wal);
        assert_eq!(log.unindexed(10).expect("feed").len(), 3);
    }

    #[test]
    fn the_list_comes_from_memory_in_written_order_and_from_disk_when_memory_was_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            RocksConversationLog::new(Store::open(dir.path()).expect("open"), Durability::Wal)
                .with_feed_capacity(2);
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        let (low, high) = if message_key(&a, Seq(1)) < message_key(&b, Seq(1)) {
            (a, b)
        } else {
            (b, a)
        };
        for i in 0..5 {
            append(&log, low, &format!("l{i}"));
        }
        // Five queued, two fit in memory: the rest is read from the column family, two at
        // a time, and nothing is missed or repeated.
        let mut seen = Vec::new();
        loop {
            let todo = log.unindexed(10).expect("feed");
            if todo.is_empty() {
                break;
            }
            assert!(todo.len() <= 2);
            log.mark_indexed(&todo).expect("mark");
            seen.extend(todo);
        }
        assert_eq!(seen, (1..=5).map(|s| (low, Seq(s))).collect::<Vec<_>>());
        // Caught up: new messages queue in memory, in the order they were written, which is
        // not key order here.
        append(&log, high, "h1");
        append(&log, low, "l5");
        let todo = log.unindexed(10).expect("feed");
        assert_eq!(todo, vec![(high, Seq(1)), (low, Seq(6))]);
        log.mark_indexed(&todo[..1]).expect("mark");
        assert_eq!(log.unindexed(10).expect("feed"), vec![(low, Seq(6))]);
        // A fresh instance finds what is left on disk.
        drop(log);
        let log =
            RocksConversationLog::new(Store::open(dir.path()).expect("reopen"), Durability::Wal);
        assert_eq!(log.unindexed(10).expect("feed"), vec![(low, Seq(6))]);
    }
}
