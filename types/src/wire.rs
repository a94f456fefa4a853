//! Protocol v1 frames: JSON text over WebSocket, one object per frame, tagged by `type`.
//!
//! Every client request carries an `id` chosen by the client; the reply (or `error`) names the
//! same `id`. Pushes (`message`) carry no `id`. `docs/protocol.md` documents each frame.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::event::EventSeq;
use crate::ids::{ClientMsgId, ConversationId, NodeId, Seq, UserId};
use crate::limits::Limits;
use crate::media::{Attachment, MediaId};

/// A frame from client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame. Answered by `welcome`.
    Hello {
        #[serde(default)]
        id: Option<String>,
        version: u32,
        /// Resume the event stream after this `event_seq` (the last one the client saw): the
        /// server first sends every event after it, in order, or a `resync` notice.
        #[serde(default)]
        resume_from: Option<EventSeq>,
    },
    Ping {
        id: String,
    },
    /// Open (or find) the direct conversation with a user, named by username or id.
    OpenDirect {
        id: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        user_id: Option<UserId>,
    },
    /// Append a message. Answered by `ack` with the assigned seq.
    Send {
        id: String,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
        /// A reply, edit, deletion or reaction (see [`MessageRef`]).
        #[serde(default)]
        refers: Option<MessageRef>,
        /// Uploaded media to attach, by id (at most [`crate::MAX_ATTACHMENTS`]); the body may
        /// be empty when there are some.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<MediaId>,
    },
    /// A page of history: after a seq (ascending from it), or before a seq (the latest ones
    /// below it), or with neither the latest page.
    History {
        id: String,
        conversation: ConversationId,
        #[serde(default)]
        after: Option<Seq>,
        #[serde(default)]
        before: Option<Seq>,
        /// A page with this seq in its middle (alone: not with `after` or `before`).
        #[serde(default)]
        around: Option<Seq>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// A user's public profile, named by id or username; with neither, one's own. Answered by
    /// `profile`.
    GetProfile {
        id: String,
        #[serde(default)]
        user_id: Option<UserId>,
        #[serde(default)]
        username: Option<String>,
    },
    /// Changes one's own profile: fields left out keep their value; `"avatar": null` clears
    /// the avatar. Answered by `profile`.
    UpdateProfile {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_text: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present_or_null"
        )]
        avatar: Option<Option<String>>,
    },
    /// One's own settings. Answered by `settings`.
    GetSettings {
        id: String,
    },
    /// Changes one's own settings: fields left out keep their value. Answered by `settings`.
    UpdateSettings {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dm_policy: Option<DmPolicy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        push_preview: Option<bool>,
    },
    /// One's own sessions (logged-in devices). Answered by `sessions`.
    ListSessions {
        id: String,
    },
    /// Revokes one of one's own sessions. Answered by `session_revoked`.
    RevokeSession {
        id: String,
        session_id: String,
    },
    /// Contacts and pending requests both ways. Answered by `contacts`.
    ListContacts {
        id: String,
    },
    /// Asks a user (by id or username) to become a contact; when they already asked, both
    /// become contacts. Answered by `relation`.
    RequestContact {
        id: String,
        #[serde(default)]
        user_id: Option<UserId>,
        #[serde(default)]
        username: Option<String>,
    },
    /// Accepts the request `user_id` sent. Answered by `relation`.
    AcceptContact {
        id: String,
        user_id: UserId,
    },
    /// Declines the request `user_id` sent. Answered by `relation`.
    DeclineContact {
        id: String,
        user_id: UserId,
    },
    /// Withdraws one's own request to `user_id`. Answered by `relation`.
    CancelContact {
        id: String,
        user_id: UserId,
    },
    /// Ends a contact relation (either side may). Answered by `relation`.
    RemoveContact {
        id: String,
        user_id: UserId,
    },
    /// Blocks a user. Answered by `relation`.
    BlockUser {
        id: String,
        user_id: UserId,
    },
    /// Unblocks a user. Answered by `relation`.
    UnblockUser {
        id: String,
        user_id: UserId,
    },
    /// The users one blocked. Answered by `blocks`.
    ListBlocks {
        id: String,
    },
    /// "I have read up to `seq`": becomes a `read` event on the user's other devices and a
    /// `receipt` event for the other members. Marks never move back. Answered by `ok`.
    MarkRead {
        id: String,
        conversation: ConversationId,
        seq: Seq,
    },
    /// "I am typing": sent every few seconds while typing; shown to the other members for
    /// [`TYPING_TTL_MS`] unless repeated. Never stored. Answered by `ok`.
    Typing {
        id: String,
        conversation: ConversationId,
    },
    /// Sets how the user appears to contacts while connected. Answered by `ok`.
    SetPresence {
        id: String,
        status: PresenceStatus,
    },
    /// "This device holds every event up to `event_seq`": the delivery acknowledgement. The
    /// highest over the user's devices comes back in `welcome` as `acked_event_seq`. Answered
    /// by `ok`.
    AckEvents {
        id: String,
        event_seq: EventSeq,
    },
    /// The user's conversations, latest activity first. Answered by `conversations`.
    ListConversations {
        id: String,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Creates a group owned by the sender, with these first members. Answered by `group`.
    CreateGroup {
        id: String,
        name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        members: Vec<UserId>,
    },
    /// A group the user is a member of. Answered by `group`.
    GetGroup {
        id: String,
        group: ConversationId,
    },
    /// The groups the user is a member of. Answered by `groups`.
    ListGroups {
        id: String,
    },
    /// Owner or admin: rename or describe the group. Answered by `group`.
    UpdateGroup {
        id: String,
        group: ConversationId,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        description: Option<String>,
    },
    /// Owner or admin: add members. Answered by `group`.
    AddMembers {
        id: String,
        group: ConversationId,
        user_ids: Vec<UserId>,
    },
    /// Owner or admin: remove a member (admins only plain members). Answered by `group`.
    RemoveMember {
        id: String,
        group: ConversationId,
        user_id: UserId,
    },
    /// Leave a group (an owner transfers ownership first). Answered by `ok`.
    LeaveGroup {
        id: String,
        group: ConversationId,
    },
    /// Owner: make a member an admin or a plain member. Answered by `group`.
    SetRole {
        id: String,
        group: ConversationId,
        user_id: UserId,
        role: Role,
    },
    /// Owner: hand the group to another member (the old owner becomes an admin). Answered by
    /// `group`.
    TransferGroup {
        id: String,
        group: ConversationId,
        user_id: UserId,
    },
    /// Owner: delete the group. Answered by `ok`.
    DeleteGroup {
        id: String,
        group: ConversationId,
    },
    /// One message to many users (each in the direct conversation with them) and groups.
    /// `client_msg_id` makes a retry store nothing twice. Answered by `broadcast_result`.
    Broadcast {
        id: String,
        client_msg_id: ClientMsgId,
        body: String,
        #[serde(default)]
        users: Vec<UserId>,
        #[serde(default)]
        groups: Vec<ConversationId>,
    },
}

