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
}

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
}
