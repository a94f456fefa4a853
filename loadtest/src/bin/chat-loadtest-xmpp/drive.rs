//! The direct-message scenarios over XMPP: `dm-pingpong` (latency) and `dm-flood`
//! (throughput), shaped as chat-loadtest's own (`loadtest/src/dm.rs`) so that the two reports
//! compare.
//!
//! Users `2p` and `2p + 1` form pair `p` and send each other `type='chat'` messages addressed
//! to the bare JID. Each connection has a reader task that records the messages it receives;
//! the body carries the intended send time, so delivery latency is measured from the schedule
//! (open loop: a stalled server cannot hide its stall).
//!
//! XMPP has no acknowledgement of a message by the server unless stream management (XEP-0198)
//! is negotiated, which real clients use but which adds stanzas of its own. So this driver
//! measures what a user sees: the delivery at the other user. Ping-pong waits for that delivery
//! before the pair's next turn; flood keeps `window` messages per sender undelivered (an
//! end-to-end window: chat-loadtest's window counts sends not yet acknowledged).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use chat_loadtest::checker::Checker;
use chat_loadtest::metrics::{Latency, Live};
use chat_loadtest::report::{Connections, Report, Throughput, REPORT_FORMAT};
use chat_loadtest::sysstat::{loadavg, Machine, ProcSample, ProcStats};
use chat_loadtest::{Scenario, ScenarioKind};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::xml;
use crate::xmpp::{self, Sink, Stream};

/// How long a ping-pong turn waits for the delivery at the other user before moving on.
const PUSH_WAIT: Duration = Duration::from_secs(10);
/// The longest the drain waits for outstanding deliveries, however steadily they still arrive.
pub(crate) const MAX_DRAIN: Duration = Duration::from_secs(120);
/// Extra time after the window for senders to finish before they are abandoned.
pub(crate) const SENDER_GRACE: Duration = Duration::from_secs(60);
/// Largest message index a reader keeps track of (a bound on its memory: 16 MiB of bits).
pub(crate) const MAX_TRACKED: u64 = 128 * 1024 * 1024;

/// What to run against what.
#[derive(Clone, Debug)]
pub struct Config {
    pub scenario: Scenario,
    /// `ws://127.0.0.1:5280/ws`: loopback only.
    pub target: String,
    /// The XMPP domain the users live in.
    pub domain: String,
    /// group-fanout: the MUC service (`conference.<domain>` when absent).
    pub muc_service: Option<String>,
    /// Server processes to sample (with their descendants), summed.
    pub server_pids: Vec<u32>,
    pub progress: bool,
}

/// The instants every task schedules against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub(crate) start: Instant,
    pub(crate) measure_start: Instant,
    pub(crate) send_end: Instant,
}

impl Clock {
    pub(crate) fn new(start: Instant, scenario: &Scenario) -> Clock {
        let measure_start = start + scenario.warmup();
        Clock {
            start,
            measure_start,
            send_end: measure_start + scenario.duration(),
        }
    }

    pub(crate) fn measured(&self, intended: Instant) -> bool {
        intended >= self.measure_start
    }

    pub(crate) fn in_window(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.send_end
    }

    /// A body of `size` bytes carrying its intended send time (the same shape as
    /// chat-loadtest's bodies: `t<microseconds since start>.xxxx`).
    pub(crate) fn body(&self, intended: Instant, size: usize) -> String {
        let us = intended.saturating_duration_since(self.start).as_micros();
        let mut body = format!("t{us}.");
        while body.len() < size {
            body.push('x');
        }
        body
    }

    pub(crate) fn intended_of(&self, body: &str) -> Option<Instant> {
        let digits = body.strip_prefix('t')?.split('.').next()?;
        let us: u64 = digits.parse().ok()?;
        Some(self.start + Duration::from_micros(us))
    }
}

/// The number of slots `start + phase + k * interval` before `end`.
pub(crate) fn slots(start: Instant, phase: Duration, interval: Duration, end: Instant) -> u64 {
    let span = end.saturating_duration_since(start + phase);
    if interval.is_zero() {
        return 0;
    }
    span.as_nanos().div_ceil(interval.as_nanos()) as u64
}

pub(crate) fn slot(start: Instant, phase: Duration, interval: Duration, k: u64) -> Instant {
    start + phase + Duration::from_nanos((interval.as_nanos() as u64).saturating_mul(k))
}

/// A message's id: pair, sending side, index. Readers parse it back to check what arrives.
fn message_id(pair: usize, from: usize, k: u64) -> String {
    format!("{pair}-{from}-{k}")
}

fn parse_id(id: &str) -> Option<(usize, usize, u64)> {
    let mut it = id.split('-');
    let pair = it.next()?.parse().ok()?;
    let from = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    if it.next().is_some() || from > 1 {
        return None;
    }
    Some((pair, from, k))
}

/// The stanza of message `k` of `pair` from side `from` to `to_bare`.
fn message_stanza(to_bare: &str, pair: usize, from: usize, k: u64, body: &str) -> String {
    format!(
        "<message xmlns='jabber:client' to='{}' type='chat' id='{}'><body>{}</body></message>",
        xml::escape(to_bare),
        message_id(pair, from, k),
        xml::escape(body)
    )
}

