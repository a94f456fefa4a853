//! The `reconnect-storm` scenario: every user is connected, then every connection drops at
//! once (as when a node restarts or a network blips) and every user reconnects, resuming its
//! event stream, `window` at a time (started at `rate`/s; 0 as fast as the window allows).
//! Storms repeat back to back until the measured window ends; the first `warmup_secs` of
//! storms are not recorded.
//!
//! Each reconnect's latency (`connect`) is measured from the storm's start (or from its slot
//! when paced), so it includes the time spent queued behind the other reconnects: it is the
//! time until that user is back. Connections are cut without a WebSocket close frame
//! ([`chat_client::Connection::sever`]), as a crash or a network failure would leave them.
//!
//! With a `[reconnect]` table, the first `senders` users do not storm: they stay connected
//! and send to the storming users (one direct conversation each, round-robin) at
//! `message_rate`, so that messages arrive while their receivers are away and every resume
//! has something to catch up on. Each storming user takes every push its connection received
//! before the cut, resumes from the cursor those pushes left, and its successive connections
//! are one chain for the checker ([`crate::checker::Checker::observer_resumed`]): every
//! message sent to the user once and in order across them, none lost. After the window the
//! run waits for every owed push (each acknowledged message owes its receiver one), then
//! reads every conversation back.
//!
//! A user whose node cannot be reached (killed during the run: `scripts/bench --kill-after`)
//! reconnects to the next target that answers, and resumes there from the same cursor; a
//! sender whose connection is found closed connects elsewhere, sends again what the cut
//! left unacknowledged (same client message id: the server must not store it twice), and
//! goes on sending.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_client::RawEvent;
use chat_types::{ConversationId, EventSeq, ServerFrame};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checker::ObserverId;
use crate::common::{self, paced_sender, read_pushes, send_one, Pump, Schedule, Sent, Side};
use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{lock, sample, spawn_progress, Clock, Ctx, Outcome, RunConfig, SharedChecker};
use crate::setup::{self, Targets, User};

/// How long a cut connection's reader may take to hand over the pushes it holds.
const HANDOVER: Duration = Duration::from_secs(10);

/// One open connection of a storming user and the task reading its pushes.
struct Link {
    side: Arc<Side>,
    reader: JoinHandle<Tally>,
}

/// What a link left when it ended.
struct Ended {
    tally: Tally,
    /// Where the next connection resumes: the last event received, or the head a `resync`
    /// named.
    cursor: EventSeq,
    /// The server answered this connection's resume with `resync`.
    resync: bool,
}

impl Link {
    fn start(side: Arc<Side>, ctx: &Arc<Ctx>, stop: &watch::Sender<bool>, end: Instant) -> Link {
        let reader = tokio::spawn(read_pushes(
            Arc::clone(&side),
            Arc::clone(ctx),
            None,
            None,
            stop.subscribe(),
            end,
        ));
        Link { side, reader }
    }

    /// Waits until the reader took every push the connection received (it ends when the
    /// connection closed, or when the run told it to stop), then looks for a `resync`.
    async fn finish(self, ctx: &Ctx) -> Ended {
        let mut tally = Tally::default();
        let abort = self.reader.abort_handle();
        match tokio::time::timeout(HANDOVER, self.reader).await {
            Ok(Ok(t)) => tally.merge(&t),
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                lock(&ctx.checker).observer_closed(self.side.observer);
                ctx.live.connection_closed();
                tally.error("push_reader_stuck");
            }
        }
        let mut cursor = self.side.conn.last_event_seq();
        let mut resync = false;
        // Raw events queue unread while the link lives (a storming user sends nothing, so
        // they are few): only a resync matters here.
        while let Ok(Some(event)) = self.side.conn.next_raw_frame(Duration::ZERO).await {
            match event {
                RawEvent::Frame(ServerFrame::Resync { event_head }) => {
                    resync = true;
                    cursor = cursor.max(event_head);
                }
                RawEvent::Closed { .. } => break,
                _ => {}
            }
        }
        Ended {
            tally,
            cursor,
            resync,
        }
    }
}

/// A user that storms: its cursor, its last connection's observer, its open link.
struct Stormer {
    user: User,
    cursor: EventSeq,
    last: ObserverId,
    link: Option<Link>,
}

