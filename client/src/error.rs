//! The one error type of the SDK.

use chat_types::{ErrorCode, WireError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The HTTP request failed below the protocol (connect, I/O, a status without an error
    /// body, a malformed base URL).
    #[error("http: {0}")]
    Http(String),
    /// The server refused the request with a stable code: an `error` frame answering a
    /// request, or the JSON body of a REST error reply.
    #[error("server refused: {0}")]
    Server(WireError),
    /// The WebSocket is closed; `code` is the server's close code when it sent one
    /// (see `chat_types::close`).
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// No reply within the request timeout.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server sent something the protocol does not allow here (a wrong reply type, a
    /// body that does not decode).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The WebSocket transport failed (connect, handshake, write).
    #[error("websocket: {0}")]
    Ws(String),
}

impl ClientError {
    /// The server's stable error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }

    /// The close code, when the error is that the connection closed with one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed { code, .. } => *code,
            _ => None,
        }
    }
}
