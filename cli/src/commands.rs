//! The one-shot commands: each does its work, prints its result and returns.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use chat_client::ConnectionConfig;
use chat_types::{
    Attachment, ClientMsgId, ContactEntry, ConversationId, MediaId, MediaInfo, Profile, Seq,
    MAX_ATTACHMENTS,
};
use serde_json::json;

use crate::config::{read_session, remove_session, write_session, Auth, Ctx, Session};
use crate::error::CliError;
use crate::media;
use crate::output::{message_text, sanitize, MessageOut};

/// How often a command that is safe to repeat is tried when the failure may be transient.
const ATTEMPTS: u32 = 3;

/// A connection for one command: no heartbeat (it lives for a few requests).
pub fn one_shot_config() -> ConnectionConfig {
    ConnectionConfig {
        heartbeat: false,
        ..ConnectionConfig::default()
    }
}

/// A fresh client message id: unique per sender and conversation, so a retry of the same
/// send never makes a copy.
pub fn new_client_msg_id() -> ClientMsgId {
    let id = format!("cli-{:032x}", rand::random::<u128>());
    // 36 printable ASCII characters: always valid; the fallback only satisfies the types.
    ClientMsgId::new(id).unwrap_or_else(|_| fallback_client_msg_id())
}

fn fallback_client_msg_id() -> ClientMsgId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    match ClientMsgId::new(format!("cli-{nanos}")) {
        Ok(id) => id,
        Err(_) => fallback_client_msg_id(),
    }
}

/// Runs `attempt` until it succeeds, fails for good, or [`ATTEMPTS`] transient failures.
pub async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    let mut delay = Duration::from_millis(300);
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.retry && tries < ATTEMPTS => {
                tokio::time::sleep(e.retry_after.unwrap_or(delay).min(Duration::from_secs(5)))
                    .await;
                delay *= 2;
                tries += 1;
            }
            result => return result,
        }
    }
}

/// The password: from stdin's first line when asked or when stdin is not a terminal, else
/// prompted for on the terminal without echo (twice when `confirm`).
fn read_password(from_stdin: bool, confirm: bool) -> Result<String, CliError> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::io("cannot read the password from stdin", &e))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::io("cannot read the password", &e))?;
        if confirm {
            let again = rpassword::prompt_password("Password again: ")
                .map_err(|e| CliError::io("cannot read the password", &e))?;
            if again != first {
                return Err(CliError::new(
                    "invalid_argument",
                    "the two passwords differ",
                ));
            }
        }
        first
    };
    if password.is_empty() {
        return Err(CliError::new("invalid_argument", "the password is empty"));
    }
    Ok(password)
}

pub async fn register(ctx: &Ctx, username: &str, password_stdin: bool) -> Result<(), CliError> {
    let password = read_password(password_stdin, true)?;
    let r = ctx.api()?.register(username, &password).await?;
    ctx.out.result(
        &format!(
            "registered {} (user {}); now run: chat login {}",
            r.username, r.user_id, r.username
        ),
        &r,
    )
}

pub async fn login(ctx: &Ctx, username: &str, password_stdin: bool) -> Result<(), CliError> {
    let password = read_password(password_stdin, false)?;
    let server = ctx.server();
    let api = chat_client::HttpApi::new(&server)?;
    let r = api.login(username, &password).await?;
    let path = ctx.token_file()?;
    let previous = read_session(&path).ok().flatten();
    write_session(
        &path,
        &Session {
            token: r.token.clone(),
            server: Some(server.clone()),
            user_id: Some(r.user_id),
            username: Some(r.username.clone()),
        },
    )?;
    // The session this login replaces would otherwise stay valid with nobody holding it.
    if let Some(old) = previous {
        if old.token != r.token && old.server.as_deref().unwrap_or(&server) == server {
            let _ = api.logout(&old.token).await;
        }
    }
    ctx.out.result(
        &format!(
            "logged in as {} (user {}) on {}",
            r.username, r.user_id, server
        ),
        &json!({
            "user_id": r.user_id,
            "username": r.username,
            "server": server,
            "token_file": path,
        }),
    )
}