/// What a pair's readers tell its ping-pong task.
#[derive(Clone, Copy, Debug)]
enum Event {
    Delivered(u64),
    Bounced(u64),
}

/// Two users online and what their tasks share.
struct Pair {
    index: usize,
    /// Bare JIDs.
    jids: [String; 2],
    sinks: [AsyncMutex<Sink>; 2],
    /// dm-flood: messages side `s` may still have undelivered.
    windows: [Semaphore; 2],
    /// dm-pingpong: deliveries and bounces, for the pair's task.
    events: mpsc::UnboundedSender<Event>,
    /// Messages written by each side.
    sent: [AtomicU64; 2],
}

/// What every task of a run shares.
pub(crate) struct Ctx {
    pub(crate) scenario: Scenario,
    pub(crate) clock: Clock,
    pub(crate) live: Arc<Live>,
    /// Messages the server sent back as errors.
    pub(crate) bounced: AtomicU64,
}

/// What one task measured.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) delivery: Latency,
    /// group-fanout: per message, until its last recipient got it.
    pub(crate) last_delivery: Latency,
    /// group-fanout: until the room reflected the message to its sender (the "ack").
    pub(crate) ack: Latency,
    /// Set-up steps of each user: WebSocket and stream open, in-band registration, SASL
    /// through presence; group-fanout adds the room join.
    pub(crate) connect: Latency,
    pub(crate) register: Latency,
    pub(crate) login: Latency,
    pub(crate) join: Latency,
    pub(crate) sends: u64,
    /// group-fanout: the senders' own echoes (first ones), and those inside the window.
    pub(crate) acks: u64,
    pub(crate) acks_measured: u64,
    pub(crate) duplicate_acks: u64,
    pub(crate) deliveries: u64,
    pub(crate) deliveries_measured: u64,
    pub(crate) bounced: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) error_examples: BTreeMap<String, String>,
    /// What each receiver saw of each sending side: per direction of each pair (index
    /// `2 * pair + from`), or in a group per (sender, recipient) (`sender * users + user`).
    pub(crate) tracks: BTreeMap<usize, Track>,
    pub(crate) phantoms: u64,
}

impl Tally {
    pub(crate) fn error(&mut self, key: impl Into<String>, example: impl FnOnce() -> String) {
        let key = key.into();
        self.error_examples
            .entry(key.clone())
            .or_insert_with(example);
        *self.errors.entry(key).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, o: Tally) {
        self.delivery.merge(&o.delivery);
        self.last_delivery.merge(&o.last_delivery);
        self.ack.merge(&o.ack);
        self.connect.merge(&o.connect);
        self.register.merge(&o.register);
        self.login.merge(&o.login);
        self.join.merge(&o.join);
        self.sends += o.sends;
        self.acks += o.acks;
        self.acks_measured += o.acks_measured;
        self.duplicate_acks += o.duplicate_acks;
        self.deliveries += o.deliveries;
        self.deliveries_measured += o.deliveries_measured;
        self.bounced += o.bounced;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.error_examples {
            self.error_examples.entry(k).or_insert(v);
        }
        for (k, t) in o.tracks {
            self.tracks.entry(k).or_default().absorb(t);
        }
        self.phantoms += o.phantoms;
    }
}

/// The messages of one direction of a pair that its receiver got.
#[derive(Debug, Default)]
pub(crate) struct Track {
    seen: Vec<u64>,
    max: Option<u64>,
    pub(crate) distinct: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) bounced: u64,
}

impl Track {
    /// Records message `k`; false if it was seen before.
    pub(crate) fn record(&mut self, k: u64) -> bool {
        let (word, bit) = ((k / 64) as usize, k % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        if self.max.is_some_and(|m| k < m) {
            self.reordered += 1;
        }
        self.max = Some(self.max.map_or(k, |m| m.max(k)));
        true
    }

    fn absorb(&mut self, o: Track) {
        // Each direction has one receiver (which fills `seen`); its bounces are counted by the
        // sender's reader, in a track of its own.
        if self.seen.is_empty() {
            self.seen = o.seen;
            self.max = o.max;
        }
        self.distinct += o.distinct;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.bounced += o.bounced;
    }
}

/// Runs the scenario to the end and reports, in chat-loadtest's report format.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let scenario = &config.scenario;
    scenario.validate()?;
    xmpp::check_target(&config.target)?;
    match scenario.kind {
        ScenarioKind::DmPingpong | ScenarioKind::DmFlood => {}
        ScenarioKind::GroupFanout => return crate::muc::run(config).await,
        _ => bail!(
            "{} is not supported over XMPP yet (dm-pingpong, dm-flood and group-fanout are)",
            scenario.kind.as_str()
        ),
    }
    let prefix = chat_loadtest::setup::run_prefix();
    let started_unix_ms = unix_ms();
    let mut machine = Machine::now();
    let live = Arc::new(Live::default());

