//! The connection actor: one per WebSocket, on the node that holds the socket. It owns the
//! socket's bounded outbound queue; a client that does not read fills it and is closed with
//! a resumable close code instead of slowing anyone else down.
//!
//! It is a task with one mailbox ([`spawn`], [`ConnectionHandle`]), not a ractor actor: it
//! has no children to supervise and is never addressed by name, and a ractor actor's ports
//! cost ~6.5 KiB per idle connection against ~1.5 KiB for this (docs/decisions.md).
//!
//! It also keeps the connection's place in its user's event stream (the cursor) and hands
//! events to the client strictly in stream order, each once, whatever order the pushes
//! arrive in: pushes of one user come from several delivery paths (one per conversation,
//! a retried push, a replay after a ring change) and may overtake each other on the way.
//! An event beyond the next one is held back; when the missing one has not come within
//! [`GAP_WAIT`], the connection asks its user's session to replay from its cursor, and if
//! that fails it closes with a resumable code so that the client resumes on its own. The
//! client never sees a gap it is not told about.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chat_types::{
    close, ClientMsgId, ConversationId, Event, EventSeq, NodeId, PresenceStatus, Seq, ServerFrame,
    UserEvent, UserId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::router::Router;

/// How long an event may wait for the one before it before the connection asks for a replay.
pub const GAP_WAIT: Duration = Duration::from_millis(300);
/// Events held back (behind a gap, or waiting for room in the socket's queue); beyond this
/// the newest are dropped (a replay from the cursor brings them back).
const MAX_HELD: usize = 2048;
/// How soon held events are tried again when the socket's queue was full.
const FLUSH_RETRY: Duration = Duration::from_millis(20);
/// A client whose queue has had no room for this long is not reading: it is closed with
/// 4003 and resumes. A burst that only outran the writer for a moment is held instead.
pub const SLOW_CONSUMER_AFTER: Duration = Duration::from_secs(5);

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
    /// The stream position this frame stands for, when it is ordered in the stream.
    fn position(&self) -> Option<EventSeq> {
        match self {
            PushFrame::Event(e) => Some(e.event_seq),
            PushFrame::Cursor { event_seq } => Some(*event_seq),
            _ => None,
        }
    }

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

/// What the socket writer receives. The frame is boxed: the queue allocates its slots ahead,
/// per connection, so an idle connection pays for slots of this size, not of a frame.
#[derive(Debug)]
pub enum Outbound {
    Frame(Box<ServerFrame>),
    Close { code: u16, reason: String },
}

pub enum ConnectionMsg {
    /// An event (or a resync notice) for this connection's user.
    Push(PushFrame),
    /// The session has the connection: events after `cursor` are the client's to receive
    /// (until now they were held back).
    Start { cursor: EventSeq },
    /// The replay asked for after a gap ended (`false`: it could not be made).
    Resumed(bool),
    /// Close the socket with this code.
    Close { code: u16, reason: String },
    /// The connection is gone: the task ends.
    Stop,
    /// Answers once everything sent before it was handled.
    #[cfg(test)]
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// The connection's cursor as the router sees it (for re-attaching after a ring change):
/// 0 until the connection has started, else the cursor plus one.
#[derive(Clone, Debug, Default)]
pub struct SharedCursor(Arc<AtomicU64>);

impl SharedCursor {
    pub fn get(&self) -> Option<EventSeq> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => Some(EventSeq(n - 1)),
        }
    }

    fn set(&self, cursor: EventSeq) {
        self.0.store(cursor.0.saturating_add(1), Ordering::Release);
    }
}

/// How many of its latest writes a connection remembers (see [`OwnWrites`]).
const OWN_WRITES: usize = 256;

/// One write a connection made itself.
#[derive(Clone, Copy, Debug)]
pub enum OwnWrite<'a> {
    /// A message it sent (or edited, deleted, reacted with, broadcast).
    Sent(ConversationId, &'a ClientMsgId),
    /// A read mark it moved.
    Read(ConversationId, Seq),
}

impl OwnWrite<'_> {
    fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        match self {
            OwnWrite::Sent(c, id) => (0u8, c, id.as_str()).hash(&mut h),
            OwnWrite::Read(c, seq) => (1u8, c, seq).hash(&mut h),
        }
        h.finish()
    }
}

