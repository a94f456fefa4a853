//! The search index's to-do list: which messages held on this node (appended as owner or
//! stored as a replica) the index has not taken yet.
//!
//! Most of it is a watermark per conversation (`conv_indexedseq`): every message written in
//! seq order up to it is in the index. A message written beyond every seq its conversation
//! had (every append, and replication in order) needs no record of its own: it is above the
//! watermark until the indexer has taken it and raised the watermark past it. A message
//! written below a seq already there (a replica filling a gap, or a newer owner's message
//! replacing an old owner's) could sit below the watermark unindexed, so it leaves its key in
//! `convseq_unindexed`, in the same `WriteBatch`, and the indexer deletes the key once it has
//! taken it. A crash in between only indexes messages twice (which replaces them: indexing is
//! idempotent), and nothing written is ever missed. A rebuild drops the watermarks.
//!
//! The list is also kept in memory ([`Feed`]), in the order the messages were written, so that
//! the indexer does not scan RocksDB while it runs. RocksDB is read only after a start, a
//! rebuild, or when more was queued than memory holds: the listed keys, then for each
//! conversation the seqs between its watermark and its last message.
//!
//! Before the watermarks, every message left a key in `convseq_unindexed` (a put, and a
//! delete once indexed: two of the ten keys a direct message wrote). [`migrate`] brings such a
//! database over when it is opened: each conversation's watermark starts at its last message,
//! and the keys still listed stay listed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use chat_types::{ConversationId, Message, Seq};
use rocksdb::{IteratorMode, WriteBatch};

use crate::conversation_log::{each_conversation_head, RocksConversationLog};
use crate::db::{Durability, Store, CF_INDEXED, CF_INDEX_FEED, CF_LOCAL, CF_MSG};
use crate::error::StorageError;
use crate::keys::{decode_u64_v1, encode_u64_v1, message_key, split_message_key, CONV_LEN};

/// Messages to index kept in memory at most; beyond, RocksDB is read again once the indexer
/// has caught up with memory.
const FEED_IN_MEMORY: usize = 65_536;

/// The `localname_value` entry that says the watermarks are in use (see [`migrate`]).
const WATERMARKS_IN_USE: &str = "index_watermarks";

/// The in-memory copy of the to-do list.
#[derive(Debug)]
pub(crate) struct Feed {
    state: Mutex<FeedState>,
    capacity: usize,
}

