//! The `history-paging` scenario: scrolling back through long conversations.
//!
//! Users are paired as in the direct scenarios; in the set-up the first user of each pair
//! fills the conversation with `prefill` messages (unmeasured, checked like any other). Then
//! every user pages backwards through its conversation over REST (`before`, `page_size` a
//! page, from the head down to seq 1 and round again) on an open-loop schedule of `rate`
//! pages/s in all, at most `window` pages in flight per user. Each page's latency counts
//! from its intended time (`history_page`), and each page is checked on the spot: ascending,
//! contiguous, below the cursor, as long as it should be (`bad_page` otherwise).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::HttpApi;
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, Seq};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

use crate::common::{
    self, close_all, run_schedule, send_one, timeline_secs, Flow, Pump, Schedule, Side,
};
use crate::dm::set_up_pairs;
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{spawn_progress, Clock, Ctx, Outcome, RunConfig};
use crate::setup::Targets;

/// Prefill sends in flight per pair.
const PREFILL_WINDOW: usize = 32;

pub(crate) async fn run_history(
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
    let prefill = scenario.prefill.unwrap_or(0);
    let page_size = scenario.page_size.unwrap_or(50);

    // A clock for the prefill: its sends and pushes are recorded (and checked) but start
    // before the real clock, so nothing of them is measured.
    let pre_clock = Clock::new(Instant::now(), scenario);
    let pre_ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock: Clock {
            start: pre_clock.start,
            measure_start: pre_clock.start + Duration::from_secs(86_400),
            send_end: pre_clock.start + Duration::from_secs(86_400),
        },
        checker: Arc::clone(&checker),
        live: Arc::clone(&live),
    });
    let far = Instant::now() + Duration::from_secs(3 * 3600);
    let pump = Pump::over(
        pairs.iter().flat_map(|p| p.sides.iter()),
        &pre_ctx,
        None,
        far,
    );
    let filled = futures_util::stream::iter(pairs.iter().map(|pair| {
        let ctx = Arc::clone(&pre_ctx);
        async move {
            let mut t = Tally::default();
            let mut inflight = FuturesUnordered::new();
            for k in 0..prefill {
                if inflight.len() >= PREFILL_WINDOW {
                    if let Some(sent) = inflight.next().await {
                        common::account(&mut t, &ctx.clock, sent);
                    }
                }
                let Ok(cmid) = ClientMsgId::new(format!("h{}-{k}", pair.index)) else {
                    continue;
                };
                inflight.push(send_one(
                    Arc::clone(&pair.sides[0]),
                    Arc::clone(&ctx),
                    pair.conv,
                    cmid,
                    Instant::now(),
                ));
            }
            while let Some(sent) = inflight.next().await {
                common::account(&mut t, &ctx.clock, sent);
            }
            t
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for t in filled {
        // Prefill outcomes count in the totals and errors, not in any latency.
        tally.merge(&t);
    }
    // Every prefill message pushed before the load starts.
    // (While they keep coming: a receiver the node closed as a slow consumer owes nothing.)
    common::drain(
        &live,
        scenario,
        || Live::get(&live.deliveries) < Live::get(&live.fresh_acks),
        &mut tally,
    )
    .await;
    // The head of each conversation (a prefill send that failed may or may not be stored).
    let mut heads = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let u = &pair.sides[0].user;
        let q = HistoryQuery {
            after: None,
            before: None,
            around: None,
            limit: Some(1),
        };
        match targets.apis[u.target].history(&u.token, pair.conv, q).await {
            Ok(page) => heads.push(page.head),
            Err(e) => {
                close_all(pairs.iter().flat_map(|p| p.sides.iter().cloned())).await;
                return Err(crate::run::setup_error(
                    &format!("reading the head of {}", pair.conv),
                    e,
                ));
            }
        }
    }
    let setup = setup_started.elapsed();

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    live.start_timeline(clock.start, timeline_secs(scenario));
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock,
        checker: Arc::clone(&checker),
        live: Arc::clone(&live),
    });
    let hard_end = clock.send_end + Duration::from_secs(60);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let sides: Vec<(Arc<Side>, ConversationId, Seq)> = pairs
        .iter()
        .zip(&heads)
        .flat_map(|(p, head)| {
            p.sides
                .iter()
                .map(move |s| (Arc::clone(s), p.conv, Seq(head.0 + 1)))
        })
        .collect();
    let n = sides.len();
    let interval = Duration::from_secs_f64(n as f64 / scenario.rate);
    let window = scenario.window.unwrap_or(1) as usize;
    let pagers: Vec<_> = sides
        .iter()
        .enumerate()
        .map(|(i, (side, conv, top))| {
            let phase = interval.mul_f64(i as f64 / n as f64);
            let api = targets.apis[side.user.target].clone();
            let token = side.user.token.clone();
            tokio::spawn(pager(
                Arc::clone(&ctx),
                api,
                token,
                *conv,
                *top,
                page_size,
                window,
                Schedule::Fixed { interval, phase },
            ))
        })
        .collect();

    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(pagers, hard_end, "pager", &mut tally).await?;
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }
    let reads = crate::dm::history_reads(&pairs, targets);
    crate::run::read_histories(&checker, reads, 200).await;
    close_all(pairs.iter().flat_map(|p| p.sides.iter().cloned())).await;
    Ok(Outcome {
        tally,
        setup,
        measured: scenario.duration(),
        drained: Duration::ZERO,
        connections,
        server: samples.server,
        loadgen: samples.loadgen,
    })
}

