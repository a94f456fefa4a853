//! The metadata state machine that Raft replicates: accounts, usernames, sessions, profiles,
//! settings, contacts, contact requests, blocks, groups and media records (`meta/media.rs`).
//!
//! `apply` is a pure, deterministic function of the state and the command: every node that
//! applies the same log holds the same state. Timestamps come in the command; nothing reads a
//! clock. It also returns the key-value writes that persist the change, so the Raft store can
//! write them in the same batch as the applied log id. Reads (token checks, username lookups,
//! profiles, the direct-message policy) come from the local copy.
//!
//! Keys (user ids are 8 bytes big-endian; every value starts with a format version):
//!
//! | key | value |
//! |---|---|
//! | `u/` ++ user | account |
//! | `n/` ++ username | user id |
//! | `s/` ++ token hash (hex) | session |
//! | `p/` ++ user | profile (absent until the user first changes it) |
//! | `o/` ++ user | settings (absent until the user first changes them) |
//! | `k/` ++ user ++ other | contact since (ms); written for both directions |
//! | `q/` ++ from ++ to | contact request sent at (ms) |
//! | `b/` ++ blocker ++ blocked | blocked since (ms) |
//! | `c/next_user` | next user id |
//! | `c/revision` | count of applied social changes (see [`MetaState::revision`]) |
//! | `g/` ++ group | group: name, description, members and roles |
//! | `c/next_group` | next group id |
//! | `c/down`, `c/down_at` | nodes marked down, and the log index of the last change |
//! | `m/` ++ media id | media: uploader, content hash, type, thumbnails, referring conversations |
//!
//! The per-user session index and the incoming-request index are not stored: `load` rebuilds
//! them from `s/` and `q/`, so they can never disagree with what they index (and sessions
//! written before the index existed are in it). The Raft store keeps its own keys under
//! `raft/`, which `load` skips.

use std::collections::{BTreeMap, BTreeSet};

use chat_storage::keys::{decode_u64_v1, decode_versioned, encode_u64_v1, encode_versioned};
use chat_storage::raft_kv::KvPair;
use chat_storage::StorageError;
use chat_types::{
    DmPolicy, GroupChange, GroupId, MediaId, Profile, Relation, Role, Settings, UserId,
};
use serde::{Deserialize, Serialize};

mod media;
pub use media::{BlobRef, MediaCommand, MediaRecord, ThumbRecord};

const CF: &str = "metakey_value";
const FORMAT: u8 = 1;
const KEY_NEXT_USER: &[u8] = b"c/next_user";
const KEY_REVISION: &[u8] = b"c/revision";
const KEY_DOWN: &[u8] = b"c/down";
const KEY_NEXT_GROUP: &[u8] = b"c/next_group";
const GROUP: &[u8; 2] = b"g/";
const KEY_DOWN_AT: &[u8] = b"c/down_at";
/// Characters of the token hash that name a session to its user.
pub const SESSION_ID_LEN: usize = 16;

/// The public name of a session: a prefix of its token hash, never the hash itself.
pub fn session_id(token_hash: &str) -> &str {
    token_hash.get(..SESSION_ID_LEN).unwrap_or(token_hash)
}

/// The address book entry of one node: what openraft stores in its membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Where clients reach the node (HTTP and WebSocket).
    pub http_addr: String,
    /// Where other nodes reach it (Raft and actor messages).
    pub peer_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={} peer={}", self.http_addr, self.peer_addr)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: UserId,
    pub username: String,
    /// argon2id PHC string; never leaves the cluster.
    pub password_hash: String,
    pub created_ms: u64,
}

/// Sessions one user keeps at most: a login beyond this ends the user's oldest session, as a
/// logout would. Without a bound, logging in again and again would grow the replicated
/// metadata without end.
pub const MAX_SESSIONS_PER_USER: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: UserId,
    pub created_ms: u64,
}

/// What a user set of their profile. Unset fields read as the defaults of
/// [`MetaState::profile`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// `None`: the username is shown.
    pub display_name: Option<String>,
    pub status_text: String,
    /// An opaque media id.
    pub avatar: Option<String>,
    pub updated_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub dm_policy: DmPolicy,
    /// Added later: absent (true) in older records.
    #[serde(default = "yes")]
    pub push_preview: bool,
}

fn yes() -> bool {
    true
}

impl Default for SettingsRecord {
    fn default() -> Self {
        SettingsRecord {
            dm_policy: DmPolicy::default(),
            push_preview: true,
        }
    }
}

/// A change to the avatar. (Not `Option<Option<_>>`: MessagePack cannot tell its two
/// "nothing"s apart.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AvatarChange {
    #[default]
    Keep,
    Clear,
    Set(String),
}

/// The answer to a direct-message check, see [`MetaState::direct_message_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectCheck {
    Allowed,
    /// One of the two blocked the other.
    Blocked,
    /// The recipient takes direct messages from contacts only.
    ContactsOnly,
}

/// A change to the metadata, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Creates a group owned by `creator` with `members` (unknown users refused).
    CreateGroup {
        creator: UserId,
        name: String,
        description: String,
        members: Vec<UserId>,
        now_ms: u64,
        max_members: u32,
    },
    UpdateGroup {
        actor: UserId,
        group: GroupId,
        name: Option<String>,
        description: Option<String>,
    },
    AddMembers {
        actor: UserId,
        group: GroupId,
        users: Vec<UserId>,
        max_members: u32,
    },
    RemoveMember {
        actor: UserId,
        group: GroupId,
        user: UserId,
    },
    LeaveGroup {
        user: UserId,
        group: GroupId,
    },
    SetRole {
        actor: UserId,
        group: GroupId,
        user: UserId,
        role: Role,
    },
    TransferGroup {
        actor: UserId,
        group: GroupId,
        to: UserId,
    },
    DeleteGroup {
        actor: UserId,
        group: GroupId,
    },
    /// Marks a member node down (unreachable: out of the ring, its work moves to the others)
    /// or up again. Proposed by the leader's failure detector.
    SetNodeDown {
        node: u64,
        down: bool,
    },
    /// `username` must already be canonical (see `chat_types::validate_username`).
    RegisterUser {
        username: String,
        password_hash: String,
        now_ms: u64,
    },
    /// `token_hash` is the hex SHA-256 of the bearer token; the token itself is never stored.
    CreateSession {
        token_hash: String,
        user_id: UserId,
        now_ms: u64,
    },
    RevokeSession {
        token_hash: String,
    },
    /// Fields that are `None` (or `Keep`) are left as they are. Values must already be
    /// valid (see `chat_types::validate_display_name` and friends).
    UpdateProfile {
        user_id: UserId,
        display_name: Option<String>,
        status_text: Option<String>,
        avatar: AvatarChange,
        now_ms: u64,
    },
    UpdateSettings {
        user_id: UserId,
        dm_policy: Option<DmPolicy>,
        #[serde(default)]
        push_preview: Option<bool>,
    },
    /// Revokes the session of `user_id` named by `session_id` (see [`session_id`]); another
    /// user's session is not found.
    RevokeUserSession {
        user_id: UserId,
        session_id: String,
    },
    /// `from` asks `to` to become a contact; if `to` already asked `from`, they become
    /// contacts.
    RequestContact {
        from: UserId,
        to: UserId,
        now_ms: u64,
    },
    /// `user_id` accepts the request `from` sent.
    AcceptContact {
        user_id: UserId,
        from: UserId,
        now_ms: u64,
    },
    /// `user_id` declines the request `from` sent.
    DeclineContact {
        user_id: UserId,
        from: UserId,
    },
    /// `user_id` withdraws their own request to `to`.
    CancelContactRequest {
        user_id: UserId,
        to: UserId,
    },
    /// Either side ends a contact relation.
    RemoveContact {
        user_id: UserId,
        other: UserId,
    },
    /// Also ends any contact relation and pending request between the two.
    BlockUser {
        user_id: UserId,
        other: UserId,
        now_ms: u64,
    },
    UnblockUser {
        user_id: UserId,
        other: UserId,
    },
    /// Media records (see [`MediaCommand`]).
    Media(MediaCommand),
    /// Several commands in one log entry, applied in order, each answered on its own (see
    /// `Metadata::write`). Never holds `SetNodeDown`, whose entry index is a ring epoch.
    Batch(Vec<MetaCommand>),
}

/// The result of applying one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// For log entries that carry no command (blank entries, membership changes).
    #[default]
    None,
    NodeDownChanged {
        changed: bool,
    },
    /// The group command was applied; the changes go into the group's log, in this order.
    GroupChanged {
        group: GroupId,
        changes: Vec<GroupChange>,
    },
    GroupRefused {
        reason: GroupRefusal,
    },
    Registered {
        user_id: UserId,
    },
    UsernameTaken,
    SessionCreated,
    UnknownUser,
    SessionRevoked {
        existed: bool,
    },
    /// Every social change answers with the state's [`MetaState::revision`] after it: a node
    /// that waits until its own copy reaches it reads its own write.
    ProfileUpdated {
        revision: u64,
        profile: ProfileRecord,
    },
    SettingsUpdated {
        revision: u64,
        settings: SettingsRecord,
    },
    UserSessionRevoked {
        revision: u64,
    },
    /// The relation of the acting user to the other one, after the change.
    RelationChanged {
        revision: u64,
        relation: Relation,
    },
    /// A user named themselves where another user is needed.
    SelfTarget,
    /// One of the two blocked the other.
    Blocked,
    /// Accept, decline or cancel without such a request.
    NoRequest,
    /// Remove without a contact relation.
    NotContacts,
    /// No session of this user has that id.
    UnknownSession,
    MediaAdded,
    /// A media with that id exists already.
    MediaExists,
    /// The upload would take its uploader past the quota.
    MediaQuotaExceeded {
        used: u64,
        quota: u64,
    },
    MediaAttached,
    /// A named media does not exist (or, to publish, is not the user's).
    UnknownMedia,
    /// The answers to a [`MetaCommand::Batch`], in its order.
    Batch(Vec<MetaResponse>),
}

