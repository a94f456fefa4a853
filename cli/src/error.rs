//! The one error type of the CLI: a stable code (the server's own when it refused) and a
//! message, printed on stderr before a non-zero exit.

use std::fmt;
use std::time::Duration;

use chat_client::ClientError;
use chat_types::{close, ErrorCode};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError {
    /// The server's stable error code (`unauthorized`, `not_found`, ...) when the server
    /// refused; otherwise one of the CLI's own: `connection_failed`, `timeout`, `closed`,
    /// `protocol`, `not_logged_in`, `invalid_argument`, `io`.
    pub code: String,
    pub message: String,
    /// Whether trying the same thing again may succeed.
    pub retry: bool,
    /// How long the server asked to wait before retrying.
    pub retry_after: Option<Duration>,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>) -> CliError {
        CliError {
            code: code.to_owned(),
            message: message.into(),
            retry: false,
            retry_after: None,
        }
    }

    pub fn io(what: &str, e: &std::io::Error) -> CliError {
        let code = if e.kind() == std::io::ErrorKind::BrokenPipe {
            "broken_pipe"
        } else {
            "io"
        };
        CliError::new(code, format!("{what}: {e}"))
    }

    pub fn not_logged_in() -> CliError {
        CliError::new(
            "not_logged_in",
            "no session token: run `chat login USER` first (or set CHAT_TOKEN)",
        )
    }

    pub fn is_broken_pipe(&self) -> bool {
        self.code == "broken_pipe"
    }

    /// The session is gone (wrong password, revoked or unknown token): retrying cannot help.
    pub fn is_unauthorized(&self) -> bool {
        self.code == "unauthorized"
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The wire spelling of a code (`not_found`), whatever the enum grows.
pub fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}").to_lowercase(),
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        match e {
            ClientError::Server(wire) => CliError {
                code: code_name(wire.code),
                message: wire.message,
                retry: wire.retry,
                retry_after: wire.retry_after_ms.map(Duration::from_millis),
            },
            ClientError::Http(m) => CliError {
                retry: true,
                ..CliError::new("connection_failed", m)
            },
            ClientError::Ws(m) => CliError {
                retry: true,
                ..CliError::new("connection_failed", m)
            },
            ClientError::Timeout => CliError {
                retry: true,
                ..CliError::new("timeout", "no answer from the server in time")
            },
            ClientError::Closed { code, reason } => closed(code, &reason),
            ClientError::Protocol(m) => CliError::new("protocol", m),
        }
    }
}

/// What a closed connection means for the user, by close code.
pub fn closed(code: Option<u16>, reason: &str) -> CliError {
    let shown = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match code {
        Some(close::UNAUTHORIZED) => CliError::new(
            "unauthorized",
            format!("the session was revoked{shown}; log in again"),
        ),
        Some(c @ (close::PROTOCOL_ABUSE | close::HANDSHAKE)) => CliError::new(
            "closed",
            format!("the server closed the connection (code {c}){shown}"),
        ),
        Some(c) => CliError {
            retry: true,
            ..CliError::new(
                "closed",
                format!("the server closed the connection (code {c}){shown}"),
            )
        },
        None => CliError {
            retry: true,
            ..CliError::new("closed", format!("the connection ended{shown}"))
        },
    }
}

#[cfg(test)]
mod tests {
    use chat_types::WireError;

    use super::*;

    #[test]
    fn server_refusals_keep_their_stable_code() {
        let e = CliError::from(ClientError::Server(WireError::new(
            ErrorCode::Unauthorized,
            "wrong password",
        )));
        assert_eq!(e.code, "unauthorized");
        assert_eq!(e.message, "wrong password");
        assert!(!e.retry);
        let e = CliError::from(ClientError::Server(WireError::new(
            ErrorCode::RateLimited,
            "slow down",
        )));
        assert_eq!((e.code.as_str(), e.retry), ("rate_limited", true));
    }

    #[test]
    fn close_codes_decide_whether_to_reconnect() {
        assert!(closed(Some(close::UNAUTHORIZED), "").is_unauthorized());
        assert!(!closed(Some(close::PROTOCOL_ABUSE), "").retry);
        assert!(closed(Some(close::GOING_AWAY), "bye").retry);
        assert!(closed(None, "").retry);
        assert!(CliError::from(ClientError::Timeout).retry);
    }
}