impl Stormer {
    /// Ends the open link, if any ([`Link::finish`]): records its tally and a refused
    /// resume, and keeps where the next connection resumes. Returns the link's connection.
    async fn end_link(
        &mut self,
        ctx: &Ctx,
        tally: &mut Tally,
    ) -> Option<Arc<chat_client::Connection>> {
        let link = self.link.take()?;
        let conn = Arc::clone(&link.side.conn);
        let observer = link.side.observer;
        let ended = link.finish(ctx).await;
        tally.merge(&ended.tally);
        if ended.resync {
            tally.error("resync");
            lock(&ctx.checker).resume_refused(observer);
        }
        self.cursor = self.cursor.max(ended.cursor);
        self.last = observer;
        Some(conn)
    }
}

/// How long a sender whose node is gone waits between attempts to connect elsewhere.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// A sender's connection, replaced when it is found closed (its node was killed): the
/// sender reconnects to the next node that answers and goes on sending (a send the loss cut
/// off before its ack is sent again there, by the sending closure).
struct SenderSlot {
    current: std::sync::Mutex<Arc<Side>>,
    /// One reconnect at a time; the sends that find the connection closed meanwhile wait.
    reconnecting: tokio::sync::Mutex<()>,
    /// Every connection the sender had, to close at the end.
    all: std::sync::Mutex<Vec<Arc<chat_client::Connection>>>,
}

