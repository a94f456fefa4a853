//! The WebSocket endpoint: protocol v1 (see `docs/protocol.md`).
//!
//! The token is checked before the upgrade (401 with a JSON error otherwise). The socket's
//! read half stays on the actix worker that accepted it and hands the client's frames
//! straight to the connection's request worker; everything else runs on the node's main
//! runtime: per connection, a writer that owns the socket (it writes replies and pushes as
//! they come) and the request worker, which handles requests one at a time, so that one
//! client's sends are stored in the order it sent them, while a slow request never holds up
//! the pushes. Sends to one conversation that queued up behind each other go to its owner as
//! one request and are stored in one write, still in order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{
    CloseCode, CloseReason, Message as WsMessage, MessageStream, ProtocolError, Session,
};
use chat_actors::{ConnRef, Outbound};
use chat_types::rest::ProfileUpdate;
use chat_types::{
    close, validate_body, ClientFrame, ClientMsgId, ConversationId, ConversationInfo, ErrorCode,
    MediaId, Message, MessageRef, PresenceStatus, ServerFrame, UserId, UserSummary, WireError,
    PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::social::{self, ContactAction};
use super::{authenticate, error_response, AppState};
use crate::auth::Principal;
use crate::metrics::Metrics;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_PAGE: u32 = 50;
/// How often an idle connection checks that its session was not revoked (logout, or
/// `revoke_session` from another device). Every request checks too.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);

pub async fn upgrade(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return Ok(error_response(&state, e)),
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(state.config.limits.max_frame_bytes as usize);
    let (req_tx, req_rx) = mpsc::channel::<Request>(REQUEST_QUEUE);
    let live = Arc::new(Liveness::default());
    actix_web::rt::spawn(read_loop(
        stream,
        req_tx,
        session.clone(),
        live.clone(),
        state.metrics.clone(),
    ));
    let state = state.into_inner();
    state
        .runtime
        .clone()
        .spawn(run_connection(state, principal, session, req_rx, live));
    Ok(response)
}

/// What the socket's reader and writer share about the client.
#[derive(Default)]
struct Liveness {
    /// Whether `hello` was answered (the writer's idle timeout depends on it).
    greeted: AtomicBool,
    /// When the last frame arrived, in milliseconds after [`EPOCH`] plus one; 0 for none.
    last_frame: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Liveness {
    fn frame_arrived(&self) {
        let ms = EPOCH.elapsed().as_millis() as u64;
        self.last_frame.store(ms + 1, Ordering::Relaxed);
    }

    fn last_frame(&self) -> Option<tokio::time::Instant> {
        match self.last_frame.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((*EPOCH + Duration::from_millis(ms - 1)).into()),
        }
    }
}

/// Reads frames off the socket and queues them for the request worker, in order; runs on
/// the actix worker. While the worker's queue is full it stops reading, and TCP pushes
/// back on the client. Pings are answered here; a close, a frame too large or a protocol
/// error is queued as the last request.
async fn read_loop(
    mut stream: MessageStream,
    requests: mpsc::Sender<Request>,
    mut session: Session,
    live: Arc<Liveness>,
    metrics: Arc<Metrics>,
) {
    while let Some(item) = stream.next().await {
        live.frame_arrived();
        let request = match item {
            Ok(WsMessage::Text(t)) => {
                Metrics::inc(&metrics.ws_frames_in_total);
                Request::Text(t.to_string())
            }
            Ok(WsMessage::Binary(_)) => Request::Binary,
            Ok(WsMessage::Ping(p)) => {
                let _ = session.pong(&p).await;
                continue;
            }
            Ok(WsMessage::Pong(_)) | Ok(WsMessage::Nop) => continue,
            Ok(WsMessage::Close(_)) => Request::End(close::NORMAL, String::new()),
            Ok(WsMessage::Continuation(_)) => {
                Request::End(1002, "fragmented messages are not supported".into())
            }
            Err(ProtocolError::Overflow) => {
                Request::End(close::TOO_BIG, "frame exceeds max_frame_bytes".into())
            }
            Err(e) => Request::End(1002, e.to_string()),
        };
        let last = matches!(request, Request::End(..));
        if requests.send(request).await.is_err() || last {
            return;
        }
    }
    let _ = requests
        .send(Request::End(close::NORMAL, String::new()))
        .await;
}

struct Conn {
    state: Arc<AppState>,
    principal: Principal,
    /// Set once `hello` has attached the connection to the user's session.
    conn: Option<ConnRef>,
    /// The socket's outbound queue: replies go here, and so do the connection actor's
    /// pushes (handed to the router at `hello`).
    out: mpsc::Sender<Outbound>,
    live: Arc<Liveness>,
    bad_frames: u32,
    /// The requests the reader hands over, in the order the client sent them.
    requests: mpsc::Receiver<Request>,
    /// A request taken off the queue while gathering sends, handled next.
    held: Option<Request>,
}

enum Next {
    Continue,
    Close(u16, String),
}

/// Requests waiting for the connection's request worker; reading stops (and TCP pushes back
/// on the client) when it is this far behind.
const REQUEST_QUEUE: usize = 256;
/// Frames the writer takes off the connection's queue at once, at most.
const WRITE_RUN: usize = 64;
/// Sends to one conversation that queued up behind each other and go to its owner together
/// (one request, one log write), at most.
const SEND_BATCH: usize = 64;

/// One connection, as two tasks besides the reader: the writer owns the socket (it writes
/// whatever the outbound queue holds, and closes the socket when the client has gone quiet
/// or its session was revoked), and the worker handles the reader's requests one at a
/// time, in order, and queues its replies. A request that takes a while (a send waits for
/// its replicas) never stops pushes from reaching the socket, so only a client that does not
/// read fills the queue.
async fn run_connection(
    state: Arc<AppState>,
    principal: Principal,
    mut session: Session,
    requests: mpsc::Receiver<Request>,
    live: Arc<Liveness>,
) {
    // The connection joins its user's session when `hello` arrives (it may carry a resume
    // cursor); until then nothing is pushed to it.
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(state.config.limits.outbound_queue);
    Metrics::inc(&state.metrics.ws_connections_total);
    let idle = Duration::from_millis(state.config.limits.heartbeat_ms * 2).max(HANDSHAKE_TIMEOUT);
    let worker = Conn {
        state: state.clone(),
        principal: principal.clone(),
        conn: None,
        out: out_tx,
        live: live.clone(),
        bad_frames: 0,
        requests,
        held: None,
    };
    let mut worker = tokio::spawn(worker.run());
    let mut worker_done = false;
    let mut deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut revocation = tokio::time::interval(REVOCATION_CHECK);
    revocation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(Outbound::Frame(frame)) => {
                    // What queued up behind it goes out in the same turn.
                    let mut run = vec![*frame];
                    let mut then = None;
                    while run.len() < WRITE_RUN {
                        match out_rx.try_recv() {
                            Ok(Outbound::Frame(f)) => run.push(*f),
                            Ok(close @ Outbound::Close { .. }) => {
                                then = Some(close);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    // Boxed, as the other awaits below: the connection's task keeps its
                    // largest await inline for its whole life, busy or idle.
                    if Box::pin(send_run(&mut session, run)).await.is_err() {
                        break Next::Close(close::NORMAL, String::new());
                    }
                    if let Some(Outbound::Close { code, reason }) = then {
                        break Next::Close(code, reason);
                    }
                }
                Some(Outbound::Close { code, reason }) => break Next::Close(code, reason),
                None => break Next::Close(close::GOING_AWAY, "node is shutting down".into()),
            },
            // The worker stops only after queueing a close; the writer gets to it next.
            _ = &mut worker, if !worker_done => worker_done = true,
            _ = revocation.tick() => {
                if is_revoked(&state, &principal) {
                    break Next::Close(close::UNAUTHORIZED, "session revoked".into());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                // A frame since the deadline was set moves it on.
                if let Some(last) = live.last_frame() {
                    if last + idle > tokio::time::Instant::now() {
                        deadline = last + idle;
                        continue;
                    }
                }
                let g = live.greeted.load(Ordering::Acquire);
                let why = if g { "no frame within two heartbeats" } else { "no hello in time" };
                break Next::Close(if g { close::GOING_AWAY } else { close::HANDSHAKE }, why.into());
            }
        }
    };
    if let Next::Close(code, why) = outcome {
        let _ = Box::pin(session.close(Some(reason(code, &why)))).await;
    }
    // The worker detaches the connection from its user's session once the queue is closed.
    drop(out_rx);
    if !worker_done {
        let _ = worker.await;
    }
}

/// A client frame for the request worker.
enum Request {
    Text(String),
    /// A frame already decoded (while gathering the sends queued behind a send).
    Frame(Box<ClientFrame>),
    /// Refused: the protocol is JSON text.
    Binary,
    /// The client closed, or broke the protocol: close with this code and reason.
    End(u16, String),
}

/// What a send got: the stored message and whether it was a retry, or why not; `None` while
/// its draft is at the conversation's owner.
type SendAnswer = Option<Result<(Message, bool), WireError>>;

/// A `send` frame's parts, waiting to go out with the sends queued behind it.
struct QueuedSend {
    id: String,
    client_msg_id: ClientMsgId,
    body: String,
    refers: Option<MessageRef>,
    attachments: Vec<MediaId>,
}

fn is_revoked(state: &AppState, principal: &Principal) -> bool {
    let hash = &principal.token_hash;
    !state.meta.read(|s| s.session(hash).is_some())
}

/// Body rules per kind of send: a deletion carries no body, a reaction a short one, anything
/// else a body within the limit.
fn check_send_body(
    body: &str,
    refers: Option<MessageRef>,
    attachments: usize,
    limits: &chat_types::Limits,
) -> Result<(), WireError> {
    let invalid = |m: &str| Err(WireError::new(ErrorCode::InvalidArgument, m));
    if attachments > chat_types::MAX_ATTACHMENTS {
        return invalid("a message carries at most 10 attachments");
    }
    if attachments > 0 {
        if !matches!(refers, None | Some(MessageRef::Reply { .. })) {
            return invalid("only new messages and replies carry attachments");
        }
        if body.is_empty() {
            return Ok(());
        }
    }
    match refers {
        Some(MessageRef::Group { .. }) => invalid("group changes are written by the server"),
        Some(MessageRef::Delete { .. }) if !body.is_empty() => {
            invalid("a deletion has an empty body")
        }
        Some(MessageRef::Delete { .. }) => Ok(()),
        Some(MessageRef::Reaction { .. })
            if body.is_empty() || body.len() > chat_types::MAX_REACTION_BYTES =>
        {
            invalid("a reaction is 1 to 32 bytes")
        }
        _ => validate_body(body, limits).map_err(|e| {
            let code = if body.is_empty() {
                ErrorCode::InvalidArgument
            } else {
                ErrorCode::TooLarge
            };
            WireError::new(code, e.to_string())
        }),
    }
}

fn reason(code: u16, why: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: if why.is_empty() {
            None
        } else {
            Some(why.to_owned())
        },
    }
}

/// Writes a run of frames in order. A cursor note that a later one in the same run moves past
/// is left out: the client keeps the furthest cursor it was told, and it is told that one
/// in the same write (a sender's own messages otherwise cost a cursor frame each).
async fn send_run(session: &mut Session, run: Vec<ServerFrame>) -> Result<(), actix_ws::Closed> {
    let last_cursor = run
        .iter()
        .rposition(|f| matches!(f, ServerFrame::EventCursor { .. }));
    for (i, frame) in run.iter().enumerate() {
        if matches!(frame, ServerFrame::EventCursor { .. }) && Some(i) != last_cursor {
            continue;
        }
        send_frame(session, frame).await?;
    }
    Ok(())
}

async fn send_frame(session: &mut Session, frame: &ServerFrame) -> Result<(), actix_ws::Closed> {
    match serde_json::to_string(frame) {
        Ok(text) => session.text(text).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a server frame");
            Ok(())
        }
    }
}