/// One key-value write that persists part of an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Edges from one user to others, with the time each began.
type Edges = BTreeMap<UserId, BTreeMap<UserId, u64>>;

/// The replicated metadata, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    users: BTreeMap<UserId, Account>,
    usernames: BTreeMap<String, UserId>,
    sessions: BTreeMap<String, SessionRecord>,
    /// Token hashes of each user's sessions. Derived from `sessions`; not stored.
    sessions_by_user: BTreeMap<UserId, BTreeSet<String>>,
    profiles: BTreeMap<UserId, ProfileRecord>,
    settings: BTreeMap<UserId, SettingsRecord>,
    /// Symmetric: `a -> b` exactly when `b -> a`.
    contacts: Edges,
    /// Contact requests, sender -> recipient.
    requests_out: Edges,
    /// The same requests, recipient -> sender. Derived from `requests_out`; not stored.
    requests_in: Edges,
    /// Blocker -> blocked.
    blocks: Edges,
    next_user: u64,
    revision: u64,
    /// Member nodes marked down by the failure detector: out of the ring until marked up.
    down: BTreeSet<u64>,
    /// The log index of the last change to `down`: part of the ring epoch.
    down_changed_at: u64,
    groups: BTreeMap<GroupId, GroupRecord>,
    /// Groups of each member. Derived from `groups`; not stored.
    groups_by_user: BTreeMap<UserId, BTreeSet<GroupId>>,
    next_group: u64,
    media: BTreeMap<MediaId, MediaRecord>,
    /// Bytes each user uploaded. Derived from `media`; not stored.
    media_usage: BTreeMap<UserId, u64>,
}

/// Why a group command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRefusal {
    NotFound,
    Forbidden,
    Full,
    Invalid(String),
}

/// One group, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub description: String,
    pub members: BTreeMap<UserId, Role>,
    pub created_ms: u64,
}