    // Set-up: every user registered in band, logged in, bound and present.
    let setup_started = Instant::now();
    let mut connections = Connections::default();
    let mut tally = Tally::default();
    let online = set_up_users(config, &prefix, &mut tally, &mut connections).await?;
    let users = online.len();
    let setup = setup_started.elapsed();
    if config.progress {
        eprintln!(
            "[set-up] {users} users registered, logged in and present in {:.1}s",
            setup.as_secs_f64()
        );
    }

    let mut pairs = Vec::new();
    let mut streams: Vec<(usize, usize, Stream)> = Vec::new();
    let mut event_rx = Vec::new();
    let window = scenario.window.unwrap_or(1) as usize;
    let mut it = online.into_iter();
    for index in 0..scenario.pairs() {
        let (Some(a), Some(b)) = (it.next(), it.next()) else {
            bail!("pair {index} has fewer than two users");
        };
        let (tx, rx) = mpsc::unbounded_channel();
        event_rx.push(rx);
        streams.push((index, 0, a.stream));
        streams.push((index, 1, b.stream));
        live.connection_opened();
        live.connection_opened();
        pairs.push(Arc::new(Pair {
            index,
            jids: [xmpp::bare(&a.jid).to_owned(), xmpp::bare(&b.jid).to_owned()],
            sinks: [AsyncMutex::new(a.sink), AsyncMutex::new(b.sink)],
            windows: [Semaphore::new(window), Semaphore::new(window)],
            events: tx,
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
        }));
    }

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let Started {
        ctx,
        hard_end,
        progress,
        stop_tx,
        stop_rx,
    } = start(config, scenario, &live, clock);
    let mut readers = Vec::new();
    for (index, side, stream) in streams {
        readers.push(tokio::spawn(read_side(
            Arc::clone(&pairs[index]),
            side,
            stream,
            Arc::clone(&ctx),
            stop_rx.clone(),
            hard_end,
        )));
    }

    let mut senders = Vec::new();
    match scenario.kind {
        ScenarioKind::DmPingpong => {
            let per_pair = scenario.rate / pairs.len() as f64;
            let interval = Duration::from_secs_f64(1.0 / per_pair);
            for (pair, rx) in pairs.iter().zip(event_rx) {
                let phase = interval.mul_f64(pair.index as f64 / pairs.len() as f64);
                senders.push(tokio::spawn(pingpong(
                    Arc::clone(pair),
                    Arc::clone(&ctx),
                    rx,
                    interval,
                    phase,
                )));
            }
        }
        _ => {
            drop(event_rx);
            let sides_per_pair = if scenario.bidirectional { 2 } else { 1 };
            let senders_total = pairs.len() * sides_per_pair;
            let pace = (scenario.rate > 0.0)
                .then(|| Duration::from_secs_f64(senders_total as f64 / scenario.rate));
            for pair in &pairs {
                for side in 0..sides_per_pair {
                    let n = pair.index * sides_per_pair + side;
                    let phase = pace.map(|iv| iv.mul_f64(n as f64 / senders_total as f64));
                    senders.push(tokio::spawn(flood(
                        Arc::clone(pair),
                        side,
                        Arc::clone(&ctx),
                        window,
                        pace.zip(phase),
                    )));
                }
            }
        }
    }

    let (server, loadgen) = measure_and_join(config, &clock, senders, hard_end, &mut tally).await?;
    connections.open_at_end = live.connections();
    // Every message written is owed one delivery or one bounce; wait while they come.
    let owed = || {
        Live::get(&live.deliveries) + ctx.bounced.load(Ordering::Relaxed) < Live::get(&live.sends)
    };
    let drained = drain_and_collect(
        scenario,
        owed,
        || Live::get(&live.deliveries),
        &stop_tx,
        readers,
        hard_end,
        &mut tally,
    )
    .await;
    if let Some(p) = progress {
        p.abort();
    }
    close_all(&pairs).await;

