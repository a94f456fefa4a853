//! The WebSocket half of the protocol: one [`Connection`] per socket.
//!
//! A background reader task owns the read half of the socket. It decodes each text frame and
//! routes it (see `routing.rs`): replies to the request waiting on their id, `message` pushes to
//! the push channel read by [`Connection::next_message`], and everything else, including the
//! close code, to the raw-event channel read by [`Connection::next_raw_frame`]. When the socket
//! closes, every waiting request fails with [`ClientError::Closed`] carrying the server's close
//! code, and so does every later request.
//!
//! All methods take `&self`, so one connection can be shared (`Arc<Connection>`) between a
//! task that sends and a task that reads pushes.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_types::rest::{ContactsResponse, ProfileUpdate, SettingsUpdate};
use chat_types::{
    BroadcastOutcome, ClientFrame, ClientMsgId, ContactEntry, ConversationId, ConversationInfo,
    ConversationSummary, EventSeq, GroupInfo, Limits, MediaId, Message, MessageRef, NodeId,
    PresenceStatus, Profile, Relation, Role, Seq, ServerFrame, SessionInfo, Settings, UserId,
    PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;
use crate::routing::{Pending, Routed};

/// The close reason of a connection cut by [`Connection::sever`].
const SEVERED: &str = "severed by this client";

/// How long a request waits for its reply unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Connection`] behaves.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// How long a request (and the connect, and each write) waits before
    /// [`ClientError::Timeout`].
    pub request_timeout: Duration,
    /// `None`: pushes queue without bound until read. `Some(n)`: at most `n` are queued, and
    /// then the reader stops reading the socket until [`Connection::next_message`] makes room,
    /// which is how a slow consumer looks to the server (replies wait behind the pushes too).
    pub push_buffer: Option<usize>,
    /// Send a `ping` every half of the welcome's `heartbeat_ms`, so that an idle connection is
    /// not closed as dead. Turn off in tests that count frames or test the server's timeout.
    pub heartbeat: bool,
    /// Resume the event stream after this cursor (see [`Connection::last_event_seq`]): the
    /// server first pushes every event the client missed, or a `resync` raw event.
    pub resume_from: Option<EventSeq>,
    /// Bind the socket's local end to this address (port chosen by the system) before
    /// connecting: one machine can then open more than ~64k connections to one server port
    /// by spreading them over several source addresses (`127.0.0.1`, `127.0.0.2`, ... on
    /// loopback). `None`: the system picks, as usual. Plain `ws://` URLs only.
    pub local_addr: Option<IpAddr>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            push_buffer: None,
            heartbeat: true,
            resume_from: None,
            local_addr: None,
        }
    }
}

/// What the server announced in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u32,
    pub user_id: UserId,
    pub username: String,
    /// The node this connection is on.
    pub node_id: NodeId,
    pub limits: Limits,
    /// Send something at least this often, or be closed as dead.
    pub heartbeat_ms: u64,
    /// The user's latest event seq when this connection attached.
    pub event_head: EventSeq,
    /// The highest event seq any device of the user acknowledged.
    pub acked_event_seq: EventSeq,
}

/// The server's acknowledgement of a `send`: the message is stored under `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub conversation: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub seq: Seq,
    pub ts_ms: u64,
    /// True when this client message id was already stored: `seq` is the original one.
    pub duplicate: bool,
}

/// A page of history read over the WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub conversation: ConversationId,
    /// The conversation's last seq when the page was read.
    pub head: Seq,
    /// Ascending by seq.
    pub messages: Vec<Message>,
}

/// How and why the connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code of the server's close frame; `None` when the socket ended without one
    /// (or the frame had no code).
    pub code: Option<u16>,
    pub reason: String,
}

impl CloseInfo {
    pub(crate) fn to_error(&self) -> ClientError {
        ClientError::Closed {
            code: self.code,
            reason: self.reason.clone(),
        }
    }
}

/// Something the server sent that no request was waiting for and that is not a push.
#[derive(Clone, Debug, PartialEq)]
pub enum RawEvent {
    /// A frame that answered no waiting request: typically an `error` for a malformed or raw
    /// frame, or a reply that arrived after its request timed out.
    Frame(ServerFrame),
    /// A text frame that is not a server frame this build knows.
    Undecodable { text: String, error: String },
    /// A binary frame (protocol v1 sends none unless MessagePack was negotiated).
    Binary(Vec<u8>),
    /// The connection closed; always the last event.
    Closed { code: Option<u16>, reason: String },
}

/// One WebSocket connection to a node, after (or, for tests, before) the handshake.
pub struct Connection {
    inner: Arc<Inner>,
    pushes: AsyncMutex<PushRx>,
    raw: AsyncMutex<mpsc::UnboundedReceiver<RawEvent>>,
    closed: watch::Receiver<Option<CloseInfo>>,
    config: ConnectionConfig,
    tasks: StdMutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &*self.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `ws_url` (see `HttpApi::ws_url`) and performs the hello/welcome handshake
    /// with the default configuration.
    pub async fn connect(ws_url: &str) -> Result<(Connection, Welcome), ClientError> {
        Connection::connect_with(ws_url, ConnectionConfig::default()).await
    }

    /// [`Connection::connect`] with a configuration.
    pub async fn connect_with(
        ws_url: &str,
        config: ConnectionConfig,
    ) -> Result<(Connection, Welcome), ClientError> {
        let conn = Connection::connect_without_hello(ws_url, config).await?;
        let welcome = conn.hello(PROTOCOL_VERSION).await?;
        Ok((conn, welcome))
    }

