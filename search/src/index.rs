//! [`MessageIndex`]: the node's tantivy index of the messages it holds.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chat_types::ids::{ConversationId, Seq, UserId};
use tantivy::collector::sort_key::{SortByStaticFastValue, SortByString};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::schema::Value;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument,
    Term,
};

use crate::cursor::SearchCursor;
use crate::error::SearchError;
use crate::hit::{SearchHit, SearchPage};
use crate::query::{self, SearchQuery};
use crate::schema::{self, Fields, CONVERSATION, SEQ, TS_MS};
use crate::snippet::Highlighter;
use crate::tokenizer::{chat_analyzer, TOKENIZER_NAME};

/// Memory budget of the (single) indexing thread.
const WRITER_MEMORY_BYTES: usize = 40_000_000;

/// A message as the index stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedMessage {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub ts_ms: u64,
    pub body: String,
}

/// One change to the index, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexOp {
    /// Adds the message, replacing any document of the same (conversation, seq): an edit
    /// re-puts the original seq with the new body.
    Put(IndexedMessage),
    /// Removes one message.
    Delete {
        conversation: ConversationId,
        seq: Seq,
    },
    /// Removes every message of a conversation.
    DeleteConversation { conversation: ConversationId },
}

/// The full-text index of one node's messages. `Send + Sync`: share it behind an `Arc`. Every
/// method blocks on disk I/O; call it off the async runtime.
pub struct MessageIndex {
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    checkpoint: AtomicU64,
}

impl std::fmt::Debug for MessageIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageIndex")
            .field("checkpoint", &self.checkpoint())
            .field("docs", &self.doc_count())
            .finish()
    }
}

fn key(conversation: &ConversationId, seq: Seq) -> String {
    format!("{conversation}/{}", seq.0)
}

fn checkpoint_of(index: &Index) -> Result<u64, SearchError> {
    let metas = index.load_metas()?;
    Ok(metas
        .payload
        .as_deref()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0))
}