    machine.loadavg_after = loadavg();
    let sent: Vec<[u64; 2]> = pairs
        .iter()
        .map(|p| {
            [
                p.sent[0].load(Ordering::Relaxed),
                p.sent[1].load(Ordering::Relaxed),
            ]
        })
        .collect();
    let verdict = pair_verdict(&sent, &tally);
    build_report(ReportParts {
        config,
        prefix,
        started_unix_ms,
        machine,
        setup,
        drained,
        tally,
        connections,
        server,
        loadgen,
        verdict,
        timeline: live.timeline.get().map(|t| t.points()).unwrap_or_default(),
    })
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Registers (in band), logs in, binds and presents the scenario's `users` users,
/// `setup_concurrency` at a time, recording each one's set-up steps; all of them online in
/// index order, or the first failure (after closing the others).
pub(crate) async fn set_up_users(
    config: &Config,
    prefix: &str,
    tally: &mut Tally,
    connections: &mut Connections,
) -> anyhow::Result<Vec<xmpp::Online>> {
    let scenario = &config.scenario;
    let password = format!("pw-{prefix}");
    let users = scenario.users as usize;
    let results = futures_util::stream::iter((0..users).map(|i| {
        let name = chat_loadtest::setup::username(prefix, i);
        let (target, domain, password) = (&config.target, &config.domain, &password);
        async move { (i, xmpp::set_up(target, domain, &name, password, true).await) }
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    let mut online: Vec<Option<xmpp::Online>> = (0..users).map(|_| None).collect();
    let mut first_error = None;
    for (i, r) in results {
        match r {
            Ok(o) => {
                connections.opened += 1;
                tally.connect.record(o.times.connect);
                tally.register.record(o.times.register);
                tally.login.record(o.times.login);
                online[i] = Some(o);
            }
            Err(e) => {
                connections.failed += 1;
                first_error.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = first_error {
        for o in online.into_iter().flatten() {
            let mut sink = o.sink;
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
        return Err(e.context(format!(
            "setting up user {i} on {} ({} of {users} users failed)",
            config.target, connections.failed
        )));
    }
    Ok(online.into_iter().flatten().collect())
}

/// The checker's counts, from what the clients saw (there is no stored history to read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) conversations: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// Distinct deliveries.
    pub(crate) deliveries: u64,
}

/// The direct scenarios' verdict: every message written by side `from` of pair `p`
/// (`sent[p][from]`) must reach the other user once, in order, or come back as an error.
fn pair_verdict(sent: &[[u64; 2]], tally: &Tally) -> Verdict {
    let mut v = Verdict {
        conversations: sent.len() as u64,
        ..Verdict::default()
    };
    for (pair, sent) in sent.iter().enumerate() {
        for (from, &n) in sent.iter().enumerate() {
            let track = tally.tracks.get(&(2 * pair + from));
            let got = track.map_or(0, |t| t.distinct + t.bounced);
            v.deliveries += track.map_or(0, |t| t.distinct);
            v.lost += n.saturating_sub(got);
            if let Some(tr) = track {
                v.duplicated += tr.duplicates;
                v.out_of_order += tr.reordered;
            }
        }
    }
    v
}

pub(crate) struct ReportParts<'a> {
    pub(crate) config: &'a Config,
    pub(crate) prefix: String,
    pub(crate) started_unix_ms: u64,
    pub(crate) machine: Machine,
    pub(crate) setup: Duration,
    pub(crate) drained: Duration,
    pub(crate) tally: Tally,
    pub(crate) connections: Connections,
    pub(crate) server: Option<(ProcSample, ProcSample)>,
    pub(crate) loadgen: Option<(ProcSample, ProcSample)>,
    pub(crate) verdict: Verdict,
    pub(crate) timeline: Vec<chat_loadtest::metrics::TimelinePoint>,
}

/// A chat-loadtest [`Report`], so that `chat-loadtest compare` reads it. It is built through
/// JSON rather than as a struct literal, so that fields the report gains later with a default
/// do not break this binary.
pub(crate) fn build_report(p: ReportParts<'_>) -> anyhow::Result<Report> {
    let scenario = &p.config.scenario;
    let t = &p.tally;
    let measured = scenario.duration();
    let secs = measured.as_secs_f64();
    let mut latency = BTreeMap::new();
    for (name, l) in [
        ("send_ack", &t.ack),
        ("send_delivery", &t.delivery),
        ("send_last_delivery", &t.last_delivery),
        ("connect", &t.connect),
        ("register", &t.register),
        ("login", &t.login),
        ("join", &t.join),
    ] {
        if l.count() > 0 {
            latency.insert(name.to_owned(), l.summary());
        }
    }
    let throughput = Throughput {
        sends: t.sends,
        acks: t.acks,
        duplicate_acks: t.duplicate_acks,
        acks_per_sec: t.acks_measured as f64 / secs,
        deliveries: t.deliveries,
        deliveries_per_sec: t.deliveries_measured as f64 / secs,
        ..Throughput::default()
    };
    // No server acks in plain XMPP: CPU is per message delivered inside the window, or, in a
    // room, per message reflected to its sender (as chat-loadtest's group-fanout: per ack).
    let ops = if t.acks > 0 {
        t.acks_measured
    } else {
        t.deliveries_measured
    };
    let server = p
        .server
        .map(|(a, b)| ProcStats::between(p.config.server_pids.clone(), &a, &b, measured, ops));
    let loadgen = p
        .loadgen
        .map(|(a, b)| ProcStats::between(Vec::new(), &a, &b, measured, ops));

    // The checker's verdict, from what the clients saw (see `Verdict`). There is no stored
    // history to read (archiving is off), so `history_messages` stays 0.
    let v = p.verdict;
    let mut check = Checker::new().check();
    check.conversations = v.conversations;
    check.sends = t.sends;
    check.acked = t.acks;
    check.duplicate_acks = t.duplicate_acks;
    check.failed = t.bounced;
    check.deliveries = v.deliveries;
    check.counts.lost = v.lost;
    check.counts.duplicated = v.duplicated;
    check.counts.out_of_order = v.out_of_order;
    check.counts.phantoms = t.phantoms;

    let value = serde_json::json!({
        "format": REPORT_FORMAT,
        "scenario": scenario,
        "run_prefix": p.prefix,
        "targets": [p.config.target],
        "started_unix_ms": p.started_unix_ms,
        "machine": p.machine,
        "setup_secs": p.setup.as_secs_f64(),
        "measured_secs": secs,
        "drain_secs": p.drained.as_secs_f64(),
        "latency": latency,
        "throughput": throughput,
        "errors": t.errors,
        "error_examples": t.error_examples,
        "connections": p.connections,
        "server": server,
        "loadgen": loadgen,
        "appended": null,
        "check": check,
        "timeline": p.timeline,
        "ceiling": null,
        "relay": false,
    });
    serde_json::from_value(value)
        .context("building a chat-loadtest report (has the report format changed?)")
}

/// Samples the servers (with every descendant process) and this process.
pub(crate) fn sample(pids: &[u32]) -> (Option<ProcSample>, Option<ProcSample>) {
    let server = if pids.is_empty() {
        None
    } else {
        match ProcSample::read_all(pids) {
            Ok(mut s) => {
                for child in descendants(pids) {
                    if let Ok(c) = ProcSample::read(child) {
                        s.cpu_secs += c.cpu_secs;
                        s.rss_kib += c.rss_kib;
                        s.hwm_kib += c.hwm_kib;
                    }
                }
                Some(s)
            }
            Err(e) => {
                eprintln!("cannot sample server pids {pids:?}: {e}");
                None
            }
        }
    };
    (server, ProcSample::read_self().ok())
}

/// Every live descendant of `roots` (from the parent pid in `/proc/<pid>/stat`).
fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = parent_pid(&stat) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !found.contains(&child) && !roots.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// Field 4 of a `/proc/<pid>/stat` line, counted from the last `)` (the command may hold any
/// character).
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// What a run shares once its users are set up and its clock is set.
pub(crate) struct Started {
    pub ctx: Arc<Ctx>,
    /// When every task of the run must have ended.
    pub hard_end: Instant,
    pub progress: Option<tokio::task::JoinHandle<()>>,
    /// Tells the readers to stop (after the drain).
    pub stop_tx: watch::Sender<bool>,
    pub stop_rx: watch::Receiver<bool>,
}

/// Starts the timeline and the progress line of a run timed by `clock`.
pub(crate) fn start(
    config: &Config,
    scenario: &Scenario,
    live: &Arc<Live>,
    clock: Clock,
) -> Started {
    live.start_timeline(
        clock.start,
        scenario.warmup_secs + scenario.duration_secs + MAX_DRAIN.as_secs_f64() + 10.0,
    );
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock,
        live: Arc::clone(live),
        bounced: AtomicU64::new(0),
    });
    let hard_end = clock.send_end + SENDER_GRACE + MAX_DRAIN + scenario.drain();
    let progress = config
        .progress
        .then(|| tokio::spawn(progress_line(Arc::clone(&ctx), hard_end)));
    let (stop_tx, stop_rx) = watch::channel(false);
    Started {
        ctx,
        hard_end,
        progress,
        stop_tx,
        stop_rx,
    }
}

/// A process's samples at the start and the end of the measured window.
type Sampled = Option<(ProcSample, ProcSample)>;

/// Samples the servers and this process over the measured window, then waits for the
/// senders (each at most until `hard_end`) and merges their tallies. Returns the servers'
/// and this process's samples.
pub(crate) async fn measure_and_join(
    config: &Config,
    clock: &Clock,
    senders: Vec<tokio::task::JoinHandle<Tally>>,
    hard_end: Instant,
    tally: &mut Tally,
) -> anyhow::Result<(Sampled, Sampled)> {
    tokio::time::sleep_until(clock.measure_start.into()).await;
    let (server_a, self_a) = sample(&config.server_pids);
    tokio::time::sleep_until(clock.send_end.into()).await;
    let (server_b, self_b) = sample(&config.server_pids);
    for s in senders {
        let left = hard_end.saturating_duration_since(Instant::now());
        let abort = s.abort_handle();
        match tokio::time::timeout(left, s).await {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => bail!("a sender task failed: {e}"),
            Err(_) => {
                abort.abort();
                tally.error("sender_abandoned", || "a sender did not finish".into());
            }
        }
    }
    Ok((server_a.zip(server_b), self_a.zip(self_b)))
}

/// Waits while `owed()` (what was sent is not all accounted for yet), until `arrived()` (a
/// count of what came) has not moved for the scenario's drain time, or [`MAX_DRAIN`] has
/// passed (then `drain_gave_up`); then stops the readers and merges their tallies, waiting
/// for each at most until `hard_end`. Returns how long the drain took.
pub(crate) async fn drain_and_collect(
    scenario: &Scenario,
    owed: impl Fn() -> bool,
    arrived: impl Fn() -> u64,
    stop_tx: &watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<Tally>>,
    hard_end: Instant,
    tally: &mut Tally,
) -> Duration {
    let drain_started = Instant::now();
    let mut last = (arrived(), Instant::now());
    while owed() && drain_started.elapsed() < MAX_DRAIN {
        let now = arrived();
        if now != last.0 {
            last = (now, Instant::now());
        }
        if last.1.elapsed() >= scenario.drain() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if owed() {
        tally.error("drain_gave_up", || {
            "messages were still undelivered when the drain gave up".into()
        });
    }
    let drained = drain_started.elapsed();
    let _ = stop_tx.send(true);
    for r in readers {
        let left = hard_end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if let Ok(Ok(t)) = tokio::time::timeout(left, r).await {
            tally.merge(t);
        }
    }
    drained
}

/// Writes `stanzas` to `sink` and flushes once (messages due together go out in one write);
/// the first error, if any.
pub(crate) async fn write_all(
    sink: &AsyncMutex<Sink>,
    stanzas: impl Iterator<Item = String>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut sink = sink.lock().await;
    for stanza in stanzas {
        sink.feed(WsMessage::Text(stanza)).await?;
    }
    sink.flush().await
}

/// The next `<message/>` stanza a reading task receives, with its text and arrival time;
/// `None` when the task is done: told to stop, past `deadline`, or the socket or stream
/// ended (the reason is tallied as an error). Other stanzas (presence, pings) and frames
/// that are not XML (tallied) are skipped.
pub(crate) async fn next_message(
    stream: &mut Stream,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
    tally: &mut Tally,
) -> Option<(String, xml::Element, Instant)> {
    loop {
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = stop.changed() => return None,
            _ = tokio::time::sleep_until(deadline.into()) => return None,
        };
        let text = match frame {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(c))) => {
                tally.error("closed", || {
                    format!("the server closed the WebSocket: {c:?}")
                });
                return None;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tally.error("websocket", || e.to_string());
                return None;
            }
            None => {
                tally.error("closed", || "the WebSocket ended".into());
                return None;
            }
        };
        let now = Instant::now();
        let el = match xml::parse(&text) {
            Ok(el) => el,
            Err(e) => {
                tally.error("bad_xml", || format!("{e}: {text:.200}"));
                continue;
            }
        };
        match el.local() {
            "message" => return Some((text, el, now)),
            "close" => {
                tally.error("stream_closed", || "the server closed the stream".into());
                return None;
            }
            "error" => {
                let cond = el.first_child_name().unwrap_or("?").to_owned();
                tally.error(format!("stream_error_{cond}"), || text.clone());
                return None;
            }
            // Presence (our own, echoed), pings and anything else: not ours to count.
            _ => continue,
        }
    }
}

/// Reads what side `side` of `pair` receives until told to stop or `deadline`.
async fn read_side(
    pair: Arc<Pair>,
    side: usize,
    mut stream: Stream,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut track = Track::default();
    let mut own_bounces = 0u64;
    let other = 1 - side;
    let flood = ctx.scenario.kind == ScenarioKind::DmFlood;
    while let Some((text, el, now)) =
        next_message(&mut stream, &mut stop, deadline, &mut tally).await
    {
        let parsed = el.attr("id").and_then(parse_id);
        if el.attr("type") == Some("error") {
            let cond = el
                .child("error")
                .and_then(|e| e.first_child_name())
                .unwrap_or("?")
                .to_owned();
            tally.error(format!("bounce_{cond}"), || text.clone());
            tally.bounced += 1;
            ctx.bounced.fetch_add(1, Ordering::Relaxed);
            Live::add(&ctx.live.errors);
            if let Some((p, from, k)) = parsed {
                if p == pair.index && from == side {
                    own_bounces += 1;
                    pair.windows[side].add_permits(1);
                    let _ = pair.events.send(Event::Bounced(k));
                }
            }
            continue;
        }
        let Some(body) = el.child("body") else {
            // Chat states and receipts carry no body; none of ours is like that.
            continue;
        };
        let Some((_, from, k)) =
            parsed.filter(|&(p, from, k)| p == pair.index && from == other && k < MAX_TRACKED)
        else {
            tally.phantoms += 1;
            continue;
        };
        if !track.record(k) {
            continue;
        }
        Live::add(&ctx.live.deliveries);
        tally.deliveries += 1;
        if ctx.clock.in_window(now) {
            tally.deliveries_measured += 1;
        }
        match ctx.clock.intended_of(&body.text) {
            Some(intended) => {
                let latency = now.saturating_duration_since(intended);
                ctx.live.timeline_delivery(now, latency);
                if ctx.clock.measured(intended) {
                    tally.delivery.record(latency);
                }
            }
            None => tally.error("foreign_body", || body.text.chars().take(80).collect()),
        }
        if flood {
            pair.windows[from].add_permits(1);
        } else {
            let _ = pair.events.send(Event::Delivered(k));
        }
    }
    ctx.live.connection_closed();
    tally.tracks.insert(2 * pair.index + other, track);
    tally.tracks.insert(
        2 * pair.index + side,
        Track {
            bounced: own_bounces,
            ..Track::default()
        },
    );
    tally
}

/// One pair taking turns: message `k` goes from side `k % 2` to the other, no earlier than
/// its slot and only after message `k - 1` was delivered (or bounced).
async fn pingpong(
    pair: Arc<Pair>,
    ctx: Arc<Ctx>,
    mut events: mpsc::UnboundedReceiver<Event>,
    interval: Duration,
    phase: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let n = slots(clock.start, phase, interval, clock.send_end);
    for k in 0..n {
        let intended = slot(clock.start, phase, interval, k);
        if Instant::now() >= clock.send_end {
            tally.errors.insert("unsent_behind_schedule".into(), n - k);
            break;
        }
        chat_loadtest::pace::sleep_until(intended).await;
        let from = (k % 2) as usize;
        let body = clock.body(intended, ctx.scenario.body_bytes);
        let stanza = message_stanza(&pair.jids[1 - from], pair.index, from, k, &body);
        let written = pair.sinks[from]
            .lock()
            .await
            .send(WsMessage::Text(stanza))
            .await;
        if let Err(e) = written {
            tally.error("send_failed", || e.to_string());
            break;
        }
        pair.sent[from].fetch_add(1, Ordering::Relaxed);
        Live::add(&ctx.live.sends);
        tally.sends += 1;
        let done = tokio::time::timeout(PUSH_WAIT, async {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Delivered(x) | Event::Bounced(x) if x == k => return true,
                    _ => {}
                }
            }
            false
        })
        .await;
        if !matches!(done, Ok(true)) {
            tally.error("push_wait_timeout", || {
                format!("no delivery within {PUSH_WAIT:?}")
            });
        }
    }
    tally
}