/// What a broadcast did for one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastOutcome {
    pub conversation: ConversationId,
    /// The message's seq, when stored (also for a retry: the original seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

/// Turns `around` into the `after` of the page that has `around` in its middle. Errors when
/// `around` comes with `after` or `before`.
pub fn history_window(
    after: Option<Seq>,
    before: Option<Seq>,
    around: Option<Seq>,
    limit: u32,
) -> Result<(Option<Seq>, Option<Seq>), WireError> {
    match around {
        None => Ok((after, before)),
        Some(_) if after.is_some() || before.is_some() => Err(WireError::new(
            ErrorCode::InvalidArgument,
            "around goes alone, without after or before",
        )),
        Some(seq) => Ok((
            Some(Seq(seq.0.saturating_sub(u64::from(limit / 2) + 1))),
            None,
        )),
    }
}

/// How long a `typing` indicator lasts unless repeated.
pub const TYPING_TTL_MS: u64 = 6_000;

/// What others see of a user's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// One conversation of the user's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation: ConversationId,
    /// The last message's seq (the conversation's head as the user's stream knows it).
    pub last_seq: Seq,
    pub last_ts_ms: u64,
    pub last_sender: UserId,
    /// The start of the last message's body.
    pub preview: String,
    /// The user's read mark.
    pub read_upto: Seq,
    /// Messages after the read mark that others sent.
    pub unread: u64,
}