impl MessageIndex {
    /// Opens the index in `dir`, creating the directory and an empty index if needed.
    ///
    /// An index written with another schema is refused with [`SearchError::Index`]; the caller
    /// then removes the directory and rebuilds from its logs.
    pub fn open(dir: &Path) -> Result<MessageIndex, SearchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SearchError::Index(format!("cannot create the index directory: {e}")))?;
        let (schema, fields) = schema::build();
        let index = Index::open_or_create(MmapDirectory::open(dir)?, schema)?;
        index.tokenizers().register(TOKENIZER_NAME, chat_analyzer());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let checkpoint = checkpoint_of(&index)?;
        tracing::debug!(checkpoint, "message index opened");
        Ok(MessageIndex {
            reader,
            writer: Mutex::new(writer),
            fields,
            checkpoint: AtomicU64::new(checkpoint),
        })
    }

    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        // A panic while holding the lock leaves no half-applied batch behind (it is rolled
        // back or never committed), so the writer is still usable.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `ops` in order and commits them with `checkpoint` (the caller's log position);
    /// when this returns `Ok`, `search` sees them. All or nothing: on error nothing of `ops`
    /// is committed. An empty `ops` still commits the new checkpoint.
    pub fn apply(&self, ops: Vec<IndexOp>, checkpoint: u64) -> Result<(), SearchError> {
        let count = ops.len();
        let mut writer = self.writer();
        if let Err(e) = self.write_and_commit(&mut writer, ops, checkpoint) {
            if let Err(rollback) = writer.rollback() {
                tracing::warn!(error = %rollback, "message index rollback failed");
            }
            return Err(e);
        }
        self.checkpoint.store(checkpoint, Ordering::SeqCst);
        drop(writer);
        self.reader.reload()?;
        tracing::debug!(ops = count, checkpoint, "message index committed");
        Ok(())
    }

    fn write_and_commit(
        &self,
        writer: &mut IndexWriter,
        ops: Vec<IndexOp>,
        checkpoint: u64,
    ) -> Result<(), SearchError> {
        let f = &self.fields;
        for op in ops {
            match op {
                IndexOp::Put(m) => {
                    let key = key(&m.conversation, m.seq);
                    writer.delete_term(Term::from_field_text(f.key, &key));
                    let mut doc = TantivyDocument::default();
                    doc.add_text(f.key, &key);
                    doc.add_text(f.conversation, m.conversation.to_string());
                    doc.add_u64(f.seq, m.seq.0);
                    doc.add_u64(f.sender, m.sender.0);
                    doc.add_u64(f.ts_ms, m.ts_ms);
                    for reader in m.conversation.direct_members() {
                        doc.add_u64(f.readers, reader.0);
                    }
                    doc.add_text(f.body, &m.body);
                    writer.add_document(doc)?;
                }
                IndexOp::Delete { conversation, seq } => {
                    writer.delete_term(Term::from_field_text(f.key, &key(&conversation, seq)));
                }
                IndexOp::DeleteConversation { conversation } => {
                    writer.delete_term(Term::from_field_text(
                        f.conversation,
                        &conversation.to_string(),
                    ));
                }
            }
        }
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&checkpoint.to_string());
        prepared.commit()?;
        Ok(())
    }

    /// The checkpoint of the last commit (0 for a new or cleared index).
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::SeqCst)
    }

    /// Removes every document and commits checkpoint 0, for a rebuild from the logs.
    pub fn clear(&self) -> Result<(), SearchError> {
        let mut writer = self.writer();
        writer.delete_all_documents()?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload("0");
        if let Err(e) = prepared.commit() {
            if let Err(rollback) = writer.rollback() {
                tracing::warn!(error = %rollback, "message index rollback failed");
            }
            return Err(e.into());
        }
        self.checkpoint.store(0, Ordering::SeqCst);
        drop(writer);
        self.reader.reload()?;
        tracing::info!("message index cleared");
        Ok(())
    }

    /// Documents in the index (as of the last commit).
    pub fn doc_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// One page of the messages matching `q` that `q.reader` may read, newest first.
    pub fn search(&self, q: &SearchQuery) -> Result<SearchPage, SearchError> {
        let words = query::parse_text(&q.text)?;
        let limit = q.clamped_limit();
        let searcher = self.reader.searcher();
        let tantivy_query = query::build(q, &words, &self.fields);
        let collector = TopDocs::with_limit(limit + 1).order_by((
            (SortByStaticFastValue::<u64>::for_field(TS_MS), Order::Desc),
            (SortByString::for_field(CONVERSATION), Order::Asc),
            (SortByStaticFastValue::<u64>::for_field(SEQ), Order::Desc),
        ));
        let found = searcher.search(&*tantivy_query, &collector)?;
        let more = found.len() > limit;
        let highlighter = Highlighter::new(&searcher, &words, self.fields.body)?;
        let mut hits = Vec::with_capacity(found.len().min(limit));
        for (_, address) in found.into_iter().take(limit) {
            hits.push(self.hit(&searcher, address, &highlighter)?);
        }
        let next = if more {
            hits.last().map(SearchCursor::of)
        } else {
            None
        };
        Ok(SearchPage { hits, next })
    }

    fn hit(
        &self,
        searcher: &Searcher,
        address: DocAddress,
        highlighter: &Highlighter,
    ) -> Result<SearchHit, SearchError> {
        let f = &self.fields;
        let doc: TantivyDocument = searcher.doc(address)?;
        let corrupt = || SearchError::Index("stored message document is incomplete".to_string());
        let u64_of = |field| doc.get_first(field).and_then(|v| v.as_u64());
        let conversation = doc
            .get_first(f.conversation)
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<ConversationId>().ok())
            .ok_or_else(corrupt)?;
        let body = doc
            .get_first(f.body)
            .and_then(|v| v.as_str())
            .ok_or_else(corrupt)?
            .to_string();
        let (snippet, highlights) = highlighter.snippet(&body);
        Ok(SearchHit {
            conversation,
            seq: Seq(u64_of(f.seq).ok_or_else(corrupt)?),
            sender: UserId(u64_of(f.sender).ok_or_else(corrupt)?),
            ts_ms: u64_of(f.ts_ms).ok_or_else(corrupt)?,
            body,
            snippet,
            highlights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn message_index_is_send_and_sync() {
        assert_send_sync::<MessageIndex>();
    }
}
