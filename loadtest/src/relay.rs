//! The ceiling: a minimal WebSocket relay run inside the load tester, so that every figure of
//! the chat server can be stated as a fraction of what this machine can do at all.
//!
//! It speaks just enough of protocol v1 for the load scenarios, with the same JSON frames (the
//! `chat-types` ones) and the same REST paths, so the scenario drivers run against it
//! unchanged:
//!
//! - `POST /v1/register` and `POST /v1/login` (no password hashing: the token is the user id
//!   with a prefix), `GET /v1/conversations/{id}/messages?after=&limit=` (paged, ascending),
//!   `GET /metrics` (`chat_messages_appended_total`), `GET /readyz`, and the WebSocket upgrade
//!   at `GET /v1/ws?token=`, all on one port over a hand-written HTTP/1.1 loop;
//! - over the WebSocket: `hello` -> `welcome`, `ping` -> `pong`, `open_direct` ->
//!   `conversation`, `create_group` -> `group` (with the `created` note at seq 1, as the node
//!   writes it), `send` -> `ack` with a per-conversation seq, `broadcast`, `history`,
//!   `mark_read` -> `ok` (kept nowhere, no receipts); every new
//!   message is pushed to every connection of every member except the one that sent it.
//!
//! What it does not do is the point: no storage (the logs are vectors in memory, kept only so
//! that the checker can read the history back), no replication, no event stream, no rate
//! limits, no password hashing, no actors; one lock per conversation shard, one unbounded
//! outbound queue per connection, and a writer task that batches every queued frame into one
//! flush. A retried client message id gets its original seq (as the protocol says), so the
//! checker's rules hold for it unchanged.
//!
//! It runs on its own tokio runtime whose threads are named [`RELAY_THREAD`], so that its CPU
//! can be told apart from the load generator's in the same process (see
//! `sysstat::ProcSample::read_threads`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use chat_types::rest::{LoginRequest, LoginResponse, RegisterRequest, RegisterResponse};
use chat_types::{
    BroadcastOutcome, ClientFrame, ClientMsgId, ConversationId, ConversationInfo, ErrorCode,
    EventSeq, GroupChange, GroupId, GroupInfo, GroupMember, Limits, Message, MessageRef, NodeId,
    Role, Seq, ServerFrame, UserId, UserSummary, WireError, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::run::lock;

/// The name of the relay's runtime threads.
pub const RELAY_THREAD: &str = "lt-relay";
/// Tokens are this prefix and the user id.
const TOKEN_PREFIX: &str = "relay-";
/// Conversation shards (one lock each).
const SHARDS: usize = 64;
/// Largest request head and body the HTTP loop reads.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Frames one flush of the writer takes at most.
const BATCH: usize = 512;
/// What `welcome` announces.
const LIMITS: Limits = Limits {
    max_frame_bytes: 1 << 20,
    max_body_bytes: 16 * 1024,
    max_history_page: 200,
};

/// A running relay; stopped when dropped.
pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish()
    }
}

impl Relay {
    /// Starts a relay on `127.0.0.1` at an ephemeral port with `threads` runtime threads.
    /// Safe to call from inside another runtime: nothing here blocks on one.
    pub fn start(threads: usize) -> std::io::Result<Relay> {
        Relay::start_on("127.0.0.1:0", threads)
    }

