//! The per-user event stream: every change a user must learn about, numbered per user.
//! `event_seq` is the single resume cursor across all of a user's conversations.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, Seq, UserId};
use crate::wire::{Message, Profile, Relation};

/// A position in one user's event stream. The first event is 1; 0 means "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EventSeq(pub u64);

impl EventSeq {
    pub fn next(self) -> EventSeq {
        EventSeq(self.0 + 1)
    }
}

impl fmt::Display for EventSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What happened. New kinds are only added, never renamed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserEvent {
    /// A new message in one of the user's conversations (the user's own included).
    Message { message: Message },
    /// The user read `conversation` up to `seq` (on any device).
    Read {
        conversation: ConversationId,
        seq: Seq,
    },
    /// Another member of `conversation` read it up to `seq`.
    Receipt {
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    },
    /// The user's relation with `user` changed (a contact request arrived or was answered, a
    /// contact was removed; one's own changes too, for one's other devices). Blocks are told
    /// only to the blocker.
    Contact { user: UserId, relation: Relation },
    /// `user` (a contact, or oneself) changed their profile; `profile` is the profile the
    /// change made (absent in events stored before it was added), so that a client need not
    /// read it from a node that may not have applied the change yet.
    ProfileChanged {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<Profile>,
    },
}

/// One entry of a user's event stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_seq: EventSeq,
    pub event: UserEvent,
}
