//! One run of a scenario: set-up, load, drain, read-back, check, report.
//!
//! Time is laid out from one start instant: `warmup` (load runs, nothing is recorded in the
//! histograms), then the measured window of `duration`, then no new sends and up to `drain`
//! for outstanding pushes. Every send has an intended time on that schedule and every latency
//! is measured from it, so a server that stalls cannot hide the stall by slowing the load
//! generator down (no coordinated omission).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::checker::Checker;
use crate::metrics::{Live, Tally};
use crate::report::{Connections, OpRate, Report, Throughput, MAX_VIOLATIONS_KEPT, REPORT_FORMAT};
use crate::scenario::{Scenario, ScenarioKind};
use crate::scrape::{self, CounterDelta};
use crate::setup::{self, Targets};
use crate::sysstat::{loadavg, Machine, ProcSample, ProcStats};

/// What to run against what.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: Scenario,
    /// Base URLs of the nodes: `http://127.0.0.1:8080`. Loopback only.
    pub targets: Vec<String>,
    /// Server processes whose CPU and memory are sampled (summed).
    pub server_pids: Vec<u32>,
    /// Print a progress line to stderr once per second.
    pub progress: bool,
    /// The user name prefix; a fresh unique one when `None`.
    pub run_prefix: Option<String>,
    /// Threads of this process to sample as the server, by name: the in-process relay of
    /// `calibrate` ([`crate::relay::RELAY_THREAD`]). Added to `server_pids`.
    pub server_threads: Option<String>,
}

impl RunConfig {
    /// A run of `scenario` against `targets` with a progress line and nothing sampled.
    pub fn new(scenario: Scenario, targets: Vec<String>) -> RunConfig {
        RunConfig {
            scenario,
            targets,
            server_pids: Vec::new(),
            progress: true,
            run_prefix: None,
            server_threads: None,
        }
    }

    /// Whether anything stands for the server's CPU.
    pub fn samples_server(&self) -> bool {
        !self.server_pids.is_empty() || self.server_threads.is_some()
    }
}

/// The checker, shared by every task of a run.
pub(crate) type SharedChecker = Arc<Mutex<Checker>>;

/// Locks the checker (or other state a run's tasks share); a task that panicked while
/// holding it cannot have left it half-updated (every update is a few pushes or a swap), so
/// poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The instants every task schedules against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub start: Instant,
    pub measure_start: Instant,
    pub send_end: Instant,
}

impl Clock {
    pub fn new(start: Instant, scenario: &Scenario) -> Clock {
        let measure_start = start + scenario.warmup();
        Clock {
            start,
            measure_start,
            send_end: measure_start + scenario.duration(),
        }
    }

    /// Whether a send intended at `intended` counts in the histograms.
    pub fn measured(&self, intended: Instant) -> bool {
        intended >= self.measure_start
    }

    /// Whether an event at `at` counts in the measured rates.
    pub fn in_window(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.send_end
    }

    /// A message body of `size` bytes that carries its intended send time, so that the
    /// receiving task can measure delivery latency from it without shared state.
    pub fn body(&self, intended: Instant, size: usize) -> String {
        let us = intended.saturating_duration_since(self.start).as_micros();
        let mut body = format!("t{us}.");
        while body.len() < size {
            body.push('x');
        }
        body
    }

    /// The intended send time carried by a body made by [`Clock::body`].
    pub fn intended_of(&self, body: &str) -> Option<Instant> {
        let digits = body.strip_prefix('t')?.split('.').next()?;
        let us: u64 = digits.parse().ok()?;
        Some(self.start + Duration::from_micros(us))
    }
}

/// What every task of a run shares.
pub(crate) struct Ctx {
    pub scenario: Scenario,
    pub clock: Clock,
    pub checker: SharedChecker,
    pub live: Arc<Live>,
}

