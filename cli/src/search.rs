//! `chat search`: messages (newest first, matches marked) and, with `--people`, users.

use std::collections::HashMap;
use std::io::IsTerminal;

use chat_client::{Connection, MessageSearch};
use chat_types::search::{MessageHit, UserHit};
use chat_types::{ConversationId, UserId};
use serde::Serialize;

use crate::commands::{one_shot_config, retrying};
use crate::config::{Auth, Ctx};
use crate::error::CliError;
use crate::output::{format_time, marked_snippet, sanitize, styled};

/// Pages `--all` follows at most (a server handing out cursors forever must not loop us).
const MAX_PAGES: usize = 1000;

/// What `chat search` was asked.
#[derive(Debug, Default)]
pub struct SearchArgs {
    pub text: String,
    /// Only the direct conversation with this user.
    pub user: Option<String>,
    /// Only this conversation (`dm:1:2`, `g:7`).
    pub conversation: Option<String>,
    /// Only messages from this user.
    pub sender: Option<String>,
    pub limit: Option<u32>,
    /// Follow `next` to the last page.
    pub all: bool,
}

/// A hit as `--json` prints it: the wire hit plus the sender's username when known.
#[derive(Serialize)]
struct HitOut<'a> {
    #[serde(flatten)]
    hit: &'a MessageHit,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_username: Option<&'a str>,
}

pub async fn messages(ctx: &Ctx, args: SearchArgs) -> Result<(), CliError> {
    if args.text.trim().is_empty() {
        return Err(CliError::new("invalid_argument", "nothing to search for"));
    }
    let conversation = match &args.conversation {
        Some(c) => Some(
            c.trim()
                .parse::<ConversationId>()
                .map_err(|e| CliError::new("invalid_argument", e.to_string()))?,
        ),
        None => None,
    };
    let auth = ctx.auth()?;
    let auth = &auth;
    let (user, sender) = (args.user.as_deref(), args.sender.as_deref());
    // The WebSocket answers what REST does not: who I am, and users by name.
    let (conn, me, conversation, sender) = retrying(move || async move {
        let (conn, welcome) = auth.connect(one_shot_config()).await?;
        let conversation = match user {
            Some(u) => Some(ConversationId::direct(
                welcome.user_id,
                conn.profile_by_username(u).await?.user_id,
            )),
            None => conversation,
        };
        let sender = match sender {
            Some(s) => Some(conn.profile_by_username(s).await?.user_id),
            None => None,
        };
        Ok((conn, welcome, conversation, sender))
    })
    .await?;
    let mut names = Names {
        conn: &conn,
        known: HashMap::from([(me.user_id, me.username.clone())]),
    };
    let result = print_pages(
        ctx,
        auth,
        &args,
        MessageSearch {
            conversation,
            sender,
            limit: args.limit,
            ..MessageSearch::default()
        },
        me.user_id,
        &mut names,
    )
    .await;
    let _ = conn.close().await;
    result
}

async fn print_pages(
    ctx: &Ctx,
    auth: &Auth,
    args: &SearchArgs,
    mut filters: MessageSearch,
    me: UserId,
    names: &mut Names<'_>,
) -> Result<(), CliError> {
    let api = auth.api()?;
    let mark = !ctx.out.json && styled(std::io::stdout().is_terminal());
    let mut printed = 0usize;
    let mut partial = false;
    let mut more = false;
    for _ in 0..MAX_PAGES {
        let (api, filters_ref, text) = (&api, &filters, args.text.as_str());
        let page = retrying(move || async move {
            Ok(api.search_messages(&auth.token, text, filters_ref).await?)
        })
        .await?;
        partial |= page.partial;
        for hit in &page.hits {
            let sender = names.get(hit.sender).await;
            if ctx.out.json {
                ctx.out.json_line(&HitOut {
                    hit,
                    sender_username: Some(&sender),
                })?;
            } else {
                let place = names.conversation(hit.conversation, me, &sender).await;
                ctx.out.line(&format!(
                    "[{}] #{} {} {}: {}",
                    sanitize(&place),
                    hit.seq,
                    format_time(hit.ts_ms),
                    sanitize(&sender),
                    marked_snippet(&hit.snippet, &hit.highlights, mark)
                ))?;
            }
        }
        printed += page.hits.len();
        match page.next {
            Some(next)
                if args.all && !page.hits.is_empty() && filters.cursor.as_ref() != Some(&next) =>
            {
                filters.cursor = Some(next);
            }
            Some(_) => {
                more = !args.all;
                break;
            }
            None => break,
        }
    }
    if printed == 0 {
        ctx.out.note("no messages found");
    } else if more {
        ctx.out
            .note("more results: --all prints every page, --limit N a larger one");
    }
    if partial {
        ctx.out
            .note("some nodes did not answer in time: results may be missing");
    }
    Ok(())
}

/// Usernames, asked of the server once each.
struct Names<'a> {
    conn: &'a Connection,
    known: HashMap<UserId, String>,
}

impl Names<'_> {
    async fn get(&mut self, user: UserId) -> String {
        if let Some(n) = self.known.get(&user) {
            return n.clone();
        }
        match self.conn.profile(user).await {
            Ok(p) => {
                self.known.insert(user, p.username.clone());
                p.username
            }
            Err(_) => format!("user {user}"),
        }
    }

    /// A direct conversation is named by the other member (`sender` for notes to self), any
    /// other by its id.
    async fn conversation(&mut self, id: ConversationId, me: UserId, sender: &str) -> String {
        let members = id.direct_members();
        match members.iter().copied().find(|u| *u != me) {
            Some(peer) => self.get(peer).await,
            None if !members.is_empty() => sender.to_owned(),
            None => id.to_string(),
        }
    }
}

/// `chat search --people TEXT`.
pub async fn people(ctx: &Ctx, text: &str, limit: Option<u32>) -> Result<(), CliError> {
    if text.trim().is_empty() {
        return Err(CliError::new("invalid_argument", "nothing to search for"));
    }
    let auth = ctx.auth()?;
    let auth = &auth;
    let found =
        retrying(move || async move { Ok(auth.api()?.search_users(&auth.token, text).await?) })
            .await?;
    let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let users: Vec<&UserHit> = found.users.iter().take(limit).collect();
    if users.is_empty() {
        ctx.out.note("nobody found");
    }
    for u in users {
        if ctx.out.json {
            ctx.out.json_line(u)?;
        } else {
            ctx.out.line(&user_text(u))?;
        }
    }
    Ok(())
}

/// `bob (user 2) "Bob Marley"` (the display name when it differs from the username).
fn user_text(u: &UserHit) -> String {
    let mut text = format!("{} (user {})", sanitize(&u.username), u.user_id);
    if u.display_name != u.username && !u.display_name.is_empty() {
        text.push_str(&format!(" \"{}\"", sanitize(&u.display_name)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_print_with_their_display_name_when_it_differs() {
        let hit = |name: &str, display: &str| UserHit {
            user_id: UserId(2),
            username: name.into(),
            display_name: display.into(),
        };
        assert_eq!(user_text(&hit("bob", "bob")), "bob (user 2)");
        assert_eq!(
            user_text(&hit("bob", "Bob\u{1b}[1m")),
            "bob (user 2) \"Bob\u{fffd}[1m\""
        );
    }
}