/// The connection's latest own writes, noted by the router before it makes them (a hash of
/// each, at most [`OWN_WRITES`]). The protocol promises a connection only a cursor note for
/// the event its own write becomes: the session's push skips the writer, but events
/// replayed from the stream (after a gap) carry no writer, so the connection tells its own
/// from these notes. Writes older than the notes come back as events, as they would to a
/// client resuming on a new connection.
#[derive(Clone, Debug, Default)]
pub struct OwnWrites(Arc<Mutex<VecDeque<u64>>>);

impl OwnWrites {
    pub fn note<'a>(&self, writes: impl IntoIterator<Item = OwnWrite<'a>>) {
        let mut keys = crate::router::lock(&self.0);
        for w in writes {
            if keys.len() == OWN_WRITES {
                keys.pop_front();
            }
            keys.push_back(w.key());
        }
    }

    fn contains(&self, write: OwnWrite<'_>) -> bool {
        let key = write.key();
        crate::router::lock(&self.0).contains(&key)
    }

    /// Whether `event` of `user`'s stream is one of these writes.
    fn made(&self, user: UserId, event: &UserEvent) -> bool {
        match event {
            UserEvent::Message { message } if message.sender == user => {
                self.contains(OwnWrite::Sent(message.conversation, &message.client_msg_id))
            }
            UserEvent::Read { conversation, seq } => {
                self.contains(OwnWrite::Read(*conversation, *seq))
            }
            _ => false,
        }
    }
}

/// A connection actor's mailbox. Messages are boxed: the mailbox allocates its first slots
/// up front, so an idle connection pays for 32 pointers rather than 32 messages.
#[derive(Clone)]
pub struct ConnectionHandle(mpsc::UnboundedSender<Box<ConnectionMsg>>);

impl ConnectionHandle {
    /// Queues `msg`; a connection that has stopped drops it.
    pub fn send(&self, msg: ConnectionMsg) {
        let _ = self.0.send(Box::new(msg));
    }

    /// Ends the connection's task once what was queued before is handled.
    pub fn stop(&self) {
        self.send(ConnectionMsg::Stop);
    }
}

/// Starts a connection actor on the current runtime.
pub fn spawn(args: ConnectionArgs) -> ConnectionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = ConnectionState::new(args, tx.downgrade());
    tokio::spawn(state.run(rx));
    ConnectionHandle(tx)
}

pub struct ConnectionArgs {
    pub user: UserId,
    pub out: mpsc::Sender<Outbound>,
    /// This connection, as the rest of the cluster names it.
    pub me: ConnRef,
    pub router: Weak<Router>,
    pub cursor: SharedCursor,
    pub own: OwnWrites,
    /// How long the socket's queue may have no room before the client counts as not
    /// reading ([`SLOW_CONSUMER_AFTER`] in the node).
    pub slow_after: Duration,
}

struct ConnectionState {
    user: UserId,
    out: mpsc::Sender<Outbound>,
    me: ConnRef,
    router: Weak<Router>,
    /// Its own mailbox, for the answer to a replay it asked for; weak, so that the task
    /// ends when every handle is gone.
    mailbox: mpsc::WeakUnboundedSender<Box<ConnectionMsg>>,
    closing: bool,
    /// The socket's queue is closed: the task ends.
    stopped: bool,
    /// The last event handed to the client; `None` until the session has the connection.
    cursor: Option<EventSeq>,
    shared: SharedCursor,
    own: OwnWrites,
    /// Events (and cursor notes) not yet handed over, by position: beyond a gap, or waiting
    /// for room in the socket's queue.
    held: BTreeMap<EventSeq, ServerFrame>,
    /// A resync notice that arrived before the start: the cursor starts at its head.
    resync_before_start: Option<EventSeq>,
    /// When to look whether a gap is still open (see [`GAP_WAIT`]).
    gap_check_at: Option<Instant>,
    resuming: bool,
    /// Since when the socket's queue has had no room for the next event (the client is not
    /// reading, or a burst outran the writer).
    blocked_since: Option<Instant>,
    /// When to try the held frames again (the socket's queue was full).
    flush_at: Option<Instant>,
    slow_after: Duration,
}

/// Whether a frame went into the socket's queue.
enum Emitted {
    Yes,
    /// The queue is full: the frame comes back.
    Full(ServerFrame),
    /// The connection is closing or closed.
    Gone,
}

