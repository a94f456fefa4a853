//! Helpers shared by the integration tests: a real index on a temp dir.

#![allow(dead_code)]

use chat_search::{IndexOp, IndexedMessage, MessageIndex, SearchHit, SearchQuery};
use chat_types::ids::{ConversationId, GroupId, Seq, UserId};

pub struct TestIndex {
    pub index: MessageIndex,
    pub dir: tempfile::TempDir,
}

pub fn open() -> TestIndex {
    let dir = tempfile::tempdir().expect("temp dir");
    let index = MessageIndex::open(dir.path()).expect("open index");
    TestIndex { index, dir }
}

pub fn dm(a: u64, b: u64) -> ConversationId {
    ConversationId::direct(UserId(a), UserId(b))
}

pub fn group(id: u64) -> ConversationId {
    ConversationId::group(GroupId(id))
}

pub fn msg(conversation: ConversationId, seq: u64, sender: u64, ts_ms: u64, body: &str) -> IndexOp {
    IndexOp::Put(IndexedMessage {
        conversation,
        seq: Seq(seq),
        sender: UserId(sender),
        ts_ms,
        body: body.to_string(),
    })
}

/// A query by `reader` who may read the given groups.
pub fn query(text: &str, reader: u64, groups: &[u64]) -> SearchQuery {
    let mut q = SearchQuery::new(text, UserId(reader));
    q.groups = groups.iter().map(|&g| group(g)).collect();
    q
}

impl TestIndex {
    pub fn put(&self, ops: Vec<IndexOp>) {
        let next = self.index.checkpoint() + 1;
        self.index.apply(ops, next).expect("apply");
    }

    pub fn hits(&self, q: &SearchQuery) -> Vec<SearchHit> {
        self.index.search(q).expect("search").hits
    }

    /// (conversation, seq) of every hit of `text` for user 1 reading groups 1..=9.
    pub fn found(&self, text: &str) -> Vec<(String, u64)> {
        self.hits(&query(text, 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]))
            .iter()
            .map(|h| (h.conversation.to_string(), h.seq.0))
            .collect()
    }
}
