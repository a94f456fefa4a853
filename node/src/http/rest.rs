//! REST endpoints: register, login, logout, history; profiles, settings, sessions, contacts
//! and blocks (their rules are in `social.rs`, shared with the WebSocket).

use actix_web::{web, HttpRequest, HttpResponse};
use chat_types::rest::{
    ContactRequestBody, HistoryQuery, HistoryResponse, LoginRequest, LoginResponse, ProfileUpdate,
    RegisterRequest, RegisterResponse, SessionsResponse, SettingsUpdate,
};
use chat_types::{ConversationId, ErrorCode, UserId, WireError};
use serde::Serialize;

use super::social::{self, ContactAction};
use super::{authenticate, error_response, AppState};
use crate::auth::Principal;
use crate::metrics::Metrics;

/// JSON bodies that fail to parse get a `WireError`, not actix's plain-text default.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let body = WireError::new(ErrorCode::InvalidArgument, format!("bad JSON body: {err}"));
    actix_web::error::InternalError::from_response(err, HttpResponse::BadRequest().json(body))
        .into()
}

pub async fn register(
    state: web::Data<AppState>,
    body: web::Json<RegisterRequest>,
) -> HttpResponse {
    match state.auth.register(&body.username, &body.password).await {
        Ok((user_id, username)) => {
            Metrics::inc(&state.metrics.registrations_total);
            HttpResponse::Created().json(RegisterResponse { user_id, username })
        }
        Err(e) => error_response(&state, e),
    }
}

pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> HttpResponse {
    let ip = req.peer_addr().map(|a| a.ip());
    if let Err(e) = state.limits.login(ip, &body.username) {
        return error_response(&state, e);
    }
    match state.auth.login(&body.username, &body.password).await {
        Ok((token, user_id, username)) => {
            Metrics::inc(&state.metrics.logins_total);
            HttpResponse::Ok().json(LoginResponse {
                token,
                user_id,
                username,
            })
        }
        Err(e) => error_response(&state, e),
    }
}

pub async fn logout(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    match state.auth.logout(&principal).await {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => error_response(&state, e),
    }
}