/// An open-loop sender's schedule: slot `k` is due at `phase + k * interval`, `slots` in
/// all, at most `window` unanswered (the semaphore's permits).
pub(crate) struct Paced<'a> {
    pub clock: &'a Clock,
    pub phase: Duration,
    pub interval: Duration,
    pub slots: u64,
    pub window: usize,
    pub sem: &'a Semaphore,
}

/// What a paced sender does next.
pub(crate) enum Step {
    /// The batch holds messages due now: write them.
    Write,
    /// Nothing to write yet (waited for a slot or for room); ask again.
    Again,
    /// The window is over (slots never sent are counted as `unsent_behind_schedule`).
    Done,
}

impl Paced<'_> {
    /// Fills `batch` (cleared by the caller) with the messages due now from `k` on, as many
    /// as the window has room for, taking a permit for each.
    pub(crate) async fn next_batch(
        &self,
        k: &mut u64,
        batch: &mut Vec<(u64, Instant)>,
        tally: &mut Tally,
    ) -> Step {
        let clock = self.clock;
        let now = Instant::now();
        if now >= clock.send_end {
            if *k < self.slots {
                tally
                    .errors
                    .insert("unsent_behind_schedule".into(), self.slots - *k);
            }
            return Step::Done;
        }
        let due = slot(clock.start, self.phase, self.interval, *k);
        if due > now {
            chat_loadtest::pace::sleep_until(due).await;
            return Step::Again;
        }
        match tokio::time::timeout_at(clock.send_end.into(), self.sem.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => return Step::Again,
        }
        batch.push((*k, due));
        *k += 1;
        let now = Instant::now();
        while *k < self.slots && batch.len() < self.window.max(1) {
            let due = slot(clock.start, self.phase, self.interval, *k);
            if due > now {
                break;
            }
            match self.sem.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
            batch.push((*k, due));
            *k += 1;
        }
        Step::Write
    }
}

