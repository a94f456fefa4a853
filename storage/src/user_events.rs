//! Per-user event streams: every event a user must learn about, numbered 1, 2, 3, ... per
//! user. The event seq is the user's single resume cursor across all conversations.
//!
//! The user's session actor (on the user's home node) is the single writer; the stream is
//! replicated and fenced exactly like a conversation log. A message becomes at most one event
//! per user: the dedup record `user ++ conv ++ seq` makes a repeated delivery (a retry, a
//! new owner re-sending) return the first event instead of adding another.
//!
//! Each event also updates, in the same batch, the user's summary of the conversation it is
//! about (last message, read mark), so the conversation list with unread counts is a prefix
//! scan, on every replica alike.

use std::sync::Mutex;

use std::collections::HashMap;

use chat_types::{
    ConversationId, ConversationSummary, Event, EventSeq, RingEpoch, Seq, UserEvent, UserId,
};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::db::{Durability, Store, CF_CONV_SUMMARY, CF_EVENTS, CF_EVENT_DEDUP, CF_EVENT_HEAD};
use crate::error::StorageError;
use crate::fence;
use crate::keys::{decode_u64_v1, decode_versioned, encode_u64_v1, encode_versioned};

/// Version 1 stored the bare event; version 2 adds the writer's epoch.
const EVENT_FORMAT_V1: u8 = 1;
const EVENT_FORMAT: u8 = 2;

/// An event with the ring epoch of the home node that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenEvent {
    pub event: Event,
    pub epoch: RingEpoch,
}

#[derive(Serialize, Deserialize)]
struct StoredEventV2 {
    event: UserEvent,
    epoch: u64,
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<(UserEvent, RingEpoch), StorageError> {
    match value.first() {
        Some(&EVENT_FORMAT_V1) => Ok((
            decode_versioned(CF_EVENTS, EVENT_FORMAT_V1, key, value)?,
            RingEpoch(0),
        )),
        _ => {
            let r: StoredEventV2 = decode_versioned(CF_EVENTS, EVENT_FORMAT, key, value)?;
            Ok((r.event, RingEpoch(r.epoch)))
        }
    }
}
/// As in the conversation log: a stripe's lock is held through the write, so in fsync mode
/// the users of one stripe cannot share a sync.
const LOCK_STRIPES: usize = 1024;

/// The event streams of the users this node holds.
pub trait UserEventLog: Send + Sync {
    /// Whether writes wait for an fsync (then callers keep them off async worker threads).
    fn syncs(&self) -> bool;
    /// Appends `event` at `head + 1`, or returns the existing event for the same message.
    fn append(
        &self,
        user: UserId,
        epoch: RingEpoch,
        event: UserEvent,
    ) -> Result<(Event, bool), StorageError> {
        self.append_many(user, epoch, vec![event])?
            .pop()
            .ok_or_else(|| StorageError::Io("an append of one event returned none".into()))
    }
    /// Appends each event as [`UserEventLog::append`] does, in order, in one write: the new
    /// ones at consecutive seqs from `head + 1`. Each answer says whether the stream already
    /// held the event (then it is the stored one).
    fn append_many(
        &self,
        user: UserId,
        epoch: RingEpoch,
        events: Vec<UserEvent>,
    ) -> Result<Vec<(Event, bool)>, StorageError>;
    fn head(&self, user: UserId) -> Result<EventSeq, StorageError>;
    /// Up to `limit` events with seq > `after`, ascending.
    fn read_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError>;
    /// [`UserEventLog::read_after`] with each event's writer epoch, for replication.
    fn read_written_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<WrittenEvent>, StorageError>;
    /// Stores events assigned by the owner at their own seqs; present ones are skipped, but
    /// an event written under a newer epoch replaces a different one (an old home's
    /// unacknowledged write; see the conversation log). Returns the new head.
    fn apply_replicated(
        &self,
        user: UserId,
        epoch: RingEpoch,
        events: &[WrittenEvent],
    ) -> Result<EventSeq, StorageError>;
    /// Raises the fence to `epoch` (refusing an older one) and returns the head.
    fn seal(&self, user: UserId, epoch: RingEpoch) -> Result<EventSeq, StorageError>;
    /// The user's conversations, latest activity first.
    fn conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StorageError>;
    /// The user's read mark in one conversation (0 when none).
    fn read_mark(&self, user: UserId, conv: &ConversationId) -> Result<Seq, StorageError>;
    /// Records that a device of the user holds every event up to `seq` (the highest stays).
    fn ack(&self, user: UserId, seq: EventSeq) -> Result<EventSeq, StorageError>;
    /// The highest event seq a device of the user acknowledged (0 when none).
    fn acked(&self, user: UserId) -> Result<EventSeq, StorageError>;
}

/// `user ++ 'a'` in `user_eventhead`: the highest acknowledged event seq.
fn acked_key(user: UserId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&user.0.to_be_bytes());
    k[8] = b'a';
    k
}