impl SenderSlot {
    fn new(side: Arc<Side>) -> SenderSlot {
        SenderSlot {
            all: std::sync::Mutex::new(vec![Arc::clone(&side.conn)]),
            current: std::sync::Mutex::new(side),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    fn side(&self) -> Arc<Side> {
        Arc::clone(&lock(&self.current))
    }

    /// Replaces `lost` (unless another send did already) with a connection to a node that
    /// answers, whose pushes are read and dropped until `stop` or `deadline`. Whether the
    /// sender has a connection again.
    async fn replace(
        &self,
        lost: &Arc<Side>,
        targets: &Targets,
        ctx: &Ctx,
        stop: &watch::Sender<bool>,
        deadline: Instant,
    ) -> bool {
        let _one = self.reconnecting.lock().await;
        let now = self.side();
        if !Arc::ptr_eq(&now, lost) {
            return true;
        }
        // Until the cluster has marked the node down, the others may refuse the user as
        // unavailable (its session lived there): try again until the run ends.
        let (conn, target) = loop {
            let mut t = Tally::default();
            match setup::connect_user_anywhere(targets, &lost.user, &mut t, None).await {
                Ok((conn, _, target)) => break (conn, target),
                Err(_) if Instant::now() + RECONNECT_PAUSE < deadline && !*stop.borrow() => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(_) => return false,
            }
        };
        let conn = Arc::new(conn);
        let observer = lock(&ctx.checker).observer_opened(lost.user.user_id);
        let side = Arc::new(Side {
            user: User {
                target,
                ..lost.user.clone()
            },
            conn: Arc::clone(&conn),
            observer,
        });
        ctx.live.connection_opened();
        lock(&self.all).push(Arc::clone(&conn));
        *lock(&self.current) = side;
        // The new connection's pushes (its cursor notes) are read, so that it never fills.
        tokio::spawn(common::drop_raw_events(conn, stop.subscribe(), deadline));
        true
    }
}

pub(crate) async fn run_reconnect(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: SharedChecker,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let setup_started = Instant::now();
    let mut tally = Tally::default();
    let mut connections = Connections::default();
    let (mut sides, _) = common::set_up_users(
        config,
        targets,
        prefix,
        &checker,
        &live,
        &mut tally,
        &mut connections,
    )
    .await?;
    let traffic = scenario.reconnect.clone();
    let storming = sides.split_off(traffic.as_ref().map_or(0, |t| t.senders as usize));
    let senders = sides;
    let convs =
        match open_conversations(&senders, &storming, &checker, scenario.setup_concurrency).await {
            Ok(convs) => convs,
            Err(e) => {
                // Nothing may stay open after a failed set-up.
                common::close_all(senders.iter().chain(&storming).cloned()).await;
                return Err(e);
            }
        };
    let setup = setup_started.elapsed();

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    live.start_timeline(clock.start, common::timeline_secs(scenario));
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock,
        checker: Arc::clone(&checker),
        live: Arc::clone(&live),
    });
    let hard_end = common::hard_end(&clock, scenario);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));

    // Readers first, so that no push is missed.
    let (stop, _) = watch::channel(false);
    let mut stormers: Vec<Stormer> = storming
        .into_iter()
        .map(|side| Stormer {
            user: side.user.clone(),
            cursor: side.conn.last_event_seq(),
            last: side.observer,
            link: Some(Link::start(side, &ctx, &stop, hard_end)),
        })
        .collect();
    let mut pump = Pump::over(&senders, &ctx, None, hard_end);
    for side in &senders {
        pump.drop_raw_events(side);
    }
    let slots: Vec<Arc<SenderSlot>> = senders
        .iter()
        .map(|side| Arc::new(SenderSlot::new(Arc::clone(side))))
        .collect();
    let mut sending = Vec::new();
    let shared_targets = Arc::new(targets.clone());
    if let Some(t) = &traffic {
        for (n, (slot, convs)) in slots.iter().zip(convs.iter()).enumerate() {
            let schedule = Schedule::share(t.message_rate, senders.len(), n);
            let slot = Arc::clone(slot);
            let convs = Arc::clone(convs);
            let c = Arc::clone(&ctx);
            let targets = Arc::clone(&shared_targets);
            let stop = stop.clone();
            let next = AtomicUsize::new(0);
            sending.push(tokio::spawn(paced_sender(
                Arc::clone(&ctx),
                'r',
                n,
                t.send_window as usize,
                schedule,
                move |cmid, intended| {
                    let conv = convs[next.fetch_add(1, Ordering::Relaxed) % convs.len()];
                    let (slot, c, targets, stop) = (
                        Arc::clone(&slot),
                        Arc::clone(&c),
                        Arc::clone(&targets),
                        stop.clone(),
                    );
                    async move {
                        let side = slot.side();
                        let sent = send_one(
                            Arc::clone(&side),
                            Arc::clone(&c),
                            conv,
                            cmid.clone(),
                            intended,
                        )
                        .await;
                        // Its node is gone: the sender goes on through another one, and sends
                        // again what was cut off, with the same client message id, as a
                        // client does: stored once or not at all, never twice.
                        if !sent.closed || !slot.replace(&side, &targets, &c, &stop, hard_end).await
                        {
                            return sent;
                        }
                        if sent.acked.is_some() {
                            return Sent {
                                closed: false,
                                ..sent
                            };
                        }
                        let mut again = send_one(slot.side(), c, conv, cmid, intended).await;
                        let mut errors = sent.errors;
                        errors.append(&mut again.errors);
                        Sent {
                            errors,
                            closed: false,
                            ..again
                        }
                    }
                },
            )));
        }
    }

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
        // Cut every connection at once, then take what each had received.
        for s in &stormers {
            if let Some(link) = &s.link {
                link.side.conn.sever();
            }
        }
        for s in stormers.iter_mut() {
            s.end_link(&ctx, &mut tally).await;
        }
        let plans: Vec<(usize, User, EventSeq, ObserverId)> = stormers
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.user.clone(), s.cursor, s.last))
            .collect();
        let results =
            futures_util::stream::iter(plans.into_iter().map(|(i, user, resume, last)| {
                let ctx = Arc::clone(&ctx);
                let stop = &stop;
                async move {
                    let intended = interval.map_or(storm, |iv| storm + iv.mul_f64(i as f64));
                    crate::pace::sleep_until(intended).await;
                    let mut t = Tally::default();
                    let r =
                        setup::connect_user_anywhere(targets, &user, &mut t, Some(resume)).await;
                    let done = Instant::now();
                    match r {
                        Ok((conn, _, target)) => {
                            let user = User { target, ..user };
                            Live::add(&ctx.live.setups);
                            ctx.live.connection_opened();
                            if record {
                                t.connect.record(done.saturating_duration_since(intended));
                            }
                            if clock.in_window(done) {
                                t.setups_measured += 1;
                            }
                            let observer = lock(&ctx.checker).observer_resumed(last);
                            let side = Arc::new(Side {
                                user,
                                conn: Arc::new(conn),
                                observer,
                            });
                            (i, t, Some(Link::start(side, &ctx, stop, hard_end)))
                        }
                        Err(e) => {
                            let key = format!("reconnect_{}", crate::metrics::error_key(&e));
                            t.error_examples.entry(key.clone()).or_insert(e.to_string());
                            t.error(key);
                            Live::add(&ctx.live.errors);
                            (i, t, None)
                        }
                    }
                }
            }))
            .buffer_unordered(window)
            .collect::<Vec<_>>()
            .await;
        storms += 1;
        for (i, t, link) in results {
            tally.merge(&t);
            match link {
                Some(link) => {
                    connections.opened += 1;
                    // Where it got through: its node may be gone (the next storm starts there).
                    stormers[i].user.target = link.side.user.target;
                    stormers[i].link = Some(link);
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
        // Every storm ran in the warm-up: nothing was measured.
        tally.error("no_storm_measured");
    }
    let measured = Instant::now().saturating_duration_since(clock.measure_start);
    connections.open_at_end = live.connections();
    if config.progress {
        eprintln!(
            "reconnect-storm: {storms} storms of {} users",
            stormers.len()
        );
    }

    common::join_tasks(sending, hard_end, "sender", &mut tally).await?;
    let drained = if traffic.is_some() {
        // Every fresh ack owes its receiver one push, on whichever connection it resumed.
        common::drain(
            &live,
            scenario,
            || Live::get(&live.deliveries) < Live::get(&live.fresh_acks),
            &mut tally,
        )
        .await
    } else {
        Duration::ZERO
    };
    let _ = stop.send(true);
    let mut open = Vec::new();
    for s in stormers.iter_mut() {
        open.extend(s.end_link(&ctx, &mut tally).await);
    }
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }

    // Each sender reads its conversations back through a node that is up (its own may have
    // been killed during the run).
    let mut reads = Vec::new();
    for (convs, slot) in convs.iter().zip(&slots) {
        let side = slot.side();
        let api = &targets.apis[setup::reachable_target(targets, &side.user).await];
        let token = &side.user.token;
        reads.extend(convs.iter().map(|c| (*c, api.clone(), token.clone())));
    }
    crate::run::read_histories(&checker, reads, common::HISTORY_PAGE).await;

    for slot in &slots {
        open.extend(lock(&slot.all).iter().cloned());
    }
    common::close_conns(open).await;
    Ok(Outcome {
        tally,
        setup,
        measured,
        drained,
        connections,
        server: server_a.zip(server_b),
        loadgen: self_a.zip(self_b),
    })
}