impl Conn {
    /// Handles requests in order until the writer closes the queue or a request closes the
    /// connection; then detaches the connection from its user's session.
    async fn run(mut self) {
        loop {
            let request = match self.held.take() {
                Some(r) => r,
                None => tokio::select! {
                    r = self.requests.recv() => match r {
                        Some(r) => r,
                        None => break,
                    },
                    // The writer has closed the socket.
                    _ = self.out.closed() => break,
                },
            };
            if self.out.is_closed() {
                // The socket is gone: what it still had queued is not answered, as if unsent.
                break;
            }
            // Boxed: the worker's task would otherwise hold the largest request's state
            // inline while idle (~6 KiB per connection).
            let next = match request {
                Request::Text(text) => Box::pin(self.handle_text(&text)).await,
                Request::Frame(frame) => match self.revoked() {
                    Some(close) => close,
                    None => Box::pin(self.handle_frame(*frame)).await,
                },
                Request::Binary => {
                    self.bad_frame(
                        None,
                        WireError::new(
                            ErrorCode::MalformedFrame,
                            "binary frames are not supported; send JSON text",
                        ),
                    )
                    .await
                }
                Request::End(code, reason) => Next::Close(code, reason),
            };
            if let Next::Close(code, reason) = next {
                let _ = self.out.send(Outbound::Close { code, reason }).await;
                break;
            }
        }
        if let Some(conn) = self.conn {
            Box::pin(self.state.router.disconnect(self.principal.user_id, conn)).await;
        }
    }