const CLIENT_FRAME_TYPES: &[&str] = &[
    "hello",
    "ping",
    "open_direct",
    "send",
    "history",
    "get_profile",
    "update_profile",
    "get_settings",
    "update_settings",
    "list_sessions",
    "revoke_session",
    "list_contacts",
    "request_contact",
    "accept_contact",
    "decline_contact",
    "cancel_contact",
    "remove_contact",
    "block_user",
    "unblock_user",
    "list_blocks",
    "mark_read",
    "ack_events",
    "typing",
    "set_presence",
    "list_conversations",
    "create_group",
    "get_group",
    "list_groups",
    "update_group",
    "add_members",
    "remove_member",
    "leave_group",
    "set_role",
    "transfer_group",
    "delete_group",
    "broadcast",
];

/// For `Option<Option<T>>` fields that tell "left out" (`None`, with `#[serde(default)]`)
/// from "null" (`Some(None)`).
pub(crate) fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl ClientFrame {
    /// The request id, when the frame has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientFrame::Hello { id, .. } => id.as_deref(),
            ClientFrame::Ping { id }
            | ClientFrame::OpenDirect { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::GetProfile { id, .. }
            | ClientFrame::UpdateProfile { id, .. }
            | ClientFrame::GetSettings { id }
            | ClientFrame::UpdateSettings { id, .. }
            | ClientFrame::ListSessions { id }
            | ClientFrame::RevokeSession { id, .. }
            | ClientFrame::ListContacts { id }
            | ClientFrame::RequestContact { id, .. }
            | ClientFrame::AcceptContact { id, .. }
            | ClientFrame::DeclineContact { id, .. }
            | ClientFrame::CancelContact { id, .. }
            | ClientFrame::RemoveContact { id, .. }
            | ClientFrame::BlockUser { id, .. }
            | ClientFrame::UnblockUser { id, .. }
            | ClientFrame::ListBlocks { id }
            | ClientFrame::MarkRead { id, .. }
            | ClientFrame::AckEvents { id, .. }
            | ClientFrame::Typing { id, .. }
            | ClientFrame::SetPresence { id, .. }
            | ClientFrame::ListConversations { id, .. }
            | ClientFrame::CreateGroup { id, .. }
            | ClientFrame::GetGroup { id, .. }
            | ClientFrame::ListGroups { id }
            | ClientFrame::UpdateGroup { id, .. }
            | ClientFrame::AddMembers { id, .. }
            | ClientFrame::RemoveMember { id, .. }
            | ClientFrame::LeaveGroup { id, .. }
            | ClientFrame::SetRole { id, .. }
            | ClientFrame::TransferGroup { id, .. }
            | ClientFrame::DeleteGroup { id, .. }
            | ClientFrame::Broadcast { id, .. } => Some(id),
        }
    }

    /// Decodes a text frame. On failure returns the request id when one could be read, so
    /// that the error frame can name it, and an error with a stable code.
    pub fn decode(text: &str) -> Result<ClientFrame, (Option<String>, WireError)> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            (
                None,
                WireError::new(ErrorCode::MalformedFrame, format!("not JSON: {e}")),
            )
        })?;
        let obj = value.as_object().ok_or_else(|| {
            (
                None,
                WireError::new(ErrorCode::MalformedFrame, "a frame must be a JSON object"),
            )
        })?;
        let id = obj.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let Some(kind) = obj.get("type").and_then(|v| v.as_str()) else {
            return Err((
                id,
                WireError::new(ErrorCode::MalformedFrame, "missing string field \"type\""),
            ));
        };
        let kind = kind.to_owned();
        if !CLIENT_FRAME_TYPES.contains(&kind.as_str()) {
            let shown: String = kind.chars().take(32).collect();
            return Err((
                id,
                WireError::new(
                    ErrorCode::UnknownFrame,
                    format!("unknown frame type {shown:?}"),
                ),
            ));
        }
        serde_json::from_value(value).map_err(|e| {
            (
                id,
                WireError::new(ErrorCode::InvalidArgument, format!("bad {kind} frame: {e}")),
            )
        })
    }
}