    /// Opens the socket without sending `hello`, for tests of the handshake: follow with
    /// [`Connection::hello`] or raw frames. A token the server refuses before the upgrade is
    /// [`ClientError::Server`] when the 401 carries an error body, [`ClientError::Http`]
    /// otherwise.
    pub async fn connect_without_hello(
        ws_url: &str,
        config: ConnectionConfig,
    ) -> Result<Connection, ClientError> {
        let (stream, _response) = tokio::time::timeout(config.request_timeout, async {
            match config.local_addr {
                // Nagle off: requests are small and latency matters more than packet count.
                None => connect_async_with_config(ws_url, None, true)
                    .await
                    .map_err(upgrade_error),
                Some(local) => connect_from(ws_url, local).await,
            }
        })
        .await
        .map_err(|_| ClientError::Timeout)??;
        let (sink, stream) = stream.split();
        let inner = Arc::new(Inner {
            sink: AsyncMutex::new(Some(sink)),
            pending: StdMutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            last_event_seq: AtomicU64::new(0),
            sever: Notify::new(),
            severed: AtomicBool::new(false),
        });
        let (push_tx, push_rx) = match config.push_buffer {
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                (PushTx::Unbounded(tx), PushRx::Unbounded(rx))
            }
            Some(n) => {
                let (tx, rx) = mpsc::channel(n.max(1));
                (PushTx::Bounded(tx), PushRx::Bounded(rx))
            }
        };
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(None);
        let reader = tokio::spawn(read_loop(
            stream,
            Arc::clone(&inner),
            push_tx,
            raw_tx,
            closed_tx,
        ));
        Ok(Connection {
            inner,
            pushes: AsyncMutex::new(push_rx),
            raw: AsyncMutex::new(raw_rx),
            closed: closed_rx,
            config,
            tasks: StdMutex::new(vec![reader]),
        })
    }

    /// Sends `hello` naming `version` and waits for `welcome`. [`Connection::connect`] does
    /// this; call it directly only after [`Connection::connect_without_hello`].
    pub async fn hello(&self, version: u32) -> Result<Welcome, ClientError> {
        let resume_from = self.config.resume_from;
        let reply = self
            .inner
            .request(
                |id| ClientFrame::Hello {
                    id: Some(id),
                    version,
                    resume_from,
                },
                true,
                self.config.request_timeout,
            )
            .await?;
        let ServerFrame::Welcome {
            version,
            user_id,
            username,
            node_id,
            limits,
            heartbeat_ms,
            event_head,
            acked_event_seq,
            ..
        } = reply
        else {
            return Err(unexpected("welcome", &reply));
        };
        if self.config.heartbeat && heartbeat_ms > 0 {
            let every = Duration::from_millis((heartbeat_ms / 2).max(1));
            let task = tokio::spawn(heartbeat_loop(
                Arc::clone(&self.inner),
                every,
                self.config.request_timeout,
            ));
            lock(&self.tasks).push(task);
        }
        Ok(Welcome {
            version,
            user_id,
            username,
            node_id,
            limits,
            heartbeat_ms,
            event_head,
            acked_event_seq,
        })
    }

    /// Changes the timeout of the requests made from now on.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.config.request_timeout = timeout;
    }

    /// The highest `event_seq` pushed to this connection so far (0 before any): pass it as
    /// [`ConnectionConfig::resume_from`] when reconnecting.
    pub fn last_event_seq(&self) -> EventSeq {
        EventSeq(self.inner.last_event_seq.load(Ordering::Relaxed))
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(|id| ClientFrame::Ping { id }).await? {
            ServerFrame::Pong { .. } => Ok(()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Moves the read mark of `conversation` to `seq` (never back): the user's other
    /// connections get a `read` raw event, the other members a `receipt`.
    pub async fn mark_read(
        &self,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::MarkRead {
            id,
            conversation,
            seq,
        })
        .await
    }

    /// Acknowledges delivery of this user's events up to `event_seq` on this device.
    pub async fn ack_events(&self, event_seq: EventSeq) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::AckEvents { id, event_seq })
            .await
    }

    /// Tells the other members that this user is typing (ephemeral).
    pub async fn typing(&self, conversation: ConversationId) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::Typing { id, conversation })
            .await
    }

    /// Sets how this user appears to contacts: `Online` or `Away`.
    pub async fn set_presence(&self, status: PresenceStatus) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::SetPresence { id, status })
            .await
    }

    /// This user's conversations, latest activity first, with unread counts.
    pub async fn list_conversations(
        &self,
        limit: Option<u32>,
    ) -> Result<Vec<ConversationSummary>, ClientError> {
        match self
            .request(|id| ClientFrame::ListConversations { id, limit })
            .await?
        {
            ServerFrame::Conversations { conversations, .. } => Ok(conversations),
            other => Err(unexpected("conversations", &other)),
        }
    }

    /// Creates a group owned by this user with `members`.
    pub async fn create_group(
        &self,
        name: &str,
        members: Vec<UserId>,
    ) -> Result<GroupInfo, ClientError> {
        let name = name.to_owned();
        self.group_request(|id| ClientFrame::CreateGroup {
            id,
            name,
            description: String::new(),
            members,
        })
        .await
    }

    pub async fn get_group(&self, group: ConversationId) -> Result<GroupInfo, ClientError> {
        self.group_request(|id| ClientFrame::GetGroup { id, group })
            .await
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        match self.request(|id| ClientFrame::ListGroups { id }).await? {
            ServerFrame::Groups { groups, .. } => Ok(groups),
            other => Err(unexpected("groups", &other)),
        }
    }

    pub async fn add_members(
        &self,
        group: ConversationId,
        user_ids: Vec<UserId>,
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(|id| ClientFrame::AddMembers {
            id,
            group,
            user_ids,
        })
        .await
    }

    pub async fn remove_member(
        &self,
        group: ConversationId,
        user_id: UserId,
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(|id| ClientFrame::RemoveMember { id, group, user_id })
            .await
    }

    pub async fn set_role(
        &self,
        group: ConversationId,
        user_id: UserId,
        role: Role,
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(|id| ClientFrame::SetRole {
            id,
            group,
            user_id,
            role,
        })
        .await
    }

    pub async fn transfer_group(
        &self,
        group: ConversationId,
        user_id: UserId,
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(|id| ClientFrame::TransferGroup { id, group, user_id })
            .await
    }

    pub async fn leave_group(&self, group: ConversationId) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::LeaveGroup { id, group })
            .await
    }

    pub async fn delete_group(&self, group: ConversationId) -> Result<(), ClientError> {
        self.expect_ok(|id| ClientFrame::DeleteGroup { id, group })
            .await
    }

    /// One message to many users and groups; the result says what happened per target.
    pub async fn broadcast(
        &self,
        client_msg_id: ClientMsgId,
        body: impl Into<String>,
        users: Vec<UserId>,
        groups: Vec<ConversationId>,
    ) -> Result<Vec<BroadcastOutcome>, ClientError> {
        let body = body.into();
        match self
            .request(|id| ClientFrame::Broadcast {
                id,
                client_msg_id,
                body,
                users,
                groups,
            })
            .await?
        {
            ServerFrame::BroadcastResult { results, .. } => Ok(results),
            other => Err(unexpected("broadcast_result", &other)),
        }
    }

    async fn group_request(
        &self,
        make: impl FnOnce(String) -> ClientFrame,
    ) -> Result<GroupInfo, ClientError> {
        match self.request(make).await? {
            ServerFrame::Group { group, .. } => Ok(group),
            other => Err(unexpected("group", &other)),
        }
    }

    async fn expect_ok(&self, make: impl FnOnce(String) -> ClientFrame) -> Result<(), ClientError> {
        match self.request(make).await? {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(unexpected("ok", &other)),
        }
    }

    /// Opens (or finds) the direct conversation with the user named `username`.
    pub async fn open_direct_by_username(
        &self,
        username: &str,
    ) -> Result<ConversationInfo, ClientError> {
        let username = username.to_owned();
        self.open_direct(|id| ClientFrame::OpenDirect {
            id,
            username: Some(username),
            user_id: None,
        })
        .await
    }

    /// Opens (or finds) the direct conversation with `user` (oneself: notes to self).
    pub async fn open_direct_by_id(&self, user: UserId) -> Result<ConversationInfo, ClientError> {
        self.open_direct(|id| ClientFrame::OpenDirect {
            id,
            username: None,
            user_id: Some(user),
        })
        .await
    }

    /// Appends a message. Sending again with the same `client_msg_id` is safe: the ack then
    /// has `duplicate` set and the original seq.
    pub async fn send(
        &self,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: impl Into<String>,
    ) -> Result<Ack, ClientError> {
        self.send_related(conversation, client_msg_id, body, None)
            .await
    }

    /// [`Connection::send`] of a reply, edit, deletion (empty body) or reaction.
    pub async fn send_related(
        &self,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: impl Into<String>,
        refers: Option<MessageRef>,
    ) -> Result<Ack, ClientError> {
        self.send_full(conversation, client_msg_id, body, refers, Vec::new())
            .await
    }

    /// [`Connection::send`] with uploaded media attached (see [`crate::HttpApi::upload`]);
    /// the body may be empty when there are attachments.
    pub async fn send_with_media(
        &self,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: impl Into<String>,
        attachments: Vec<MediaId>,
    ) -> Result<Ack, ClientError> {
        self.send_full(conversation, client_msg_id, body, None, attachments)
            .await
    }

    async fn send_full(
        &self,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: impl Into<String>,
        refers: Option<MessageRef>,
        attachments: Vec<MediaId>,
    ) -> Result<Ack, ClientError> {
        let body = body.into();
        let reply = self
            .request(|id| ClientFrame::Send {
                id,
                conversation,
                client_msg_id,
                body,
                refers,
                attachments,
            })
            .await?;
        match reply {
            ServerFrame::Ack {
                conversation,
                client_msg_id,
                seq,
                ts_ms,
                duplicate,
                ..
            } => Ok(Ack {
                conversation,
                client_msg_id,
                seq,
                ts_ms,
                duplicate,
            }),
            other => Err(unexpected("ack", &other)),
        }
    }

    /// A page of history: ascending from `after`, or the latest below `before`, or with
    /// neither the latest page; at most `limit` (the server caps it).
    pub async fn history(
        &self,
        conversation: ConversationId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ClientError> {
        let reply = self
            .request(|id| ClientFrame::History {
                id,
                conversation,
                after,
                before,
                around: None,
                limit,
            })
            .await?;
        match reply {
            ServerFrame::History {
                conversation,
                head,
                messages,
                ..
            } => Ok(HistoryPage {
                conversation,
                head,
                messages,
            }),
            other => Err(unexpected("history", &other)),
        }
    }

    /// A user's public profile (`get_profile` by id).
    pub async fn profile(&self, user: UserId) -> Result<Profile, ClientError> {
        self.profile_request(Some(user), None).await
    }

    /// A user's public profile (`get_profile` by username).
    pub async fn profile_by_username(&self, username: &str) -> Result<Profile, ClientError> {
        self.profile_request(None, Some(username.to_owned())).await
    }

    /// One's own profile (`get_profile` naming nobody).
    pub async fn my_profile(&self) -> Result<Profile, ClientError> {
        self.profile_request(None, None).await
    }

    /// Changes one's own profile; fields left `None` keep their value, `avatar: Some(None)`
    /// clears the avatar. Returns the new profile.
    pub async fn update_profile(&self, update: ProfileUpdate) -> Result<Profile, ClientError> {
        let reply = self
            .request(|id| ClientFrame::UpdateProfile {
                id,
                display_name: update.display_name,
                status_text: update.status_text,
                avatar: update.avatar,
            })
            .await?;
        match reply {
            ServerFrame::Profile { profile, .. } => Ok(profile),
            other => Err(unexpected("profile", &other)),
        }
    }

    /// One's own settings.
    pub async fn settings(&self) -> Result<Settings, ClientError> {
        self.settings_reply(self.request(|id| ClientFrame::GetSettings { id }).await?)
    }

    /// Changes one's own settings; fields left `None` keep their value.
    pub async fn update_settings(&self, update: SettingsUpdate) -> Result<Settings, ClientError> {
        let reply = self
            .request(|id| ClientFrame::UpdateSettings {
                id,
                dm_policy: update.dm_policy,
                push_preview: update.push_preview,
            })
            .await?;
        self.settings_reply(reply)
    }

    /// One's own sessions (logged-in devices).
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        match self.request(|id| ClientFrame::ListSessions { id }).await? {
            ServerFrame::Sessions { sessions, .. } => Ok(sessions),
            other => Err(unexpected("sessions", &other)),
        }
    }

    /// Revokes one of one's own sessions by its `session_id`.
    pub async fn revoke_session(&self, session_id: &str) -> Result<(), ClientError> {
        let session_id = session_id.to_owned();
        match self
            .request(|id| ClientFrame::RevokeSession { id, session_id })
            .await?
        {
            ServerFrame::SessionRevoked { .. } => Ok(()),
            other => Err(unexpected("session_revoked", &other)),
        }
    }

    /// Contacts and pending requests both ways.
    pub async fn contacts(&self) -> Result<ContactsResponse, ClientError> {
        match self.request(|id| ClientFrame::ListContacts { id }).await? {
            ServerFrame::Contacts {
                contacts,
                incoming,
                outgoing,
                ..
            } => Ok(ContactsResponse {
                contacts,
                incoming,
                outgoing,
            }),
            other => Err(unexpected("contacts", &other)),
        }
    }

    /// The users one blocked.
    pub async fn blocks(&self) -> Result<Vec<ContactEntry>, ClientError> {
        match self.request(|id| ClientFrame::ListBlocks { id }).await? {
            ServerFrame::Blocks { blocked, .. } => Ok(blocked),
            other => Err(unexpected("blocks", &other)),
        }
    }

    /// Asks `user` to become a contact; returns the relation after it (`outgoing`, or
    /// `contact` when they had asked first).
    pub async fn request_contact(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::RequestContact {
            id,
            user_id: Some(user),
            username: None,
        })
        .await
    }

    /// [`Connection::request_contact`] naming the user by username.
    pub async fn request_contact_by_username(
        &self,
        username: &str,
    ) -> Result<Relation, ClientError> {
        let username = username.to_owned();
        self.relation_request(|id| ClientFrame::RequestContact {
            id,
            user_id: None,
            username: Some(username),
        })
        .await
    }

    /// Accepts the request `user` sent.
    pub async fn accept_contact(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::AcceptContact { id, user_id: user })
            .await
    }

    /// Declines the request `user` sent.
    pub async fn decline_contact(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::DeclineContact { id, user_id: user })
            .await
    }

    /// Withdraws one's own request to `user`.
    pub async fn cancel_contact(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::CancelContact { id, user_id: user })
            .await
    }

    /// Ends the contact relation with `user`.
    pub async fn remove_contact(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::RemoveContact { id, user_id: user })
            .await
    }

    pub async fn block_user(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::BlockUser { id, user_id: user })
            .await
    }

    pub async fn unblock_user(&self, user: UserId) -> Result<Relation, ClientError> {
        self.relation_request(|id| ClientFrame::UnblockUser { id, user_id: user })
            .await
    }

    async fn profile_request(
        &self,
        user_id: Option<UserId>,
        username: Option<String>,
    ) -> Result<Profile, ClientError> {
        let reply = self
            .request(|id| ClientFrame::GetProfile {
                id,
                user_id,
                username,
            })
            .await?;
        match reply {
            ServerFrame::Profile { profile, .. } => Ok(profile),
            other => Err(unexpected("profile", &other)),
        }
    }

    fn settings_reply(&self, reply: ServerFrame) -> Result<Settings, ClientError> {
        match reply {
            ServerFrame::Settings { settings, .. } => Ok(settings),
            other => Err(unexpected("settings", &other)),
        }
    }

    async fn relation_request(
        &self,
        make: impl FnOnce(String) -> ClientFrame,
    ) -> Result<Relation, ClientError> {
        match self.request(make).await? {
            ServerFrame::Relation { relation, .. } => Ok(relation),
            other => Err(unexpected("relation", &other)),
        }
    }

    /// The next pushed message, or `None` if none arrives within `timeout` (a zero timeout
    /// returns one already received, if any). Once the connection has closed and every
    /// received push was read: [`ClientError::Closed`].
    pub async fn next_message(&self, timeout: Duration) -> Result<Option<Message>, ClientError> {
        next_within(
            timeout,
            async { self.pushes.lock().await.try_recv() },
            async { self.pushes.lock().await.recv().await },
        )
        .await
        .ok_or_else(|| self.inner.closed_error(None))
    }

    /// The next [`RawEvent`], or `None` if none arrives within `timeout`. The last event is
    /// [`RawEvent::Closed`]; after it: [`ClientError::Closed`].
    pub async fn next_raw_frame(&self, timeout: Duration) -> Result<Option<RawEvent>, ClientError> {
        next_within(timeout, async { self.raw.lock().await.try_recv() }, async {
            self.raw.lock().await.recv().await
        })
        .await
        .ok_or_else(|| self.inner.closed_error(None))
    }

    /// Sends `text` as one text frame, as is: for tests of malformed and oversized frames.
    /// The server's answer, if any, comes through [`Connection::next_raw_frame`] (unless the
    /// text named the id of a waiting request). When the server closes the socket while a
    /// large frame is still being written, this fails; the close code is then in
    /// [`Connection::next_raw_frame`] or [`Connection::wait_closed`].
    pub async fn send_raw_text(&self, text: String) -> Result<(), ClientError> {
        self.inner
            .send(WsMessage::Text(text), self.config.request_timeout)
            .await
    }

    /// Sends `frame` without waiting for a reply: the reply goes to
    /// [`Connection::next_raw_frame`], so a test can choose the request id.
    pub async fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.send_raw_text(encode(frame)?).await
    }

    /// Cuts the connection as a network failure would: the socket is closed without a
    /// WebSocket close frame, so the server learns of it only from the transport. Returns at
    /// once; the connection closes shortly after.
    ///
    /// The pushes received before the cut stay readable through
    /// [`Connection::next_message`] (which then reports [`ClientError::Closed`]), and
    /// [`Connection::last_event_seq`] covers exactly the events received. So a client that
    /// takes every push left and reconnects with
    /// [`ConnectionConfig::resume_from`] set to that cursor is owed every later event once:
    /// what the load tester's reconnect storms check.
    pub fn sever(&self) {
        self.inner.severed.store(true, Ordering::Relaxed);
        self.inner.sever.notify_one();
    }

    /// Whether [`Connection::sever`] was called on this connection.
    pub fn was_severed(&self) -> bool {
        self.inner.severed.load(Ordering::Relaxed)
    }

    /// Closes the connection (code 1000) and waits for the server's close frame.
    pub async fn close(&self) -> Result<(), ClientError> {
        if self.close_status().is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        // A failure here means the socket is already closing; wait for that instead.
        let _ = self
            .inner
            .send(WsMessage::Close(Some(frame)), self.config.request_timeout)
            .await;
        self.wait_closed(self.config.request_timeout)
            .await
            .map(drop)
    }

    /// Waits until the connection has closed (by either side) and says how.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        let mut closed = self.closed.clone();
        let waited = tokio::time::timeout(timeout, closed.wait_for(Option::is_some)).await;
        match waited {
            Err(_) => Err(ClientError::Timeout),
            Ok(Ok(info)) => Ok(info.clone().unwrap_or_else(|| CloseInfo {
                code: None,
                reason: "closed".into(),
            })),
            // The reader task is gone without saying how (the runtime is shutting down).
            Ok(Err(_)) => Err(self.inner.closed_error(None)),
        }
    }

    /// How the connection closed, or `None` while it is open.
    pub fn close_status(&self) -> Option<CloseInfo> {
        self.closed.borrow().clone()
    }

    async fn open_direct(
        &self,
        make: impl FnOnce(String) -> ClientFrame,
    ) -> Result<ConversationInfo, ClientError> {
        match self.request(make).await? {
            ServerFrame::Conversation { info, .. } => Ok(info),
            other => Err(unexpected("conversation", &other)),
        }
    }

    async fn request(
        &self,
        make: impl FnOnce(String) -> ClientFrame,
    ) -> Result<ServerFrame, ClientError> {
        self.inner
            .request(make, false, self.config.request_timeout)
            .await
    }
}

