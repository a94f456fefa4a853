//! chat-types: the vocabulary every other crate and every client shares.
//!
//! Owns the id newtypes (`UserId`, `ConversationId`, `Seq`, ...), the public wire frames of
//! protocol v1 (JSON over WebSocket, and the REST bodies; accounts, messages, profiles,
//! sessions, contacts, blocks, media and search), the stable error codes and the WebSocket close codes, and
//! the validation rules for client-supplied values.
//!
//! Must not depend on anything but serde: no storage, no runtime, no networking. Clients (the
//! SDK, the load tester, the web client through `docs/protocol.md`) see the product only
//! through what is defined here.

pub mod error;
pub mod event;
pub mod ids;
pub mod limits;
pub mod media;
pub mod rest;
pub mod search;
pub mod wire;

pub use error::{close, ErrorCode, WireError};
pub use event::{Event, EventSeq, UserEvent};
pub use ids::{ClientMsgId, ConversationId, GroupId, IdError, NodeId, RingEpoch, Seq, UserId};
pub use limits::{
    validate_avatar, validate_body, validate_display_name, validate_password, validate_session_id,
    validate_status_text, validate_username, Limits, ValidationError,
};
pub use media::{
    Attachment, MediaId, MediaInfo, MediaKind, MediaLink, ThumbnailInfo, UploadCreate,
    UploadStatus, MAX_ATTACHMENTS,
};
pub use wire::{
    BroadcastOutcome, ClientFrame, ContactEntry, ConversationInfo, ConversationSummary, DmPolicy,
    GroupChange, GroupInfo, GroupMember, Message, MessageRef, PresenceInfo, PresenceStatus,
    Profile, Relation, Role, ServerFrame, SessionInfo, Settings, UserSummary, MAX_REACTION_BYTES,
    TYPING_TTL_MS,
};

/// The protocol version this build speaks. A client's `hello` must name it.
pub const PROTOCOL_VERSION: u32 = 1;