#[derive(Debug)]
struct FeedState {
    queue: VecDeque<(ConversationId, Seq)>,
    /// The queued messages that have a key of their own in `convseq_unindexed`.
    listed: HashSet<(ConversationId, Seq)>,
    /// A call of `unindexed` is reading RocksDB: the queue holds only what was written since.
    refilling: bool,
    /// Rebuilds so far: a read of RocksDB that a rebuild overtook is thrown away.
    rebuilds: u64,
    /// RocksDB may hold to-dos the queue does not (the queue was full, a rebuild dropped the
    /// watermarks, or nothing was read since the start).
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
                listed: HashSet::new(),
                refilling: false,
                rebuilds: 0,
                spilled: true,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records messages just written (called after the write, with the conversation's lock
    /// held, so that one conversation's messages queue in the order written); `listed` says
    /// the write left the message's key in `convseq_unindexed`.
    pub(crate) fn written(&self, written: impl IntoIterator<Item = ToDo>) {
        let mut state = self.lock();
        for todo in written {
            if state.spilled || state.queue.len() >= self.capacity {
                // RocksDB has it (above the watermark, or listed); the next read finds it.
                state.spilled = true;
                return;
            }
            state.push(todo);
        }
    }
}

/// A message to index, and whether its key is in `convseq_unindexed`.
type ToDo = (ConversationId, Seq, bool);

impl FeedState {
    fn push(&mut self, (conv, seq, listed): ToDo) {
        self.queue.push_back((conv, seq));
        if listed {
            self.listed.insert((conv, seq));
        }
    }
}

/// The watermark of `conv` (0 when none).
fn watermark(store: &Store, conv: &ConversationId) -> Result<Seq, StorageError> {
    let key = conv.to_key();
    match store.db().get_pinned_cf(store.cf(CF_INDEXED)?, key)? {
        Some(v) => Ok(Seq(decode_u64_v1(CF_INDEXED, &key, &v)?)),
        None => Ok(Seq(0)),
    }
}

/// Brings a database written before the watermarks over (see the module's doc): each
/// conversation's watermark starts at its last message. Runs when the store is opened,
/// before anything is written; does nothing the second time.
pub(crate) fn migrate(store: &Store) -> Result<(), StorageError> {
    if store.local_get(WATERMARKS_IN_USE)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    let cf = store.cf(CF_INDEXED)?;
    each_conversation_head(store, |conv, head| {
        batch.put_cf(cf, conv.to_key(), encode_u64_v1(head.0));
        Ok(true)
    })?;
    batch.put_cf(store.cf(CF_LOCAL)?, WATERMARKS_IN_USE.as_bytes(), [1u8]);
    store
        .db()
        .write_opt(batch, &Store::write_opts(Durability::Fsync))?;
    Ok(())
}

impl RocksConversationLog {
    /// Up to `limit` messages written here that the index has not taken yet, oldest first
    /// (after a start: the listed ones, then by conversation). Empty while another call reads
    /// RocksDB.
    pub fn unindexed(&self, limit: usize) -> Result<Vec<(ConversationId, Seq)>, StorageError> {
        let feed = self.feed();
        let rebuilds = {
            let mut state = feed.lock();
            if state.refilling {
                return Ok(Vec::new());
            }
            if !(state.queue.is_empty() && state.spilled) {
                return Ok(state.queue.iter().take(limit).copied().collect());
            }
            // Memory has caught up: read what only RocksDB holds, without holding the lock
            // (one seek per conversation; writes must not wait for that). What is written
            // meanwhile queues in memory and goes after what is read (it may then come twice,
            // and is indexed twice, harmlessly).
            state.refilling = true;
            state.spilled = false;
            state.rebuilds
        };
        let read = self.read_todo(feed.capacity);
        let mut state = feed.lock();
        let state = &mut *state;
        state.refilling = false;
        if state.rebuilds != rebuilds {
            // A rebuild dropped the watermarks meanwhile: what was read is stale, and the
            // rebuild left the queue empty and marked for a read.
            return Ok(Vec::new());
        }
        let meanwhile = std::mem::take(&mut state.queue);
        match read {
            Ok((todo, complete)) if complete => {
                todo.into_iter().for_each(|t| state.push(t));
                state.queue.extend(meanwhile);
            }
            cut => {
                // What was queued meanwhile cannot go after a list that stops short (the
                // indexer would raise a watermark past what was left out); it is in RocksDB
                // and comes with the next read.
                state.listed.clear();
                state.spilled = true;
                let (todo, _) = cut?;
                todo.into_iter().for_each(|t| state.push(t));
            }
        }
        Ok(state.queue.iter().take(limit).copied().collect())
    }

    /// Up to `capacity` to-dos as RocksDB holds them: the listed messages, then each
    /// conversation's seqs above its watermark. Says whether that is all of them.
    fn read_todo(&self, capacity: usize) -> Result<(Vec<ToDo>, bool), StorageError> {
        let store = self.store();
        let mut todo = Vec::new();
        for item in store
            .db()
            .iterator_cf(store.cf(CF_INDEX_FEED)?, IteratorMode::Start)
        {
            if todo.len() >= capacity {
                return Ok((todo, false));
            }
            let (k, _) = item?;
            let (conv, seq) =
                split_message_key(&k).ok_or_else(|| StorageError::corrupt(CF_INDEX_FEED, &k))?;
            todo.push((conv, seq, true));
        }
        let mut complete = true;
        each_conversation_head(store, |conv, head| {
            let room = capacity.saturating_sub(todo.len()) as u64;
            let from = watermark(store, &conv)?.0;
            let fits = from.saturating_add(room);
            complete = head.0 <= fits;
            todo.extend((from + 1..=head.0.min(fits)).map(|s| (conv, Seq(s), false)));
            Ok(complete)
        })?;
        Ok((todo, complete))
    }