/// One sender keeping up to `window` messages undelivered: unpaced (a new one as soon as one
/// is delivered) or, with `pace = (interval, phase)`, on an open-loop schedule capped by the
/// window. Messages that are due together go out in one write.
async fn flood(
    pair: Arc<Pair>,
    side: usize,
    ctx: Arc<Ctx>,
    window: usize,
    pace: Option<(Duration, Duration)>,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let sem = &pair.windows[side];
    let to = pair.jids[1 - side].clone();
    let limit = pace.map(|(iv, ph)| slots(clock.start, ph, iv, clock.send_end));
    let mut k: u64 = 0;
    let mut batch: Vec<(u64, Instant)> = Vec::with_capacity(window);
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        batch.clear();
        let now = Instant::now();
        match (pace, limit) {
            (Some((iv, ph)), Some(n)) => {
                if k >= n {
                    break;
                }
                let paced = Paced {
                    clock: &clock,
                    phase: ph,
                    interval: iv,
                    slots: n,
                    window,
                    sem,
                };
                match paced.next_batch(&mut k, &mut batch, &mut tally).await {
                    Step::Write => {}
                    Step::Again => continue,
                    Step::Done => break,
                }
            }
            _ => {
                if now >= clock.send_end {
                    break;
                }
                match tokio::time::timeout_at(clock.send_end.into(), sem.acquire()).await {
                    Ok(Ok(p)) => p.forget(),
                    _ => break,
                }
                let mut n = 1;
                while n < window {
                    match sem.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                    n += 1;
                }
                let intended = Instant::now();
                for _ in 0..n {
                    batch.push((k, intended));
                    k += 1;
                }
            }
        }
        let stanzas = batch.iter().map(|&(k, intended)| {
            let body = clock.body(intended, ctx.scenario.body_bytes);
            message_stanza(&to, pair.index, side, k, &body)
        });
        if let Err(e) = write_all(&pair.sinks[side], stanzas).await {
            tally.error("send_failed", || e.to_string());
            break;
        }
        let n = batch.len() as u64;
        pair.sent[side].fetch_add(n, Ordering::Relaxed);
        Live::add_n(&ctx.live.sends, n);
        tally.sends += n;
    }
    tally
}

