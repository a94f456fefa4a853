//! `chat tail`: prints every new message of the user's conversations as it arrives.
//!
//! The first connection starts at the stream's head (`welcome.event_head`): only new
//! messages are printed. When the connection drops, it reconnects with `resume_from` set to
//! the last event seq seen, so the server replays what was missed, in order and once. When
//! the server cannot replay (`resync`), the missed messages are read from each conversation's
//! history. A message already printed (same conversation and seq) is never printed again.

use std::collections::HashMap;
use std::time::Duration;

use chat_client::{Connection, ConnectionConfig, RawEvent};
use chat_types::{ConversationId, EventSeq, Message, Seq, ServerFrame, UserId};

use crate::config::{Auth, Ctx};
use crate::error::{closed, CliError};
use crate::output::{message_text, sanitize, MessageOut};

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A wait for a push that does not end the loop; the select wakes on anything else.
const IDLE: Duration = Duration::from_secs(3600);

pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let auth = ctx.auth()?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tail = Tail::new(ctx, &auth);
    tokio::select! {
        result = tail.run() => result,
        _ = &mut ctrl_c => Ok(()),
    }
}

struct Tail<'a> {
    ctx: &'a Ctx,
    auth: &'a Auth,
    /// The resume cursor: `None` until the first welcome.
    cursor: Option<EventSeq>,
    /// The highest seq printed per conversation.
    printed: HashMap<ConversationId, Seq>,
    names: HashMap<UserId, String>,
    me: Option<UserId>,
    started_ms: u64,
}

impl<'a> Tail<'a> {
    fn new(ctx: &'a Ctx, auth: &'a Auth) -> Tail<'a> {
        Tail {
            ctx,
            auth,
            cursor: None,
            printed: HashMap::new(),
            names: HashMap::new(),
            me: None,
            started_ms: now_ms(),
        }
    }

    async fn run(&mut self) -> Result<(), CliError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let config = ConnectionConfig {
                resume_from: self.cursor,
                ..ConnectionConfig::default()
            };
            let (conn, welcome) = match self.auth.connect(config).await {
                Ok(c) => c,
                Err(e) if e.retry => {
                    self.ctx.out.note(&format!(
                        "tail: cannot connect ({e}); retrying in {} ms",
                        backoff.as_millis()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => return Err(e),
            };
            backoff = FIRST_BACKOFF;
            self.me = Some(welcome.user_id);
            self.names.insert(welcome.user_id, welcome.username.clone());
            let resumed = self.cursor.is_some();
            let cursor = *self.cursor.get_or_insert(welcome.event_head);
            self.ctx.out.note(&format!(
                "tail: connected to node {} as {}{}; waiting for messages (Ctrl-C to stop)",
                welcome.node_id,
                sanitize(&welcome.username),
                if resumed {
                    format!(", resuming after event {cursor}")
                } else {
                    String::new()
                }
            ));
            let ended = self.follow(&conn).await;
            // Print what arrived before the close, then move the cursor past it.
            while let Ok(Some(m)) = conn.next_message(Duration::ZERO).await {
                self.print(&conn, &m).await?;
            }
            self.advance(conn.last_event_seq());
            match ended {
                Err(e) if !e.retry => return Err(e),
                Err(e) => self.ctx.out.note(&format!("tail: {e}; reconnecting")),
                Ok(()) => self.ctx.out.note("tail: connection closed; reconnecting"),
            }
            tokio::time::sleep(FIRST_BACKOFF).await;
        }
    }

    /// Prints pushes until the connection closes; the error says how it closed.
    async fn follow(&mut self, conn: &Connection) -> Result<(), CliError> {
        loop {
            tokio::select! {
                m = conn.next_message(IDLE) => match m {
                    Ok(Some(m)) => {
                        self.print(conn, &m).await?;
                        self.advance(conn.last_event_seq());
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.into()),
                },
                ev = conn.next_raw_frame(IDLE) => match ev {
                    Ok(Some(RawEvent::Frame(ServerFrame::Resync { event_head }))) => {
                        self.ctx.out.note("tail: the server cannot replay the missed events; reading history");
                        if let Err(e) = self.catch_up(conn).await {
                            if !e.retry {
                                return Err(e);
                            }
                            self.ctx.out.note(&format!("tail: catching up failed ({e})"));
                        }
                        self.cursor = Some(event_head);
                    }
                    Ok(Some(RawEvent::Closed { code, reason })) => return Err(closed(code, &reason)),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }

    fn advance(&mut self, seen: EventSeq) {
        if seen.0 > 0 {
            self.cursor = Some(self.cursor.map_or(seen, |c| c.max(seen)));
        }
    }

    /// After a `resync`: reads each conversation's messages after the last one printed (for a
    /// conversation not seen yet, those since the tail started).
    async fn catch_up(&mut self, conn: &Connection) -> Result<(), CliError> {
        let conversations = conn.list_conversations(Some(200)).await?;
        for summary in conversations {
            let known = self.printed.get(&summary.conversation).copied();
            if known.is_none() && summary.last_ts_ms < self.started_ms {
                continue;
            }
            let mut after = known.unwrap_or(Seq(0));
            // Bounded: at most 50 pages per conversation.
            for _ in 0..50 {
                if after >= summary.last_seq {
                    break;
                }
                let page = if known.is_some() {
                    conn.history(summary.conversation, Some(after), None, None)
                        .await?
                } else {
                    conn.history(summary.conversation, None, None, None).await?
                };
                let Some(last) = page.messages.last().map(|m| m.seq) else {
                    break;
                };
                for m in &page.messages {
                    if known.is_some() || m.ts_ms >= self.started_ms {
                        self.print(conn, m).await?;
                    }
                }
                if known.is_none() || last <= after {
                    break;
                }
                after = last;
            }
        }
        Ok(())
    }

    async fn print(&mut self, conn: &Connection, m: &Message) -> Result<(), CliError> {
        let printed = self.printed.entry(m.conversation).or_insert(Seq(0));
        if m.seq <= *printed {
            return Ok(());
        }
        *printed = m.seq;
        let sender = self.name(conn, m.sender).await;
        if self.ctx.out.json {
            return self.ctx.out.json_line(&MessageOut {
                message: m,
                sender_username: Some(&sender),
            });
        }
        // A direct conversation is named by the other member (oneself for notes to self),
        // any other by its id.
        let members = m.conversation.direct_members();
        let peer = match members.iter().copied().find(|u| Some(*u) != self.me) {
            Some(p) => self.name(conn, p).await,
            None if !members.is_empty() => sender.clone(),
            None => m.conversation.to_string(),
        };
        self.ctx.out.line(&message_text(
            m,
            &sender,
            &format!("[{}] ", sanitize(&peer)),
        ))
    }

    /// A user's name, asked of the server once; `user N` when it cannot say.
    async fn name(&mut self, conn: &Connection, user: UserId) -> String {
        if let Some(n) = self.names.get(&user) {
            return n.clone();
        }
        match conn.profile(user).await {
            Ok(p) => {
                self.names.insert(user, p.username.clone());
                p.username
            }
            Err(_) => format!("user {user}"),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
