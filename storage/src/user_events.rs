//! Per-user event streams: every event a user must learn about, numbered 1, 2, 3, ... per
//! user. The event seq is the user's single resume cursor across all conversations.
//!
//! The user's session actor (on the user's home node) is the single writer; the stream is
//! replicated and fenced exactly like a conversation log. A message becomes at most one event
//! per user: the dedup record `user ++ conv ++ seq` makes a repeated delivery (a retry, a
//! new owner re-sending) return the first event instead of adding another.

use std::sync::Mutex;

use chat_types::{ConversationId, Event, EventSeq, RingEpoch, UserEvent, UserId};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{Durability, Store, CF_EVENTS, CF_EVENT_DEDUP, CF_EVENT_HEAD};
use crate::error::StorageError;
use crate::fence;
use crate::keys::{decode_u64_v1, decode_versioned, encode_u64_v1, encode_versioned};

const EVENT_FORMAT: u8 = 1;
const LOCK_STRIPES: usize = 64;

/// The event streams of the users this node holds.
pub trait UserEventLog: Send + Sync {
    /// Appends `event` at `head + 1`, or returns the existing event for the same message.
    fn append(
        &self,
        user: UserId,
        epoch: RingEpoch,
        event: UserEvent,
    ) -> Result<(Event, bool), StorageError>;
    fn head(&self, user: UserId) -> Result<EventSeq, StorageError>;
    /// Up to `limit` events with seq > `after`, ascending.
    fn read_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError>;
    /// Stores events assigned by the owner at `epoch` at their own seqs; present ones are
    /// skipped. Returns the new head.
    fn apply_replicated(
        &self,
        user: UserId,
        epoch: RingEpoch,
        events: &[Event],
    ) -> Result<EventSeq, StorageError>;
    /// Raises the fence to `epoch` (refusing an older one) and returns the head.
    fn seal(&self, user: UserId, epoch: RingEpoch) -> Result<EventSeq, StorageError>;
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

/// The dedup key of an event, when its kind has one.
fn event_dedup_key(user: UserId, event: &UserEvent) -> Option<Vec<u8>> {
    match event {
        UserEvent::Message { message } => Some(dedup_key(user, &message.conversation, message.seq)),
    }
}

/// [`UserEventLog`] on the node's RocksDB.
pub struct RocksUserEventLog {
    store: Store,
    durability: Durability,
    stripes: Vec<Mutex<()>>,
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
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn lock(&self, user: UserId) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[(user.0 % LOCK_STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
            event: decode_versioned(CF_EVENTS, EVENT_FORMAT, &key, &value)?,
        })
    }

    /// Adds one event at `seq` to `batch`.
    fn put_event(
        &self,
        batch: &mut WriteBatch,
        user: UserId,
        seq: EventSeq,
        event: &UserEvent,
    ) -> Result<(), StorageError> {
        batch.put_cf(
            self.store.cf(CF_EVENTS)?,
            event_key(user, seq),
            encode_versioned(CF_EVENTS, EVENT_FORMAT, event)?,
        );
        if let Some(dk) = event_dedup_key(user, event) {
            batch.put_cf(self.store.cf(CF_EVENT_DEDUP)?, dk, encode_u64_v1(seq.0));
        }
        Ok(())
    }
}

impl UserEventLog for RocksUserEventLog {
    fn append(
        &self,
        user: UserId,
        epoch: RingEpoch,
        event: UserEvent,
    ) -> Result<(Event, bool), StorageError> {
        let _guard = self.lock(user);
        let fkey = fence::user_fence_key(user);
        fence::check(&self.store, &fkey, epoch)?;
        if let Some(dk) = event_dedup_key(user, &event) {
            if let Some(v) = self
                .store
                .db()
                .get_pinned_cf(self.store.cf(CF_EVENT_DEDUP)?, &dk)?
            {
                let seq = EventSeq(decode_u64_v1(CF_EVENT_DEDUP, &dk, &v)?);
                return Ok((self.get(user, seq)?, true));
            }
        }
        let seq = self.head(user)?.next();
        let mut batch = WriteBatch::default();
        self.put_event(&mut batch, user, seq, &event)?;
        batch.put_cf(
            self.store.cf(CF_EVENT_HEAD)?,
            user.0.to_be_bytes(),
            encode_u64_v1(seq.0),
        );
        fence::put(&self.store, &mut batch, &fkey, epoch)?;
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        Ok((
            Event {
                event_seq: seq,
                event,
            },
            false,
        ))
    }

    fn head(&self, user: UserId) -> Result<EventSeq, StorageError> {
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

    fn read_after(
        &self,
        user: UserId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
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
            out.push(Event {
                event_seq: EventSeq(u64::from_be_bytes(seq)),
                event: decode_versioned(CF_EVENTS, EVENT_FORMAT, &k, &v)?,
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
        events: &[Event],
    ) -> Result<EventSeq, StorageError> {
        let _guard = self.lock(user);
        let fkey = fence::user_fence_key(user);
        fence::check(&self.store, &fkey, epoch)?;
        let mut head = self.head(user)?;
        let mut batch = WriteBatch::default();
        for e in events {
            let key = event_key(user, e.event_seq);
            if self
                .store
                .db()
                .get_pinned_cf(self.store.cf(CF_EVENTS)?, key)?
                .is_some()
            {
                continue;
            }
            self.put_event(&mut batch, user, e.event_seq, &e.event)?;
            head = head.max(e.event_seq);
        }
        batch.put_cf(
            self.store.cf(CF_EVENT_HEAD)?,
            user.0.to_be_bytes(),
            encode_u64_v1(head.0),
        );
        fence::put(&self.store, &mut batch, &fkey, epoch)?;
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        Ok(head)
    }

    fn seal(&self, user: UserId, epoch: RingEpoch) -> Result<EventSeq, StorageError> {
        let _guard = self.lock(user);
        let fkey = fence::user_fence_key(user);
        fence::check(&self.store, &fkey, epoch)?;
        let mut batch = WriteBatch::default();
        fence::put(&self.store, &mut batch, &fkey, epoch)?;
        self.store
            .db()
            .write_opt(batch, &Store::write_opts(self.durability))?;
        self.head(user)
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
        replica
            .apply_replicated(UserId(1), RingEpoch(2), &events[1..])
            .expect("apply");
        replica
            .apply_replicated(UserId(1), RingEpoch(2), &events)
            .expect("apply");
        assert_eq!(
            replica.read_after(UserId(1), EventSeq(0), 10).expect("r"),
            events
        );
        // The replica becomes owner: the dedup records came along.
        let (e, dup) = replica
            .append(UserId(1), RingEpoch(3), msg(c, 2))
            .expect("a");
        assert_eq!((e.event_seq, dup), (EventSeq(2), true));
        assert_eq!(
            replica.seal(UserId(1), RingEpoch(4)).expect("seal"),
            EventSeq(3)
        );
        assert!(matches!(
            replica.append(UserId(1), RingEpoch(3), msg(c, 9)),
            Err(StorageError::StaleEpoch { epoch: 3, fence: 4 })
        ));
    }
}
