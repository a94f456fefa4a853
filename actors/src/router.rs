//! The per-node router: finds the node that owns each conversation and user through the
//! ring, runs the local actors, and speaks to other nodes' routers over the peer transport.
//!
//! Every request that crosses nodes carries the sender's ring epoch. A node that does not own
//! the target under its own ring answers `NotOwner { owner, epoch }`; the caller waits until
//! its own ring has reached that epoch, then retries where its ring now points. A node that
//! receives a request from a newer epoch than its own first waits (briefly) to catch up, so
//! two nodes never both act as owner of one conversation under rings they both know.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chat_cluster::ring::Ring;
use chat_cluster::transport::{Channel, PeerError, TransportError};
use chat_cluster::Metadata;
use chat_types::{
    Attachment, ClientMsgId, ConversationId, ConversationSummary, EventSeq, Message, MessageRef,
    NodeId, PresenceStatus, RingEpoch, Seq, UserId,
};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;

use crate::connection::{
    ConnRef, ConnectionArgs, ConnectionHandle, ConnectionMsg, Outbound, OwnWrite, OwnWrites,
    PushFrame, SharedCursor,
};
use crate::conversation::{ConversationActor, ConversationArgs, ConversationMsg};
use crate::error::ActorError;
use crate::logs::{LocalLogs, LogRef};
use crate::peer_wire::{
    decode, encode, ActorReply, ActorRequest, ActorRequestBody, Appended, Draft,
};
use crate::session::{Outgoing, SessionActor, SessionArgs, SessionMsg};

const PEER_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new conversation actor waits for the one a ring change stopped.
const RETIRE_WAIT: Duration = Duration::from_secs(5);
const EPOCH_WAIT: Duration = Duration::from_secs(3);
const MAX_HOPS: usize = 5;
const RING_HISTORY: usize = 16;
/// How long pushes to an unreachable node are retried.
const PUSH_RETRY_FOR: Duration = Duration::from_secs(20);
/// How long a connection whose home cannot be reached after a ring change is retried.
const REATTACH_FOR: Duration = Duration::from_secs(15);
/// How long a (re)started node keeps telling an unreachable member that it started.
const ANNOUNCE_FOR: Duration = Duration::from_secs(30);
/// Connections re-attached at once after a ring change.
const REATTACH_PARALLEL: usize = 64;

/// Counts for `/metrics` and cluster status.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterStats {
    pub connections: usize,
    pub conversations: usize,
    pub sessions: usize,
    /// Push requests sent to other nodes (one per node per batch).
    pub peer_push_requests: u64,
}

/// A page of one node's own copy of a conversation log ([`Router::local_log`]).
#[derive(Clone, Debug)]
pub struct LocalLogPage {
    pub head: Seq,
    pub delivered: Seq,
    /// Whether this node is in the log's replica set under its current ring.
    pub replica: bool,
    pub entries: Vec<chat_storage::Written>,
}

/// Switches that break a guarantee on purpose, for tests that must see the checks fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterBreakage {
    /// Acknowledge a send before any replica holds it (replication follows three seconds later),
    /// so that losing the owner right after an ack loses the message.
    pub ack_before_quorum: bool,
    /// Agree group changes in the metadata but never write their notes into the group's
    /// log, as when the node that made a change dies between the two.
    pub no_group_notes: bool,
}

pub struct Router {
    pub(crate) node_id: NodeId,
    pub(crate) breakage: RouterBreakage,
    pub(crate) meta: Arc<Metadata>,
    pub(crate) logs: LocalLogs,
    pub(crate) me: Weak<Router>,
    /// Rings seen since this process started, oldest first (bounded): where a conversation's
    /// log may still be when ownership moves.
    pub(crate) rings: Mutex<Vec<Arc<Ring>>>,
    offline: std::sync::OnceLock<Arc<dyn crate::offline::OfflinePush>>,
    conversations: Mutex<HashMap<ConversationId, ActorRef<ConversationMsg>>>,
    /// Conversation actors a ring change stopped, until they are gone: one may still be in
    /// the middle of a request, and its successor waits for it (see
    /// [`Router::conversation_actor`]).
    retiring: Mutex<HashMap<ConversationId, ActorRef<ConversationMsg>>>,
    sessions: Mutex<HashMap<UserId, ActorRef<SessionMsg>>>,
    connections: Mutex<HashMap<u64, LocalConn>>,
    /// The next connection number (also names system messages' client ids).
    next_conn: AtomicU64,
    peer_push_requests: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn transport_error(e: TransportError) -> ActorError {
    ActorError::Unavailable(e.to_string())
}

/// A connection held by this node.
struct LocalConn {
    user: UserId,
    actor: ConnectionHandle,
    cursor: SharedCursor,
    own: OwnWrites,
}

/// A local connection to attach to its user's session again.
struct Reattach {
    conn: ConnRef,
    user: UserId,
    cursor: SharedCursor,
    actor: ConnectionHandle,
}

/// What a routed request is addressed to.
#[derive(Clone, Copy)]
enum Target {
    Conversation(ConversationId),
    User(UserId),
}

impl Target {
    fn owner(&self, ring: &Ring) -> Option<NodeId> {
        match self {
            Target::Conversation(c) => ring.owner_of_conversation(c),
            Target::User(u) => ring.home_of_user(*u),
        }
    }
}

impl Router {
    pub fn new(meta: Arc<Metadata>, logs: LocalLogs) -> Arc<Router> {
        Router::with_breakage(meta, logs, RouterBreakage::default())
    }

