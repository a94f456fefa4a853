//! The fault scenarios: each runs a fresh steady load (new users and conversations) on the
//! same cluster, injects its faults, heals, measures how the cluster comes back, stops the
//! load and judges every conversation with the history checker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chat_loadtest::Violation;
use chat_types::ConversationId;

use crate::cluster::{Bench, Cluster};
use crate::load::{Load, LoadConfig, Outcome};

/// One fault scenario and its durations.
#[derive(Clone, Debug)]
pub enum Fault {
    /// kill -9 the node owning the most conversations (not the Raft leader); restart it
    /// after `down`.
    KillOwner { down: Duration },
    /// kill -9 the Raft leader; restart it after `down`.
    KillLeader { down: Duration },
    /// Cut the Raft leader off from the other nodes for `cut`, then heal.
    PartitionLeader { cut: Duration },
    /// Cut a follower that owns conversations off for `cut`, then heal.
    PartitionFollower { cut: Duration },
    /// SIGSTOP the Raft leader for `pause` (past the election and failure timeouts), SIGCONT.
    PauseLeader { pause: Duration },
    /// Cut a node off and heal again every 1-2 s (a different node each time) for `total`.
    Flapping { total: Duration },
    /// Delay every peer request of the busiest owner by `delay` for `total`.
    SlowLink { delay: Duration, total: Duration },
    /// Drop every client WebSocket at once, `times` times, `gap` apart.
    CutClients { times: usize, gap: Duration },
    /// Discard `permille`/1000 of the acks on their way to the clients for `total`.
    DropAcks { permille: u32, total: Duration },
    /// SIGTERM and restart every node, one at a time, each back in service before the next.
    RollingRestart,
    /// A fourth node joins, then the first one drains and stops.
    AddThenDrain,
    /// Fill the disk of the busiest owner (not the leader) to the last byte, hold it full for
    /// `hold` (registering a user through another node meanwhile, so every node must append
    /// to its Raft log), then delete the filler. The node must answer with errors rather than
    /// hang or crash, and then serve again: its conversations, and a registration through it
    /// (a metadata write). With `restart`, a node that still cannot write metadata 20 s after
    /// the space is freed is restarted (SIGTERM, start), and that is noted.
    DiskFull { hold: Duration },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillOwner { .. } => "kill -9 owner",
            Fault::KillLeader { .. } => "kill -9 leader",
            Fault::PartitionLeader { .. } => "partition leader",
            Fault::PartitionFollower { .. } => "partition follower",
            Fault::PauseLeader { .. } => "SIGSTOP leader",
            Fault::Flapping { .. } => "flapping partitions",
            Fault::SlowLink { .. } => "slow link",
            Fault::CutClients { .. } => "cut client connections",
            Fault::DropAcks { .. } => "drop acks",
            Fault::RollingRestart => "rolling restart",
            Fault::AddThenDrain => "add 4th, drain 1st",
            Fault::DiskFull { .. } => "disk full",
        }
    }
}

/// The scenarios to run and the load.
#[derive(Clone, Debug)]
pub struct Plan {
    pub faults: Vec<Fault>,
    pub load: LoadConfig,
    /// Steady load before the first fault and after the last heal.
    pub warm: Duration,
    pub cool: Duration,
}

impl Plan {
    /// `ci` normally; `full` with the long durations when `CHAOS_FULL=1`. `CHAOS_PAIRS` and
    /// `CHAOS_RATE` (messages/s per pair, both directions) override the load.
    pub fn new(ci: Vec<Fault>, full: Vec<Fault>) -> Plan {
        let full_run = full_set();
        let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let load = LoadConfig {
            pairs: env_num("CHAOS_PAIRS").map_or(if full_run { 9 } else { 6 }, |n| n as usize),
            rate_per_pair: env_num("CHAOS_RATE").unwrap_or(20.0),
            request_timeout: secs(2),
        };
        Plan {
            faults: if full_run { full } else { ci },
            load,
            warm: secs(if full_run { 5 } else { 2 }),
            cool: secs(if full_run { 5 } else { 2 }),
        }
    }
}