    /// Starts a relay listening on `addr` (a loopback address).
    pub fn start_on(addr: &str, threads: usize) -> std::io::Result<Relay> {
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other(
                "the relay listens on loopback addresses only",
            ));
        }
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(RELAY_THREAD)
            .enable_all()
            .build()?;
        let state = Arc::new(State::default());
        let s = Arc::clone(&state);
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("relay: cannot listen: {e}");
                    return;
                }
            };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_http(Arc::clone(&s), stream));
                    }
                    // Out of file descriptors, most likely: wait a little rather than spin.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        });
        Ok(Relay {
            addr,
            state,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the drivers as a target.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Messages appended so far.
    pub fn appended(&self) -> u64 {
        self.state.appended.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, which panics inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type Outbox = mpsc::UnboundedSender<String>;

#[derive(Default)]
struct Users {
    by_name: HashMap<String, UserId>,
    names: HashMap<UserId, String>,
}

#[derive(Default)]
struct Conv {
    /// Sorted; empty for a direct conversation (its members are in its id).
    group_members: Vec<UserId>,
    log: Vec<Message>,
    ids: HashMap<(UserId, ClientMsgId), Seq>,
}

struct State {
    next_user: AtomicU64,
    next_group: AtomicU64,
    next_conn: AtomicU64,
    appended: AtomicU64,
    users: Mutex<Users>,
    conns: RwLock<HashMap<UserId, Vec<(u64, Outbox)>>>,
    shards: Vec<Mutex<HashMap<ConversationId, Conv>>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_user: AtomicU64::new(1),
            next_group: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            appended: AtomicU64::new(0),
            users: Mutex::default(),
            conns: RwLock::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl State {
    fn shard(&self, conv: &ConversationId) -> &Mutex<HashMap<ConversationId, Conv>> {
        let mut h = DefaultHasher::new();
        conv.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn user_of_token(&self, token: &str) -> Option<(UserId, String)> {
        let id: u64 = token.strip_prefix(TOKEN_PREFIX)?.parse().ok()?;
        let name = lock(&self.users).names.get(&UserId(id))?.clone();
        Some((UserId(id), name))
    }

    fn is_member(&self, conv: &ConversationId, c: Option<&Conv>, user: UserId) -> bool {
        match conv {
            ConversationId::Direct { .. } => conv.is_member(user),
            ConversationId::Group { .. } => {
                c.is_some_and(|c| c.group_members.binary_search(&user).is_ok())
            }
        }
    }

    /// Appends one message (or finds the original of a retried client message id) and pushes
    /// a new one to every connection of every member but `from_conn`. Returns the seq and
    /// whether it was a duplicate.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        sender: UserId,
        from_conn: u64,
        conv: ConversationId,
        cmid: ClientMsgId,
        body: String,
        refers: Option<MessageRef>,
    ) -> Result<(Seq, u64, bool), WireError> {
        let mut shard = lock(self.shard(&conv));
        let known = shard.contains_key(&conv);
        if !self.is_member(&conv, shard.get(&conv), sender) {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        if !known {
            shard.insert(conv, Conv::default());
        }
        let Some(c) = shard.get_mut(&conv) else {
            return Err(WireError::new(ErrorCode::Internal, "conversation vanished"));
        };
        if let Some(seq) = c.ids.get(&(sender, cmid.clone())) {
            let ts = c.log[(seq.0 - 1) as usize].ts_ms;
            return Ok((*seq, ts, true));
        }
        let seq = Seq(c.log.len() as u64 + 1);
        let message = Message {
            conversation: conv,
            seq,
            sender,
            client_msg_id: cmid.clone(),
            body,
            ts_ms: now_ms(),
            refers,
            attachments: Vec::new(),
        };
        let frame = ServerFrame::Message {
            event_seq: None,
            message,
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            let conns = self.conns.read().unwrap_or_else(PoisonError::into_inner);
            let push = |member: &UserId| {
                if let Some(list) = conns.get(member) {
                    for (id, out) in list {
                        if *id != from_conn {
                            let _ = out.send(text.clone());
                        }
                    }
                }
            };
            match conv {
                ConversationId::Direct { low, high } => {
                    push(&low);
                    if high != low {
                        push(&high);
                    }
                }
                ConversationId::Group { .. } => c.group_members.iter().for_each(push),
            }
        }
        let ServerFrame::Message { message, .. } = frame else {
            unreachable!("built above as a message")
        };
        let ts = message.ts_ms;
        c.log.push(message);
        c.ids.insert((sender, cmid), seq);
        self.appended.fetch_add(1, Ordering::Relaxed);
        Ok((seq, ts, false))
    }

    /// A page of `conv` for a member, ascending: after `after`, or the latest below `before`,
    /// or (neither) the latest page. (`around` is not served.)
    fn page(
        &self,
        user: UserId,
        conv: ConversationId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Seq, Vec<Message>), WireError> {
        let shard = lock(self.shard(&conv));
        let c = shard.get(&conv);
        if !self.is_member(&conv, c, user) {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let Some(c) = c else {
            return Ok((Seq(0), Vec::new()));
        };
        let len = c.log.len();
        let head = Seq(len as u64);
        let limit = limit.clamp(1, LIMITS.max_history_page) as usize;
        let (from, to) = match (after, before) {
            (Some(a), _) => {
                let from = (a.0 as usize).min(len);
                (from, (from + limit).min(len))
            }
            (None, b) => {
                // Seqs below `before` are log indices below `before - 1`.
                let to = b.map_or(len, |b| (b.0.saturating_sub(1) as usize).min(len));
                (to.saturating_sub(limit), to)
            }
        };
        Ok((head, c.log[from..to].to_vec()))
    }

    fn create_group(
        &self,
        creator: UserId,
        name: String,
        description: String,
        members: Vec<UserId>,
    ) -> Result<GroupInfo, WireError> {
        {
            let users = lock(&self.users);
            if let Some(u) = members.iter().find(|u| !users.names.contains_key(u)) {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("no user {u}"),
                ));
            }
        }
        let mut all = members;
        all.push(creator);
        all.sort();
        all.dedup();
        let id = GroupId(self.next_group.fetch_add(1, Ordering::Relaxed));
        let conv = ConversationId::group(id);
        let created_ms = now_ms();
        lock(self.shard(&conv)).insert(
            conv,
            Conv {
                group_members: all.clone(),
                ..Conv::default()
            },
        );
        let note = ClientMsgId::new(format!("sys-{}-{created_ms}", id.0))
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        // Written like the node does: a `created` note at seq 1, pushed to every member.
        self.append(
            creator,
            0,
            conv,
            note,
            String::new(),
            Some(MessageRef::Group {
                change: GroupChange::Created,
            }),
        )?;
        Ok(GroupInfo {
            conversation: conv,
            name,
            description,
            members: all
                .into_iter()
                .map(|user_id| GroupMember {
                    user_id,
                    role: if user_id == creator {
                        Role::Owner
                    } else {
                        Role::Member
                    },
                })
                .collect(),
            created_ms,
        })
    }
}

/// One parsed HTTP request head.
struct Head {
    method: String,
    path: String,
    query: String,
    content_length: usize,
    ws_key: Option<String>,
    bearer: Option<String>,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        content_length: 0,
        ws_key: None,
        bearer: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok()?,
            "sec-websocket-key" => head.ws_key = Some(value.to_owned()),
            "authorization" => {
                head.bearer = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::to_owned)
            }
            _ => {}
        }
    }
    Some(head)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn error_body(e: &WireError) -> (u16, String) {
    let status = match e.code {
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::Conflict => 409,
        ErrorCode::Internal => 500,
        _ => 400,
    };
    (status, serde_json::to_string(e).unwrap_or_default())
}

/// Serves one TCP connection: HTTP/1.1 requests with keep-alive until it closes or upgrades.
async fn serve_http(state: Arc<State>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let Some(head) = parse_head(&buf[..head_end]) else {
            return;
        };
        if head.content_length > MAX_BODY {
            return;
        }
        while buf.len() < head_end + head.content_length {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf[head_end..head_end + head.content_length].to_vec();
        buf.drain(..head_end + head.content_length);

        if head.method == "GET" && head.path == "/v1/ws" {
            let user = query_param(&head.query, "token").and_then(|t| state.user_of_token(&t));
            let (Some(key), Some((user, name))) = (head.ws_key.clone(), user) else {
                let (status, body) =
                    error_body(&WireError::new(ErrorCode::Unauthorized, "no valid token"));
                let _ = write_response(&mut stream, status, &body).await;
                return;
            };
            let accept = derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                 sec-websocket-accept: {accept}\r\n\r\n"
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            let config = WebSocketConfig {
                max_message_size: Some(LIMITS.max_frame_bytes as usize),
                ..WebSocketConfig::default()
            };
            let ws =
                WebSocketStream::from_partially_read(stream, buf, WsRole::Server, Some(config))
                    .await;
            ws_session(state, ws, user, name).await;
            return;
        }
        let (status, out) = route(&state, &head, &body);
        if write_response(&mut stream, status, &out).await.is_err() {
            return;
        }
    }
}

async fn write_response(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    let kind = if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await
}

fn route(state: &State, head: &Head, body: &[u8]) -> (u16, String) {
    let json = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
    match (head.method.as_str(), head.path.as_str()) {
        ("POST", "/v1/register") => {
            let Ok(req) = serde_json::from_slice::<RegisterRequest>(body) else {
                return error_body(&WireError::new(ErrorCode::InvalidArgument, "bad body"));
            };
            let name = req.username.to_ascii_lowercase();
            let mut users = lock(&state.users);
            if users.by_name.contains_key(&name) {
                return error_body(&WireError::new(ErrorCode::Conflict, "username taken"));
            }
            let id = UserId(state.next_user.fetch_add(1, Ordering::Relaxed));
            users.by_name.insert(name.clone(), id);
            users.names.insert(id, name.clone());
            (
                201,
                json(serde_json::to_string(&RegisterResponse {
                    user_id: id,
                    username: name,
                })),
            )
        }
        ("POST", "/v1/login") => {
            let Ok(req) = serde_json::from_slice::<LoginRequest>(body) else {
                return error_body(&WireError::new(ErrorCode::InvalidArgument, "bad body"));
            };
            let name = req.username.to_ascii_lowercase();
            let Some(id) = lock(&state.users).by_name.get(&name).copied() else {
                return error_body(&WireError::new(ErrorCode::Unauthorized, "no such user"));
            };
            (
                200,
                json(serde_json::to_string(&LoginResponse {
                    token: format!("{TOKEN_PREFIX}{}", id.0),
                    user_id: id,
                    username: name,
                })),
            )
        }
        ("GET", "/metrics") => (
            200,
            format!(
                "# TYPE chat_messages_appended_total counter\nchat_messages_appended_total {}\n",
                state.appended.load(Ordering::Relaxed)
            ),
        ),
        ("GET", "/readyz") => (200, "{\"ready\":true,\"relay\":true}".into()),
        ("GET", path) if path.starts_with("/v1/conversations/") && path.ends_with("/messages") => {
            let Some((user, _)) = head.bearer.as_deref().and_then(|t| state.user_of_token(t))
            else {
                return error_body(&WireError::new(ErrorCode::Unauthorized, "no valid token"));
            };
            let raw = &path["/v1/conversations/".len()..path.len() - "/messages".len()];
            let Ok(conv) = percent_decode(raw).parse::<ConversationId>() else {
                return error_body(&WireError::new(
                    ErrorCode::InvalidArgument,
                    "bad conversation",
                ));
            };
            let seq = |name: &str| {
                query_param(&head.query, name)
                    .and_then(|v| v.parse().ok())
                    .map(Seq)
            };
            let limit = query_param(&head.query, "limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50);
            match state.page(user, conv, seq("after"), seq("before"), limit) {
                Ok((head, messages)) => (
                    200,
                    json(serde_json::to_string(&chat_types::rest::HistoryResponse {
                        conversation: conv,
                        head,
                        messages,
                    })),
                ),
                Err(e) => error_body(&e),
            }
        }
        _ => error_body(&WireError::new(
            ErrorCode::NotFound,
            "the relay does not serve this",
        )),
    }
}

/// One WebSocket: a reader (this task) and a writer task that batches.
async fn ws_session(
    state: Arc<State>,
    ws: WebSocketStream<TcpStream>,
    user: UserId,
    username: String,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(WsMessage::Text(first)).await.is_err() {
                return;
            }
            for _ in 0..BATCH {
                match rx.try_recv() {
                    Ok(next) => {
                        if sink.feed(WsMessage::Text(next)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut joined = false;
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(WsMessage::Text(text)) => {
                let reply = handle_frame(&state, user, &username, conn, &tx, &mut joined, &text);
                if let Some(reply) = reply {
                    if let Ok(text) = serde_json::to_string(&reply) {
                        let _ = tx.send(text);
                    }
                }
            }
            Ok(WsMessage::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if joined {
        let mut conns = state.conns.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = conns.get_mut(&user) {
            list.retain(|(id, _)| *id != conn);
            if list.is_empty() {
                conns.remove(&user);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn frame_id(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

fn handle_frame(
    state: &State,
    user: UserId,
    username: &str,
    conn: u64,
    tx: &Outbox,
    joined: &mut bool,
    text: &str,
) -> Option<ServerFrame> {
    let err = |id: Option<String>, code: ErrorCode, m: &str| {
        Some(ServerFrame::Error {
            id,
            error: WireError::new(code, m),
        })
    };
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => f,
        Err(_) => {
            return err(
                frame_id(text),
                ErrorCode::UnknownFrame,
                "the relay does not know this frame",
            )
        }
    };
    if !*joined && !matches!(frame, ClientFrame::Hello { .. }) {
        return err(frame_id(text), ErrorCode::HandshakeRequired, "hello first");
    }
    match frame {
        ClientFrame::Hello { id, version, .. } => {
            if version != PROTOCOL_VERSION {
                return err(id, ErrorCode::UnsupportedVersion, "version 1 only");
            }
            if !*joined {
                *joined = true;
                state
                    .conns
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(user)
                    .or_default()
                    .push((conn, tx.clone()));
            }
            Some(ServerFrame::Welcome {
                id,
                version: PROTOCOL_VERSION,
                user_id: user,
                username: username.to_owned(),
                node_id: NodeId(0),
                limits: LIMITS,
                heartbeat_ms: 30_000,
                event_head: EventSeq(0),
                acked_event_seq: EventSeq(0),
            })
        }
        ClientFrame::Ping { id } => Some(ServerFrame::Pong { id }),
        // Read marks are kept nowhere (no receipts either): `mixed` readers mark read.
        ClientFrame::MarkRead { id, .. } => Some(ServerFrame::Ok { id }),
        ClientFrame::OpenDirect {
            id,
            username: by_name,
            user_id,
        } => {
            let users = lock(&state.users);
            let other = match (user_id, by_name) {
                (Some(u), _) if users.names.contains_key(&u) => Some(u),
                (None, Some(n)) => users.by_name.get(&n.to_ascii_lowercase()).copied(),
                _ => None,
            };
            let Some(other) = other else {
                return err(Some(id), ErrorCode::NotFound, "no such user");
            };
            let conversation = ConversationId::direct(user, other);
            let mut members = vec![UserSummary {
                user_id: user,
                username: username.to_owned(),
            }];
            if other != user {
                members.push(UserSummary {
                    user_id: other,
                    username: users.names.get(&other).cloned().unwrap_or_default(),
                });
            }
            drop(users);
            let head = lock(state.shard(&conversation))
                .get(&conversation)
                .map_or(Seq(0), |c| Seq(c.log.len() as u64));
            Some(ServerFrame::Conversation {
                id,
                info: ConversationInfo {
                    conversation,
                    members,
                    head,
                },
            })
        }
        ClientFrame::Send {
            id,
            conversation,
            client_msg_id,
            body,
            refers,
            ..
        } => {
            if body.len() > LIMITS.max_body_bytes as usize {
                return err(Some(id), ErrorCode::TooLarge, "body too large");
            }
            if matches!(refers, Some(MessageRef::Group { .. })) {
                return err(Some(id), ErrorCode::InvalidArgument, "server notes only");
            }
            match state.append(
                user,
                conn,
                conversation,
                client_msg_id.clone(),
                body,
                refers,
            ) {
                Ok((seq, ts_ms, duplicate)) => Some(ServerFrame::Ack {
                    id,
                    conversation,
                    client_msg_id,
                    seq,
                    ts_ms,
                    duplicate,
                }),
                Err(e) => Some(ServerFrame::Error {
                    id: Some(id),
                    error: e,
                }),
            }
        }
        ClientFrame::History {
            id,
            conversation,
            after,
            before,
            limit,
            ..
        } => match state.page(user, conversation, after, before, limit.unwrap_or(50)) {
            Ok((head, messages)) => Some(ServerFrame::History {
                id,
                conversation,
                head,
                messages,
            }),
            Err(e) => Some(ServerFrame::Error {
                id: Some(id),
                error: e,
            }),
        },
        ClientFrame::CreateGroup {
            id,
            name,
            description,
            members,
        } => match state.create_group(user, name, description, members) {
            Ok(group) => Some(ServerFrame::Group { id, group }),
            Err(e) => Some(ServerFrame::Error {
                id: Some(id),
                error: e,
            }),
        },
        ClientFrame::Broadcast {
            id,
            client_msg_id,
            body,
            users,
            groups,
        } => {
            let targets = users
                .into_iter()
                .map(|u| ConversationId::direct(user, u))
                .chain(groups);
            let results = targets
                .map(|conversation| {
                    match state.append(
                        user,
                        conn,
                        conversation,
                        client_msg_id.clone(),
                        body.clone(),
                        None,
                    ) {
                        Ok((seq, _, _)) => BroadcastOutcome {
                            conversation,
                            seq: Some(seq),
                            error: None,
                        },
                        Err(e) => BroadcastOutcome {
                            conversation,
                            seq: None,
                            error: Some(e),
                        },
                    }
                })
                .collect();
            Some(ServerFrame::BroadcastResult { id, results })
        }
        _ => err(
            frame_id(text),
            ErrorCode::UnknownFrame,
            "the relay does not serve this frame",
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pages_go_after_below_or_to_the_latest() {
        let state = State::default();
        let (a, b) = (UserId(1), UserId(2));
        for u in [a, b] {
            let mut users = lock(&state.users);
            users.names.insert(u, format!("u{}", u.0));
        }
        let conv = ConversationId::direct(a, b);
        for k in 0..10 {
            let cmid = ClientMsgId::new(format!("m{k}")).unwrap();
            state.append(a, 1, conv, cmid, "x".into(), None).unwrap();
        }
        let seqs = |after, before, limit| {
            let (head, m) = state.page(b, conv, after, before, limit).unwrap();
            assert_eq!(head, Seq(10));
            m.iter().map(|m| m.seq.0).collect::<Vec<_>>()
        };
        assert_eq!(seqs(Some(Seq(8)), None, 5), [9, 10]);
        assert_eq!(seqs(None, Some(Seq(4)), 5), [1, 2, 3]);
        assert_eq!(seqs(None, Some(Seq(9)), 2), [7, 8]);
        assert_eq!(seqs(None, None, 3), [8, 9, 10]);
        // A retry gets the original seq; a stranger gets nothing.
        let again = state
            .append(
                a,
                1,
                conv,
                ClientMsgId::new("m3").unwrap(),
                "x".into(),
                None,
            )
            .unwrap();
        assert_eq!((again.0, again.2), (Seq(4), true));
        assert!(state.page(UserId(3), conv, None, None, 5).is_err());
    }

    #[test]
    fn heads_and_queries_parse() {
        let h = parse_head(
            b"GET /v1/conversations/dm%3A1%3A2/messages?after=5&limit=10 HTTP/1.1\r\n\
              Authorization: Bearer relay-7\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/v1/conversations/dm%3A1%3A2/messages");
        assert_eq!(query_param(&h.query, "after").as_deref(), Some("5"));
        assert_eq!(h.bearer.as_deref(), Some("relay-7"));
        assert_eq!(percent_decode("dm%3A1%3A2"), "dm:1:2");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