    /// [`Router::new`] with guarantees broken on purpose (tests only).
    pub fn with_breakage(
        meta: Arc<Metadata>,
        logs: LocalLogs,
        breakage: RouterBreakage,
    ) -> Arc<Router> {
        let router = Arc::new_cyclic(|me| Router {
            breakage,
            node_id: meta.node_id(),
            rings: Mutex::new(vec![meta.ring()]),
            offline: std::sync::OnceLock::new(),
            meta,
            logs,
            me: me.clone(),
            conversations: Mutex::new(HashMap::new()),
            retiring: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            // Connection numbers never repeat across restarts of this node: a push or a
            // retried push addressed to a connection of the previous process must not reach
            // whoever holds the same number now. Milliseconds times 2^20 leave room for a
            // million connections per millisecond of uptime before the next start's range.
            next_conn: AtomicU64::new((crate::now_ms() << 20).max(1)),
            peer_push_requests: AtomicU64::new(0),
        });
        router.spawn_reattach_on_ring_change();
        router.spawn_announce_start();
        router.wake_undelivered(&router.meta.ring());
        router
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            connections: lock(&self.connections).len(),
            conversations: lock(&self.conversations).len(),
            sessions: lock(&self.sessions).len(),
            peer_push_requests: self.peer_push_requests.load(Ordering::Relaxed),
        }
    }

    /// This node's own copy of a conversation log (whatever the ring says): its head, its
    /// delivery watermark and up to `limit` entries after `after`, with the epoch each was
    /// written under. For operators comparing replicas.
    pub fn local_log(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<LocalLogPage, ActorError> {
        let log = LogRef::Conversation(conversation);
        let entries = match self.logs.read_after(log, after.0, limit.min(1000))? {
            crate::logs::Entries::Messages(m) => m,
            crate::logs::Entries::Events(_) => Vec::new(),
        };
        Ok(LocalLogPage {
            head: Seq(self.logs.head(log)?),
            delivered: Seq(self.logs.watermark(log)?),
            replica: log.replicas(&self.ring()).contains(&self.node_id),
            entries,
        })
    }

    // ----- the client-facing operations -------------------------------------------------

    /// Appends a message to a conversation at its owner. Returns the stored message and
    /// whether it was a retry of an earlier send.
    // The parts of a message, each typed; a bundling struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        sender: UserId,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
        refers: Option<MessageRef>,
        attachments: Vec<Attachment>,
        origin: Option<ConnRef>,
    ) -> Result<(Message, bool), ActorError> {
        let draft = Draft {
            client_msg_id,
            body,
            refers,
            attachments,
        };
        self.append_many(sender, conversation, vec![draft], origin)
            .await?
            .pop()
            .unwrap_or_else(|| Err(ActorError::BadPayload("no outcome for an append".into())))
    }

    /// Appends messages of one sender to a conversation at its owner, in the order given, in
    /// one request and one log write: one outcome per draft, in order. An error for the whole
    /// request means none of them was acknowledged (any may have been stored; a retry with
    /// the same client ids finds them).
    pub async fn append_many(
        &self,
        sender: UserId,
        conversation: ConversationId,
        drafts: Vec<Draft>,
        origin: Option<ConnRef>,
    ) -> Result<Vec<Appended>, ActorError> {
        let count = drafts.len();
        self.note_own_writes(
            origin,
            drafts
                .iter()
                .map(|d| OwnWrite::Sent(conversation, &d.client_msg_id)),
        );
        // Membership is checked by the conversation's owner, against the log's order: this
        // node's copy of the metadata may not show a change the owner has written yet.
        let body = ActorRequestBody::Append {
            conversation,
            sender,
            drafts,
            origin,
        };
        match self.route(Target::Conversation(conversation), body).await? {
            ActorReply::Appended(outcomes) if outcomes.len() == count => Ok(outcomes),
            _ => Err(ActorError::BadPayload("unexpected reply to append".into())),
        }
    }