/// Whether this is the full run (`CHAOS_FULL=1`): every scenario, long durations.
pub fn full_set() -> bool {
    std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1")
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A node losing its conversations: when, which slot, and the conversations it owned.
struct Loss {
    what: String,
    at: Instant,
    convs: Vec<ConversationId>,
}

/// What one scenario measured.
pub struct Figures {
    pub backend: &'static str,
    pub name: &'static str,
    pub took: Duration,
    pub outcome: Outcome,
    pub acks_dropped: u64,
    pub retries: u64,
    pub dead_connections: u64,
    pub given_up: u64,
    pub reconnects_given_up: u64,
    pub resyncs: u64,
    pub late_acks: u64,
    pub resumes: Vec<Duration>,
    /// Per node that lost its conversations: (what, first moved, all moved).
    pub moved: Vec<(String, Option<Duration>, Option<Duration>)>,
    pub notes: Vec<String>,
    pub converge: Duration,
    pub served_again: Duration,
    pub errors: String,
    /// For each missed or misordered push: when it was acked and what the observer's
    /// connections went through.
    pub diagnostics: Vec<String>,
    /// What the scenario itself requires and did not get (e.g. a node that never served
    /// again after its fault was undone).
    pub problems: Vec<String>,
}

impl Figures {
    /// The whole contract held: the stored histories and every push.
    pub fn ok(&self) -> bool {
        self.outcome.report.ok() && self.history_ok()
    }

    /// The verdict and the scenario's own problems, in one line.
    pub fn verdict(&self) -> String {
        let mut v = self.outcome.report.verdict_line();
        for p in &self.problems {
            v.push_str(&format!("; PROBLEM: {p}"));
        }
        v
    }

    /// The contract held for what is stored: nothing acknowledged lost, no duplicate, no gap,
    /// each sender's order kept, the same history through every node. Pushes to open
    /// connections (missed or out of order) are not judged here.
    pub fn history_ok(&self) -> bool {
        self.outcome.report.violations.iter().all(is_about_pushes)
            && self.outcome.history_mismatches.is_empty()
            && self.reconnects_given_up == 0
            && self.problems.is_empty()
    }

    /// Violations about pushes to open connections only.
    pub fn push_violations(&self) -> usize {
        self.outcome
            .report
            .violations
            .iter()
            .filter(|v| is_about_pushes(v))
            .count()
    }
}

/// A push to an open connection that was missed, came out of order or twice.
fn is_about_pushes(v: &Violation) -> bool {
    match v {
        Violation::Undelivered { .. } | Violation::DeliveryOrder { .. } => true,
        Violation::Duplicate { source, .. } => source.starts_with("pushes"),
        _ => false,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), ms)
}

/// The `q` quantile of `v` (nearest rank).
pub fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// Runs every scenario of `plan` on `bench`, one after the other; their figures.
pub async fn must_run_all<C: Cluster>(
    bench: &mut Bench<C>,
    plan: &Plan,
    tag: &str,
) -> Vec<Figures> {
    let mut all = Vec::new();
    for (k, fault) in plan.faults.iter().enumerate() {
        eprintln!(
            "=== [{}] scenario {}/{}: {} (load: {} pairs at {} msg/s per pair)",
            bench.cluster.backend(),
            k + 1,
            plan.faults.len(),
            fault.name(),
            plan.load.pairs,
            plan.load.rate_per_pair
        );
        let f = must_run(bench, plan, fault, &format!("{tag}{k}")).await;
        print_figures(&f);
        eprintln!("{}", table_row(&f));
        all.push(f);
    }
    all
}

