//! The steady load of a scenario: direct-message pairs whose two users sit on different nodes
//! (through the client relays), each side sending on a fixed schedule. Every send, ack, failure
//! and push goes into the history checker of `chat-loadtest`; at the end every conversation's
//! full history is read through every live node and judged.
//!
//! A client behaves as a careful real one does: a send is retried until acknowledged with the
//! same `client_msg_id` (so a retry never stores a copy); a connection that ends is replaced by
//! one to another node that resumes the user's event stream from the last `event_seq` held;
//! a connection that answers nothing (a paused node) is judged dead after a send and a ping
//! time out, dropped, and replaced the same way. One user's connections over a run are one
//! observer for the checker, so a resume that skips or repeats a push is a violation; only a
//! `resync` answer (the server says it cannot replay) starts a new observer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::{ClientError, Connection, ConnectionConfig, HttpApi, RawEvent};
use chat_loadtest::checker::ObserverId;
use chat_loadtest::{CheckReport, Checker};
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, EventSeq, Message, Seq, ServerFrame, UserId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{lock, Bench, Cluster, Health};
use crate::links::Cutter;

const PASSWORD: &str = "chaos-password";
/// How long after the load stops a sender keeps retrying its last message.
const SEND_GRACE: Duration = Duration::from_secs(60);
/// How long a client keeps trying to reconnect before it gives up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub pairs: usize,
    /// Messages per second per pair, both directions together.
    pub rate_per_pair: f64,
    /// How long a request waits for its reply (then: retry, and check the connection).
    pub request_timeout: Duration,
}

/// One acknowledged send attempt.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub conv: ConversationId,
    pub seq: Seq,
    pub started: Instant,
    pub acked: Instant,
}

/// What the clients measured and counted.
#[derive(Default)]
pub struct Stats {
    pub attempts: Mutex<Vec<Attempt>>,
    /// From noticing a lost connection to the welcome of its resumed replacement.
    pub resumes: Mutex<Vec<Duration>>,
    pub resyncs: AtomicU64,
    pub retries: AtomicU64,
    pub dead_connections: AtomicU64,
    pub given_up: AtomicU64,
    pub reconnects_given_up: AtomicU64,
    pub late_acks: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, e: &ClientError) {
        let key = match e {
            ClientError::Server(w) => format!("{:?}", w.code),
            ClientError::Timeout => "timeout".into(),
            ClientError::Closed { .. } => "closed".into(),
            ClientError::Ws(_) => "ws".into(),
            ClientError::Http(_) => "http".into(),
            ClientError::Protocol(_) => "protocol".into(),
        };
        *lock(&self.errors).entry(key).or_default() += 1;
    }
}

/// One user of a pair with its current connection.
struct Side {
    pair: usize,
    index: usize,
    user: UserId,
    token: String,
    conv: ConversationId,
    conn: watch::Sender<Arc<Connection>>,
    observer: Mutex<ObserverId>,
    slot: AtomicUsize,
    /// The highest event seq this user's connections have held: the SDK counts per
    /// connection, so a client carries its cursor from one connection to the next.
    cursor: AtomicU64,
    /// Seqs this side's sends were acknowledged at.
    acked: Mutex<BTreeSet<Seq>>,
    /// Seqs pushed to this side.
    delivered: Mutex<BTreeSet<Seq>>,
    /// What happened to this side's connections, for diagnosing violations.
    journal: Mutex<Vec<String>>,
    /// Every push: (seconds into the load, seq, the connection's event cursor after it).
    pushes: Mutex<Vec<(f64, Seq, EventSeq)>>,
}

/// Everything the client tasks share.
struct Shared {
    prefix: String,
    config: LoadConfig,
    checker: Mutex<Checker>,
    stats: Arc<Stats>,
    health: Arc<Health>,
    cutter: Cutter,
    /// WebSocket URL prefixes through the relays, per slot (`ws://relay/v1/ws?token=`).
    ws: Mutex<Vec<String>>,
    stop_sending: watch::Sender<bool>,
    stop_reading: watch::Sender<bool>,
    started: Instant,
    /// Observer id -> (pair, side).
    observers: Mutex<BTreeMap<u32, (usize, usize)>>,
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    sides: Vec<Arc<Side>>,
    senders: Vec<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    pub stats: Arc<Stats>,
    pub convs: Vec<ConversationId>,
}

