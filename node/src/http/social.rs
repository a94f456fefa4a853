//! Profiles, settings, sessions, contacts and blocks: the rules that the REST endpoints
//! (`rest.rs`) and the WebSocket frames (`ws.rs`) share, and the direct-message check.
//!
//! Every change is a `MetaCommand` through Raft; the state machine decides (who may accept
//! what, who is blocked) in log order, so two nodes racing on the same pair cannot disagree.
//! Client input is validated here first. After a change the handler waits (briefly) until
//! this node's copy has applied it, so that the client's next read through the same node sees
//! its own write. Reads come from the local copy and may trail a change made through another
//! node by a moment.

use chat_cluster::meta::{session_id, AvatarChange, DirectCheck};
use chat_cluster::{MetaCommand, MetaResponse, MetaState};
use chat_types::rest::{BlocksResponse, ContactsResponse, ProfileUpdate, RelationResponse};
use chat_types::UserEvent;
use chat_types::{
    validate_avatar, validate_display_name, validate_session_id, validate_status_text,
    validate_username, ContactEntry, ConversationId, DmPolicy, ErrorCode, Profile, SessionInfo,
    Settings, UserId, WireError,
};

use super::AppState;
use crate::auth::{now_ms, Principal};

/// A change of how the acting user stands with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactAction {
    Request,
    Accept,
    Decline,
    Cancel,
    Remove,
    Block,
    Unblock,
}

fn invalid(e: impl ToString) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, e.to_string())
}

fn unexpected(resp: &MetaResponse) -> WireError {
    // The variant only: a reply may carry user content (a display name).
    tracing::error!(reply = ?std::mem::discriminant(resp), "unexpected metadata reply");
    WireError::new(ErrorCode::Internal, "internal error")
}

/// The stable error for a refusal of the state machine.
fn refusal(resp: &MetaResponse) -> WireError {
    match resp {
        MetaResponse::UnknownUser => WireError::new(ErrorCode::NotFound, "no such user"),
        MetaResponse::SelfTarget => invalid("name another user than yourself"),
        MetaResponse::Blocked => WireError::new(
            ErrorCode::Forbidden,
            "a block stands between you and this user",
        ),
        MetaResponse::NoRequest => WireError::new(ErrorCode::NotFound, "no such contact request"),
        MetaResponse::NotContacts => {
            WireError::new(ErrorCode::NotFound, "this user is not a contact")
        }
        MetaResponse::UnknownSession => WireError::new(ErrorCode::NotFound, "no such session"),
        other => unexpected(other),
    }
}

async fn write(state: &AppState, cmd: MetaCommand) -> Result<MetaResponse, WireError> {
    state.meta.write(cmd).await.map_err(|e| e.to_wire())
}

/// Waits until this node has applied `revision` (a write just answered with it), so that what
/// the caller reads next includes its own change. Gives up after the catch-up window: the
/// write is done either way, only a read may then trail it.
async fn caught_up(state: &AppState, revision: u64) {
    let reached = state
        .auth
        .wait_for(|s| (s.revision() >= revision).then_some(()))
        .await;
    if reached.is_none() {
        tracing::warn!(
            revision,
            "local metadata did not catch up with a write in time"
        );
    }
}

/// The user named by exactly one of `user_id` and `username`.
pub async fn resolve_user(
    state: &AppState,
    user_id: Option<UserId>,
    username: Option<String>,
) -> Result<UserId, WireError> {
    let found = match (user_id, username) {
        (Some(id), None) => state.auth.wait_for(|s| s.user(id).map(|a| a.user_id)).await,
        (None, Some(name)) => {
            // A name no account can have is not waited for.
            let Ok(name) = validate_username(&name) else {
                return Err(WireError::new(ErrorCode::NotFound, "no such user"));
            };
            state
                .auth
                .wait_for(|s| s.user_by_name(&name).map(|a| a.user_id))
                .await
        }
        _ => return Err(invalid("give exactly one of user_id and username")),
    };
    found.ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such user"))
}

/// A user's public profile.
pub async fn profile(state: &AppState, user: UserId) -> Result<Profile, WireError> {
    state
        .auth
        .wait_for(|s| s.profile(user))
        .await
        .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such user"))
}

/// An avatar is an image the user uploaded; setting it makes it readable by everyone signed in.
async fn publish_avatar(state: &AppState, user: UserId, avatar: &str) -> Result<(), WireError> {
    let not_image = || {
        WireError::new(
            ErrorCode::InvalidArgument,
            "avatar must be the media id of an image you uploaded",
        )
    };
    let id = chat_types::MediaId::parse(avatar).map_err(|_| not_image())?;
    let ok = state.meta.read(|m| {
        m.media(&id)
            .is_some_and(|r| r.uploader == user && r.kind == chat_types::MediaKind::Image)
    });
    if !ok {
        return Err(not_image());
    }
    let cmd = MetaCommand::Media(chat_cluster::MediaCommand::Publish { id, user });
    match write(state, cmd).await? {
        MetaResponse::MediaAttached => Ok(()),
        _ => Err(not_image()),
    }
}