    async fn reply(&mut self, frame: ServerFrame) -> Next {
        match self.out.send(Outbound::Frame(Box::new(frame))).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close(close::NORMAL, String::new()),
        }
    }

    async fn error(&mut self, id: Option<String>, error: WireError) -> Next {
        Metrics::inc(&self.state.metrics.client_errors_total);
        self.reply(ServerFrame::Error { id, error }).await
    }

    /// An error frame for a frame the server could not use; too many in a row close the
    /// connection.
    async fn bad_frame(&mut self, id: Option<String>, error: WireError) -> Next {
        self.bad_frames += 1;
        if let Next::Close(c, r) = self.error(id, error).await {
            return Next::Close(c, r);
        }
        if self.bad_frames >= self.state.config.limits.max_bad_frames {
            return Next::Close(close::PROTOCOL_ABUSE, "too many malformed frames".into());
        }
        Next::Continue
    }

    /// The close for a connection whose session was revoked since it was authenticated.
    fn revoked(&self) -> Option<Next> {
        is_revoked(&self.state, &self.principal)
            .then(|| Next::Close(close::UNAUTHORIZED, "session revoked".into()))
    }

    async fn handle_text(&mut self, text: &str) -> Next {
        if let Some(close) = self.revoked() {
            return close;
        }
        match ClientFrame::decode(text) {
            Ok(frame) => self.handle_frame(frame).await,
            Err((id, e)) => self.bad_frame(id, e).await,
        }
    }

    async fn handle_frame(&mut self, frame: ClientFrame) -> Next {
        if let ClientFrame::Hello {
            id,
            version,
            resume_from,
        } = frame
        {
            if self.live.greeted.load(Ordering::Acquire) {
                return self
                    .bad_frame(
                        id,
                        WireError::new(ErrorCode::InvalidArgument, "hello was already sent"),
                    )
                    .await;
            }
            if version != PROTOCOL_VERSION {
                let e = WireError::new(
                    ErrorCode::UnsupportedVersion,
                    format!("this server speaks protocol version {PROTOCOL_VERSION}"),
                );
                let _ = self.error(id, e).await;
                return Next::Close(close::HANDSHAKE, "unsupported protocol version".into());
            }
            // Events missed since `resume_from` are queued for this connection before the
            // welcome is written, and sent right after it.
            let user = self.principal.user_id;
            let attached = self
                .state
                .router
                .connect(user, self.out.clone(), resume_from)
                .await;
            let (conn, event_head, acked_event_seq) = match attached {
                Ok(a) => a,
                Err(e) => {
                    let _ = self.error(id, e.to_wire()).await;
                    return Next::Close(close::GOING_AWAY, "cluster unavailable; retry".into());
                }
            };
            self.conn = Some(conn);
            self.live.greeted.store(true, Ordering::Release);
            let welcome = ServerFrame::Welcome {
                id,
                version: PROTOCOL_VERSION,
                user_id: self.principal.user_id,
                username: self.principal.username.clone(),
                node_id: self.state.meta.node_id(),
                limits: self.state.config.wire_limits(),
                heartbeat_ms: self.state.config.limits.heartbeat_ms,
                event_head,
                acked_event_seq,
            };
            let next = self.reply(welcome).await;
            // What the session replayed after `resume_from` (held by the connection until
            // now) follows the welcome.
            self.state
                .router
                .start(conn, resume_from.unwrap_or(event_head));
            return next;
        }
        if !self.live.greeted.load(Ordering::Acquire) {
            let id = frame.id().map(str::to_owned);
            return self
                .bad_frame(
                    id,
                    WireError::new(ErrorCode::HandshakeRequired, "send hello first"),
                )
                .await;
        }
        self.bad_frames = 0;
        match frame {
            ClientFrame::Hello { .. } => Next::Continue,
            ClientFrame::Ping { id } => self.reply(ServerFrame::Pong { id }).await,
            ClientFrame::OpenDirect {
                id,
                username,
                user_id,
            } => match self.open_direct(username, user_id).await {
                Ok(info) => self.reply(ServerFrame::Conversation { id, info }).await,
                Err(e) => self.error(Some(id), e).await,
            },
            ClientFrame::Send {
                id,
                conversation,
                client_msg_id,
                body,
                refers,
                attachments,
            } => {
                let mut sends = vec![QueuedSend {
                    id,
                    client_msg_id,
                    body,
                    refers,
                    attachments,
                }];
                self.gather_sends(conversation, &mut sends);
                self.send(conversation, sends).await
            }
            ClientFrame::History {
                id,
                conversation,
                after,
                before,
                around,
                limit,
            } => {
                let limit = limit
                    .unwrap_or(DEFAULT_PAGE)
                    .min(self.state.config.limits.max_history_page);
                let (after, before) =
                    match chat_types::wire::history_window(after, before, around, limit) {
                        Ok(w) => w,
                        Err(e) => return self.error(Some(id), e).await,
                    };
                let user = self.principal.user_id;
                match self
                    .state
                    .router
                    .history(user, conversation, after, before, limit)
                    .await
                {
                    Ok((head, messages)) => {
                        self.reply(ServerFrame::History {
                            id,
                            conversation,
                            head,
                            messages,
                        })
                        .await
                    }
                    Err(e) => self.error(Some(id), e.to_wire()).await,
                }
            }
            ClientFrame::MarkRead { .. }
            | ClientFrame::AckEvents { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::SetPresence { .. }
            | ClientFrame::ListConversations { .. } => self.handle_state(frame).await,
            ClientFrame::Broadcast {
                id,
                client_msg_id,
                body,
                users,
                groups,
            } => {
                let state = self.state.clone();
                let req = super::broadcast::BroadcastRequest {
                    client_msg_id,
                    body,
                    users,
                    groups,
                };
                match super::broadcast::handle(&state, &self.principal, self.conn, req).await {
                    Ok(ServerFrame::BroadcastResult { results, .. }) => {
                        self.reply(ServerFrame::BroadcastResult { id, results })
                            .await
                    }
                    Ok(other) => self.reply(other).await,
                    Err(e) => self.error(Some(id), e).await,
                }
            }
            ClientFrame::CreateGroup { .. }
            | ClientFrame::GetGroup { .. }
            | ClientFrame::ListGroups { .. }
            | ClientFrame::UpdateGroup { .. }
            | ClientFrame::AddMembers { .. }
            | ClientFrame::RemoveMember { .. }
            | ClientFrame::LeaveGroup { .. }
            | ClientFrame::SetRole { .. }
            | ClientFrame::TransferGroup { .. }
            | ClientFrame::DeleteGroup { .. } => {
                let state = self.state.clone();
                match super::groups::handle(&state, &self.principal, frame).await {
                    Ok(f) => self.reply(f).await,
                    Err((id, e)) => self.error(Some(id), e).await,
                }
            }
            social_frame => self.handle_social(social_frame).await,
        }
    }

    /// Takes the sends to `conversation` queued right behind the one in hand (up to
    /// [`SEND_BATCH`]), so that they reach the owner together; the first other request stays
    /// next in line.
    fn gather_sends(&mut self, conversation: ConversationId, sends: &mut Vec<QueuedSend>) {
        while sends.len() < SEND_BATCH {
            let Ok(next) = self.requests.try_recv() else {
                return;
            };
            let Request::Text(text) = next else {
                self.held = Some(next);
                return;
            };
            match ClientFrame::decode(&text) {
                Ok(ClientFrame::Send {
                    id,
                    conversation: c,
                    client_msg_id,
                    body,
                    refers,
                    attachments,
                }) if c == conversation => sends.push(QueuedSend {
                    id,
                    client_msg_id,
                    body,
                    refers,
                    attachments,
                }),
                Ok(frame) => {
                    self.held = Some(Request::Frame(Box::new(frame)));
                    return;
                }
                // Decoded again when its turn comes, and answered with the error then.
                Err(_) => {
                    self.held = Some(Request::Text(text));
                    return;
                }
            }
        }
    }

    /// Checks each send, stores those that pass at the conversation's owner in one request
    /// (in the order sent) and answers each, in order: an ack or an error.
    async fn send(&mut self, conversation: ConversationId, sends: Vec<QueuedSend>) -> Next {
        let user = self.principal.user_id;
        let limits = self.state.config.wire_limits();
        let direct = social::check_direct(&self.state, user, &conversation);
        // Per send, its id and its answer.
        let mut answers: Vec<(String, SendAnswer)> = Vec::with_capacity(sends.len());
        let mut drafts = Vec::with_capacity(sends.len());
        for s in sends {
            let checked = check_send_body(&s.body, s.refers, s.attachments.len(), &limits)
                .and_then(|()| self.state.limits.send(user))
                .and_then(|()| direct.clone());
            let attachments = match checked {
                Err(e) => Err(e),
                Ok(()) if s.attachments.is_empty() => Ok(Vec::new()),
                Ok(()) => {
                    super::media::resolve_attachments(
                        &self.state,
                        user,
                        conversation,
                        &s.attachments,
                    )
                    .await
                }
            };
            match attachments {
                Ok(attachments) => {
                    answers.push((s.id, None));
                    drafts.push(chat_actors::Draft {
                        client_msg_id: s.client_msg_id,
                        body: s.body,
                        refers: s.refers,
                        attachments,
                    });
                }
                Err(e) => answers.push((s.id, Some(Err(e)))),
            }
        }
        let mut outcomes = if drafts.is_empty() {
            Ok(Vec::new().into_iter())
        } else {
            Metrics::inc(&self.state.metrics.send_batches_total);
            let router = self.state.router.clone();
            router
                .append_many(user, conversation, drafts, self.conn)
                .await
                .map(Vec::into_iter)
        };
        for (_, answer) in answers.iter_mut().filter(|(_, a)| a.is_none()) {
            let outcome = match &mut outcomes {
                Ok(each) => each.next().unwrap_or_else(|| {
                    Err(chat_actors::ActorError::BadPayload("no outcome".into()))
                }),
                Err(e) => Err(e.clone()),
            };
            *answer = Some(outcome.map_err(|e| e.to_wire()));
        }
        for (id, answer) in answers {
            let next = match answer {
                Some(Ok((message, duplicate))) => {
                    let m = &self.state.metrics;
                    Metrics::inc(if duplicate {
                        &m.messages_deduplicated_total
                    } else {
                        &m.messages_appended_total
                    });
                    self.reply(ServerFrame::Ack {
                        id,
                        conversation,
                        client_msg_id: message.client_msg_id,
                        seq: message.seq,
                        ts_ms: message.ts_ms,
                        duplicate,
                    })
                    .await
                }
                Some(Err(e)) => self.error(Some(id), e).await,
                None => Next::Continue,
            };
            if let Next::Close(code, reason) = next {
                return Next::Close(code, reason);
            }
        }
        Next::Continue
    }

    /// Read marks, typing, presence and the conversation list.
    async fn handle_state(&mut self, frame: ClientFrame) -> Next {
        let router = self.state.router.clone();
        let user = self.principal.user_id;
        let result = match frame {
            ClientFrame::MarkRead {
                id,
                conversation,
                seq,
            } => {
                let done = if seq.0 == 0 {
                    Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        "seq must be at least 1",
                    ))
                } else {
                    router
                        .mark_read(user, conversation, seq, self.conn)
                        .await
                        .map_err(|e| e.to_wire())
                };
                done.map(|()| ServerFrame::Ok { id: id.clone() })
                    .map_err(|e| (id, e))
            }
            ClientFrame::AckEvents { id, event_seq } => router
                .ack_events(user, event_seq)
                .await
                .map(|()| ServerFrame::Ok { id: id.clone() })
                .map_err(|e| (id, e.to_wire())),
            ClientFrame::Typing { id, conversation } => {
                // Someone who blocked the user, or does not take their messages, does not see
                // them typing either.
                let done = match social::check_direct(&self.state, user, &conversation) {
                    Ok(()) => router
                        .typing(user, conversation)
                        .await
                        .map_err(|e| e.to_wire()),
                    Err(e) if e.code == ErrorCode::Forbidden && conversation.is_member(user) => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                done.map(|()| ServerFrame::Ok { id: id.clone() })
                    .map_err(|e| (id, e))
            }
            ClientFrame::SetPresence { id, status } => {
                let done = if status == PresenceStatus::Offline {
                    Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        "a connected user is online or away",
                    ))
                } else {
                    router
                        .set_presence(user, status)
                        .await
                        .map_err(|e| e.to_wire())
                };
                done.map(|()| ServerFrame::Ok { id: id.clone() })
                    .map_err(|e| (id, e))
            }
            ClientFrame::ListConversations { id, limit } => {
                let limit = limit.unwrap_or(50).clamp(1, 500);
                router
                    .conversations(user, limit)
                    .await
                    .map(|conversations| ServerFrame::Conversations {
                        id: id.clone(),
                        conversations,
                    })
                    .map_err(|e| (id, e.to_wire()))
            }
            _ => return Next::Continue,
        };
        match result {
            Ok(frame) => self.reply(frame).await,
            Err((id, e)) => self.error(Some(id), e).await,
        }
    }

    /// Profiles, settings, sessions, contacts and blocks (see `social.rs`).
    async fn handle_social(&mut self, frame: ClientFrame) -> Next {
        let state = self.state.clone();
        let me = &self.principal;
        let relation = |id: String, r: Result<chat_types::rest::RelationResponse, WireError>| {
            r.map(|r| ServerFrame::Relation {
                id: id.clone(),
                user_id: r.user_id,
                relation: r.relation,
            })
            .map_err(|e| (id, e))
        };
        let result: Result<ServerFrame, (String, WireError)> = match frame {
            ClientFrame::GetProfile {
                id,
                user_id,
                username,
            } => {
                let target = if user_id.is_none() && username.is_none() {
                    Ok(me.user_id)
                } else {
                    social::resolve_user(&state, user_id, username).await
                };
                let profile = match target {
                    Ok(user) => social::profile(&state, user).await,
                    Err(e) => Err(e),
                };
                profile
                    .map(|profile| ServerFrame::Profile {
                        id: id.clone(),
                        profile,
                    })
                    .map_err(|e| (id, e))
            }
            ClientFrame::UpdateProfile {
                id,
                display_name,
                status_text,
                avatar,
            } => {
                let update = ProfileUpdate {
                    display_name,
                    status_text,
                    avatar,
                };
                social::update_profile(&state, me, update)
                    .await
                    .map(|profile| ServerFrame::Profile {
                        id: id.clone(),
                        profile,
                    })
                    .map_err(|e| (id, e))
            }
            ClientFrame::GetSettings { id } => Ok(ServerFrame::Settings {
                id,
                settings: social::settings(&state, me),
            }),
            ClientFrame::UpdateSettings {
                id,
                dm_policy,
                push_preview,
            } => social::update_settings(&state, me, dm_policy, push_preview)
                .await
                .map(|settings| ServerFrame::Settings {
                    id: id.clone(),
                    settings,
                })
                .map_err(|e| (id, e)),
            ClientFrame::ListSessions { id } => Ok(ServerFrame::Sessions {
                id,
                sessions: social::sessions(&state, me),
            }),
            ClientFrame::RevokeSession { id, session_id } => {
                social::revoke_session(&state, me, &session_id)
                    .await
                    .map(|()| ServerFrame::SessionRevoked {
                        id: id.clone(),
                        session_id,
                    })
                    .map_err(|e| (id, e))
            }
            ClientFrame::ListContacts { id } => {
                let lists = social::contacts_with_presence(&state, me).await;
                Ok(ServerFrame::Contacts {
                    id,
                    contacts: lists.contacts,
                    incoming: lists.incoming,
                    outgoing: lists.outgoing,
                })
            }
            ClientFrame::ListBlocks { id } => Ok(ServerFrame::Blocks {
                id,
                blocked: social::blocks(&state, me).blocked,
            }),
            ClientFrame::RequestContact {
                id,
                user_id,
                username,
            } => {
                let r = match social::resolve_user(&state, user_id, username).await {
                    Ok(other) => {
                        social::change_relation(&state, me, ContactAction::Request, other).await
                    }
                    Err(e) => Err(e),
                };
                relation(id, r)
            }
            ClientFrame::AcceptContact { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Accept, user_id).await,
            ),
            ClientFrame::DeclineContact { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Decline, user_id).await,
            ),
            ClientFrame::CancelContact { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Cancel, user_id).await,
            ),
            ClientFrame::RemoveContact { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Remove, user_id).await,
            ),
            ClientFrame::BlockUser { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Block, user_id).await,
            ),
            ClientFrame::UnblockUser { id, user_id } => relation(
                id,
                social::change_relation(&state, me, ContactAction::Unblock, user_id).await,
            ),
            ClientFrame::Hello { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::OpenDirect { .. }
            | ClientFrame::Send { .. }
            | ClientFrame::History { .. }
            | ClientFrame::MarkRead { .. }
            | ClientFrame::AckEvents { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::SetPresence { .. }
            | ClientFrame::ListConversations { .. }
            | ClientFrame::CreateGroup { .. }
            | ClientFrame::GetGroup { .. }
            | ClientFrame::ListGroups { .. }
            | ClientFrame::UpdateGroup { .. }
            | ClientFrame::AddMembers { .. }
            | ClientFrame::RemoveMember { .. }
            | ClientFrame::LeaveGroup { .. }
            | ClientFrame::SetRole { .. }
            | ClientFrame::TransferGroup { .. }
            | ClientFrame::DeleteGroup { .. }
            | ClientFrame::Broadcast { .. } => {
                // Served by `handle_text`; nothing reaches here.
                return Next::Continue;
            }
        };
        match result {
            Ok(frame) => self.reply(frame).await,
            Err((id, e)) => self.error(Some(id), e).await,
        }
    }

    async fn open_direct(
        &self,
        username: Option<String>,
        user_id: Option<UserId>,
    ) -> Result<ConversationInfo, WireError> {
        let auth = &self.state.auth;
        let other = match (username, user_id) {
            (Some(name), None) => {
                let name = name.to_ascii_lowercase();
                auth.wait_for(|s| {
                    s.user_by_name(&name)
                        .map(|a| (a.user_id, a.username.clone()))
                })
                .await
            }
            (None, Some(id)) => {
                auth.wait_for(|s| s.user(id).map(|a| (a.user_id, a.username.clone())))
                    .await
            }
            _ => {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    "give exactly one of username and user_id",
                ))
            }
        };
        let (other_id, other_name) =
            other.ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such user"))?;
        let me = self.principal.user_id;
        let conversation = ConversationId::direct(me, other_id);
        social::check_direct(&self.state, me, &conversation)?;
        let (head, _) = self
            .state
            .router
            .history(me, conversation, None, None, 0)
            .await
            .map_err(|e| e.to_wire())?;
        let mut members = vec![UserSummary {
            user_id: me,
            username: self.principal.username.clone(),
        }];
        if other_id != me {
            members.push(UserSummary {
                user_id: other_id,
                username: other_name,
            });
        }
        Ok(ConversationInfo {
            conversation,
            members,
            head,
        })
    }
}
