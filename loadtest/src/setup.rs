//! Users of a run: unique names, registration, login and WebSocket connection, spread
//! round-robin over the targets, through the public REST and WebSocket API only.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_client::{ClientError, Connection, ConnectionConfig, HttpApi, Welcome};
use chat_types::rest::LoginResponse;
use chat_types::{validate_username, UserId};
use rand::Rng;

use crate::checker::ObserverId;
use crate::metrics::Tally;

/// Every user of a run has this password (the server wants 8 bytes or more).
pub const PASSWORD: &str = "loadtest-password";

/// How often a set-up step is tried when the server answers with a retryable error.
const SETUP_ATTEMPTS: u32 = 5;

/// The targets of a run: one HTTP client per node, and the base URLs as given.
#[derive(Clone, Debug)]
pub struct Targets {
    pub urls: Vec<String>,
    pub apis: Vec<HttpApi>,
}

impl Targets {
    /// Checks that every target is an `http://` URL on a loopback address (load is only ever
    /// sent to this machine) and builds a client for each.
    pub fn new(urls: &[String]) -> anyhow::Result<Targets> {
        if urls.is_empty() {
            bail!("no target: give at least one --target http://127.0.0.1:PORT");
        }
        let mut apis = Vec::new();
        for url in urls {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("target {url:?}"))?;
            if parsed.scheme() != "http" {
                bail!("target {url:?}: only http:// targets are supported");
            }
            let host = parsed.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!(
                    "target {url:?}: the load tester only targets loopback addresses \
                     (127.0.0.0/8, ::1, localhost)"
                );
            }
            apis.push(HttpApi::new(url).with_context(|| format!("target {url:?}"))?);
        }
        Ok(Targets {
            urls: urls.to_vec(),
            apis,
        })
    }

    /// The target of user number `index`: round-robin, so that consecutive users (the two
    /// users of a pair) are on different nodes whenever there are several.
    pub fn of(&self, index: usize) -> usize {
        index % self.apis.len()
    }
}

/// A prefix unique to this run, so that reruns against the same data never collide:
/// `lt` + seconds since the epoch in base 36 + 4 random base-36 characters.
pub fn run_prefix() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut rng = rand::thread_rng();
    let random: String = (0..4).map(|_| base36_digit(rng.gen_range(0..36))).collect();
    format!("lt{}{random}", base36(secs))
}

fn base36_digit(d: u64) -> char {
    char::from_digit(d as u32, 36).unwrap_or('0')
}

fn base36(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(base36_digit(n % 36));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().collect()
}

/// The name of user `index` of the run with `prefix`.
pub fn username(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// A user that is registered and logged in.
#[derive(Clone, Debug)]
pub struct User {
    pub index: usize,
    pub username: String,
    pub user_id: UserId,
    pub token: String,
    /// Index into [`Targets`] of the node this user talks to.
    pub target: usize,
}

/// A user with an open WebSocket.
#[derive(Debug)]
pub struct Connected {
    pub user: User,
    pub conn: Arc<Connection>,
    pub welcome: Welcome,
    pub observer: ObserverId,
}

/// Registers user `index`, logs it in and connects its WebSocket, recording each step's
/// latency in `tally`. Retryable refusals are retried a few times.
pub async fn set_up_user(
    targets: &Targets,
    prefix: &str,
    index: usize,
    tally: &mut Tally,
    record: bool,
) -> Result<(User, Connection, Welcome), ClientError> {
    let user = register_and_log_in(targets, prefix, index, tally, record).await?;
    let (conn, welcome) = connect_user(targets, &user, tally, record, None).await?;
    Ok((user, conn, welcome))
}

/// Registers user `index` and logs it in, recording each step's latency in `tally`.
pub async fn register_and_log_in(
    targets: &Targets,
    prefix: &str,
    index: usize,
    tally: &mut Tally,
    record: bool,
) -> Result<User, ClientError> {
    let target = targets.of(index);
    let api = &targets.apis[target];
    let name = username(prefix, index);
    if validate_username(&name).is_err() {
        return Err(ClientError::Protocol(format!(
            "generated username {name:?} breaks the username rule"
        )));
    }
    let t = Instant::now();
    retry(tally, || api.register(&name, PASSWORD)).await?;
    if record {
        tally.register.record(t.elapsed());
    }
    let t = Instant::now();
    let login: LoginResponse = retry(tally, || api.login(&name, PASSWORD)).await?;
    if record {
        tally.login.record(t.elapsed());
    }
    Ok(User {
        index,
        username: login.username,
        user_id: login.user_id,
        token: login.token,
        target,
    })
}

/// Opens `user`'s WebSocket (upgrade plus hello/welcome) on its target, resuming the event
/// stream after `resume_from` when given; records the latency in `tally`.
pub async fn connect_user(
    targets: &Targets,
    user: &User,
    tally: &mut Tally,
    record: bool,
    resume_from: Option<chat_types::EventSeq>,
) -> Result<(Connection, Welcome), ClientError> {
    let t = Instant::now();
    let config = ConnectionConfig {
        resume_from,
        ..ConnectionConfig::default()
    };
    let url = targets.apis[user.target].ws_url(&user.token);
    let (conn, welcome) = retry(tally, || Connection::connect_with(&url, config.clone())).await?;
    if record {
        tally.connect.record(t.elapsed());
    }
    Ok((conn, welcome))
}

/// Runs `step` until it succeeds, fails for good, or [`SETUP_ATTEMPTS`] are spent; every
/// failed attempt is counted in `tally`.
async fn retry<T, F, Fut>(tally: &mut Tally, mut step: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tally.client_error(&e);
                let wait = retry_wait(&e);
                match wait {
                    Some(wait) if attempt < SETUP_ATTEMPTS => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

/// How long to wait before retrying after `e`, or `None` if retrying cannot help.
pub fn retry_wait(e: &ClientError) -> Option<Duration> {
    match e {
        ClientError::Server(w) if w.retry => Some(Duration::from_millis(
            w.retry_after_ms.unwrap_or(100).clamp(10, 5_000),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generated_usernames_follow_the_server_rule_and_differ_per_run() {
        let a = run_prefix();
        let b = run_prefix();
        assert_ne!(a, b);
        for i in [0, 1, 99_999] {
            let name = username(&a, i);
            assert!(validate_username(&name).is_ok(), "{name}");
            assert!(name.len() <= 32, "{name}");
        }
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.2:1",
            "http://localhost:80",
        ] {
            assert!(Targets::new(&[ok.to_owned()]).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "https://127.0.0.1",
            "x",
        ] {
            assert!(Targets::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(Targets::new(&[]).is_err());
    }

    #[test]
    fn consecutive_users_land_on_different_targets() {
        let urls: Vec<String> = (1..=3)
            .map(|i| format!("http://127.0.0.1:808{i}"))
            .collect();
        let t = Targets::new(&urls).unwrap();
        for pair in 0..10 {
            assert_ne!(t.of(2 * pair), t.of(2 * pair + 1));
        }
    }
}