fn group_key(id: GroupId) -> Vec<u8> {
    let mut k = GROUP.to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn edge_insert(edges: &mut Edges, a: UserId, b: UserId, ms: u64) {
    edges.entry(a).or_default().insert(b, ms);
}

/// Removes `a -> b`; drops `a`'s map when it empties, so that a state and its reload compare
/// equal.
fn edge_remove(edges: &mut Edges, a: UserId, b: UserId) -> bool {
    let Some(m) = edges.get_mut(&a) else {
        return false;
    };
    let removed = m.remove(&b).is_some();
    if m.is_empty() {
        edges.remove(&a);
    }
    removed
}

fn edge_has(edges: &Edges, a: UserId, b: UserId) -> bool {
    edges.get(&a).is_some_and(|m| m.contains_key(&b))
}

fn edge_list(edges: &Edges, a: UserId) -> Vec<(UserId, u64)> {
    edges
        .get(&a)
        .map(|m| m.iter().map(|(b, ms)| (*b, *ms)).collect())
        .unwrap_or_default()
}

fn user_key(id: UserId) -> Vec<u8> {
    let mut k = b"u/".to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn username_key(name: &str) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn session_key(hash: &str) -> Vec<u8> {
    let mut k = b"s/".to_vec();
    k.extend_from_slice(hash.as_bytes());
    k
}

fn profile_key(id: UserId) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn settings_key(id: UserId) -> Vec<u8> {
    let mut k = b"o/".to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// `prefix ++ a ++ b`: a contact (`k/`), request (`q/`) or block (`b/`) edge.
fn edge_key(prefix: &[u8; 2], a: UserId, b: UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&a.0.to_be_bytes());
    k.extend_from_slice(&b.0.to_be_bytes());
    k
}

const CONTACT: &[u8; 2] = b"k/";
const REQUEST: &[u8; 2] = b"q/";
const BLOCK: &[u8; 2] = b"b/";

fn corrupt(key: &[u8]) -> StorageError {
    StorageError::Corrupt {
        cf: CF,
        key: String::from_utf8_lossy(key).into_owned(),
    }
}

fn decode_user(key: &[u8], rest: &[u8]) -> Result<UserId, StorageError> {
    let b: [u8; 8] = rest.try_into().map_err(|_| corrupt(key))?;
    Ok(UserId(u64::from_be_bytes(b)))
}

fn decode_pair(key: &[u8], rest: &[u8]) -> Result<(UserId, UserId), StorageError> {
    if rest.len() != 16 {
        return Err(corrupt(key));
    }
    Ok((decode_user(key, &rest[..8])?, decode_user(key, &rest[8..])?))
}

fn put_edge(prefix: &[u8; 2], a: UserId, b: UserId, ms: u64) -> MetaWrite {
    MetaWrite {
        key: edge_key(prefix, a, b),
        value: Some(encode_u64_v1(ms).to_vec()),
    }
}

fn delete_edge(prefix: &[u8; 2], a: UserId, b: UserId) -> MetaWrite {
    MetaWrite {
        key: edge_key(prefix, a, b),
        value: None,
    }
}

impl MetaState {
    pub fn user(&self, id: UserId) -> Option<&Account> {
        self.users.get(&id)
    }

    pub fn user_by_name(&self, username: &str) -> Option<&Account> {
        self.usernames
            .get(username)
            .and_then(|id| self.users.get(id))
    }

    pub fn session(&self, token_hash: &str) -> Option<&SessionRecord> {
        self.sessions.get(token_hash)
    }

    /// A user's sessions, as (token hash, record), ordered by token hash.
    pub fn sessions_of(&self, user: UserId) -> Vec<(&str, &SessionRecord)> {
        self.sessions_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|h| self.sessions.get(h).map(|rec| (h.as_str(), rec)))
            .collect()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Every user as (id, username, display name: the username until one is set), for
    /// people search.
    pub fn people(&self) -> impl Iterator<Item = (UserId, &str, &str)> + '_ {
        self.users.values().map(|a| {
            let display = self
                .profiles
                .get(&a.user_id)
                .and_then(|p| p.display_name.as_deref())
                .unwrap_or(&a.username);
            (a.user_id, a.username.as_str(), display)
        })
    }

    /// Counts the applied social changes (profiles, settings, contacts, blocks, session
    /// revocations by id). Every node reaches the same value at the same log entry, so a node
    /// that waits for the revision a write answered with reads its own write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user's public profile, with the defaults for what they never set.
    pub fn profile(&self, id: UserId) -> Option<Profile> {
        let account = self.users.get(&id)?;
        let rec = self.profiles.get(&id);
        Some(Profile {
            user_id: id,
            username: account.username.clone(),
            display_name: rec
                .and_then(|r| r.display_name.clone())
                .unwrap_or_else(|| account.username.clone()),
            status_text: rec.map(|r| r.status_text.clone()).unwrap_or_default(),
            avatar: rec.and_then(|r| r.avatar.clone()),
        })
    }

    /// A user's settings (the defaults for a user who never changed them).
    pub fn settings(&self, id: UserId) -> Settings {
        let rec = self.settings.get(&id).cloned().unwrap_or_default();
        Settings {
            dm_policy: rec.dm_policy,
            push_preview: rec.push_preview,
        }
    }

    /// How `other` stands with `viewer`. Being blocked by `other` reads as `None`.
    pub fn relation(&self, viewer: UserId, other: UserId) -> Relation {
        if edge_has(&self.blocks, viewer, other) {
            Relation::Blocked
        } else if edge_has(&self.contacts, viewer, other) {
            Relation::Contact
        } else if edge_has(&self.requests_out, viewer, other) {
            Relation::Outgoing
        } else if edge_has(&self.requests_in, viewer, other) {
            Relation::Incoming
        } else {
            Relation::None
        }
    }

    pub fn is_blocked(&self, blocker: UserId, blocked: UserId) -> bool {
        edge_has(&self.blocks, blocker, blocked)
    }

    pub fn are_contacts(&self, a: UserId, b: UserId) -> bool {
        edge_has(&self.contacts, a, b)
    }

    /// A user's contacts with the time each relation began, ordered by user id.
    pub fn contacts_of(&self, user: UserId) -> Vec<(UserId, u64)> {
        edge_list(&self.contacts, user)
    }

    /// Requests others sent `user`, with when each was sent.
    pub fn incoming_requests(&self, user: UserId) -> Vec<(UserId, u64)> {
        edge_list(&self.requests_in, user)
    }

    /// Requests `user` sent, with when each was sent.
    pub fn outgoing_requests(&self, user: UserId) -> Vec<(UserId, u64)> {
        edge_list(&self.requests_out, user)
    }

    /// The users `user` blocked, with since when.
    pub fn blocked_by(&self, user: UserId) -> Vec<(UserId, u64)> {
        edge_list(&self.blocks, user)
    }

    /// Whether `from` may open, or send in, the direct conversation with `to`: not when
    /// either blocked the other, nor when `to` takes messages from contacts only and `from`
    /// is not one. Notes to self are always allowed.
    pub fn direct_message_check(&self, from: UserId, to: UserId) -> DirectCheck {
        if from == to {
            return DirectCheck::Allowed;
        }
        if self.is_blocked(from, to) || self.is_blocked(to, from) {
            return DirectCheck::Blocked;
        }
        if self.settings(to).dm_policy == DmPolicy::Contacts && !self.are_contacts(from, to) {
            return DirectCheck::ContactsOnly;
        }
        DirectCheck::Allowed
    }

    /// Ends with the revision write when the command changed anything.
    fn bump(&mut self, writes: &mut Vec<MetaWrite>) {
        if !writes.is_empty() {
            self.revision += 1;
            writes.push(MetaWrite {
                key: KEY_REVISION.to_vec(),
                value: Some(encode_u64_v1(self.revision).to_vec()),
            });
        }
    }

    fn relation_reply(
        &mut self,
        user: UserId,
        other: UserId,
        mut writes: Vec<MetaWrite>,
    ) -> Applied {
        self.bump(&mut writes);
        let relation = self.relation(user, other);
        Ok((
            MetaResponse::RelationChanged {
                revision: self.revision,
                relation,
            },
            writes,
        ))
    }

    fn index_session(&mut self, hash: &str, user: UserId) {
        self.sessions_by_user
            .entry(user)
            .or_default()
            .insert(hash.to_owned());
    }

    /// The user's oldest session other than `keep` (by creation time, then token hash: the
    /// same on every node) when the user holds more than [`MAX_SESSIONS_PER_USER`]. The
    /// session just created is kept even when another node's clock made it look older.
    fn oldest_session_beyond_limit(&self, user: UserId, keep: &str) -> Option<String> {
        let hashes = self.sessions_by_user.get(&user)?;
        if hashes.len() <= MAX_SESSIONS_PER_USER {
            return None;
        }
        hashes
            .iter()
            .filter(|h| h.as_str() != keep)
            .filter_map(|h| self.sessions.get(h).map(|r| (r.created_ms, h)))
            .min()
            .map(|(_, h)| h.clone())
    }

    fn unindex_session(&mut self, hash: &str, user: UserId) {
        if let Some(set) = self.sessions_by_user.get_mut(&user) {
            set.remove(hash);
            if set.is_empty() {
                self.sessions_by_user.remove(&user);
            }
        }
    }

    fn make_contacts(&mut self, a: UserId, b: UserId, ms: u64, writes: &mut Vec<MetaWrite>) {
        edge_insert(&mut self.contacts, a, b, ms);
        edge_insert(&mut self.contacts, b, a, ms);
        writes.push(put_edge(CONTACT, a, b, ms));
        writes.push(put_edge(CONTACT, b, a, ms));
    }

    fn drop_contacts(&mut self, a: UserId, b: UserId, writes: &mut Vec<MetaWrite>) -> bool {
        let ab = edge_remove(&mut self.contacts, a, b);
        let ba = edge_remove(&mut self.contacts, b, a);
        if ab || ba {
            writes.push(delete_edge(CONTACT, a, b));
            writes.push(delete_edge(CONTACT, b, a));
        }
        ab || ba
    }

    fn add_request(&mut self, from: UserId, to: UserId, ms: u64, writes: &mut Vec<MetaWrite>) {
        edge_insert(&mut self.requests_out, from, to, ms);
        edge_insert(&mut self.requests_in, to, from, ms);
        writes.push(put_edge(REQUEST, from, to, ms));
    }

    fn drop_request(&mut self, from: UserId, to: UserId, writes: &mut Vec<MetaWrite>) -> bool {
        let removed = edge_remove(&mut self.requests_out, from, to);
        edge_remove(&mut self.requests_in, to, from);
        if removed {
            writes.push(delete_edge(REQUEST, from, to));
        }
        removed
    }

    pub fn group(&self, id: GroupId) -> Option<&GroupRecord> {
        self.groups.get(&id)
    }

    /// The groups `user` is a member of.
    pub fn groups_of(&self, user: UserId) -> Vec<GroupId> {
        self.groups_by_user
            .get(&user)
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The members of a group (empty when it does not exist).
    pub fn group_members(&self, id: GroupId) -> Vec<UserId> {
        self.groups
            .get(&id)
            .map(|g| g.members.keys().copied().collect())
            .unwrap_or_default()
    }

    fn index_group(&mut self, id: GroupId) {
        for set in self.groups_by_user.values_mut() {
            set.remove(&id);
        }
        if let Some(g) = self.groups.get(&id) {
            for user in g.members.keys() {
                self.groups_by_user.entry(*user).or_default().insert(id);
            }
        }
        self.groups_by_user.retain(|_, set| !set.is_empty());
    }

    /// Group commands: permissions are checked here, so every node agrees on them.
    fn apply_group(&mut self, cmd: &MetaCommand) -> Applied {
        use GroupRefusal::*;
        let refuse = |reason| Ok((MetaResponse::GroupRefused { reason }, Vec::new()));
        let role_of = |g: &GroupRecord, u: UserId| g.members.get(&u).copied();
        let (id, changes) = match cmd {
            MetaCommand::CreateGroup {
                creator,
                name,
                description,
                members,
                now_ms,
                max_members,
            } => {
                let mut set: BTreeMap<UserId, Role> = BTreeMap::new();
                set.insert(*creator, Role::Owner);
                for m in members {
                    if !self.users.contains_key(m) {
                        return refuse(Invalid(format!("no user {m}")));
                    }
                    set.entry(*m).or_insert(Role::Member);
                }
                if set.len() > *max_members as usize {
                    return refuse(Full);
                }
                let id = GroupId(self.next_group.max(1));
                self.next_group = id.0 + 1;
                // The first members are in the group itself; one change marks the creation.
                let changes = vec![GroupChange::Created];
                self.groups.insert(
                    id,
                    GroupRecord {
                        name: name.clone(),
                        description: description.clone(),
                        members: set,
                        created_ms: *now_ms,
                    },
                );
                (id, changes)
            }
            MetaCommand::UpdateGroup {
                actor,
                group,
                name,
                description,
            } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                if !matches!(role_of(g, *actor), Some(Role::Owner | Role::Admin)) {
                    return refuse(if g.members.contains_key(actor) {
                        Forbidden
                    } else {
                        NotFound
                    });
                }
                if let Some(n) = name {
                    g.name = n.clone();
                }
                if let Some(d) = description {
                    g.description = d.clone();
                }
                (*group, vec![GroupChange::Updated])
            }
            MetaCommand::AddMembers {
                actor,
                group,
                users,
                max_members,
            } => {
                if let Some(u) = users.iter().find(|u| !self.users.contains_key(u)) {
                    return refuse(Invalid(format!("no user {u}")));
                }
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                if !matches!(role_of(g, *actor), Some(Role::Owner | Role::Admin)) {
                    return refuse(if g.members.contains_key(actor) {
                        Forbidden
                    } else {
                        NotFound
                    });
                }
                let new: Vec<UserId> = users
                    .iter()
                    .copied()
                    .filter(|u| !g.members.contains_key(u))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if g.members.len() + new.len() > *max_members as usize {
                    return refuse(Full);
                }
                for u in &new {
                    g.members.insert(*u, Role::Member);
                }
                (
                    *group,
                    new.into_iter()
                        .map(|user| GroupChange::MemberAdded { user })
                        .collect(),
                )
            }
            MetaCommand::RemoveMember { actor, group, user } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                let (Some(by), Some(target)) = (role_of(g, *actor), role_of(g, *user)) else {
                    return refuse(NotFound);
                };
                // The owner removes anyone but itself; an admin removes plain members.
                let allowed = match by {
                    Role::Owner => target != Role::Owner,
                    Role::Admin => target == Role::Member,
                    Role::Member => false,
                };
                if !allowed {
                    return refuse(Forbidden);
                }
                g.members.remove(user);
                (*group, vec![GroupChange::MemberRemoved { user: *user }])
            }
            MetaCommand::LeaveGroup { user, group } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                match role_of(g, *user) {
                    None => return refuse(NotFound),
                    Some(Role::Owner) => {
                        return refuse(Invalid(
                            "the owner transfers the group or deletes it instead".into(),
                        ))
                    }
                    Some(_) => {}
                }
                g.members.remove(user);
                (*group, vec![GroupChange::MemberLeft { user: *user }])
            }
            MetaCommand::SetRole {
                actor,
                group,
                user,
                role,
            } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                if role_of(g, *actor) != Some(Role::Owner) {
                    return refuse(if g.members.contains_key(actor) {
                        Forbidden
                    } else {
                        NotFound
                    });
                }
                if *role == Role::Owner {
                    return refuse(Invalid(
                        "transfer the group to make someone its owner".into(),
                    ));
                }
                match role_of(g, *user) {
                    None => return refuse(NotFound),
                    Some(Role::Owner) => {
                        return refuse(Invalid("the owner's role is owner".into()))
                    }
                    Some(_) => {}
                }
                g.members.insert(*user, *role);
                (
                    *group,
                    vec![GroupChange::RoleChanged {
                        user: *user,
                        role: *role,
                    }],
                )
            }
            MetaCommand::TransferGroup { actor, group, to } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return refuse(NotFound);
                };
                if role_of(g, *actor) != Some(Role::Owner) {
                    return refuse(if g.members.contains_key(actor) {
                        Forbidden
                    } else {
                        NotFound
                    });
                }
                if role_of(g, *to).is_none() || to == actor {
                    return refuse(Invalid("transfer to another member".into()));
                }
                g.members.insert(*actor, Role::Admin);
                g.members.insert(*to, Role::Owner);
                (*group, vec![GroupChange::OwnerChanged { user: *to }])
            }
            MetaCommand::DeleteGroup { actor, group } => {
                let Some(g) = self.groups.get(group) else {
                    return refuse(NotFound);
                };
                if role_of(g, *actor) != Some(Role::Owner) {
                    return refuse(if g.members.contains_key(actor) {
                        Forbidden
                    } else {
                        NotFound
                    });
                }
                self.groups.remove(group);
                (*group, vec![GroupChange::Deleted])
            }
            _ => return refuse(Invalid("not a group command".into())),
        };
        self.index_group(id);
        let mut writes = vec![MetaWrite {
            key: KEY_NEXT_GROUP.to_vec(),
            value: Some(encode_u64_v1(self.next_group).to_vec()),
        }];
        writes.push(match self.groups.get(&id) {
            Some(g) => MetaWrite {
                key: group_key(id),
                value: Some(encode_versioned(CF, FORMAT, g)?),
            },
            None => MetaWrite {
                key: group_key(id),
                value: None,
            },
        });
        Ok((MetaResponse::GroupChanged { group: id, changes }, writes))
    }

    /// Member nodes currently marked down.
    pub fn down_nodes(&self) -> &BTreeSet<u64> {
        &self.down
    }

    /// The log index of the last up/down change (0 when none).
    pub fn down_changed_at(&self) -> u64 {
        self.down_changed_at
    }

    /// Applies the command of the log entry at `index`. Deterministic: no clock, no
    /// randomness, no I/O; the index is the entry's own, the same on every node.
    pub fn apply_at(&mut self, index: u64, cmd: &MetaCommand) -> Applied {
        if let MetaCommand::SetNodeDown { node, down } = cmd {
            let changed = if *down {
                self.down.insert(*node)
            } else {
                self.down.remove(node)
            };
            if !changed {
                return Ok((MetaResponse::NodeDownChanged { changed }, Vec::new()));
            }
            self.down_changed_at = index;
            let nodes: Vec<u64> = self.down.iter().copied().collect();
            let writes = vec![
                MetaWrite {
                    key: KEY_DOWN.to_vec(),
                    value: Some(encode_versioned(CF, FORMAT, &nodes)?),
                },
                MetaWrite {
                    key: KEY_DOWN_AT.to_vec(),
                    value: Some(encode_u64_v1(index).to_vec()),
                },
            ];
            return Ok((MetaResponse::NodeDownChanged { changed }, writes));
        }
        if let MetaCommand::Batch(cmds) = cmd {
            let mut responses = Vec::with_capacity(cmds.len());
            let mut writes = Vec::new();
            for cmd in cmds {
                let (response, cmd_writes) = self.apply_at(index, cmd)?;
                responses.push(response);
                writes.extend(cmd_writes);
            }
            return Ok((MetaResponse::Batch(responses), writes));
        }
        self.apply(cmd)
    }

    /// Applies one command. Deterministic: no clock, no randomness, no I/O.
    pub fn apply(&mut self, cmd: &MetaCommand) -> Applied {
        match cmd {
            MetaCommand::SetNodeDown { .. } | MetaCommand::Batch(_) => self.apply_at(0, cmd),
            MetaCommand::CreateGroup { .. }
            | MetaCommand::UpdateGroup { .. }
            | MetaCommand::AddMembers { .. }
            | MetaCommand::RemoveMember { .. }
            | MetaCommand::LeaveGroup { .. }
            | MetaCommand::SetRole { .. }
            | MetaCommand::TransferGroup { .. }
            | MetaCommand::DeleteGroup { .. } => self.apply_group(cmd),
            MetaCommand::Media(m) => self.apply_media(m),
            MetaCommand::RegisterUser {
                username,
                password_hash,
                now_ms,
            } => {
                if self.usernames.contains_key(username) {
                    return Ok((MetaResponse::UsernameTaken, Vec::new()));
                }
                let user_id = UserId(self.next_user.max(1));
                self.next_user = user_id.0 + 1;
                let account = Account {
                    user_id,
                    username: username.clone(),
                    password_hash: password_hash.clone(),
                    created_ms: *now_ms,
                };
                let writes = vec![
                    MetaWrite {
                        key: user_key(user_id),
                        value: Some(encode_versioned(CF, FORMAT, &account)?),
                    },
                    MetaWrite {
                        key: username_key(username),
                        value: Some(encode_u64_v1(user_id.0).to_vec()),
                    },
                    MetaWrite {
                        key: KEY_NEXT_USER.to_vec(),
                        value: Some(encode_u64_v1(self.next_user).to_vec()),
                    },
                ];
                self.usernames.insert(username.clone(), user_id);
                self.users.insert(user_id, account);
                Ok((MetaResponse::Registered { user_id }, writes))
            }
            MetaCommand::CreateSession {
                token_hash,
                user_id,
                now_ms,
            } => {
                if !self.users.contains_key(user_id) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                let rec = SessionRecord {
                    user_id: *user_id,
                    created_ms: *now_ms,
                };
                let mut writes = vec![MetaWrite {
                    key: session_key(token_hash),
                    value: Some(encode_versioned(CF, FORMAT, &rec)?),
                }];
                if let Some(old) = self.sessions.insert(token_hash.clone(), rec) {
                    self.unindex_session(token_hash, old.user_id);
                }
                self.index_session(token_hash, *user_id);
                while let Some(oldest) = self.oldest_session_beyond_limit(*user_id, token_hash) {
                    self.sessions.remove(&oldest);
                    self.unindex_session(&oldest, *user_id);
                    writes.push(MetaWrite {
                        key: session_key(&oldest),
                        value: None,
                    });
                }
                Ok((MetaResponse::SessionCreated, writes))
            }
            MetaCommand::RevokeSession { token_hash } => {
                let removed = self.sessions.remove(token_hash);
                let existed = removed.is_some();
                if let Some(old) = removed {
                    self.unindex_session(token_hash, old.user_id);
                }
                let writes = if existed {
                    vec![MetaWrite {
                        key: session_key(token_hash),
                        value: None,
                    }]
                } else {
                    Vec::new()
                };
                Ok((MetaResponse::SessionRevoked { existed }, writes))
            }
            MetaCommand::UpdateProfile {
                user_id,
                display_name,
                status_text,
                avatar,
                now_ms,
            } => {
                if !self.users.contains_key(user_id) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                let mut rec = self.profiles.get(user_id).cloned().unwrap_or_default();
                if let Some(name) = display_name {
                    rec.display_name = Some(name.clone());
                }
                if let Some(text) = status_text {
                    rec.status_text = text.clone();
                }
                match avatar {
                    AvatarChange::Keep => {}
                    AvatarChange::Clear => rec.avatar = None,
                    AvatarChange::Set(a) => rec.avatar = Some(a.clone()),
                }
                rec.updated_ms = *now_ms;
                let mut writes = vec![MetaWrite {
                    key: profile_key(*user_id),
                    value: Some(encode_versioned(CF, FORMAT, &rec)?),
                }];
                self.profiles.insert(*user_id, rec.clone());
                self.bump(&mut writes);
                Ok((
                    MetaResponse::ProfileUpdated {
                        revision: self.revision,
                        profile: rec,
                    },
                    writes,
                ))
            }
            MetaCommand::UpdateSettings {
                user_id,
                dm_policy,
                push_preview,
            } => {
                if !self.users.contains_key(user_id) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                let mut rec = self.settings.get(user_id).cloned().unwrap_or_default();
                if let Some(policy) = dm_policy {
                    rec.dm_policy = *policy;
                }
                if let Some(preview) = push_preview {
                    rec.push_preview = *preview;
                }
                let mut writes = vec![MetaWrite {
                    key: settings_key(*user_id),
                    value: Some(encode_versioned(CF, FORMAT, &rec)?),
                }];
                self.settings.insert(*user_id, rec.clone());
                self.bump(&mut writes);
                Ok((
                    MetaResponse::SettingsUpdated {
                        revision: self.revision,
                        settings: rec,
                    },
                    writes,
                ))
            }
            MetaCommand::RevokeUserSession {
                user_id,
                session_id: wanted,
            } => {
                let hashes: Vec<String> = self
                    .sessions_by_user
                    .get(user_id)
                    .into_iter()
                    .flatten()
                    .filter(|h| session_id(h) == wanted.as_str())
                    .cloned()
                    .collect();
                if hashes.is_empty() {
                    return Ok((MetaResponse::UnknownSession, Vec::new()));
                }
                let mut writes = Vec::with_capacity(hashes.len() + 1);
                for hash in hashes {
                    self.sessions.remove(&hash);
                    self.unindex_session(&hash, *user_id);
                    writes.push(MetaWrite {
                        key: session_key(&hash),
                        value: None,
                    });
                }
                self.bump(&mut writes);
                Ok((
                    MetaResponse::UserSessionRevoked {
                        revision: self.revision,
                    },
                    writes,
                ))
            }
            MetaCommand::RequestContact { from, to, now_ms } => {
                let (from, to) = (*from, *to);
                if from == to {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                if !self.users.contains_key(&from) || !self.users.contains_key(&to) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                if self.is_blocked(from, to) || self.is_blocked(to, from) {
                    return Ok((MetaResponse::Blocked, Vec::new()));
                }
                let mut writes = Vec::new();
                if self.are_contacts(from, to) || edge_has(&self.requests_out, from, to) {
                    // Already done: a retry changes nothing.
                } else if self.drop_request(to, from, &mut writes) {
                    self.make_contacts(from, to, *now_ms, &mut writes);
                } else {
                    self.add_request(from, to, *now_ms, &mut writes);
                }
                self.relation_reply(from, to, writes)
            }
            MetaCommand::AcceptContact {
                user_id,
                from,
                now_ms,
            } => {
                let (me, from) = (*user_id, *from);
                if me == from {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                let mut writes = Vec::new();
                if !self.are_contacts(me, from) {
                    if !self.drop_request(from, me, &mut writes) {
                        return Ok((MetaResponse::NoRequest, Vec::new()));
                    }
                    self.make_contacts(me, from, *now_ms, &mut writes);
                }
                self.relation_reply(me, from, writes)
            }
            MetaCommand::DeclineContact { user_id, from } => {
                let (me, from) = (*user_id, *from);
                if me == from {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                let mut writes = Vec::new();
                if !self.drop_request(from, me, &mut writes) {
                    return Ok((MetaResponse::NoRequest, Vec::new()));
                }
                self.relation_reply(me, from, writes)
            }
            MetaCommand::CancelContactRequest { user_id, to } => {
                let (me, to) = (*user_id, *to);
                if me == to {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                let mut writes = Vec::new();
                if !self.drop_request(me, to, &mut writes) {
                    return Ok((MetaResponse::NoRequest, Vec::new()));
                }
                self.relation_reply(me, to, writes)
            }
            MetaCommand::RemoveContact { user_id, other } => {
                let (me, other) = (*user_id, *other);
                if me == other {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                let mut writes = Vec::new();
                if !self.drop_contacts(me, other, &mut writes) {
                    return Ok((MetaResponse::NotContacts, Vec::new()));
                }
                self.relation_reply(me, other, writes)
            }
            MetaCommand::BlockUser {
                user_id,
                other,
                now_ms,
            } => {
                let (me, other) = (*user_id, *other);
                if me == other {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                if !self.users.contains_key(&me) || !self.users.contains_key(&other) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                let mut writes = Vec::new();
                if !self.is_blocked(me, other) {
                    edge_insert(&mut self.blocks, me, other, *now_ms);
                    writes.push(put_edge(BLOCK, me, other, *now_ms));
                }
                self.drop_contacts(me, other, &mut writes);
                self.drop_request(me, other, &mut writes);
                self.drop_request(other, me, &mut writes);
                self.relation_reply(me, other, writes)
            }
            MetaCommand::UnblockUser { user_id, other } => {
                let (me, other) = (*user_id, *other);
                if me == other {
                    return Ok((MetaResponse::SelfTarget, Vec::new()));
                }
                let mut writes = Vec::new();
                if edge_remove(&mut self.blocks, me, other) {
                    writes.push(delete_edge(BLOCK, me, other));
                }
                self.relation_reply(me, other, writes)
            }
        }
    }

    /// Rebuilds the state from its persisted key-value pairs (in any order). Keys under
    /// `raft/` belong to the Raft store and are skipped.
    pub fn load<I>(pairs: I) -> Result<MetaState, StorageError>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut state = MetaState::default();
        for (k, v) in pairs {
            if let Some(rest) = k.strip_prefix(b"u/") {
                decode_user(&k, rest)?;
                let account: Account = decode_versioned(CF, FORMAT, &k, &v)?;
                state.users.insert(account.user_id, account);
            } else if let Some(rest) = k.strip_prefix(b"n/") {
                let id = UserId(decode_u64_v1(CF, &k, &v)?);
                state
                    .usernames
                    .insert(String::from_utf8_lossy(rest).into_owned(), id);
            } else if let Some(rest) = k.strip_prefix(b"s/") {
                let rec: SessionRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                state
                    .sessions
                    .insert(String::from_utf8_lossy(rest).into_owned(), rec);
            } else if let Some(rest) = k.strip_prefix(b"p/") {
                let id = decode_user(&k, rest)?;
                let rec: ProfileRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                state.profiles.insert(id, rec);
            } else if let Some(rest) = k.strip_prefix(b"o/") {
                let id = decode_user(&k, rest)?;
                let rec: SettingsRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                state.settings.insert(id, rec);
            } else if let Some(rest) = k.strip_prefix(CONTACT) {
                let (a, b) = decode_pair(&k, rest)?;
                edge_insert(&mut state.contacts, a, b, decode_u64_v1(CF, &k, &v)?);
            } else if let Some(rest) = k.strip_prefix(REQUEST) {
                let (from, to) = decode_pair(&k, rest)?;
                let ms = decode_u64_v1(CF, &k, &v)?;
                edge_insert(&mut state.requests_out, from, to, ms);
                edge_insert(&mut state.requests_in, to, from, ms);
            } else if let Some(rest) = k.strip_prefix(BLOCK) {
                let (a, b) = decode_pair(&k, rest)?;
                edge_insert(&mut state.blocks, a, b, decode_u64_v1(CF, &k, &v)?);
            } else if k == KEY_NEXT_USER {
                state.next_user = decode_u64_v1(CF, &k, &v)?;
            } else if k == KEY_REVISION {
                state.revision = decode_u64_v1(CF, &k, &v)?;
            } else if let Some(rest) = k.strip_prefix(GROUP.as_slice()) {
                if rest.len() != 8 {
                    return Err(corrupt(&k));
                }
                let id = GroupId(u64::from_be_bytes(
                    rest.try_into().map_err(|_| corrupt(&k))?,
                ));
                let record: GroupRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                for user in record.members.keys() {
                    state.groups_by_user.entry(*user).or_default().insert(id);
                }
                state.groups.insert(id, record);
            } else if k == KEY_NEXT_GROUP {
                state.next_group = decode_u64_v1(CF, &k, &v)?;
            } else if k == KEY_DOWN {
                let nodes: Vec<u64> = decode_versioned(CF, FORMAT, &k, &v)?;
                state.down = nodes.into_iter().collect();
            } else if k == KEY_DOWN_AT {
                state.down_changed_at = decode_u64_v1(CF, &k, &v)?;
            } else if let Some(rest) = k.strip_prefix(media::MEDIA.as_slice()) {
                let id = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| MediaId::parse(s).ok())
                    .ok_or_else(|| corrupt(&k))?;
                let record: MediaRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                state.load_media(id, record);
            }
        }
        let index: Vec<(String, UserId)> = state
            .sessions
            .iter()
            .map(|(hash, rec)| (hash.clone(), rec.user_id))
            .collect();
        for (hash, user) in index {
            state.index_session(&hash, user);
        }
        Ok(state)
    }

    /// Every persisted pair of the state, for snapshots: `load(dump())` is the same state.
    pub fn dump(&self) -> Result<Vec<KvPair>, StorageError> {
        let mut out = Vec::with_capacity(
            self.users.len() * 2 + self.sessions.len() + self.profiles.len() + 2,
        );
        for (id, account) in &self.users {
            out.push((user_key(*id), encode_versioned(CF, FORMAT, account)?));
        }
        for (name, id) in &self.usernames {
            out.push((username_key(name), encode_u64_v1(id.0).to_vec()));
        }
        for (hash, rec) in &self.sessions {
            out.push((session_key(hash), encode_versioned(CF, FORMAT, rec)?));
        }
        for (id, rec) in &self.profiles {
            out.push((profile_key(*id), encode_versioned(CF, FORMAT, rec)?));
        }
        for (id, rec) in &self.settings {
            out.push((settings_key(*id), encode_versioned(CF, FORMAT, rec)?));
        }
        for (prefix, edges) in [
            (CONTACT, &self.contacts),
            (REQUEST, &self.requests_out),
            (BLOCK, &self.blocks),
        ] {
            for (a, m) in edges {
                for (b, ms) in m {
                    out.push((edge_key(prefix, *a, *b), encode_u64_v1(*ms).to_vec()));
                }
            }
        }
        out.push((
            KEY_NEXT_USER.to_vec(),
            encode_u64_v1(self.next_user).to_vec(),
        ));
        out.push((KEY_REVISION.to_vec(), encode_u64_v1(self.revision).to_vec()));
        for (id, record) in &self.groups {
            out.push((group_key(*id), encode_versioned(CF, FORMAT, record)?));
        }
        out.push((
            KEY_NEXT_GROUP.to_vec(),
            encode_u64_v1(self.next_group).to_vec(),
        ));
        let down: Vec<u64> = self.down.iter().copied().collect();
        out.push((KEY_DOWN.to_vec(), encode_versioned(CF, FORMAT, &down)?));
        out.push((
            KEY_DOWN_AT.to_vec(),
            encode_u64_v1(self.down_changed_at).to_vec(),
        ));
        for (id, record) in &self.media {
            out.push((media::media_key(id), encode_versioned(CF, FORMAT, record)?));
        }
        Ok(out)
    }
}

/// What [`MetaState::apply`] returns: the answer and the writes that persist the change.
pub type Applied = Result<(MetaResponse, Vec<MetaWrite>), StorageError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Persists `writes` into `kv` as the state machine's store would.
    fn store(kv: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: Vec<MetaWrite>) {
        for w in writes {
            match w.value {
                Some(v) => kv.insert(w.key, v),
                None => kv.remove(&w.key),
            };
        }
    }

    fn register(s: &mut MetaState, name: &str) -> MetaResponse {
        s.apply(&MetaCommand::RegisterUser {
            username: name.into(),
            password_hash: "h".into(),
            now_ms: 5,
        })
        .expect("apply")
        .0
    }

    #[test]
    fn usernames_are_unique_and_ids_sequential() {
        let mut s = MetaState::default();
        assert_eq!(
            register(&mut s, "alice"),
            MetaResponse::Registered { user_id: UserId(1) }
        );
        assert_eq!(
            register(&mut s, "bob"),
            MetaResponse::Registered { user_id: UserId(2) }
        );
        assert_eq!(register(&mut s, "alice"), MetaResponse::UsernameTaken);
        assert_eq!(s.user_by_name("bob").map(|a| a.user_id), Some(UserId(2)));
    }

    #[test]
    fn sessions_need_a_user_and_can_be_revoked() {
        let mut s = MetaState::default();
        register(&mut s, "alice");
        let create = |user| MetaCommand::CreateSession {
            token_hash: "ab".into(),
            user_id: UserId(user),
            now_ms: 1,
        };
        assert_eq!(
            s.apply(&create(9)).expect("apply").0,
            MetaResponse::UnknownUser
        );
        assert_eq!(
            s.apply(&create(1)).expect("apply").0,
            MetaResponse::SessionCreated
        );
        assert!(s.session("ab").is_some());
        let revoke = MetaCommand::RevokeSession {
            token_hash: "ab".into(),
        };
        assert_eq!(
            s.apply(&revoke).expect("apply").0,
            MetaResponse::SessionRevoked { existed: true }
        );
        assert!(s.session("ab").is_none());
    }

    #[test]
    fn group_roles_decide_who_may_do_what() {
        let mut s = MetaState::default();
        for name in ["owner", "admin", "member", "outsider"] {
            register(&mut s, name);
        }
        let (o, a, m, x) = (UserId(1), UserId(2), UserId(3), UserId(4));
        let create = MetaCommand::CreateGroup {
            creator: o,
            name: "g".into(),
            description: String::new(),
            members: vec![a, m],
            now_ms: 1,
            max_members: 3,
        };
        let (r, _) = s.apply(&create).expect("apply");
        let MetaResponse::GroupChanged { group, changes } = r else {
            panic!("{r:?}");
        };
        assert_eq!(changes[0], GroupChange::Created);
        let refused = |s: &mut MetaState, cmd: MetaCommand| match s.apply(&cmd).expect("apply").0 {
            MetaResponse::GroupRefused { reason } => reason,
            other => panic!("accepted: {other:?}"),
        };
        let full = MetaCommand::AddMembers {
            actor: o,
            group,
            users: vec![x],
            max_members: 3,
        };
        assert_eq!(refused(&mut s, full), GroupRefusal::Full);
        let by_member = MetaCommand::AddMembers {
            actor: m,
            group,
            users: vec![x],
            max_members: 9,
        };
        assert_eq!(refused(&mut s, by_member), GroupRefusal::Forbidden);
        let by_outsider = MetaCommand::RemoveMember {
            actor: x,
            group,
            user: m,
        };
        assert_eq!(refused(&mut s, by_outsider), GroupRefusal::NotFound);
        s.apply(&MetaCommand::SetRole {
            actor: o,
            group,
            user: a,
            role: Role::Admin,
        })
        .expect("apply");
        let admin_removes_owner = MetaCommand::RemoveMember {
            actor: a,
            group,
            user: o,
        };
        assert_eq!(
            refused(&mut s, admin_removes_owner),
            GroupRefusal::Forbidden
        );
        let owner_leaves = MetaCommand::LeaveGroup { user: o, group };
        assert!(matches!(
            refused(&mut s, owner_leaves),
            GroupRefusal::Invalid(_)
        ));
        s.apply(&MetaCommand::RemoveMember {
            actor: a,
            group,
            user: m,
        })
        .expect("apply");
        assert_eq!(s.group_members(group), vec![o, a]);
        assert!(s.groups_of(m).is_empty());
        s.apply(&MetaCommand::TransferGroup {
            actor: o,
            group,
            to: a,
        })
        .expect("apply");
        assert_eq!(s.group(group).map(|g| g.members[&a]), Some(Role::Owner));
        assert_eq!(MetaState::load(s.dump().expect("dump")).expect("load"), s);
        s.apply(&MetaCommand::DeleteGroup { actor: a, group })
            .expect("apply");
        assert!(s.group(group).is_none() && s.groups_of(a).is_empty());
        assert_eq!(MetaState::load(s.dump().expect("dump")).expect("load"), s);
    }

    #[test]
    fn nodes_marked_down_and_up_record_the_entry_index() {
        let mut s = MetaState::default();
        let down = |node, down| MetaCommand::SetNodeDown { node, down };
        let (r, w) = s.apply_at(7, &down(3, true)).expect("apply");
        assert_eq!(r, MetaResponse::NodeDownChanged { changed: true });
        assert!(!w.is_empty());
        assert_eq!((s.down_nodes().len(), s.down_changed_at()), (1, 7));
        let (r, w) = s.apply_at(8, &down(3, true)).expect("apply");
        assert_eq!(r, MetaResponse::NodeDownChanged { changed: false });
        assert!(w.is_empty(), "no change, nothing written");
        assert_eq!(s.down_changed_at(), 7, "the epoch moves only on a change");
        let loaded = MetaState::load(s.dump().expect("dump")).expect("load");
        assert_eq!(loaded, s);
        s.apply_at(9, &down(3, false)).expect("apply");
        assert!(s.down_nodes().is_empty());
        assert_eq!(s.down_changed_at(), 9);
    }

    #[test]
    fn writes_rebuild_the_same_state() {
        let mut s = MetaState::default();
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut run = |s: &mut MetaState, cmd: MetaCommand| {
            store(&mut kv, s.apply(&cmd).expect("apply").1);
        };
        for name in ["alice", "bob", "carol"] {
            run(
                &mut s,
                MetaCommand::RegisterUser {
                    username: name.into(),
                    password_hash: "h".into(),
                    now_ms: 1,
                },
            );
        }
        run(
            &mut s,
            MetaCommand::CreateSession {
                token_hash: "t1".into(),
                user_id: UserId(2),
                now_ms: 2,
            },
        );
        let loaded = MetaState::load(kv.clone()).expect("load");
        assert_eq!(loaded, s);
        let from_dump = MetaState::load(s.dump().expect("dump")).expect("load");
        assert_eq!(from_dump, s);
    }

    /// Logging in beyond the limit ends the oldest sessions first, and only the user's own.
    #[test]
    fn sessions_per_user_are_bounded_by_ending_the_oldest() {
        let mut s = MetaState::default();
        register(&mut s, "alice");
        register(&mut s, "bob");
        let mut kv = BTreeMap::new();
        let mut login = |s: &mut MetaState, user: u64, token: String, ms: u64| {
            let cmd = MetaCommand::CreateSession {
                token_hash: token,
                user_id: UserId(user),
                now_ms: ms,
            };
            let (answer, writes) = s.apply(&cmd).expect("apply");
            assert_eq!(answer, MetaResponse::SessionCreated);
            store(&mut kv, writes);
        };
        login(&mut s, 2, "bob-1".into(), 0);
        for i in 0..MAX_SESSIONS_PER_USER as u64 + 2 {
            login(&mut s, 1, format!("a{i:03}"), 1000 + i);
        }
        assert_eq!(s.sessions_of(UserId(1)).len(), MAX_SESSIONS_PER_USER);
        assert!(s.session("a000").is_none() && s.session("a001").is_none());
        assert!(s.session("a002").is_some() && s.session("a101").is_some());
        // A login whose node's clock is behind: it looks oldest, yet it is the one kept.
        login(&mut s, 1, "late-clock".into(), 5);
        assert!(s.session("late-clock").is_some());
        assert!(s.session("a002").is_none(), "the oldest of the others went");
        assert_eq!(s.sessions_of(UserId(1)).len(), MAX_SESSIONS_PER_USER);
        assert!(s.session("bob-1").is_some(), "another user's session stays");
        // What was written holds exactly the sessions kept.
        assert_eq!(MetaState::load(kv).expect("load").sessions, s.sessions);
    }

    /// A batch applies its commands in order, each seeing the ones before it, answers each on
    /// its own, and its writes persist the same state as the commands applied one by one.
    #[test]
    fn a_batch_applies_in_order_and_answers_each() {
        let cmds = vec![
            MetaCommand::RegisterUser {
                username: "alice".into(),
                password_hash: "h".into(),
                now_ms: 1,
            },
            MetaCommand::CreateSession {
                token_hash: "t1".into(),
                user_id: UserId(1),
                now_ms: 2,
            },
            MetaCommand::RegisterUser {
                username: "alice".into(),
                password_hash: "h2".into(),
                now_ms: 3,
            },
            MetaCommand::CreateSession {
                token_hash: "t2".into(),
                user_id: UserId(7),
                now_ms: 4,
            },
            MetaCommand::RevokeSession {
                token_hash: "t1".into(),
            },
        ];
        let mut one_by_one = MetaState::default();
        let answers: Vec<MetaResponse> = cmds
            .iter()
            .map(|c| one_by_one.apply(c).expect("apply").0)
            .collect();
        assert_eq!(
            answers,
            vec![
                MetaResponse::Registered { user_id: UserId(1) },
                MetaResponse::SessionCreated,
                MetaResponse::UsernameTaken,
                MetaResponse::UnknownUser,
                MetaResponse::SessionRevoked { existed: true },
            ]
        );
        let mut batched = MetaState::default();
        let (answer, writes) = batched
            .apply_at(9, &MetaCommand::Batch(cmds))
            .expect("apply");
        assert_eq!(answer, MetaResponse::Batch(answers));
        assert_eq!(batched, one_by_one);
        let mut kv = BTreeMap::new();
        store(&mut kv, writes);
        assert_eq!(MetaState::load(kv).expect("load"), batched);
    }

    const A: UserId = UserId(1);
    const B: UserId = UserId(2);
    const C: UserId = UserId(3);

    /// Alice, Bob and Carol (ids 1, 2, 3).
    fn three() -> MetaState {
        let mut s = MetaState::default();
        for name in ["alice", "bob", "carol"] {
            register(&mut s, name);
        }
        s
    }

    fn run(s: &mut MetaState, cmd: MetaCommand) -> MetaResponse {
        s.apply(&cmd).expect("apply").0
    }

    fn relation_of(resp: &MetaResponse) -> Relation {
        match resp {
            MetaResponse::RelationChanged { relation, .. } => *relation,
            other => panic!("expected a relation, got {other:?}"),
        }
    }

    fn request(from: UserId, to: UserId) -> MetaCommand {
        MetaCommand::RequestContact {
            from,
            to,
            now_ms: 10,
        }
    }

    fn accept(user_id: UserId, from: UserId) -> MetaCommand {
        MetaCommand::AcceptContact {
            user_id,
            from,
            now_ms: 11,
        }
    }

    fn block(user_id: UserId, other: UserId) -> MetaCommand {
        MetaCommand::BlockUser {
            user_id,
            other,
            now_ms: 12,
        }
    }

    fn must_reload_equal(s: &MetaState) {
        let from_dump = MetaState::load(s.dump().expect("dump")).expect("load");
        assert_eq!(&from_dump, s);
    }

    #[test]
    fn profile_updates_change_only_the_given_fields() {
        let mut s = three();
        let p = s.profile(A).expect("alice");
        assert_eq!(
            (p.display_name.as_str(), p.status_text.as_str(), p.avatar),
            ("alice", "", None)
        );
        let update =
            |display_name: Option<&str>, status: Option<&str>, avatar| MetaCommand::UpdateProfile {
                user_id: A,
                display_name: display_name.map(str::to_owned),
                status_text: status.map(str::to_owned),
                avatar,
                now_ms: 20,
            };
        let r = run(
            &mut s,
            update(Some("Alice L."), None, AvatarChange::Set("m1".into())),
        );
        assert!(matches!(
            r,
            MetaResponse::ProfileUpdated { revision: 1, .. }
        ));
        run(&mut s, update(None, Some("reading"), AvatarChange::Keep));
        let p = s.profile(A).expect("alice");
        assert_eq!(
            (
                p.display_name.as_str(),
                p.status_text.as_str(),
                p.avatar.as_deref()
            ),
            ("Alice L.", "reading", Some("m1"))
        );
        run(&mut s, update(None, Some(""), AvatarChange::Clear));
        let p = s.profile(A).expect("alice");
        assert_eq!((p.status_text.as_str(), p.avatar), ("", None));
        assert_eq!(s.profile(B).map(|p| p.display_name), Some("bob".into()));
        assert_eq!(s.profile(UserId(9)), None);
        let unknown = MetaCommand::UpdateProfile {
            user_id: UserId(9),
            display_name: Some("x".into()),
            status_text: None,
            avatar: AvatarChange::Keep,
            now_ms: 1,
        };
        assert_eq!(run(&mut s, unknown), MetaResponse::UnknownUser);
        assert_eq!(s.revision(), 3);
        must_reload_equal(&s);
    }

    #[test]
    fn settings_default_to_anyone_and_can_be_changed() {
        let mut s = three();
        assert_eq!(s.settings(A).dm_policy, DmPolicy::Anyone);
        let set = |user_id, dm_policy| MetaCommand::UpdateSettings {
            user_id,
            dm_policy,
            push_preview: None,
        };
        assert_eq!(
            run(&mut s, set(A, Some(DmPolicy::Contacts))),
            MetaResponse::SettingsUpdated {
                revision: 1,
                settings: SettingsRecord {
                    dm_policy: DmPolicy::Contacts,
                    push_preview: true,
                }
            }
        );
        run(&mut s, set(A, None));
        assert_eq!(s.settings(A).dm_policy, DmPolicy::Contacts);
        assert_eq!(
            run(&mut s, set(UserId(9), Some(DmPolicy::Anyone))),
            MetaResponse::UnknownUser
        );
        must_reload_equal(&s);
    }

    #[test]
    fn request_then_accept_makes_contacts_and_remove_ends_it() {
        let mut s = three();
        assert_eq!(relation_of(&run(&mut s, request(A, B))), Relation::Outgoing);
        assert_eq!(s.relation(B, A), Relation::Incoming);
        assert_eq!(s.outgoing_requests(A), vec![(B, 10)]);
        assert_eq!(s.incoming_requests(B), vec![(A, 10)]);
        // A retried request changes nothing.
        let rev = s.revision();
        assert_eq!(relation_of(&run(&mut s, request(A, B))), Relation::Outgoing);
        assert_eq!(s.revision(), rev);
        must_reload_equal(&s);

        assert_eq!(relation_of(&run(&mut s, accept(B, A))), Relation::Contact);
        assert_eq!(s.relation(A, B), Relation::Contact);
        assert_eq!(s.contacts_of(A), vec![(B, 11)]);
        assert_eq!(s.contacts_of(B), vec![(A, 11)]);
        assert!(s.incoming_requests(B).is_empty() && s.outgoing_requests(A).is_empty());
        // Accepting again (a retry) and requesting a contact are no-ops.
        assert_eq!(relation_of(&run(&mut s, accept(B, A))), Relation::Contact);
        assert_eq!(relation_of(&run(&mut s, request(A, B))), Relation::Contact);
        must_reload_equal(&s);

        // Either side may remove; removing twice finds nothing.
        let remove = |user_id, other| MetaCommand::RemoveContact { user_id, other };
        assert_eq!(relation_of(&run(&mut s, remove(A, B))), Relation::None);
        assert_eq!(s.relation(B, A), Relation::None);
        assert!(s.contacts_of(A).is_empty() && s.contacts_of(B).is_empty());
        assert_eq!(run(&mut s, remove(B, A)), MetaResponse::NotContacts);
        assert_eq!(s, {
            let mut fresh = three();
            fresh.revision = s.revision;
            fresh
        });
        must_reload_equal(&s);
    }

    #[test]
    fn crossing_requests_make_contacts() {
        let mut s = three();
        run(&mut s, request(A, B));
        assert_eq!(relation_of(&run(&mut s, request(B, A))), Relation::Contact);
        assert_eq!(s.relation(A, B), Relation::Contact);
        assert!(s.incoming_requests(A).is_empty() && s.incoming_requests(B).is_empty());
        must_reload_equal(&s);
    }

    #[test]
    fn decline_and_cancel_need_the_request_they_name() {
        let mut s = three();
        let decline = |user_id, from| MetaCommand::DeclineContact { user_id, from };
        let cancel = |user_id, to| MetaCommand::CancelContactRequest { user_id, to };
        // Nothing to act on yet.
        assert_eq!(run(&mut s, accept(B, A)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, decline(B, A)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, cancel(A, B)), MetaResponse::NoRequest);
        assert_eq!(s.revision(), 0);

        run(&mut s, request(A, B));
        // The recipient cannot cancel the sender's request, a third user cannot touch it,
        // and the sender cannot accept or decline their own request.
        assert_eq!(run(&mut s, cancel(B, A)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, cancel(C, B)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, accept(C, A)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, accept(A, B)), MetaResponse::NoRequest);
        assert_eq!(run(&mut s, decline(A, B)), MetaResponse::NoRequest);
        assert_eq!(s.relation(A, B), Relation::Outgoing);

        assert_eq!(relation_of(&run(&mut s, decline(B, A))), Relation::None);
        assert_eq!(s.relation(A, B), Relation::None);
        run(&mut s, request(A, B));
        assert_eq!(relation_of(&run(&mut s, cancel(A, B))), Relation::None);
        assert_eq!(s.relation(B, A), Relation::None);
        assert!(s.incoming_requests(B).is_empty());
        must_reload_equal(&s);
    }

    #[test]
    fn self_and_unknown_targets_are_refused() {
        let mut s = three();
        for cmd in [
            request(A, A),
            accept(A, A),
            block(A, A),
            MetaCommand::DeclineContact {
                user_id: A,
                from: A,
            },
            MetaCommand::CancelContactRequest { user_id: A, to: A },
            MetaCommand::RemoveContact {
                user_id: A,
                other: A,
            },
            MetaCommand::UnblockUser {
                user_id: A,
                other: A,
            },
        ] {
            assert_eq!(
                run(&mut s, cmd.clone()),
                MetaResponse::SelfTarget,
                "{cmd:?}"
            );
        }
        assert_eq!(
            run(&mut s, request(A, UserId(9))),
            MetaResponse::UnknownUser
        );
        assert_eq!(run(&mut s, block(A, UserId(9))), MetaResponse::UnknownUser);
        assert_eq!(s, three());
    }

    #[test]
    fn blocking_ends_relations_and_refuses_requests_both_ways() {
        let mut s = three();
        run(&mut s, request(A, B));
        run(&mut s, accept(B, A));
        run(&mut s, request(C, A));
        run(&mut s, request(A, C));
        // A request crossed with C's made them contacts; start over with pending ones.
        run(
            &mut s,
            MetaCommand::RemoveContact {
                user_id: A,
                other: C,
            },
        );
        run(&mut s, request(C, A));
        assert_eq!(s.relation(A, C), Relation::Incoming);

        assert_eq!(relation_of(&run(&mut s, block(A, B))), Relation::Blocked);
        assert_eq!(relation_of(&run(&mut s, block(A, C))), Relation::Blocked);
        assert!(s.contacts_of(A).is_empty() && s.contacts_of(B).is_empty());
        assert!(s.incoming_requests(A).is_empty() && s.outgoing_requests(C).is_empty());
        assert_eq!(s.blocked_by(A), vec![(B, 12), (C, 12)]);
        // Being blocked is not shown to the blocked user.
        assert_eq!(s.relation(B, A), Relation::None);
        must_reload_equal(&s);

        // Neither side may ask the other while the block stands.
        assert_eq!(run(&mut s, request(B, A)), MetaResponse::Blocked);
        assert_eq!(run(&mut s, request(A, B)), MetaResponse::Blocked);
        // Blocking again is a no-op.
        let rev = s.revision();
        assert_eq!(relation_of(&run(&mut s, block(A, B))), Relation::Blocked);
        assert_eq!(s.revision(), rev);

        let unblock = |user_id, other| MetaCommand::UnblockUser { user_id, other };
        assert_eq!(relation_of(&run(&mut s, unblock(A, B))), Relation::None);
        assert_eq!(relation_of(&run(&mut s, unblock(A, B))), Relation::None);
        assert_eq!(relation_of(&run(&mut s, request(B, A))), Relation::Outgoing);
        // The blocked user unblocking does not lift the other's block.
        assert_eq!(relation_of(&run(&mut s, unblock(C, A))), Relation::None);
        assert!(s.is_blocked(A, C));
        must_reload_equal(&s);
    }

    #[test]
    fn direct_messages_follow_blocks_and_the_recipients_policy() {
        let mut s = three();
        assert_eq!(s.direct_message_check(A, B), DirectCheck::Allowed);
        run(&mut s, block(B, A));
        assert_eq!(s.direct_message_check(A, B), DirectCheck::Blocked);
        assert_eq!(s.direct_message_check(B, A), DirectCheck::Blocked);
        assert_eq!(s.direct_message_check(A, A), DirectCheck::Allowed);

        run(
            &mut s,
            MetaCommand::UpdateSettings {
                user_id: C,
                dm_policy: Some(DmPolicy::Contacts),
                push_preview: None,
            },
        );
        assert_eq!(s.direct_message_check(A, C), DirectCheck::ContactsOnly);
        // C may still write to strangers whose policy allows it; only the recipient's counts.
        assert_eq!(s.direct_message_check(C, A), DirectCheck::Allowed);
        assert_eq!(s.direct_message_check(C, C), DirectCheck::Allowed);
        run(&mut s, request(A, C));
        assert_eq!(s.direct_message_check(A, C), DirectCheck::ContactsOnly);
        run(&mut s, accept(C, A));
        assert_eq!(s.direct_message_check(A, C), DirectCheck::Allowed);
    }

    #[test]
    fn sessions_are_listed_per_user_and_revoked_only_by_their_owner() {
        let mut s = three();
        let hash = |c: char| c.to_string().repeat(64);
        for (c, user) in [('a', A), ('b', A), ('c', B)] {
            run(
                &mut s,
                MetaCommand::CreateSession {
                    token_hash: hash(c),
                    user_id: user,
                    now_ms: 30,
                },
            );
        }
        let ids = |s: &MetaState, u| -> Vec<String> {
            s.sessions_of(u)
                .into_iter()
                .map(|(h, _)| session_id(h).to_owned())
                .collect()
        };
        assert_eq!(ids(&s, A), vec!["a".repeat(16), "b".repeat(16)]);
        assert_eq!(ids(&s, B), vec!["c".repeat(16)]);
        must_reload_equal(&s);

        let revoke = |user_id, id: &str| MetaCommand::RevokeUserSession {
            user_id,
            session_id: id.into(),
        };
        // Another user's session, a prefix too short, a made-up id: not found.
        assert_eq!(
            run(&mut s, revoke(A, &"c".repeat(16))),
            MetaResponse::UnknownSession
        );
        assert_eq!(run(&mut s, revoke(A, "aaaa")), MetaResponse::UnknownSession);
        assert_eq!(
            run(&mut s, revoke(C, &"a".repeat(16))),
            MetaResponse::UnknownSession
        );
        assert!(s.session(&hash('c')).is_some());
        assert_eq!(
            run(&mut s, revoke(A, &"a".repeat(16))),
            MetaResponse::UserSessionRevoked { revision: 1 }
        );
        assert!(s.session(&hash('a')).is_none());
        assert_eq!(ids(&s, A), vec!["b".repeat(16)]);
        // Revoking by token hash (logout) keeps the index in step too.
        run(
            &mut s,
            MetaCommand::RevokeSession {
                token_hash: hash('b'),
            },
        );
        assert!(ids(&s, A).is_empty());
        must_reload_equal(&s);
    }

    #[test]
    fn every_social_change_persists_and_reloads_to_the_same_state() {
        let mut s = MetaState::default();
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut step = |s: &mut MetaState, cmd: MetaCommand| {
            store(&mut kv, s.apply(&cmd).expect("apply").1);
            let loaded = MetaState::load(kv.clone()).expect("load");
            assert_eq!(&loaded, s, "after {cmd:?}");
            must_reload_equal(s);
        };
        for name in ["alice", "bob", "carol", "dave"] {
            step(
                &mut s,
                MetaCommand::RegisterUser {
                    username: name.into(),
                    password_hash: "h".into(),
                    now_ms: 1,
                },
            );
        }
        let d = UserId(4);
        for cmd in [
            MetaCommand::CreateSession {
                token_hash: "f".repeat(64),
                user_id: A,
                now_ms: 2,
            },
            MetaCommand::CreateSession {
                token_hash: "e".repeat(64),
                user_id: A,
                now_ms: 3,
            },
            MetaCommand::UpdateProfile {
                user_id: B,
                display_name: Some("Bob B.".into()),
                status_text: Some("hi".into()),
                avatar: AvatarChange::Set("m-2".into()),
                now_ms: 4,
            },
            MetaCommand::UpdateSettings {
                user_id: C,
                dm_policy: Some(DmPolicy::Contacts),
                push_preview: None,
            },
            request(A, B),
            accept(B, A),
            request(C, A),
            request(A, d),
            block(d, C),
            block(B, C),
            MetaCommand::RevokeUserSession {
                user_id: A,
                session_id: "e".repeat(16),
            },
            MetaCommand::UnblockUser {
                user_id: B,
                other: C,
            },
            MetaCommand::CancelContactRequest { user_id: A, to: d },
        ] {
            step(&mut s, cmd);
        }
        assert_eq!(s.revision(), 11);
        assert_eq!(s.relation(A, B), Relation::Contact);
        assert_eq!(s.relation(A, C), Relation::Incoming);
        assert_eq!(s.relation(d, C), Relation::Blocked);
    }

    #[test]
    fn edge_keys_are_prefix_then_two_big_endian_ids() {
        let k = edge_key(REQUEST, UserId(1), UserId(0x0102));
        let mut want = b"q/".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(k, want);
        assert_eq!(
            decode_pair(&k, &k[2..]).expect("decodes"),
            (UserId(1), UserId(0x0102))
        );
        assert_eq!(profile_key(UserId(7)), b"p/\0\0\0\0\0\0\0\x07".to_vec());
    }

    #[test]
    fn malformed_social_keys_are_refused_on_load() {
        for key in [&b"p/\x01"[..], b"k/12345678", b"q/123456781234567", b"b/"] {
            let pairs = vec![(key.to_vec(), encode_u64_v1(1).to_vec())];
            assert!(MetaState::load(pairs).is_err(), "{key:?}");
        }
    }
}