/// Changes the caller's profile and returns the new one.
pub async fn update_profile(
    state: &AppState,
    me: &Principal,
    update: ProfileUpdate,
) -> Result<Profile, WireError> {
    if let Some(name) = &update.display_name {
        validate_display_name(name).map_err(invalid)?;
    }
    if let Some(text) = &update.status_text {
        validate_status_text(text).map_err(invalid)?;
    }
    let avatar = match update.avatar {
        None => AvatarChange::Keep,
        Some(None) => AvatarChange::Clear,
        Some(Some(a)) => {
            validate_avatar(&a).map_err(invalid)?;
            publish_avatar(state, me.user_id, &a).await?;
            AvatarChange::Set(a)
        }
    };
    let cmd = MetaCommand::UpdateProfile {
        user_id: me.user_id,
        display_name: update.display_name,
        status_text: update.status_text,
        avatar,
        now_ms: now_ms(),
    };
    match write(state, cmd).await? {
        MetaResponse::ProfileUpdated { revision, profile } => {
            caught_up(state, revision).await;
            // Contacts (and one's own other devices) learn that the profile changed.
            let mut audience: Vec<UserId> = state
                .meta
                .read(|s| s.contacts_of(me.user_id))
                .into_iter()
                .map(|(u, _)| u)
                .collect();
            audience.push(me.user_id);
            // What this write made, even if a later write has changed it since.
            let made = Profile {
                user_id: me.user_id,
                username: me.username.clone(),
                display_name: profile.display_name.unwrap_or_else(|| me.username.clone()),
                status_text: profile.status_text,
                avatar: profile.avatar,
            };
            notify_all(
                state,
                audience,
                UserEvent::ProfileChanged {
                    user: me.user_id,
                    profile: Some(made.clone()),
                },
            )
            .await;
            Ok(made)
        }
        other => Err(refusal(&other)),
    }
}

pub fn settings(state: &AppState, me: &Principal) -> Settings {
    state.meta.read(|s| s.settings(me.user_id))
}

/// Changes the caller's settings (`None` keeps a field) and returns the new ones.
pub async fn update_settings(
    state: &AppState,
    me: &Principal,
    dm_policy: Option<DmPolicy>,
    push_preview: Option<bool>,
) -> Result<Settings, WireError> {
    let cmd = MetaCommand::UpdateSettings {
        user_id: me.user_id,
        dm_policy,
        push_preview,
    };
    match write(state, cmd).await? {
        MetaResponse::SettingsUpdated { revision, settings } => {
            caught_up(state, revision).await;
            Ok(Settings {
                dm_policy: settings.dm_policy,
                push_preview: settings.push_preview,
            })
        }
        other => Err(refusal(&other)),
    }
}

/// The caller's sessions, oldest first; the token hash itself is never shown.
pub fn sessions(state: &AppState, me: &Principal) -> Vec<SessionInfo> {
    let mut list: Vec<SessionInfo> = state.meta.read(|s| {
        s.sessions_of(me.user_id)
            .into_iter()
            .map(|(hash, rec)| SessionInfo {
                session_id: session_id(hash).to_owned(),
                created_ms: rec.created_ms,
                current: hash == me.token_hash,
            })
            .collect()
    });
    list.sort_by(|a, b| (a.created_ms, &a.session_id).cmp(&(b.created_ms, &b.session_id)));
    list
}

/// Revokes one of the caller's sessions; another user's is not found.
pub async fn revoke_session(state: &AppState, me: &Principal, id: &str) -> Result<(), WireError> {
    validate_session_id(id).map_err(invalid)?;
    let cmd = MetaCommand::RevokeUserSession {
        user_id: me.user_id,
        session_id: id.to_owned(),
    };
    match write(state, cmd).await? {
        MetaResponse::UserSessionRevoked { revision } => {
            caught_up(state, revision).await;
            Ok(())
        }
        other => Err(refusal(&other)),
    }
}

fn entries(s: &MetaState, list: Vec<(UserId, u64)>) -> Vec<ContactEntry> {
    list.into_iter()
        .filter_map(|(user, since_ms)| {
            s.profile(user).map(|profile| ContactEntry {
                profile,
                since_ms,
                presence: None,
            })
        })
        .collect()
}

/// The caller's contacts and pending requests, each list ordered by user id.
pub fn contacts(state: &AppState, me: &Principal) -> ContactsResponse {
    let user = me.user_id;
    state.meta.read(|s| ContactsResponse {
        contacts: entries(s, s.contacts_of(user)),
        incoming: entries(s, s.incoming_requests(user)),
        outgoing: entries(s, s.outgoing_requests(user)),
    })
}

