//! The direct-message scenarios: `dm-pingpong` (latency) and `dm-flood` (throughput).
//!
//! Users `2p` and `2p + 1` form pair `p` and share the direct conversation `dm:<a>:<b>`.
//! Round-robin placement puts the two users of a pair on different targets when there are
//! several, so every message crosses from one node to another. Each connection has a reader
//! task that records its pushes; senders record their sends and acks; the checker sees all.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_client::{Connection, HttpApi};
use chat_types::{ClientMsgId, ConversationId};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::checker::ObserverId;
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{lock, sample, spawn_progress, wait_for, Clock, Ctx, Outcome, RunConfig};
use crate::scenario::ScenarioKind;
use crate::setup::{self, retry_wait, Targets, User};

/// A send is attempted at most this often when the server answers with a retryable error
/// (the same client message id each time, so a retry never stores a copy).
const SEND_ATTEMPTS: u32 = 3;
/// How long a ping-pong turn waits for the push at the other user before moving on.
const PUSH_WAIT: Duration = Duration::from_secs(10);
/// How often an idle reader checks whether to stop.
const READER_POLL: Duration = Duration::from_millis(100);
/// Largest history page asked for (the server caps it at its `max_history_page`).
const HISTORY_PAGE: u32 = 200;
/// The longest the drain waits for outstanding pushes, however steadily they still arrive.
const MAX_DRAIN: Duration = Duration::from_secs(120);
/// Extra time after the drain for senders to finish before they are abandoned.
const SENDER_GRACE: Duration = Duration::from_secs(60);

/// One user of a pair, connected.
pub(crate) struct Side {
    pub user: User,
    pub conn: Arc<Connection>,
    pub observer: ObserverId,
}

/// Two users and their conversation.
pub(crate) struct Pair {
    pub index: usize,
    pub conv: ConversationId,
    pub sides: [Arc<Side>; 2],
}

pub(crate) async fn run_dm(
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
    let pairs = set_up_pairs(
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

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock,
        checker: Arc::clone(&checker),
        live: Arc::clone(&live),
    });
    let hard_end = clock.send_end + SENDER_GRACE + MAX_DRAIN + scenario.drain();
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));

    // Readers first, so that no push is missed.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::new();
    let mut turn_rx = Vec::new();
    for pair in &pairs {
        let mut rxs = Vec::new();
        for side in &pair.sides {
            let (tx, rx) = mpsc::unbounded_channel();
            let notify = (scenario.kind == ScenarioKind::DmPingpong).then_some(tx);
            readers.push(tokio::spawn(read_pushes(
                Arc::clone(side),
                Arc::clone(&ctx),
                notify,
                stop_rx.clone(),
                hard_end,
            )));
            rxs.push(rx);
        }
        turn_rx.push(rxs);
    }

    let mut senders = Vec::new();
    match scenario.kind {
        ScenarioKind::DmPingpong => {
            // Each pair gets an equal share of the rate, its slots staggered across pairs.
            let per_pair = scenario.rate / pairs.len() as f64;
            let interval = Duration::from_secs_f64(1.0 / per_pair);
            for (pair, rxs) in pairs.iter().zip(turn_rx) {
                let phase = interval.mul_f64(pair.index as f64 / pairs.len() as f64);
                let [rx0, rx1]: [mpsc::UnboundedReceiver<ClientMsgId>; 2] = rxs
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("a pair has two sides"))?;
                senders.push(tokio::spawn(pingpong_pair(
                    Arc::clone(pair),
                    Arc::clone(&ctx),
                    [rx0, rx1],
                    interval,
                    phase,
                )));
            }
        }
        ScenarioKind::DmFlood => {
            let window = scenario.window.unwrap_or(1) as usize;
            let sides_per_pair = if scenario.bidirectional { 2 } else { 1 };
            let senders_total = pairs.len() * sides_per_pair;
            let pace = (scenario.rate > 0.0)
                .then(|| Duration::from_secs_f64(senders_total as f64 / scenario.rate));
            for pair in &pairs {
                for s in 0..sides_per_pair {
                    let n = pair.index * sides_per_pair + s;
                    let phase = pace.map(|iv| iv.mul_f64(n as f64 / senders_total as f64));
                    senders.push(tokio::spawn(flood_sender(
                        Arc::clone(&pair.sides[s]),
                        pair.conv,
                        n,
                        Arc::clone(&ctx),
                        window,
                        pace.zip(phase),
                    )));
                }
            }
        }
        ScenarioKind::ConnectStorm => bail!("connect-storm is not a direct scenario"),
    }

    // Sample at the edges of the measured window.
    tokio::time::sleep_until(clock.measure_start.into()).await;
    let (server_a, self_a) = sample(&config.server_pids);
    tokio::time::sleep_until(clock.send_end.into()).await;
    let (server_b, self_b) = sample(&config.server_pids);
    connections.open_at_end = live.connections();

    for s in senders {
        let left = hard_end.saturating_duration_since(Instant::now());
        let abort = s.abort_handle();
        match tokio::time::timeout(left, s).await {
            Ok(Ok(t)) => tally.merge(&t),
            Ok(Err(e)) => bail!("a sender task failed: {e}"),
            Err(_) => {
                abort.abort();
                tally.error("sender_abandoned");
            }
        }
    }
    // Every fresh ack is owed exactly one push (the other user has one connection). Wait for
    // all of them while they keep coming: the drain ends when none arrived for `drain_secs`
    // (a stuck push is then reported as undelivered) or after MAX_DRAIN. A late push is late,
    // not lost, and its lateness shows in the delivery latency. A failed send may have been
    // stored and owe one more push, so after failures the drain also waits for a short quiet.
    let drain_started = Instant::now();
    let owed = || Live::get(&live.deliveries) < Live::get(&live.fresh_acks);
    let failures = Live::get(&live.acks) < Live::get(&live.sends);
    let mut last = (Live::get(&live.deliveries), Instant::now());
    let quiet = if failures {
        Duration::from_millis(500).min(scenario.drain())
    } else {
        Duration::ZERO
    };
    wait_for(MAX_DRAIN, || {
        let now = Live::get(&live.deliveries);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let idle = last.1.elapsed();
        (!owed() && idle >= quiet) || idle >= scenario.drain()
    })
    .await;
    if owed() {
        tally.error("drain_gave_up");
    }
    let drained = drain_started.elapsed();
    let _ = stop_tx.send(true);
    for r in readers {
        let left = hard_end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if let Ok(Ok(t)) = tokio::time::timeout(left, r).await {
            tally.merge(&t);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }

    let reads = pairs
        .iter()
        .map(|p| {
            let u = &p.sides[0].user;
            (p.conv, targets.apis[u.target].clone(), u.token.clone())
        })
        .collect::<Vec<(ConversationId, HttpApi, String)>>();
    crate::run::read_histories(&checker, reads, HISTORY_PAGE).await;

    close_all(pairs.iter().flat_map(|p| p.sides.iter().cloned())).await;

    Ok(Outcome {
        tally,
        setup,
        measured: scenario.duration(),
        drained,
        connections,
        server: server_a.zip(server_b),
        loadgen: self_a.zip(self_b),
    })
}

