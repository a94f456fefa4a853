//! Search results and the order they come in.

use std::cmp::Reverse;

use chat_types::ids::{ConversationId, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::cursor::SearchCursor;

/// One matching message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub ts_ms: u64,
    pub body: String,
    /// A part of the body around the matches (the whole body when it is short).
    pub snippet: String,
    /// Half-open ranges of CHARACTER (Unicode scalar value) offsets into `snippet` to mark,
    /// sorted and not overlapping.
    pub highlights: Vec<(usize, usize)>,
}

/// One page of hits, newest first, and where the next page starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// The cursor of the last hit, when more hits may follow; pass it as `before`.
    pub next: Option<SearchCursor>,
}

/// The sort key of the page order: `ts_ms` desc, then conversation (as its string) asc, then
/// seq desc. Every node sorts the same way, so pages merge.
pub(crate) fn order_key(ts_ms: u64, conversation: &ConversationId, seq: Seq) -> OrderKey {
    (Reverse(ts_ms), conversation.to_string(), Reverse(seq.0))
}

pub(crate) type OrderKey = (Reverse<u64>, String, Reverse<u64>);

impl SearchHit {
    pub(crate) fn order_key(&self) -> OrderKey {
        order_key(self.ts_ms, &self.conversation, self.seq)
    }
}
