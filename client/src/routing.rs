//! Matching server frames to the requests waiting for them.
//!
//! Kept apart from the socket so that the rules can be tested without one: a frame naming the
//! id of a waiting request goes to that request; a `message` is a push; everything else (an
//! error frame for an id nobody waits for, a reply that came after its request timed out) is
//! unsolicited and goes to the raw-event channel for tests and diagnostics.

use std::collections::HashMap;

use chat_types::EventSeq;
use chat_types::{Message, ServerFrame};
use tokio::sync::oneshot;

use crate::connection::CloseInfo;
use crate::error::ClientError;

pub(crate) type Reply = Result<ServerFrame, ClientError>;

/// Where a decoded frame went.
#[derive(Debug)]
pub(crate) enum Routed {
    /// Handed to the request that waited for it.
    Delivered,
    /// A push for the user.
    Push(Message, Option<EventSeq>),
    /// Nobody waited for it.
    Unsolicited(ServerFrame),
}

/// The requests in flight on one connection, and whether it has closed.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    waiting: HashMap<String, oneshot::Sender<Reply>>,
    /// The id of the `hello` in flight: a `welcome` or `error` without an id answers it.
    hello: Option<String>,
    closed: Option<CloseInfo>,
}

impl Pending {
    /// Starts waiting for the reply to `id`; fails once the connection has closed, so that no
    /// request can wait for a reply that will never come.
    pub(crate) fn register(
        &mut self,
        id: &str,
        is_hello: bool,
    ) -> Result<oneshot::Receiver<Reply>, ClientError> {
        if let Some(closed) = &self.closed {
            return Err(closed.to_error());
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(id.to_owned(), tx);
        if is_hello {
            self.hello = Some(id.to_owned());
        }
        Ok(rx)
    }

    /// Stops waiting for `id` (answered, timed out or abandoned).
    pub(crate) fn cancel(&mut self, id: &str) {
        self.waiting.remove(id);
        if self.hello.as_deref() == Some(id) {
            self.hello = None;
        }
    }

    pub(crate) fn route(&mut self, frame: ServerFrame) -> Routed {
        let id = match &frame {
            ServerFrame::Message { .. }
            | ServerFrame::Resync { .. }
            | ServerFrame::EventCursor { .. }
            | ServerFrame::Read { .. }
            | ServerFrame::Receipt { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Contact { .. }
            | ServerFrame::ProfileChanged { .. } => None,
            ServerFrame::Welcome { id, .. } | ServerFrame::Error { id, .. } => {
                id.clone().or_else(|| self.hello.clone())
            }
            ServerFrame::Pong { id }
            | ServerFrame::Conversation { id, .. }
            | ServerFrame::Ack { id, .. }
            | ServerFrame::History { id, .. }
            | ServerFrame::Profile { id, .. }
            | ServerFrame::Settings { id, .. }
            | ServerFrame::Sessions { id, .. }
            | ServerFrame::SessionRevoked { id, .. }
            | ServerFrame::Contacts { id, .. }
            | ServerFrame::Ok { id }
            | ServerFrame::Group { id, .. }
            | ServerFrame::Groups { id, .. }
            | ServerFrame::BroadcastResult { id, .. }
            | ServerFrame::Conversations { id, .. }
            | ServerFrame::Blocks { id, .. }
            | ServerFrame::Relation { id, .. } => Some(id.clone()),
        };
        if let ServerFrame::Message { message, event_seq } = frame {
            return Routed::Push(message, event_seq);
        }
        let Some(id) = id else {
            return Routed::Unsolicited(frame);
        };
        let Some(tx) = self.waiting.remove(&id) else {
            return Routed::Unsolicited(frame);
        };
        if self.hello.as_deref() == Some(id.as_str()) {
            self.hello = None;
        }
        match tx.send(Ok(frame)) {
            Ok(()) => Routed::Delivered,
            // The request's future was dropped between its last poll and now.
            Err(Ok(frame)) => Routed::Unsolicited(frame),
            Err(Err(_)) => Routed::Delivered,
        }
    }

    /// Records that the connection closed and fails every waiting request with it. The first
    /// close recorded wins.
    pub(crate) fn close(&mut self, info: CloseInfo) {
        let info = self.closed.get_or_insert(info).clone();
        self.hello = None;
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(info.to_error()));
        }
    }