/// Registers, logs in and connects every user, then opens each pair's conversation.
async fn set_up_pairs(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: &crate::run::SharedChecker,
    live: &Arc<Live>,
    tally: &mut Tally,
    connections: &mut Connections,
) -> anyhow::Result<Vec<Arc<Pair>>> {
    let scenario = &config.scenario;
    let users = scenario.users as usize;
    let results = futures_util::stream::iter((0..users).map(|i| async move {
        let mut t = Tally::default();
        let r = setup::set_up_user(targets, prefix, i, &mut t, false).await;
        (i, r, t)
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    let mut sides: Vec<Option<Arc<Side>>> = (0..users).map(|_| None).collect();
    let mut first_error = None;
    for (i, r, t) in results {
        tally.merge(&t);
        match r {
            Ok((user, conn, _welcome)) => {
                connections.opened += 1;
                live.connection_opened();
                let observer = lock(checker).observer_opened(user.user_id);
                sides[i] = Some(Arc::new(Side {
                    user,
                    conn: Arc::new(conn),
                    observer,
                }));
            }
            Err(e) => {
                connections.failed += 1;
                first_error.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = first_error {
        let target = &targets.urls[targets.of(i)];
        return Err(crate::run::setup_error(
            &format!(
                "setting up user {} on {target} failed ({} of {users} users failed)",
                setup::username(prefix, i),
                connections.failed
            ),
            e,
        ));
    }
    let sides: Vec<Arc<Side>> = sides.into_iter().flatten().collect();
    let opened = futures_util::stream::iter(sides.chunks(2).enumerate().map(|(p, two)| {
        let a = Arc::clone(&two[0]);
        let b = Arc::clone(&two[1]);
        async move {
            let info = a.conn.open_direct_by_id(b.user.user_id).await;
            (p, a, b, info)
        }
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    let mut pairs = Vec::new();
    for (index, a, b, info) in opened {
        let info = info.map_err(|e| {
            crate::run::setup_error(
                &format!(
                    "{} opening the conversation with {}",
                    a.user.username, b.user.username
                ),
                e,
            )
        })?;
        let expected = ConversationId::direct(a.user.user_id, b.user.user_id);
        if info.conversation != expected {
            bail!(
                "open_direct returned {} for users {} and {}, expected {expected}",
                info.conversation,
                a.user.user_id,
                b.user.user_id
            );
        }
        lock(checker).watch(info.conversation);
        pairs.push(Arc::new(Pair {
            index,
            conv: info.conversation,
            sides: [a, b],
        }));
    }
    pairs.sort_by_key(|p| p.index);
    Ok(pairs)
}

/// Records every push `side` receives until told to stop (after the drain) or `deadline`.
async fn read_pushes(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    notify: Option<mpsc::UnboundedSender<ClientMsgId>>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut stopping = false;
    // Bounded by `deadline`; after the stop signal only what is already queued is read.
    while Instant::now() < deadline {
        if !stopping && *stop.borrow() {
            stopping = true;
        }
        let wait = if stopping {
            Duration::ZERO
        } else {
            READER_POLL
        };
        match side.conn.next_message(wait).await {
            Ok(Some(m)) => {
                let now = Instant::now();
                lock(&ctx.checker).delivered(side.observer, &m);
                Live::add(&ctx.live.deliveries);
                tally.deliveries += 1;
                if ctx.clock.in_window(now) {
                    tally.deliveries_measured += 1;
                }
                match ctx.clock.intended_of(&m.body) {
                    Some(intended) if ctx.clock.measured(intended) => tally
                        .delivery
                        .record(now.saturating_duration_since(intended)),
                    Some(_) => {}
                    None => tally.error("foreign_body"),
                }
                if let Some(n) = &notify {
                    let _ = n.send(m.client_msg_id);
                }
            }
            Ok(None) if stopping => break,
            Ok(None) => {}
            Err(e) => {
                lock(&ctx.checker).observer_closed(side.observer);
                ctx.live.connection_closed();
                Live::add(&ctx.live.errors);
                let key = format!("push_{}", error_key(&e));
                tally
                    .error_examples
                    .entry(key.clone())
                    .or_insert(e.to_string());
                tally.error(key);
                break;
            }
        }
    }
    tally
}

/// What became of one send.
struct Sent {
    intended: Instant,
    /// When the ack arrived, and whether it was a duplicate.
    acked: Option<(Instant, bool)>,
    errors: Vec<(String, String)>,
}

/// Sends one message from `side`, retrying retryable refusals with the same client message
/// id, and records the send and its outcome in the checker.
async fn send_one(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    conv: ConversationId,
    cmid: ClientMsgId,
    intended: Instant,
) -> Sent {
    let body = ctx.clock.body(intended, ctx.scenario.body_bytes);
    let op = lock(&ctx.checker).send_invoked(
        Some(side.observer),
        side.user.user_id,
        conv,
        cmid.clone(),
        &body,
    );
    Live::add(&ctx.live.sends);
    let mut errors = Vec::new();
    for attempt in 1..=SEND_ATTEMPTS {
        match side.conn.send(conv, cmid.clone(), body.clone()).await {
            Ok(ack) => {
                let now = Instant::now();
                lock(&ctx.checker).send_acked(op, ack.seq, ack.duplicate);
                Live::add(&ctx.live.acks);
                if !ack.duplicate {
                    Live::add(&ctx.live.fresh_acks);
                }
                return Sent {
                    intended,
                    acked: Some((now, ack.duplicate)),
                    errors,
                };
            }
            Err(e) => {
                Live::add(&ctx.live.errors);
                errors.push((error_key(&e), e.to_string()));
                match retry_wait(&e) {
                    Some(wait) if attempt < SEND_ATTEMPTS => tokio::time::sleep(wait).await,
                    _ => break,
                }
            }
        }
    }
    lock(&ctx.checker).send_failed(op);
    Sent {
        intended,
        acked: None,
        errors,
    }
}

/// Adds one send's outcome to `tally`.
fn account(tally: &mut Tally, clock: &Clock, sent: Sent) {
    tally.sends += 1;
    for (key, message) in sent.errors {
        tally.error_examples.entry(key.clone()).or_insert(message);
        tally.error(key);
    }
    if let Some((at, duplicate)) = sent.acked {
        tally.acks += 1;
        tally.duplicate_acks += u64::from(duplicate);
        if clock.in_window(at) {
            tally.acks_measured += 1;
        }
        if clock.measured(sent.intended) {
            tally
                .ack
                .record(at.saturating_duration_since(sent.intended));
        }
    }
}

/// The number of slots `start + phase + k * interval` before `end`.
fn slots(start: Instant, phase: Duration, interval: Duration, end: Instant) -> u64 {
    let span = end.saturating_duration_since(start + phase);
    if interval.is_zero() {
        return 0;
    }
    span.as_nanos().div_ceil(interval.as_nanos()) as u64
}

fn slot(start: Instant, phase: Duration, interval: Duration, k: u64) -> Instant {
    start + phase + Duration::from_nanos((interval.as_nanos() as u64).saturating_mul(k))
}

/// One pair taking turns: message `k` goes from side `k % 2` to the other side, no earlier
/// than its slot on the schedule and only after message `k - 1` was acknowledged and pushed.
async fn pingpong_pair(
    pair: Arc<Pair>,
    ctx: Arc<Ctx>,
    mut rx: [mpsc::UnboundedReceiver<ClientMsgId>; 2],
    interval: Duration,
    phase: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let n = slots(clock.start, phase, interval, clock.send_end);
    for k in 0..n {
        let intended = slot(clock.start, phase, interval, k);
        if Instant::now() >= clock.send_end {
            // Behind schedule at the end of the window: the remaining slots are not sent
            // (the run ends on time) but counted, so a saturated run cannot pass for a fast one.
            tally.errors.insert("unsent_behind_schedule".into(), n - k);
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let from = (k % 2) as usize;
        let Ok(cmid) = ClientMsgId::new(format!("p{}-{k}", pair.index)) else {
            tally.error("bad_client_msg_id");
            continue;
        };
        let sent = send_one(
            Arc::clone(&pair.sides[from]),
            Arc::clone(&ctx),
            pair.conv,
            cmid.clone(),
            intended,
        )
        .await;
        let fresh = matches!(sent.acked, Some((_, false)));
        account(&mut tally, &clock, sent);
        if !fresh {
            continue;
        }
        let to = &mut rx[1 - from];
        let pushed = tokio::time::timeout(PUSH_WAIT, async {
            while let Some(got) = to.recv().await {
                if got == cmid {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(pushed, Ok(true)) {
            tally.error("push_wait_timeout");
        }
    }
    tally
}

/// One sender keeping up to `window` sends in flight: unpaced (a new send as soon as one is
/// acknowledged) or, with `pace = (interval, phase)`, on an open-loop schedule capped by the
/// window.
async fn flood_sender(
    side: Arc<Side>,
    conv: ConversationId,
    sender: usize,
    ctx: Arc<Ctx>,
    window: usize,
    pace: Option<(Duration, Duration)>,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let limit = pace.map(|(iv, ph)| slots(clock.start, ph, iv, clock.send_end));
    let mut inflight = FuturesUnordered::new();
    let mut k: u64 = 0;
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        let now = Instant::now();
        // Launch what is due, up to the window.
        let mut next_due = None;
        while inflight.len() < window {
            let intended = match (pace, limit) {
                (Some((iv, ph)), Some(n)) => {
                    if k >= n {
                        break;
                    }
                    if now >= clock.send_end {
                        // As in ping-pong: overdue slots are counted, not sent.
                        tally.errors.insert("unsent_behind_schedule".into(), n - k);
                        k = n;
                        break;
                    }
                    let t = slot(clock.start, ph, iv, k);
                    if t > now {
                        next_due = Some(t);
                        break;
                    }
                    t
                }
                _ => {
                    if now >= clock.send_end {
                        break;
                    }
                    now
                }
            };
            let Ok(cmid) = ClientMsgId::new(format!("f{sender}-{k}")) else {
                tally.error("bad_client_msg_id");
                break;
            };
            inflight.push(send_one(
                Arc::clone(&side),
                Arc::clone(&ctx),
                conv,
                cmid,
                intended,
            ));
            k += 1;
        }
        if inflight.is_empty() {
            match next_due {
                Some(t) => {
                    tokio::time::sleep_until(t.into()).await;
                    continue;
                }
                None => break,
            }
        }
        match next_due {
            Some(t) => {
                tokio::select! {
                    Some(sent) = inflight.next() => account(&mut tally, &clock, sent),
                    _ = tokio::time::sleep_until(t.into()) => {}
                }
            }
            None => {
                if let Some(sent) = inflight.next().await {
                    account(&mut tally, &clock, sent);
                }
            }
        }
    }
    tally
}

/// Closes every connection politely, 64 at a time, each bounded by the request timeout.
pub(crate) async fn close_all(sides: impl Iterator<Item = Arc<Side>>) {
    let conns: Vec<Arc<Connection>> = sides.map(|s| Arc::clone(&s.conn)).collect();
    close_conns(conns).await;
}

pub(crate) async fn close_conns(conns: Vec<Arc<Connection>>) {
    futures_util::stream::iter(conns.into_iter().map(|c| async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_window_and_no_more() {
        let start = Instant::now();
        let end = start + Duration::from_secs(1);
        let iv = Duration::from_millis(100);
        assert_eq!(slots(start, Duration::ZERO, iv, end), 10);
        assert_eq!(slots(start, Duration::from_millis(50), iv, end), 10);
        assert_eq!(slots(start, Duration::from_millis(1), iv, end), 10);
        assert_eq!(slots(start, Duration::ZERO, Duration::ZERO, end), 0);
        let last = slot(start, Duration::from_millis(50), iv, 9);
        assert!(last < end);
        assert!(slot(start, Duration::from_millis(50), iv, 10) >= end);
    }
}
