//! Stable error codes and close codes. Clients match on these strings and numbers, so a code
//! is never renamed or reused; new ones are only added.

use serde::{Deserialize, Serialize};

/// What went wrong, as a stable snake_case string on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON or lacks a required field.
    MalformedFrame,
    /// The frame's `type` is not one this server knows.
    UnknownFrame,
    /// A field has a value outside its rules (length, range, format).
    InvalidArgument,
    /// `hello` named a protocol version this server does not speak.
    UnsupportedVersion,
    /// A request arrived before `hello`.
    HandshakeRequired,
    /// No session, or the token is unknown or revoked: log in again.
    Unauthorized,
    /// Authenticated, but not allowed (e.g. not a member of the conversation).
    Forbidden,
    /// The user, conversation or route does not exist.
    NotFound,
    /// The value must be unique and is taken (e.g. a username).
    Conflict,
    /// The frame or body is larger than the server's limit.
    TooLarge,
    /// Too many requests; wait `retry_after_ms`.
    RateLimited,
    /// The cluster cannot serve this now (no leader, owner unreachable); retry.
    Unavailable,
    /// A bug or a storage failure on the server.
    Internal,
    /// An upload whose content is not of an allowed type (decided from its bytes).
    UnsupportedMediaType,
    /// The upload would take the user past their storage quota.
    QuotaExceeded,
    /// A `Range` that lies wholly past the end of the media.
    RangeNotSatisfiable,
    /// A resumable upload's chunk does not start at the upload's current offset; the error's
    /// message holds the offset to resume from, also in `GET /v1/uploads/{id}`.
    OffsetMismatch,
    /// An image too large to decode safely (pixel count over the limit).
    TooManyPixels,
}

impl ErrorCode {
    /// Whether the same request may succeed if sent again unchanged.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }

    /// The HTTP status a REST endpoint answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame | ErrorCode::UnknownFrame | ErrorCode::InvalidArgument => 400,
            ErrorCode::UnsupportedVersion | ErrorCode::HandshakeRequired => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::QuotaExceeded => 413,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::OffsetMismatch => 409,
            ErrorCode::TooManyPixels => 422,
        }
    }
}

/// An error as it crosses the wire: the body of an `error` frame and of a REST error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// Human-readable; never parsed by clients.
    pub message: String,
    /// Whether retrying unchanged may succeed.
    pub retry: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            retry: code.retryable(),
            retry_after_ms: None,
        }
    }
}

/// WebSocket close codes and what the client should do after each.
pub mod close {
    /// Normal closure: the client asked for it.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect (to any node) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame was larger than `limits.max_frame_bytes`: fix the client, then reconnect.
    pub const TOO_BIG: u16 = 1009;
    /// The session token was revoked: log in again.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Too many malformed frames in a row: a broken client; do not reconnect in a loop.
    pub const PROTOCOL_ABUSE: u16 = 4002;
    /// The client did not read its pushes fast enough: reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4003;
    /// `hello` did not arrive in time, or named an unsupported version.
    pub const HANDSHAKE: u16 = 4004;
}
