//! The `login-storm` scenario: logins per second with pre-registered users.
//!
//! The set-up registers `users` users (untimed: registration hashes a password, deliberately
//! slow; see `[auth]` in the node's configuration). Then logins (`POST /v1/login`, which hashes
//! the password again) run on an open-loop schedule of `rate` per second in all (0: as fast
//! as `window` logins in flight allow), user after user round and round, spread over a few
//! loops. With `[login] connect = true` each new token also opens a WebSocket (hello/welcome),
//! which is then closed in the background (the close handshake is not measured and holds no
//! slot of the window). A refused login is not retried: it counts under its error code
//! (`login_<code>`), so that rate limiting shows.
//!
//! Latencies: `login` from the login's intended time (queueing included), `connect` from the
//! login's end, `setup` login and connect from the intended time. Rates: `logins` (and
//! `connects`) per second in the window; server CPU per login.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::{Connection, ConnectionConfig};

use crate::common::{self, run_schedule, Flow, Schedule};
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{spawn_progress, Clock, Outcome, RunConfig};
use crate::setup::{self, Targets, User};

/// Loops the logins are spread over (each with its share of the rate and the window).
const LOGIN_LOOPS: usize = 4;

pub(crate) async fn run_login(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let connect = scenario.login.as_ref().is_some_and(|l| l.connect);
    let setup_started = Instant::now();
    let mut tally = Tally::default();
    let users = common::register_users(config, targets, prefix, false, &mut tally).await?;
    let setup = setup_started.elapsed();
    // Let the server settle after the hashing of the set-up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let hard_end = clock.send_end + common::SENDER_GRACE;
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let users = Arc::new(users);
    let targets = Arc::new(targets.clone());
    let window = scenario.window.unwrap_or(1) as usize;
    let loops = LOGIN_LOOPS.min(window);
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let share = window / loops + usize::from(i < window % loops);
            let schedule = if scenario.rate > 0.0 {
                Schedule::share(scenario.rate, loops, i)
            } else {
                Schedule::Unpaced
            };
            tokio::spawn(login_loop(
                clock,
                Arc::clone(&targets),
                Arc::clone(&users),
                Arc::clone(&live),
                schedule,
                share,
                (i, loops),
                connect,
            ))
        })
        .collect();
    let samples = common::sample_window(config, &clock).await;
    let mut connections = Connections::default();
    common::join_tasks(tasks, hard_end, "login", &mut tally).await?;
    if let Some(p) = progress {
        p.abort();
    }
    if let Some((ok, _)) = tally.ops.get("connects") {
        connections.opened = *ok;
    }
    connections.failed = tally
        .errors
        .iter()
        .filter(|(k, _)| k.starts_with("connect_"))
        .map(|(_, v)| v)
        .sum();
    tally.setups_measured = tally.ops.get("logins").map_or(0, |o| o.1);
    Ok(Outcome {
        tally,
        setup,
        measured: scenario.duration(),
        drained: Duration::ZERO,
        connections,
        server: samples.server,
        loadgen: samples.loadgen,
    })
}

/// What one login (and connect) did: when it was due, when the login ended, when the
/// connect ended, and the error with its example if a step failed.
struct Attempt {
    intended: Instant,
    logged_in: Option<Instant>,
    connected: Option<Instant>,
    error: Option<(String, String)>,
}

/// Loop `i` of `n`: its logins are of users `i`, `i + n`, `i + 2n`, ... round and round.
#[allow(clippy::too_many_arguments)]
async fn login_loop(
    clock: Clock,
    targets: Arc<Targets>,
    users: Arc<Vec<User>>,
    live: Arc<Live>,
    schedule: Schedule,
    window: usize,
    (i, n): (usize, usize),
    connect: bool,
) -> Tally {
    let mut tally = Tally::default();
    run_schedule(
        clock,
        &schedule,
        window,
        &mut tally,
        |k, intended| {
            let index = (i + k as usize * n) % users.len();
            let user = users[index].clone();
            let targets = Arc::clone(&targets);
            Ok(async move { attempt(&targets, user, intended, connect).await })
        },
        |tally, a: Attempt| {
            let measured = clock.measured(a.intended);
            if let Some(at) = a.logged_in {
                Live::add(&live.setups);
                tally.op("logins", clock.in_window(at));
                if measured {
                    tally.login.record(at.saturating_duration_since(a.intended));
                }
                if let Some(done) = a.connected {
                    tally.op("connects", clock.in_window(done));
                    if measured {
                        tally.connect.record(done.saturating_duration_since(at));
                        tally
                            .setup
                            .record(done.saturating_duration_since(a.intended));
                    }
                }
            }
            if let Some((key, example)) = a.error {
                Live::add(&live.errors);
                tally.error_examples.entry(key.clone()).or_insert(example);
                tally.error(key);
            }
            Flow::Go
        },
    )
    .await;
    tally
}

async fn attempt(targets: &Targets, user: User, intended: Instant, connect: bool) -> Attempt {
    let mut a = Attempt {
        intended,
        logged_in: None,
        connected: None,
        error: None,
    };
    let api = targets.api_of(user.index);
    let login = match api.login(&user.username, setup::PASSWORD).await {
        Ok(l) => l,
        Err(e) => {
            a.error = Some((format!("login_{}", error_key(&e)), e.to_string()));
            return a;
        }
    };
    a.logged_in = Some(Instant::now());
    if !connect {
        return a;
    }
    let config = ConnectionConfig {
        heartbeat: false,
        local_addr: targets.source_of(user.index),
        ..ConnectionConfig::default()
    };
    match Connection::connect_with(&api.ws_url(&login.token), config).await {
        Ok((conn, _)) => {
            a.connected = Some(Instant::now());
            // Closed in the background: the close handshake is not what is measured, and it
            // must not hold a slot of the window (at most 2 s, so the open ones stay bounded).
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
            });
        }
        Err(e) => a.error = Some((format!("connect_{}", error_key(&e)), e.to_string())),
    }
    a
}