/// Ends every stream politely (`<close/>`, then the WebSocket close), 2 s at most each.
async fn close_all(pairs: &[Arc<Pair>]) {
    let sinks = pairs.iter().flat_map(|p| p.sinks.iter());
    futures_util::stream::iter(sinks.map(|s| async move {
        let mut sink = s.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(WsMessage::Text(xmpp::close_frame())).await;
            let _ = sink.close().await;
        })
        .await;
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
}

/// One line a second on stderr: sends, deliveries and their rates, errors, connections.
pub(crate) async fn progress_line(ctx: Arc<Ctx>, deadline: Instant) {
    let clock = ctx.clock;
    let live = &ctx.live;
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(clock.start + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    while Instant::now() < deadline {
        tick.tick().await;
        let now = Instant::now();
        let phase = if now < clock.measure_start {
            "warm-up"
        } else if now < clock.send_end {
            "measure"
        } else {
            "drain"
        };
        let sends = Live::get(&live.sends);
        let deliveries = Live::get(&live.deliveries);
        eprintln!(
            "[{:>4}s {:<7}] sent {:>9} ({:>7}/s)  delivered {:>9} ({:>7}/s)  errors {:>5}  conns {:>5}",
            now.saturating_duration_since(clock.start).as_secs(),
            phase,
            sends,
            sends - last.0,
            deliveries,
            deliveries - last.1,
            Live::get(&live.errors),
            live.connections()
        );
        last = (sends, deliveries);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_id(&message_id(3, 1, 17)), Some((3, 1, 17)));
        for bad in ["", "3-1", "3-2-1", "a-0-1", "3-0-1-2", "purple"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_stanza_parses_back_with_its_body_time() {
        let s = Scenario::from_toml(
            "kind = \"dm-pingpong\"\nusers = 2\nrate = 1\nduration_secs = 1\n",
            "t",
            "t",
        )
        .unwrap();
        let clock = Clock::new(Instant::now(), &s);
        let intended = clock.start + Duration::from_micros(4_321);
        let body = clock.body(intended, 64);
        let el = xml::parse(&message_stanza("b@localhost", 2, 0, 9, &body)).unwrap();
        assert_eq!(el.attr("to"), Some("b@localhost"));
        assert_eq!(el.attr("id").and_then(parse_id), Some((2, 0, 9)));
        let text = &el.child("body").unwrap().text;
        assert_eq!(text.len(), 64);
        assert_eq!(clock.intended_of(text), Some(intended));
    }

    #[test]
    fn tracks_count_duplicates_and_reorders() {
        let mut t = Track::default();
        assert!(t.record(0));
        assert!(t.record(2));
        assert!(t.record(1));
        assert!(!t.record(2));
        assert!(t.record(200));
        assert_eq!((t.distinct, t.duplicates, t.reordered), (4, 1, 1));
    }

    #[test]
    fn parent_pids_are_read_after_the_command() {
        assert_eq!(parent_pid("12 (a) b) S 7 12 12"), Some(7));
        assert!(!descendants(&[std::process::id()]).contains(&std::process::id()));
    }

    #[test]
    fn an_empty_run_builds_a_report_compare_can_read() {
        let scenario = Scenario::from_toml(
            "kind = \"dm-flood\"\nusers = 2\nrate = 0\nwindow = 4\nduration_secs = 1\n",
            "t",
            "flood",
        )
        .unwrap();
        let config = Config {
            scenario,
            target: "ws://127.0.0.1:5280/ws".into(),
            domain: "localhost".into(),
            muc_service: None,
            server_pids: Vec::new(),
            progress: false,
        };
        let mut tally = Tally {
            sends: 3,
            ..Tally::default()
        };
        let mut track = Track::default();
        track.record(0);
        track.record(1);
        tally.tracks.insert(0, track);
        let verdict = pair_verdict(&[[3, 0]], &tally);
        let report = build_report(ReportParts {
            config: &config,
            prefix: "ltx".into(),
            started_unix_ms: 0,
            machine: Machine::default(),
            setup: Duration::ZERO,
            drained: Duration::ZERO,
            tally,
            connections: Connections::default(),
            server: None,
            loadgen: None,
            verdict,
            timeline: Vec::new(),
        })
        .unwrap();
        assert_eq!(report.check.counts.lost, 1);
        assert!(!report.ok());
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert!(chat_loadtest::compare(&report, &back).contains("deliveries/s"));
    }
}