    /// The index holds these now (a list [`RocksConversationLog::unindexed`] returned).
    pub fn mark_indexed(&self, done: &[(ConversationId, Seq)]) -> Result<(), StorageError> {
        let store = self.store();
        let done: HashSet<&(ConversationId, Seq)> = done.iter().collect();
        // The lock is held through the write: what is taken off the queue is what the
        // watermarks and deletions below cover, and a rebuild cannot come in between.
        let mut state = self.feed().lock();
        let mut taken = 0;
        let mut marks: HashMap<ConversationId, Seq> = HashMap::new();
        let mut batch = WriteBatch::default();
        // What `unindexed` returned is at the front of the queue (unless a rebuild emptied
        // it meanwhile: then nothing is taken and no watermark rises).
        while let Some(pos) = state.queue.get(taken).filter(|p| done.contains(p)) {
            let (conv, seq) = *pos;
            let mark = marks.entry(conv).or_insert(seq);
            *mark = (*mark).max(seq);
            if state.listed.remove(&(conv, seq)) {
                batch.delete_cf(store.cf(CF_INDEX_FEED)?, message_key(&conv, seq));
            }
            taken += 1;
        }
        for (conv, seq) in marks {
            // Every seq of `conv` written in order up to `seq` was queued before it, so it was
            // taken in this batch or an earlier one; a listed one may be below the watermark.
            if seq > watermark(store, &conv)? {
                batch.put_cf(store.cf(CF_INDEXED)?, conv.to_key(), encode_u64_v1(seq.0));
            }
        }
        store
            .db()
            .write_opt(batch, &Store::write_opts(Durability::Wal))?;
        state.queue.drain(..taken);
        Ok(())
    }

    /// Puts every message held here back on the list (for a rebuilt index): drops every
    /// watermark. Returns how many messages are held.
    pub fn reindex_all(&self) -> Result<u64, StorageError> {
        let store = self.store();
        let mut state = self.feed().lock();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(store.cf(CF_INDEXED)?, Vec::new(), vec![0xff; CONV_LEN + 1]);
        store
            .db()
            .write_opt(batch, &Store::write_opts(Durability::Wal))?;
        // What memory held is read again, in order, from RocksDB.
        state.rebuilds += 1;
        state.queue.clear();
        state.listed.clear();
        state.spilled = true;
        drop(state);
        let mut count = 0u64;
        for item in store
            .db()
            .iterator_cf(store.cf(CF_MSG)?, IteratorMode::Start)
        {
            item?;
            count += 1;
        }
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

    use crate::conversation_log::test_support::{must_open, req};
    use crate::conversation_log::{ConversationLog, Written};
    use crate::db::Store;

    use super::*;

    fn append(log: &RocksConversationLog, conv: ConversationId, cmid: &str) -> Message {
        log.append(req(conv, 1, cmid, &format!("body {cmid}")))
            .expect("append")
            .message
    }

    #[test]
    fn appends_and_replicated_writes_wait_for_the_index_until_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path());
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
        let log = must_open(dir.path());
        assert_eq!(log.unindexed(10).expect("feed").len(), 3);
    }

