//! Limits announced in `welcome` and the validation rules for client-supplied values.

use serde::{Deserialize, Serialize};

/// Limits the server enforces, announced to each client in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest WebSocket frame accepted; larger ones close the connection with 1009.
    pub max_frame_bytes: u32,
    /// Largest message body, in bytes of UTF-8.
    pub max_body_bytes: u32,
    /// Most messages one history page returns.
    pub max_history_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            max_history_page: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("username must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit")]
    Username,
    #[error("password must be 8 to 256 bytes")]
    Password,
    #[error("message body must be 1 to {max} bytes")]
    Body { max: u32 },
    #[error("display name must be 1 to {DISPLAY_NAME_MAX_CHARS} characters, not only spaces, and no control characters")]
    DisplayName,
    #[error(
        "status text must be at most {STATUS_TEXT_MAX_CHARS} characters, and no control characters"
    )]
    StatusText,
    #[error("avatar must be 1 to {AVATAR_MAX_LEN} printable ASCII characters without spaces (a media id), or null")]
    Avatar,
    #[error("session id must be {SESSION_ID_LEN} lowercase hex characters")]
    SessionId,
}

/// Most characters (Unicode scalar values) of a display name.
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
/// Most characters of a status text.
pub const STATUS_TEXT_MAX_CHARS: usize = 140;
/// Most bytes of an avatar reference (an opaque media id).
pub const AVATAR_MAX_LEN: usize = 64;
/// Length of a session id: the first hex characters of the session's token hash.
pub const SESSION_ID_LEN: usize = 16;

/// Usernames are case-insensitive: this returns the canonical (lowercase) form.
pub fn validate_username(name: &str) -> Result<String, ValidationError> {
    let lower = name.to_ascii_lowercase();
    let ok = (3..=32).contains(&lower.len())
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && lower
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(lower)
    } else {
        Err(ValidationError::Username)
    }
}

pub fn validate_password(password: &str) -> Result<(), ValidationError> {
    if (8..=256).contains(&password.len()) {
        Ok(())
    } else {
        Err(ValidationError::Password)
    }
}

pub fn validate_body(body: &str, limits: &Limits) -> Result<(), ValidationError> {
    if body.is_empty() || body.len() > limits.max_body_bytes as usize {
        Err(ValidationError::Body {
            max: limits.max_body_bytes,
        })
    } else {
        Ok(())
    }
}

/// A display name: 1 to 64 characters, not all whitespace, no control characters.
pub fn validate_display_name(name: &str) -> Result<(), ValidationError> {
    let chars = name.chars().count();
    let ok = (1..=DISPLAY_NAME_MAX_CHARS).contains(&chars)
        && !name.chars().all(char::is_whitespace)
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::DisplayName)
    }
}

/// A status text: 0 to 140 characters (empty clears it), no control characters.
pub fn validate_status_text(text: &str) -> Result<(), ValidationError> {
    if text.chars().count() <= STATUS_TEXT_MAX_CHARS && !text.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ValidationError::StatusText)
    }
}

/// An avatar reference: an opaque media id of 1 to 64 printable ASCII characters.
pub fn validate_avatar(avatar: &str) -> Result<(), ValidationError> {
    let ok = (1..=AVATAR_MAX_LEN).contains(&avatar.len())
        && avatar.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Avatar)
    }
}

/// A session id as `GET /v1/me/sessions` lists it: 16 lowercase hex characters.
pub fn validate_session_id(id: &str) -> Result<(), ValidationError> {
    let ok = id.len() == SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::SessionId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_canonicalised_and_checked() {
        assert_eq!(validate_username("Alice_1").as_deref(), Ok("alice_1"));
        for bad in ["ab", "_alice", "al ice", "élodie", &"a".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn body_limits() {
        let l = Limits::default();
        assert!(validate_body("", &l).is_err());
        assert!(validate_body("hi", &l).is_ok());
        assert!(validate_body(&"x".repeat(16 * 1024 + 1), &l).is_err());
    }

    #[test]
    fn profile_field_rules() {
        assert!(validate_display_name("Alice Liddell").is_ok());
        assert!(validate_display_name("Élodie 🌸").is_ok());
        assert!(validate_display_name(&"é".repeat(64)).is_ok());
        for bad in ["", "   ", "a\nb", "tab\there", &"x".repeat(65)] {
            assert!(validate_display_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_status_text("").is_ok());
        assert!(validate_status_text(&"ü".repeat(140)).is_ok());
        assert!(validate_status_text(&"ü".repeat(141)).is_err());
        assert!(validate_status_text("line\nbreak").is_err());
        assert!(validate_avatar("media-01HZX").is_ok());
        for bad in ["", "has space", "ü", &"m".repeat(65)] {
            assert!(validate_avatar(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_id_rules() {
        assert!(validate_session_id("0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdefa",
            "0123456789abcdeg",
        ] {
            assert!(validate_session_id(bad).is_err(), "{bad:?}");
        }
    }
}
