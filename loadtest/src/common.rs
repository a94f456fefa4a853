//! What the scenario drivers share: signing every user up and connecting it, the pump that
//! records every push a connection receives into the checker, sending one message (recorded
//! in the checker), the open-loop scheduler every paced loop runs on, the drain, and joining
//! and closing everything at the end.
//!
//! A driver sets up its users with [`set_up_users`], starts a [`Pump`] over their connections,
//! runs its load on [`run_schedule`] (sends through [`send_one`] or [`send_body`]), samples the
//! measured window with [`sample_window`], joins its tasks with [`join_tasks`], waits for owed
//! pushes with [`drain`], stops the pump and reads the histories back
//! ([`crate::run::read_histories`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::Connection;
use chat_types::{ClientMsgId, ConversationId};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::checker::ObserverId;
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{lock, sample, Clock, Ctx, RunConfig, SharedChecker};
use crate::setup::{self, retry_wait, Targets, User};
use crate::sysstat::ProcSample;

/// A send is attempted at most this often when the server answers with a retryable error
/// (the same client message id each time, so a retry never stores a copy).
const SEND_ATTEMPTS: u32 = 3;
/// The longest the drain waits for outstanding pushes, however steadily they still arrive.
pub(crate) const MAX_DRAIN: Duration = Duration::from_secs(120);
/// Extra time after the window for senders to finish before they are abandoned.
pub(crate) const SENDER_GRACE: Duration = Duration::from_secs(60);
/// Largest history page asked for when reading histories back.
pub(crate) const HISTORY_PAGE: u32 = 200;

/// One connected user.
pub(crate) struct Side {
    pub user: User,
    pub conn: Arc<Connection>,
    pub observer: ObserverId,
}

/// How long a run's timeline may need to be: warm-up, window, the longest drain and slack.
pub(crate) fn timeline_secs(scenario: &crate::scenario::Scenario) -> f64 {
    scenario.warmup_secs + scenario.duration_secs + MAX_DRAIN.as_secs_f64() + 10.0
}

/// The latest a driver with senders and a drain waits for anything.
pub(crate) fn hard_end(clock: &Clock, scenario: &crate::scenario::Scenario) -> Instant {
    clock.send_end + SENDER_GRACE + MAX_DRAIN + scenario.drain()
}