const SUMMARY_FORMAT: u8 = 1;
const PREVIEW_CHARS: usize = 100;

/// What the summary of one conversation keeps for one user.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SummaryV1 {
    last_seq: u64,
    last_ts_ms: u64,
    last_sender: u64,
    preview: String,
    read_upto: u64,
}

fn summary_key(user: UserId, conv: &ConversationId) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + ConversationId::KEY_LEN);
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(&conv.to_key());
    k
}

/// How an event changes the summary of its conversation.
fn apply_to_summary(user: UserId, event: &UserEvent, summary: &mut SummaryV1) {
    match event {
        UserEvent::Message { message } => {
            if message.seq.0 >= summary.last_seq {
                summary.last_seq = message.seq.0;
                summary.last_ts_ms = message.ts_ms;
                summary.last_sender = message.sender.0;
                summary.preview = message.body.chars().take(PREVIEW_CHARS).collect();
            }
            if message.sender == user {
                summary.read_upto = summary.read_upto.max(message.seq.0);
            }
        }
        UserEvent::Read { seq, .. } => summary.read_upto = summary.read_upto.max(seq.0),
        UserEvent::Receipt { .. }
        | UserEvent::Contact { .. }
        | UserEvent::ProfileChanged { .. } => {}
    }
}

fn event_conversation(event: &UserEvent) -> Option<ConversationId> {
    match event {
        UserEvent::Message { message } => Some(message.conversation),
        UserEvent::Read { conversation, .. } | UserEvent::Receipt { conversation, .. } => {
            Some(*conversation)
        }
        UserEvent::Contact { .. } | UserEvent::ProfileChanged { .. } => None,
    }
}

fn event_key(user: UserId, seq: EventSeq) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

fn dedup_key(user: UserId, conv: &ConversationId, seq: chat_types::Seq) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + ConversationId::KEY_LEN + 8);
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(&conv.to_key());
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// The dedup key of an event: messages `user ++ conv ++ seq` (33 bytes); read marks
/// `user ++ conv ++ 'r' ++ seq` (34); receipts `user ++ conv ++ 'c' ++ reader ++ seq` (42).
/// The lengths keep the kinds apart.
fn event_dedup_key(user: UserId, event: &UserEvent) -> Option<Vec<u8>> {
    match event {
        UserEvent::Contact { .. } | UserEvent::ProfileChanged { .. } => None,
        UserEvent::Message { message } => Some(dedup_key(user, &message.conversation, message.seq)),
        UserEvent::Read { conversation, seq } => {
            let mut k = summary_key(user, conversation);
            k.push(b'r');
            k.extend_from_slice(&seq.0.to_be_bytes());
            Some(k)
        }
        UserEvent::Receipt {
            conversation,
            user: reader,
            seq,
        } => {
            let mut k = summary_key(user, conversation);
            k.push(b'c');
            k.extend_from_slice(&reader.0.to_be_bytes());
            k.extend_from_slice(&seq.0.to_be_bytes());
            Some(k)
        }
    }
}

/// A user's stream head and fence as stored, kept in memory once read: every append needs
/// both, and reading them from RocksDB each time was a third of an append's cost.
#[derive(Clone, Copy, Debug)]
struct Known {
    head: EventSeq,
    fence: RingEpoch,
}