pub async fn logout(ctx: &Ctx) -> Result<(), CliError> {
    let auth = ctx.auth()?;
    match auth
        .api()?
        .logout(&auth.token)
        .await
        .map_err(CliError::from)
    {
        // An unknown or revoked token is as logged out as it gets.
        Ok(()) => {}
        Err(e) if e.is_unauthorized() => {}
        Err(e) => return Err(e),
    }
    let path = ctx.token_file()?;
    // With CHAT_TOKEN the file may hold another session: leave that one alone.
    if let Some(stored) = read_session(&path)? {
        if stored.token == auth.token {
            remove_session(&path)?;
        }
    }
    ctx.out.result("logged out", &json!({"logged_out": true}))
}

pub async fn send(
    ctx: &Ctx,
    user: &str,
    message: Option<&str>,
    files: &[PathBuf],
) -> Result<(), CliError> {
    let body = match message {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::io("cannot read the message from stdin", &e))?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        Some(m) => m.to_owned(),
        None if files.is_empty() => {
            return Err(CliError::new(
                "invalid_argument",
                "nothing to send: give a MESSAGE or a --file",
            ))
        }
        None => String::new(),
    };
    if files.len() > MAX_ATTACHMENTS {
        return Err(CliError::new(
            "invalid_argument",
            format!("at most {MAX_ATTACHMENTS} files per message"),
        ));
    }
    // A missing file fails before anything is uploaded or sent.
    for f in files {
        media::check_file(f).await?;
    }
    let auth = ctx.auth()?;
    let cmid = new_client_msg_id();
    let (auth, body, cmid) = (&auth, &body, &cmid);
    let (ack, attachments) = if files.is_empty() {
        // Every attempt sends the same client_msg_id: a retry after a lost ack stores nothing new.
        let ack = retrying(move || async move {
            let (conn, _) = auth.connect(one_shot_config()).await?;
            let info = conn.open_direct_by_username(user).await?;
            let ack = conn
                .send(info.conversation, cmid.clone(), body.clone())
                .await?;
            let _ = conn.close().await;
            Ok(ack)
        })
        .await?;
        (ack, Vec::new())
    } else {
        // The conversation first: an unknown user fails before the uploads.
        let conversation = retrying(move || async move {
            let (conn, _) = auth.connect(one_shot_config()).await?;
            let info = conn.open_direct_by_username(user).await?;
            let _ = conn.close().await;
            Ok(info.conversation)
        })
        .await?;
        let api = media::media_api(&auth.server)?;
        let mut uploaded = Vec::with_capacity(files.len());
        for f in files {
            let progress = media::StderrProgress::new("uploading", &media::upload_name(f));
            let info = media::upload_file(&api, &auth.token, f, |done, total| {
                progress.show(done, total)
            })
            .await;
            progress.finish();
            uploaded.push(info?);
        }
        let ids: Vec<MediaId> = uploaded.iter().map(|m| m.id.clone()).collect();
        let ids = &ids;
        let ack = retrying(move || async move {
            let (conn, _) = auth.connect(one_shot_config()).await?;
            let ack = conn
                .send_with_media(conversation, cmid.clone(), body.clone(), ids.clone())
                .await?;
            let _ = conn.close().await;
            Ok(ack)
        })
        .await?;
        let attachments: Vec<Attachment> = uploaded.iter().map(MediaInfo::attachment).collect();
        (ack, attachments)
    };
    let mut value = json!({
        "conversation": ack.conversation,
        "seq": ack.seq,
        "client_msg_id": ack.client_msg_id,
        "ts_ms": ack.ts_ms,
        "duplicate": ack.duplicate,
    });
    if !attachments.is_empty() {
        value["attachments"] = json!(attachments);
    }
    ctx.out.result(&ack.seq.to_string(), &value)
}