/// One user paging backwards from `top` (the seq after the last one) on a schedule.
#[allow(clippy::too_many_arguments)]
async fn pager(
    ctx: Arc<Ctx>,
    api: HttpApi,
    token: String,
    conv: ConversationId,
    top: Seq,
    page_size: u32,
    window: usize,
    schedule: Schedule,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let mut cursor = top;
    run_schedule(
        clock,
        &schedule,
        window,
        &mut tally,
        |_, intended| {
            // The next page below the cursor; round again from the top at seq 1.
            let before = if cursor.0 <= 1 { top } else { cursor };
            let expect = (before.0 - 1).min(u64::from(page_size));
            cursor = Seq(before.0.saturating_sub(expect));
            let api = api.clone();
            let token = token.clone();
            Live::add(&ctx.live.sends);
            Ok(async move {
                let q = HistoryQuery {
                    after: None,
                    before: Some(before),
                    around: None,
                    limit: Some(page_size),
                };
                let r = api.history(&token, conv, q).await;
                let done = Instant::now();
                let verdict = match r {
                    Err(e) => Err(format!("page_{}", error_key(&e))),
                    Ok(page) => check_page(&page.messages, before, expect),
                };
                (intended, done, verdict)
            })
        },
        |tally, (intended, done, result): (Instant, Instant, Result<(), String>)| {
            tally.pages += 1;
            match result {
                Ok(()) => {
                    if clock.in_window(done) {
                        tally.pages_measured += 1;
                    }
                    if clock.measured(intended) {
                        tally.page.record(done.saturating_duration_since(intended));
                    }
                    ctx.live
                        .timeline_ack(done, done.saturating_duration_since(intended));
                    Live::add(&ctx.live.acks);
                }
                Err(key) => tally.error(key),
            }
            Flow::Go
        },
    )
    .await;
    tally
}

/// A page asked for `before` must hold exactly the `expect` seqs just below it, ascending.
pub(crate) fn check_page(
    messages: &[chat_types::Message],
    before: Seq,
    expect: u64,
) -> Result<(), String> {
    if messages.len() as u64 != expect {
        return Err("bad_page_length".into());
    }
    let first = before.0 - expect;
    for (i, m) in messages.iter().enumerate() {
        if m.seq.0 != first + i as u64 {
            return Err("bad_page_order".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_the_seqs_just_below_the_cursor() {
        let m = |seq: u64| chat_types::Message {
            conversation: ConversationId::direct(chat_types::UserId(1), chat_types::UserId(2)),
            seq: Seq(seq),
            sender: chat_types::UserId(1),
            client_msg_id: ClientMsgId::new("x").unwrap_or_else(|_| unreachable!()),
            body: String::new(),
            ts_ms: 0,
            refers: None,
            attachments: Vec::new(),
        };
        assert!(check_page(&[m(8), m(9)], Seq(10), 2).is_ok());
        assert_eq!(
            check_page(&[m(8)], Seq(10), 2),
            Err("bad_page_length".into())
        );
        assert_eq!(
            check_page(&[m(9), m(8)], Seq(10), 2),
            Err("bad_page_order".into())
        );
        assert!(check_page(&[], Seq(1), 0).is_ok());
    }
}