/// The users of one lock stripe whose head and fence are known. Only changed with the
/// stripe held, right after the write that changed them succeeded.
type Stripe = HashMap<u64, Known>;

/// [`UserEventLog`] on the node's RocksDB.
pub struct RocksUserEventLog {
    store: Store,
    durability: Durability,
    stripes: Vec<Mutex<Stripe>>,
}

impl std::fmt::Debug for RocksUserEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksUserEventLog")
            .field("durability", &self.durability)
            .finish()
    }
}

impl RocksUserEventLog {
    pub fn new(store: Store, durability: Durability) -> Self {
        RocksUserEventLog {
            store,
            durability,
            stripes: (0..LOCK_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn lock(&self, user: UserId) -> std::sync::MutexGuard<'_, Stripe> {
        self.stripes[(user.0 % LOCK_STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The user's head and fence (read from RocksDB the first time), with its stripe held.
    fn known(&self, stripe: &mut Stripe, user: UserId) -> Result<Known, StorageError> {
        if let Some(k) = stripe.get(&user.0) {
            return Ok(*k);
        }
        let known = Known {
            head: self.stored_head(user)?,
            fence: fence::read(&self.store, &fence::user_fence_key(user))?,
        };
        stripe.insert(user.0, known);
        Ok(known)
    }

    fn stored_head(&self, user: UserId) -> Result<EventSeq, StorageError> {
        let key = user.0.to_be_bytes();
        match self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_EVENT_HEAD)?, key)?
        {
            Some(v) => Ok(EventSeq(decode_u64_v1(CF_EVENT_HEAD, &key, &v)?)),
            None => Ok(EventSeq(0)),
        }
    }

    /// Whether the stream already holds `event` (by its dedup key). A message beyond the
    /// highest seq its conversation's summary has seen cannot be there yet: the dedup record
    /// and the summary are written in one batch, so the lookup is skipped for it.
    fn holds(
        &self,
        user: UserId,
        event: &UserEvent,
        summary: Option<&SummaryV1>,
    ) -> Result<Option<EventSeq>, StorageError> {
        if let (UserEvent::Message { message }, Some(s)) = (event, summary) {
            if message.seq.0 > s.last_seq {
                return Ok(None);
            }
        }
        let Some(dk) = event_dedup_key(user, event) else {
            return Ok(None);
        };
        match self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_EVENT_DEDUP)?, &dk)?
        {
            Some(v) => Ok(Some(EventSeq(decode_u64_v1(CF_EVENT_DEDUP, &dk, &v)?))),
            None => Ok(None),
        }
    }

    fn get(&self, user: UserId, seq: EventSeq) -> Result<Event, StorageError> {
        let key = event_key(user, seq);
        let value = self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_EVENTS)?, key)?
            .ok_or_else(|| StorageError::corrupt(CF_EVENT_DEDUP, &key))?;
        Ok(Event {
            event_seq: seq,
            event: decode_event(&key, &value)?.0,
        })
    }

    /// Adds one event at `seq` to `batch`.
    fn summary(&self, user: UserId, conv: &ConversationId) -> Result<SummaryV1, StorageError> {
        let key = summary_key(user, conv);
        match self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_CONV_SUMMARY)?, &key)?
        {
            Some(v) => decode_versioned(CF_CONV_SUMMARY, SUMMARY_FORMAT, &key, &v),
            None => Ok(SummaryV1::default()),
        }
    }

    /// Adds the summaries changed by a batch of events to the batch.
    fn put_summaries(
        &self,
        batch: &mut WriteBatch,
        user: UserId,
        changed: HashMap<ConversationId, SummaryV1>,
    ) -> Result<(), StorageError> {
        for (conv, summary) in changed {
            batch.put_cf(
                self.store.cf(CF_CONV_SUMMARY)?,
                summary_key(user, &conv),
                encode_versioned(CF_CONV_SUMMARY, SUMMARY_FORMAT, &summary)?,
            );
        }
        Ok(())
    }

    /// Folds an event into the pending summaries of this batch.
    fn fold_summary(
        &self,
        changed: &mut HashMap<ConversationId, SummaryV1>,
        user: UserId,
        event: &UserEvent,
    ) -> Result<(), StorageError> {
        let Some(conv) = event_conversation(event) else {
            return Ok(());
        };
        let summary = match changed.entry(conv) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.summary(user, &conv)?),
        };
        apply_to_summary(user, event, summary);
        Ok(())
    }

    fn put_event(
        &self,
        batch: &mut WriteBatch,
        user: UserId,
        seq: EventSeq,
        event: &UserEvent,
        epoch: RingEpoch,
    ) -> Result<(), StorageError> {
        let record = StoredEventV2 {
            event: event.clone(),
            epoch: epoch.0,
        };
        batch.put_cf(
            self.store.cf(CF_EVENTS)?,
            event_key(user, seq),
            encode_versioned(CF_EVENTS, EVENT_FORMAT, &record)?,
        );
        if let Some(dk) = event_dedup_key(user, event) {
            batch.put_cf(self.store.cf(CF_EVENT_DEDUP)?, dk, encode_u64_v1(seq.0));
        }
        Ok(())
    }
}

