//! Protocol v1 frames: JSON text over WebSocket, one object per frame, tagged by `type`.
//!
//! Every client request carries an `id` chosen by the client; the reply (or `error`) names the
//! same `id`. Pushes (`message`) carry no `id`. `docs/protocol.md` documents each frame.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::event::EventSeq;
use crate::ids::{ClientMsgId, ConversationId, NodeId, Seq, UserId};
use crate::limits::Limits;

/// A frame from client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame. Answered by `welcome`.
    Hello {
        #[serde(default)]
        id: Option<String>,
        version: u32,
        /// Resume the event stream after this `event_seq` (the last one the client saw): the
        /// server first sends every event after it, in order, or a `resync` notice.
        #[serde(default)]
        resume_from: Option<EventSeq>,
    },
    Ping {
        id: String,
    },
    /// Open (or find) the direct conversation with a user, named by username or id.
    OpenDirect {
        id: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        user_id: Option<UserId>,
    },
    /// Append a message. Answered by `ack` with the assigned seq.
    Send {
        id: String,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
    },
    /// A page of history: after a seq (ascending from it), or before a seq (the latest ones
    /// below it), or with neither the latest page.
    History {
        id: String,
        conversation: ConversationId,
        #[serde(default)]
        after: Option<Seq>,
        #[serde(default)]
        before: Option<Seq>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

const CLIENT_FRAME_TYPES: &[&str] = &["hello", "ping", "open_direct", "send", "history"];

impl ClientFrame {
    /// The request id, when the frame has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientFrame::Hello { id, .. } => id.as_deref(),
            ClientFrame::Ping { id }
            | ClientFrame::OpenDirect { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::History { id, .. } => Some(id),
        }
    }

    /// Decodes a text frame. On failure returns the request id when one could be read, so
    /// that the error frame can name it, and an error with a stable code.
    pub fn decode(text: &str) -> Result<ClientFrame, (Option<String>, WireError)> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            (
                None,
                WireError::new(ErrorCode::MalformedFrame, format!("not JSON: {e}")),
            )
        })?;
        let obj = value.as_object().ok_or_else(|| {
            (
                None,
                WireError::new(ErrorCode::MalformedFrame, "a frame must be a JSON object"),
            )
        })?;
        let id = obj.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let Some(kind) = obj.get("type").and_then(|v| v.as_str()) else {
            return Err((
                id,
                WireError::new(ErrorCode::MalformedFrame, "missing string field \"type\""),
            ));
        };
        let kind = kind.to_owned();
        if !CLIENT_FRAME_TYPES.contains(&kind.as_str()) {
            let shown: String = kind.chars().take(32).collect();
            return Err((
                id,
                WireError::new(
                    ErrorCode::UnknownFrame,
                    format!("unknown frame type {shown:?}"),
                ),
            ));
        }
        serde_json::from_value(value).map_err(|e| {
            (
                id,
                WireError::new(ErrorCode::InvalidArgument, format!("bad {kind} frame: {e}")),
            )
        })
    }
}

/// A user as others see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub conversation: ConversationId,
    pub members: Vec<UserSummary>,
    /// The last assigned seq (0 when empty).
    pub head: Seq,
}

/// A stored message, as history returns it and as pushes carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Server time of the append, milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

/// A frame from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        version: u32,
        user_id: UserId,
        username: String,
        /// The node this connection is on.
        node_id: NodeId,
        limits: Limits,
        /// Send something (a `ping` will do) at least this often, or be closed as dead.
        heartbeat_ms: u64,
        /// The user's latest event seq when the connection attached.
        #[serde(default)]
        event_head: EventSeq,
    },
    Pong {
        id: String,
    },
    Conversation {
        id: String,
        #[serde(flatten)]
        info: ConversationInfo,
    },
    /// The message is stored (and, from the replication issue on, on a majority of replicas).
    Ack {
        id: String,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        seq: Seq,
        ts_ms: u64,
        /// True when this client message id was already stored: `seq` is the original one.
        duplicate: bool,
    },
    History {
        id: String,
        conversation: ConversationId,
        head: Seq,
        messages: Vec<Message>,
    },
    /// A new message in one of the user's conversations (including the user's own sends from
    /// any connection).
    Message {
        /// The event's position in the user's stream: the resume cursor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_seq: Option<EventSeq>,
        #[serde(flatten)]
        message: Message,
    },
    /// The `resume_from` cursor cannot be replayed (too far behind, or unknown): fetch each
    /// conversation's history, then continue from `event_head`.
    Resync {
        event_head: EventSeq,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(flatten)]
        error: WireError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reports_stable_codes_and_keeps_the_request_id() {
        let (id, e) = ClientFrame::decode("{nope").expect_err("bad json");
        assert_eq!((id, e.code), (None, ErrorCode::MalformedFrame));
        let (id, e) = ClientFrame::decode(r#"{"type":"fly","id":"7"}"#).expect_err("unknown");
        assert_eq!(
            (id.as_deref(), e.code),
            (Some("7"), ErrorCode::UnknownFrame)
        );
        let (id, e) = ClientFrame::decode(r#"{"type":"send","id":"8","conversation":"dm:1:2"}"#)
            .expect_err("missing fields");
        assert_eq!(
            (id.as_deref(), e.code),
            (Some("8"), ErrorCode::InvalidArgument)
        );
        let (_, e) = ClientFrame::decode("[1,2]").expect_err("not an object");
        assert_eq!(e.code, ErrorCode::MalformedFrame);
    }

    #[test]
    fn send_frame_round_trips() {
        let text =
            r#"{"type":"send","id":"1","conversation":"dm:1:2","client_msg_id":"c1","body":"hi"}"#;
        let frame = ClientFrame::decode(text).expect("valid");
        assert_eq!(
            frame,
            ClientFrame::Send {
                id: "1".into(),
                conversation: ConversationId::direct(UserId(2), UserId(1)),
                client_msg_id: ClientMsgId::new("c1").expect("valid"),
                body: "hi".into()
            }
        );
    }

    #[test]
    fn server_frames_are_flat_json() {
        let f = ServerFrame::Error {
            id: Some("3".into()),
            error: WireError::new(ErrorCode::Forbidden, "not a member"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&f).expect("encodes")).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["retry"], false);
        let back: ServerFrame = serde_json::from_value(v).expect("decodes");
        assert_eq!(back, f);
    }
}