async fn must_run<C: Cluster>(
    bench: &mut Bench<C>,
    plan: &Plan,
    fault: &Fault,
    prefix: &str,
) -> Figures {
    let started = Instant::now();
    let mut load = Load::must_start(bench, prefix, plan.load.clone()).await;
    let set_up = started.elapsed();
    let dropped_before = bench.links.acks_dropped();
    tokio::time::sleep(plan.warm).await;
    let mut losses = Vec::new();
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let fault_at = load.at(Instant::now());
    let mut record = Record {
        losses: &mut losses,
        notes: &mut notes,
        problems: &mut problems,
        prefix,
    };
    inject(bench, &load, fault, &mut record).await;
    let heal_at = load.at(Instant::now());
    let converge = bench.must_converge().await;
    let healed = Instant::now();
    let served_again = load.must_serve_every_conversation_after(healed).await;
    tokio::time::sleep(plan.cool).await;
    let stats = std::sync::Arc::clone(&load.stats);
    let finishing = Instant::now();
    let outcome = load.finish(bench).await;
    match replicas_agree(bench, &load.convs).await {
        Ok(d) => notes.push(format!("replicas identical {} after the load", ms(d))),
        Err(e) => problems.push(e),
    }
    eprintln!(
        "    (set up {}, faults {fault_at:.1}-{heal_at:.1} s into the load, finish {}: {})",
        ms(set_up),
        ms(finishing.elapsed()),
        outcome.phases
    );

    let attempts = crate::cluster::lock(&stats.attempts).clone();
    let moved = losses
        .iter()
        .map(|loss| {
            let per_conv: Vec<Option<Duration>> = loss
                .convs
                .iter()
                .map(|c| {
                    attempts
                        .iter()
                        .filter(|a| a.conv == *c && a.started >= loss.at)
                        .map(|a| a.acked.saturating_duration_since(loss.at))
                        .min()
                })
                .collect();
            let first = per_conv.iter().flatten().min().copied();
            let all = if per_conv.iter().all(Option::is_some) {
                per_conv.iter().flatten().max().copied()
            } else {
                None
            };
            (
                format!("{} ({} conversations)", loss.what, loss.convs.len()),
                first,
                all,
            )
        })
        .collect();
    let load_stats = &stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let errors = crate::cluster::lock(&load_stats.errors)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let resumes = crate::cluster::lock(&load_stats.resumes).clone();
    let acks_dropped = bench.links.acks_dropped() - dropped_before;
    if acks_dropped > 0 {
        notes.push(format!(
            "{acks_dropped} acks dropped, {} retries answered as duplicates",
            outcome.report.duplicate_acks
        ));
    }
    let mut diagnostics = Vec::new();
    let mut described = BTreeSet::new();
    for v in &outcome.report.violations {
        let (observer, what, conv, seq) = match v {
            Violation::Undelivered {
                observer,
                conv,
                seq,
                ..
            } => (observer.0, "missed", *conv, *seq),
            Violation::DeliveryOrder {
                observer,
                conv,
                next,
                ..
            } => (observer.0, "pushed out of order", *conv, *next),
            _ => continue,
        };
        if diagnostics.len() < 30 {
            let acked = attempts
                .iter()
                .find(|a| a.conv == conv && a.seq == seq)
                .map_or_else(|| "?".into(), |a| format!("{:.2} s", load.at(a.acked)));
            diagnostics.push(format!(
                "observer {observer} {what} {conv} seq {seq} (acked at {acked}); pushes near: {}",
                load.pushes_around(observer, seq)
            ));
        }
        if described.insert(observer) {
            diagnostics.push(format!("  {}", load.describe_observer(observer)));
        }
    }
    Figures {
        backend: bench.cluster.backend(),
        name: fault.name(),
        took: started.elapsed(),
        outcome,
        acks_dropped,
        retries: get(&load_stats.retries),
        dead_connections: get(&load_stats.dead_connections),
        given_up: get(&load_stats.given_up),
        reconnects_given_up: get(&load_stats.reconnects_given_up),
        resyncs: get(&load_stats.resyncs),
        late_acks: get(&load_stats.late_acks),
        resumes,
        moved,
        notes,
        converge,
        served_again,
        errors,
        diagnostics,
        problems,
    }
}

/// The conversations of the load that `slot` owns now.
async fn owned_by<C: Cluster>(bench: &Bench<C>, load: &Load, slot: usize) -> Vec<ConversationId> {
    let ring = bench.must_ring().await;
    load.convs
        .iter()
        .copied()
        .filter(|c| bench.owner(&ring, c) == Some(slot))
        .collect()
}

