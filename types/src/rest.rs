//! Bodies of the REST endpoints (`/v1/...`). Errors come back as [`crate::WireError`].

use serde::{Deserialize, Serialize};

use crate::{ConversationId, Message, Seq, UserId};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub user_id: UserId,
    pub username: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    /// Opaque bearer token: `Authorization: Bearer <token>`, or `?token=` on the WebSocket URL.
    pub token: String,
    pub user_id: UserId,
    pub username: String,
}

/// Query of `GET /v1/conversations/{id}/messages`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub after: Option<Seq>,
    pub before: Option<Seq>,
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub conversation: ConversationId,
    /// The conversation's last seq when the page was read.
    pub head: Seq,
    /// Ascending by seq.
    pub messages: Vec<Message>,
}
