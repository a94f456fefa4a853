//! Group requests: the metadata (through Raft) decides membership and roles; each change it
//! accepts is then written into the group's own log, so that members see it in order with the
//! messages.

use chat_cluster::meta::GroupRefusal;
use chat_cluster::{MetaCommand, MetaResponse};
use chat_types::{
    ClientFrame, ConversationId, ErrorCode, GroupId, GroupInfo, GroupMember, ServerFrame, UserId,
    WireError,
};

use super::AppState;
use crate::auth::Principal;

const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 500;

fn invalid(m: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, m)
}

fn group_of(conv: &ConversationId) -> Result<GroupId, WireError> {
    conv.group_id()
        .ok_or_else(|| invalid("not a group conversation (expected g:<id>)"))
}

fn check_name(name: &str) -> Result<(), WireError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            "a group name is 1 to 64 characters, no control characters",
        ));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), WireError> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid("a group description is at most 500 characters"));
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a member sees of a group; `None` for a non-member (who learns nothing, not even
/// that the group exists).
pub fn info_for(state: &AppState, viewer: UserId, group: GroupId) -> Option<GroupInfo> {
    state.meta.read(|s| {
        let g = s.group(group)?;
        g.members.contains_key(&viewer).then(|| GroupInfo {
            conversation: ConversationId::group(group),
            name: g.name.clone(),
            description: g.description.clone(),
            members: g
                .members
                .iter()
                .map(|(u, r)| GroupMember {
                    user_id: *u,
                    role: *r,
                })
                .collect(),
            created_ms: g.created_ms,
        })
    })
}

fn not_found() -> WireError {
    WireError::new(ErrorCode::NotFound, "no such group among yours")
}

/// Proposes a group command, then writes the changes it made into the group's log.
async fn change(state: &AppState, actor: UserId, cmd: MetaCommand) -> Result<GroupId, WireError> {
    let response = state.meta.write(cmd).await.map_err(|e| e.to_wire())?;
    let (group, changes) = match response {
        MetaResponse::GroupChanged { group, changes } => (group, changes),
        MetaResponse::GroupRefused { reason } => {
            return Err(match reason {
                GroupRefusal::NotFound => not_found(),
                GroupRefusal::Forbidden => {
                    WireError::new(ErrorCode::Forbidden, "your role does not allow this")
                }
                GroupRefusal::Full => WireError::new(
                    ErrorCode::Conflict,
                    "the group has reached its member limit",
                ),
                GroupRefusal::Invalid(m) => invalid(m),
            })
        }
        other => {
            tracing::error!(?other, "unexpected answer to a group command");
            return Err(WireError::new(ErrorCode::Internal, "internal error"));
        }
    };
    for c in changes {
        if let Err(e) = state.router.append_group_change(actor, group, c).await {
            // The metadata change stands; only its note in the log is missing.
            tracing::warn!(%group, error = %e, "group change not written to the group log");
        }
    }
    Ok(group)
}

/// Serves one group frame.
pub async fn handle(
    state: &AppState,
    me: &Principal,
    frame: ClientFrame,
) -> Result<ServerFrame, (String, WireError)> {
    let user = me.user_id;
    let max_members = state.config.limits.max_group_members;
    let reply_group = |id: String, group: GroupId| match info_for(state, user, group) {
        Some(info) => Ok(ServerFrame::Group { id, group: info }),
        None => Err((id, not_found())),
    };
    match frame {
        ClientFrame::CreateGroup {
            id,
            name,
            description,
            members,
        } => {
            let checked = check_name(&name).and_then(|()| check_description(&description));
            if let Err(e) = checked {
                return Err((id, e));
            }
            let cmd = MetaCommand::CreateGroup {
                creator: user,
                name,
                description,
                members,
                now_ms: now_ms(),
                max_members,
            };
            match change(state, user, cmd).await {
                Ok(group) => reply_group(id, group),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::GetGroup { id, group } => match group_of(&group) {
            Ok(g) => reply_group(id, g),
            Err(e) => Err((id, e)),
        },
        ClientFrame::ListGroups { id } => {
            let ids = state.meta.read(|s| s.groups_of(user));
            let groups = ids
                .into_iter()
                .filter_map(|g| info_for(state, user, g))
                .collect();
            Ok(ServerFrame::Groups { id, groups })
        }
        ClientFrame::UpdateGroup {
            id,
            group,
            name,
            description,
        } => {
            let checked = group_of(&group).and_then(|g| {
                if let Some(n) = &name {
                    check_name(n)?;
                }
                if let Some(d) = &description {
                    check_description(d)?;
                }
                Ok(g)
            });
            let g = match checked {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::UpdateGroup {
                actor: user,
                group: g,
                name,
                description,
            };
            match change(state, user, cmd).await {
                Ok(g) => reply_group(id, g),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::AddMembers {
            id,
            group,
            user_ids,
        } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::AddMembers {
                actor: user,
                group: g,
                users: user_ids,
                max_members,
            };
            match change(state, user, cmd).await {
                Ok(g) => reply_group(id, g),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::RemoveMember { id, group, user_id } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::RemoveMember {
                actor: user,
                group: g,
                user: user_id,
            };
            match change(state, user, cmd).await {
                Ok(g) => reply_group(id, g),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::SetRole {
            id,
            group,
            user_id,
            role,
        } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::SetRole {
                actor: user,
                group: g,
                user: user_id,
                role,
            };
            match change(state, user, cmd).await {
                Ok(g) => reply_group(id, g),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::TransferGroup { id, group, user_id } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::TransferGroup {
                actor: user,
                group: g,
                to: user_id,
            };
            match change(state, user, cmd).await {
                Ok(g) => reply_group(id, g),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::LeaveGroup { id, group } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            match change(state, user, MetaCommand::LeaveGroup { user, group: g }).await {
                Ok(_) => Ok(ServerFrame::Ok { id }),
                Err(e) => Err((id, e)),
            }
        }
        ClientFrame::DeleteGroup { id, group } => {
            let g = match group_of(&group) {
                Ok(g) => g,
                Err(e) => return Err((id, e)),
            };
            let cmd = MetaCommand::DeleteGroup {
                actor: user,
                group: g,
            };
            match change(state, user, cmd).await {
                Ok(_) => Ok(ServerFrame::Ok { id }),
                Err(e) => Err((id, e)),
            }
        }
        other => {
            let id = other.id().unwrap_or_default().to_owned();
            Err((id, invalid("not a group request")))
        }
    }
}
