//! The `broadcast` scenario: `senders` users each broadcast to every other user of the run
//! (one `broadcast` frame, one direct message per target), on an open-loop schedule.
//!
//! Every target of a broadcast is an ordinary send to the direct conversation with that user,
//! so the checker records one send per target (same client message id, same body) and judges
//! each like any direct message; every user's connection is an observer. The ack latency is
//! the broadcast's (its `broadcast_result`), `send_delivery` is per push, and
//! `send_last_delivery` is per broadcast, until its last recipient got it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::HttpApi;
use chat_types::{BroadcastOutcome, ClientMsgId, ConversationId, UserId};

use crate::common::{
    self, close_all, paced_sender, set_up_users, slots, timeline_secs, Pump, Schedule, Sent, Side,
};
use crate::group::Fanout;
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{lock, spawn_progress, Clock, Ctx, Outcome, RunConfig};
use crate::setup::{retry_wait, Targets};

const SEND_ATTEMPTS: u32 = 3;

pub(crate) async fn run_broadcast(
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
    let (sides, _) = set_up_users(
        config,
        targets,
        prefix,
        &checker,
        &live,
        &mut tally,
        &mut connections,
    )
    .await?;
    let n = sides.len();
    let senders_n = scenario.senders.unwrap_or(1).min(n as u32) as usize;
    let sender_sides: Vec<usize> = (0..senders_n).map(|i| i * n / senders_n).collect();
    let everyone: Vec<UserId> = sides.iter().map(|s| s.user.user_id).collect();
    {
        let mut c = lock(&checker);
        for &s in &sender_sides {
            let me = everyone[s];
            for &u in &everyone {
                if u != me {
                    c.watch(ConversationId::direct(me, u));
                }
            }
        }
    }
    let setup = setup_started.elapsed();

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    live.start_timeline(clock.start, timeline_secs(scenario));
    let interval = Duration::from_secs_f64(senders_n as f64 / scenario.rate);
    let phases: Vec<Duration> = (0..senders_n)
        .map(|i| interval.mul_f64(i as f64 / senders_n as f64))
        .collect();
    let per_sender: Vec<u64> = phases
        .iter()
        .map(|ph| slots(clock.start, *ph, interval, clock.send_end))
        .collect();
    let recipients = (n - 1) as u32;
    let fanout = Arc::new(Fanout::new(recipients, &per_sender));
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
    let pump = Pump::over(&sides, &ctx, Some(&fanout), hard_end);

    let window = scenario.window.unwrap_or(1) as usize;
    let senders: Vec<_> = sender_sides
        .iter()
        .enumerate()
        .map(|(i, &si)| {
            let side = Arc::clone(&sides[si]);
            let to: Arc<Vec<UserId>> = Arc::new(
                everyone
                    .iter()
                    .copied()
                    .filter(|u| *u != side.user.user_id)
                    .collect(),
            );
            let c = Arc::clone(&ctx);
            tokio::spawn(paced_sender(
                Arc::clone(&ctx),
                'b',
                i,
                window,
                Schedule::Fixed {
                    interval,
                    phase: phases[i],
                },
                move |cmid, intended| {
                    broadcast_one(
                        Arc::clone(&side),
                        Arc::clone(&c),
                        Arc::clone(&to),
                        cmid,
                        intended,
                    )
                },
            ))
        })
        .collect();

    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(senders, hard_end, "sender", &mut tally).await?;
    // Each stored target is owed one push, to its recipient.
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
    fanout.account(&mut tally, &clock, &phases, interval);

    let mut reads: Vec<(ConversationId, HttpApi, String)> = Vec::new();
    for &si in &sender_sides {
        let s: &Side = &sides[si];
        for &u in &everyone {
            if u != s.user.user_id {
                reads.push((
                    ConversationId::direct(s.user.user_id, u),
                    targets.apis[s.user.target].clone(),
                    s.user.token.clone(),
                ));
            }
        }
    }
    crate::run::read_histories(&checker, reads, common::HISTORY_PAGE).await;
    close_all(sides.iter().cloned()).await;
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

/// One broadcast from `side` to `to`: one checker op per target, acknowledged by the seq the
/// result names for it (failed when it names an error).
async fn broadcast_one(
    side: Arc<Side>,
    ctx: Arc<Ctx>,
    to: Arc<Vec<UserId>>,
    cmid: ClientMsgId,
    intended: Instant,
) -> Sent {
    let me = side.user.user_id;
    let body = ctx.clock.body(intended, ctx.scenario.body_bytes);
    let ops: Vec<_> = {
        let mut c = lock(&ctx.checker);
        to.iter()
            .map(|u| {
                let conv = ConversationId::direct(me, *u);
                (
                    conv,
                    c.send_invoked(Some(side.observer), me, conv, cmid.clone(), &body),
                )
            })
            .collect()
    };
    Live::add(&ctx.live.sends);
    let mut errors = Vec::new();
    let mut closed = false;
    for attempt in 1..=SEND_ATTEMPTS {
        match side
            .conn
            .broadcast(cmid.clone(), body.clone(), to.to_vec(), Vec::new())
            .await
        {
            Ok(results) => {
                let now = Instant::now();
                let by_conv: HashMap<ConversationId, _> =
                    results.into_iter().map(|r| (r.conversation, r)).collect();
                let mut stored = 0u64;
                let mut c = lock(&ctx.checker);
                for (conv, op) in &ops {
                    match by_conv.get(conv) {
                        Some(BroadcastOutcome { seq: Some(seq), .. }) => {
                            // A retried broadcast reports the original seqs.
                            c.send_acked(*op, *seq, attempt > 1);
                            stored += 1;
                        }
                        Some(r) => {
                            c.send_failed(*op);
                            let code = r.error.as_ref().map_or("unknown".into(), |e| {
                                error_key(&chat_client::ClientError::Server(e.clone()))
                            });
                            errors.push((format!("broadcast_target_{code}"), format!("{conv}")));
                        }
                        None => {
                            c.send_failed(*op);
                            errors.push(("broadcast_target_missing".into(), format!("{conv}")));
                        }
                    }
                }
                drop(c);
                Live::add(&ctx.live.acks);
                Live::add_n(&ctx.live.fresh_acks, if attempt > 1 { 0 } else { stored });
                ctx.live
                    .timeline_ack(now, now.saturating_duration_since(intended));
                return Sent {
                    intended,
                    acked: Some((now, attempt > 1)),
                    seq: None,
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
    let mut c = lock(&ctx.checker);
    for (_, op) in &ops {
        c.send_failed(*op);
    }
    Sent {
        intended,
        acked: None,
        seq: None,
        errors,
        closed,
    }
}
