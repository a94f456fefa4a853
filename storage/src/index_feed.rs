//! The search index's to-do list: every message written on this node (appended as owner or
//! stored as a replica) also leaves its key in `convseq_unindexed`, in the same `WriteBatch`.
//! The indexer reads the list, indexes those messages and then deletes their keys, so that
//! a crash in between only indexes a message twice (which replaces it: indexing is
//! idempotent) and nothing written is ever missed. A rebuild puts every key back.

use chat_types::{ConversationId, Message, Seq};
use rocksdb::{IteratorMode, WriteBatch};

use crate::conversation_log::RocksConversationLog;
use crate::db::{Durability, Store, CF_INDEX_FEED, CF_MSG};
use crate::error::StorageError;
use crate::keys::{message_key, split_message_key};

impl RocksConversationLog {
    /// Up to `limit` messages written here that the index has not taken yet (by key order).
    pub fn unindexed(&self, limit: usize) -> Result<Vec<(ConversationId, Seq)>, StorageError> {
        let store = self.store();
        let mut out = Vec::new();
        for item in store
            .db()
            .iterator_cf(store.cf(CF_INDEX_FEED)?, IteratorMode::Start)
        {
            let (k, _) = item?;
            let pos =
                split_message_key(&k).ok_or_else(|| StorageError::corrupt(CF_INDEX_FEED, &k))?;
            out.push(pos);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
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
}
