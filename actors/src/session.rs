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
use chat_types::{EventSeq, Message, NodeId, UserEvent, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::connection::{ConnRef, PushFrame};
use crate::error::ActorError;
use crate::logs::{blocking, Entries, LogRef};
use crate::router::Router;

/// Most events replayed to one resuming connection; further behind gets a resync notice.
pub const MAX_REPLAY: u64 = 1000;

pub enum SessionMsg {
    Attach {
        conn: ConnRef,
        resume_from: Option<EventSeq>,
        reply: RpcReplyPort<Result<EventSeq, ActorError>>,
    },
    Detach(ConnRef),
    Deliver {
        message: Message,
        origin: Option<ConnRef>,
        reply: RpcReplyPort<Result<(), ActorError>>,
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
}

impl SessionState {
    async fn ready(&mut self) -> Result<(Arc<Router>, Arc<chat_cluster::Ring>), ActorError> {
        let router = self
            .router
            .upgrade()
            .ok_or_else(|| ActorError::Unavailable("node is shutting down".into()))?;
        let ring = router.ring();
        if self.synced_at != Some(ring.epoch()) {
            router.catch_up(LogRef::User(self.user), &ring).await?;
            self.synced_at = Some(ring.epoch());
        }
        Ok((router, ring))
    }

    /// Records the message as an event (once), replicates it, and pushes it.
    async fn deliver(
        &mut self,
        message: Message,
        origin: Option<ConnRef>,
    ) -> Result<(), ActorError> {
        let (router, ring) = self.ready().await?;
        let events = self.events.clone();
        let user = self.user;
        let epoch = ring.epoch();
        let (event, duplicate) =
            blocking(move || events.append(user, epoch, UserEvent::Message { message }))
                .await
                .inspect_err(|e| {
                    if matches!(e, ActorError::StaleEpoch { .. }) {
                        self.synced_at = None;
                    }
                })?;
        router
            .replicate_quorum(
                LogRef::User(user),
                &ring,
                Entries::Events(vec![event.clone()]),
            )
            .await?;
        tracing::debug!(user = %self.user, event = %event.event_seq, duplicate, "event appended");
        // A repeated delivery (a retry, a new conversation owner delivering again) was pushed
        // the first time; a client that missed it finds it by resuming from its cursor.
        if !duplicate {
            self.push(&router, PushFrame::Event(event), origin).await;
        }
        Ok(())
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
            if let Err(e) = router.push(*node, targets, frame.clone()).await {
                tracing::warn!(user = %self.user, %node, error = %e, "push to node failed");
                if router.is_gone(*node) {
                    gone.push(*node);
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
            router: args.router,
            conns: BTreeMap::new(),
            synced_at: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
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
            }
            SessionMsg::Deliver {
                message,
                origin,
                reply,
            } => {
                let _ = reply.send(state.deliver(message, origin).await);
            }
        }
        Ok(())
    }
}
