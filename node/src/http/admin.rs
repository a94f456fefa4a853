//! The operator API under `/v1/admin`, guarded by the operator token (`CHAT_ADMIN_TOKEN` or
//! `auth.admin_token_file`); disabled when none is configured.

use actix_web::{web, HttpRequest, HttpResponse};
use chat_types::{ErrorCode, NodeId, WireError};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{bearer_token, error_response, AppState};

fn check_admin(state: &AppState, req: &HttpRequest) -> Result<(), WireError> {
    let Some(expected) = &state.config.auth.admin_token else {
        return Err(WireError::new(
            ErrorCode::Forbidden,
            "the admin API is disabled: set CHAT_ADMIN_TOKEN or auth.admin_token_file",
        ));
    };
    let given = bearer_token(req).unwrap_or_default();
    // Compare digests so the time taken does not depend on where the strings differ.
    if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes()) {
        Ok(())
    } else {
        Err(WireError::new(ErrorCode::Unauthorized, "wrong admin token"))
    }
}

/// Members, voters, leader, ring epoch, and this node's own counts.
pub async fn cluster(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    let ring = state.meta.ring();
    let voters = state.meta.voters();
    let members: Vec<_> = state
        .meta
        .nodes()
        .iter()
        .map(|(id, info)| {
            json!({
                "node_id": id,
                "http_addr": info.http_addr,
                "peer_addr": info.peer_addr,
                "voter": voters.contains(id),
                // A member out of the ring is marked down (or joining): it owns nothing.
                "in_ring": ring.members().contains(id),
            })
        })
        .collect();
    let stats = state.router.stats();
    HttpResponse::Ok().json(json!({
        "node_id": state.meta.node_id(),
        "leader": state.meta.leader(),
        "ring_epoch": ring.epoch(),
        "members": members,
        "local": {
            "connections": stats.connections,
            "conversation_actors": stats.conversations,
            "session_actors": stats.sessions,
        },
    }))
}

/// Removes a node (dead, or done draining) from the cluster through Raft.
pub async fn remove_node(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    let Ok(id) = path.parse::<u64>() else {
        return error_response(
            &state,
            WireError::new(ErrorCode::InvalidArgument, "node id must be a number"),
        );
    };
    let meta = state.meta.clone();
    match state
        .runtime
        .spawn(async move { meta.remove_node(NodeId(id)).await })
        .await
    {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({ "removed": id })),
        Ok(Err(e)) => error_response(&state, e.to_wire()),
        Err(e) => error_response(&state, WireError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// Drains this node: removes it from the cluster through Raft (its conversations and user
/// sessions move to the remaining nodes, which catch up from the replicas), then closes its
/// WebSockets with 1001 so clients reconnect elsewhere. Stop the process afterwards.
pub async fn drain(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    let meta = state.meta.clone();
    let me = meta.node_id();
    if meta.ring().members().len() <= 1 {
        return error_response(
            &state,
            WireError::new(
                ErrorCode::InvalidArgument,
                "the last node of a cluster cannot drain: stop it instead",
            ),
        );
    }
    match state
        .runtime
        .spawn(async move { meta.remove_node(me).await })
        .await
    {
        Ok(Ok(())) => {
            state
                .router
                .close_all(chat_types::close::GOING_AWAY, "node is draining; reconnect");
            HttpResponse::Ok().json(json!({ "drained": me }))
        }
        Ok(Err(e)) => error_response(&state, e.to_wire()),
        Err(e) => error_response(&state, WireError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// The fault switches of this node's peer transport, for fault-injection runs (our kernels
/// have no netem): `{"partition": [peer addresses this node cannot reach], "delay_ms": n}`
/// replaces both; `{}` heals. A partition is one-way: cut a node off by setting it on every
/// side.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsBody {
    #[serde(default)]
    partition: Vec<String>,
    #[serde(default)]
    delay_ms: u64,
}

pub async fn set_faults(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<FaultsBody>,
) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    if body.delay_ms > 60_000 {
        return error_response(
            &state,
            WireError::new(ErrorCode::InvalidArgument, "delay_ms is at most 60000"),
        );
    }
    let faults = state.meta.transport().faults();
    faults.set_partitioned(body.partition.iter().cloned());
    faults.set_delay(std::time::Duration::from_millis(body.delay_ms));
    tracing::warn!(partition = ?body.partition, delay_ms = body.delay_ms, "peer faults set");
    let (cut, delay) = faults.snapshot();
    HttpResponse::Ok().json(json!({ "partition": cut, "delay_ms": delay.as_millis() as u64 }))
}

/// `POST /v1/admin/search/rebuild`: empties this node's search index and indexes every
/// message it holds again (in the background; `chat_search_backlog` shows the progress).
pub async fn rebuild_search(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    let search = state.search.clone();
    match tokio::task::spawn_blocking(move || search.rebuild()).await {
        Ok(Ok(queued)) => HttpResponse::Accepted().json(json!({ "queued": queued })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "search rebuild failed");
            error_response(
                &state,
                WireError::new(ErrorCode::Internal, "search rebuild failed"),
            )
        }
        Err(_) => error_response(
            &state,
            WireError::new(ErrorCode::Internal, "search rebuild task failed"),
        ),
    }
}

/// `GET /v1/admin/logs/{conversation}?after=0&limit=500`: this node's own copy of a
/// conversation log, whatever the ring says (the owner's answer is what clients read): its
/// head, delivery watermark, whether the node is a replica under its ring, and the entries
/// after `after` (at most 1000), each with the epoch it was written under and a digest of
/// the message, so that replicas can be compared entry by entry without their bodies.
pub async fn local_log(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = check_admin(&state, &req) {
        return error_response(&state, e);
    }
    let conversation: chat_types::ConversationId = match path.parse() {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                &state,
                WireError::new(ErrorCode::InvalidArgument, format!("conversation: {e}")),
            )
        }
    };
    let params = super::query_params(&req);
    let number = |key: &str, default: u64| -> Result<u64, WireError> {
        params.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("{key} must be a whole number"),
                )
            })
        })
    };
    let (after, limit) = match (number("after", 0), number("limit", 500)) {
        (Ok(a), Ok(l)) if (1..=1000).contains(&l) => (a, l),
        (Err(e), _) | (_, Err(e)) => return error_response(&state, e),
        _ => {
            return error_response(
                &state,
                WireError::new(ErrorCode::InvalidArgument, "limit is 1 to 1000"),
            )
        }
    };
    let page = match state
        .router
        .local_log(conversation, chat_types::Seq(after), limit as usize)
    {
        Ok(p) => p,
        Err(e) => return error_response(&state, e.to_wire()),
    };
    let entries: Vec<_> = page
        .entries
        .iter()
        .map(|w| {
            let m = &w.message;
            let digest = serde_json::to_vec(m)
                .map(|bytes| hex::encode(&Sha256::digest(&bytes)[..8]))
                .unwrap_or_default();
            json!({
                "seq": m.seq,
                "epoch": w.epoch,
                "sender": m.sender,
                "client_msg_id": m.client_msg_id,
                "digest": digest,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "node_id": state.meta.node_id(),
        "conversation": conversation,
        "ring_epoch": state.meta.ring().epoch(),
        "replica": page.replica,
        "head": page.head,
        "delivered": page.delivered,
        "entries": entries,
    }))
}