    /// Notes on `origin`, when it is a connection of this node, the writes it is about to
    /// make, so that their events reach it as cursor notes whichever way they come back.
    fn note_own_writes<'a>(
        &self,
        origin: Option<ConnRef>,
        writes: impl IntoIterator<Item = OwnWrite<'a>>,
    ) {
        let Some(origin) = origin.filter(|o| o.node == self.node_id) else {
            return;
        };
        let own = lock(&self.connections)
            .get(&origin.conn)
            .map(|c| c.own.clone());
        if let Some(own) = own {
            own.note(writes);
        }
    }

    /// A page of a conversation's history, read at its owner, for a member.
    pub async fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Seq, Vec<Message>), ActorError> {
        // Checked by the owner (see `append`).
        let body = ActorRequestBody::History {
            conversation,
            reader: user,
            after,
            before,
            limit,
        };
        match self.route(Target::Conversation(conversation), body).await? {
            ActorReply::History { head, messages } => Ok((head, messages)),
            _ => Err(ActorError::BadPayload("unexpected reply to history".into())),
        }
    }

    /// Moves `user`'s read mark in `conversation` to `seq` (never back); the user's other
    /// connections get a `read` event, the other members a `receipt` event.
    pub async fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
        origin: Option<ConnRef>,
    ) -> Result<(), ActorError> {
        if !self.is_member(&conversation, user) {
            return Err(ActorError::Forbidden);
        }
        self.note_own_writes(origin, [OwnWrite::Read(conversation, seq)]);
        let body = ActorRequestBody::MarkRead {
            user,
            conversation,
            seq,
            origin,
        };
        self.route(Target::User(user), body).await.map(|_| ())
    }

    /// Tells the other members that `user` is typing. Ephemeral and best effort.
    pub async fn typing(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<(), ActorError> {
        if !self.is_member(&conversation, user) {
            return Err(ActorError::Forbidden);
        }
        for member in self.members_of(&conversation) {
            if member != user {
                let frame = PushFrame::Typing {
                    conversation,
                    user,
                    expires_ms: chat_types::TYPING_TTL_MS,
                };
                self.ephemeral(member, frame).await?;
            }
        }
        Ok(())
    }

    /// Sets the presence `user` shows to contacts while connected.
    pub async fn set_presence(
        &self,
        user: UserId,
        status: PresenceStatus,
    ) -> Result<(), ActorError> {
        self.route(
            Target::User(user),
            ActorRequestBody::SetPresence { user, status },
        )
        .await
        .map(|_| ())
    }

    /// `user`'s conversations, latest activity first, with unread counts.
    pub async fn conversations(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, ActorError> {
        match self
            .route(
                Target::User(user),
                ActorRequestBody::ListConversations { user, limit },
            )
            .await?
        {
            ActorReply::Conversations(list) => Ok(list),
            _ => Err(ActorError::BadPayload(
                "unexpected reply to list_conversations".into(),
            )),
        }
    }

    pub(crate) async fn ephemeral(&self, user: UserId, frame: PushFrame) -> Result<(), ActorError> {
        self.route(
            Target::User(user),
            ActorRequestBody::Ephemeral { user, frame },
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn receipt(
        &self,
        user: UserId,
        conversation: ConversationId,
        reader: UserId,
        seq: Seq,
    ) -> Result<(), ActorError> {
        let body = ActorRequestBody::Receipt {
            user,
            conversation,
            reader,
            seq,
        };
        self.route(Target::User(user), body).await.map(|_| ())
    }

    /// The members of a conversation: the two of a direct one, a group's from the metadata.
    pub fn members_of(&self, conversation: &ConversationId) -> Vec<UserId> {
        match conversation.group_id() {
            Some(group) => self.meta.read(|s| s.group_members(group)),
            None => conversation.direct_members(),
        }
    }

    pub fn is_member(&self, conversation: &ConversationId, user: UserId) -> bool {
        match conversation.group_id() {
            Some(group) => self.meta.read(|s| {
                s.group(group)
                    .is_some_and(|g| g.members.contains_key(&user))
            }),
            None => conversation.is_member(user),
        }
    }

    /// Whether `user` could be a member as far as the owner's metadata can tell: one of a
    /// direct conversation's two, or any user while the group exists. The conversation
    /// actor decides, by the log's order; this only keeps outsiders from spawning actors for
    /// conversations that do not exist.
    fn may_concern(&self, conversation: &ConversationId, user: UserId) -> bool {
        match conversation.group_id() {
            Some(group) => {
                lock(&self.conversations).contains_key(conversation)
                    || self.meta.read(|s| s.group(group).is_some())
            }
            None => conversation.is_member(user),
        }
    }

    /// Waits (up to a few seconds) until the local metadata shows a group change that Raft
    /// has committed elsewhere.
    pub(crate) async fn await_group_change(
        &self,
        conversation: &ConversationId,
        change: chat_types::GroupChange,
    ) {
        use chat_types::GroupChange as C;
        let Some(group) = conversation.group_id() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let shown = self.meta.read(|s| {
                let g = s.group(group);
                match change {
                    C::Created | C::Updated | C::OwnerChanged { .. } => g.is_some(),
                    C::MemberAdded { user } => g.is_some_and(|g| g.members.contains_key(&user)),
                    C::MemberRemoved { user } | C::MemberLeft { user } => {
                        g.is_none_or(|g| !g.members.contains_key(&user))
                    }
                    C::RoleChanged { user, role } => {
                        g.is_some_and(|g| g.members.get(&user) == Some(&role))
                    }
                    C::Deleted => g.is_none(),
                }
            });
            if shown || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Users grouped by their home node under the current ring.
    pub(crate) fn by_home(&self, users: &[UserId]) -> BTreeMap<NodeId, Vec<UserId>> {
        let ring = self.meta.ring();
        let mut out: BTreeMap<NodeId, Vec<UserId>> = BTreeMap::new();
        for u in users {
            if let Some(home) = ring.home_of_user(*u) {
                out.entry(home).or_default().push(*u);
            }
        }
        out
    }

    /// Delivers consecutive messages of one conversation to several users whose home is
    /// `node`, in one request.
    pub(crate) async fn deliver_batch(
        &self,
        node: NodeId,
        users: Vec<UserId>,
        messages: Vec<Outgoing>,
    ) -> Result<(), ActorError> {
        if node == self.node_id {
            return self.deliver_each(users, messages).await;
        }
        let body = ActorRequestBody::DeliverMany { users, messages };
        self.remote(node, self.meta.ring().epoch(), body)
            .await
            .map(|_| ())
    }

    /// Delivers messages to several users: those whose home is this node through their
    /// sessions here (each session records the whole batch in one write), with the
    /// resulting pushes batched into one request per connection node; the others (the ring
    /// moved) through ordinary routing. Boxed: routing may come back here.
    fn deliver_each(
        &self,
        users: Vec<UserId>,
        messages: Vec<Outgoing>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ActorError>> + Send + '_>>
    {
        Box::pin(async move {
            let ring = self.meta.ring();
            let mut result = Ok(());
            let messages = Arc::new(messages);
            // Every local session gets the messages at once and appends them in parallel with
            // the others (a thousand-member group's members would otherwise wait for each
            // other's round trip); the answers are collected afterwards.
            let mut waiting = Vec::new();
            for user in users {
                if ring.home_of_user(user) != Some(self.node_id) {
                    for (message, origin) in messages.iter() {
                        if let Err(e) = self.deliver(user, message.clone(), *origin).await {
                            result = Err(e);
                        }
                    }
                    continue;
                }
                let session = match self.session_actor(user).await {
                    Ok(s) => s,
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                };
                let (tx, rx) = ractor::concurrency::oneshot();
                let sent = session.cast(SessionMsg::Deliver {
                    messages: messages.clone(),
                    reply: tx.into(),
                });
                match sent {
                    Ok(()) => waiting.push(rx),
                    Err(e) => result = Err(stopped(e)),
                }
            }
            let mut pushes = Vec::new();
            for rx in waiting {
                match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                    Ok(Ok(Ok(p))) => pushes.extend(p),
                    Ok(Ok(Err(e))) => result = Err(e),
                    Ok(Err(_)) => result = Err(ActorError::Unavailable("actor stopped".into())),
                    Err(_) => result = Err(ActorError::Unavailable("actor timed out".into())),
                }
            }
            self.push_batch(pushes).await;
            result
        })
    }

    /// Makes pushes, one request per connection node. A node that cannot be reached gets
    /// the stored events again later (see [`Router::retry_pushes`]).
    async fn push_batch(&self, pushes: Vec<crate::session::PushTarget>) {
        let mut by_node: BTreeMap<NodeId, Vec<(Vec<u64>, PushFrame)>> = BTreeMap::new();
        for (node, conns, frame) in pushes {
            by_node.entry(node).or_default().push((conns, frame));
        }
        for (node, items) in by_node {
            if node == self.node_id {
                for (conns, frame) in items {
                    self.push_local(&conns, frame);
                }
                continue;
            }
            if let Err(e) = self.push_many(node, items.clone()).await {
                tracing::info!(%node, error = %e, "pushes to node failed; retrying");
                self.retry_pushes(node, items);
            }
        }
    }

    async fn push_many(
        &self,
        node: NodeId,
        items: Vec<(Vec<u64>, PushFrame)>,
    ) -> Result<(), ActorError> {
        let info = self
            .meta
            .node_info(node)
            .ok_or_else(|| ActorError::Unavailable(format!("node {node} is not a member")))?;
        let req = ActorRequest {
            epoch: self.meta.ring().epoch(),
            body: ActorRequestBody::PushMany { items },
        };
        self.peer_push_requests.fetch_add(1, Ordering::Relaxed);
        self.meta
            .transport()
            .request(&info.peer_addr, Channel::Actor, encode(&req)?, PEER_TIMEOUT)
            .await
            .map_err(transport_error)?;
        Ok(())
    }

    /// Sends stored events that could not be pushed to `node` again, with backoff, for
    /// about [`PUSH_RETRY_FOR`] (ephemeral frames are dropped): the connections there keep
    /// them in stream order and drop what they already have. A node that stays out of reach
    /// longer is marked down, and its connections re-attach from their cursors when it is
    /// back.
    pub(crate) fn retry_pushes(&self, node: NodeId, items: Vec<(Vec<u64>, PushFrame)>) {
        let items: Vec<(Vec<u64>, PushFrame)> = items
            .into_iter()
            .filter(|(_, f)| matches!(f, PushFrame::Event(_) | PushFrame::Cursor { .. }))
            .collect();
        if items.is_empty() {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(100);
            while started.elapsed() < PUSH_RETRY_FOR {
                tokio::time::sleep(delay).await;
                let Some(router) = me.upgrade() else { return };
                if router.is_gone(node) {
                    return;
                }
                match router.push_many(node, items.clone()).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(%node, error = %e, "push retry failed"),
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            tracing::warn!(%node, "pushes to node given up; its connections resume from their cursors");
        });
    }

    /// Writes a group change into the group's log, ordered with its messages (after the
    /// metadata has agreed to the change). `actor` is the member who made it.
    pub async fn append_group_change(
        &self,
        actor: UserId,
        group: chat_types::GroupId,
        change: chat_types::GroupChange,
    ) -> Result<Message, ActorError> {
        if self.breakage.no_group_notes {
            return Err(ActorError::Unavailable(
                "group notes are switched off (failpoint)".into(),
            ));
        }
        let id = format!("sys-{}", self.next_conn.fetch_add(1, Ordering::Relaxed));
        let client_msg_id = ClientMsgId::new(format!("{id}-{}", crate::now_ms()))
            .map_err(|e| ActorError::InvalidArgument(e.to_string()))?;
        let (message, _) = self
            .append(
                actor,
                ConversationId::group(group),
                client_msg_id,
                String::new(),
                Some(MessageRef::Group { change }),
                Vec::new(),
                None,
            )
            .await?;
        Ok(message)
    }

    /// Records `event` in `user`'s stream (on the user's home node) and pushes it to the
    /// user's connections.
    pub async fn notify(
        &self,
        user: UserId,
        event: chat_types::UserEvent,
    ) -> Result<(), ActorError> {
        self.route(Target::User(user), ActorRequestBody::Notify { user, event })
            .await
            .map(|_| ())
    }

    /// Records a delivery acknowledgement of `user`'s events up to `event_seq`.
    pub async fn ack_events(&self, user: UserId, event_seq: EventSeq) -> Result<(), ActorError> {
        self.route(
            Target::User(user),
            ActorRequestBody::AckEvents { user, event_seq },
        )
        .await
        .map(|_| ())
    }

    /// A user's presence, asked of the user's home node: offline when no session is there.
    pub async fn presence_of(
        &self,
        user: UserId,
    ) -> Result<(PresenceStatus, Option<u64>), ActorError> {
        match self
            .route(Target::User(user), ActorRequestBody::GetPresence { user })
            .await?
        {
            ActorReply::Presence {
                status,
                last_seen_ms,
            } => Ok((status, last_seen_ms)),
            _ => Err(ActorError::BadPayload(
                "unexpected reply to get_presence".into(),
            )),
        }
    }

    /// Where notices for users without a live connection go (set once, at start).
    pub fn set_offline_push(&self, sink: Arc<dyn crate::offline::OfflinePush>) {
        let _ = self.offline.set(sink);
    }

    /// Hands a notice for an offline user to the push sink, if one is configured.
    pub(crate) fn notify_offline(&self, user: UserId, event_seq: EventSeq, message: Message) {
        if let Some(sink) = self.offline.get() {
            let preview = self.meta.read(|s| s.settings(user).push_preview);
            sink.notify(crate::offline::OfflineNotice {
                user,
                event_seq,
                message,
                preview,
            });
        }
    }

    /// The user's contacts, from the local copy of the metadata.
    pub(crate) fn contacts_of(&self, user: UserId) -> Vec<UserId> {
        self.meta
            .read(|s| s.contacts_of(user).into_iter().map(|(u, _)| u).collect())
    }

    /// Registers a new local connection of `user` whose frames go to `out`, and attaches it
    /// to the user's session on the user's home node. With `resume_from`, the session first
    /// sends the connection every event after that cursor (or a resync notice). Returns the
    /// user's event head at the time of attaching and the highest acknowledged event seq.
    pub async fn connect(
        &self,
        user: UserId,
        out: mpsc::Sender<Outbound>,
        resume_from: Option<EventSeq>,
    ) -> Result<(ConnRef, EventSeq, EventSeq), ActorError> {
        let conn = ConnRef {
            node: self.node_id,
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
        };
        let cursor = SharedCursor::default();
        let own = OwnWrites::default();
        let args = ConnectionArgs {
            user,
            out,
            me: conn,
            router: self.me.clone(),
            cursor: cursor.clone(),
            own: own.clone(),
            slow_after: crate::connection::SLOW_CONSUMER_AFTER,
        };
        let actor = crate::connection::spawn(args);
        lock(&self.connections).insert(
            conn.conn,
            LocalConn {
                user,
                actor: actor.clone(),
                cursor,
                own,
            },
        );
        match self.reattach(user, conn, resume_from).await {
            Ok(ActorReply::Attached {
                event_head,
                acked_event_seq,
            }) => Ok((conn, event_head, acked_event_seq)),
            Ok(_) => {
                self.forget_connection(conn.conn);
                Err(ActorError::BadPayload("unexpected reply to attach".into()))
            }
            Err(e) => {
                self.forget_connection(conn.conn);
                Err(e)
            }
        }
    }

    /// Lets a connection made by [`Router::connect`] hand its events to the client, from
    /// `cursor` on (the `resume_from` it connected with, else the event head it was given):
    /// until then it holds them, so that the caller can send its welcome first. A resync
    /// notice among what the session replayed moves the start to the head.
    pub fn start(&self, conn: ConnRef, cursor: EventSeq) {
        if let Some(local) = lock(&self.connections).get(&conn.conn) {
            local.actor.send(ConnectionMsg::Start { cursor });
        }
    }

    /// Attaches a local connection to its user's session, which first replays every event
    /// after `resume_from` to it. Boxed: it is spawned from request handling, which it may
    /// come back to.
    pub(crate) fn reattach(
        &self,
        user: UserId,
        conn: ConnRef,
        resume_from: Option<EventSeq>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ActorReply, ActorError>> + Send + '_>,
    > {
        let body = ActorRequestBody::Attach {
            user,
            conn,
            resume_from,
        };
        Box::pin(self.route(Target::User(user), body))
    }

    /// Removes a local connection and detaches it from the user's session.
    pub async fn disconnect(&self, user: UserId, conn: ConnRef) {
        self.forget_connection(conn.conn);
        if let Err(e) = self
            .route(Target::User(user), ActorRequestBody::Detach { user, conn })
            .await
        {
            tracing::debug!(%user, error = %e, "detach failed; the session drops it on the next push");
        }
    }

    /// Closes every local connection with `code` (graceful shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for c in lock(&self.connections).values() {
            c.actor.send(ConnectionMsg::Close {
                code,
                reason: reason.to_owned(),
            });
        }
    }

    fn forget_connection(&self, conn: u64) {
        if let Some(c) = lock(&self.connections).remove(&conn) {
            c.actor.stop();
        }
    }

    // ----- used by the actors ------------------------------------------------------------

    /// Hands a new message to `user`'s session on the user's home node.
    pub(crate) async fn deliver(
        &self,
        user: UserId,
        message: Message,
        origin: Option<ConnRef>,
    ) -> Result<(), ActorError> {
        let body = ActorRequestBody::Deliver {
            user,
            message,
            origin,
        };
        self.route(Target::User(user), body).await.map(|_| ())
    }

    /// Pushes a frame to connections held by `node`.
    pub(crate) async fn push(
        &self,
        node: NodeId,
        conns: Vec<u64>,
        frame: PushFrame,
    ) -> Result<(), ActorError> {
        if node == self.node_id {
            self.push_local(&conns, frame);
            return Ok(());
        }
        let addr = self
            .meta
            .node_info(node)
            .ok_or_else(|| ActorError::Unavailable(format!("node {node} is not a member")))?
            .peer_addr;
        let req = ActorRequest {
            epoch: self.meta.ring().epoch(),
            body: ActorRequestBody::Push { conns, frame },
        };
        self.peer_push_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = self
            .meta
            .transport()
            .request(&addr, Channel::Actor, encode(&req)?, PEER_TIMEOUT)
            .await
            .map_err(transport_error)?;
        decode::<Result<ActorReply, ActorError>>(&bytes)?.map(|_| ())
    }

    /// Whether `node` has left the cluster (its connections are gone with it).
    pub(crate) fn is_gone(&self, node: NodeId) -> bool {
        self.meta.node_info(node).is_none()
    }

    fn push_local(&self, conns: &[u64], frame: PushFrame) {
        let map = lock(&self.connections);
        for c in conns {
            if let Some(local) = map.get(c) {
                local.actor.send(ConnectionMsg::Push(frame.clone()));
            }
        }
    }

    // ----- routing -----------------------------------------------------------------------

    /// Sends `body` to the owner of `target`, following `NotOwner` answers.
    async fn route(
        &self,
        target: Target,
        body: ActorRequestBody,
    ) -> Result<ActorReply, ActorError> {
        let mut last = ActorError::Unavailable("no owner in the ring".into());
        for _ in 0..MAX_HOPS {
            let ring = self.meta.ring();
            let Some(owner) = target.owner(&ring) else {
                self.wait_for_epoch(RingEpoch(ring.epoch().0 + 1)).await;
                continue;
            };
            let result = if owner == self.node_id {
                self.serve(ring.epoch(), body.clone()).await
            } else {
                self.remote(owner, ring.epoch(), body.clone()).await
            };
            match result {
                Err(ActorError::NotOwner { owner: _, epoch }) => {
                    self.wait_for_epoch(epoch.max(RingEpoch(ring.epoch().0 + 1)))
                        .await;
                    last = ActorError::Unavailable("ownership is moving; retry".into());
                }
                other => return other,
            }
        }
        Err(last)
    }

    pub(crate) async fn remote(
        &self,
        owner: NodeId,
        epoch: RingEpoch,
        body: ActorRequestBody,
    ) -> Result<ActorReply, ActorError> {
        let addr = self
            .meta
            .node_info(owner)
            .ok_or_else(|| ActorError::Unavailable(format!("node {owner} has no address")))?
            .peer_addr;
        let bytes = self
            .meta
            .transport()
            .request(
                &addr,
                Channel::Actor,
                encode(&ActorRequest { epoch, body })?,
                PEER_TIMEOUT,
            )
            .await
            .map_err(transport_error)?;
        decode::<Result<ActorReply, ActorError>>(&bytes)?
    }

    /// Waits until the local ring reaches `epoch`, for at most [`EPOCH_WAIT`].
    async fn wait_for_epoch(&self, epoch: RingEpoch) {
        let mut watch = self.meta.ring_watch();
        let _ = tokio::time::timeout(EPOCH_WAIT, watch.wait_for(|r| r.epoch() >= epoch)).await;
    }

    /// Serves a request from a peer's router.
    pub async fn handle_peer(&self, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
        let reply = match decode::<ActorRequest>(payload) {
            Ok(req) => {
                if req.epoch > self.meta.ring().epoch() {
                    self.wait_for_epoch(req.epoch).await;
                }
                let epoch = self.meta.ring().epoch();
                self.serve(epoch, req.body).await
            }
            Err(e) => Err(e),
        };
        encode(&reply).map_err(|e| PeerError::Handler(e.to_string()))
    }

    /// Serves a request locally, if this node owns its target under the current ring.
    async fn serve(
        &self,
        _epoch: RingEpoch,
        body: ActorRequestBody,
    ) -> Result<ActorReply, ActorError> {
        let ring = self.meta.ring();
        let target = match &body {
            ActorRequestBody::Append { conversation, .. }
            | ActorRequestBody::History { conversation, .. } => {
                Some(Target::Conversation(*conversation))
            }
            ActorRequestBody::Attach { user, .. }
            | ActorRequestBody::Detach { user, .. }
            | ActorRequestBody::Deliver { user, .. }
            | ActorRequestBody::Notify { user, .. }
            | ActorRequestBody::GetPresence { user, .. }
            | ActorRequestBody::AckEvents { user, .. }
            | ActorRequestBody::MarkRead { user, .. }
            | ActorRequestBody::Receipt { user, .. }
            | ActorRequestBody::Ephemeral { user, .. }
            | ActorRequestBody::SetPresence { user, .. }
            | ActorRequestBody::ListConversations { user, .. } => Some(Target::User(*user)),
            ActorRequestBody::Push { .. }
            | ActorRequestBody::DeliverMany { .. }
            | ActorRequestBody::PushMany { .. }
            | ActorRequestBody::Replicate { .. }
            | ActorRequestBody::Seal { .. }
            | ActorRequestBody::Fetch { .. }
            | ActorRequestBody::Restarted { .. } => None,
        };
        if let Some(target) = target {
            let owner = target.owner(&ring);
            if owner != Some(self.node_id) {
                return Err(ActorError::NotOwner {
                    owner: owner.unwrap_or(self.node_id),
                    epoch: ring.epoch(),
                });
            }
        }
        match body {
            ActorRequestBody::Append {
                conversation,
                sender,
                drafts,
                origin,
            } => {
                let system =
                    drafts.len() == 1 && matches!(drafts[0].refers, Some(MessageRef::Group { .. }));
                if !system && !self.may_concern(&conversation, sender) {
                    return Err(ActorError::Forbidden);
                }
                let actor = self.conversation_actor(conversation).await?;
                call(&actor, |reply| ConversationMsg::Append {
                    sender,
                    drafts,
                    origin,
                    reply,
                })
                .await?
                .map(ActorReply::Appended)
            }
            ActorRequestBody::History {
                conversation,
                reader,
                after,
                before,
                limit,
            } => {
                if !self.may_concern(&conversation, reader) {
                    return Err(ActorError::Forbidden);
                }
                let actor = self.conversation_actor(conversation).await?;
                call(&actor, |reply| ConversationMsg::History {
                    reader,
                    after,
                    before,
                    limit,
                    reply,
                })
                .await?
                .map(|(head, messages)| ActorReply::History { head, messages })
            }
            ActorRequestBody::Attach {
                user,
                conn,
                resume_from,
            } => {
                let session = self.session_actor(user).await?;
                let event_head = call(&session, |reply| SessionMsg::Attach {
                    conn,
                    resume_from,
                    reply,
                })
                .await??;
                let acked_event_seq = self
                    .logs
                    .events
                    .acked(user)
                    .map_err(crate::logs::storage_error)?;
                Ok(ActorReply::Attached {
                    event_head,
                    acked_event_seq,
                })
            }
            ActorRequestBody::Detach { user, conn } => {
                self.session_actor(user)
                    .await?
                    .send_message(SessionMsg::Detach(conn))
                    .map_err(stopped)?;
                Ok(ActorReply::Done)
            }
            ActorRequestBody::Deliver {
                user,
                message,
                origin,
            } => {
                let session = self.session_actor(user).await?;
                let pushes = call(&session, |reply| SessionMsg::Deliver {
                    messages: Arc::new(vec![(message, origin)]),
                    reply,
                })
                .await??;
                self.push_batch(pushes).await;
                Ok(ActorReply::Done)
            }
            ActorRequestBody::Push { conns, frame } => {
                self.push_local(&conns, frame);
                Ok(ActorReply::Done)
            }
            ActorRequestBody::PushMany { items } => {
                for (conns, frame) in items {
                    self.push_local(&conns, frame);
                }
                Ok(ActorReply::Done)
            }
            ActorRequestBody::DeliverMany { users, messages } => self
                .deliver_each(users, messages)
                .await
                .map(|()| ActorReply::Done),
            ActorRequestBody::AckEvents { user, event_seq } => {
                self.logs
                    .events
                    .ack(user, event_seq)
                    .map_err(crate::logs::storage_error)?;
                Ok(ActorReply::Done)
            }
            ActorRequestBody::GetPresence { user } => {
                // No session here: the user has not connected since this node took it on.
                let session = lock(&self.sessions).get(&user).cloned();
                let (status, last_seen_ms) = match session {
                    Some(s) => call(&s, SessionMsg::GetPresence).await?,
                    None => (PresenceStatus::Offline, None),
                };
                Ok(ActorReply::Presence {
                    status,
                    last_seen_ms,
                })
            }
            ActorRequestBody::Notify { user, event } => {
                let session = self.session_actor(user).await?;
                call(&session, |reply| SessionMsg::Notify { event, reply })
                    .await?
                    .map(|()| ActorReply::Done)
            }
            ActorRequestBody::MarkRead {
                user,
                conversation,
                seq,
                origin,
            } => {
                let session = self.session_actor(user).await?;
                call(&session, |reply| SessionMsg::MarkRead {
                    conversation,
                    seq,
                    origin,
                    reply,
                })
                .await?
                .map(|()| ActorReply::Done)
            }
            ActorRequestBody::Receipt {
                user,
                conversation,
                reader,
                seq,
            } => {
                let session = self.session_actor(user).await?;
                call(&session, |reply| SessionMsg::Receipt {
                    conversation,
                    reader,
                    seq,
                    reply,
                })
                .await?
                .map(|()| ActorReply::Done)
            }
            ActorRequestBody::Ephemeral { user, frame } => {
                // Only a user with a live session has anyone to show it to.
                let session = lock(&self.sessions).get(&user).cloned();
                if let Some(session) = session {
                    session
                        .send_message(SessionMsg::Ephemeral(frame))
                        .map_err(stopped)?;
                }
                Ok(ActorReply::Done)
            }
            ActorRequestBody::SetPresence { user, status } => {
                self.session_actor(user)
                    .await?
                    .send_message(SessionMsg::SetPresence(status))
                    .map_err(stopped)?;
                Ok(ActorReply::Done)
            }
            ActorRequestBody::ListConversations { user, limit } => {
                let session = self.session_actor(user).await?;
                call(&session, |reply| SessionMsg::ListConversations {
                    limit,
                    reply,
                })
                .await?
                .map(ActorReply::Conversations)
            }
            ActorRequestBody::Replicate {
                log,
                epoch,
                entries,
                watermark,
            } => self.serve_replicate(log, epoch, entries, watermark).await,
            ActorRequestBody::Seal { log, epoch } => self.serve_seal(log, epoch).await,
            ActorRequestBody::Fetch { log, after, limit } => self.serve_fetch(log, after, limit),
            ActorRequestBody::Restarted { node } => {
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(async move { me.reattach_homed_on(node).await });
                }
                Ok(ActorReply::Done)
            }
        }
    }

    async fn conversation_actor(
        &self,
        conversation: ConversationId,
    ) -> Result<ActorRef<ConversationMsg>, ActorError> {
        if let Some(a) = lock(&self.conversations).get(&conversation) {
            return Ok(a.clone());
        }
        // A stopped actor finishes the request in hand first. Two actors serving one
        // conversation at once would each append and deliver, and a message the stopped
        // one appended last would wait for the newer one's fan-out to find it in the log.
        let retiring = lock(&self.retiring).get(&conversation).cloned();
        if let Some(old) = retiring {
            if old.wait(Some(RETIRE_WAIT)).await.is_err() {
                tracing::warn!(conv = %conversation, "a stopped conversation actor is still busy; starting its successor");
            }
            let mut map = lock(&self.retiring);
            if map
                .get(&conversation)
                .is_some_and(|a| a.get_id() == old.get_id())
            {
                map.remove(&conversation);
            }
        }
        let args = ConversationArgs {
            conversation,
            log: self.logs.conversations.clone(),
            router: self.me.clone(),
        };
        let (actor, _) = Actor::spawn(None, ConversationActor, args)
            .await
            .map_err(|e| ActorError::Unavailable(e.to_string()))?;
        // Two requests may race to spawn: the first one in the map wins, the other stops.
        let mut map = lock(&self.conversations);
        if let Some(existing) = map.get(&conversation) {
            actor.stop(None);
            return Ok(existing.clone());
        }
        map.insert(conversation, actor.clone());
        Ok(actor)
    }

    async fn session_actor(&self, user: UserId) -> Result<ActorRef<SessionMsg>, ActorError> {
        if let Some(a) = lock(&self.sessions).get(&user) {
            return Ok(a.clone());
        }
        let args = SessionArgs {
            user,
            events: self.logs.events.clone(),
            router: self.me.clone(),
        };
        let (actor, _) = Actor::spawn(None, SessionActor, args)
            .await
            .map_err(|e| ActorError::Unavailable(e.to_string()))?;
        let mut map = lock(&self.sessions);
        if let Some(existing) = map.get(&user) {
            actor.stop(None);
            return Ok(existing.clone());
        }
        map.insert(user, actor.clone());
        Ok(actor)
    }

    /// When the ring changes, a user's home may move: attach every local connection to its
    /// user's (possibly new) home, and drop actors this node no longer owns.
    fn spawn_reattach_on_ring_change(&self) {
        let me = self.me.clone();
        let mut watch = self.meta.ring_watch();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                let Some(router) = me.upgrade() else { return };
                let ring = router.meta.ring();
                {
                    let mut rings = lock(&router.rings);
                    rings.push(ring.clone());
                    let excess = rings.len().saturating_sub(RING_HISTORY);
                    rings.drain(..excess);
                }
                router.drop_unowned(&ring);
                router.wake_undelivered(&ring);
                // Each connection re-attaches from its cursor, so that the (possibly new)
                // home replays whatever it appended before the connection was back in its
                // live set (one still connecting has no cursor yet: it finds any gap when its
                // next event comes).
                let conns = router.local_connections(|_| true);
                let failed = router.reattach_all(conns).await;
                if !failed.is_empty() {
                    router.retry_reattach(ring.epoch(), failed);
                }
            }
        });
    }

    /// A node that restarts within the failure timeout changes no ring, but its sessions
    /// start empty: once it serves, it tells every other member, whose connections of users
    /// homed here then attach again (from their cursors).
    fn spawn_announce_start(&self) {
        let me = self.me.clone();
        let node = self.node_id;
        let mut watch = self.meta.ring_watch();
        tokio::spawn(async move {
            if watch
                .wait_for(|r| r.members().contains(&node))
                .await
                .is_err()
            {
                return;
            }
            let Some(router) = me.upgrade() else { return };
            let others: Vec<NodeId> = router
                .ring()
                .members()
                .iter()
                .copied()
                .filter(|n| *n != node)
                .collect();
            drop(router);
            let mut tasks = tokio::task::JoinSet::new();
            for peer in others {
                let me = me.clone();
                tasks.spawn(async move {
                    let mut delay = Duration::from_millis(100);
                    let started = tokio::time::Instant::now();
                    while started.elapsed() < ANNOUNCE_FOR {
                        let Some(router) = me.upgrade() else { return };
                        let epoch = router.ring().epoch();
                        let body = ActorRequestBody::Restarted { node };
                        if router.direct(peer, epoch, body).await.is_ok() {
                            return;
                        }
                        drop(router);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
    }

    /// Re-attaches the local connections of users whose home is `node` under the current ring.
    async fn reattach_homed_on(self: Arc<Self>, node: NodeId) {
        let ring = self.ring();
        let conns = self.local_connections(|user| ring.home_of_user(user) == Some(node));
        if conns.is_empty() {
            return;
        }
        tracing::info!(%node, conns = conns.len(), "a home node restarted; re-attaching its users' connections");
        let failed = self.reattach_all(conns).await;
        if !failed.is_empty() {
            self.retry_reattach(ring.epoch(), failed);
        }
    }

    /// This node's connections of the users `pick` chooses, as re-attach work.
    fn local_connections(&self, pick: impl Fn(UserId) -> bool) -> Vec<Reattach> {
        lock(&self.connections)
            .iter()
            .filter(|(_, l)| pick(l.user))
            .map(|(c, l)| Reattach {
                conn: ConnRef {
                    node: self.node_id,
                    conn: *c,
                },
                user: l.user,
                cursor: l.cursor.clone(),
                actor: l.actor.clone(),
            })
            .collect()
    }

    /// Re-attaches connections, [`REATTACH_PARALLEL`] at a time; returns those that failed.
    async fn reattach_all(self: &Arc<Self>, conns: Vec<Reattach>) -> Vec<Reattach> {
        let mut failed = Vec::new();
        let mut conns = conns.into_iter().peekable();
        while conns.peek().is_some() {
            let mut tasks = tokio::task::JoinSet::new();
            for c in conns.by_ref().take(REATTACH_PARALLEL) {
                let router = self.clone();
                tasks.spawn(async move {
                    match router.reattach(c.user, c.conn, c.cursor.get()).await {
                        Ok(_) => None,
                        Err(e) => {
                            tracing::debug!(user = %c.user, error = %e, "re-attach failed");
                            Some(c)
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                failed.extend(done.ok().flatten());
            }
        }
        failed
    }

    /// Retries re-attaching connections whose home could not be reached (it may be dead and
    /// not yet marked down) until a newer ring takes over the job, for at most
    /// [`REATTACH_FOR`]; then closes them with a resumable code: left open, they would
    /// silently stop receiving.
    fn retry_reattach(&self, epoch: RingEpoch, mut failed: Vec<Reattach>) {
        let me = self.me.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut delay = Duration::from_millis(200);
            while !failed.is_empty() {
                tokio::time::sleep(delay).await;
                let Some(router) = me.upgrade() else { return };
                if router.meta.ring().epoch() > epoch {
                    return;
                }
                failed.retain(|c| lock(&router.connections).contains_key(&c.conn.conn));
                if started.elapsed() >= REATTACH_FOR {
                    for c in failed {
                        tracing::info!(user = %c.user, "cannot re-attach after a ring change; closing the connection");
                        c.actor.send(ConnectionMsg::Close {
                            code: chat_types::close::GOING_AWAY,
                            reason: "the cluster changed; reconnect and resume".into(),
                        });
                    }
                    return;
                }
                failed = router.reattach_all(failed).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// Starts the actor of every conversation this node owns under `ring` whose log holds
    /// messages beyond its delivery watermark (after a restart, or when a dead owner's
    /// conversations move here), so that they reach their members without waiting for the
    /// next send.
    fn wake_undelivered(&self, ring: &Ring) {
        let convs = match self.logs.conversations.undelivered() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan for undelivered messages");
                return;
            }
        };
        let me = self.me.clone();
        let mine: Vec<ConversationId> = convs
            .into_iter()
            .filter(|c| ring.owner_of_conversation(c) == Some(self.node_id))
            .collect();
        if mine.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for conv in mine {
                let Some(router) = me.upgrade() else { return };
                match router.conversation_actor(conv).await {
                    Ok(actor) => {
                        let _ = actor.send_message(ConversationMsg::Wake);
                    }
                    Err(e) => tracing::warn!(%conv, error = %e, "cannot start conversation actor"),
                }
            }
        });
    }

    /// Stops every conversation actor (each one that is still owned here restarts on its
    /// next request and first catches up under the new ring, which may have new replicas)
    /// and the sessions of users whose home moved away.
    fn drop_unowned(&self, ring: &Ring) {
        let mut retiring = lock(&self.retiring);
        retiring.retain(|_, actor| actor.get_status() != ractor::ActorStatus::Stopped);
        for (conv, actor) in lock(&self.conversations).drain() {
            actor.stop(None);
            retiring.insert(conv, actor);
        }
        drop(retiring);
        lock(&self.sessions).retain(|u, actor| {
            let keep = ring.home_of_user(*u) == Some(self.node_id);
            if !keep {
                actor.stop(None);
            }
            keep
        });
    }
}

fn stopped<T>(_: ractor::MessagingErr<T>) -> ActorError {
    ActorError::Unavailable("actor stopped".into())
}

async fn call<M, R>(
    actor: &ActorRef<M>,
    build: impl FnOnce(ractor::RpcReplyPort<R>) -> M,
) -> Result<R, ActorError>
where
    M: ractor::Message,
    R: Send + 'static,
{
    match actor.call(build, Some(CALL_TIMEOUT)).await {
        Ok(CallResult::Success(r)) => Ok(r),
        Ok(CallResult::Timeout) => Err(ActorError::Unavailable("actor timed out".into())),
        Ok(CallResult::SenderError) | Err(_) => {
            Err(stopped::<()>(ractor::MessagingErr::SendErr(())))
        }
    }
}