/// What a finished load found.
pub struct Outcome {
    pub report: CheckReport,
    /// Conversations whose history differed between nodes (read after everything healed).
    pub history_mismatches: Vec<String>,
    /// How long the pushes owed at the end took to arrive (or the wait gave up).
    pub drain: Duration,
    pub drained: bool,
    /// How long the other steps of finishing took.
    pub phases: String,
}

fn must_cmid(s: String) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

fn api(addr: &str) -> HttpApi {
    HttpApi::with_timeout(&format!("http://{addr}"), Duration::from_secs(10)).expect("api")
}

/// Retries `f` on errors until it succeeds or 60 s pass.
async fn must_retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        match f(attempt).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("  ({what}: {e}; retrying)");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
        attempt += 1;
    }
}

impl Load {
    /// Registers users until `config.pairs` pairs are found whose conversations are owned
    /// evenly by the live nodes, connects both users of each pair (on different nodes) and
    /// starts sending.
    pub async fn must_start<C: Cluster>(
        bench: &Bench<C>,
        prefix: &str,
        config: LoadConfig,
    ) -> Load {
        let ring = bench.must_ring().await;
        let live = bench.live();
        let apis: Vec<(usize, HttpApi)> = live
            .iter()
            .map(|&s| (s, api(&bench.cluster.http_addr(s))))
            .collect();
        let quota = config.pairs.div_ceil(live.len());
        let mut per_owner: BTreeMap<usize, usize> = BTreeMap::new();
        let mut unpaired: Vec<(UserId, String)> = Vec::new();
        let mut pairs: Vec<[(UserId, String); 2]> = Vec::new();
        let mut n = 0;
        let mut registered = std::collections::VecDeque::new();
        while pairs.len() < config.pairs {
            assert!(n < config.pairs * 12, "no even placement among {n} users");
            if registered.is_empty() {
                // A batch at a time, concurrently: registering hashes a password.
                let batch = (2 * (config.pairs - pairs.len())).max(4);
                let names: Vec<String> = (n..n + batch).map(|k| format!("{prefix}u{k}")).collect();
                let ids =
                    futures_util::future::join_all(names.iter().enumerate().map(|(k, name)| {
                        let (_, a) = &apis[(n + k) % apis.len()];
                        must_retry("register", move |_| a.register(name, PASSWORD))
                    }))
                    .await;
                registered.extend(ids.into_iter().map(|r| r.user_id).zip(names));
                n += batch;
            }
            let Some((id, name)) = registered.pop_front() else {
                continue;
            };
            let found = unpaired.iter().position(|(other, _)| {
                let conv = ConversationId::direct(*other, id);
                bench
                    .owner(&ring, &conv)
                    .is_some_and(|o| per_owner.get(&o).copied().unwrap_or(0) < quota)
            });
            match found {
                Some(p) => {
                    let other = unpaired.remove(p);
                    let conv = ConversationId::direct(other.0, id);
                    let owner = bench.owner(&ring, &conv).expect("owner");
                    *per_owner.entry(owner).or_default() += 1;
                    pairs.push([other, (id, name)]);
                }
                None => unpaired.push((id, name)),
            }
        }

        let (stop_sending, _) = watch::channel(false);
        let (stop_reading, _) = watch::channel(false);
        let ws: Vec<String> = (0..bench.slots())
            .map(|s| bench.links.ws_url(s, ""))
            .collect();
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            prefix: prefix.to_owned(),
            config: config.clone(),
            checker: Mutex::new(Checker::new()),
            stats: Arc::clone(&stats),
            health: Arc::clone(&bench.health),
            cutter: bench.links.cutter(),
            ws: Mutex::new(ws),
            stop_sending,
            stop_reading,
            started: Instant::now(),
            observers: Mutex::new(BTreeMap::new()),
        });

        // Log in and connect every user at once, each pair's two users on different nodes.
        let placed: Vec<(usize, usize, String, usize)> = pairs
            .iter()
            .enumerate()
            .flat_map(|(p, pair)| {
                let live = &live;
                pair.iter().enumerate().map(move |(index, (_, name))| {
                    (p, index, name.clone(), live[(p + index) % live.len()])
                })
            })
            .collect();
        let ws_of: Vec<String> = lock(&shared.ws).clone();
        let cfg = ConnectionConfig {
            request_timeout: config.request_timeout,
            ..Default::default()
        };
        let connected = futures_util::future::join_all(placed.iter().map(|(_, _, name, slot)| {
            let (_, a) = apis
                .iter()
                .find(|(s, _)| s == slot)
                .expect("an api per live slot");
            let ws = &ws_of[*slot];
            let cfg = cfg.clone();
            async move {
                let token = must_retry("login", |_| a.login(name, PASSWORD)).await.token;
                let url = format!("{ws}{token}");
                let (conn, _) =
                    must_retry("connect", |_| Connection::connect_with(&url, cfg.clone())).await;
                (token, conn)
            }
        }))
        .await;
        let mut connected = connected.into_iter();
        let mut sides = Vec::new();
        let mut convs = Vec::new();
        for (p, pair) in pairs.iter().enumerate() {
            let conv = ConversationId::direct(pair[0].0, pair[1].0);
            convs.push(conv);
            for (index, (user, _)) in pair.iter().enumerate() {
                let slot = live[(p + index) % live.len()];
                let (token, conn) = connected.next().expect("a connection per user");
                let observer = lock(&shared.checker).observer_opened(*user);
                lock(&shared.observers).insert(observer.0, (p, index));
                let (tx, _) = watch::channel(Arc::new(conn));
                sides.push(Arc::new(Side {
                    pair: p,
                    index,
                    user: *user,
                    token,
                    conv,
                    conn: tx,
                    observer: Mutex::new(observer),
                    slot: AtomicUsize::new(slot),
                    cursor: AtomicU64::new(0),
                    acked: Mutex::new(BTreeSet::new()),
                    delivered: Mutex::new(BTreeSet::new()),
                    journal: Mutex::new(vec![format!("connected to slot {slot}")]),
                    pushes: Mutex::new(Vec::new()),
                }));
            }
            lock(&shared.checker).watch(conv);
        }
        futures_util::future::join_all(sides.chunks(2).map(|two| {
            let opener = two[0].conn.borrow().clone();
            let peer = two[1].user;
            must_retry("open the conversation", move |_| {
                let c = Arc::clone(&opener);
                async move { c.open_direct_by_id(peer).await }
            })
        }))
        .await;

        let readers = sides
            .iter()
            .map(|s| tokio::spawn(read(Arc::clone(s), Arc::clone(&shared))))
            .collect();
        let senders = sides
            .iter()
            .map(|s| tokio::spawn(send_loop(Arc::clone(s), Arc::clone(&shared))))
            .collect();
        Load {
            shared,
            sides,
            senders,
            readers,
            stats,
            convs,
        }
    }

    /// A new slot's relay is known to clients from now on.
    pub fn slot_added(&self, ws_prefix: String) {
        lock(&self.shared.ws).push(ws_prefix);
    }

    /// Seconds from the start of the load to `t`.
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.shared.started)
            .as_secs_f64()
    }

    /// Which pair and side observer `o` is, and what happened to its connections.
    pub fn describe_observer(&self, o: u32) -> String {
        let Some((pair, index)) = lock(&self.shared.observers).get(&o).copied() else {
            return format!("observer {o}: unknown");
        };
        let side = &self.sides[pair * 2 + index];
        format!(
            "observer {o} = pair {pair} side {index} (user {}): {}",
            side.user,
            lock(&side.journal).join("; ")
        )
    }

    /// The pushes observer `o`'s side received around `seq`: (seconds, seq, cursor).
    pub fn pushes_around(&self, o: u32, seq: Seq) -> String {
        let Some((pair, index)) = lock(&self.shared.observers).get(&o).copied() else {
            return String::new();
        };
        let pushes = lock(&self.sides[pair * 2 + index].pushes);
        let near: Vec<String> = pushes
            .iter()
            .enumerate()
            .filter(|(_, (_, s, _))| s.0.abs_diff(seq.0) <= 3)
            .map(|(i, (t, s, c))| format!("#{i} {t:.2}s seq {s} cursor {c}"))
            .collect();
        near.join(", ")
    }

    /// Acknowledged sends so far.
    pub fn acked(&self) -> usize {
        lock(&self.stats.attempts).len()
    }

    /// Waits until every conversation has a send started after `since` acknowledged;
    /// how long after `since` the last one was.
    pub async fn must_serve_every_conversation_after(&self, since: Instant) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let latest = {
                let attempts = lock(&self.stats.attempts);
                let mut first: BTreeMap<ConversationId, Instant> = BTreeMap::new();
                for a in attempts.iter().filter(|a| a.started >= since) {
                    first.entry(a.conv).or_insert(a.acked);
                }
                (first.len() == self.convs.len())
                    .then(|| first.values().max().copied())
                    .flatten()
            };
            if let Some(t) = latest {
                return t.saturating_duration_since(since);
            }
            assert!(
                Instant::now() < deadline,
                "some conversation had no send acknowledged within 120 s after the faults healed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops sending, waits for the pushes owed, reads every history through every live node
    /// and judges the run.
    pub async fn finish<C: Cluster>(&mut self, bench: &Bench<C>) -> Outcome {
        let stopping = Instant::now();
        let _ = self.shared.stop_sending.send(true);
        for s in std::mem::take(&mut self.senders) {
            let _ = tokio::time::timeout(SEND_GRACE + Duration::from_secs(30), s).await;
        }
        let senders_done = stopping.elapsed();
        // Every acknowledged message is owed to the other side of its pair. Wait while
        // pushes keep arriving; give up after 5 s without one (or 60 s in all).
        let drain_started = Instant::now();
        let deadline = drain_started + Duration::from_secs(60);
        let mut drained = false;
        let delivered = || -> usize { self.sides.iter().map(|s| lock(&s.delivered).len()).sum() };
        let mut progress = (delivered(), Instant::now());
        while Instant::now() < deadline && progress.1.elapsed() < Duration::from_secs(5) {
            drained = self.sides.chunks(2).all(|two| {
                let owed = |from: &Side, to: &Side| {
                    let got = lock(&to.delivered);
                    lock(&from.acked).iter().all(|s| got.contains(s))
                };
                owed(&two[0], &two[1]) && owed(&two[1], &two[0])
            });
            if drained {
                break;
            }
            let now = delivered();
            if now != progress.0 {
                progress = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let drain = drain_started.elapsed();
        let _ = self.shared.stop_reading.send(true);
        for r in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
        }
        let closing: Vec<Arc<Connection>> =
            self.sides.iter().map(|s| s.conn.borrow().clone()).collect();
        futures_util::future::join_all(closing.iter().map(|c| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
        }))
        .await;
        let reading = Instant::now();

        let mut history_mismatches = Vec::new();
        for two in self.sides.chunks(2) {
            let conv = two[0].conv;
            let token = &two[0].token;
            let mut reads: Vec<(usize, Seq, Vec<Message>)> = Vec::new();
            for slot in bench.members.iter().copied() {
                let a = api(&bench.cluster.http_addr(slot));
                let read = tokio::time::timeout(
                    Duration::from_secs(90),
                    must_retry("read history", |_| read_history(&a, token, conv)),
                )
                .await;
                match read {
                    Ok((head, messages)) => reads.push((slot, head, messages)),
                    Err(_) => history_mismatches.push(format!(
                        "{conv}: the history could not be read through slot {slot}"
                    )),
                }
            }
            let mut checker = lock(&self.shared.checker);
            match reads.first() {
                Some((first_slot, head, messages)) => {
                    checker.history_read(conv, *head, messages);
                    let key = |m: &[Message]| -> Vec<(Seq, UserId, String, String)> {
                        m.iter()
                            .map(|m| (m.seq, m.sender, m.client_msg_id.to_string(), m.body.clone()))
                            .collect()
                    };
                    for (slot, _, other) in &reads[1..] {
                        if key(other) != key(messages) {
                            history_mismatches.push(format!(
                                "{conv}: slot {slot} returns {} messages, slot {first_slot} {}",
                                other.len(),
                                messages.len()
                            ));
                        }
                    }
                }
                None => checker.history_failed(conv, "no node answered"),
            }
        }
        let report = lock(&self.shared.checker).check();
        Outcome {
            report,
            history_mismatches,
            drain,
            drained,
            phases: format!(
                "senders stopped {:.2} s, histories read {:.2} s",
                senders_done.as_secs_f64(),
                reading.elapsed().as_secs_f64()
            ),
        }
    }
}