impl UserEventLog for RocksUserEventLog {
    fn syncs(&self) -> bool {
        self.durability == Durability::Fsync
    }

    fn append_many(
        &self,
        user: UserId,
        epoch: RingEpoch,
        events: Vec<UserEvent>,
    ) -> Result<Vec<(Event, bool)>, StorageError> {
        let mut stripe = self.lock(user);
        let known = self.known(&mut stripe, user)?;
        fence::check(known.fence, epoch)?;
        // The summaries of the events' conversations as stored, folded event by event.
        let mut changed = HashMap::new();
        // Dedup keys written by this batch: not yet in RocksDB, so looked up here.
        let mut in_batch: HashMap<Vec<u8>, EventSeq> = HashMap::new();
        let mut batch = WriteBatch::default();
        let mut head = known.head;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let conv = event_conversation(&event);
            if let Some(c) = conv {
                if let std::collections::hash_map::Entry::Vacant(e) = changed.entry(c) {
                    e.insert(self.summary(user, &c)?);
                }
            }
            let dk = event_dedup_key(user, &event);
            let earlier = dk.as_ref().and_then(|k| in_batch.get(k)).copied();
            let held = match earlier {
                Some(seq) => Some(seq),
                None => self.holds(user, &event, conv.and_then(|c| changed.get(&c)))?,
            };
            if let Some(seq) = held {
                let stored = match earlier {
                    Some(_) => out
                        .iter()
                        .map(|(e, _): &(Event, bool)| e)
                        .find(|e| e.event_seq == seq)
                        .cloned()
                        .ok_or_else(|| StorageError::Io("a batch lost its own event".into()))?,
                    None => self.get(user, seq)?,
                };
                out.push((stored, true));
                continue;
            }
            head = head.next();
            self.put_event(&mut batch, user, head, &event, epoch)?;
            if let Some(summary) = conv.and_then(|c| changed.get_mut(&c)) {
                apply_to_summary(user, &event, summary);
            }
            if let Some(k) = dk {
                in_batch.insert(k, head);
            }
            out.push((
                Event {
                    event_seq: head,
                    event,
                },
                false,
            ));
        }
        if head == known.head {
            return Ok(out);
        }
        self.put_summaries(&mut batch, user, changed)?;
        batch.put_cf(
            self.store.cf(CF_EVENT_HEAD)?,
            user.0.to_be_bytes(),
            encode_u64_v1(head.0),
        );
        if epoch > known.fence {
            fence::put(&self.store, &mut batch, &fence::user_fence_key(user), epoch)?;
        }
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        stripe.insert(
            user.0,
            Known {
                head,
                fence: epoch.max(known.fence),
            },
        );
        Ok(out)
    }

    fn head(&self, user: UserId) -> Result<EventSeq, StorageError> {
        let mut stripe = self.lock(user);
        Ok(self.known(&mut stripe, user)?.head)
    }

    fn read_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        Ok(self
            .read_written_after(user, after, limit)?
            .into_iter()
            .map(|w| w.event)
            .collect())
    }

    fn read_written_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<WrittenEvent>, StorageError> {
        let mut out = Vec::new();
        let Some(start) = after.0.checked_add(1) else {
            return Ok(out);
        };
        if limit == 0 {
            return Ok(out);
        }
        let from = event_key(user, EventSeq(start));
        let iter = self.store.db().iterator_cf(
            self.store.cf(CF_EVENTS)?,
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if k.len() != 16 || k[..8] != user.0.to_be_bytes() {
                break;
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[8..]);
            let (event, epoch) = decode_event(&k, &v)?;
            out.push(WrittenEvent {
                event: Event {
                    event_seq: EventSeq(u64::from_be_bytes(seq)),
                    event,
                },
                epoch,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn apply_replicated(
        &self,
        user: UserId,
        epoch: RingEpoch,
        events: &[WrittenEvent],
    ) -> Result<EventSeq, StorageError> {
        let mut stripe = self.lock(user);
        let known = self.known(&mut stripe, user)?;
        fence::check(known.fence, epoch)?;
        let fkey = fence::user_fence_key(user);
        let mut head = known.head;
        let mut batch = WriteBatch::default();
        let mut changed = HashMap::new();
        for w in events {
            let e = &w.event;
            let key = event_key(user, e.event_seq);
            if let Some(existing) = self
                .store
                .db()
                .get_pinned_cf(self.store.cf(CF_EVENTS)?, key)?
            {
                let (old, old_epoch) = decode_event(&key, &existing)?;
                if old == e.event || old_epoch >= w.epoch {
                    continue;
                }
                // An old home's unacknowledged event gives way to the newer home's.
                if let Some(dk) = event_dedup_key(user, &old) {
                    batch.delete_cf(self.store.cf(CF_EVENT_DEDUP)?, dk);
                }
            }
            self.put_event(&mut batch, user, e.event_seq, &e.event, w.epoch)?;
            self.fold_summary(&mut changed, user, &e.event)?;
            head = head.max(e.event_seq);
        }
        self.put_summaries(&mut batch, user, changed)?;
        batch.put_cf(
            self.store.cf(CF_EVENT_HEAD)?,
            user.0.to_be_bytes(),
            encode_u64_v1(head.0),
        );
        fence::put(&self.store, &mut batch, &fkey, epoch)?;
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        stripe.insert(
            user.0,
            Known {
                head,
                fence: epoch.max(known.fence),
            },
        );
        Ok(head)
    }

    fn seal(&self, user: UserId, epoch: RingEpoch) -> Result<EventSeq, StorageError> {
        let mut stripe = self.lock(user);
        let known = self.known(&mut stripe, user)?;
        fence::check(known.fence, epoch)?;
        let mut batch = WriteBatch::default();
        fence::put(&self.store, &mut batch, &fence::user_fence_key(user), epoch)?;
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        stripe.insert(
            user.0,
            Known {
                head: known.head,
                fence: epoch,
            },
        );
        Ok(known.head)
    }

    fn conversations(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StorageError> {
        let prefix = user.0.to_be_bytes();
        let iter = self.store.db().iterator_cf(
            self.store.cf(CF_CONV_SUMMARY)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if k.len() != 8 + ConversationId::KEY_LEN || k[..8] != prefix {
                break;
            }
            let conversation = ConversationId::from_key(&k[8..])
                .ok_or_else(|| StorageError::corrupt(CF_CONV_SUMMARY, &k))?;
            let s: SummaryV1 = decode_versioned(CF_CONV_SUMMARY, SUMMARY_FORMAT, &k, &v)?;
            if s.last_seq == 0 {
                continue;
            }
            out.push(ConversationSummary {
                conversation,
                last_seq: Seq(s.last_seq),
                last_ts_ms: s.last_ts_ms,
                last_sender: UserId(s.last_sender),
                preview: s.preview,
                read_upto: Seq(s.read_upto),
                unread: s.last_seq.saturating_sub(s.read_upto),
            });
        }
        out.sort_by(|a, b| {
            b.last_ts_ms
                .cmp(&a.last_ts_ms)
                .then(b.conversation.cmp(&a.conversation))
        });
        out.truncate(limit);
        Ok(out)
    }

    fn ack(&self, user: UserId, seq: EventSeq) -> Result<EventSeq, StorageError> {
        let mut stripe = self.lock(user);
        let seq = seq.min(self.known(&mut stripe, user)?.head);
        let current = self.acked(user)?;
        if seq <= current {
            return Ok(current);
        }
        // Losing this write only makes the mark lag: no fsync.
        self.store.db().put_cf_opt(
            self.store.cf(CF_EVENT_HEAD)?,
            acked_key(user),
            encode_u64_v1(seq.0),
            &Store::write_opts(Durability::Wal),
        )?;
        Ok(seq)
    }

    fn acked(&self, user: UserId) -> Result<EventSeq, StorageError> {
        let key = acked_key(user);
        match self
            .store
            .db()
            .get_pinned_cf(self.store.cf(CF_EVENT_HEAD)?, key)?
        {
            Some(v) => Ok(EventSeq(decode_u64_v1(CF_EVENT_HEAD, &key, &v)?)),
            None => Ok(EventSeq(0)),
        }
    }

    fn read_mark(&self, user: UserId, conv: &ConversationId) -> Result<Seq, StorageError> {
        Ok(Seq(self.summary(user, conv)?.read_upto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_types::{ClientMsgId, Message, Seq};

    fn msg(conv: ConversationId, seq: u64) -> UserEvent {
        UserEvent::Message {
            message: Message {
                conversation: conv,
                seq: Seq(seq),
                sender: UserId(1),
                client_msg_id: ClientMsgId::new(format!("c{seq}")).expect("id"),
                body: format!("b{seq}"),
                ts_ms: 7,
                refers: None,
                attachments: Vec::new(),
            },
        }
    }

    fn must_open(dir: &std::path::Path) -> RocksUserEventLog {
        RocksUserEventLog::new(Store::open(dir).expect("open"), Durability::Wal)
    }

    #[test]
    fn each_message_is_one_event_per_user_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path());
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        let e1 = log
            .append(UserId(1), RingEpoch(1), msg(a, 1))
            .expect("append");
        let e2 = log
            .append(UserId(1), RingEpoch(1), msg(b, 1))
            .expect("append");
        let again = log
            .append(UserId(1), RingEpoch(1), msg(a, 1))
            .expect("append");
        assert_eq!((e1.0.event_seq, e1.1), (EventSeq(1), false));
        assert_eq!((e2.0.event_seq, e2.1), (EventSeq(2), false));
        assert_eq!(
            again,
            (e1.0.clone(), true),
            "a repeated delivery is the same event"
        );
        let other = log
            .append(UserId(2), RingEpoch(1), msg(a, 1))
            .expect("append");
        assert_eq!(other.0.event_seq, EventSeq(1), "streams are per user");
        let page = log.read_after(UserId(1), EventSeq(0), 10).expect("read");
        assert_eq!(page, vec![e1.0, e2.0.clone()]);
        assert_eq!(
            log.read_after(UserId(1), EventSeq(1), 10).expect("read"),
            vec![e2.0]
        );
        assert_eq!(log.head(UserId(1)).expect("head"), EventSeq(2));
        assert_eq!(log.head(UserId(9)).expect("head"), EventSeq(0));
    }

    #[test]
    fn a_batch_appends_new_events_in_one_run_and_finds_the_ones_held_before_or_within_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ConversationId::direct(UserId(1), UserId(2));
        let d = ConversationId::direct(UserId(2), UserId(3));
        let me = UserId(2);
        {
            let log = must_open(dir.path());
            let (first, _) = log.append(me, RingEpoch(1), msg(c, 1)).expect("append");
            let out = log
                .append_many(
                    me,
                    RingEpoch(1),
                    vec![msg(c, 2), msg(c, 1), msg(d, 1), msg(c, 2), msg(c, 3)],
                )
                .expect("append_many");
            let seqs: Vec<(u64, bool)> = out.iter().map(|(e, d)| (e.event_seq.0, *d)).collect();
            assert_eq!(
                seqs,
                vec![(2, false), (1, true), (3, false), (2, true), (4, false)],
                "new events take consecutive seqs; one held before and one repeated in the \
                 batch are answered with the stored event"
            );
            assert_eq!(out[1].0, first);
            assert_eq!(out[3].0, out[0].0);
            // An all-repeated batch writes nothing.
            let again = log
                .append_many(me, RingEpoch(1), vec![msg(c, 3), msg(d, 1)])
                .expect("append_many");
            assert!(again.iter().all(|(_, dup)| *dup));
            assert!(matches!(
                log.append_many(me, RingEpoch(0), vec![msg(c, 9)]),
                Err(StorageError::StaleEpoch { .. })
            ));
        }
        let log = must_open(dir.path());
        assert_eq!(log.head(me).expect("head"), EventSeq(4));
        let stored: Vec<u64> = log
            .read_after(me, EventSeq(0), 10)
            .expect("read")
            .into_iter()
            .map(|e| match e.event {
                UserEvent::Message { message } => message.seq.0,
                _ => 0,
            })
            .collect();
        assert_eq!(stored, vec![1, 2, 1, 3], "c1, c2, d1, c3 once each");
        let list = log.conversations(me, 10).expect("summaries");
        let last_of = |conv| {
            list.iter()
                .find(|s| s.conversation == conv)
                .map(|s| s.last_seq)
        };
        assert_eq!(
            last_of(c),
            Some(Seq(3)),
            "the summary folds the whole batch"
        );
        assert_eq!(last_of(d), Some(Seq(1)));
    }

    #[test]
    fn a_late_message_below_the_summarys_last_seq_is_new_once_and_heads_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ConversationId::direct(UserId(1), UserId(2));
        {
            let log = must_open(dir.path());
            // Seq 2 arrives before seq 1 (a delivery retried by the next owner).
            assert!(!log.append(UserId(2), RingEpoch(1), msg(c, 2)).expect("a").1);
            let (late, dup) = log.append(UserId(2), RingEpoch(1), msg(c, 1)).expect("a");
            assert_eq!((late.event_seq, dup), (EventSeq(2), false));
            assert!(log.append(UserId(2), RingEpoch(1), msg(c, 1)).expect("a").1);
            assert!(log.append(UserId(2), RingEpoch(1), msg(c, 2)).expect("a").1);
            assert_eq!(
                log.seal(UserId(2), RingEpoch(4)).expect("seal"),
                EventSeq(2)
            );
            assert!(matches!(
                log.append(UserId(2), RingEpoch(3), msg(c, 3)),
                Err(StorageError::StaleEpoch { fence: 4, .. })
            ));
        }
        // A fresh instance reads head and fence from disk: the same answers.
        let log = must_open(dir.path());
        assert_eq!(log.head(UserId(2)).expect("head"), EventSeq(2));
        assert!(matches!(
            log.append(UserId(2), RingEpoch(3), msg(c, 3)),
            Err(StorageError::StaleEpoch { fence: 4, .. })
        ));
        let (e, dup) = log.append(UserId(2), RingEpoch(4), msg(c, 3)).expect("a");
        assert_eq!((e.event_seq, dup), (EventSeq(3), false));
        assert!(log.append(UserId(2), RingEpoch(4), msg(c, 1)).expect("a").1);
    }

    #[test]
    fn summaries_track_the_last_message_and_the_read_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = must_open(dir.path());
        let a = ConversationId::direct(UserId(1), UserId(2));
        let b = ConversationId::direct(UserId(1), UserId(3));
        let me = UserId(2);
        for seq in 1..=3 {
            log.append(me, RingEpoch(1), msg(a, seq)).expect("append");
        }
        let mut later = msg(b, 1);
        if let UserEvent::Message { message } = &mut later {
            message.ts_ms = 9;
        }
        log.append(me, RingEpoch(1), later).expect("append");
        let read = UserEvent::Read {
            conversation: a,
            seq: Seq(2),
        };
        log.append(me, RingEpoch(1), read.clone()).expect("append");
        let (_, dup) = log.append(me, RingEpoch(1), read).expect("append");
        assert!(dup, "the same read mark twice is one event");
        let list = log.conversations(me, 10).expect("list");
        assert_eq!(
            list.iter()
                .map(|c| (c.conversation, c.last_seq.0, c.unread))
                .collect::<Vec<_>>(),
            vec![(b, 1, 1), (a, 3, 1)],
            "latest activity first, unread after the read mark"
        );
        assert_eq!(list[1].preview, "b3");
        assert_eq!(log.read_mark(me, &a).expect("mark"), Seq(2));
        // The sender's own messages count as read.
        let (e, _) = log
            .append(UserId(1), RingEpoch(1), msg(a, 4))
            .expect("append");
        assert_eq!(e.event_seq, EventSeq(1));
        assert_eq!(log.read_mark(UserId(1), &a).expect("mark"), Seq(4));
    }

    #[test]
    fn replicas_take_the_owners_numbers_and_fences_hold() {
        let d1 = tempfile::tempdir().expect("tempdir");
        let d2 = tempfile::tempdir().expect("tempdir");
        let owner = must_open(d1.path());
        let replica = must_open(d2.path());
        let c = ConversationId::direct(UserId(1), UserId(2));
        let events: Vec<Event> = (1..=3)
            .map(|i| {
                owner
                    .append(UserId(1), RingEpoch(2), msg(c, i))
                    .expect("a")
                    .0
            })
            .collect();
        let written = owner
            .read_written_after(UserId(1), EventSeq(0), 10)
            .expect("read");
        assert!(written.iter().all(|w| w.epoch == RingEpoch(2)));
        replica
            .apply_replicated(UserId(1), RingEpoch(2), &written[1..])
            .expect("apply");
        replica
            .apply_replicated(UserId(1), RingEpoch(2), &written)
            .expect("apply");
        // A different event at seq 3 from an older epoch does not replace the newer one...
        let older = WrittenEvent {
            event: Event {
                event_seq: EventSeq(3),
                event: msg(c, 7),
            },
            epoch: RingEpoch(1),
        };
        replica
            .apply_replicated(UserId(1), RingEpoch(2), std::slice::from_ref(&older))
            .expect("apply");
        assert_eq!(
            replica.read_after(UserId(1), EventSeq(2), 1).expect("r"),
            events[2..]
        );
        // ...and one from a newer epoch does, taking its dedup record along.
        let newer = WrittenEvent {
            epoch: RingEpoch(3),
            ..older
        };
        replica
            .apply_replicated(UserId(1), RingEpoch(3), std::slice::from_ref(&newer))
            .expect("apply");
        assert_eq!(
            replica.read_after(UserId(1), EventSeq(2), 1).expect("r"),
            vec![newer.event.clone()]
        );
        let (again, dup) = replica
            .append(UserId(1), RingEpoch(3), msg(c, 3))
            .expect("a");
        assert_eq!(
            (again.event_seq, dup),
            (EventSeq(4), false),
            "the replaced message is new again"
        );
        // Put seq 3 back as it was for the checks below.
        let restore = WrittenEvent {
            event: events[2].clone(),
            epoch: RingEpoch(4),
        };
        replica
            .apply_replicated(UserId(1), RingEpoch(4), &[restore])
            .expect("apply");
        assert_eq!(
            replica.read_after(UserId(1), EventSeq(0), 3).expect("r"),
            events
        );
        // The replica becomes owner: the dedup records came along.
        let (e, dup) = replica
            .append(UserId(1), RingEpoch(4), msg(c, 2))
            .expect("a");
        assert_eq!((e.event_seq, dup), (EventSeq(2), true));
        assert_eq!(
            replica.seal(UserId(1), RingEpoch(5)).expect("seal"),
            EventSeq(4)
        );
        assert!(matches!(
            replica.append(UserId(1), RingEpoch(4), msg(c, 9)),
            Err(StorageError::StaleEpoch { epoch: 4, fence: 5 })
        ));
    }
}