/// What the reader task, the heartbeat and the connection's methods share.
struct Inner {
    /// `None` once the connection was severed: nothing can be sent any more.
    sink: AsyncMutex<Option<SplitSink<WsStream, WsMessage>>>,
    pending: StdMutex<Pending>,
    next_id: AtomicU64,
    /// The highest `event_seq` received: the cursor to resume from.
    last_event_seq: AtomicU64,
    /// Tells the reader to stop and drop the socket ([`Connection::sever`]).
    sever: Notify,
    severed: AtomicBool,
}

impl Inner {
    /// Sends the frame `make` builds around a fresh request id and waits for its reply. An
    /// `error` reply becomes [`ClientError::Server`].
    async fn request(
        &self,
        make: impl FnOnce(String) -> ClientFrame,
        is_hello: bool,
        timeout: Duration,
    ) -> Result<ServerFrame, ClientError> {
        let id = format!("r{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let text = encode(&make(id.clone()))?;
        let rx = lock(&self.pending).register(&id, is_hello)?;
        // Stops waiting for the reply however this future ends: reply, error, timeout, drop.
        let _waiting = Waiting {
            pending: &self.pending,
            id,
        };
        let reply = tokio::time::timeout(timeout, async {
            self.send(WsMessage::Text(text), timeout).await?;
            rx.await.unwrap_or_else(|_| Err(self.closed_error(None)))
        })
        .await
        .map_err(|_| ClientError::Timeout)??;
        match reply {
            ServerFrame::Error { error, .. } => Err(ClientError::Server(error)),
            frame => Ok(frame),
        }
    }

    async fn send(&self, message: WsMessage, timeout: Duration) -> Result<(), ClientError> {
        let sent = tokio::time::timeout(timeout, async {
            match self.sink.lock().await.as_mut() {
                Some(sink) => sink.send(message).await.map_err(Some),
                None => Err(None),
            }
        })
        .await
        .map_err(|_| ClientError::Timeout)?;
        sent.map_err(|e| self.closed_error(e))
    }

    /// The error for a connection that cannot carry a request: how it closed if the reader
    /// has seen that, else the transport error `cause`.
    fn closed_error(&self, cause: Option<WsError>) -> ClientError {
        if let Some(info) = lock(&self.pending).closed() {
            return info.to_error();
        }
        match cause {
            Some(e) => ClientError::Ws(e.to_string()),
            None => ClientError::Closed {
                code: None,
                reason: "connection task ended".into(),
            },
        }
    }
}

/// Removes a request from the pending map when its future ends.
struct Waiting<'a> {
    pending: &'a StdMutex<Pending>,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).cancel(&self.id);
    }
}