    pub(crate) fn closed(&self) -> Option<&CloseInfo> {
        self.closed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{ClientMsgId, ConversationId, ErrorCode, Seq, UserId, WireError};

    use super::*;

    fn message() -> Message {
        Message {
            conversation: ConversationId::direct(UserId(1), UserId(2)),
            seq: Seq(1),
            sender: UserId(1),
            client_msg_id: ClientMsgId::new("c1").unwrap(),
            body: "hi".into(),
            ts_ms: 1,
            refers: None,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn replies_go_to_the_request_naming_their_id() {
        let mut p = Pending::default();
        let mut one = p.register("1", false).unwrap();
        let mut two = p.register("2", false).unwrap();
        assert!(matches!(
            p.route(ServerFrame::Pong { id: "2".into() }),
            Routed::Delivered
        ));
        assert_eq!(
            two.try_recv().unwrap().unwrap(),
            ServerFrame::Pong { id: "2".into() }
        );
        assert!(one.try_recv().is_err(), "1 still waits");
        // A second reply to the same id has nobody left to go to.
        assert!(matches!(
            p.route(ServerFrame::Pong { id: "2".into() }),
            Routed::Unsolicited(_)
        ));
    }

    #[test]
    fn pushes_and_unmatched_errors_are_not_replies() {
        let mut p = Pending::default();
        let _rx = p.register("1", false).unwrap();
        assert!(matches!(
            p.route(ServerFrame::Message {
                message: message(),
                event_seq: None
            }),
            Routed::Push(..)
        ));
        let err = ServerFrame::Error {
            id: None,
            error: WireError::new(ErrorCode::MalformedFrame, "not JSON"),
        };
        assert!(matches!(p.route(err), Routed::Unsolicited(_)));
        let err = ServerFrame::Error {
            id: Some("x".into()),
            error: WireError::new(ErrorCode::InvalidArgument, "bad"),
        };
        assert!(matches!(p.route(err), Routed::Unsolicited(_)));
    }

    #[test]
    fn an_id_less_error_answers_the_hello_in_flight() {
        let mut p = Pending::default();
        let mut hello = p.register("h", true).unwrap();
        let err = ServerFrame::Error {
            id: None,
            error: WireError::new(ErrorCode::UnsupportedVersion, "v9"),
        };
        assert!(matches!(p.route(err.clone()), Routed::Delivered));
        assert_eq!(hello.try_recv().unwrap().unwrap(), err);
        // Once answered, the next id-less error is unsolicited again.
        assert!(matches!(p.route(err), Routed::Unsolicited(_)));
    }

    #[test]
    fn a_cancelled_request_gets_no_reply_and_the_reply_is_unsolicited() {
        let mut p = Pending::default();
        let _rx = p.register("1", false).unwrap();
        p.cancel("1");
        assert!(matches!(
            p.route(ServerFrame::Pong { id: "1".into() }),
            Routed::Unsolicited(_)
        ));
    }

    #[test]
    fn close_fails_waiting_requests_and_refuses_new_ones() {
        let mut p = Pending::default();
        let mut rx = p.register("1", false).unwrap();
        p.close(CloseInfo {
            code: Some(1009),
            reason: "too big".into(),
        });
        let want = ClientError::Closed {
            code: Some(1009),
            reason: "too big".into(),
        };
        assert_eq!(rx.try_recv().unwrap(), Err(want.clone()));
        assert_eq!(p.register("2", false).unwrap_err(), want);
        // A later close (the socket ending after the close frame) does not overwrite it.
        p.close(CloseInfo {
            code: None,
            reason: "eof".into(),
        });
        assert_eq!(p.closed().map(|c| c.code), Some(Some(1009)));
    }
}