/// Opens the direct conversation of each storming user with its sender (storming user `j`
/// writes with sender `j % senders`) and watches it. Returns each sender's conversations,
/// in the order of its storming users. No senders: nothing to open.
async fn open_conversations(
    senders: &[Arc<Side>],
    storming: &[Arc<Side>],
    checker: &SharedChecker,
    concurrency: u32,
) -> anyhow::Result<Vec<Arc<Vec<ConversationId>>>> {
    if senders.is_empty() {
        return Ok(Vec::new());
    }
    let opened = futures_util::stream::iter(storming.iter().enumerate().map(|(j, to)| {
        let from = Arc::clone(&senders[j % senders.len()]);
        let to = to.user.user_id;
        async move { (j, from.conn.open_direct_by_id(to).await, from, to) }
    }))
    .buffer_unordered(concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    let mut by_receiver: Vec<Option<ConversationId>> = vec![None; storming.len()];
    for (j, info, from, to) in opened {
        let info = info.map_err(|e| {
            crate::run::setup_error(
                &format!("{} opening the conversation with {to}", from.user.username),
                e,
            )
        })?;
        let expected = ConversationId::direct(from.user.user_id, to);
        if info.conversation != expected {
            bail!(
                "open_direct returned {} for users {} and {to}, expected {expected}",
                info.conversation,
                from.user.user_id
            );
        }
        lock(checker).watch(expected);
        by_receiver[j] = Some(expected);
    }
    let mut per_sender: Vec<Vec<ConversationId>> = vec![Vec::new(); senders.len()];
    for (j, conv) in by_receiver.into_iter().enumerate() {
        per_sender[j % senders.len()].extend(conv);
    }
    Ok(per_sender.into_iter().map(Arc::new).collect())
}
