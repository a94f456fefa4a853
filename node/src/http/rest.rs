//! REST endpoints: register, login, logout, history.

use actix_web::{web, HttpRequest, HttpResponse};
use chat_types::rest::{
    HistoryQuery, HistoryResponse, LoginRequest, LoginResponse, RegisterRequest, RegisterResponse,
};
use chat_types::{ConversationId, ErrorCode, WireError};

use super::{authenticate, error_response, AppState};
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

pub async fn login(state: web::Data<AppState>, body: web::Json<LoginRequest>) -> HttpResponse {
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
    let router = state.router.clone();
    let user = principal.user_id;
    let result = state
        .runtime
        .spawn(async move {
            router
                .history(user, conversation, query.after, query.before, limit)
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
