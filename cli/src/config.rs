//! Where the CLI talks to and as whom: the server URL and the session token file.
//!
//! The token file holds `{"server","token","user_id","username"}` as JSON, mode 0600 in a
//! directory of mode 0700; a file holding only a token (one line) is read too. `CHAT_TOKEN`
//! in the environment, when set, is the token and the file is not read for it.

use std::path::{Path, PathBuf};

use chat_client::{Connection, ConnectionConfig, HttpApi, Welcome};
use chat_types::UserId;
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::output::Output;

/// The server used when neither `--server`, `CHAT_SERVER` nor the last login names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// What the token file keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    /// The server the token was issued by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The options every command shares.
#[derive(Clone, Debug)]
pub struct Ctx {
    server_flag: Option<String>,
    token_file_flag: Option<PathBuf>,
    pub out: Output,
}

/// A token and the server to use it with.
#[derive(Clone, Debug)]
pub struct Auth {
    pub token: String,
    pub server: String,
}

impl Ctx {
    pub fn new(server: Option<String>, token_file: Option<PathBuf>, out: Output) -> Ctx {
        Ctx {
            server_flag: server.filter(|s| !s.trim().is_empty()),
            token_file_flag: token_file,
            out,
        }
    }

    /// `--token-file`, else `$XDG_CONFIG_HOME/chat/session.json`, else
    /// `~/.config/chat/session.json`.
    pub fn token_file(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.token_file_flag {
            return Ok(p.clone());
        }
        default_token_file(
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
        .ok_or_else(|| {
            CliError::new(
                "invalid_argument",
                "neither XDG_CONFIG_HOME nor HOME is set: name a --token-file",
            )
        })
    }

    /// The session in the token file, if there is one.
    pub fn stored_session(&self) -> Result<Option<Session>, CliError> {
        read_session(&self.token_file()?)
    }

    /// `--server` (or `CHAT_SERVER`), else the server of the stored session, else the default.
    pub fn server(&self) -> String {
        if let Some(s) = &self.server_flag {
            return s.clone();
        }
        if let Ok(Some(Session {
            server: Some(s), ..
        })) = self.stored_session()
        {
            return s;
        }
        DEFAULT_SERVER.to_owned()
    }

    pub fn api(&self) -> Result<HttpApi, CliError> {
        Ok(HttpApi::new(&self.server())?)
    }

    /// The token to act with: `CHAT_TOKEN`, else the token file's.
    pub fn auth(&self) -> Result<Auth, CliError> {
        if let Some(token) = std::env::var("CHAT_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
        {
            return Ok(Auth {
                token,
                server: self.server(),
            });
        }
        match self.stored_session()? {
            Some(session) => Ok(Auth {
                server: self
                    .server_flag
                    .clone()
                    .or(session.server)
                    .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
                token: session.token,
            }),
            None => Err(CliError::not_logged_in()),
        }
    }
}

impl Auth {
    pub fn api(&self) -> Result<HttpApi, CliError> {
        Ok(HttpApi::new(&self.server)?)
    }

    pub fn ws_url(&self) -> Result<String, CliError> {
        Ok(self.api()?.ws_url(&self.token))
    }

    /// A WebSocket connection after the handshake.
    pub async fn connect(
        &self,
        config: ConnectionConfig,
    ) -> Result<(Connection, Welcome), CliError> {
        Ok(Connection::connect_with(&self.ws_url()?, config).await?)
    }
}

pub fn default_token_file(xdg: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    // The XDG spec ignores a relative XDG_CONFIG_HOME.
    let base = match xdg.filter(|p| p.is_absolute()) {
        Some(x) => x,
        None => home.filter(|h| !h.as_os_str().is_empty())?.join(".config"),
    };
    Some(base.join("chat").join("session.json"))
}

/// Reads a session file: `None` when it does not exist or holds no token.
pub fn read_session(path: &Path) -> Result<Option<Session>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io(&format!("cannot read {}", path.display()), &e)),
    };
    Ok(parse_session(&text))
}

fn parse_session(text: &str) -> Option<Session> {
    if let Ok(session) = serde_json::from_str::<Session>(text) {
        return (!session.token.trim().is_empty()).then_some(session);
    }
    let token = text.lines().next()?.trim();
    // A JSON object that is not a session is a damaged file, not a token.
    (!token.is_empty() && !token.starts_with('{')).then(|| Session {
        token: token.to_owned(),
        server: None,
        user_id: None,
        username: None,
    })
}

/// Writes `session` to `path` readable by its owner only, replacing the file atomically.
pub fn write_session(path: &Path, session: &Session) -> Result<(), CliError> {
    let fail =
        |what: &str, e: std::io::Error| CliError::io(&format!("{what} {}", path.display()), &e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir).map_err(|e| fail("cannot create the directory of", e))?;
    let mut text = serde_json::to_string_pretty(session)
        .map_err(|e| CliError::new("io", format!("cannot encode the session: {e}")))?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("cannot write", e));
    }
    Ok(())
}

/// Removes the token file; a missing one is fine.
pub fn remove_session(path: &Path) -> Result<(), CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::io(
            &format!("cannot remove {}", path.display()),
            &e,
        )),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above applies only to a new file (and the umask may narrow it further).
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_token_file_follows_xdg_then_home() {
        assert_eq!(
            default_token_file(Some("/x".into()), Some("/home/a".into())),
            Some(PathBuf::from("/x/chat/session.json"))
        );
        assert_eq!(
            default_token_file(Some("relative".into()), Some("/home/a".into())),
            Some(PathBuf::from("/home/a/.config/chat/session.json"))
        );
        assert_eq!(default_token_file(None, None), None);
    }

    #[test]
    fn sessions_round_trip_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("session.json");
        assert_eq!(read_session(&path).unwrap(), None);
        let s = Session {
            token: "abc".into(),
            server: Some("http://127.0.0.1:1".into()),
            user_id: Some(UserId(3)),
            username: Some("alice".into()),
        };
        write_session(&path, &s).unwrap();
        assert_eq!(read_session(&path).unwrap(), Some(s));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        remove_session(&path).unwrap();
        remove_session(&path).unwrap();
        assert_eq!(read_session(&path).unwrap(), None);
    }

    #[test]
    fn a_bare_token_file_is_accepted() {
        assert_eq!(
            parse_session("  tok123 \n").map(|s| s.token),
            Some("tok123".into())
        );
        assert_eq!(parse_session("\n"), None);
        assert_eq!(parse_session(r#"{"token":""}"#), None);
    }
}
