//! Actor messages between nodes: `[PEER_WIRE_VERSION] ++ MessagePack with field names`.
//! Decoding is explicit and total: bad bytes are an error, never a panic.

use chat_types::{
    Attachment, ClientMsgId, ConversationId, ConversationSummary, EventSeq, Message, MessageRef,
    NodeId, PresenceStatus, RingEpoch, Seq, UserEvent, UserId,
};
use serde::{Deserialize, Serialize};

use crate::connection::{ConnRef, PushFrame};
use crate::error::ActorError;
use crate::logs::{Entries, LogRef};
use crate::session::Outgoing;

pub const PEER_WIRE_VERSION: u8 = 1;

/// A request to another node's router. `epoch` is the sender's ring epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorRequest {
    pub epoch: RingEpoch,
    pub body: ActorRequestBody,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ActorRequestBody {
    /// To the conversation's owner: one or more messages from one sender, stored in the
    /// order given.
    Append {
        conversation: ConversationId,
        sender: UserId,
        drafts: Vec<Draft>,
        origin: Option<ConnRef>,
    },
    /// To the conversation's owner, which checks that `reader` is a member.
    History {
        conversation: ConversationId,
        reader: UserId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    },
    /// To the user's home node: add a connection; when `resume_from` is given, first send
    /// it every event after that cursor (or a resync notice).
    Attach {
        user: UserId,
        conn: ConnRef,
        resume_from: Option<EventSeq>,
    },
    /// To the user's home node.
    Detach { user: UserId, conn: ConnRef },
    /// To the user's home node: record the message as an event of the user (once) and push
    /// it to every connection of the user but `origin`.
    Deliver {
        user: UserId,
        message: Message,
        origin: Option<ConnRef>,
    },
    /// To a node that is home to some members of a conversation: deliver consecutive
    /// messages of the conversation, each with its sending connection, to each of them (one
    /// request per node, not per member or message).
    DeliverMany {
        users: Vec<UserId>,
        messages: Vec<Outgoing>,
    },
    /// To the node holding the connections.
    Push { conns: Vec<u64>, frame: PushFrame },
    /// To a node holding connections: several pushes at once (the per-node relay of a group
    /// message: one request per node, whatever the number of members there).
    PushMany { items: Vec<(Vec<u64>, PushFrame)> },
    /// To a user's home node: record an event of the user's stream (a contact or profile
    /// change) and push it.
    Notify { user: UserId, event: UserEvent },
    /// To the reader's home node: record "read up to `seq`" (never backwards), tell the
    /// reader's other connections, and send a receipt to the other members.
    MarkRead {
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
        origin: Option<ConnRef>,
    },
    /// To a member's home node: `reader` read `conversation` up to `seq`.
    Receipt {
        user: UserId,
        conversation: ConversationId,
        reader: UserId,
        seq: Seq,
    },
    /// To a user's home node: push an ephemeral frame (typing, presence) to the user's
    /// connections; nothing is stored.
    Ephemeral { user: UserId, frame: PushFrame },
    /// To a user's home node: set the presence the user shows while connected.
    SetPresence {
        user: UserId,
        status: PresenceStatus,
    },
    /// To a user's home node: a device holds every event up to `event_seq`.
    AckEvents { user: UserId, event_seq: EventSeq },
    /// To a user's home node: the user's presence now.
    GetPresence { user: UserId },
    /// To a user's home node: the user's conversations, latest first.
    ListConversations { user: UserId, limit: u32 },
    /// From a log's owner to one of its replicas: store these consecutive entries at their
    /// positions. Refused from an older epoch than the replica has seen, and answered `Gap`
    /// when the replica lacks entries before the first one.
    Replicate {
        log: LogRef,
        epoch: RingEpoch,
        entries: Entries,
        /// The owner's delivery watermark (conversation logs; 0 for event streams), so
        /// that a replica that becomes owner knows what it must deliver again.
        watermark: u64,
    },
    /// From a new owner to a node that may hold the log: refuse older epochs from now on and
    /// tell me your head.
    Seal { log: LogRef, epoch: RingEpoch },
    /// From a new owner catching up: entries after `after`, whatever the ring says.
    Fetch { log: LogRef, after: u64, limit: u32 },
    /// `node` has (re)started with no sessions: the connections of users whose home it is
    /// attach again.
    Restarted { node: NodeId },
}

/// A message as its sender wrote it; the conversation's owner assigns the rest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Draft {
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub refers: Option<MessageRef>,
    /// Resolved and authorised by the node the client sent it to.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// What became of one draft: the stored message and whether it was a retry of an earlier
/// send, or why it was not stored.
pub type Appended = Result<(Message, bool), ActorError>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ActorReply {
    /// One outcome per draft, in order.
    Appended(Vec<Appended>),
    History {
        head: Seq,
        messages: Vec<Message>,
    },
    /// A replica's head after a replicate.
    Head(u64),
    /// A sealed node's head and delivery watermark.
    Sealed {
        head: u64,
        watermark: u64,
    },
    /// A page of a log for a catching-up owner.
    Entries {
        head: u64,
        entries: Entries,
    },
    Conversations(Vec<ConversationSummary>),
    Presence {
        status: PresenceStatus,
        last_seen_ms: Option<u64>,
    },
    /// The user's event head when a connection attached.
    Attached {
        event_head: EventSeq,
        /// The highest event seq a device of the user acknowledged.
        acked_event_seq: EventSeq,
    },
    Done,
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ActorError> {
    let mut out = vec![PEER_WIRE_VERSION];
    rmp_serde::encode::write_named(&mut out, v)
        .map_err(|e| ActorError::BadPayload(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ActorError> {
    match bytes.split_first() {
        Some((&PEER_WIRE_VERSION, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| ActorError::BadPayload(e.to_string()))
        }
        Some((v, _)) => Err(ActorError::BadPayload(format!(
            "actor wire version {v} is not supported"
        ))),
        None => Err(ActorError::BadPayload("empty actor payload".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_types::NodeId;

    #[test]
    fn requests_round_trip_and_junk_is_an_error() {
        let req = ActorRequest {
            epoch: RingEpoch(4),
            body: ActorRequestBody::Attach {
                user: UserId(3),
                conn: ConnRef {
                    node: NodeId(1),
                    conn: 9,
                },
                resume_from: Some(EventSeq(4)),
            },
        };
        let bytes = encode(&req).expect("encode");
        let back: ActorRequest = decode(&bytes).expect("decode");
        assert_eq!(back.epoch, RingEpoch(4));
        assert!(matches!(
            back.body,
            ActorRequestBody::Attach {
                user: UserId(3),
                ..
            }
        ));
        assert!(decode::<ActorRequest>(&[]).is_err());
        assert!(decode::<ActorRequest>(&[2, 0]).is_err());
        assert!(decode::<ActorRequest>(&[1, 0xc1, 0xff]).is_err());
        let reply: Result<ActorReply, ActorError> = Err(ActorError::Forbidden);
        let back: Result<ActorReply, ActorError> =
            decode(&encode(&reply).expect("encode")).expect("decode");
        assert!(matches!(back, Err(ActorError::Forbidden)));
    }
}
