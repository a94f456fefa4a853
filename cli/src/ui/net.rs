//! The network side of the interactive client: one task that keeps a WebSocket connected,
//! resumes the event stream after each reconnect, runs the UI's requests, and sends the
//! outbox in order, each message with its own client message id until the server acks it.
//! File uploads and searches go over REST in their own tasks, connected or not; an uploaded
//! file joins the outbox as a message with the media attached.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_client::{ClientError, Connection, ConnectionConfig, HttpApi, MessageSearch, RawEvent};
use chat_types::{
    Attachment, ClientMsgId, ConversationId, EventSeq, MediaId, Message, Seq, ServerFrame, UserId,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::Auth;
use crate::error::{closed, CliError};
use crate::media;
use crate::ui::app::{Cmd, NetEvent, SearchPage};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(3600);
/// Pages read when catching a conversation up: enough for a long absence, bounded.
const CATCH_UP_PAGES: usize = 20;
/// Results `/search` shows.
const SEARCH_LIMIT: u32 = 50;

/// A message waiting for its ack.
#[derive(Clone, Debug)]
struct Outgoing {
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    body: String,
    /// Uploaded files (their ids go on the wire; the rest shows in the acked message).
    attachments: Vec<Attachment>,
}

type Outbox = Arc<Mutex<VecDeque<Outgoing>>>;

/// What the command handlers share.
#[derive(Clone)]
struct Shared {
    outbox: Outbox,
    wake: Arc<Notify>,
    events: mpsc::UnboundedSender<NetEvent>,
    /// For searches (the default timeout).
    api: HttpApi,
    /// For uploads (a longer timeout).
    media_api: HttpApi,
    token: Arc<str>,
}

fn lock(outbox: &Outbox) -> MutexGuard<'_, VecDeque<Outgoing>> {
    outbox.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs until `cmds` closes (the UI is leaving) or the session is refused for good.
pub async fn run(
    auth: Auth,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<NetEvent>,
) {
    let apis = auth
        .ws_url()
        .and_then(|url| Ok((url, auth.api()?, media::media_api(&auth.server)?)));
    let (url, api, media_api) = match apis {
        Ok(a) => a,
        Err(e) => {
            let _ = events.send(NetEvent::Fatal(e));
            return;
        }
    };
    let outbox: Outbox = Arc::default();
    let wake = Arc::new(Notify::new());
    let shared = Shared {
        outbox: Arc::clone(&outbox),
        wake: Arc::clone(&wake),
        events: events.clone(),
        api,
        media_api,
        token: Arc::from(auth.token.as_str()),
    };
    // Requests made while disconnected run once connected again.
    let mut waiting: Vec<Cmd> = Vec::new();
    let mut cursor: Option<EventSeq> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let _ = events.send(NetEvent::Connecting);
        let config = ConnectionConfig {
            resume_from: cursor,
            ..ConnectionConfig::default()
        };
        let connecting = Connection::connect_with(&url, config);
        tokio::pin!(connecting);
        let connected = loop {
            tokio::select! {
                c = &mut connecting => break c,
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => queue(cmd, &shared, &mut waiting),
                    None => return,
                },
            }
        };
        let (conn, welcome) = match connected {
            Ok(c) => c,
            Err(e) => {
                let e = CliError::from(e);
                if !e.retry {
                    let _ = events.send(NetEvent::Fatal(e));
                    return drain(cmds).await;
                }
                let _ = events.send(NetEvent::Disconnected(e.to_string()));
                if !pause(backoff, &mut cmds, &shared, &mut waiting).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        cursor.get_or_insert(welcome.event_head);
        let conn = Arc::new(conn);
        let me = welcome.user_id;
        let _ = events.send(NetEvent::Connected(welcome));
        let sender = tokio::spawn(send_loop(
            Arc::clone(&conn),
            me,
            Arc::clone(&outbox),
            Arc::clone(&wake),
            events.clone(),
        ));
        let _sender = AbortOnDrop(sender);
        for cmd in waiting.drain(..) {
            dispatch(&conn, cmd, &shared);
        }
        let ended = loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => dispatch(&conn, cmd, &shared),
                    None => {
                        let _ = conn.close().await;
                        return;
                    }
                },
                m = conn.next_message(IDLE) => match m {
                    Ok(Some(m)) => {
                        let _ = events.send(NetEvent::Message(m));
                    }
                    Ok(None) => {}
                    Err(e) => break CliError::from(e),
                },
                ev = conn.next_raw_frame(IDLE) => match ev {
                    Ok(Some(RawEvent::Frame(ServerFrame::Resync { .. }))) => {
                        let _ = events.send(NetEvent::Resync);
                    }
                    Ok(Some(RawEvent::Closed { code, reason })) => break closed(code, &reason),
                    Ok(_) => {}
                    Err(e) => break CliError::from(e),
                },
            }
        };
        // Hand over what arrived before the close, then resume after it.
        while let Ok(Some(m)) = conn.next_message(Duration::ZERO).await {
            let _ = events.send(NetEvent::Message(m));
        }
        let seen = conn.last_event_seq();
        if seen.0 > 0 {
            cursor = Some(cursor.map_or(seen, |c| c.max(seen)));
        }
        if !ended.retry {
            let _ = events.send(NetEvent::Fatal(ended));
            return drain(cmds).await;
        }
        let _ = events.send(NetEvent::Disconnected(ended.to_string()));
        if !pause(FIRST_BACKOFF, &mut cmds, &shared, &mut waiting).await {
            return;
        }
    }
}

