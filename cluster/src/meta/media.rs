//! Media records in the metadata: who uploaded what, where its bytes are (by content hash),
//! which conversations refer to it, and each user's storage use for the quota.
//!
//! The bytes live on the nodes (see the node's media service); what Raft holds is small and
//! must be the same everywhere, because every node decides downloads from it: a user may read
//! a media when they uploaded it, when it is public (an avatar), or when they may read a
//! conversation that refers to it.

use std::collections::BTreeSet;

use chat_storage::keys::encode_versioned;
use chat_types::{ConversationId, MediaId, MediaInfo, MediaKind, ThumbnailInfo, UserId};
use serde::{Deserialize, Serialize};

use super::{Applied, MetaResponse, MetaState, MetaWrite, CF, FORMAT};

/// Key prefix of media records: `m/` ++ media id (32 ASCII hex characters).
pub(super) const MEDIA: &[u8; 2] = b"m/";

/// One stored file of a media (the original or a thumbnail): its content hash and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lowercase hex SHA-256 of the content: where the bytes are found on the ring.
    pub hash: String,
    pub size: u64,
    pub mime: String,
}

/// A thumbnail of an image media.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbRecord {
    /// `s`, `m` or `l`.
    pub size: String,
    pub width: u32,
    pub height: u32,
    pub blob: BlobRef,
}

/// One uploaded media, as the metadata keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub uploader: UserId,
    pub blob: BlobRef,
    pub kind: MediaKind,
    /// Sanitized by the node before it gets here.
    pub name: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub thumbnails: Vec<ThumbRecord>,
    pub created_ms: u64,
    /// Conversations with a message that carries this media.
    pub conversations: BTreeSet<ConversationId>,
    /// Readable by every signed-in user (an avatar).
    pub public: bool,
}

impl MediaRecord {
    /// The public description of the media.
    pub fn info(&self, id: &MediaId) -> MediaInfo {
        MediaInfo {
            id: id.clone(),
            mime: self.blob.mime.clone(),
            kind: self.kind,
            size: self.blob.size,
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            thumbnails: self
                .thumbnails
                .iter()
                .map(|t| ThumbnailInfo {
                    size: t.size.clone(),
                    width: t.width,
                    height: t.height,
                })
                .collect(),
            uploader: self.uploader,
            created_ms: self.created_ms,
        }
    }
}

