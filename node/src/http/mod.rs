//! The public HTTP surface: REST under `/v1` (accounts, history, and in `social.rs` the rules
//! for profiles, settings, sessions, contacts and blocks; media in `media.rs`, search in
//! `search.rs`), the WebSocket at `/v1/ws`, and the
//! operator endpoints `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod broadcast;
pub mod groups;
pub mod health;
pub mod media;
pub mod rest;
pub mod search;
pub mod social;
// The web client. Its file is web.rs; the module has another name because `web` is actix-web's.
#[path = "web.rs"]
pub mod web_client;
pub mod ws;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chat_actors::Router;
use chat_cluster::Metadata;
use chat_types::{ErrorCode, WireError};

use crate::auth::{Auth, Principal};
use crate::config::Config;
use crate::metrics::Metrics;

/// Everything a request handler needs. Shared by all actix workers.
pub struct AppState {
    pub config: Config,
    pub meta: Arc<Metadata>,
    pub router: Arc<Router>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// The node's main runtime: long-lived work is spawned here, not on an actix worker.
    pub runtime: tokio::runtime::Handle,
    pub limits: Arc<crate::ratelimit::RateLimits>,
    pub media: Arc<crate::media::MediaService>,
    pub search: Arc<crate::search::SearchService>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/v1/register", web::post().to(rest::register))
        .route("/v1/login", web::post().to(rest::login))
        .route("/v1/logout", web::post().to(rest::logout))
        .route(
            "/v1/conversations/{conversation}/messages",
            web::get().to(rest::history),
        )
        .route("/v1/me/profile", web::get().to(rest::my_profile))
        .route("/v1/me/profile", web::patch().to(rest::update_my_profile))
        .route(
            "/v1/users/{user_id}/profile",
            web::get().to(rest::user_profile),
        )
        .route("/v1/me/settings", web::get().to(rest::my_settings))
        .route("/v1/me/settings", web::put().to(rest::update_my_settings))
        .route("/v1/me/sessions", web::get().to(rest::my_sessions))
        .route(
            "/v1/me/sessions/{session_id}",
            web::delete().to(rest::revoke_my_session),
        )
        .route("/v1/contacts", web::get().to(rest::contacts))
        .route(
            "/v1/contacts/requests",
            web::post().to(rest::request_contact),
        )
        .route(
            "/v1/contacts/requests/{user_id}/{action}",
            web::post().to(rest::answer_contact_request),
        )
        .route(
            "/v1/contacts/{user_id}",
            web::delete().to(rest::remove_contact),
        )
        .route("/v1/blocks", web::get().to(rest::blocks))
        .route("/v1/blocks/{user_id}", web::put().to(rest::block_user))
        .route("/v1/blocks/{user_id}", web::delete().to(rest::unblock_user))
        .route("/v1/media", web::post().to(media::upload))
        .route("/v1/media/{id}", web::get().to(media::download))
        .route("/v1/media/{id}", web::head().to(media::download))
        .route("/v1/media/{id}/info", web::get().to(media::info))
        .route("/v1/media/{id}/link", web::post().to(media::link))
        .route(
            "/v1/media/{id}/thumbnails/{size}",
            web::get().to(media::thumbnail),
        )
        .route("/v1/uploads", web::post().to(media::create_upload))
        .route("/v1/uploads/{id}", web::get().to(media::upload_status))
        .route("/v1/uploads/{id}", web::patch().to(media::append_upload))
        .route("/v1/uploads/{id}", web::delete().to(media::cancel_upload))
        .route("/v1/search/messages", web::get().to(search::messages))
        .route("/v1/search/users", web::get().to(search::users))
        .route(
            "/v1/search/conversations",
            web::get().to(search::conversations),
        )
        .route("/v1/ws", web::get().to(ws::upgrade))
        .route("/v1/admin/cluster", web::get().to(admin::cluster))
        .route(
            "/v1/admin/nodes/{id}/remove",
            web::post().to(admin::remove_node),
        )
        .route("/v1/admin/drain", web::post().to(admin::drain))
        .route(
            "/v1/admin/logs/{conversation}",
            web::get().to(admin::local_log),
        )
        .route(
            "/v1/admin/search/rebuild",
            web::post().to(admin::rebuild_search),
        )
        .route("/v1/admin/faults", web::put().to(admin::set_faults));
    web_client::routes(cfg);
}

/// A REST error reply: the status from the code, the body a [`WireError`].
pub fn error_response(state: &AppState, e: WireError) -> HttpResponse {
    Metrics::inc(&state.metrics.client_errors_total);
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(status);
    if let Some(ms) = e.retry_after_ms {
        resp.insert_header(("Retry-After", ms.div_ceil(1000).to_string()));
    }
    resp.json(e)
}

/// The bearer token of a request: `Authorization: Bearer <t>`, or `?token=<t>` (browsers
/// cannot set headers on a WebSocket).
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = h.strip_prefix("Bearer ") {
            return Some(t.trim().to_owned());
        }
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

/// The query string as name -> value (empty when it does not parse).
pub fn query_params(req: &HttpRequest) -> std::collections::BTreeMap<String, String> {
    web::Query::<std::collections::BTreeMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

pub async fn authenticate(state: &AppState, req: &HttpRequest) -> Result<Principal, WireError> {
    let token = bearer_token(req)
        .ok_or_else(|| WireError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    state.auth.authenticate(&token).await
}
