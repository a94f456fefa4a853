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
use chat_client::HttpApi;
use chat_types::{ClientMsgId, ConversationId};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::common::{
    self, account, close_all, paced_sender, send_one, set_up_users, slot, slots, timeline_secs,
    Pump, Schedule, Side,
};
use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{lock, spawn_progress, Clock, Ctx, Outcome, RunConfig};
use crate::scenario::ScenarioKind;
use crate::setup::Targets;

/// How long a ping-pong turn waits for the push at the other user before moving on.
const PUSH_WAIT: Duration = Duration::from_secs(10);

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
    let hard_end = common::hard_end(&clock, scenario);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));

    // Readers first, so that no push is missed.
    let mut pump = Pump::new(hard_end);
    let mut turn_rx = Vec::new();
    for pair in &pairs {
        let mut rxs = Vec::new();
        for side in &pair.sides {
            let (tx, rx) = mpsc::unbounded_channel();
            let notify = (scenario.kind == ScenarioKind::DmPingpong).then_some(tx);
            pump.add(side, &ctx, notify, None);
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
            for pair in &pairs {
                for s in 0..sides_per_pair {
                    let n = pair.index * sides_per_pair + s;
                    let schedule = if scenario.rate > 0.0 {
                        Schedule::share(scenario.rate, senders_total, n)
                    } else {
                        Schedule::Unpaced
                    };
                    senders.push(tokio::spawn(flood_sender(
                        Arc::clone(&pair.sides[s]),
                        pair.conv,
                        n,
                        Arc::clone(&ctx),
                        window,
                        schedule,
                    )));
                }
            }
        }
        other => bail!("{} is not a direct scenario", other.as_str()),
    }

    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(senders, hard_end, "sender", &mut tally).await?;
    // Every fresh ack is owed exactly one push (the other user has one connection). Wait for
    // all of them while they keep coming (see `common::drain`). A late push is late, not
    // lost, and its lateness shows in the delivery latency.
    let drained = common::drain(
        &live,
        scenario,
        || Live::get(&live.deliveries) < Live::get(&live.fresh_acks),
        &mut tally,
    )
    .await;
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }

    let reads = history_reads(&pairs, targets);
    crate::run::read_histories(&checker, reads, common::HISTORY_PAGE).await;

    close_all(pairs.iter().flat_map(|p| p.sides.iter().cloned())).await;

    Ok(Outcome {
        tally,
        setup,
        measured: scenario.duration(),
        drained,
        connections,
        server: samples.server,
        loadgen: samples.loadgen,
    })
}

/// Registers, logs in and connects every user, then opens each pair's conversation.
/// The final read of each pair's conversation, through its first user: conversation, that
/// user's node and token.
pub(crate) fn history_reads(
    pairs: &[Arc<Pair>],
    targets: &Targets,
) -> Vec<(ConversationId, HttpApi, String)> {
    pairs
        .iter()
        .map(|p| {
            let u = &p.sides[0].user;
            (p.conv, targets.apis[u.target].clone(), u.token.clone())
        })
        .collect()
}

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
        crate::pace::sleep_until(intended).await;
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
/// acknowledged) or on an open-loop schedule capped by the window.
pub(crate) async fn flood_sender(
    side: Arc<Side>,
    conv: ConversationId,
    sender: usize,
    ctx: Arc<Ctx>,
    window: usize,
    schedule: Schedule,
) -> Tally {
    let c = Arc::clone(&ctx);
    paced_sender(ctx, 'f', sender, window, schedule, move |cmid, intended| {
        send_one(Arc::clone(&side), Arc::clone(&c), conv, cmid, intended)
    })
    .await
}
