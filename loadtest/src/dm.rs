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
    live.start_timeline(clock.start, timeline_secs(scenario));
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
                None,
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
        ScenarioKind::ConnectStorm
        | ScenarioKind::GroupFanout
        | ScenarioKind::IdleConnections
        | ScenarioKind::Broadcast
        | ScenarioKind::ReconnectStorm
        | ScenarioKind::HistoryPaging => {
            bail!("{} is not a direct scenario", scenario.kind.as_str())
        }
    }

    // Sample at the edges of the measured window.
    tokio::time::sleep_until(clock.measure_start.into()).await;
    let (server_a, self_a) = sample(config);
    tokio::time::sleep_until(clock.send_end.into()).await;
    let (server_b, self_b) = sample(config);
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

/// How long a run's timeline may need to be: warm-up, window, the longest drain and slack.
pub(crate) fn timeline_secs(scenario: &crate::scenario::Scenario) -> f64 {
    scenario.warmup_secs + scenario.duration_secs + MAX_DRAIN.as_secs_f64() + 10.0
}

/// Registers, logs in and connects every user, then opens each pair's conversation.
pub(crate) async fn set_up_pairs(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: &crate::run::SharedChecker,
    live: &Arc<Live>,
    tally: &mut Tally,
    connections: &mut Connections,
) -> anyhow::Result<Vec<Arc<Pair>>> {
    let scenario = &config.scenario;
    let (sides, _limits) =
        set_up_users(config, targets, prefix, checker, live, tally, connections).await?;
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

/// Registers, logs in and connects every user of the scenario (each connection an observer
/// of the checker), `setup_concurrency` at a time, printing how far it got every few seconds
/// when the run has a progress line. Returns the users in order and the limits the first
/// one's `welcome` announced.
pub(crate) async fn set_up_users(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: &crate::run::SharedChecker,
    live: &Arc<Live>,
    tally: &mut Tally,
    connections: &mut Connections,
) -> anyhow::Result<(Vec<Arc<Side>>, chat_types::Limits)> {
    let scenario = &config.scenario;
    let users = scenario.users as usize;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reporter = (config.progress && users >= 200).then(|| {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "[set-up {:>4}s] {n} of {users} users registered, logged in and connected",
                    started.elapsed().as_secs()
                );
            }
        })
    });
    let results = futures_util::stream::iter((0..users).map(|i| {
        let done = Arc::clone(&done);
        async move {
            let mut t = Tally::default();
            let r = setup::set_up_user(targets, prefix, i, &mut t, false).await;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (i, r, t)
        }
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    if let Some(r) = reporter {
        r.abort();
    }
    let mut sides: Vec<Option<Arc<Side>>> = (0..users).map(|_| None).collect();
    let mut first_error = None;
    let mut limits = None;
    for (i, r, t) in results {
        tally.merge(&t);
        match r {
            Ok((user, conn, welcome)) => {
                connections.opened += 1;
                live.connection_opened();
                if i == 0 {
                    limits = Some(welcome.limits);
                }
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
        // Close what did open, so that a failed set-up leaves nothing behind.
        close_all(sides.into_iter().flatten()).await;
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
    Ok((sides, limits.unwrap_or_default()))
}

/// Pushes a reader takes off its connection and records under one lock of the checker.
const READ_BATCH: usize = 256;

/// Records every push `side` receives until told to stop (after the drain) or `deadline`.
/// With `fanout`, also the last delivery of each group message (see [`crate::group`]).
pub(crate) async fn read_pushes(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    notify: Option<mpsc::UnboundedSender<ClientMsgId>>,
    fanout: Option<Arc<crate::group::Fanout>>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut stopping = *stop.borrow();
    let mut batch: Vec<chat_types::Message> = Vec::with_capacity(16);
    // Bounded by `deadline`; after the stop signal only what is already queued is read.
    while Instant::now() < deadline {
        batch.clear();
        let wait = if stopping {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let first = tokio::select! {
            r = side.conn.next_message(wait) => r,
            changed = stop.changed(), if !stopping => {
                // A closed channel (the run is gone) stops the reader too.
                let _ = changed;
                stopping = true;
                continue;
            }
        };
        let mut failure = None;
        match first {
            Ok(Some(m)) => batch.push(m),
            Ok(None) if stopping => break,
            Ok(None) => continue,
            Err(e) => failure = Some(e),
        }
        while failure.is_none() && !batch.is_empty() && batch.len() < READ_BATCH {
            match side.conn.next_message(Duration::ZERO).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) => break,
                Err(e) => failure = Some(e),
            }
        }
        if !batch.is_empty() {
            let now = Instant::now();
            lock(&ctx.checker).delivered_many(side.observer, &batch);
            for m in &batch {
                if matches!(m.refers, Some(chat_types::MessageRef::Group { .. })) {
                    // A note the server wrote (the group's creation): not a delivery of ours.
                    Live::add(&ctx.live.notes);
                    continue;
                }
                Live::add(&ctx.live.deliveries);
                tally.deliveries += 1;
                if ctx.clock.in_window(now) {
                    tally.deliveries_measured += 1;
                }
                match ctx.clock.intended_of(&m.body) {
                    Some(intended) => {
                        let latency = now.saturating_duration_since(intended);
                        ctx.live.timeline_delivery(now, latency);
                        if ctx.clock.measured(intended) {
                            tally.delivery.record(latency);
                        }
                        if let Some(f) = &fanout {
                            f.delivered(&m.client_msg_id, latency);
                        }
                    }
                    None => tally.error("foreign_body"),
                }
                if let Some(n) = &notify {
                    let _ = n.send(m.client_msg_id.clone());
                }
            }
        }
        if let Some(e) = failure {
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
    tally
}

/// What became of one send.
pub(crate) struct Sent {
    pub intended: Instant,
    /// When the ack arrived, and whether it was a duplicate.
    pub acked: Option<(Instant, bool)>,
    pub errors: Vec<(String, String)>,
    /// The connection was found closed: the sender stops.
    pub closed: bool,
}

/// Sends one message from `side`, retrying retryable refusals with the same client message
/// id, and records the send and its outcome in the checker.
pub(crate) async fn send_one(
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
    let mut closed = false;
    for attempt in 1..=SEND_ATTEMPTS {
        match side.conn.send(conv, cmid.clone(), body.clone()).await {
            Ok(ack) => {
                let now = Instant::now();
                lock(&ctx.checker).send_acked(op, ack.seq, ack.duplicate);
                Live::add(&ctx.live.acks);
                ctx.live
                    .timeline_ack(now, now.saturating_duration_since(intended));
                if !ack.duplicate {
                    Live::add(&ctx.live.fresh_acks);
                }
                return Sent {
                    intended,
                    acked: Some((now, ack.duplicate)),
                    errors,
                    closed: false,
                };
            }
            Err(e) => {
                Live::add(&ctx.live.errors);
                errors.push((error_key(&e), e.to_string()));
                closed = matches!(e, chat_client::ClientError::Closed { .. });
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
        closed,
    }
}

/// Adds one send's outcome to `tally`.
pub(crate) fn account(tally: &mut Tally, clock: &Clock, sent: Sent) {
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
pub(crate) async fn flood_sender(
    side: Arc<Side>,
    conv: ConversationId,
    sender: usize,
    ctx: Arc<Ctx>,
    window: usize,
    pace: Option<(Duration, Duration)>,
) -> Tally {
    let c = Arc::clone(&ctx);
    paced_sender(ctx, 'f', sender, window, pace, move |cmid, intended| {
        send_one(Arc::clone(&side), Arc::clone(&c), conv, cmid, intended)
    })
    .await
}

/// The loop of [`flood_sender`] around any send: `send(cmid, intended)` with client message
/// ids `<letter><sender>-<k>`.
pub(crate) async fn paced_sender<F, Fut>(
    ctx: Arc<Ctx>,
    letter: char,
    sender: usize,
    window: usize,
    pace: Option<(Duration, Duration)>,
    send: F,
) -> Tally
where
    F: Fn(ClientMsgId, Instant) -> Fut,
    Fut: std::future::Future<Output = Sent>,
{
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let limit = pace.map(|(iv, ph)| slots(clock.start, ph, iv, clock.send_end));
    let mut inflight = FuturesUnordered::new();
    let mut k: u64 = 0;
    // Set when a send found the connection closed: nothing more can be sent on it.
    let mut closed = false;
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        let now = Instant::now();
        // Launch what is due, up to the window.
        let mut next_due = None;
        while inflight.len() < window && !closed {
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
            let Ok(cmid) = ClientMsgId::new(format!("{letter}{sender}-{k}")) else {
                tally.error("bad_client_msg_id");
                break;
            };
            inflight.push(send(cmid, intended));
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
        let sent = match next_due {
            Some(t) => {
                tokio::select! {
                    Some(sent) = inflight.next() => Some(sent),
                    _ = tokio::time::sleep_until(t.into()) => None,
                }
            }
            None => inflight.next().await,
        };
        if let Some(sent) = sent {
            if sent.closed && !closed {
                closed = true;
                let left = limit.map_or(0, |n| n.saturating_sub(k));
                if left > 0 {
                    tally.errors.insert("unsent_connection_closed".into(), left);
                } else {
                    tally.error("sender_stopped_connection_closed");
                }
            }
            account(&mut tally, &clock, sent);
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