/// [`contacts`], with each contact's presence asked of the contact's home node.
pub async fn contacts_with_presence(state: &AppState, me: &Principal) -> ContactsResponse {
    let mut lists = contacts(state, me);
    for entry in &mut lists.contacts {
        let router = state.router.clone();
        let user = entry.profile.user_id;
        let asked = state
            .runtime
            .spawn(async move { router.presence_of(user).await })
            .await;
        if let Ok(Ok((status, last_seen_ms))) = asked {
            entry.presence = Some(chat_types::PresenceInfo {
                status,
                last_seen_ms,
            });
        }
    }
    lists
}

/// The users the caller blocked, ordered by user id.
pub fn blocks(state: &AppState, me: &Principal) -> BlocksResponse {
    let user = me.user_id;
    state.meta.read(|s| BlocksResponse {
        blocked: entries(s, s.blocked_by(user)),
    })
}

/// Applies a contact or block action of the caller on `other`, and says how `other` stands
/// with the caller afterwards.
pub async fn change_relation(
    state: &AppState,
    me: &Principal,
    action: ContactAction,
    other: UserId,
) -> Result<RelationResponse, WireError> {
    let user_id = me.user_id;
    if matches!(action, ContactAction::Request) {
        state.limits.contact_request(user_id)?;
    }
    let now_ms = now_ms();
    let cmd = match action {
        ContactAction::Request => MetaCommand::RequestContact {
            from: user_id,
            to: other,
            now_ms,
        },
        ContactAction::Accept => MetaCommand::AcceptContact {
            user_id,
            from: other,
            now_ms,
        },
        ContactAction::Decline => MetaCommand::DeclineContact {
            user_id,
            from: other,
        },
        ContactAction::Cancel => MetaCommand::CancelContactRequest { user_id, to: other },
        ContactAction::Remove => MetaCommand::RemoveContact { user_id, other },
        ContactAction::Block => MetaCommand::BlockUser {
            user_id,
            other,
            now_ms,
        },
        ContactAction::Unblock => MetaCommand::UnblockUser { user_id, other },
    };
    match write(state, cmd).await? {
        MetaResponse::RelationChanged { revision, relation } => {
            caught_up(state, revision).await;
            // Both sides learn the new relation through their event streams, except that a
            // block is never shown to the blocked user.
            let mine = UserEvent::Contact {
                user: other,
                relation,
            };
            notify_all(state, vec![user_id], mine).await;
            if !matches!(action, ContactAction::Block | ContactAction::Unblock) {
                let theirs = state.meta.read(|s| s.relation(other, user_id));
                let event = UserEvent::Contact {
                    user: user_id,
                    relation: theirs,
                };
                notify_all(state, vec![other], event).await;
            }
            Ok(RelationResponse {
                user_id: other,
                relation,
            })
        }
        other => Err(refusal(&other)),
    }
}

/// Records `event` in each user's stream; a failure is logged (the change itself stands, and
/// the lists can be read again).
async fn notify_all(state: &AppState, users: Vec<UserId>, event: UserEvent) {
    for user in users {
        let router = state.router.clone();
        let event = event.clone();
        let sent = state
            .runtime
            .spawn(async move { router.notify(user, event).await })
            .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!(%user, "could not record a contact or profile event");
        }
    }
}

/// Whether `sender` may open, or send in, the direct conversation `conversation`: blocked
/// either way, or a recipient who takes direct messages from contacts only, is `forbidden`.
/// A conversation the sender is not a member of passes here; the conversation actor refuses
/// it.
///
/// This belongs with the conversation actor, the single writer that already checks
/// membership. The actors crate is being reworked by someone else right now, so for the moment
/// the node that holds the sender's WebSocket checks, against its local copy of the metadata,
/// before it routes `open_direct` and `send`. A block or policy change therefore takes effect
/// on each node once that node has applied it (normally within a Raft heartbeat).
pub fn check_direct(
    state: &AppState,
    sender: UserId,
    conversation: &ConversationId,
) -> Result<(), WireError> {
    if !conversation.is_member(sender) {
        return Ok(());
    }
    let other = conversation
        .direct_members()
        .into_iter()
        .find(|m| *m != sender)
        .unwrap_or(sender);
    match state.meta.read(|s| s.direct_message_check(sender, other)) {
        DirectCheck::Allowed => Ok(()),
        DirectCheck::Blocked => Err(WireError::new(
            ErrorCode::Forbidden,
            "a block stands between you and this user",
        )),
        DirectCheck::ContactsOnly => Err(WireError::new(
            ErrorCode::Forbidden,
            "this user takes direct messages from contacts only",
        )),
    }
}
