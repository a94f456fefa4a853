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

/// The targets of a run: one HTTP client per node, the base URLs as given, and the source
/// addresses connections are spread over, if any.
#[derive(Clone, Debug)]
pub struct Targets {
    pub urls: Vec<String>,
    pub apis: Vec<HttpApi>,
    /// Local addresses the users' sockets are bound to, user by user (empty: the system
    /// picks, as usual). See [`Targets::with_sources`].
    pub sources: Vec<IpAddr>,
    /// One HTTP client per target and source (empty without sources).
    source_apis: Vec<Vec<HttpApi>>,
}

/// The most source addresses a run may spread its connections over (127.0.0.1 to .254).
pub const MAX_SOURCE_ADDRS: u32 = 254;

impl Targets {
    /// Checks that every target is an `http://` URL on a loopback address (load is only ever
    /// sent to this machine) and builds a client for each.
    pub fn new(urls: &[String]) -> anyhow::Result<Targets> {
        if urls.is_empty() {
            bail!("no target: give at least one --target http://127.0.0.1:PORT");
        }
        let mut apis = Vec::new();
        for url in urls {
            loopback_host(url)?;
            apis.push(HttpApi::new(url).with_context(|| format!("target {url:?}"))?);
        }
        Ok(Targets {
            urls: urls.to_vec(),
            apis,
            sources: Vec::new(),
            source_apis: Vec::new(),
        })
    }

    /// [`Targets::new`], with the users' WebSocket and HTTP sockets spread over the source
    /// addresses `127.0.0.1` to `127.0.0.<n>` when `n` is given, so that one machine can
    /// open more than ~28k connections (one ephemeral port range per source address) to one
    /// node. Only for targets given as IPv4 loopback addresses (`127.x.y.z`).
    pub fn with_sources(urls: &[String], n: Option<u32>) -> anyhow::Result<Targets> {
        let mut targets = Targets::new(urls)?;
        let Some(n) = n else {
            return Ok(targets);
        };
        if n == 0 || n > MAX_SOURCE_ADDRS {
            bail!("source_addrs must be 1 to {MAX_SOURCE_ADDRS}, not {n}");
        }
        for url in urls {
            match loopback_host(url)? {
                (_, Some(IpAddr::V4(_))) => {}
                _ => bail!(
                    "target {url:?}: source addresses (127.0.0.1 to 127.0.0.{n}) need targets \
                     named by an IPv4 loopback address, e.g. http://127.0.0.1:8080"
                ),
            }
        }
        targets.sources = (1..=n)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i as u8)))
            .collect();
        for url in urls {
            let mut per_source = Vec::new();
            for source in &targets.sources {
                per_source.push(
                    HttpApi::with_local_addr(
                        url,
                        chat_client::DEFAULT_REQUEST_TIMEOUT,
                        Some(*source),
                    )
                    .with_context(|| format!("target {url:?} from {source}"))?,
                );
            }
            targets.source_apis.push(per_source);
        }
        Ok(targets)
    }

    /// The target of user number `index`: round-robin, so that consecutive users (the two
    /// users of a pair) are on different nodes whenever there are several.
    pub fn of(&self, index: usize) -> usize {
        index % self.apis.len()
    }

    /// The source address of user number `index` (`None`: the system picks). Users of one
    /// target go round-robin over every source.
    pub fn source_of(&self, index: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        Some(self.sources[(index / self.apis.len()) % self.sources.len()])
    }

    /// The HTTP client user number `index` talks to its target with (bound to its source
    /// address when the run has several).
    pub fn api_of(&self, index: usize) -> &HttpApi {
        let target = self.of(index);
        match self.source_apis.get(target) {
            Some(per_source) if !per_source.is_empty() => {
                &per_source[(index / self.apis.len()) % per_source.len()]
            }
            _ => &self.apis[target],
        }
    }
}

/// Checks that `url` is an `http://` URL on a loopback host; returns the host and, unless it
/// is `localhost`, its address.
fn loopback_host(url: &str) -> anyhow::Result<(String, Option<IpAddr>)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("target {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("target {url:?}: only http:// targets are supported");
    }
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse::<IpAddr>().ok();
    let loopback = host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "target {url:?}: the load tester only targets loopback addresses \
             (127.0.0.0/8, ::1, localhost)"
        );
    }
    Ok((host.to_owned(), ip))
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
    let user = register_user(targets, prefix, index, tally, record).await?;
    log_in(targets, user, tally, record).await
}