/// Registers, logs in and connects every user of the scenario (each connection an observer
/// of the checker), `setup_concurrency` at a time, printing how far it got every few seconds
/// when the run has a progress line. Returns the users in order and the limits the first
/// one's `welcome` announced. On any failure, what did open is closed and the first error
/// is returned.
pub(crate) async fn set_up_users(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: &SharedChecker,
    live: &Arc<Live>,
    tally: &mut Tally,
    connections: &mut Connections,
) -> anyhow::Result<(Vec<Arc<Side>>, chat_types::Limits)> {
    let scenario = &config.scenario;
    let users = scenario.users as usize;
    let done = Arc::new(AtomicUsize::new(0));
    let reporter = set_up_reporter(config, &done, "registered, logged in and connected");
    let results = futures_util::stream::iter((0..users).map(|i| {
        let done = Arc::clone(&done);
        async move {
            let mut t = Tally::default();
            let r = setup::set_up_user(targets, prefix, i, &mut t, false).await;
            done.fetch_add(1, Ordering::Relaxed);
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

/// Registers every user of the scenario (and logs each in when `log_in`), without
/// connecting, `setup_concurrency` at a time. Nothing is recorded in the latencies: this is
/// the untimed set-up of the scenarios that measure the steps after it. Returns the users in
/// order (with `token` empty when not logged in).
pub(crate) async fn register_users(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    log_in: bool,
    tally: &mut Tally,
) -> anyhow::Result<Vec<User>> {
    let scenario = &config.scenario;
    let users = scenario.users as usize;
    let done = Arc::new(AtomicUsize::new(0));
    let what = if log_in {
        "registered and logged in"
    } else {
        "registered"
    };
    let reporter = set_up_reporter(config, &done, what);
    let results = futures_util::stream::iter((0..users).map(|i| {
        let done = Arc::clone(&done);
        async move {
            let mut t = Tally::default();
            let r = if log_in {
                setup::register_and_log_in(targets, prefix, i, &mut t, false).await
            } else {
                setup::register_user(targets, prefix, i, &mut t, false).await
            };
            done.fetch_add(1, Ordering::Relaxed);
            (i, r, t)
        }
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    if let Some(r) = reporter {
        r.abort();
    }
    let mut accounts = Vec::with_capacity(users);
    for (i, r, t) in results {
        tally.merge(&t);
        match r {
            Ok(u) => accounts.push(u),
            Err(e) => {
                return Err(crate::run::setup_error(
                    &format!("registering user {}", setup::username(prefix, i)),
                    e,
                ))
            }
        }
    }
    accounts.sort_by_key(|u| u.index);
    Ok(accounts)
}

/// Prints how far a large set-up got every 5 s, when the run has a progress line.
fn set_up_reporter(
    config: &RunConfig,
    done: &Arc<AtomicUsize>,
    what: &'static str,
) -> Option<JoinHandle<()>> {
    let users = config.scenario.users as usize;
    (config.progress && users >= 200).then(|| {
        let done = Arc::clone(done);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "[set-up {:>4}s] {n} of {users} users {what}",
                    started.elapsed().as_secs()
                );
            }
        })
    })
}

/// Pushes a reader takes off its connection and records under one lock of the checker.
const READ_BATCH: usize = 256;

/// The readers of a run: one task per connection recording every push it receives into the
/// checker (and the delivery latency into its tally) until [`Pump::stop`].
pub(crate) struct Pump {
    stop: watch::Sender<bool>,
    readers: Vec<JoinHandle<Tally>>,
    deadline: Instant,
}

impl Pump {
    /// A pump whose readers give up at `deadline` whatever happens.
    pub(crate) fn new(deadline: Instant) -> Pump {
        Pump {
            stop: watch::channel(false).0,
            readers: Vec::new(),
            deadline,
        }
    }

    /// A pump reading every connection of `sides`.
    pub(crate) fn over<'a>(
        sides: impl IntoIterator<Item = &'a Arc<Side>>,
        ctx: &Arc<Ctx>,
        fanout: Option<&Arc<crate::group::Fanout>>,
        deadline: Instant,
    ) -> Pump {
        let mut pump = Pump::new(deadline);
        for side in sides {
            pump.add(side, ctx, None, fanout);
        }
        pump
    }

    /// Reads `side`'s pushes from now on; with `notify`, also tells it each client message id
    /// pushed; with `fanout`, records each group message's last delivery.
    pub(crate) fn add(
        &mut self,
        side: &Arc<Side>,
        ctx: &Arc<Ctx>,
        notify: Option<mpsc::UnboundedSender<ClientMsgId>>,
        fanout: Option<&Arc<crate::group::Fanout>>,
    ) {
        self.readers.push(tokio::spawn(read_pushes(
            Arc::clone(side),
            Arc::clone(ctx),
            notify,
            fanout.cloned(),
            self.stop.subscribe(),
            self.deadline,
        )));
    }

    /// Also reads and drops `side`'s raw events (read marks, receipts, presence), which
    /// would otherwise queue in the SDK for the whole run.
    pub(crate) fn drop_raw_events(&mut self, side: &Arc<Side>) {
        let conn = Arc::clone(&side.conn);
        let (stop, deadline) = (self.stop.subscribe(), self.deadline);
        self.readers.push(tokio::spawn(async move {
            drop_raw_events(conn, stop, deadline).await;
            Tally::default()
        }));
    }

    /// Tells every reader to stop once it has read what is already queued, and merges their
    /// tallies into `tally` (a reader stuck past the deadline is left behind).
    pub(crate) async fn stop(self, tally: &mut Tally) {
        let _ = self.stop.send(true);
        for r in self.readers {
            // A stopping reader only reads what is already queued: this never takes long.
            let left = self
                .deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            if let Ok(Ok(t)) = tokio::time::timeout(left, r).await {
                tally.merge(&t);
            }
        }
    }
}

/// Reads and drops `conn`'s raw events (read marks, receipts, presence, cursor notes) until
/// it closes, `stop` turns true, or `deadline`.
pub(crate) async fn drop_raw_events(
    conn: Arc<Connection>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) {
    while !*stop.borrow() && Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            r = conn.next_raw_frame(wait) => match r {
                Ok(Some(chat_client::RawEvent::Closed { .. })) | Err(_) => break,
                Ok(_) => {}
            },
            _ = stop.changed() => break,
        }
    }
}

/// Records every push `side` receives until told to stop (after the drain) or `deadline`.
/// With `fanout`, also the last delivery of each group message (see [`crate::group`]).
/// A connection that closes is an error unless the run severed it on purpose
/// ([`Connection::sever`]): then the reader takes every push left and ends.
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
            if side.conn.was_severed() {
                break;
            }
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
    /// The seq the ack named.
    pub seq: Option<chat_types::Seq>,
    pub errors: Vec<(String, String)>,
    /// The connection was found closed: the sender stops.
    pub closed: bool,
}