pub async fn history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let conversation: ConversationId = match path.parse() {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                &state,
                WireError::new(ErrorCode::InvalidArgument, e.to_string()),
            )
        }
    };
    let query = match web::Query::<HistoryQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return error_response(
                &state,
                WireError::new(ErrorCode::InvalidArgument, e.to_string()),
            )
        }
    };
    let limit = query
        .limit
        .unwrap_or(50)
        .clamp(1, state.config.limits.max_history_page);
    let (after, before) =
        match chat_types::wire::history_window(query.after, query.before, query.around, limit) {
            Ok(w) => w,
            Err(e) => return error_response(&state, e),
        };
    let router = state.router.clone();
    let user = principal.user_id;
    let result = state
        .runtime
        .spawn(async move {
            router
                .history(user, conversation, after, before, limit)
                .await
        })
        .await;
    match result {
        Ok(Ok((head, messages))) => HttpResponse::Ok().json(HistoryResponse {
            conversation,
            head,
            messages,
        }),
        Ok(Err(e)) => error_response(&state, e.to_wire()),
        Err(e) => error_response(&state, WireError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// `200` with `value` as JSON, or the error reply.
fn json_reply<T: Serialize>(state: &AppState, result: Result<T, WireError>) -> HttpResponse {
    match result {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(e) => error_response(state, e),
    }
}

/// A user id in a path: a positive decimal number.
fn parse_user(raw: &str) -> Result<UserId, WireError> {
    match raw.parse::<u64>() {
        Ok(n) if n > 0 => Ok(UserId(n)),
        _ => Err(WireError::new(
            ErrorCode::InvalidArgument,
            "a user id is a positive integer",
        )),
    }
}

/// Authenticates the request, or answers it with the error.
macro_rules! principal {
    ($state:expr, $req:expr) => {
        match authenticate(&$state, &$req).await {
            Ok(p) => p,
            Err(e) => return error_response(&$state, e),
        }
    };
}

/// Runs a contact or block action on the user named in the path.
async fn relation_action(
    state: &AppState,
    me: &Principal,
    action: ContactAction,
    raw_user: &str,
) -> HttpResponse {
    let result = match parse_user(raw_user) {
        Ok(other) => social::change_relation(state, me, action, other).await,
        Err(e) => Err(e),
    };
    json_reply(state, result)
}

/// `GET /v1/me/profile`.
pub async fn my_profile(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let me = principal!(state, req);
    json_reply(&state, social::profile(&state, me.user_id).await)
}

/// `PATCH /v1/me/profile`.
pub async fn update_my_profile(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ProfileUpdate>,
) -> HttpResponse {
    let me = principal!(state, req);
    let result = social::update_profile(&state, &me, body.into_inner()).await;
    json_reply(&state, result)
}

/// `GET /v1/users/{user_id}/profile`.
pub async fn user_profile(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let _me = principal!(state, req);
    let result = match parse_user(&path) {
        Ok(user) => social::profile(&state, user).await,
        Err(e) => Err(e),
    };
    json_reply(&state, result)
}

/// `GET /v1/me/settings`.
pub async fn my_settings(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let me = principal!(state, req);
    HttpResponse::Ok().json(social::settings(&state, &me))
}

/// `PUT /v1/me/settings`.
pub async fn update_my_settings(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SettingsUpdate>,
) -> HttpResponse {
    let me = principal!(state, req);
    let result = social::update_settings(&state, &me, body.dm_policy, body.push_preview).await;
    json_reply(&state, result)
}

/// `GET /v1/me/sessions`.
pub async fn my_sessions(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let me = principal!(state, req);
    HttpResponse::Ok().json(SessionsResponse {
        sessions: social::sessions(&state, &me),
    })
}

/// `DELETE /v1/me/sessions/{session_id}`.
pub async fn revoke_my_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let me = principal!(state, req);
    match social::revoke_session(&state, &me, &path).await {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/contacts`.
pub async fn contacts(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let me = principal!(state, req);
    HttpResponse::Ok().json(social::contacts_with_presence(&state, &me).await)
}

/// `POST /v1/contacts/requests` with `{"user_id"}` or `{"username"}`.
pub async fn request_contact(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ContactRequestBody>,
) -> HttpResponse {
    let me = principal!(state, req);
    let body = body.into_inner();
    let result = match social::resolve_user(&state, body.user_id, body.username).await {
        Ok(other) => social::change_relation(&state, &me, ContactAction::Request, other).await,
        Err(e) => Err(e),
    };
    json_reply(&state, result)
}

/// `POST /v1/contacts/requests/{user_id}/{accept|decline|cancel}`.
pub async fn answer_contact_request(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let me = principal!(state, req);
    let (user, action) = path.into_inner();
    let action = match action.as_str() {
        "accept" => ContactAction::Accept,
        "decline" => ContactAction::Decline,
        "cancel" => ContactAction::Cancel,
        _ => {
            let e = WireError::new(
                ErrorCode::NotFound,
                "no such action: use accept, decline or cancel",
            );
            return error_response(&state, e);
        }
    };
    relation_action(&state, &me, action, &user).await
}

/// `DELETE /v1/contacts/{user_id}`.
pub async fn remove_contact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let me = principal!(state, req);
    relation_action(&state, &me, ContactAction::Remove, &path).await
}

/// `GET /v1/blocks`.
pub async fn blocks(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let me = principal!(state, req);
    HttpResponse::Ok().json(social::blocks(&state, &me))
}

/// `PUT /v1/blocks/{user_id}`.
pub async fn block_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let me = principal!(state, req);
    relation_action(&state, &me, ContactAction::Block, &path).await
}

/// `DELETE /v1/blocks/{user_id}`.
pub async fn unblock_user(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let me = principal!(state, req);
    relation_action(&state, &me, ContactAction::Unblock, &path).await
}