/// A user as others see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub conversation: ConversationId,
    pub members: Vec<UserSummary>,
    /// The last assigned seq (0 when empty).
    pub head: Seq,
}

/// A stored message, as history returns it and as pushes carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Server time of the append, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// What this message does to an earlier one: a reply, an edit, a deletion (tombstone)
    /// or a reaction. Absent for a plain message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers: Option<MessageRef>,
    /// Media the message carries (see `docs/protocol.md`, Media). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// How a message relates to an earlier message of the same conversation, named by its seq.
/// Edits, deletions and reactions are new messages in the log; the original stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageRef {
    /// A new message answering `seq`.
    Reply { seq: Seq },
    /// Replaces the body of `seq` (the sender's own message).
    Edit { seq: Seq },
    /// Withdraws `seq` (the sender's own message); the body must be empty.
    Delete { seq: Seq },
    /// A reaction to `seq`: the body is the reaction (an emoji, at most 32 bytes).
    Reaction { seq: Seq },
    /// Written by the server, never by a client: a change to the group, ordered with its
    /// messages. The sender is the member who made the change.
    Group { change: GroupChange },
}

impl MessageRef {
    /// The message referred to (none for group changes).
    pub fn seq(&self) -> Option<Seq> {
        match *self {
            MessageRef::Reply { seq }
            | MessageRef::Edit { seq }
            | MessageRef::Delete { seq }
            | MessageRef::Reaction { seq } => Some(seq),
            MessageRef::Group { .. } => None,
        }
    }
}

/// A member's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// A change to a group, as it appears in the group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum GroupChange {
    Created,
    Updated,
    MemberAdded { user: UserId },
    MemberRemoved { user: UserId },
    MemberLeft { user: UserId },
    RoleChanged { user: UserId, role: Role },
    OwnerChanged { user: UserId },
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub user_id: UserId,
    pub role: Role,
}

/// A group as its members see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's conversation, `g:<id>`.
    pub conversation: ConversationId,
    pub name: String,
    pub description: String,
    pub members: Vec<GroupMember>,
    pub created_ms: u64,
}

/// Largest reaction body, in bytes.
pub const MAX_REACTION_BYTES: usize = 32;

/// A user's public profile: what any signed-in user may read about another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: UserId,
    pub username: String,
    /// 1 to 64 characters; the username until the user sets one.
    pub display_name: String,
    /// 0 to 140 characters.
    pub status_text: String,
    /// An opaque media id (media are not served yet), or null.
    pub avatar: Option<String>,
}

/// Who may open, and send in, a direct conversation with a user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmPolicy {
    /// Every user who is not blocked (either way).
    #[default]
    Anyone,
    /// Only the user's contacts.
    Contacts,
}

/// A user's own settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub dm_policy: DmPolicy,
    /// Whether offline push notifications carry the sender and a preview of the message
    /// (`false`: only "you have a new message").
    #[serde(default = "yes")]
    pub push_preview: bool,
}

fn yes() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dm_policy: DmPolicy::default(),
            push_preview: true,
        }
    }
}

/// How another user stands with the one asking. Being blocked by the other user is not
/// shown (it reads as `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    None,
    /// I asked them; they have not answered.
    Outgoing,
    /// They asked me; I have not answered.
    Incoming,
    Contact,
    /// I blocked them.
    Blocked,
}