impl ConnectionState {
    fn new(args: ConnectionArgs, mailbox: mpsc::WeakUnboundedSender<Box<ConnectionMsg>>) -> Self {
        ConnectionState {
            user: args.user,
            out: args.out,
            me: args.me,
            router: args.router,
            mailbox,
            closing: false,
            stopped: false,
            cursor: None,
            shared: args.cursor,
            own: args.own,
            held: BTreeMap::new(),
            resync_before_start: None,
            gap_check_at: None,
            resuming: false,
            blocked_since: None,
            flush_at: None,
            slow_after: args.slow_after,
        }
    }

    /// Handles messages in order, and the gap and flush checks when they are due, until
    /// stopped or every handle is gone.
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Box<ConnectionMsg>>) {
        while !self.stopped {
            let due = self.flush_at.into_iter().chain(self.gap_check_at).min();
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(*msg),
                    None => return,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    if self.flush_at.is_some_and(|t| t <= now) {
                        self.flush_at = None;
                        self.flush();
                    }
                    if self.gap_check_at.is_some_and(|t| t <= now) {
                        self.gap_check_at = None;
                        self.gap_check();
                    }
                }
            }
        }
    }

    fn handle(&mut self, msg: ConnectionMsg) {
        match msg {
            ConnectionMsg::Stop => self.stopped = true,
            #[cfg(test)]
            ConnectionMsg::Settled(done) => {
                let _ = done.send(());
            }
            _ if self.closing => {}
            ConnectionMsg::Push(frame) => self.push(frame),
            ConnectionMsg::Start { cursor } => {
                let cursor = self.resync_before_start.take().unwrap_or(cursor);
                self.advance(cursor);
                self.drain();
                if self.has_gap() {
                    self.watch_gap();
                }
            }
            ConnectionMsg::Resumed(ok) => {
                self.resuming = false;
                if !ok {
                    tracing::info!(user = %self.user, "replay after a gap failed; closing so that the client resumes");
                    self.close(close::GOING_AWAY, "missed events; reconnect and resume");
                } else if self.has_gap() {
                    self.watch_gap();
                }
            }
            ConnectionMsg::Close { code, reason } => {
                self.closing = true;
                let _ = self.out.try_send(Outbound::Close { code, reason });
            }
        }
    }

    /// The socket's queue may have room again for held events.
    fn flush(&mut self) {
        if self.closing {
            return;
        }
        self.drain();
        if self
            .blocked_since
            .is_some_and(|since| since.elapsed() >= self.slow_after)
        {
            self.slow_consumer();
        } else if self.blocked_since.is_some() {
            self.flush_later();
        }
    }

    /// A gap may have stayed open for [`GAP_WAIT`].
    fn gap_check(&mut self) {
        if !self.closing && self.has_gap() && !self.resuming {
            self.resume();
        }
    }

    /// Queues a frame for the socket.
    fn emit(&mut self, frame: ServerFrame) -> Emitted {
        if self.closing {
            return Emitted::Gone;
        }
        match self.out.try_send(Outbound::Frame(Box::new(frame))) {
            Ok(()) => Emitted::Yes,
            Err(mpsc::error::TrySendError::Full(Outbound::Frame(frame))) => Emitted::Full(*frame),
            Err(mpsc::error::TrySendError::Full(_)) => Emitted::Gone,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.closing = true;
                self.stopped = true;
                Emitted::Gone
            }
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.closing = true;
        let out = self.out.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let _ = out.send(Outbound::Close { code, reason }).await;
        });
    }

    fn advance(&mut self, to: EventSeq) {
        self.cursor = Some(to);
        self.shared.set(to);
    }

    /// Hands over every held frame that is next in the stream, while the socket's queue has
    /// room; drops those already handed.
    fn drain(&mut self) {
        let Some(mut cursor) = self.cursor else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            let pos = *entry.key();
            if pos <= cursor {
                entry.remove();
                continue;
            }
            if pos.0 != cursor.0 + 1 {
                break;
            }
            let frame = entry.remove();
            match self.emit(frame) {
                Emitted::Yes => {
                    cursor = pos;
                    self.advance(pos);
                    self.blocked_since = None;
                }
                Emitted::Full(frame) => {
                    self.held.insert(pos, frame);
                    self.blocked_since.get_or_insert_with(Instant::now);
                    self.flush_later();
                    return;
                }
                Emitted::Gone => return,
            }
        }
    }

    /// Tries the held frames again shortly, when the socket's queue was full.
    fn flush_later(&mut self) {
        self.flush_at
            .get_or_insert_with(|| Instant::now() + FLUSH_RETRY);
    }

    fn push(&mut self, frame: PushFrame) {
        if let PushFrame::Resync { event_head } = frame {
            // The stream cannot be replayed from the cursor: the client reloads, and the
            // cursor starts again at the head.
            if self.cursor.is_none() {
                self.resync_before_start = Some(event_head);
            } else {
                self.advance(event_head);
            }
            match self.emit(frame.into_server_frame()) {
                Emitted::Yes => self.drain(),
                Emitted::Full(_) => self.slow_consumer(),
                Emitted::Gone => {}
            }
            return;
        }
        let Some(pos) = frame.position() else {
            // Typing and presence: ephemeral and unordered; dropped when there is no room.
            let _ = self.emit(frame.into_server_frame());
            return;
        };
        if self.cursor.is_some_and(|c| pos <= c) {
            return;
        }
        let frame = match frame {
            PushFrame::Event(e) if self.own.made(self.user, &e.event) => PushFrame::Cursor {
                event_seq: e.event_seq,
            },
            other => other,
        };
        let mut frame = frame.into_server_frame();
        // The usual case: the next event, nothing held. It goes out without being held.
        if self.held.is_empty() && self.cursor.is_some_and(|c| pos.0 == c.0 + 1) {
            match self.emit(frame) {
                Emitted::Yes => {
                    self.advance(pos);
                    self.blocked_since = None;
                    return;
                }
                Emitted::Full(back) => frame = back,
                Emitted::Gone => return,
            }
        }
        // Beyond this, the newest are dropped: a replay from the cursor brings them back.
        if self.held.len() < MAX_HELD {
            self.held.insert(pos, frame);
        }
        self.drain();
        if self.has_gap() {
            self.watch_gap();
        }
    }

    /// Events are held beyond one that has not come (as opposed to waiting for room).
    fn has_gap(&self) -> bool {
        match (self.cursor, self.held.keys().next()) {
            (Some(c), Some(first)) => first.0 > c.0 + 1,
            _ => false,
        }
    }

    fn watch_gap(&mut self) {
        if !self.resuming {
            self.gap_check_at
                .get_or_insert_with(|| Instant::now() + GAP_WAIT);
        }
    }

    /// Asks the user's session to replay everything after the cursor.
    fn resume(&mut self) {
        let (Some(cursor), Some(router)) = (self.cursor, self.router.upgrade()) else {
            return;
        };
        self.resuming = true;
        let (user, me, reply) = (self.user, self.me, self.mailbox.clone());
        tracing::debug!(%user, %cursor, "gap in pushed events; asking for a replay");
        tokio::spawn(async move {
            let ok = router.reattach(user, me, Some(cursor)).await.is_ok();
            if let Some(reply) = reply.upgrade() {
                ConnectionHandle(reply).send(ConnectionMsg::Resumed(ok));
            }
        });
    }

    fn slow_consumer(&mut self) {
        tracing::info!(user = %self.user, "slow consumer; closing its connection");
        self.close(
            close::SLOW_CONSUMER,
            "outbound queue full; reconnect and resume",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_types::Seq;

    fn read(n: u64) -> PushFrame {
        PushFrame::Event(Event {
            event_seq: EventSeq(n),
            event: UserEvent::Read {
                conversation: ConversationId::direct(UserId(1), UserId(2)),
                seq: Seq(n),
            },
        })
    }

    /// The stream positions (or a marker for other frames) the client received so far.
    fn received(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            let Outbound::Frame(frame) = o else {
                out.push(format!("{o:?}"));
                continue;
            };
            out.push(match *frame {
                ServerFrame::Read { event_seq, .. } => event_seq.0.to_string(),
                ServerFrame::EventCursor { event_seq } => format!("cursor {}", event_seq.0),
                ServerFrame::Resync { event_head } => format!("resync {}", event_head.0),
                ServerFrame::Typing { .. } => "typing".into(),
                other => format!("{other:?}"),
            });
        }
        out
    }

    /// Lets the actor handle what was sent to it (messages are handled in order).
    async fn settle(actor: &ConnectionHandle) {
        let (done, settled) = tokio::sync::oneshot::channel();
        actor.send(ConnectionMsg::Settled(done));
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .expect("the actor answers")
            .expect("the actor runs");
    }

    #[tokio::test]
    async fn events_reach_the_client_in_stream_order_once_whatever_order_they_arrive_in() {
        let (out, mut rx) = mpsc::channel(64);
        let cursor = SharedCursor::default();
        let args = ConnectionArgs {
            cursor: cursor.clone(),
            ..spawn_args(out)
        };
        let actor = spawn(args);
        let push = |f: PushFrame| actor.send(ConnectionMsg::Push(f));

        // A replay that arrives before the session's answer is held until the start.
        push(read(3));
        push(read(2));
        settle(&actor).await;
        assert!(received(&mut rx).is_empty(), "nothing before the start");
        assert_eq!(cursor.get(), None);
        actor.send(ConnectionMsg::Start {
            cursor: EventSeq(1),
        });
        settle(&actor).await;
        assert_eq!(received(&mut rx), ["2", "3"]);
        assert_eq!(cursor.get(), Some(EventSeq(3)));

        // A repeat is dropped; one that overtook its predecessor waits for it.
        push(read(3));
        push(read(5));
        push(PushFrame::Typing {
            conversation: ConversationId::direct(UserId(1), UserId(2)),
            user: UserId(2),
            expires_ms: 1,
        });
        settle(&actor).await;
        assert_eq!(
            received(&mut rx),
            ["typing"],
            "5 waits for 4; typing does not"
        );
        push(read(4));
        push(PushFrame::Cursor {
            event_seq: EventSeq(6),
        });
        settle(&actor).await;
        assert_eq!(received(&mut rx), ["4", "5", "cursor 6"]);

        // A resync moves the cursor to the head: older events are dropped, newer follow.
        push(PushFrame::Resync {
            event_head: EventSeq(10),
        });
        push(read(9));
        push(read(11));
        settle(&actor).await;
        assert_eq!(received(&mut rx), ["resync 10", "11"]);
        assert_eq!(cursor.get(), Some(EventSeq(11)));
    }

    fn spawn_args(out: mpsc::Sender<Outbound>) -> ConnectionArgs {
        ConnectionArgs {
            user: UserId(1),
            out,
            me: ConnRef {
                node: NodeId(1),
                conn: 1,
            },
            router: Weak::new(),
            cursor: SharedCursor::default(),
            own: OwnWrites::default(),
            slow_after: SLOW_CONSUMER_AFTER,
        }
    }

    /// A connection actor whose session has started it at the stream's beginning.
    fn spawn_started(args: ConnectionArgs) -> ConnectionHandle {
        let actor = spawn(args);
        actor.send(ConnectionMsg::Start {
            cursor: EventSeq(0),
        });
        actor
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_queue_is_held_and_handed_over_in_order() {
        let (out, mut rx) = mpsc::channel(2);
        let actor = spawn_started(spawn_args(out));
        for n in 1..=6 {
            actor.send(ConnectionMsg::Push(read(n)));
        }
        settle(&actor).await;
        assert_eq!(received(&mut rx), ["1", "2"], "the queue holds two");
        // The client reads; the held events follow, in order, none twice.
        let mut got = Vec::new();
        while got.len() < 4 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            got.extend(received(&mut rx));
        }
        assert_eq!(got, ["3", "4", "5", "6"]);
    }

    /// The task holds the socket's queue: its end shows when the task has ended.
    async fn ends(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Outbound::Frame(frame))) => got.push(format!("{frame:?}")),
                Ok(Some(close)) => got.push(format!("{close:?}")),
                Ok(None) => return got,
                Err(_) => panic!("the connection's task did not end; got {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_task_ends_when_stopped_or_when_every_handle_is_gone() {
        let (out, mut rx) = mpsc::channel(64);
        let actor = spawn_started(spawn_args(out));
        actor.send(ConnectionMsg::Push(read(1)));
        actor.stop();
        actor.send(ConnectionMsg::Push(read(2)));
        let got = ends(&mut rx).await;
        assert_eq!(got.len(), 1, "what came before the stop, only: {got:?}");

        let (out, mut rx) = mpsc::channel(64);
        let actor = spawn_started(spawn_args(out));
        let other = actor.clone();
        drop(actor);
        other.send(ConnectionMsg::Push(read(1)));
        drop(other);
        assert_eq!(ends(&mut rx).await.len(), 1);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
        let (out, mut rx) = mpsc::channel(1);
        let slow_after = Duration::from_millis(400);
        let args = ConnectionArgs {
            slow_after,
            ..spawn_args(out)
        };
        let actor = spawn_started(args);
        actor.send(ConnectionMsg::Push(read(1)));
        actor.send(ConnectionMsg::Push(read(2)));
        tokio::time::sleep(slow_after / 2).await;
        assert!(
            matches!(rx.try_recv(), Ok(Outbound::Frame(_))),
            "the first event"
        );
        // Room again: the held event follows, and nothing is closed.
        tokio::time::sleep(FLUSH_RETRY * 2).await;
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        // Now the client stops reading for good.
        for n in 3..=4 {
            actor.send(ConnectionMsg::Push(read(n)));
        }
        tokio::time::sleep(slow_after * 3).await;
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))), "event 3");
        match rx.recv().await {
            Some(Outbound::Close { code, .. }) => assert_eq!(code, close::SLOW_CONSUMER),
            other => panic!("expected a 4003 close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resync_during_the_replay_starts_the_cursor_at_its_head() {
        let (out, mut rx) = mpsc::channel(64);
        let actor = spawn(spawn_args(out));
        let send = |m: ConnectionMsg| actor.send(m);
        send(ConnectionMsg::Push(PushFrame::Resync {
            event_head: EventSeq(2000),
        }));
        send(ConnectionMsg::Push(read(2001)));
        send(ConnectionMsg::Start {
            cursor: EventSeq(5),
        });
        settle(&actor).await;
        assert_eq!(received(&mut rx), ["resync 2000", "2001"]);
    }

    fn message(event_seq: u64, sender: u64, client_msg_id: &str) -> PushFrame {
        PushFrame::Event(Event {
            event_seq: EventSeq(event_seq),
            event: UserEvent::Message {
                message: chat_types::Message {
                    conversation: ConversationId::direct(UserId(1), UserId(2)),
                    seq: Seq(event_seq),
                    sender: UserId(sender),
                    client_msg_id: ClientMsgId::new(client_msg_id).expect("id"),
                    ts_ms: 1,
                    body: "hi".into(),
                    refers: None,
                    attachments: Vec::new(),
                },
            },
        })
    }

    /// Events replayed from the stream carry no writer: the connection tells its own writes
    /// by its notes and hands them over as cursor notes only; the same user's writes from
    /// another connection, and writes older than the notes, still come as events.
    #[tokio::test]
    async fn a_replayed_event_of_its_own_write_reaches_the_writer_as_a_cursor_note() {
        let (out, mut rx) = mpsc::channel(64);
        let args = spawn_args(out);
        let own = args.own.clone();
        let conv = ConversationId::direct(UserId(1), UserId(2));
        let old = ClientMsgId::new("c-old").expect("id");
        own.note([OwnWrite::Sent(conv, &old)]);
        for i in 0..OWN_WRITES {
            let id = ClientMsgId::new(format!("filler-{i}")).expect("id");
            own.note([OwnWrite::Sent(conv, &id)]);
        }
        let mine = ClientMsgId::new("c-1").expect("id");
        own.note([OwnWrite::Sent(conv, &mine), OwnWrite::Read(conv, Seq(4))]);
        let actor = spawn_started(args);
        let frames = [
            message(1, 1, "c-1"),
            // The same user, another device.
            message(2, 1, "c-2"),
            // The other member, with the same client id.
            message(3, 2, "c-1"),
            read(4),
            read(5),
            // Noted, but before the last OWN_WRITES notes.
            message(6, 1, "c-old"),
        ];
        for f in frames {
            actor.send(ConnectionMsg::Push(f));
        }
        settle(&actor).await;
        let got = received(&mut rx);
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0], "cursor 1");
        assert!(
            got[1].contains("c-2") && got[1].starts_with("Message"),
            "{got:?}"
        );
        assert!(
            got[2].contains("c-1") && got[2].starts_with("Message"),
            "{got:?}"
        );
        assert_eq!(got[3..5], ["cursor 4", "5"]);
        assert!(got[5].contains("c-old"), "{got:?}");
    }
}
