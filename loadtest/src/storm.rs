//! The `connect-storm` scenario: register, log in and connect many users, `window` at a time,
//! and hold the connections until the end so that the server's memory per connection shows.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::Connection;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{sample, spawn_progress, Clock, Outcome, RunConfig};
use crate::setup::{self, Targets};

/// How long set-ups still running at the end of the window may take before they are dropped.
const SETUP_GRACE: Duration = Duration::from_secs(60);

pub(crate) async fn run_storm(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let window = scenario.window.unwrap_or(1) as usize;
    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let hard_end = clock.send_end + SETUP_GRACE;
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let targets = Arc::new(targets.clone());
    let prefix: Arc<str> = Arc::from(prefix);
    let (server_a, self_a) = sample(config);

    let mut tally = Tally::default();
    let mut connections = Connections::default();
    let mut conns: Vec<Arc<Connection>> = Vec::new();
    let mut last_done = clock.measure_start;
    let slots = Arc::new(Semaphore::new(window));
    let mut tasks = JoinSet::new();
    let interval = (scenario.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / scenario.rate));
    tokio::time::sleep_until(clock.start.into()).await;
    for i in 0..scenario.users as usize {
        // Open loop when paced: the set-up's latency counts from its slot, queueing included.
        let slot = interval.map(|iv| clock.start + iv.mul_f64(i as f64));
        if let Some(t) = slot {
            if t >= clock.send_end {
                break;
            }
            crate::pace::sleep_until(t).await;
        }
        let acquire = Arc::clone(&slots).acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout_at(clock.send_end.into(), acquire).await else {
            break;
        };
        let intended = slot.unwrap_or_else(Instant::now);
        if Instant::now() >= clock.send_end {
            break;
        }
        // Reap the finished set-ups as we go, so that their tallies do not pile up.
        while let Some(joined) = tasks.try_join_next() {
            reap(
                joined,
                &mut tally,
                &mut connections,
                &mut conns,
                &mut last_done,
            );
        }
        let targets = Arc::clone(&targets);
        let prefix = Arc::clone(&prefix);
        let live = Arc::clone(&live);
        tasks.spawn(async move {
            let _permit = permit;
            let mut t = Tally::default();
            let record = clock.measured(intended);
            let r = setup::set_up_user(&targets, &prefix, i, &mut t, record).await;
            let done = Instant::now();
            let conn = match r {
                Ok((_, conn, _)) => {
                    Live::add(&live.setups);
                    live.connection_opened();
                    if record {
                        t.setup.record(done.saturating_duration_since(intended));
                    }
                    if clock.in_window(done) {
                        t.setups_measured += 1;
                    }
                    Some(conn)
                }
                Err(e) => {
                    t.error(format!("setup_{}", crate::metrics::error_key(&e)));
                    None
                }
            };
            Live::add_n(&live.errors, t.errors.values().sum());
            (t, conn, done)
        });
    }

    // Bounded: every set-up step has a request timeout, and the whole wait has `hard_end`.
    while let Ok(Some(joined)) = tokio::time::timeout_at(hard_end.into(), tasks.join_next()).await {
        reap(
            joined,
            &mut tally,
            &mut connections,
            &mut conns,
            &mut last_done,
        );
    }
    if !tasks.is_empty() {
        tally.error("setup_abandoned");
        tasks.abort_all();
    }
    // All set-ups done (or the window over): measure with every connection still open.
    let (server_b, self_b) = sample(config);
    connections.open_at_end = live.connections();
    let measured = last_done
        .min(clock.send_end)
        .saturating_duration_since(clock.measure_start);
    if let Some(p) = progress {
        p.abort();
    }
    crate::common::close_conns(conns).await;
    Ok(Outcome {
        tally,
        setup: Duration::ZERO,
        measured,
        drained: Duration::ZERO,
        connections,
        server: server_a.zip(server_b),
        loadgen: self_a.zip(self_b),
    })
}

type SetUp = (Tally, Option<Connection>, Instant);

/// Adds one finished set-up to the run's totals.
fn reap(
    joined: Result<SetUp, tokio::task::JoinError>,
    tally: &mut Tally,
    connections: &mut Connections,
    conns: &mut Vec<Arc<Connection>>,
    last_done: &mut Instant,
) {
    let Ok((t, conn, done)) = joined else {
        tally.error("setup_task_failed");
        return;
    };
    tally.merge(&t);
    match conn {
        Some(c) => {
            connections.opened += 1;
            conns.push(Arc::new(c));
        }
        None => connections.failed += 1,
    }
    *last_done = (*last_done).max(done);
}