/// Aborts a task when dropped: the sender of a connection that is gone.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits `delay` while keeping commands; false when the UI is gone.
async fn pause(
    delay: Duration,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    shared: &Shared,
    waiting: &mut Vec<Cmd>,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            cmd = cmds.recv() => match cmd {
                Some(cmd) => queue(cmd, shared, waiting),
                None => return false,
            },
        }
    }
}

/// After a fatal error: consume commands until the UI leaves.
async fn drain(mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    while cmds.recv().await.is_some() {}
}

/// Keeps a command for the next connection (a send goes to the outbox at once, uploads and
/// searches start at once over REST).
fn queue(cmd: Cmd, shared: &Shared, waiting: &mut Vec<Cmd>) {
    match cmd {
        Cmd::Send {
            conversation,
            client_msg_id,
            body,
        } => {
            lock(&shared.outbox).push_back(Outgoing {
                conversation,
                client_msg_id,
                body,
                attachments: Vec::new(),
            });
            shared.wake.notify_one();
        }
        Cmd::SendFile {
            conversation,
            client_msg_id,
            path,
        } => {
            tokio::spawn(upload(shared.clone(), conversation, client_msg_id, path));
        }
        Cmd::Search(query) => {
            tokio::spawn(search(shared.clone(), query));
        }
        other => {
            if !waiting.contains(&other) {
                waiting.push(other);
            }
        }
    }
}

/// Runs one command on the connection, in its own task so that pushes keep flowing.
fn dispatch(conn: &Arc<Connection>, cmd: Cmd, shared: &Shared) {
    if let Cmd::Send { .. } | Cmd::SendFile { .. } | Cmd::Search(_) = cmd {
        return queue(cmd, shared, &mut Vec::new());
    }
    let conn = Arc::clone(conn);
    let events = shared.events.clone();
    tokio::spawn(async move {
        let event = match cmd {
            Cmd::Open(username) => match conn.open_direct_by_username(&username).await {
                Ok(info) => NetEvent::Opened(info),
                Err(e) => NetEvent::OpenFailed {
                    username,
                    error: e.into(),
                },
            },
            Cmd::History {
                conversation,
                after,
            } => match history(&conn, conversation, after).await {
                Ok(messages) => NetEvent::History {
                    conversation,
                    messages,
                },
                Err(e) => NetEvent::Problem(format!("cannot read history: {}", CliError::from(e))),
            },
            Cmd::Lookup(user) => match conn.profile(user).await {
                Ok(p) => NetEvent::Name(p.user_id, p.username),
                // The name stays "user N"; nothing the user must act on.
                Err(_) => return,
            },
            Cmd::ListConversations => match conn.list_conversations(Some(100)).await {
                Ok(list) => NetEvent::Conversations(list),
                Err(e) => {
                    NetEvent::Problem(format!("cannot list conversations: {}", CliError::from(e)))
                }
            },
            Cmd::Send { .. } | Cmd::SendFile { .. } | Cmd::Search(_) => return,
        };
        let _ = events.send(event);
    });
}

