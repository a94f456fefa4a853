//! Bodies of the REST endpoints (`/v1/...`). Errors come back as [`crate::WireError`].

use serde::{Deserialize, Serialize};

use crate::wire::{ContactEntry, DmPolicy, Relation, SessionInfo};
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
    /// A page with this seq in its middle (alone).
    pub around: Option<Seq>,
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

/// Body of `PATCH /v1/me/profile`: fields left out keep their value; `"avatar": null` clears
/// the avatar. Answered by the new [`crate::wire::Profile`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::wire::present_or_null"
    )]
    pub avatar: Option<Option<String>>,
}

/// Body of `PUT /v1/me/settings`: fields left out keep their value. Answered by the new
/// [`crate::wire::Settings`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_policy: Option<DmPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_preview: Option<bool>,
}

/// `GET /v1/me/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsResponse {
    pub sessions: Vec<SessionInfo>,
}

/// Body of `POST /v1/contacts/requests`: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactRequestBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The answer to every contact and block change: how `user_id` stands with me now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationResponse {
    pub user_id: UserId,
    pub relation: Relation,
}

/// `GET /v1/contacts`. Each list is ordered by user id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactsResponse {
    pub contacts: Vec<ContactEntry>,
    /// Requests others sent me.
    pub incoming: Vec<ContactEntry>,
    /// Requests I sent.
    pub outgoing: Vec<ContactEntry>,
}

/// `GET /v1/blocks`, ordered by user id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksResponse {
    pub blocked: Vec<ContactEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_update_body_rules() {
        let u: ProfileUpdate = serde_json::from_str(r#"{"avatar":null}"#).expect("valid");
        assert_eq!(u.avatar, Some(None));
        let u: ProfileUpdate = serde_json::from_str(r#"{"display_name":"Al"}"#).expect("valid");
        assert_eq!((u.display_name.as_deref(), u.avatar), (Some("Al"), None));
        assert!(serde_json::from_str::<ProfileUpdate>(r#"{"nick":"x"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&ProfileUpdate::default()).expect("encodes"),
            "{}"
        );
    }
}
