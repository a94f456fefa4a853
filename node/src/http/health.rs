//! Operator endpoints: liveness, readiness, metrics.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::metrics::Gauges;

/// Alive: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: a member of the cluster, with a known metadata leader, serving clients.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ring = state.meta.ring();
    let body = json!({
        "ready": state.meta.is_ready(),
        "node_id": state.meta.node_id(),
        "leader": state.meta.leader(),
        "ring_epoch": ring.epoch(),
        "members": ring.members(),
        "voters": state.meta.voters(),
    });
    if state.meta.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.router.stats();
    let ring = state.meta.ring();
    let gauges = Gauges {
        connections: stats.connections,
        conversations: stats.conversations,
        sessions: stats.sessions,
        peer_push_requests: stats.peer_push_requests,
        ring_epoch: ring.epoch().0,
        ring_members: ring.members().len(),
        is_leader: state.meta.is_leader(),
        ready: state.meta.is_ready(),
        users: state.meta.read(|s| s.user_count()),
        messages_indexed: state.search.indexed_total(),
        index_backlog: state.search.backlog(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges))
}