/// Every page of `conv` through one node: the largest head announced and the messages.
async fn read_history(
    api: &HttpApi,
    token: &str,
    conv: ConversationId,
) -> Result<(Seq, Vec<Message>), ClientError> {
    let mut messages: Vec<Message> = Vec::new();
    let mut head = Seq(0);
    loop {
        let after = messages.last().map_or(Seq(0), |m| m.seq);
        let page = api
            .history(
                token,
                conv,
                HistoryQuery {
                    after: Some(after),
                    limit: Some(200),
                    ..Default::default()
                },
            )
            .await?;
        head = head.max(page.head);
        if page.messages.is_empty() {
            return Ok((head, messages));
        }
        messages.extend(page.messages);
    }
}

/// One side's sends: the next message when its slot comes and the previous one is acked.
async fn send_loop(side: Arc<Side>, shared: Arc<Shared>) {
    let per_side = shared.config.rate_per_pair / 2.0;
    let interval = Duration::from_secs_f64(1.0 / per_side);
    let phase = interval.mul_f64((side.pair * 2 + side.index) as f64 / 17.0 % 1.0);
    let mut next = Instant::now() + phase;
    let stop = shared.stop_sending.subscribe();
    for k in 0u64.. {
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        next = (next + interval).max(Instant::now());
        let cmid = must_cmid(format!(
            "{}p{}s{}m{k}",
            shared.prefix, side.pair, side.index
        ));
        let body = format!("{cmid} from side {}", side.index);
        let observer = *lock(&side.observer);
        let op = lock(&shared.checker).send_invoked(
            Some(observer),
            side.user,
            side.conv,
            cmid.clone(),
            &body,
        );
        let mut give_up_at: Option<Instant> = None;
        loop {
            let conn = side.conn.borrow().clone();
            let started = Instant::now();
            match conn.send(side.conv, cmid.clone(), body.clone()).await {
                Ok(ack) => {
                    let now = Instant::now();
                    lock(&shared.checker).send_acked(op, ack.seq, ack.duplicate);
                    lock(&side.acked).insert(ack.seq);
                    lock(&shared.stats.attempts).push(Attempt {
                        conv: side.conv,
                        seq: ack.seq,
                        started,
                        acked: now,
                    });
                    break;
                }
                Err(e) => {
                    shared.stats.error(&e);
                    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                    match &e {
                        ClientError::Timeout => {
                            // The ack may have been lost, or the node may be gone silent:
                            // a ping tells which.
                            if conn.close_status().is_none() && conn.ping().await.is_err() {
                                shared
                                    .stats
                                    .dead_connections
                                    .fetch_add(1, Ordering::Relaxed);
                                shared.cutter.cut(&side.token);
                            }
                        }
                        ClientError::Closed { .. } | ClientError::Ws(_) => {
                            wait_replaced(&side, &conn, Duration::from_secs(5)).await;
                        }
                        ClientError::Server(w) => {
                            let wait = w.retry_after_ms.unwrap_or(100).clamp(50, 2000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            if *stop.borrow() {
                let at = *give_up_at.get_or_insert(Instant::now() + SEND_GRACE);
                if Instant::now() > at {
                    lock(&shared.checker).send_failed(op);
                    shared.stats.given_up.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Waits (bounded) until the side's connection is not `old` any more.
async fn wait_replaced(side: &Side, old: &Arc<Connection>, limit: Duration) {
    let mut rx = side.conn.subscribe();
    let _ = tokio::time::timeout(limit, rx.wait_for(|c| !Arc::ptr_eq(c, old))).await;
}

/// One side's pushes, and its reconnections: when the connection ends (every push it
/// received read), a new one on another node resumes from the last event seq.
async fn read(side: Arc<Side>, shared: Arc<Shared>) {
    let stop = shared.stop_reading.subscribe();
    let mut conn = side.conn.borrow().clone();
    loop {
        if *stop.borrow() {
            return;
        }
        match conn.next_message(Duration::from_millis(100)).await {
            Ok(Some(m)) => {
                let observer = *lock(&side.observer);
                lock(&shared.checker).delivered(observer, &m);
                lock(&side.delivered).insert(m.seq);
                let at = shared.started.elapsed().as_secs_f64();
                lock(&side.pushes).push((at, m.seq, conn.last_event_seq()));
            }
            Ok(None) => {}
            Err(_) => {
                let lost = Instant::now();
                let held = conn.last_event_seq().0;
                let cursor = EventSeq(side.cursor.fetch_max(held, Ordering::Relaxed).max(held));
                let from = side.slot.load(Ordering::Relaxed);
                match reconnect(&side, &shared, cursor, &stop).await {
                    Some(next) => {
                        lock(&shared.stats.resumes).push(lost.elapsed());
                        lock(&side.journal).push(format!(
                            "{:.2} s: lost on slot {from} at cursor {cursor}, resumed on slot {} \
                             after {:.2} s",
                            lost.duration_since(shared.started).as_secs_f64(),
                            side.slot.load(Ordering::Relaxed),
                            lost.elapsed().as_secs_f64()
                        ));
                        conn = Arc::new(next);
                        side.conn.send_replace(Arc::clone(&conn));
                    }
                    None => return,
                }
            }
        }
        while let Ok(Some(event)) = conn.next_raw_frame(Duration::ZERO).await {
            match event {
                RawEvent::Frame(ServerFrame::Resync { event_head }) => {
                    side.cursor.fetch_max(event_head.0, Ordering::Relaxed);
                    // The server cannot replay: what was missed is in the history. A new
                    // observer, which owes nothing from before.
                    shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    let mut checker = lock(&shared.checker);
                    let mut observer = lock(&side.observer);
                    checker.observer_closed(*observer);
                    *observer = checker.observer_opened(side.user);
                    lock(&shared.observers).insert(observer.0, (side.pair, side.index));
                    let at = shared.started.elapsed().as_secs_f64();
                    lock(&side.journal).push(format!("{at:.2} s: resync"));
                }
                RawEvent::Frame(ServerFrame::Ack { .. }) => {
                    shared.stats.late_acks.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// Connects to the next node that accepts, resuming from `cursor`; `None` when told to stop
/// or after [`RECONNECT_DEADLINE`].
async fn reconnect(
    side: &Side,
    shared: &Shared,
    cursor: EventSeq,
    stop: &watch::Receiver<bool>,
) -> Option<Connection> {
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    let cfg = ConnectionConfig {
        request_timeout: shared.config.request_timeout,
        resume_from: Some(cursor),
        ..Default::default()
    };
    loop {
        let ws = lock(&shared.ws).clone();
        for slot in shared
            .health
            .order(side.slot.load(Ordering::Relaxed), ws.len())
        {
            if *stop.borrow() {
                return None;
            }
            let url = format!("{}{}", ws[slot], side.token);
            if let Ok((conn, _welcome)) = Connection::connect_with(&url, cfg.clone()).await {
                side.slot.store(slot, Ordering::Relaxed);
                return Some(conn);
            }
        }
        if Instant::now() > deadline {
            shared
                .stats
                .reconnects_given_up
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