/// Runs `config` to the end and reports. A failed set-up (the server refuses to register,
/// unreachable target) is an error; contract violations are in the report's check.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    config.scenario.validate()?;
    let targets = Targets::with_sources(&config.targets, config.scenario.source_addrs)?;
    let prefix = config.run_prefix.clone().unwrap_or_else(setup::run_prefix);
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut machine = Machine::now();
    let live = Arc::new(Live::default());
    let checker: SharedChecker = Arc::new(Mutex::new(Checker::new()));
    let appended_before = scrape::scrape_sum(&targets.urls, scrape::APPENDED).await;

    let progress_stop = Arc::new(AtomicBool::new(false));
    let mut outcome = match config.scenario.kind {
        ScenarioKind::DmPingpong | ScenarioKind::DmFlood => {
            crate::dm::run_dm(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::GroupFanout => {
            crate::group::run_group(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::ReconnectStorm => {
            crate::reconnect::run_reconnect(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::HistoryPaging => {
            crate::history::run_history(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::Broadcast => {
            crate::broadcast::run_broadcast(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::IdleConnections => {
            crate::idle::run_idle(
                &config,
                &targets,
                &prefix,
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::Mixed => {
            crate::mixed::run_mixed(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::Search => {
            crate::search::run_search(
                &config,
                &targets,
                &prefix,
                Arc::clone(&checker),
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::LoginStorm => {
            crate::login::run_login(
                &config,
                &targets,
                &prefix,
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
        ScenarioKind::ConnectStorm => {
            crate::storm::run_storm(
                &config,
                &targets,
                &prefix,
                Arc::clone(&live),
                Arc::clone(&progress_stop),
            )
            .await?
        }
    };
    progress_stop.store(true, Ordering::Relaxed);

    let appended_after = scrape::scrape_sum(&targets.urls, scrape::APPENDED).await;
    machine.loadavg_after = loadavg();
    let mut check = lock(&checker).check();
    check.violations.truncate(MAX_VIOLATIONS_KEPT);
    let t = &outcome.tally;
    let mut latency = std::collections::BTreeMap::new();
    for (name, l) in [
        ("send_ack", &t.ack),
        ("send_delivery", &t.delivery),
        ("send_last_delivery", &t.last_delivery),
        ("history_page", &t.page),
        ("register", &t.register),
        ("login", &t.login),
        ("connect", &t.connect),
        ("setup", &t.setup),
    ] {
        if l.count() > 0 {
            latency.insert(name.to_owned(), l.summary());
        }
    }
    for (name, l) in &t.named {
        if l.count() > 0 {
            latency.insert(name.clone(), l.summary());
        }
    }
    let secs = outcome.measured.as_secs_f64();
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let throughput = Throughput {
        sends: t.sends,
        acks: t.acks,
        duplicate_acks: t.duplicate_acks,
        deliveries: t.deliveries,
        setups: Live::get(&live.setups),
        acks_per_sec: rate(t.acks_measured),
        deliveries_per_sec: rate(t.deliveries_measured),
        setups_per_sec: rate(t.setups_measured),
        pages: t.pages,
        pages_per_sec: rate(t.pages_measured),
        ops: t
            .ops
            .iter()
            .map(|(name, (count, measured))| {
                (
                    name.clone(),
                    OpRate {
                        count: *count,
                        per_sec: rate(*measured),
                    },
                )
            })
            .collect(),
    };
    let ops = match config.scenario.kind {
        ScenarioKind::ConnectStorm
        | ScenarioKind::IdleConnections
        | ScenarioKind::ReconnectStorm => t.setups_measured,
        ScenarioKind::HistoryPaging => t.pages_measured,
        ScenarioKind::Search => t.ops.get("search_queries").map_or(0, |o| o.1),
        ScenarioKind::LoginStorm => t.ops.get("logins").map_or(0, |o| o.1),
        _ => t.acks_measured,
    };
    let server = outcome.server.take().map(|(start, end)| {
        ProcStats::between(
            config.server_pids.clone(),
            &start,
            &end,
            outcome.measured,
            ops,
        )
    });
    let loadgen = outcome
        .loadgen
        .take()
        .map(|(start, end)| ProcStats::between(Vec::new(), &start, &end, outcome.measured, ops));
    let appended = match (appended_before, appended_after) {
        (Some(before), Some(after)) => Some(CounterDelta {
            name: scrape::APPENDED.into(),
            before,
            after,
            delta: after - before,
        }),
        _ => None,
    };
    Ok(Report {
        format: REPORT_FORMAT,
        scenario: config.scenario.clone(),
        run_prefix: prefix,
        targets: targets.urls.clone(),
        started_unix_ms,
        machine,
        setup_secs: outcome.setup.as_secs_f64(),
        measured_secs: secs,
        drain_secs: outcome.drained.as_secs_f64(),
        latency,
        throughput,
        errors: outcome.tally.errors.clone(),
        error_examples: outcome.tally.error_examples.clone(),
        connections: outcome.connections.clone(),
        server,
        loadgen,
        appended,
        check,
        timeline: live.timeline.get().map(|t| t.points()).unwrap_or_default(),
        ceiling: None,
        relay: config.server_threads.as_deref() == Some(crate::relay::RELAY_THREAD),
    })
}

/// What a scenario driver hands back to [`run`].
pub(crate) struct Outcome {
    pub tally: Tally,
    pub setup: Duration,
    pub measured: Duration,
    /// How long the drain waited for outstanding pushes after the last send.
    pub drained: Duration,
    pub connections: Connections,
    /// Samples of the server processes at the start and end of the measured window.
    pub server: Option<(ProcSample, ProcSample)>,
    pub loadgen: Option<(ProcSample, ProcSample)>,
}

/// Samples the servers and this process; `None` for what cannot be read.
pub(crate) fn sample(config: &RunConfig) -> (Option<ProcSample>, Option<ProcSample>) {
    let pids = &config.server_pids;
    let mut server = if pids.is_empty() {
        None
    } else {
        match ProcSample::read_all(pids) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("cannot sample server pids {pids:?}: {e}");
                None
            }
        }
    };
    let mut me = ProcSample::read_self().ok();
    if let Some(name) = &config.server_threads {
        match ProcSample::read_threads(name) {
            Ok(t) => {
                let s = server.get_or_insert_with(ProcSample::default);
                s.cpu_secs += t.cpu_secs;
                // The load generator is this process minus the server's threads.
                if let Some(me) = &mut me {
                    me.cpu_secs -= t.cpu_secs;
                }
            }
            Err(e) => eprintln!("cannot sample server threads {name}: {e}"),
        }
    }
    (server, me)
}

/// Prints one progress line per second to stderr until `stop` is set or `deadline` passes.
pub(crate) fn spawn_progress(
    live: Arc<Live>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (0u64, 0u64, 0u64);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(clock.start + Duration::from_secs(1)),
            Duration::from_secs(1),
        );
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            let phase = if now < clock.measure_start {
                "warm-up"
            } else if now < clock.send_end {
                "measure"
            } else {
                "drain"
            };
            let acks = Live::get(&live.acks);
            let deliveries = Live::get(&live.deliveries);
            let setups = Live::get(&live.setups);
            eprintln!(
                "[{:>4}s {:<7}] sent {:>9}  acked {:>9} ({:>7}/s)  delivered {:>9} ({:>7}/s)  \
                 set-ups {:>6} ({:>5}/s)  errors {:>5}  conns {:>6}",
                now.saturating_duration_since(clock.start).as_secs(),
                phase,
                Live::get(&live.sends),
                acks,
                acks - last.0,
                deliveries,
                deliveries - last.1,
                setups,
                setups - last.2,
                Live::get(&live.errors),
                live.connections()
            );
            last = (acks, deliveries, setups);
        }
    })
}

/// Waits up to `limit` for `done` to hold, checking every 10 ms.
pub(crate) async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An error's text with its context chain, for set-up failures.
pub(crate) fn setup_error(what: &str, e: chat_client::ClientError) -> anyhow::Error {
    anyhow::Error::new(e).context(what.to_owned())
}

/// Reads the full history of each conversation with the given token and target, paging with
/// `after`, and records it in the checker. At most 8 conversations are read at a time.
pub(crate) async fn read_histories(
    checker: &SharedChecker,
    reads: Vec<(chat_types::ConversationId, chat_client::HttpApi, String)>,
    limit: u32,
) {
    use futures_util::StreamExt;
    let results =
        futures_util::stream::iter(reads.into_iter().map(|(conv, api, token)| async move {
            (conv, read_history(&api, &token, conv, limit).await)
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut c = lock(checker);
    for (conv, result) in results {
        match result {
            Ok((head, messages)) => c.history_read(conv, head, &messages),
            Err(e) => c.history_failed(conv, format!("{e:#}")),
        }
    }
}

async fn read_history(
    api: &chat_client::HttpApi,
    token: &str,
    conv: chat_types::ConversationId,
    limit: u32,
) -> anyhow::Result<(chat_types::Seq, Vec<chat_types::Message>)> {
    use chat_types::rest::HistoryQuery;
    use chat_types::Seq;
    let mut after = Seq(0);
    let mut head = Seq(0);
    let mut messages = Vec::new();
    // Bounded: the first page names the head, which bounds the number of pages; a page that
    // does not advance ends the read.
    let mut pages_left: u64 = 1;
    while pages_left > 0 {
        pages_left -= 1;
        let query = HistoryQuery {
            after: Some(after),
            before: None,
            around: None,
            limit: Some(limit),
        };
        let page = api
            .history(token, conv, query)
            .await
            .with_context(|| format!("history of {conv} after {after}"))?;
        if head == Seq(0) && page.head > Seq(0) {
            pages_left = page.head.0 / u64::from(limit.max(1)) + 2;
        }
        head = head.max(page.head);
        let Some(last) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        messages.extend(page.messages);
        if last <= after {
            anyhow::bail!("history of {conv}: a page after {after} did not advance");
        }
        after = last;
        if after >= head {
            break;
        }
    }
    Ok((head, messages))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_body_carries_its_intended_time_and_has_the_asked_size() {
        let s = Scenario::from_toml(
            "kind = \"dm-pingpong\"\nusers = 2\nrate = 1\nduration_secs = 1\n",
            "t",
            "t",
        )
        .unwrap();
        let clock = Clock::new(Instant::now(), &s);
        let intended = clock.start + Duration::from_micros(1_234_567);
        let body = clock.body(intended, 64);
        assert_eq!(body.len(), 64);
        assert_eq!(clock.intended_of(&body), Some(intended));
        assert_eq!(clock.intended_of("hello"), None);
    }
}