/// Uploads a `/file`, reporting progress, then queues its message.
async fn upload(
    shared: Shared,
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    path: std::path::PathBuf,
) {
    let events = shared.events.clone();
    let id = client_msg_id.clone();
    let uploaded = media::upload_file(&shared.media_api, &shared.token, &path, |done, total| {
        let _ = events.send(NetEvent::UploadProgress {
            conversation,
            client_msg_id: id.clone(),
            done,
            total,
        });
    })
    .await;
    let event = match uploaded {
        Ok(info) => {
            lock(&shared.outbox).push_back(Outgoing {
                conversation,
                client_msg_id: client_msg_id.clone(),
                body: String::new(),
                attachments: vec![info.attachment()],
            });
            shared.wake.notify_one();
            NetEvent::Uploaded {
                conversation,
                client_msg_id,
            }
        }
        Err(error) => NetEvent::SendFailed {
            conversation,
            client_msg_id,
            error,
        },
    };
    let _ = shared.events.send(event);
}

/// The first page of a message search.
async fn search(shared: Shared, query: String) {
    let filters = MessageSearch {
        limit: Some(SEARCH_LIMIT),
        ..MessageSearch::default()
    };
    let result = shared
        .api
        .search_messages(&shared.token, &query, &filters)
        .await
        .map(|page| SearchPage {
            more: page.next.is_some(),
            hits: page.hits,
            partial: page.partial,
        })
        .map_err(CliError::from);
    let _ = shared
        .events
        .send(NetEvent::SearchResults { query, result });
}

/// The latest page, or every message after `after` (bounded).
async fn history(
    conn: &Connection,
    conversation: ConversationId,
    after: Option<Seq>,
) -> Result<Vec<Message>, ClientError> {
    let Some(mut after) = after else {
        return Ok(conn.history(conversation, None, None, None).await?.messages);
    };
    let mut all = Vec::new();
    for _ in 0..CATCH_UP_PAGES {
        let page = conn.history(conversation, Some(after), None, None).await?;
        let Some(last) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        all.extend(page.messages);
        if last >= page.head || last <= after {
            break;
        }
        after = last;
    }
    Ok(all)
}

/// Sends the outbox in order on `conn`. A message leaves the outbox when acked or refused for
/// good; when the connection fails, the loop ends and the next connection's loop sends the
/// same message again with the same client message id.
async fn send_loop(
    conn: Arc<Connection>,
    me: UserId,
    outbox: Outbox,
    wake: Arc<Notify>,
    events: mpsc::UnboundedSender<NetEvent>,
) {
    let mut delay = FIRST_BACKOFF;
    loop {
        let next = lock(&outbox).front().cloned();
        let Some(out) = next else {
            wake.notified().await;
            continue;
        };
        let sent = if out.attachments.is_empty() {
            conn.send(
                out.conversation,
                out.client_msg_id.clone(),
                out.body.clone(),
            )
            .await
        } else {
            let ids: Vec<MediaId> = out.attachments.iter().map(|a| a.id.clone()).collect();
            conn.send_with_media(
                out.conversation,
                out.client_msg_id.clone(),
                out.body.clone(),
                ids,
            )
            .await
        };
        let event = match sent {
            Ok(ack) => {
                delay = FIRST_BACKOFF;
                pop(&outbox, &out.client_msg_id);
                NetEvent::Acked {
                    message: Message {
                        conversation: ack.conversation,
                        seq: ack.seq,
                        sender: me,
                        client_msg_id: ack.client_msg_id,
                        body: out.body,
                        ts_ms: ack.ts_ms,
                        refers: None,
                        attachments: out.attachments,
                    },
                }
            }
            Err(ClientError::Closed { .. } | ClientError::Ws(_)) => return,
            Err(e) => {
                let e = CliError::from(e);
                if e.retry {
                    tokio::time::sleep(e.retry_after.unwrap_or(delay).min(MAX_BACKOFF)).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    continue;
                }
                pop(&outbox, &out.client_msg_id);
                NetEvent::SendFailed {
                    conversation: out.conversation,
                    client_msg_id: out.client_msg_id,
                    error: e,
                }
            }
        };
        let _ = events.send(event);
    }
}

fn pop(outbox: &Outbox, id: &ClientMsgId) {
    let mut q = lock(outbox);
    if q.front().map(|o| &o.client_msg_id) == Some(id) {
        q.pop_front();
    }
}
