//! The user session actor: one per user, on the user's home node, the single writer of the
//! user's event stream. It knows the user's live connections on every node. Each delivered
//! message becomes one event (numbered per user, replicated like a conversation log) and is
//! pushed once per node that holds connections of the user. A connection that attaches with
//! a resume cursor first receives every event after it, in order, before any live event —
//! the actor handles one request at a time, so nothing can slip in between — or, when the
//! cursor cannot be served, an explicit resync notice. Never a silent gap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use chat_storage::UserEventLog;
use chat_types::{
    ConversationId, ConversationSummary, Event, EventSeq, Message, NodeId, PresenceStatus, Seq,
    UserEvent, UserId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::connection::{ConnRef, PushFrame};
use crate::error::ActorError;
use crate::logs::{Entries, LogRef};
use crate::router::Router;

/// Connections on one node and the frame to push to them.
pub type PushTarget = (NodeId, Vec<u64>, PushFrame);

/// A message to deliver and the connection that sent it, if any (that one only learns
/// where its cursor now is: it has the message from its ack).
pub type Outgoing = (Message, Option<ConnRef>);

/// Most events replayed to one resuming connection; further behind gets a resync notice.
pub const MAX_REPLAY: u64 = 1000;

pub enum SessionMsg {
    Attach {
        conn: ConnRef,
        resume_from: Option<EventSeq>,
        reply: RpcReplyPort<Result<EventSeq, ActorError>>,
    },
    Detach(ConnRef),
    /// Records consecutive messages of one conversation as events, in one write; the reply
    /// lists the pushes to make (connections by node), which the router batches per node
    /// across users. Shared: every member's session gets the same batch.
    Deliver {
        messages: Arc<Vec<Outgoing>>,
        reply: RpcReplyPort<Result<Vec<PushTarget>, ActorError>>,
    },
    MarkRead {
        conversation: ConversationId,
        seq: Seq,
        origin: Option<ConnRef>,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    Receipt {
        conversation: ConversationId,
        reader: UserId,
        seq: Seq,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    /// Record an event of the user's stream and push it.
    Notify {
        event: UserEvent,
        reply: RpcReplyPort<Result<(), ActorError>>,
    },
    /// Push to every connection; nothing is stored.
    Ephemeral(PushFrame),
    SetPresence(PresenceStatus),
    GetPresence(RpcReplyPort<(PresenceStatus, Option<u64>)>),
    ListConversations {
        limit: u32,
        reply: RpcReplyPort<Result<Vec<ConversationSummary>, ActorError>>,
    },
}

pub struct SessionActor;

pub struct SessionArgs {
    pub user: UserId,
    pub events: Arc<dyn UserEventLog>,
    pub router: Weak<Router>,
}

pub struct SessionState {
    user: UserId,
    events: Arc<dyn UserEventLog>,
    router: Weak<Router>,
    conns: BTreeMap<NodeId, BTreeSet<u64>>,
    synced_at: Option<chat_types::RingEpoch>,
    /// The user asked to appear away while connected.
    away: bool,
    /// The presence last told to contacts.
    published: Option<PresenceStatus>,
    /// When the user's last connection closed.
    last_seen_ms: Option<u64>,
    /// Read marks whose receipts the other members are owed (see [`send_receipts`]); the
    /// task starts with the user's first read mark, so idle users do not carry it.
    receipts: Option<mpsc::UnboundedSender<(ConversationId, Seq)>>,
}

/// Sends the receipts of a user's read marks to the other members, in order, from a task of
/// its own. A session never waits for another session while it handles a request: two
/// members marking each other's messages read at once would each wait for the other (across
/// nodes, until the peer timeout), and everything queued behind them with them. Stops with
/// the session (when the sender is dropped).
fn send_receipts(
    user: UserId,
    router: Weak<Router>,
) -> mpsc::UnboundedSender<(ConversationId, Seq)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(ConversationId, Seq)>();
    tokio::spawn(async move {
        while let Some((conversation, seq)) = rx.recv().await {
            let Some(router) = router.upgrade() else {
                return;
            };
            for member in router.members_of(&conversation) {
                if member == user {
                    continue;
                }
                if let Err(e) = router.receipt(member, conversation, user, seq).await {
                    tracing::warn!(conv = %conversation, user = %member, error = %e, "receipt not delivered");
                }
            }
        }
    });
    tx
}

impl SessionState {
    async fn ready(&mut self) -> Result<(Arc<Router>, Arc<chat_cluster::Ring>), ActorError> {
        let log = LogRef::User(self.user);
        let (router, ring, _) =
            crate::replication::synced(&self.router, log, &mut self.synced_at).await?;
        Ok((router, ring))
    }

    /// Appends an event (once), replicates it to a majority, and returns it; `None` when
    /// the stream already had it.
    async fn append_event(
        &mut self,
        event: UserEvent,
    ) -> Result<Option<(Arc<Router>, Event)>, ActorError> {
        let (router, mut new) = self.append_events(vec![event]).await?;
        Ok(new.pop().map(|e| (router, e)))
    }

    /// Appends events (each once) in one write, replicates them to a majority, and returns
    /// the ones the stream did not have yet, in order.
    async fn append_events(
        &mut self,
        events: Vec<UserEvent>,
    ) -> Result<(Arc<Router>, Vec<Event>), ActorError> {
        let (router, ring) = self.ready().await?;
        let log = self.events.clone();
        let user = self.user;
        let epoch = ring.epoch();
        let syncs = log.syncs();
        let appended =
            crate::logs::write(syncs, move || log.append_many(user, epoch, events)).await;
        let appended = appended.inspect_err(|e| {
            if matches!(e, ActorError::StaleEpoch { .. }) {
                self.synced_at = None;
            }
        })?;
        // A repeated event goes out again as stored, with the epoch it was first written
        // under, so that every replica ends up with the same entry; each on its own, as it
        // is not next to the new ones.
        let mut runs = Vec::new();
        let mut new = Vec::new();
        let mut fresh = Vec::new();
        for (event, duplicate) in appended {
            if duplicate {
                let before = chat_types::EventSeq(event.event_seq.0.saturating_sub(1));
                let stored = self
                    .events
                    .read_written_after(user, before, 1)
                    .ok()
                    .and_then(|w| w.into_iter().next())
                    .filter(|w| w.event.event_seq == event.event_seq);
                runs.push(vec![
                    stored.unwrap_or(chat_storage::WrittenEvent { event, epoch })
                ]);
            } else {
                fresh.push(chat_storage::WrittenEvent {
                    event: event.clone(),
                    epoch,
                });
                new.push(event);
            }
        }
        if !fresh.is_empty() {
            runs.push(fresh);
        }
        for run in runs {
            let replicated = router
                .replicate_quorum(LogRef::User(user), &ring, Entries::Events(run))
                .await;
            if let Err(e) = replicated {
                // Catch up again before the next event, as a conversation owner does.
                self.synced_at = None;
                return Err(e);
            }
        }
        tracing::debug!(user = %user, new = new.len(), "events appended");
        // A repeated event (a retried delivery, a new conversation owner delivering again)
        // was pushed the first time; a client that missed it finds it by resuming.
        Ok((router, new))
    }

    /// Records the messages as events (each once), replicates them, and returns the pushes
    /// to make.
    async fn deliver(&mut self, messages: &[Outgoing]) -> Result<Vec<PushTarget>, ActorError> {
        let mut origins = std::collections::HashMap::new();
        let events = messages
            .iter()
            .map(|(message, origin)| {
                if let Some(o) = origin {
                    origins.insert((message.conversation, message.seq), *o);
                }
                UserEvent::Message {
                    message: message.clone(),
                }
            })
            .collect();
        let (router, new) = self.append_events(events).await?;
        let mut pushes = Vec::new();
        for event in new {
            let UserEvent::Message { message } = &event.event else {
                continue;
            };
            let origin = origins.get(&(message.conversation, message.seq)).copied();
            if self.conns.is_empty() {
                let system = message.refers.is_some_and(|r| r.seq().is_none());
                if message.sender != self.user && !system {
                    router.notify_offline(self.user, event.event_seq, message.clone());
                }
            }
            let event_seq = event.event_seq;
            let frame = PushFrame::Event(event);
            for (node, conns) in self.targets(origin) {
                pushes.push((node, conns, frame.clone()));
            }
            // The sender's own connection has the message from its ack; it only learns
            // where its cursor now is, so that a resume does not replay its own sends.
            if let Some(o) = origin.filter(|o| self.is_attached(o)) {
                pushes.push((o.node, vec![o.conn], PushFrame::Cursor { event_seq }));
            }
        }
        Ok(pushes)
    }

    fn is_attached(&self, conn: &ConnRef) -> bool {
        self.conns
            .get(&conn.node)
            .is_some_and(|conns| conns.contains(&conn.conn))
    }

    /// The user's connections by node, but `skip`.
    fn targets(&self, skip: Option<ConnRef>) -> Vec<(NodeId, Vec<u64>)> {
        self.conns
            .iter()
            .map(|(node, conns)| {
                let targets: Vec<u64> = conns
                    .iter()
                    .copied()
                    .filter(|c| {
                        skip != Some(ConnRef {
                            node: *node,
                            conn: *c,
                        })
                    })
                    .collect();
                (*node, targets)
            })
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }

    /// Moves the user's read mark forward (never back), tells the user's other connections,
    /// then queues a receipt for every other member (sent by [`send_receipts`]).
    async fn mark_read(
        &mut self,
        conversation: ConversationId,
        seq: Seq,
        origin: Option<ConnRef>,
    ) -> Result<(), ActorError> {
        let (router, _) = self.ready().await?;
        let current = self
            .events
            .read_mark(self.user, &conversation)
            .map_err(crate::logs::storage_error)?;
        if seq <= current {
            return Ok(());
        }
        let event = UserEvent::Read { conversation, seq };
        if let Some((_, event)) = self.append_event(event).await? {
            let event_seq = event.event_seq;
            self.push(&router, PushFrame::Event(event), origin).await;
            // The connection that marked it only learns where its cursor now is.
            if let Some(o) = origin.filter(|o| self.is_attached(o)) {
                let cursor = PushFrame::Cursor { event_seq };
                if let Err(e) = router.push(o.node, vec![o.conn], cursor.clone()).await {
                    tracing::info!(user = %self.user, node = %o.node, error = %e, "cursor push failed");
                    router.retry_pushes(o.node, vec![(vec![o.conn], cursor)]);
                }
            }
        }
        let (user, weak) = (self.user, self.router.clone());
        let _ = self
            .receipts
            .get_or_insert_with(|| send_receipts(user, weak))
            .send((conversation, seq));
        Ok(())
    }

    async fn receipt(
        &mut self,
        conversation: ConversationId,
        reader: UserId,
        seq: Seq,
    ) -> Result<(), ActorError> {
        let event = UserEvent::Receipt {
            conversation,
            user: reader,
            seq,
        };
        if let Some((router, event)) = self.append_event(event).await? {
            self.push(&router, PushFrame::Event(event), None).await;
        }
        Ok(())
    }

    /// The presence now; offline with the time the last connection closed, if one did.
    fn current_presence(&self) -> (PresenceStatus, Option<u64>) {
        match self.presence() {
            (PresenceStatus::Offline, _) => (PresenceStatus::Offline, self.last_seen_ms),
            other => other,
        }
    }

    fn presence(&self) -> (PresenceStatus, Option<u64>) {
        if self.conns.is_empty() {
            (PresenceStatus::Offline, Some(crate::now_ms()))
        } else if self.away {
            (PresenceStatus::Away, None)
        } else {
            (PresenceStatus::Online, None)
        }
    }

    /// Tells the user's contacts when the user's presence changed. Ephemeral: a contact that
    /// is not connected learns nothing, and nobody else does.
    fn publish_presence(&mut self) {
        let (status, last_seen_ms) = self.presence();
        if self.published == Some(status) {
            return;
        }
        self.published = Some(status);
        let Some(router) = self.router.upgrade() else {
            return;
        };
        let user = self.user;
        tokio::spawn(async move {
            let contacts = router.contacts_of(user);
            for contact in contacts {
                let frame = PushFrame::Presence {
                    user,
                    status,
                    last_seen_ms,
                };
                let _ = router.ephemeral(contact, frame).await;
            }
        });
    }

    async fn push(&mut self, router: &Router, frame: PushFrame, skip: Option<ConnRef>) {
        let mut gone = Vec::new();
        for (node, conns) in &self.conns {
            let targets: Vec<u64> = conns
                .iter()
                .copied()
                .filter(|c| {
                    skip != Some(ConnRef {
                        node: *node,
                        conn: *c,
                    })
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            if let Err(e) = router.push(*node, targets.clone(), frame.clone()).await {
                tracing::info!(user = %self.user, %node, error = %e, "push to node failed");
                if router.is_gone(*node) {
                    gone.push(*node);
                } else {
                    router.retry_pushes(*node, vec![(targets, frame.clone())]);
                }
            }
        }
        for node in gone {
            self.conns.remove(&node);
        }
    }

    /// Sends a resuming connection what it missed, then adds it to the live set.
    async fn attach(
        &mut self,
        conn: ConnRef,
        resume_from: Option<EventSeq>,
    ) -> Result<EventSeq, ActorError> {
        let (router, _) = self.ready().await?;
        let head = self
            .events
            .head(self.user)
            .map_err(crate::logs::storage_error)?;
        if let Some(cursor) = resume_from {
            let frames: Vec<PushFrame> = if cursor > head || head.0 - cursor.0 > MAX_REPLAY {
                vec![PushFrame::Resync { event_head: head }]
            } else {
                self.events
                    .read_after(self.user, cursor, MAX_REPLAY as usize)
                    .map_err(crate::logs::storage_error)?
                    .into_iter()
                    .map(PushFrame::Event)
                    .collect()
            };
            tracing::debug!(user = %self.user, %cursor, %head, "replaying to a resuming connection");
            for frame in frames {
                router.push(conn.node, vec![conn.conn], frame).await?;
            }
        }
        self.conns.entry(conn.node).or_default().insert(conn.conn);
        self.publish_presence();
        Ok(head)
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        Ok(SessionState {
            user: args.user,
            events: args.events,
            receipts: None,
            router: args.router,
            conns: BTreeMap::new(),
            synced_at: None,
            away: false,
            published: None,
            last_seen_ms: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task would otherwise keep the largest request's state inline
        // for as long as the session lives, idle or not (one session per connected user).
        Box::pin(state.handle(msg)).await;
        Ok(())
    }
}

impl SessionState {
    async fn handle(&mut self, msg: SessionMsg) {
        let state = self;
        match msg {
            SessionMsg::Attach {
                conn,
                resume_from,
                reply,
            } => {
                let _ = reply.send(state.attach(conn, resume_from).await);
            }
            SessionMsg::Detach(c) => {
                if let Some(set) = state.conns.get_mut(&c.node) {
                    set.remove(&c.conn);
                    if set.is_empty() {
                        state.conns.remove(&c.node);
                    }
                }
                if state.conns.is_empty() {
                    state.last_seen_ms = Some(crate::now_ms());
                }
                state.publish_presence();
            }
            SessionMsg::MarkRead {
                conversation,
                seq,
                origin,
                reply,
            } => {
                let _ = reply.send(state.mark_read(conversation, seq, origin).await);
            }
            SessionMsg::Receipt {
                conversation,
                reader,
                seq,
                reply,
            } => {
                let _ = reply.send(state.receipt(conversation, reader, seq).await);
            }
            SessionMsg::Notify { event, reply } => {
                let done = match state.append_event(event).await {
                    Ok(Some((router, event))) => {
                        state.push(&router, PushFrame::Event(event), None).await;
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let _ = reply.send(done);
            }
            SessionMsg::Ephemeral(frame) => {
                if let Some(router) = state.router.upgrade() {
                    state.push(&router, frame, None).await;
                }
            }
            SessionMsg::GetPresence(reply) => {
                let _ = reply.send(state.current_presence());
            }
            SessionMsg::SetPresence(status) => {
                state.away = status == PresenceStatus::Away;
                state.publish_presence();
            }
            SessionMsg::ListConversations { limit, reply } => {
                let list = match state.ready().await {
                    Ok(_) => state
                        .events
                        .conversations(state.user, limit as usize)
                        .map_err(crate::logs::storage_error),
                    Err(e) => Err(e),
                };
                let _ = reply.send(list);
            }
            SessionMsg::Deliver { messages, reply } => {
                let _ = reply.send(state.deliver(&messages).await);
            }
        }
    }
}
