//! Broadcast: one request, one message to many users (each in the direct conversation with
//! them) and groups. Every target is an ordinary send with the same client message id, so
//! a retried broadcast stores nothing twice and reports the original seqs.

use std::sync::Arc;

use chat_actors::{ConnRef, Router};
use chat_types::{
    validate_body, BroadcastOutcome, ClientMsgId, ConversationId, ErrorCode, ServerFrame, UserId,
    WireError,
};
use tokio::task::JoinSet;

use super::{social, AppState};
use crate::auth::Principal;

/// Sends in flight at once for one broadcast.
const PARALLEL: usize = 32;

pub struct BroadcastRequest {
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub users: Vec<UserId>,
    pub groups: Vec<ConversationId>,
}

pub async fn handle(
    state: &AppState,
    me: &Principal,
    origin: Option<ConnRef>,
    req: BroadcastRequest,
) -> Result<ServerFrame, WireError> {
    state.limits.send(me.user_id)?;
    validate_body(&req.body, &state.config.wire_limits())
        .map_err(|e| WireError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    let mut targets: Vec<ConversationId> = Vec::new();
    for u in &req.users {
        let c = ConversationId::direct(me.user_id, *u);
        if !targets.contains(&c) {
            targets.push(c);
        }
    }
    for g in &req.groups {
        if g.group_id().is_none() {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                "groups must name group conversations (g:<id>)",
            ));
        }
        if !targets.contains(g) {
            targets.push(*g);
        }
    }
    let max = state.config.limits.max_broadcast_targets as usize;
    if targets.is_empty() || targets.len() > max {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("a broadcast has 1 to {max} targets"),
        ));
    }
    let mut results: Vec<Option<BroadcastOutcome>> = vec![None; targets.len()];
    let mut tasks: JoinSet<(usize, BroadcastOutcome)> = JoinSet::new();
    for (i, conv) in targets.iter().copied().enumerate() {
        if let Err(error) = social::check_direct(state, me.user_id, &conv) {
            results[i] = Some(BroadcastOutcome {
                conversation: conv,
                seq: None,
                error: Some(error),
            });
            continue;
        }
        while tasks.len() >= PARALLEL {
            if let Some(Ok((j, outcome))) = tasks.join_next().await {
                results[j] = Some(outcome);
            }
        }
        let router: Arc<Router> = state.router.clone();
        let (sender, cmid, body) = (me.user_id, req.client_msg_id.clone(), req.body.clone());
        tasks.spawn_on(
            async move {
                let outcome = match router
                    .append(sender, conv, cmid, body, None, Vec::new(), origin)
                    .await
                {
                    Ok((message, _)) => BroadcastOutcome {
                        conversation: conv,
                        seq: Some(message.seq),
                        error: None,
                    },
                    Err(e) => BroadcastOutcome {
                        conversation: conv,
                        seq: None,
                        error: Some(e.to_wire()),
                    },
                };
                (i, outcome)
            },
            &state.runtime,
        );
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((j, outcome)) = joined {
            results[j] = Some(outcome);
        }
    }
    let results = results
        .into_iter()
        .zip(targets)
        .map(|(r, conversation)| {
            r.unwrap_or(BroadcastOutcome {
                conversation,
                seq: None,
                error: Some(WireError::new(ErrorCode::Internal, "send task failed")),
            })
        })
        .collect();
    Ok(ServerFrame::BroadcastResult {
        id: String::new(),
        results,
    })
}
