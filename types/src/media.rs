//! Media on the wire: ids, the description a message carries for each attached file, and the
//! REST bodies of uploads. The bytes themselves go out of band over HTTP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{IdError, UserId};

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

/// A media id: 32 lowercase hex characters chosen by the server at upload. Opaque to clients.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaId(String);

impl MediaId {
    pub const LEN: usize = 32;

    /// Checks the format; anything else is refused before it reaches storage or a path.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(MediaId(s.to_owned()))
        } else {
            Err(IdError::MalformedMediaId)
        }
    }

    /// A new id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        use fmt::Write;
        let mut s = String::with_capacity(Self::LEN);
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        MediaId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaId({})", self.0)
    }
}

impl FromStr for MediaId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        MediaId::parse(s)
    }
}

impl Serialize for MediaId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MediaId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MediaId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What kind of player or viewer a file needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    File,
}

/// One thumbnail of an image: `size` is `s` (96x96 square), `m` (within 320x320) or `l`
/// (within 1280x1280); never larger than the original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailInfo {
    pub size: String,
    pub width: u32,
    pub height: u32,
}

/// A file attached to a message, as the message carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: MediaId,
    /// Decided by the server from the content, never from the name.
    pub mime: String,
    pub kind: MediaKind,
    pub size: u64,
    /// The uploader's file name, sanitized (no path, no control characters).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbnails: Vec<ThumbnailInfo>,
}

/// `GET /v1/media/{id}/info`, and the reply to a finished upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    pub id: MediaId,
    pub mime: String,
    pub kind: MediaKind,
    pub size: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default)]
    pub thumbnails: Vec<ThumbnailInfo>,
    pub uploader: UserId,
    pub created_ms: u64,
}

impl MediaInfo {
    /// What a message carries for this media.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            mime: self.mime.clone(),
            kind: self.kind,
            size: self.size,
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            thumbnails: self.thumbnails.clone(),
        }
    }
}

/// Body of `POST /v1/uploads`: starts a resumable upload of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadCreate {
    pub name: String,
    pub size: u64,
}

/// A resumable upload's state; `media` is set once the last byte arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    pub upload_id: String,
    pub offset: u64,
    pub size: u64,
    #[serde(default)]
    pub media: Option<MediaInfo>,
}

/// `POST /v1/media/{id}/link`: URLs that work without the `Authorization` header (in `<img>`
/// and `<video>`), until `expires_ms` or until the session that asked is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaLink {
    pub url: String,
    /// By thumbnail size (`s`, `m`, `l`), for images.
    #[serde(default)]
    pub thumbnails: std::collections::BTreeMap<String, String>,
    pub expires_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_checked() {
        let id = MediaId::from_random([0xab; 16]);
        assert_eq!(id.as_str().len(), MediaId::LEN);
        assert_eq!(MediaId::parse(id.as_str()).expect("valid"), id);
        for bad in [
            "",
            "../../etc/passwd",
            &"A".repeat(32),
            &"a".repeat(31),
            &"g".repeat(32),
        ] {
            assert!(MediaId::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(serde_json::from_str::<MediaId>(&json).expect("back"), id);
        assert!(serde_json::from_str::<MediaId>("\"x/y\"").is_err());
    }
}