    #[test]
    fn the_list_comes_from_memory_in_written_order_and_from_disk_when_memory_was_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path()).with_feed_capacity(2);
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
        let log = must_open(dir.path());
        assert_eq!(log.unindexed(10).expect("feed"), vec![(low, Seq(6))]);
    }

    fn replicate(log: &RocksConversationLog, m: &Message, seq: u64, epoch: u64) {
        let mut copy = m.clone();
        copy.seq = Seq(seq);
        copy.client_msg_id = ClientMsgId::new(format!("r{seq}e{epoch}")).expect("valid");
        log.apply_replicated(
            RingEpoch(epoch),
            &[Written {
                message: copy,
                epoch: RingEpoch(epoch),
            }],
        )
        .expect("replicate");
    }

    fn drain(log: &RocksConversationLog) -> Vec<(ConversationId, Seq)> {
        let todo = log.unindexed(100).expect("feed");
        log.mark_indexed(&todo).expect("mark");
        todo
    }

    #[test]
    fn a_message_written_below_the_head_is_listed_and_survives_a_restart_above_the_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path());
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        // Caught up with RocksDB (nothing there): from now on, memory has the list.
        assert!(log.unindexed(10).expect("feed").is_empty());
        let m = append(&log, a, "x1");
        // A replica of b gets 1, 2 and 4 in order (3 is still on its way) and indexes them:
        // the watermark passes 3.
        for seq in [1, 2, 4] {
            replicate(
                &log,
                &Message {
                    conversation: b,
                    ..m.clone()
                },
                seq,
                1,
            );
        }
        assert_eq!(
            drain(&log),
            vec![(a, Seq(1)), (b, Seq(1)), (b, Seq(2)), (b, Seq(4))]
        );
        // 3 arrives, and a newer owner's message replaces the old owner's 4; the node stops
        // before indexing either. Both are found after the restart, the watermark
        // notwithstanding, and once indexed they are gone from the list for good.
        replicate(
            &log,
            &Message {
                conversation: b,
                ..m.clone()
            },
            3,
            1,
        );
        replicate(
            &log,
            &Message {
                conversation: b,
                ..m.clone()
            },
            4,
            2,
        );
        drop(log);
        let log = must_open(dir.path());
        assert_eq!(
            log.unindexed(10).expect("feed"),
            vec![(b, Seq(3)), (b, Seq(4))]
        );
        assert_eq!(drain(&log).len(), 2);
        drop(log);
        let log = must_open(dir.path());
        assert!(log.unindexed(10).expect("feed").is_empty());
        // In order again: no key of its own, found above the watermark after a restart.
        replicate(
            &log,
            &Message {
                conversation: b,
                ..m.clone()
            },
            5,
            2,
        );
        append(&log, a, "x2");
        drop(log);
        let log = must_open(dir.path());
        assert_eq!(
            log.unindexed(10).expect("feed"),
            vec![(a, Seq(2)), (b, Seq(5))]
        );
    }

    #[test]
    fn a_rebuild_during_a_batch_keeps_that_batch_from_raising_the_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path());
        let a = ConversationId::direct(UserId(1), UserId(2));
        for i in 1..=3 {
            append(&log, a, &format!("x{i}"));
        }
        assert_eq!(drain(&log).len(), 3);
        append(&log, a, "x4");
        let in_flight = log.unindexed(10).expect("feed");
        assert_eq!(in_flight, vec![(a, Seq(4))]);
        assert_eq!(log.reindex_all().expect("rebuild"), 4);
        log.mark_indexed(&in_flight).expect("mark");
        let all: Vec<_> = (1..=4).map(|s| (a, Seq(s))).collect();
        assert_eq!(log.unindexed(10).expect("feed"), all);
        drop(log);
        assert_eq!(must_open(dir.path()).unindexed(10).expect("feed"), all);
    }

    #[test]
    fn a_database_from_before_the_watermarks_keeps_its_list_and_nothing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        {
            let store = Store::open(dir.path()).expect("open");
            let log = RocksConversationLog::new(store.clone(), Durability::Wal);
            for i in 1..=3 {
                append(&log, a, &format!("a{i}"));
            }
            for i in 1..=2 {
                append(&log, b, &format!("b{i}"));
            }
            // The old layout: no watermarks; a key per message not indexed yet (a's third and
            // both of b's).
            let db = store.db();
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                store.cf(CF_INDEXED).expect("cf"),
                Vec::new(),
                vec![0xff; CONV_LEN + 1],
            );
            batch.delete_cf(
                store.cf(CF_LOCAL).expect("cf"),
                WATERMARKS_IN_USE.as_bytes(),
            );
            for (conv, seq) in [(a, 3), (b, 1), (b, 2)] {
                batch.put_cf(
                    store.cf(CF_INDEX_FEED).expect("cf"),
                    message_key(&conv, Seq(seq)),
                    [],
                );
            }
            db.write(batch).expect("write the old layout");
        }
        let log = must_open(dir.path());
        let mut listed = log.unindexed(10).expect("feed");
        listed.sort_by_key(|(c, s)| message_key(c, *s));
        let mut expected = vec![(a, Seq(3)), (b, Seq(1)), (b, Seq(2))];
        expected.sort_by_key(|(c, s)| message_key(c, *s));
        assert_eq!(listed, expected);
        drain(&log);
        append(&log, b, "b3");
        assert_eq!(drain(&log), vec![(b, Seq(3))]);
        drop(log);
        assert!(must_open(dir.path())
            .unindexed(10)
            .expect("feed")
            .is_empty());
    }
}