pub async fn history(
    ctx: &Ctx,
    user: &str,
    limit: Option<u32>,
    before: Option<u64>,
) -> Result<(), CliError> {
    let auth = ctx.auth()?;
    let auth = &auth;
    let (me, other, page) = retrying(move || async move {
        let (conn, welcome) = auth.connect(one_shot_config()).await?;
        let other = conn.profile_by_username(user).await?;
        let conversation = ConversationId::direct(welcome.user_id, other.user_id);
        let page = conn
            .history(conversation, None, before.map(Seq), limit)
            .await?;
        let _ = conn.close().await;
        Ok(((welcome.user_id, welcome.username), other, page))
    })
    .await?;
    if page.messages.is_empty() && !ctx.out.json {
        ctx.out
            .note(&format!("no messages with {}", sanitize(&other.username)));
    }
    for m in &page.messages {
        let name = if m.sender == me.0 {
            Some(me.1.as_str())
        } else if m.sender == other.user_id {
            Some(other.username.as_str())
        } else {
            None
        };
        if ctx.out.json {
            ctx.out.json_line(&MessageOut {
                message: m,
                sender_username: name,
            })?;
        } else {
            let fallback = format!("user {}", m.sender);
            ctx.out
                .line(&message_text(m, name.unwrap_or(&fallback), ""))?;
        }
    }
    Ok(())
}

pub async fn profile(ctx: &Ctx, user: Option<&str>) -> Result<(), CliError> {
    let auth = ctx.auth()?;
    let auth = &auth;
    let profile = retrying(move || async move {
        let (conn, _) = auth.connect(one_shot_config()).await?;
        let p = match user {
            Some(u) => conn.profile_by_username(u).await?,
            None => conn.my_profile().await?,
        };
        let _ = conn.close().await;
        Ok(p)
    })
    .await?;
    ctx.out.result(&profile_text(&profile), &profile)
}

fn profile_text(p: &Profile) -> String {
    let mut text = format!(
        "{} (user {})\ndisplay name: {}\nstatus: {}",
        sanitize(&p.username),
        p.user_id,
        sanitize(&p.display_name),
        sanitize(&p.status_text)
    );
    if let Some(avatar) = &p.avatar {
        text.push_str(&format!("\navatar: {}", sanitize(avatar)));
    }
    text
}

pub async fn contacts(ctx: &Ctx) -> Result<(), CliError> {
    let auth: Auth = ctx.auth()?;
    let auth = &auth;
    let c = retrying(move || async move { Ok(auth.api()?.contacts(&auth.token).await?) }).await?;
    let mut text = String::new();
    for (title, list) in [
        ("contacts", &c.contacts),
        ("requests to you", &c.incoming),
        ("your requests", &c.outgoing),
    ] {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("{title}:"));
        if list.is_empty() {
            text.push_str("\n  (none)");
        }
        for entry in list {
            text.push_str("\n  ");
            text.push_str(&entry_text(entry));
        }
    }
    ctx.out.result(&text, &c)
}

fn entry_text(e: &ContactEntry) -> String {
    let p = &e.profile;
    let mut text = format!("{} (user {})", sanitize(&p.username), p.user_id);
    if p.display_name != p.username {
        text.push_str(&format!(" \"{}\"", sanitize(&p.display_name)));
    }
    if !p.status_text.is_empty() {
        text.push_str(&format!(" - {}", sanitize(&p.status_text)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_valid_and_fresh() {
        let a = new_client_msg_id();
        let b = new_client_msg_id();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("cli-"));
        assert!(a.as_str().len() <= ClientMsgId::MAX_LEN);
    }

    #[tokio::test]
    async fn retrying_stops_on_a_final_error_and_retries_transient_ones() {
        let mut calls = 0;
        let calls_ref = &mut calls;
        let r: Result<(), CliError> = retrying(|| {
            *calls_ref += 1;
            async { Err(CliError::new("not_found", "x")) }
        })
        .await;
        assert_eq!(r.map_err(|e| e.code), Err("not_found".to_owned()));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let calls_ref = &mut calls;
        let r: Result<u32, CliError> = retrying(|| {
            *calls_ref += 1;
            let n = *calls_ref;
            async move {
                if n < 2 {
                    Err(CliError {
                        retry: true,
                        retry_after: Some(Duration::from_millis(1)),
                        ..CliError::new("unavailable", "x")
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(2));
    }
}