/// Polls every running node's own copy of each conversation (`GET /v1/admin/logs/...`) until
/// the replicas under the current ring hold identical entries (seq, writer's epoch, digest),
/// for up to [`REPLICAS_AGREE_WITHIN`]: how long that took, or the first difference.
async fn replicas_agree<C: Cluster>(
    bench: &Bench<C>,
    convs: &[ConversationId],
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut differ = None;
        'convs: for conv in convs {
            let mut copies: Vec<(usize, Vec<crate::harness::LogEntry>)> = Vec::new();
            for i in bench.live() {
                match crate::harness::local_copy(&bench.cluster.http_addr(i), conv).await {
                    Ok(Some(entries)) => copies.push((i, entries)),
                    Ok(None) => {}
                    Err(e) => {
                        differ = Some(e);
                        break 'convs;
                    }
                }
            }
            if let Some(w) = copies.windows(2).find(|w| w[0].1 != w[1].1) {
                let (a, b) = (&w[0], &w[1]);
                let at = a.1.iter().zip(&b.1).position(|(x, y)| x != y);
                differ = Some(format!(
                    "the replicas of {conv} differ: slot {} holds {} entries, slot {} {}; first \
                     difference at entry {:?}",
                    a.0,
                    a.1.len(),
                    b.0,
                    b.1.len(),
                    at.map(|k| (&a.1[k], &b.1[k]))
                ));
                break;
            }
        }
        match differ {
            None => return Ok(started.elapsed()),
            Some(d) if started.elapsed() >= REPLICAS_AGREE_WITHIN => {
                return Err(format!("{d} (still after {})", ms(started.elapsed())))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The target: identical logs within 10 s of the last heal (here: of the load's end).
const REPLICAS_AGREE_WITHIN: Duration = Duration::from_secs(10);

/// The member slot owning the most conversations of the load, not `except`.
async fn busiest<C: Cluster>(bench: &Bench<C>, load: &Load, except: Option<usize>) -> usize {
    let mut best = (0, usize::MAX);
    for &s in &bench.members {
        if Some(s) == except {
            continue;
        }
        let n = owned_by(bench, load, s).await.len();
        if best.1 == usize::MAX || n > best.0 {
            best = (n, s);
        }
    }
    best.1
}

async fn must_leader<C: Cluster>(bench: &Bench<C>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = bench.leader().await {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader known within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the other live nodes until they agree on a leader other than `old`; how long.
async fn must_see_new_leader<C: Cluster>(bench: &Bench<C>, old: usize, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = BTreeSet::new();
        for i in bench.live().into_iter().filter(|&i| i != old) {
            leaders.insert(bench.readyz(i).await.and_then(|r| r.leader));
        }
        if let [Some(l)] = leaders.into_iter().collect::<Vec<_>>()[..] {
            if bench.slot_of(l) != Some(old) {
                return since.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "no new leader within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the other live nodes until one has removed `slot` from the ring; how long.
async fn must_see_marked_down<C: Cluster>(
    bench: &Bench<C>,
    slot: usize,
    since: Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    let Some(id) = bench.ids.get(&slot).copied() else {
        return Duration::ZERO;
    };
    loop {
        for i in bench.live().into_iter().filter(|&i| i != slot) {
            if bench
                .readyz(i)
                .await
                .is_some_and(|r| r.ready && !r.members.contains(&id))
            {
                return since.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot} not marked down within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

/// What a fault's injection records besides its effect on the load.
struct Record<'a> {
    losses: &'a mut Vec<Loss>,
    notes: &'a mut Vec<String>,
    problems: &'a mut Vec<String>,
    /// The scenario's prefix, for names the injection makes up.
    prefix: &'a str,
}

/// The load's client errors by kind so far.
fn error_counts(load: &Load) -> BTreeMap<String, u64> {
    crate::cluster::lock(&load.stats.errors).clone()
}

/// The errors counted since `before`, by kind.
fn errors_since(load: &Load, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    error_counts(load)
        .into_iter()
        .map(|(k, n)| {
            let was = before.get(&k).copied().unwrap_or(0);
            (k, n - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Kinds of client error that are not an answer from a node.
const NOT_ANSWERS: &[&str] = &["timeout", "closed", "ws", "http", "protocol"];

/// Registers a new user through slot `i` (a metadata write: a Raft entry every node appends).
async fn register_through<C: Cluster>(
    bench: &Bench<C>,
    i: usize,
    name: &str,
) -> Result<(), String> {
    let url = format!("http://{}", bench.cluster.http_addr(i));
    let api = chat_client::HttpApi::with_timeout(&url, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    api.register(name, "chaos-password")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Registers users through slot `i` until one succeeds or `limit` passes; how long it took,
/// or the last error.
async fn must_try_register<C: Cluster>(
    bench: &Bench<C>,
    i: usize,
    name: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut k = 0;
    loop {
        let last = match register_through(bench, i, &format!("{name}{k}")).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => e,
        };
        if started.elapsed() > limit {
            return Err(last);
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether slot `i` answers `/healthz`.
async fn answers<C: Cluster>(bench: &Bench<C>, i: usize) -> bool {
    let url = format!("http://{}/healthz", bench.cluster.http_addr(i));
    matches!(
        crate::cluster::http_json("GET", &url, None).await,
        Ok((200, _))
    )
}

fn describe(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn inject<C: Cluster>(
    bench: &mut Bench<C>,
    load: &Load,
    fault: &Fault,
    rec: &mut Record<'_>,
) {
    let losses = &mut *rec.losses;
    let notes = &mut *rec.notes;
    match fault {
        Fault::KillOwner { down } => {
            let leader = must_leader(bench).await;
            let victim = busiest(bench, load, Some(leader)).await;
            let convs = owned_by(bench, load, victim).await;
            bench.kill(victim);
            let at = Instant::now();
            losses.push(Loss {
                what: format!("slot {victim} killed"),
                at,
                convs,
            });
            let down_after = must_see_marked_down(bench, victim, at).await;
            notes.push(format!("marked down {}", ms(down_after)));
            sleep_until(at + *down).await;
            let back = bench.start(victim).await;
            notes.push(format!("restarted, serving after {}", ms(back)));
        }
        Fault::KillLeader { down } => {
            let victim = must_leader(bench).await;
            let convs = owned_by(bench, load, victim).await;
            bench.kill(victim);
            let at = Instant::now();
            losses.push(Loss {
                what: format!("leader slot {victim} killed"),
                at,
                convs,
            });
            let elected = must_see_new_leader(bench, victim, at).await;
            let down_after = must_see_marked_down(bench, victim, at).await;
            notes.push(format!(
                "new leader {}, marked down {}",
                ms(elected),
                ms(down_after)
            ));
            sleep_until(at + *down).await;
            let back = bench.start(victim).await;
            notes.push(format!("restarted, serving after {}", ms(back)));
        }
        Fault::PartitionLeader { cut } | Fault::PartitionFollower { cut } => {
            let leader = must_leader(bench).await;
            let victim = match fault {
                Fault::PartitionLeader { .. } => leader,
                _ => busiest(bench, load, Some(leader)).await,
            };
            let convs = owned_by(bench, load, victim).await;
            bench.cluster.partition(victim).await;
            let at = Instant::now();
            losses.push(Loss {
                what: format!("slot {victim} cut off"),
                at,
                convs,
            });
            let down_after = must_see_marked_down(bench, victim, at).await;
            notes.push(format!("marked down {}", ms(down_after)));
            sleep_until(at + *cut).await;
            bench.cluster.heal().await;
        }
        Fault::PauseLeader { pause } => {
            let victim = must_leader(bench).await;
            let convs = owned_by(bench, load, victim).await;
            bench.pause(victim);
            let at = Instant::now();
            losses.push(Loss {
                what: format!("leader slot {victim} stopped"),
                at,
                convs,
            });
            let elected = must_see_new_leader(bench, victim, at).await;
            notes.push(format!("new leader {}", ms(elected)));
            sleep_until(at + *pause).await;
            bench.resume(victim);
        }
        Fault::Flapping { total } => {
            let end = Instant::now() + *total;
            let mut k = 0;
            let slots: Vec<usize> = bench.members.iter().copied().collect();
            while Instant::now() < end {
                let victim = slots[k % slots.len()];
                bench.cluster.partition(victim).await;
                tokio::time::sleep(Duration::from_millis(1000 + rand::random::<u64>() % 1000))
                    .await;
                bench.cluster.heal().await;
                tokio::time::sleep(Duration::from_millis(1000 + rand::random::<u64>() % 1000))
                    .await;
                k += 1;
            }
            notes.push(format!("{k} cut/heal cycles"));
        }
        Fault::SlowLink { delay, total } => {
            let victim = busiest(bench, load, None).await;
            bench.cluster.slow(victim, *delay).await;
            notes.push(format!(
                "slot {victim} +{} ms per peer request",
                delay.as_millis()
            ));
            let before = load.acked();
            tokio::time::sleep(*total).await;
            notes.push(format!("{} acks while slow", load.acked() - before));
            bench.cluster.heal().await;
        }
        Fault::CutClients { times, gap } => {
            for _ in 0..*times {
                let n = bench.links.cut_all();
                notes.push(format!("cut {n}"));
                tokio::time::sleep(*gap).await;
            }
        }
        Fault::DropAcks { permille, total } => {
            bench.links.drop_acks(*permille);
            tokio::time::sleep(*total).await;
            bench.links.drop_acks(0);
        }
        Fault::RollingRestart => {
            let slots: Vec<usize> = bench.members.iter().copied().collect();
            for s in slots {
                bench.stop(s);
                let back = bench.start(s).await;
                notes.push(format!("slot {s} back {}", ms(back)));
                bench.must_converge().await;
            }
        }
        Fault::AddThenDrain => {
            let added = bench.add_node().await;
            load.slot_added(bench.links.ws_url(added, ""));
            let c = bench.must_converge().await;
            notes.push(format!("slot {added} joined, converged {}", ms(c)));
            let first = *bench.members.iter().next().expect("a member");
            let convs = owned_by(bench, load, first).await;
            bench.must_drain(first).await;
            losses.push(Loss {
                what: format!("slot {first} drained"),
                at: Instant::now(),
                convs,
            });
        }
        Fault::DiskFull { hold } => {
            let leader = must_leader(bench).await;
            let victim = busiest(bench, load, Some(leader)).await;
            let convs = owned_by(bench, load, victim).await;
            let before = error_counts(load);
            let acked_before = load.acked();
            let filled = bench
                .cluster
                .fill_disk(victim)
                .unwrap_or_else(|e| panic!("filling slot {victim}'s disk: {e}"));
            let at = Instant::now();
            notes.push(format!(
                "slot {victim}'s disk filled ({} MiB filler)",
                filled >> 20
            ));
            // A metadata change while the disk is full, which every node appends to its
            // Raft log (the leader is another node, so the majority has room for it).
            tokio::time::sleep(*hold / 2).await;
            match register_through(bench, leader, &format!("{}dfa", rec.prefix)).await {
                Ok(()) => notes.push(format!("a user registered through slot {leader} meanwhile")),
                Err(e) => notes.push(format!(
                    "registering through slot {leader} meanwhile failed: {e}"
                )),
            }
            sleep_until(at + *hold).await;
            let during = errors_since(load, &before);
            let answered: u64 = during
                .iter()
                .filter(|(k, _)| !NOT_ANSWERS.contains(&k.as_str()))
                .map(|(_, n)| n)
                .sum();
            notes.push(format!(
                "while full: {} acks, failed sends: {}",
                load.acked() - acked_before,
                describe(&during)
            ));
            // A node that cannot write its metadata log stops itself (its share moves to the
            // others); one that goes on must answer, and refuse what it cannot store.
            let stopped = bench.cluster.exited(victim);
            match &stopped {
                Some(status) => notes.push(format!("slot {victim} stopped itself ({status})")),
                None => {
                    if answered == 0 {
                        rec.problems.push(format!(
                            "no send was answered with an error while slot {victim}'s disk \
                             was full (failures: {})",
                            describe(&during)
                        ));
                    }
                    if !answers(bench, victim).await {
                        rec.problems.push(format!(
                            "slot {victim} neither answers /healthz nor stopped with a full disk"
                        ));
                    }
                }
            }
            bench.cluster.free_disk(victim);
            let freed = Instant::now();
            losses.push(Loss {
                what: format!("slot {victim}'s disk freed"),
                at: freed,
                convs,
            });
            // As its supervisor would: a node that stopped is started again.
            if stopped.is_some() || bench.cluster.exited(victim).is_some() {
                let back = bench.start(victim).await;
                notes.push(format!("started again, serving after {}", ms(back)));
            }
            let name = format!("{}dfb", rec.prefix);
            match must_try_register(bench, victim, &name, secs(30)).await {
                Ok(d) => notes.push(format!("a registration through it worked {} after", ms(d))),
                Err(e) => rec.problems.push(format!(
                    "registrations through slot {victim} still fail {} after its disk was \
                     freed: {e}",
                    ms(freed.elapsed())
                )),
            }
        }
    }
}

pub fn print_figures(f: &Figures) {
    let r = &f.outcome.report;
    eprintln!("--- [{}] {} took {}", f.backend, f.name, ms(f.took));
    eprintln!("    {}", r.verdict_line());
    eprintln!(
        "    sends {} acked {} failed {} duplicate-acks {} deliveries {} retries {} \
         acks-dropped {} late-acks {} given-up {}",
        r.sends,
        r.acked,
        r.failed,
        r.duplicate_acks,
        r.deliveries,
        f.retries,
        f.acks_dropped,
        f.late_acks,
        f.given_up
    );
    for (what, first, all) in &f.moved {
        eprintln!(
            "    ownership moved after {what}: first {} all {}",
            opt_ms(*first),
            opt_ms(*all)
        );
    }
    eprintln!(
        "    resumes {} p50 {} p99 {} max {} (resyncs {}, dead connections dropped {}, \
         reconnects given up {})",
        f.resumes.len(),
        opt_ms(quantile(&f.resumes, 0.5)),
        opt_ms(quantile(&f.resumes, 0.99)),
        opt_ms(quantile(&f.resumes, 1.0)),
        f.resyncs,
        f.dead_connections,
        f.reconnects_given_up
    );
    eprintln!(
        "    converged {} after the last heal; every conversation served again {} after that; \
         pushes drained {} ({})",
        ms(f.converge),
        ms(f.served_again),
        ms(f.outcome.drain),
        if f.outcome.drained { "all" } else { "gave up" }
    );
    if !f.notes.is_empty() {
        eprintln!("    {}", f.notes.join("; "));
    }
    if !f.errors.is_empty() {
        eprintln!("    client errors: {}", f.errors);
    }
    for p in &f.problems {
        eprintln!("    PROBLEM {p}");
    }
    for m in &f.outcome.history_mismatches {
        eprintln!("    HISTORY MISMATCH {m}");
    }
    for v in r.violations.iter().take(10) {
        eprintln!("    VIOLATION {v}");
    }
    for d in &f.diagnostics {
        eprintln!("    {d}");
    }
}

/// The header of the figures table (docs/reliability.md); [`table_row`] gives its rows.
pub const TABLE_HEADER: &str =
    "| backend | scenario | acked / sent | violations: stored, pushes | \
     ownership moved (first / all) | resumes: n, p50, p99 | converged after heal | notes |\n\
     |---|---|---|---|---|---|---|---|";

/// One scenario's figures as a row of the table.
pub fn table_row(f: &Figures) -> String {
    let r = &f.outcome.report;
    let moved = if f.moved.is_empty() {
        "-".to_owned()
    } else {
        f.moved
            .iter()
            .map(|(_, a, b)| format!("{} / {}", opt_ms(*a), opt_ms(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let resumes = if f.resumes.is_empty() {
        "0".to_owned()
    } else {
        format!(
            "{}, {}, {}",
            f.resumes.len(),
            opt_ms(quantile(&f.resumes, 0.5)),
            opt_ms(quantile(&f.resumes, 0.99))
        )
    };
    let stored = r.violations.len() - f.push_violations() + f.outcome.history_mismatches.len();
    format!(
        "| {} | {} | {} / {} | {}, {} | {} | {} | {} | {} |",
        f.backend,
        f.name,
        r.acked,
        r.sends,
        stored,
        f.push_violations(),
        moved,
        resumes,
        ms(f.converge),
        f.notes.join("; ")
    )
}

/// The figures of every scenario of a test as a Markdown table.
pub fn print_table(all: &[Figures]) {
    eprintln!("\n{TABLE_HEADER}");
    for f in all {
        eprintln!("{}", table_row(f));
    }
}

/// Fails with every failing scenario named.
pub fn assert_all_ok(all: &[Figures]) {
    let failed: Vec<String> = all
        .iter()
        .filter(|f| !f.ok())
        .map(|f| format!("{}: {}", f.name, f.verdict()))
        .collect();
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}",
        failed.join("\n")
    );
}