/// Sends one message from `side` with a body made by [`Clock::body`] (it carries the
/// intended send time), as [`send_body`].
pub(crate) async fn send_one(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    conv: ConversationId,
    cmid: ClientMsgId,
    intended: Instant,
) -> Sent {
    let body = ctx.clock.body(intended, ctx.scenario.body_bytes);
    send_body(side, ctx, conv, cmid, intended, body).await
}

/// Sends `body` from `side`, retrying retryable refusals with the same client message id,
/// and records the send and its outcome in the checker. The body should start with
/// [`Clock::body`]'s time stamp so that the receivers can measure the delivery latency.
pub(crate) async fn send_body(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    conv: ConversationId,
    cmid: ClientMsgId,
    intended: Instant,
    body: String,
) -> Sent {
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
                    seq: Some(ack.seq),
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
        seq: None,
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

/// When the operations of an open loop are due, from the clock's start.
#[derive(Clone, Debug)]
pub(crate) enum Schedule {
    /// No schedule: a new operation as soon as the window has room, until the window ends.
    Unpaced,
    /// Operation `k` at `phase + k * interval`, up to the end of the window.
    Fixed { interval: Duration, phase: Duration },
    /// Operation `k` at `offsets[k]` (ascending), those before the end of the window.
    Offsets(Arc<[Duration]>),
}

impl Schedule {
    /// A fixed schedule of `rate` per second shared by `n` loops, for loop `i`: each gets
    /// `rate / n`, its slots staggered by `i / n` of its interval.
    pub(crate) fn share(rate: f64, n: usize, i: usize) -> Schedule {
        let interval = Duration::from_secs_f64(n as f64 / rate);
        Schedule::Fixed {
            interval,
            phase: interval.mul_f64(i as f64 / n as f64),
        }
    }

    /// How many operations fall in the clock's window; `None` when unpaced.
    pub(crate) fn len(&self, clock: &Clock) -> Option<u64> {
        match self {
            Schedule::Unpaced => None,
            Schedule::Fixed { interval, phase } => {
                Some(slots(clock.start, *phase, *interval, clock.send_end))
            }
            Schedule::Offsets(offsets) => {
                let end = clock.send_end.saturating_duration_since(clock.start);
                Some(offsets.partition_point(|o| *o < end) as u64)
            }
        }
    }

    /// When operation `k` is due (now when unpaced: [`run_schedule`] uses its own now).
    pub(crate) fn at(&self, clock: &Clock, k: u64) -> Instant {
        match self {
            Schedule::Unpaced => Instant::now(),
            Schedule::Fixed { interval, phase } => slot(clock.start, *phase, *interval, k),
            // Past the last offset (never asked by `run_schedule`): the end of the window.
            Schedule::Offsets(offsets) => offsets
                .get(k as usize)
                .map_or(clock.send_end, |o| clock.start + *o),
        }
    }
}

/// What an open loop does after an operation ended.
pub(crate) enum Flow {
    Go,
    /// Launch nothing more (the connection closed): the slots left are counted as
    /// `unsent_<why>` (or `sender_stopped_<why>` when unpaced).
    Stop(&'static str),
}

/// Runs an open loop on `schedule`: operation `k` is launched (`launch(k, intended)`) at its
/// slot, with at most `window` in flight; each result goes to `done`. Slots still unsent when
/// the window ends are not sent (the run ends on time) but counted as
/// `unsent_behind_schedule`, so that a saturated run cannot pass for a fast one. A `launch`
/// that cannot make its operation returns the error key to count instead. Returns once every
/// launched operation ended.
pub(crate) async fn run_schedule<T, F, Fut, D>(
    clock: Clock,
    schedule: &Schedule,
    window: usize,
    tally: &mut Tally,
    mut launch: F,
    mut done: D,
) where
    F: FnMut(u64, Instant) -> Result<Fut, String>,
    Fut: Future<Output = T>,
    D: FnMut(&mut Tally, T) -> Flow,
{
    let window = window.max(1);
    let limit = schedule.len(&clock);
    let mut inflight = FuturesUnordered::new();
    let mut k: u64 = 0;
    let mut stopped = false;
    // The wait for the next slot, kept across turns of the loop until it ends: an operation
    // that ends first does not start the (precise, so not free) wait again.
    let mut slot_wait: Option<(Instant, SlotWait)> = None;
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        let now = Instant::now();
        // Launch what is due, up to the window.
        let mut next_due = None;
        while inflight.len() < window && !stopped {
            if let Some(n) = limit {
                if k >= n {
                    break;
                }
            }
            if now >= clock.send_end {
                if let Some(n) = limit {
                    *tally
                        .errors
                        .entry("unsent_behind_schedule".into())
                        .or_default() += n - k;
                    k = n;
                }
                stopped = true;
                break;
            }
            let intended = match schedule {
                Schedule::Unpaced => now,
                _ => schedule.at(&clock, k),
            };
            if intended > now {
                next_due = Some(intended);
                break;
            }
            match launch(k, intended) {
                Ok(op) => inflight.push(op),
                Err(key) => tally.error(key),
            }
            k += 1;
        }
        let slot = match next_due {
            Some(t) => {
                if slot_wait.as_ref().is_none_or(|(at, _)| *at != t) {
                    slot_wait = Some((t, Box::pin(crate::pace::sleep_until(t))));
                }
                slot_wait.as_mut().map(|(_, wait)| wait)
            }
            None => None,
        };
        let result = match slot {
            Some(wait) if inflight.is_empty() => {
                wait.await;
                slot_wait = None;
                continue;
            }
            Some(wait) => {
                tokio::select! {
                    Some(r) = inflight.next() => Some(r),
                    _ = wait => {
                        slot_wait = None;
                        None
                    }
                }
            }
            None if inflight.is_empty() => break,
            None => inflight.next().await,
        };
        if let Some(r) = result {
            if let Flow::Stop(why) = done(tally, r) {
                if !stopped {
                    stopped = true;
                    let left = limit.map_or(0, |n| n.saturating_sub(k));
                    if left > 0 {
                        *tally.errors.entry(format!("unsent_{why}")).or_default() += left;
                    } else {
                        tally.error(format!("sender_stopped_{why}"));
                    }
                }
            }
        }
    }
}

/// A wait for a slot of the schedule ([`crate::pace::sleep_until`]).
type SlotWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One sender keeping up to `window` sends in flight on `schedule`, with client message ids
/// `<letter><sender>-<k>`: `send(cmid, intended)` makes each send.
pub(crate) async fn paced_sender<F, Fut>(
    ctx: Arc<Ctx>,
    letter: char,
    sender: usize,
    window: usize,
    schedule: Schedule,
    send: F,
) -> Tally
where
    F: Fn(ClientMsgId, Instant) -> Fut,
    Fut: Future<Output = Sent>,
{
    let mut tally = Tally::default();
    let clock = ctx.clock;
    run_schedule(
        clock,
        &schedule,
        window,
        &mut tally,
        |k, intended| {
            ClientMsgId::new(format!("{letter}{sender}-{k}"))
                .map(|cmid| send(cmid, intended))
                .map_err(|_| "bad_client_msg_id".to_owned())
        },
        |tally, sent: Sent| {
            let closed = sent.closed;
            account(tally, &clock, sent);
            if closed {
                Flow::Stop("connection_closed")
            } else {
                Flow::Go
            }
        },
    )
    .await;
    tally
}

/// Samples the servers and this process at the start and at the end of the clock's measured
/// window, sleeping until each.
pub(crate) async fn sample_window(config: &RunConfig, clock: &Clock) -> Samples {
    tokio::time::sleep_until(clock.measure_start.into()).await;
    let (server_a, self_a) = sample(config);
    tokio::time::sleep_until(clock.send_end.into()).await;
    let (server_b, self_b) = sample(config);
    Samples {
        server: server_a.zip(server_b),
        loadgen: self_a.zip(self_b),
    }
}

/// The samples of one measured window.
pub(crate) struct Samples {
    pub server: Option<(ProcSample, ProcSample)>,
    pub loadgen: Option<(ProcSample, ProcSample)>,
}

/// Joins the tasks of a run (senders, pagers, queriers), merging their tallies; one still
/// running at `hard_end` is aborted and counted as `<what>_abandoned`.
pub(crate) async fn join_tasks(
    tasks: Vec<JoinHandle<Tally>>,
    hard_end: Instant,
    what: &str,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    for task in tasks {
        let left = hard_end.saturating_duration_since(Instant::now());
        let abort = task.abort_handle();
        match tokio::time::timeout(left, task).await {
            Ok(Ok(t)) => tally.merge(&t),
            Ok(Err(e)) => anyhow::bail!("a {what} task failed: {e}"),
            Err(_) => {
                abort.abort();
                tally.error(format!("{what}_abandoned"));
            }
        }
    }
    Ok(())
}

/// After the last send: waits while owed pushes keep arriving. `owed()` says whether pushes
/// are still owed; the drain ends when none are (after a short quiet if some sends failed, as
/// a failed send may have been stored and owe pushes too), when none arrived for the
/// scenario's `drain_secs` (the missing ones are then reported by the checker), or after
/// [`MAX_DRAIN`]. Counts `drain_gave_up` when pushes were still owed. Returns how long it
/// waited.
pub(crate) async fn drain(
    live: &Live,
    scenario: &crate::scenario::Scenario,
    owed: impl Fn() -> bool,
    tally: &mut Tally,
) -> Duration {
    let started = Instant::now();
    let failures = Live::get(&live.acks) < Live::get(&live.sends);
    let quiet = if failures {
        Duration::from_millis(500).min(scenario.drain())
    } else {
        Duration::ZERO
    };
    let mut last = (Live::get(&live.deliveries), Instant::now());
    crate::run::wait_for(MAX_DRAIN, || {
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
    started.elapsed()
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
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::scenario::Scenario;

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

    fn clock(secs: f64) -> Clock {
        let s = Scenario::from_toml(
            &format!("kind = \"dm-pingpong\"\nusers = 2\nrate = 1\nduration_secs = {secs}\n"),
            "t",
            "t",
        )
        .unwrap();
        Clock::new(Instant::now(), &s)
    }

    #[test]
    fn offsets_schedules_count_only_the_slots_in_the_window() {
        let c = clock(1.0);
        let offsets: Arc<[Duration]> = [0, 300, 999, 1000, 1500]
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        let s = Schedule::Offsets(offsets);
        assert_eq!(s.len(&c), Some(3));
        assert_eq!(s.at(&c, 1), c.start + Duration::from_millis(300));
        assert_eq!(Schedule::Unpaced.len(&c), None);
        assert_eq!(Schedule::share(10.0, 2, 0).len(&c), Some(5));
    }

    #[tokio::test]
    async fn an_open_loop_launches_every_slot_then_counts_what_it_could_not_send() {
        // 20 slots in 0.2 s, each taking 50 ms, one at a time: at most ~4 fit.
        let c = clock(0.2);
        let s = Schedule::Fixed {
            interval: Duration::from_millis(10),
            phase: Duration::ZERO,
        };
        let mut tally = Tally::default();
        let mut launched = 0u64;
        let mut finished = 0u64;
        run_schedule(
            c,
            &s,
            1,
            &mut tally,
            |_, _| {
                launched += 1;
                Ok(tokio::time::sleep(Duration::from_millis(50)))
            },
            |_, ()| {
                finished += 1;
                Flow::Go
            },
        )
        .await;
        assert_eq!(launched, finished);
        let unsent = tally.errors.get("unsent_behind_schedule").copied();
        assert_eq!(launched + unsent.unwrap_or(0), 20, "{tally:?}");
        assert!(unsent.unwrap_or(0) >= 10, "{tally:?}");

        // A stop ends the loop and counts the slots left.
        let c = clock(0.2);
        let mut tally = Tally::default();
        run_schedule(
            c,
            &s,
            4,
            &mut tally,
            |_, _| Ok(async {}),
            |_, ()| Flow::Stop("connection_closed"),
        )
        .await;
        let left = tally.errors.get("unsent_connection_closed").copied();
        assert!(left.is_some_and(|n| n >= 15), "{tally:?}");
    }
}
