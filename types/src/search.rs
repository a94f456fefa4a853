//! Search on the wire: the REST replies of message, people and conversation search.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, Seq, UserId};

/// Most hits one page of message search returns.
pub const MAX_SEARCH_PAGE: usize = 100;

/// One message that matched, with a snippet around the match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageHit {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub ts_ms: u64,
    pub body: String,
    /// A part of the body around the match.
    pub snippet: String,
    /// Half-open ranges of the matched words in `snippet`, in Unicode code points.
    pub highlights: Vec<(usize, usize)>,
}

/// `GET /v1/search/messages`: newest first; `next` pages on (pass it as `cursor`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSearchResponse {
    pub hits: Vec<MessageHit>,
    pub next: Option<String>,
    /// Some node did not answer in time: hits held only there may be missing.
    pub partial: bool,
}

/// One user found by `GET /v1/search/users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserHit {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSearchResponse {
    pub users: Vec<UserHit>,
}

/// One of the user's own conversations found by `GET /v1/search/conversations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationHit {
    pub conversation: ConversationId,
    pub name: String,
    /// `direct` or `group`.
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSearchResponse {
    pub conversations: Vec<ConversationHit>,
}