enum PushTx {
    Unbounded(mpsc::UnboundedSender<Message>),
    Bounded(mpsc::Sender<Message>),
}

impl PushTx {
    async fn send(&self, message: Message) {
        // The receiver lives in the Connection, whose drop also ends this task: a send
        // error only happens during that teardown and loses nothing anyone could read.
        let _ = match self {
            PushTx::Unbounded(tx) => tx.send(message).map_err(drop),
            PushTx::Bounded(tx) => tx.send(message).await.map_err(drop),
        };
    }
}

enum PushRx {
    Unbounded(mpsc::UnboundedReceiver<Message>),
    Bounded(mpsc::Receiver<Message>),
}

impl PushRx {
    async fn recv(&mut self) -> Option<Message> {
        match self {
            PushRx::Unbounded(rx) => rx.recv().await,
            PushRx::Bounded(rx) => rx.recv().await,
        }
    }

    fn try_recv(&mut self) -> Result<Message, mpsc::error::TryRecvError> {
        match self {
            PushRx::Unbounded(rx) => rx.try_recv(),
            PushRx::Bounded(rx) => rx.try_recv(),
        }
    }
}

/// The next item of a queue within `timeout`: `Some(None)` when none came in time, `None`
/// when the queue is closed and empty. A zero timeout takes what the queue holds right now
/// (`now`) and never waits: tokio's timer rounds a deadline up to its next millisecond tick,
/// so a timed receive of zero took up to a millisecond to find the queue empty (and a reader
/// draining a batch paid it every time). Otherwise it waits (`wait`) at most `timeout`.
async fn next_within<T>(
    timeout: Duration,
    now: impl Future<Output = Result<T, mpsc::error::TryRecvError>>,
    wait: impl Future<Output = Option<T>>,
) -> Option<Option<T>> {
    if timeout.is_zero() {
        return match now.await {
            Ok(item) => Some(Some(item)),
            Err(mpsc::error::TryRecvError::Empty) => Some(None),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
    match tokio::time::timeout(timeout, wait).await {
        Err(_) => Some(None),
        Ok(item) => item.map(Some),
    }
}

async fn read_loop(
    mut stream: SplitStream<WsStream>,
    inner: Arc<Inner>,
    pushes: PushTx,
    raw: mpsc::UnboundedSender<RawEvent>,
    closed: watch::Sender<Option<CloseInfo>>,
) {
    let mut close: Option<CloseInfo> = None;
    loop {
        let item = tokio::select! {
            // Stop between frames: a push already taken from the socket still reaches the
            // channel, so the cursor never covers a push the application cannot read.
            biased;
            _ = inner.sever.notified() => {
                close.get_or_insert(CloseInfo {
                    code: None,
                    reason: SEVERED.into(),
                });
                break;
            }
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        match item {
            Ok(WsMessage::Text(text)) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => {
                    let routed = lock(&inner.pending).route(frame);
                    match routed {
                        Routed::Delivered => {}
                        Routed::Push(message, event_seq) => {
                            if let Some(e) = event_seq {
                                inner.last_event_seq.fetch_max(e.0, Ordering::Relaxed);
                            }
                            pushes.send(message).await
                        }
                        Routed::Unsolicited(frame) => {
                            if let ServerFrame::Read { event_seq, .. }
                            | ServerFrame::EventCursor { event_seq }
                            | ServerFrame::Receipt { event_seq, .. }
                            | ServerFrame::Contact { event_seq, .. }
                            | ServerFrame::ProfileChanged { event_seq, .. } = &frame
                            {
                                inner
                                    .last_event_seq
                                    .fetch_max(event_seq.0, Ordering::Relaxed);
                            }
                            let _ = raw.send(RawEvent::Frame(frame));
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable server frame");
                    let _ = raw.send(RawEvent::Undecodable {
                        text,
                        error: e.to_string(),
                    });
                }
            },
            Ok(WsMessage::Binary(bytes)) => {
                let _ = raw.send(RawEvent::Binary(bytes));
            }
            Ok(WsMessage::Close(frame)) => {
                // tungstenite answers the close itself; the stream ends after it.
                close.get_or_insert(CloseInfo {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.into_owned()).unwrap_or_default(),
                });
            }
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
            Err(e) => {
                close.get_or_insert(CloseInfo {
                    code: None,
                    reason: e.to_string(),
                });
                break;
            }
        }
    }
    if inner.severed.load(Ordering::Relaxed) {
        // Both halves gone: the socket closes without a close frame, as a network failure
        // would leave it.
        drop(stream);
        inner.sink.lock().await.take();
    }
    let info = close.unwrap_or_else(|| CloseInfo {
        code: None,
        reason: "the connection ended without a close frame".into(),
    });
    tracing::debug!(code = ?info.code, "connection closed");
    // Fail the waiting requests before the push channel closes, so that a reader of pushes
    // that sees the end also finds the close code.
    lock(&inner.pending).close(info.clone());
    let _ = raw.send(RawEvent::Closed {
        code: info.code,
        reason: info.reason.clone(),
    });
    closed.send_replace(Some(info));
}

async fn heartbeat_loop(inner: Arc<Inner>, every: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let ping = inner
            .request(|id| ClientFrame::Ping { id }, false, timeout)
            .await;
        if let Err(ClientError::Closed { .. }) = ping {
            return;
        }
    }
}

fn encode(frame: &ClientFrame) -> Result<String, ClientError> {
    serde_json::to_string(frame)
        .map_err(|e| ClientError::Protocol(format!("cannot encode a client frame: {e}")))
}

/// Opens a TCP socket bound to `local` (any port), connects it to the host and port of the
/// `ws://` URL `ws_url` and performs the WebSocket upgrade on it.
async fn connect_from(
    ws_url: &str,
    local: IpAddr,
) -> Result<
    (
        WsStream,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    ClientError,
> {
    let url = reqwest::Url::parse(ws_url)
        .map_err(|e| ClientError::Ws(format!("bad WebSocket URL {ws_url:?}: {e}")))?;
    if url.scheme() != "ws" {
        return Err(ClientError::Ws(format!(
            "a local address needs a ws:// URL, not {ws_url:?}"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Ws(format!("no host in {ws_url:?}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let remotes: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Ws(format!("cannot resolve {host}: {e}")))?
        .filter(|a| a.is_ipv4() == local.is_ipv4())
        .collect();
    let Some(remote) = remotes.first().copied() else {
        return Err(ClientError::Ws(format!(
            "{host} has no address of the same family as the local address {local}"
        )));
    };
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| ClientError::Ws(format!("socket: {e}")))?;
    socket
        .bind(std::net::SocketAddr::new(local, 0))
        .map_err(|e| ClientError::Ws(format!("binding the local address {local}: {e}")))?;
    let tcp = socket
        .connect(remote)
        .await
        .map_err(|e| ClientError::Ws(format!("connecting {remote} from {local}: {e}")))?;
    // Nagle off, as on the default path.
    tcp.set_nodelay(true)
        .map_err(|e| ClientError::Ws(format!("TCP_NODELAY: {e}")))?;
    tokio_tungstenite::client_async(ws_url, MaybeTlsStream::Plain(tcp))
        .await
        .map_err(upgrade_error)
}

fn upgrade_error(e: WsError) -> ClientError {
    match e {
        WsError::Http(response) => {
            let status = response.status();
            let wire = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice(body).ok());
            match wire {
                Some(wire) => ClientError::Server(wire),
                None => ClientError::Http(format!("websocket upgrade refused with HTTP {status}")),
            }
        }
        other => ClientError::Ws(other.to_string()),
    }
}

fn unexpected(wanted: &str, got: &ServerFrame) -> ClientError {
    ClientError::Protocol(format!(
        "expected a {wanted} frame, got {}",
        frame_kind(got)
    ))
}

fn frame_kind(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::Conversation { .. } => "conversation",
        ServerFrame::Ack { .. } => "ack",
        ServerFrame::History { .. } => "history",
        ServerFrame::Message { .. } => "message",
        ServerFrame::Resync { .. } => "resync",
        ServerFrame::EventCursor { .. } => "event_cursor",
        ServerFrame::Profile { .. } => "profile",
        ServerFrame::Settings { .. } => "settings",
        ServerFrame::Sessions { .. } => "sessions",
        ServerFrame::SessionRevoked { .. } => "session_revoked",
        ServerFrame::Contacts { .. } => "contacts",
        ServerFrame::Blocks { .. } => "blocks",
        ServerFrame::Relation { .. } => "relation",
        ServerFrame::Ok { .. } => "ok",
        ServerFrame::Group { .. } => "group",
        ServerFrame::Groups { .. } => "groups",
        ServerFrame::BroadcastResult { .. } => "broadcast_result",
        ServerFrame::Conversations { .. } => "conversations",
        ServerFrame::Read { .. } => "read",
        ServerFrame::Receipt { .. } => "receipt",
        ServerFrame::Typing { .. } => "typing",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::Contact { .. } => "contact",
        ServerFrame::ProfileChanged { .. } => "profile_changed",
        ServerFrame::Error { .. } => "error",
    }
}

/// Locks a std mutex; a panic elsewhere while holding it leaves state that is still valid
/// (every critical section is a few map operations), so poisoning is ignored.
fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    //! The connection against a scripted in-process WebSocket server: no chat server needed.
    #![allow(clippy::unwrap_used)]

    use std::future::Future;

    use chat_types::{close, ErrorCode, WireError};
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::accept_async;

    use super::*;

    type ServerWs = WebSocketStream<TcpStream>;

    const WAIT: Duration = Duration::from_secs(5);

    /// Serves one WebSocket connection with `script`; returns the URL to connect to.
    async fn fake_server<F, Fut>(script: F) -> String
    where
        F: FnOnce(ServerWs) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = accept_async(tcp).await.unwrap();
            script(ws).await;
        });
        format!("ws://{addr}/v1/ws?token=t")
    }

    async fn must_recv(ws: &mut ServerWs) -> ClientFrame {
        loop {
            match ws.next().await.unwrap().unwrap() {
                WsMessage::Text(text) => return ClientFrame::decode(&text).unwrap(),
                WsMessage::Close(_) => panic!("client closed"),
                _ => {}
            }
        }
    }

    async fn must_send(ws: &mut ServerWs, frame: ServerFrame) {
        ws.send(WsMessage::Text(serde_json::to_string(&frame).unwrap()))
            .await
            .unwrap();
    }

    fn welcome(id: Option<String>) -> ServerFrame {
        ServerFrame::Welcome {
            id,
            version: PROTOCOL_VERSION,
            user_id: UserId(1),
            username: "alice".into(),
            node_id: NodeId(7),
            limits: Limits::default(),
            heartbeat_ms: 60_000,
            event_head: EventSeq(0),
            acked_event_seq: EventSeq(0),
        }
    }

    /// Answers the hello without echoing its id, as a server may.
    async fn must_handshake(ws: &mut ServerWs) {
        let ClientFrame::Hello { version, .. } = must_recv(ws).await else {
            panic!("expected hello first");
        };
        assert_eq!(version, PROTOCOL_VERSION);
        must_send(ws, welcome(None)).await;
    }

    fn conv() -> ConversationId {
        ConversationId::direct(UserId(1), UserId(2))
    }

    fn message(seq: u64) -> Message {
        Message {
            conversation: conv(),
            seq: Seq(seq),
            sender: UserId(2),
            client_msg_id: ClientMsgId::new(format!("m{seq}")).unwrap(),
            body: "hi".into(),
            ts_ms: 5,
            refers: None,
            attachments: Vec::new(),
        }
    }

    fn quiet() -> ConnectionConfig {
        ConnectionConfig {
            request_timeout: Duration::from_secs(5),
            push_buffer: None,
            heartbeat: false,
            resume_from: None,
            local_addr: None,
        }
    }

    #[tokio::test]
    async fn replies_are_matched_by_id_whatever_their_order_and_pushes_queue() {
        let url = fake_server(|mut ws| async move {
            must_handshake(&mut ws).await;
            let first = must_recv(&mut ws).await;
            let second = must_recv(&mut ws).await;
            // Answer in reverse order with a push in between.
            for frame in [second, first] {
                match frame {
                    ClientFrame::Ping { id } => must_send(&mut ws, ServerFrame::Pong { id }).await,
                    ClientFrame::Send {
                        id,
                        conversation,
                        client_msg_id,
                        ..
                    } => {
                        must_send(
                            &mut ws,
                            ServerFrame::Message {
                                event_seq: None,
                                message: message(1),
                            },
                        )
                        .await;
                        let ack = ServerFrame::Ack {
                            id,
                            conversation,
                            client_msg_id,
                            seq: Seq(1),
                            ts_ms: 5,
                            duplicate: false,
                        };
                        must_send(&mut ws, ack).await;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Keep the socket open until the client is done.
            while ws.next().await.is_some() {}
        })
        .await;
        let (conn, welcome) = Connection::connect_with(&url, quiet()).await.unwrap();
        assert_eq!(welcome.username, "alice");
        assert_eq!(welcome.node_id, NodeId(7));
        let cmid = ClientMsgId::new("c1").unwrap();
        let (pong, ack) = tokio::join!(conn.ping(), conn.send(conv(), cmid.clone(), "hi"));
        pong.unwrap();
        let ack = ack.unwrap();
        assert_eq!(
            (ack.seq, ack.client_msg_id, ack.duplicate),
            (Seq(1), cmid, false)
        );
        // The push came before the ack: it is queued, and a zero timeout hands it over on the
        // first poll; on an empty queue it answers on the first poll too, never waiting for a
        // timer tick.
        fn first_poll<T>(next: Option<Result<T, ClientError>>) -> Option<T> {
            next.map(|r| r.expect("the connection is open"))
        }
        assert_eq!(
            first_poll(conn.next_message(Duration::ZERO).now_or_never()),
            Some(Some(message(1)))
        );
        assert_eq!(
            first_poll(conn.next_message(Duration::ZERO).now_or_never()),
            Some(None)
        );
        assert_eq!(
            first_poll(conn.next_raw_frame(Duration::ZERO).now_or_never()),
            Some(None)
        );
    }

    #[tokio::test]
    async fn error_frames_fail_their_request_or_surface_as_raw_events() {
        let url = fake_server(|mut ws| async move {
            must_handshake(&mut ws).await;
            let ClientFrame::OpenDirect { id, .. } = must_recv(&mut ws).await else {
                panic!("expected open_direct");
            };
            let refused = WireError::new(ErrorCode::NotFound, "no such user");
            must_send(
                &mut ws,
                ServerFrame::Error {
                    id: Some(id),
                    error: refused,
                },
            )
            .await;
            // The raw text the client sent: answer with an id-less error, then garbage.
            let Some(Ok(WsMessage::Text(_))) = ws.next().await else {
                panic!("expected the raw text");
            };
            let malformed = WireError::new(ErrorCode::MalformedFrame, "not JSON");
            must_send(
                &mut ws,
                ServerFrame::Error {
                    id: None,
                    error: malformed,
                },
            )
            .await;
            ws.send(WsMessage::Text("{\"type\":\"typing\"}".into()))
                .await
                .unwrap();
            while ws.next().await.is_some() {}
        })
        .await;
        let (conn, _) = Connection::connect_with(&url, quiet()).await.unwrap();
        let err = conn.open_direct_by_username("nobody").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
        conn.send_raw_text("{nope".into()).await.unwrap();
        match conn.next_raw_frame(WAIT).await.unwrap() {
            Some(RawEvent::Frame(ServerFrame::Error { id: None, error })) => {
                assert_eq!(error.code, ErrorCode::MalformedFrame)
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
        assert!(matches!(
            conn.next_raw_frame(WAIT).await.unwrap(),
            Some(RawEvent::Undecodable { .. })
        ));
    }

    #[tokio::test]
    async fn a_server_close_fails_waiting_requests_with_its_code() {
        let url = fake_server(|mut ws| async move {
            must_handshake(&mut ws).await;
            must_send(
                &mut ws,
                ServerFrame::Message {
                    event_seq: None,
                    message: message(1),
                },
            )
            .await;
            let ClientFrame::Ping { .. } = must_recv(&mut ws).await else {
                panic!("expected ping");
            };
            let frame = CloseFrame {
                code: CloseCode::from(close::TOO_BIG),
                reason: "frame too large".into(),
            };
            ws.send(WsMessage::Close(Some(frame))).await.unwrap();
            while ws.next().await.is_some() {}
        })
        .await;
        let (conn, _) = Connection::connect_with(&url, quiet()).await.unwrap();
        let err = conn.ping().await.unwrap_err();
        assert_eq!(err.close_code(), Some(close::TOO_BIG));
        assert_eq!(
            conn.next_raw_frame(WAIT).await.unwrap(),
            Some(RawEvent::Closed {
                code: Some(close::TOO_BIG),
                reason: "frame too large".into()
            })
        );
        // Pushes received before the close are still read, then the close shows.
        assert_eq!(conn.next_message(WAIT).await.unwrap(), Some(message(1)));
        let err = conn.next_message(WAIT).await.unwrap_err();
        assert_eq!(err.close_code(), Some(close::TOO_BIG));
        assert_eq!(
            conn.ping().await.unwrap_err().close_code(),
            Some(close::TOO_BIG)
        );
        assert_eq!(
            conn.close_status().and_then(|c| c.code),
            Some(close::TOO_BIG)
        );
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_and_its_late_reply_is_raw() {
        let url = fake_server(|mut ws| async move {
            must_handshake(&mut ws).await;
            let ClientFrame::Ping { id } = must_recv(&mut ws).await else {
                panic!("expected ping");
            };
            // Answer only after the client gave up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            must_send(&mut ws, ServerFrame::Pong { id }).await;
            while ws.next().await.is_some() {}
        })
        .await;
        let (mut conn, _) = Connection::connect_with(&url, quiet()).await.unwrap();
        conn.set_request_timeout(Duration::from_millis(100));
        assert_eq!(conn.ping().await.unwrap_err(), ClientError::Timeout);
        assert!(matches!(
            conn.next_raw_frame(WAIT).await.unwrap(),
            Some(RawEvent::Frame(ServerFrame::Pong { .. }))
        ));
    }

    #[tokio::test]
    async fn close_completes_the_closing_handshake() {
        let url = fake_server(|mut ws| async move {
            must_handshake(&mut ws).await;
            // tungstenite answers the client's close while we read.
            while ws.next().await.is_some() {}
        })
        .await;
        let (conn, _) = Connection::connect_with(&url, quiet()).await.unwrap();
        conn.close().await.unwrap();
        assert_eq!(
            conn.close_status().and_then(|c| c.code),
            Some(close::NORMAL)
        );
        assert!(matches!(conn.ping().await, Err(ClientError::Closed { .. })));
    }

    #[tokio::test]
    async fn heartbeat_pings_an_idle_connection() {
        let url = fake_server(|mut ws| async move {
            let ClientFrame::Hello { .. } = must_recv(&mut ws).await else {
                panic!("expected hello first");
            };
            let mut w = welcome(None);
            if let ServerFrame::Welcome { heartbeat_ms, .. } = &mut w {
                *heartbeat_ms = 100;
            }
            must_send(&mut ws, w).await;
            let ClientFrame::Ping { id } = must_recv(&mut ws).await else {
                panic!("expected a heartbeat ping");
            };
            must_send(&mut ws, ServerFrame::Pong { id }).await;
            // Prove the heartbeat got through by pushing a message.
            must_send(
                &mut ws,
                ServerFrame::Message {
                    event_seq: None,
                    message: message(1),
                },
            )
            .await;
            while ws.next().await.is_some() {}
        })
        .await;
        let config = ConnectionConfig {
            heartbeat: true,
            ..quiet()
        };
        let (conn, welcome) = Connection::connect_with(&url, config).await.unwrap();
        assert_eq!(welcome.heartbeat_ms, 100);
        assert_eq!(conn.next_message(WAIT).await.unwrap(), Some(message(1)));
        // The pong answered the heartbeat's own request, so it is not raw.
        assert_eq!(
            conn.next_raw_frame(Duration::from_millis(50))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_oversized_frame_shows_the_servers_1009_even_if_the_write_fails() {
        use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let limits = WebSocketConfig {
                max_frame_size: Some(64 << 10),
                max_message_size: Some(64 << 10),
                ..WebSocketConfig::default()
            };
            let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(limits))
                .await
                .unwrap();
            must_handshake(&mut ws).await;
            // The frame header names a length over the limit: refuse without reading it.
            assert!(ws.next().await.unwrap().is_err());
            let frame = CloseFrame {
                code: CloseCode::from(close::TOO_BIG),
                reason: "frame too large".into(),
            };
            let _ = ws.send(WsMessage::Close(Some(frame))).await;
        });
        let url = format!("ws://{addr}/v1/ws?token=t");
        let (conn, _) = Connection::connect_with(&url, quiet()).await.unwrap();
        // Whether the write completes depends on socket buffers; the close code must show.
        let _ = conn.send_raw_text("x".repeat(8 << 20)).await;
        let info = conn.wait_closed(WAIT).await.unwrap();
        assert_eq!(info.code, Some(close::TOO_BIG), "{info:?}");
        loop {
            match conn.next_raw_frame(WAIT).await.unwrap() {
                Some(RawEvent::Closed { code, .. }) => {
                    assert_eq!(code, Some(close::TOO_BIG));
                    break;
                }
                Some(_) => {}
                None => panic!("no close event"),
            }
        }
    }

    #[tokio::test]
    async fn a_refused_upgrade_carries_the_server_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let body = serde_json::to_string(&WireError::new(ErrorCode::Unauthorized, "bad token"))
                .unwrap();
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // Read the request first so that the client is not reset mid-write.
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
            tcp.write_all(response.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
        });
        let err = Connection::connect(&format!("ws://{addr}/v1/ws?token=bad"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err:?}");
    }

    #[tokio::test]
    async fn a_local_address_is_the_source_the_server_sees() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, peer) = listener.accept().await.unwrap();
            let _ = seen_tx.send(peer);
            let mut ws = accept_async(tcp).await.unwrap();
            must_handshake(&mut ws).await;
            while ws.next().await.is_some() {}
        });
        let url = format!("ws://{addr}/v1/ws?token=t");
        let local: IpAddr = "127.0.0.3".parse().unwrap();
        let config = ConnectionConfig {
            local_addr: Some(local),
            ..quiet()
        };
        let (conn, welcome) = Connection::connect_with(&url, config).await.unwrap();
        assert_eq!(welcome.user_id, UserId(1));
        let peer = seen_rx.await.unwrap();
        assert_eq!(peer.ip(), local, "the server saw {peer}");
        conn.close().await.unwrap();

        // Only plain ws:// URLs can be bound; anything else is a clear error, not a panic.
        let config = ConnectionConfig {
            local_addr: Some(local),
            ..quiet()
        };
        let err = Connection::connect_with(&format!("wss://{addr}/v1/ws"), config.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ws:// URL"), "{err}");
        // An IPv6 local address cannot reach an IPv4 server.
        let config = ConnectionConfig {
            local_addr: Some("::1".parse().unwrap()),
            ..quiet()
        };
        let err = Connection::connect_with(&url, config).await.unwrap_err();
        assert!(err.to_string().contains("same family"), "{err}");
    }
}
