//! The `reconnect-storm` scenario: every user is connected, then every connection drops at
//! once (as when a node restarts or a network blips) and every user reconnects, resuming its
//! event stream, `window` at a time (started at `rate`/s; 0 as fast as the window allows).
//! Storms repeat back to back until the measured window ends; the first `warmup_secs` of
//! storms are not recorded.
//!
//! Each reconnect's latency (`connect`) is measured from the storm's start (or from its slot
//! when paced), so it includes the time spent queued behind the other reconnects: it is the
//! time until that user is back. Connections drop without a WebSocket close frame (the socket
//! is simply closed), as a crash or a network failure would leave them. No messages are sent
//! in this version, so the checker has nothing to judge but stray pushes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{lock, sample, spawn_progress, Clock, Outcome, RunConfig};
use crate::setup::{self, Targets};

pub(crate) async fn run_reconnect(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: crate::run::SharedChecker,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let setup_started = Instant::now();
    let mut tally = Tally::default();
    let mut connections = Connections::default();
    let (sides, _) = crate::common::set_up_users(
        config,
        targets,
        prefix,
        &checker,
        &live,
        &mut tally,
        &mut connections,
    )
    .await?;
    let setup = setup_started.elapsed();
    let users: Vec<setup::User> = sides.iter().map(|s| s.user.clone()).collect();
    let mut cursors: Vec<chat_types::EventSeq> =
        sides.iter().map(|s| s.conn.last_event_seq()).collect();
    let mut observers: Vec<_> = sides.iter().map(|s| s.observer).collect();
    let mut conns: Vec<Option<chat_client::Connection>> = Vec::with_capacity(users.len());
    for side in sides {
        // The only holder: unwrapping lets the storm drop the socket itself.
        conns.push(
            Arc::try_unwrap(side)
                .ok()
                .and_then(|s| Arc::try_unwrap(s.conn).ok()),
        );
    }

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let hard_end = clock.send_end + Duration::from_secs(120);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let window = scenario.window.unwrap_or(1) as usize;
    let interval = (scenario.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / scenario.rate));
    tokio::time::sleep_until(clock.start.into()).await;
    let mut storms = 0u64;
    let mut server_a = None;
    let mut self_a = None;
    while Instant::now() < clock.send_end {
        let storm = Instant::now();
        let record = clock.measured(storm);
        if record && server_a.is_none() {
            (server_a, self_a) = sample(config);
        }
        // Drop every connection at once.
        {
            let mut c = lock(&checker);
            for o in &observers {
                c.observer_closed(*o);
            }
        }
        for c in conns.iter_mut() {
            if c.take().is_some() {
                live.connection_closed();
            }
        }
        let results = futures_util::stream::iter(users.iter().enumerate().map(|(i, user)| {
            let live = Arc::clone(&live);
            let resume = cursors[i];
            async move {
                let intended = interval.map_or(storm, |iv| storm + iv.mul_f64(i as f64));
                tokio::time::sleep_until(intended.into()).await;
                let mut t = Tally::default();
                let r = setup::connect_user(targets, user, &mut t, false, Some(resume)).await;
                let done = Instant::now();
                match r {
                    Ok((conn, _)) => {
                        Live::add(&live.setups);
                        live.connection_opened();
                        if record {
                            t.connect.record(done.saturating_duration_since(intended));
                        }
                        if clock.in_window(done) {
                            t.setups_measured += 1;
                        }
                        (i, t, Some(conn))
                    }
                    Err(e) => {
                        let key = format!("reconnect_{}", crate::metrics::error_key(&e));
                        t.error_examples.entry(key.clone()).or_insert(e.to_string());
                        t.error(key);
                        Live::add(&live.errors);
                        (i, t, None)
                    }
                }
            }
        }))
        .buffer_unordered(window)
        .collect::<Vec<_>>()
        .await;
        storms += 1;
        for (i, t, conn) in results {
            tally.merge(&t);
            match conn {
                Some(c) => {
                    connections.opened += 1;
                    observers[i] = lock(&checker).observer_opened(users[i].user_id);
                    cursors[i] = cursors[i].max(c.last_event_seq());
                    conns[i] = Some(c);
                }
                None => connections.failed += 1,
            }
        }
        if Instant::now() >= hard_end {
            break;
        }
    }
    let (server_b, self_b) = sample(config);
    if server_a.is_none() {
        // Every storm ran in the warm-up: sample the last one instead of nothing.
        tally.error("no_storm_measured");
    }
    let measured = Instant::now().saturating_duration_since(clock.measure_start);
    connections.open_at_end = live.connections();
    if let Some(p) = progress {
        p.abort();
    }
    if config.progress {
        eprintln!("reconnect-storm: {storms} storms of {} users", users.len());
    }
    let remaining: Vec<Arc<chat_client::Connection>> =
        conns.into_iter().flatten().map(Arc::new).collect();
    crate::common::close_conns(remaining).await;
    Ok(Outcome {
        tally,
        setup,
        measured,
        drained: Duration::ZERO,
        connections,
        server: server_a.zip(server_b),
        loadgen: self_a.zip(self_b),
    })
}