pub(super) fn media_key(id: &MediaId) -> Vec<u8> {
    let mut k = MEDIA.to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

impl MetaState {
    pub fn media(&self, id: &MediaId) -> Option<&MediaRecord> {
        self.media.get(id)
    }

    /// Bytes of media `user` uploaded (originals; thumbnails are not counted).
    pub fn media_usage(&self, user: UserId) -> u64 {
        self.media_usage.get(&user).copied().unwrap_or(0)
    }

    /// Whether `user` may read conversation `c` now: a member of its direct pair or group.
    pub fn may_read_conversation(&self, user: UserId, c: &ConversationId) -> bool {
        match c.group_id() {
            Some(g) => self
                .groups_by_user
                .get(&user)
                .is_some_and(|gs| gs.contains(&g)),
            None => c.is_member(user),
        }
    }

    /// Whether `user` may download media `id`: its uploader, anyone when it is public, or a
    /// member of a conversation whose messages carry it. A removed member loses access with
    /// the conversation.
    pub fn may_read_media(&self, user: UserId, id: &MediaId) -> bool {
        self.media.get(id).is_some_and(|m| {
            m.uploader == user
                || m.public
                || m.conversations
                    .iter()
                    .any(|c| self.may_read_conversation(user, c))
        })
    }

    pub(super) fn load_media(&mut self, id: MediaId, record: MediaRecord) {
        *self.media_usage.entry(record.uploader).or_default() += record.blob.size;
        self.media.insert(id, record);
    }

    pub(super) fn apply_media(&mut self, cmd: &MediaCommand) -> Applied {
        match cmd {
            MediaCommand::Add {
                id,
                record,
                quota_bytes,
            } => {
                if self.media.contains_key(id) {
                    return Ok((MetaResponse::MediaExists, Vec::new()));
                }
                let used = self.media_usage(record.uploader);
                if used.saturating_add(record.blob.size) > *quota_bytes {
                    return Ok((
                        MetaResponse::MediaQuotaExceeded {
                            used,
                            quota: *quota_bytes,
                        },
                        Vec::new(),
                    ));
                }
                let write = MetaWrite {
                    key: media_key(id),
                    value: Some(encode_versioned(CF, FORMAT, record)?),
                };
                self.load_media(id.clone(), record.clone());
                Ok((MetaResponse::MediaAdded, vec![write]))
            }
            MediaCommand::Attach {
                media,
                conversation,
            } => {
                if media.iter().any(|id| !self.media.contains_key(id)) {
                    return Ok((MetaResponse::UnknownMedia, Vec::new()));
                }
                let mut writes = Vec::new();
                for id in media {
                    if let Some(rec) = self.media.get_mut(id) {
                        if rec.conversations.insert(*conversation) {
                            writes.push(MetaWrite {
                                key: media_key(id),
                                value: Some(encode_versioned(CF, FORMAT, &*rec)?),
                            });
                        }
                    }
                }
                Ok((MetaResponse::MediaAttached, writes))
            }
            MediaCommand::Publish { id, user } => match self.media.get_mut(id) {
                Some(rec) if rec.uploader == *user => {
                    let mut writes = Vec::new();
                    if !rec.public {
                        rec.public = true;
                        writes.push(MetaWrite {
                            key: media_key(id),
                            value: Some(encode_versioned(CF, FORMAT, &*rec)?),
                        });
                    }
                    Ok((MetaResponse::MediaAttached, writes))
                }
                _ => Ok((MetaResponse::UnknownMedia, Vec::new())),
            },
        }
    }
}

/// Changes to media records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaCommand {
    /// A finished upload whose bytes are on the ring; refused past `quota_bytes` of the
    /// uploader's total.
    Add {
        id: MediaId,
        record: MediaRecord,
        quota_bytes: u64,
    },
    /// A message of `conversation` carries these media: its members may read them.
    Attach {
        media: Vec<MediaId>,
        conversation: ConversationId,
    },
    /// The uploader made the media public (an avatar).
    Publish { id: MediaId, user: UserId },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaCommand;

    fn record(uploader: u64, size: u64) -> MediaRecord {
        MediaRecord {
            uploader: UserId(uploader),
            blob: BlobRef {
                hash: "ab".repeat(32),
                size,
                mime: "image/png".into(),
            },
            kind: MediaKind::Image,
            name: "cat.png".into(),
            width: Some(10),
            height: Some(10),
            thumbnails: Vec::new(),
            created_ms: 5,
            conversations: BTreeSet::new(),
            public: false,
        }
    }

    fn add(s: &mut MetaState, id: &MediaId, uploader: u64, size: u64) -> MetaResponse {
        s.apply(&MetaCommand::Media(MediaCommand::Add {
            id: id.clone(),
            record: record(uploader, size),
            quota_bytes: 100,
        }))
        .expect("apply")
        .0
    }

    #[test]
    fn quota_attach_and_access_follow_the_records_and_survive_a_reload() {
        let mut s = MetaState::default();
        let a = MediaId::from_random([1; 16]);
        let b = MediaId::from_random([2; 16]);
        let c = MediaId::from_random([3; 16]);
        assert_eq!(add(&mut s, &a, 1, 60), MetaResponse::MediaAdded);
        assert_eq!(
            add(&mut s, &b, 1, 41),
            MetaResponse::MediaQuotaExceeded {
                used: 60,
                quota: 100
            }
        );
        assert_eq!(add(&mut s, &b, 2, 41), MetaResponse::MediaAdded);
        assert_eq!(s.media_usage(UserId(1)), 60);

        // Only the uploader until a conversation refers to it.
        assert!(s.may_read_media(UserId(1), &a));
        assert!(!s.may_read_media(UserId(3), &a));
        let dm = ConversationId::direct(UserId(1), UserId(3));
        let attach = |s: &mut MetaState, media: Vec<MediaId>| {
            s.apply(&MetaCommand::Media(MediaCommand::Attach {
                media,
                conversation: dm,
            }))
            .expect("apply")
            .0
        };
        assert_eq!(
            attach(&mut s, vec![a.clone(), c.clone()]),
            MetaResponse::UnknownMedia
        );
        assert!(
            !s.may_read_media(UserId(3), &a),
            "nothing attached on refusal"
        );
        assert_eq!(attach(&mut s, vec![a.clone()]), MetaResponse::MediaAttached);
        assert!(s.may_read_media(UserId(3), &a));
        assert!(!s.may_read_media(UserId(4), &a));

        // Publishing is the uploader's alone.
        let publish = |s: &mut MetaState, user: u64| {
            s.apply(&MetaCommand::Media(MediaCommand::Publish {
                id: b.clone(),
                user: UserId(user),
            }))
            .expect("apply")
            .0
        };
        assert_eq!(publish(&mut s, 1), MetaResponse::UnknownMedia);
        assert!(!s.may_read_media(UserId(4), &b));
        assert_eq!(publish(&mut s, 2), MetaResponse::MediaAttached);
        assert!(s.may_read_media(UserId(4), &b));

        let back = MetaState::load(s.dump().expect("dump")).expect("load");
        assert_eq!(back, s);
        assert_eq!(back.media_usage(UserId(1)), 60);
        assert!(back.may_read_media(UserId(3), &a));
    }
}