/// One of a user's sessions (a logged-in device). The token itself is never shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The first 16 hex characters of the token's hash: the name to revoke it by.
    pub session_id: String,
    pub created_ms: u64,
    /// True for the session the request itself was made with.
    pub current: bool,
}

/// A user in a contact, request or block list, with their public profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactEntry {
    #[serde(flatten)]
    pub profile: Profile,
    /// When the relation (contact, request or block) began, ms since the Unix epoch.
    pub since_ms: u64,
    /// For contacts: whether they are connected now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceInfo>,
}

/// A contact's presence as of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub status: PresenceStatus,
    /// While offline: when last connected, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
}

/// A frame from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        version: u32,
        user_id: UserId,
        username: String,
        /// The node this connection is on.
        node_id: NodeId,
        limits: Limits,
        /// Send something (a `ping` will do) at least this often, or be closed as dead.
        heartbeat_ms: u64,
        /// The user's latest event seq when the connection attached.
        #[serde(default)]
        event_head: EventSeq,
        /// The highest event seq any device of the user acknowledged (`ack_events`).
        #[serde(default)]
        acked_event_seq: EventSeq,
    },
    Pong {
        id: String,
    },
    Conversation {
        id: String,
        #[serde(flatten)]
        info: ConversationInfo,
    },
    /// The message is stored (and, from the replication issue on, on a majority of replicas).
    Ack {
        id: String,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        seq: Seq,
        ts_ms: u64,
        /// True when this client message id was already stored: `seq` is the original one.
        duplicate: bool,
    },
    History {
        id: String,
        conversation: ConversationId,
        head: Seq,
        messages: Vec<Message>,
    },
    /// A new message in one of the user's conversations (including the user's own sends from
    /// any connection).
    Message {
        /// The event's position in the user's stream: the resume cursor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_seq: Option<EventSeq>,
        #[serde(flatten)]
        message: Message,
    },
    /// Answers `get_profile` and `update_profile`.
    Profile {
        id: String,
        #[serde(flatten)]
        profile: Profile,
    },
    /// Answers `get_settings` and `update_settings`.
    Settings {
        id: String,
        #[serde(flatten)]
        settings: Settings,
    },
    /// Answers `list_sessions`.
    Sessions {
        id: String,
        sessions: Vec<SessionInfo>,
    },
    /// Answers `revoke_session`: the session is revoked on every node.
    SessionRevoked {
        id: String,
        session_id: String,
    },
    /// Answers `list_contacts`. Each list is ordered by user id.
    Contacts {
        id: String,
        contacts: Vec<ContactEntry>,
        /// Requests others sent me.
        incoming: Vec<ContactEntry>,
        /// Requests I sent.
        outgoing: Vec<ContactEntry>,
    },
    /// Answers `list_blocks`, ordered by user id.
    Blocks {
        id: String,
        blocked: Vec<ContactEntry>,
    },
    /// Answers the contact and block requests: how `user_id` stands with me now.
    Relation {
        id: String,
        user_id: UserId,
        relation: Relation,
    },
    /// A request that needs no other answer was done.
    Ok {
        id: String,
    },
    Group {
        id: String,
        group: GroupInfo,
    },
    Groups {
        id: String,
        groups: Vec<GroupInfo>,
    },
    BroadcastResult {
        id: String,
        results: Vec<BroadcastOutcome>,
    },
    Conversations {
        id: String,
        conversations: Vec<ConversationSummary>,
    },
    /// The user read up to `seq` (on this or another device).
    Read {
        event_seq: EventSeq,
        conversation: ConversationId,
        seq: Seq,
    },
    /// Another member read up to `seq`.
    Receipt {
        event_seq: EventSeq,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    },
    /// The relation with `user` changed (see the event stream).
    Contact {
        event_seq: EventSeq,
        user: UserId,
        relation: Relation,
    },
    /// `user` changed their profile: fetch it again if shown.
    ProfileChanged {
        event_seq: EventSeq,
        user: UserId,
        /// The profile as the change left it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<Profile>,
    },
    /// Ephemeral: `user` is typing; forget it after `expires_ms` unless repeated.
    Typing {
        conversation: ConversationId,
        user: UserId,
        expires_ms: u64,
    },
    /// Ephemeral: a contact's presence changed.
    Presence {
        user: UserId,
        status: PresenceStatus,
        /// When the user was last connected (ms since the Unix epoch), while offline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen_ms: Option<u64>,
    },
    /// The `resume_from` cursor cannot be replayed (too far behind, or unknown): fetch each
    /// conversation's history, then continue from `event_head`.
    Resync {
        event_head: EventSeq,
    },
    /// To the connection that sent a message: the message is event `event_seq` of the user's
    /// stream. That connection holds it already (from the ack), so only its cursor moves;
    /// pushes to one connection stay in stream order, so every earlier event was pushed first.
    EventCursor {
        event_seq: EventSeq,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(flatten)]
        error: WireError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reports_stable_codes_and_keeps_the_request_id() {
        let (id, e) = ClientFrame::decode("{nope").expect_err("bad json");
        assert_eq!((id, e.code), (None, ErrorCode::MalformedFrame));
        let (id, e) = ClientFrame::decode(r#"{"type":"fly","id":"7"}"#).expect_err("unknown");
        assert_eq!(
            (id.as_deref(), e.code),
            (Some("7"), ErrorCode::UnknownFrame)
        );
        let (id, e) = ClientFrame::decode(r#"{"type":"send","id":"8","conversation":"dm:1:2"}"#)
            .expect_err("missing fields");
        assert_eq!(
            (id.as_deref(), e.code),
            (Some("8"), ErrorCode::InvalidArgument)
        );
        let (_, e) = ClientFrame::decode("[1,2]").expect_err("not an object");
        assert_eq!(e.code, ErrorCode::MalformedFrame);
    }

    #[test]
    fn send_frame_round_trips() {
        let text =
            r#"{"type":"send","id":"1","conversation":"dm:1:2","client_msg_id":"c1","body":"hi"}"#;
        let frame = ClientFrame::decode(text).expect("valid");
        assert_eq!(
            frame,
            ClientFrame::Send {
                id: "1".into(),
                conversation: ConversationId::direct(UserId(2), UserId(1)),
                client_msg_id: ClientMsgId::new("c1").expect("valid"),
                body: "hi".into(),
                refers: None,
                attachments: Vec::new(),
            }
        );
        let edit = r#"{"type":"send","id":"2","conversation":"dm:1:2","client_msg_id":"c2","body":"hey","refers":{"kind":"edit","seq":1}}"#;
        let ClientFrame::Send { refers, .. } = ClientFrame::decode(edit).expect("valid") else {
            panic!("not a send");
        };
        assert_eq!(refers, Some(MessageRef::Edit { seq: Seq(1) }));
        let bad = r#"{"type":"send","id":"3","conversation":"dm:1:2","client_msg_id":"c3","body":"x","refers":{"kind":"shout","seq":1}}"#;
        assert!(ClientFrame::decode(bad).is_err());
    }

    #[test]
    fn server_frames_are_flat_json() {
        let f = ServerFrame::Error {
            id: Some("3".into()),
            error: WireError::new(ErrorCode::Forbidden, "not a member"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&f).expect("encodes")).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["retry"], false);
        let back: ServerFrame = serde_json::from_value(v).expect("decodes");
        assert_eq!(back, f);
    }

    #[test]
    fn every_client_frame_type_is_listed_and_decodes() {
        let frames = [
            r#"{"type":"get_profile","id":"1"}"#,
            r#"{"type":"get_profile","id":"1","username":"bob"}"#,
            r#"{"type":"update_profile","id":"1","status_text":"away"}"#,
            r#"{"type":"get_settings","id":"1"}"#,
            r#"{"type":"update_settings","id":"1","dm_policy":"contacts"}"#,
            r#"{"type":"list_sessions","id":"1"}"#,
            r#"{"type":"revoke_session","id":"1","session_id":"0123456789abcdef"}"#,
            r#"{"type":"list_contacts","id":"1"}"#,
            r#"{"type":"request_contact","id":"1","user_id":2}"#,
            r#"{"type":"accept_contact","id":"1","user_id":2}"#,
            r#"{"type":"decline_contact","id":"1","user_id":2}"#,
            r#"{"type":"cancel_contact","id":"1","user_id":2}"#,
            r#"{"type":"remove_contact","id":"1","user_id":2}"#,
            r#"{"type":"block_user","id":"1","user_id":2}"#,
            r#"{"type":"unblock_user","id":"1","user_id":2}"#,
            r#"{"type":"list_blocks","id":"1"}"#,
        ];
        for text in frames {
            let frame = ClientFrame::decode(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(frame.id(), Some("1"));
            let again = serde_json::to_string(&frame).expect("encodes");
            assert_eq!(ClientFrame::decode(&again).expect("round trip"), frame);
        }
        let (_, e) =
            ClientFrame::decode(r#"{"type":"update_settings","id":"1","dm_policy":"friends"}"#)
                .expect_err("unknown policy");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        let (_, e) = ClientFrame::decode(r#"{"type":"block_user","id":"1","user_id":"x"}"#)
            .expect_err("bad id");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn update_profile_tells_a_missing_avatar_from_a_null_one() {
        let avatar = |text: &str| match ClientFrame::decode(text).expect("valid") {
            ClientFrame::UpdateProfile { avatar, .. } => avatar,
            other => panic!("{other:?}"),
        };
        assert_eq!(avatar(r#"{"type":"update_profile","id":"1"}"#), None);
        assert_eq!(
            avatar(r#"{"type":"update_profile","id":"1","avatar":null}"#),
            Some(None)
        );
        assert_eq!(
            avatar(r#"{"type":"update_profile","id":"1","avatar":"m1"}"#),
            Some(Some("m1".into()))
        );
        let clear = ClientFrame::UpdateProfile {
            id: "1".into(),
            display_name: None,
            status_text: None,
            avatar: Some(None),
        };
        let text = serde_json::to_string(&clear).expect("encodes");
        assert_eq!(text, r#"{"type":"update_profile","id":"1","avatar":null}"#);
    }

    #[test]
    fn social_server_frames_round_trip() {
        let profile = Profile {
            user_id: UserId(2),
            username: "bob".into(),
            display_name: "Bob".into(),
            status_text: "".into(),
            avatar: None,
        };
        let frames = [
            ServerFrame::Profile {
                id: "1".into(),
                profile: profile.clone(),
            },
            ServerFrame::Settings {
                id: "1".into(),
                settings: Settings {
                    dm_policy: DmPolicy::Contacts,
                    push_preview: true,
                },
            },
            ServerFrame::Contacts {
                id: "1".into(),
                contacts: vec![ContactEntry {
                    profile,
                    since_ms: 7,
                    presence: Some(PresenceInfo {
                        status: PresenceStatus::Offline,
                        last_seen_ms: Some(5),
                    }),
                }],
                incoming: vec![],
                outgoing: vec![],
            },
            ServerFrame::Relation {
                id: "1".into(),
                user_id: UserId(2),
                relation: Relation::Contact,
            },
        ];
        for f in frames {
            let text = serde_json::to_string(&f).expect("encodes");
            let back: ServerFrame = serde_json::from_str(&text).expect("decodes");
            assert_eq!(back, f, "{text}");
        }
        let v = serde_json::to_value(ServerFrame::Relation {
            id: "1".into(),
            user_id: UserId(2),
            relation: Relation::Incoming,
        })
        .expect("json");
        assert_eq!(v["relation"], "incoming");
    }
}
