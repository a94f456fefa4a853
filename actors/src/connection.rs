//! The connection actor: one per WebSocket, on the node that holds the socket. It owns the
//! socket's bounded outbound queue; a client that does not read fills it and is closed with
//! a resumable close code instead of slowing anyone else down.

use chat_types::{
    close, ConversationId, Event, EventSeq, NodeId, PresenceStatus, ServerFrame, UserEvent, UserId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A connection anywhere in the cluster: the node that holds it and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnRef {
    pub node: NodeId,
    pub conn: u64,
}

/// What a user's session sends to one of the user's connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PushFrame {
    /// One event of the user's stream.
    Event(Event),
    /// The connection asked to resume from a cursor the stream cannot replay from.
    Resync { event_head: EventSeq },
    /// To the sending connection: its own message is this event of the stream.
    Cursor { event_seq: EventSeq },
    /// Ephemeral, never stored: someone is typing.
    Typing {
        conversation: ConversationId,
        user: UserId,
        expires_ms: u64,
    },
    /// Ephemeral, never stored: a contact's presence changed.
    Presence {
        user: UserId,
        status: PresenceStatus,
        last_seen_ms: Option<u64>,
    },
}

impl PushFrame {
    fn into_server_frame(self) -> ServerFrame {
        match self {
            PushFrame::Event(Event { event_seq, event }) => match event {
                UserEvent::Message { message } => ServerFrame::Message {
                    event_seq: Some(event_seq),
                    message,
                },
                UserEvent::Read { conversation, seq } => ServerFrame::Read {
                    event_seq,
                    conversation,
                    seq,
                },
                UserEvent::Receipt {
                    conversation,
                    user,
                    seq,
                } => ServerFrame::Receipt {
                    event_seq,
                    conversation,
                    user,
                    seq,
                },
                UserEvent::Contact { user, relation } => ServerFrame::Contact {
                    event_seq,
                    user,
                    relation,
                },
                UserEvent::ProfileChanged { user, profile } => ServerFrame::ProfileChanged {
                    event_seq,
                    user,
                    profile,
                },
            },
            PushFrame::Resync { event_head } => ServerFrame::Resync { event_head },
            PushFrame::Cursor { event_seq } => ServerFrame::EventCursor { event_seq },
            PushFrame::Typing {
                conversation,
                user,
                expires_ms,
            } => ServerFrame::Typing {
                conversation,
                user,
                expires_ms,
            },
            PushFrame::Presence {
                user,
                status,
                last_seen_ms,
            } => ServerFrame::Presence {
                user,
                status,
                last_seen_ms,
            },
        }
    }
}

/// What the socket writer receives.
#[derive(Debug)]
pub enum Outbound {
    Frame(ServerFrame),
    Close { code: u16, reason: String },
}

pub enum ConnectionMsg {
    /// An event (or a resync notice) for this connection's user.
    Push(PushFrame),
    /// Close the socket with this code.
    Close { code: u16, reason: String },
}

pub struct ConnectionActor;

pub struct ConnectionArgs {
    pub user: UserId,
    pub out: mpsc::Sender<Outbound>,
}

pub struct ConnectionState {
    user: UserId,
    out: mpsc::Sender<Outbound>,
    closing: bool,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        Ok(ConnectionState {
            user: args.user,
            out: args.out,
            closing: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if state.closing {
            return Ok(());
        }
        match msg {
            ConnectionMsg::Push(frame) => {
                match state
                    .out
                    .try_send(Outbound::Frame(frame.into_server_frame()))
                {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(user = %state.user, "slow consumer; closing its connection");
                        state.closing = true;
                        // The writer also watches for a full queue; this close is best effort.
                        let out = state.out.clone();
                        tokio::spawn(async move {
                            let _ = out
                                .send(Outbound::Close {
                                    code: close::SLOW_CONSUMER,
                                    reason: "outbound queue full; reconnect and resume".into(),
                                })
                                .await;
                        });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => myself.stop(None),
                }
            }
            ConnectionMsg::Close { code, reason } => {
                state.closing = true;
                let _ = state.out.try_send(Outbound::Close { code, reason });
            }
        }
        Ok(())
    }
}
