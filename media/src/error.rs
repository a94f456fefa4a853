//! The crate's single error type and its stable codes.

/// Every failure `chat-media` can report.
///
/// Messages never contain user content (file names, bytes); they are safe to log.
/// [`MediaError::code`] gives a stable snake_case code for API responses.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A file-system operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The content is (or would become) larger than `limit` bytes.
    #[error("content exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The blob or upload does not exist (or belongs to someone else).
    #[error("not found")]
    NotFound,
    /// The content type is not on the allow-list.
    #[error("unsupported media type: {reason}")]
    Unsupported { reason: String },
    /// The image header declares more pixels (or a longer side) than allowed.
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// The image could not be decoded or encoded.
    #[error("bad image: {0}")]
    BadImage(String),
    /// An upload chunk was sent at the wrong offset.
    #[error("offset mismatch, expected {expected}")]
    OffsetMismatch { expected: u64 },
    /// Another request is writing to the same upload.
    #[error("upload is busy")]
    UploadBusy,
    /// The upload id is not 32 lowercase hex characters.
    #[error("invalid upload id")]
    InvalidUploadId,
    /// The hash is not 64 hex characters.
    #[error("invalid hash")]
    InvalidHash,
    /// The content does not hash to the expected value.
    #[error("content hash mismatch")]
    HashMismatch,
    /// No requested byte range overlaps the content (HTTP 416).
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
}

impl MediaError {
    /// A stable snake_case code per variant, for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::Io(_) => "io",
            MediaError::TooLarge { .. } => "too_large",
            MediaError::NotFound => "not_found",
            MediaError::Unsupported { .. } => "unsupported_media_type",
            MediaError::TooManyPixels { .. } => "too_many_pixels",
            MediaError::BadImage(_) => "bad_image",
            MediaError::OffsetMismatch { .. } => "offset_mismatch",
            MediaError::UploadBusy => "upload_busy",
            MediaError::InvalidUploadId => "invalid_upload_id",
            MediaError::InvalidHash => "invalid_hash",
            MediaError::HashMismatch => "hash_mismatch",
            MediaError::RangeNotSatisfiable => "range_not_satisfiable",
        }
    }

    /// Maps an I/O "not found" to [`MediaError::NotFound`], anything else to [`MediaError::Io`].
    pub(crate) fn from_io_not_found(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            MediaError::NotFound
        } else {
            MediaError::Io(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_distinct_snake_case() {
        let all = [
            MediaError::Io(std::io::Error::other("x")),
            MediaError::TooLarge { limit: 1 },
            MediaError::NotFound,
            MediaError::Unsupported { reason: "x".into() },
            MediaError::TooManyPixels {
                width: 1,
                height: 1,
                max_pixels: 0,
            },
            MediaError::BadImage("x".into()),
            MediaError::OffsetMismatch { expected: 3 },
            MediaError::UploadBusy,
            MediaError::InvalidUploadId,
            MediaError::InvalidHash,
            MediaError::HashMismatch,
            MediaError::RangeNotSatisfiable,
        ];
        let codes: HashSet<&str> = all.iter().map(MediaError::code).collect();
        assert_eq!(codes.len(), all.len());
        for c in &codes {
            assert!(
                c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c}"
            );
        }
        assert_eq!(
            MediaError::Unsupported {
                reason: String::new()
            }
            .code(),
            "unsupported_media_type"
        );
        assert_eq!(
            MediaError::RangeNotSatisfiable.code(),
            "range_not_satisfiable"
        );
    }

    #[test]
    fn io_not_found_maps_to_not_found() {
        let e = MediaError::from_io_not_found(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(e, MediaError::NotFound));
        let e = MediaError::from_io_not_found(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        ));
        assert!(matches!(e, MediaError::Io(_)));
    }
}