/// Registers user `index` without logging it in (its `token` is empty), recording the
/// latency in `tally`.
pub async fn register_user(
    targets: &Targets,
    prefix: &str,
    index: usize,
    tally: &mut Tally,
    record: bool,
) -> Result<User, ClientError> {
    let target = targets.of(index);
    let api = targets.api_of(index);
    let name = username(prefix, index);
    if validate_username(&name).is_err() {
        return Err(ClientError::Protocol(format!(
            "generated username {name:?} breaks the username rule"
        )));
    }
    let t = Instant::now();
    let registered = retry(tally, || api.register(&name, PASSWORD)).await?;
    if record {
        tally.register.record(t.elapsed());
    }
    Ok(User {
        index,
        username: name,
        user_id: registered.user_id,
        token: String::new(),
        target,
    })
}

/// Logs `user` in (`POST /v1/login`), retrying retryable refusals, and returns it with its
/// new token; records the latency in `tally`.
pub async fn log_in(
    targets: &Targets,
    mut user: User,
    tally: &mut Tally,
    record: bool,
) -> Result<User, ClientError> {
    let api = targets.api_of(user.index);
    let t = Instant::now();
    let login: LoginResponse = retry(tally, || api.login(&user.username, PASSWORD)).await?;
    if record {
        tally.login.record(t.elapsed());
    }
    user.username = login.username;
    user.user_id = login.user_id;
    user.token = login.token;
    Ok(user)
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
        local_addr: targets.source_of(user.index),
        ..ConnectionConfig::default()
    };
    let url = targets.apis[user.target].ws_url(&user.token);
    let (conn, welcome) = retry(tally, || Connection::connect_with(&url, config.clone())).await?;
    if record {
        tally.connect.record(t.elapsed());
    }
    Ok((conn, welcome))
}

/// Connects `user` as [`connect_user`] does (not recorded), and when its node cannot be
/// reached at all (the WebSocket transport fails: the node is down), tries the other targets
/// in turn, as a client behind a load balancer does. Returns the target that answered.
pub async fn connect_user_anywhere(
    targets: &Targets,
    user: &User,
    tally: &mut Tally,
    resume_from: Option<chat_types::EventSeq>,
) -> Result<(Connection, Welcome, usize), ClientError> {
    let n = targets.apis.len();
    let mut unreachable = None;
    for k in 0..n {
        let target = (user.target + k) % n;
        let at = User {
            target,
            ..user.clone()
        };
        match connect_user(targets, &at, tally, false, resume_from).await {
            Ok((conn, welcome)) => return Ok((conn, welcome, target)),
            Err(e @ ClientError::Ws(_)) => unreachable = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(unreachable.unwrap_or_else(|| ClientError::Ws("no target".into())))
}

/// The first target, from `user`'s own on, whose HTTP API answers `user` at all (any reply,
/// even a refusal, means the node is up); `user`'s own when none does.
pub async fn reachable_target(targets: &Targets, user: &User) -> usize {
    let n = targets.apis.len();
    for k in 0..n {
        let target = (user.target + k) % n;
        match targets.apis[target].my_profile(&user.token).await {
            Err(ClientError::Http(_)) => continue,
            _ => return target,
        }
    }
    user.target
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

    #[test]
    fn sources_spread_every_target_over_every_address() {
        let urls: Vec<String> = (1..=2)
            .map(|i| format!("http://127.0.0.1:808{i}"))
            .collect();
        let plain = Targets::with_sources(&urls, None).unwrap();
        assert_eq!(plain.source_of(5), None);
        let t = Targets::with_sources(&urls, Some(4)).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.sources.first(), Some(&ip("127.0.0.1")));
        assert_eq!(t.sources.last(), Some(&ip("127.0.0.4")));
        // Users 0, 2, 4, 6 are on target 0, each from another source.
        let on_first: Vec<_> = [0, 2, 4, 6, 8].iter().map(|&i| t.source_of(i)).collect();
        assert_eq!(
            on_first,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.1"
            ]
            .map(|s| Some(ip(s)))
        );
        assert_eq!(t.source_of(1), Some(ip("127.0.0.1")));
        for bad in [Some(0), Some(255)] {
            let err = Targets::with_sources(&urls, bad).unwrap_err();
            assert!(err.to_string().contains("source_addrs"), "{err}");
        }
        for host in ["localhost", "[::1]"] {
            let err = Targets::with_sources(&[format!("http://{host}:8080")], Some(2)).unwrap_err();
            assert!(err.to_string().contains("IPv4 loopback"), "{err}");
        }
    }
}
