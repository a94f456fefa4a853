//! The `idle-connections` scenario: memory per idle, authenticated connection.
//!
//! Every user is registered and logged in first (password hashing is deliberately expensive
//! in memory and CPU, so it is kept out of the measurement), then the server is sampled, then
//! every user opens one WebSocket (`window` at a time, started at `rate`/s, 0 as fast as the
//! window allows), the connections settle for `warmup_secs` and are held for
//! `duration_secs`, and the server is sampled again. The growth of the server's resident
//! memory over the open connections is the memory per connection; the load generator's own
//! growth is reported beside it. Connections send only the SDK's heartbeat.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::Connection;
use futures_util::StreamExt;

use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{sample, spawn_progress, Clock, Outcome, RunConfig};
use crate::setup::{self, Targets};

pub(crate) async fn run_idle(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let users = scenario.users as usize;
    let setup_started = Instant::now();
    let mut tally = Tally::default();
    let accounts = crate::common::register_users(config, targets, prefix, true, &mut tally).await?;
    let setup = setup_started.elapsed();

    // Let the server settle after the hashing, then sample it with nothing connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (server_a, self_a) = sample(config);
    let connect_started = Instant::now();
    let clock = Clock::new(connect_started, scenario);
    let hard_end = clock.send_end + Duration::from_secs(600);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let window = scenario.window.unwrap_or(1) as usize;
    let interval = (scenario.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / scenario.rate));
    let opened = futures_util::stream::iter(accounts.iter().enumerate().map(|(i, user)| {
        let live = Arc::clone(&live);
        async move {
            let intended =
                interval.map_or_else(Instant::now, |iv| connect_started + iv.mul_f64(i as f64));
            crate::pace::sleep_until(intended).await;
            let mut t = Tally::default();
            let r = setup::connect_user(targets, user, &mut t, false, None).await;
            let done = Instant::now();
            let conn = match r {
                Ok((conn, _)) => {
                    t.connect.record(done.saturating_duration_since(intended));
                    Live::add(&live.setups);
                    live.connection_opened();
                    Some(conn)
                }
                Err(e) => {
                    t.error(format!("connect_{}", crate::metrics::error_key(&e)));
                    t.error_examples
                        .entry(format!("connect_{}", crate::metrics::error_key(&e)))
                        .or_insert(e.to_string());
                    Live::add(&live.errors);
                    None
                }
            };
            (t, conn)
        }
    }))
    .buffer_unordered(window)
    .collect::<Vec<_>>()
    .await;
    let connected_in = connect_started.elapsed();
    let mut connections = Connections::default();
    let mut conns: Vec<Arc<Connection>> = Vec::with_capacity(users);
    for (t, conn) in opened {
        tally.merge(&t);
        match conn {
            Some(c) => {
                connections.opened += 1;
                conns.push(Arc::new(c));
            }
            None => connections.failed += 1,
        }
    }
    tally.setups_measured = connections.opened;
    tokio::time::sleep(scenario.warmup()).await;
    let hold_started = Instant::now();
    tokio::time::sleep(scenario.duration()).await;
    let (server_b, self_b) = sample(config);
    // A connection the server closed while idle is a failure of this scenario.
    let mut still_open = 0i64;
    for c in &conns {
        match c.close_status() {
            None => still_open += 1,
            Some(info) => {
                let key = format!(
                    "closed_idle_{}",
                    info.code.map_or("none".into(), |c| c.to_string())
                );
                tally.error(key);
            }
        }
    }
    connections.open_at_end = still_open;
    let measured = hold_started.elapsed() + connected_in + scenario.warmup();
    if let Some(p) = progress {
        p.abort();
    }
    crate::common::close_conns(conns).await;
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
