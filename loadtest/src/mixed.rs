//! The `mixed` scenario: a realistic day in small.
//!
//! Every user connects (each connection an observer of the checker). A seeded plan then
//! draws `conversations` conversation sizes from a Zipf distribution over 2 (a direct
//! conversation) to `max_members` (weight `1 / (size - 1)^size_zipf`), fills them from a
//! shuffled cycle of the users (so that everyone is in one before anyone is in two), gives
//! each a Zipf activity share (`activity_zipf`, in a random order) and opens them: direct
//! ones with `open_direct`, groups with one `create_group` by their first member.
//!
//! Writers (`writers` users of a random order) send at `rate` messages/s in all on one
//! open-loop schedule that rises to `rate * burst_factor` for `burst_secs` out of every
//! `burst_period_secs`; each message goes to a conversation drawn by activity (among those
//! with a writer), from a writer among its members drawn at random, with at most `window`
//! sends in flight in all. Readers (`readers` users) at `read_rate` reads/s in all each
//! read the latest page of one of their conversations, the page before it, and mark it
//! read up to its last message. Every send is recorded in the checker, every push by the
//! common pump, and every conversation's history is read back at the end: lost, duplicated,
//! out-of-order and undelivered messages are judged as in the other scenarios.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_client::HttpApi;
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, Seq, UserId};
use futures_util::StreamExt;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{
    self, account, close_all, run_schedule, send_one, set_up_users, timeline_secs, Flow, Pump,
    Schedule, Side,
};
use crate::history::check_page;
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{lock, spawn_progress, Clock, Ctx, Outcome, RunConfig};
use crate::scenario::{MixedParams, Scenario};
use crate::setup::Targets;

/// One planned conversation: its members (indexes into the users), the first opens it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlannedConv {
    pub members: Vec<usize>,
    /// Share of the messages, before normalising.
    pub activity: f64,
}

/// The seeded plan of a run: conversations, who writes and who reads.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub convs: Vec<PlannedConv>,
    pub writers: Vec<bool>,
    pub readers: Vec<usize>,
}

/// Draws the conversations, writers and readers of `users` users.
pub(crate) fn plan(users: usize, m: &MixedParams) -> Plan {
    let mut rng = StdRng::seed_from_u64(m.seed);
    let max = (m.max_members as usize).clamp(2, users.max(2));
    // Size k (2..=max) has weight 1 / (k - 1)^s.
    let weights: Vec<f64> = (2..=max)
        .map(|k| 1.0 / ((k - 1) as f64).powf(m.size_zipf))
        .collect();
    let sizes = WeightedIndex::new(&weights).ok();
    let mut cycle: Vec<usize> = Vec::new();
    let next = |rng: &mut StdRng, cycle: &mut Vec<usize>| {
        if cycle.is_empty() {
            *cycle = (0..users).collect();
            cycle.shuffle(rng);
        }
        cycle.pop().unwrap_or(0)
    };
    let mut direct: HashSet<(usize, usize)> = HashSet::new();
    let mut convs = Vec::new();
    for _ in 0..m.conversations {
        let size = sizes
            .as_ref()
            .map_or(2, |d| d.sample(&mut rng) + 2)
            .min(users);
        let mut members: Vec<usize> = Vec::with_capacity(size);
        // Bounded: at most a few passes over the users for each member.
        let mut tries = 0;
        while members.len() < size && tries < 4 * users + 8 {
            tries += 1;
            let u = next(&mut rng, &mut cycle);
            if members.contains(&u) {
                continue;
            }
            if size == 2 && members.len() == 1 {
                let pair = (members[0].min(u), members[0].max(u));
                if direct.contains(&pair) {
                    continue;
                }
            }
            members.push(u);
        }
        if members.len() < 2 || (size == 2 && members.len() != 2) {
            continue; // every pair already has its direct conversation
        }
        if members.len() == 2 && size == 2 {
            direct.insert((members[0].min(members[1]), members[0].max(members[1])));
        }
        convs.push(PlannedConv {
            members,
            activity: 0.0,
        });
    }
    let mut ranks: Vec<usize> = (1..=convs.len()).collect();
    ranks.shuffle(&mut rng);
    for (c, r) in convs.iter_mut().zip(ranks) {
        c.activity = 1.0 / (r as f64).powf(m.activity_zipf);
    }
    let mut order: Vec<usize> = (0..users).collect();
    order.shuffle(&mut rng);
    let mut writers = vec![false; users];
    for &u in order.iter().take(m.writers.map_or(users, |w| w as usize)) {
        writers[u] = true;
    }
    order.shuffle(&mut rng);
    let readers = order
        .into_iter()
        .take(m.readers.unwrap_or(0) as usize)
        .collect();
    Plan {
        convs,
        writers,
        readers,
    }
}

/// The send times of the whole load (warm-up and window), from the clock's start: `rate`
/// per second, `rate * burst_factor` during bursts.
pub(crate) fn burst_offsets(scenario: &Scenario, m: &MixedParams) -> Vec<Duration> {
    let end = scenario.warmup_secs + scenario.duration_secs;
    let bursts = m.burst_factor > 1.0 && m.burst_period_secs > 0.0;
    let mut out = Vec::new();
    let mut t = 0.0f64;
    while t < end && (out.len() as f64) < crate::scenario::MAX_PLANNED_OPS {
        out.push(Duration::from_secs_f64(t));
        let in_burst = bursts && t % m.burst_period_secs < m.burst_secs;
        let rate = if in_burst {
            scenario.rate * m.burst_factor
        } else {
            scenario.rate
        };
        t += 1.0 / rate;
    }
    out
}

/// One opened conversation.
struct Conv {
    id: ConversationId,
    members: Vec<usize>,
    writers: Vec<usize>,
    /// Share of the messages (see [`PlannedConv::activity`]).
    activity: f64,
}

pub(crate) async fn run_mixed(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: crate::run::SharedChecker,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let Some(m) = scenario.mixed.clone() else {
        bail!("mixed needs a [mixed] table");
    };
    let setup_started = Instant::now();
    let mut tally = Tally::default();
    let mut connections = Connections::default();
    let (sides, limits) = set_up_users(
        config,
        targets,
        prefix,
        &checker,
        &live,
        &mut tally,
        &mut connections,
    )
    .await?;
    let plan = plan(sides.len(), &m);
    let convs = match open_conversations(&sides, &plan, &checker, scenario, &limits).await {
        Ok(c) => c,
        Err(e) => {
            close_all(sides.iter().cloned()).await;
            return Err(e);
        }
    };
    let setup = setup_started.elapsed();
    if config.progress {
        let groups = convs.iter().filter(|c| c.members.len() > 2).count();
        let largest = convs.iter().map(|c| c.members.len()).max().unwrap_or(0);
        eprintln!(
            "mixed: {} conversations ({} direct, {groups} groups, the largest of {largest}), \
             {} writers, {} readers",
            convs.len(),
            convs.len() - groups,
            plan.writers.iter().filter(|w| **w).count(),
            plan.readers.len()
        );
    }

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
    let mut pump = Pump::over(&sides, &ctx, None, hard_end);
    for side in &sides {
        pump.drop_raw_events(side);
    }

    let sides = Arc::new(sides);
    let convs = Arc::new(convs);
    let owed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(writer(
        Arc::clone(&ctx),
        Arc::clone(&sides),
        Arc::clone(&convs),
        Arc::clone(&owed),
        Schedule::Offsets(burst_offsets(scenario, &m).into()),
        m.seed,
    )));
    if m.read_rate > 0.0 && !plan.readers.is_empty() {
        let mut of_user: Vec<Vec<usize>> = vec![Vec::new(); sides.len()];
        for (c, conv) in convs.iter().enumerate() {
            for &u in &conv.members {
                of_user[u].push(c);
            }
        }
        let readers: Vec<(usize, Vec<usize>)> = plan
            .readers
            .iter()
            .map(|&u| (u, of_user[u].clone()))
            .filter(|(_, cs)| !cs.is_empty())
            .collect();
        if readers.is_empty() {
            tally.error("no_reader_in_a_conversation");
        } else {
            tasks.push(tokio::spawn(reader(
                Arc::clone(&ctx),
                targets.clone(),
                Arc::clone(&sides),
                Arc::clone(&convs),
                readers,
                m.clone(),
            )));
        }
    }

    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(tasks, hard_end, "mixed", &mut tally).await?;
    // Every fresh ack is owed one push per other member.
    let drained = common::drain(
        &live,
        scenario,
        || Live::get(&live.deliveries) < owed.load(Ordering::Relaxed),
        &mut tally,
    )
    .await;
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }

    let reads: Vec<(ConversationId, HttpApi, String)> = convs
        .iter()
        .map(|c| {
            let u = &sides[c.members[0]].user;
            (c.id, targets.api_of(u.index).clone(), u.token.clone())
        })
        .collect();
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

/// Opens every planned conversation, `setup_concurrency` at a time, and declares each to the
/// checker.
async fn open_conversations(
    sides: &[Arc<Side>],
    plan: &Plan,
    checker: &crate::run::SharedChecker,
    scenario: &Scenario,
    limits: &chat_types::Limits,
) -> anyhow::Result<Vec<Conv>> {
    let ids: Vec<UserId> = sides.iter().map(|s| s.user.user_id).collect();
    let largest = plan
        .convs
        .iter()
        .map(|c| c.members.len())
        .max()
        .unwrap_or(0);
    // A group is created in one frame (see `crate::group`).
    let frame_bytes =
        120 + largest * (ids.iter().map(|u| u.0.to_string().len()).max().unwrap_or(1) + 1);
    if frame_bytes > limits.max_frame_bytes as usize {
        bail!(
            "creating a group of {largest} members takes a {frame_bytes}-byte frame, over the \
             server's max_frame_bytes ({}): lower max_members",
            limits.max_frame_bytes
        );
    }
    let opened = futures_util::stream::iter(plan.convs.iter().enumerate().map(|(c, pc)| {
        let first = Arc::clone(&sides[pc.members[0]]);
        let others: Vec<UserId> = pc.members[1..].iter().map(|&u| ids[u]).collect();
        async move {
            let r = if others.len() == 1 {
                first
                    .conn
                    .open_direct_by_id(others[0])
                    .await
                    .map(|info| (info.conversation, Vec::new()))
            } else {
                first
                    .conn
                    .create_group(&format!("lt-mixed-{c}"), others)
                    .await
                    .map(|g| {
                        let members = g.members.iter().map(|m| m.user_id).collect();
                        (g.conversation, members)
                    })
            };
            (c, r)
        }
    }))
    .buffer_unordered(scenario.setup_concurrency as usize)
    .collect::<Vec<_>>()
    .await;
    let mut convs: Vec<Option<Conv>> = (0..plan.convs.len()).map(|_| None).collect();
    let mut c = lock(checker);
    for (i, r) in opened {
        let pc = &plan.convs[i];
        let (id, members) = r.map_err(|e| {
            crate::run::setup_error(
                &format!(
                    "{} opening a conversation of {}",
                    sides[pc.members[0]].user.username,
                    pc.members.len()
                ),
                e,
            )
        })?;
        if pc.members.len() == 2 {
            let expected = ConversationId::direct(ids[pc.members[0]], ids[pc.members[1]]);
            if id != expected {
                bail!("open_direct returned {id}, expected {expected}");
            }
            c.watch(id);
        } else {
            let got: BTreeSet<UserId> = members.iter().copied().collect();
            let want: BTreeSet<UserId> = pc.members.iter().map(|&u| ids[u]).collect();
            if got != want {
                bail!(
                    "group {id} was created with {} members, not the {} asked for",
                    got.len(),
                    want.len()
                );
            }
            c.group_members(id, members);
        }
        convs[i] = Some(Conv {
            id,
            members: pc.members.clone(),
            writers: pc
                .members
                .iter()
                .copied()
                .filter(|&u| plan.writers[u])
                .collect(),
            activity: pc.activity,
        });
    }
    Ok(convs.into_iter().flatten().collect())
}

/// The writers' one open loop: message `k` goes to a conversation drawn by activity from a
/// writer among its members.
async fn writer(
    ctx: Arc<Ctx>,
    sides: Arc<Vec<Arc<Side>>>,
    convs: Arc<Vec<Conv>>,
    owed: Arc<AtomicU64>,
    schedule: Schedule,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let window = ctx.scenario.window.unwrap_or(1) as usize;
    let writable: Vec<usize> = (0..convs.len())
        .filter(|&c| !convs[c].writers.is_empty())
        .collect();
    let Ok(pick) = WeightedIndex::new(writable.iter().map(|&c| convs[c].activity)) else {
        tally.error("no_conversation_with_a_writer");
        return tally;
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0fda_7500);
    run_schedule(
        clock,
        &schedule,
        window,
        &mut tally,
        |k, intended| {
            let conv = &convs[writable[pick.sample(&mut rng)]];
            let from = conv.writers[rng.gen_range(0..conv.writers.len())];
            let side = Arc::clone(&sides[from]);
            let id = conv.id;
            let recipients = (conv.members.len() - 1) as u64;
            let owed = Arc::clone(&owed);
            let ctx = Arc::clone(&ctx);
            let cmid = ClientMsgId::new(format!("m{k}")).map_err(|_| "bad_client_msg_id")?;
            Ok(async move {
                let sent = send_one(side, ctx, id, cmid, intended).await;
                if matches!(sent.acked, Some((_, false))) {
                    owed.fetch_add(recipients, Ordering::Relaxed);
                }
                sent
            })
        },
        |tally, sent| {
            account(tally, &clock, sent);
            Flow::Go
        },
    )
    .await;
    tally
}

/// The readers' one open loop: read `k` is the latest page of one of a reader's
/// conversations, the page before it, and a mark-read up to the last message.
async fn reader(
    ctx: Arc<Ctx>,
    targets: Targets,
    sides: Arc<Vec<Arc<Side>>>,
    convs: Arc<Vec<Conv>>,
    readers: Vec<(usize, Vec<usize>)>,
    m: MixedParams,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let window = ctx.scenario.window.unwrap_or(1) as usize;
    let mut rng = StdRng::seed_from_u64(m.seed ^ 0x0dea_d5ea_0000);
    let targets = Arc::new(targets);
    let page_size = m.page_size;
    run_schedule(
        clock,
        &Schedule::share(m.read_rate, 1, 0),
        window,
        &mut tally,
        |_, intended| {
            let (u, cs) = &readers[rng.gen_range(0..readers.len())];
            let conv = convs[cs[rng.gen_range(0..cs.len())]].id;
            let side = Arc::clone(&sides[*u]);
            let targets = Arc::clone(&targets);
            Ok(async move {
                let api = targets.api_of(side.user.index);
                let r = read_once(api, &side, conv, page_size).await;
                (intended, Instant::now(), r)
            })
        },
        |tally, (intended, done, r): (Instant, Instant, ReadResult)| {
            let measured = clock.measured(intended);
            for (latency, ok) in &r.pages {
                tally.pages += 1;
                if *ok && clock.in_window(done) {
                    tally.pages_measured += 1;
                }
                if measured {
                    tally.page.record(*latency);
                }
            }
            if let Some(l) = r.mark_read {
                if measured {
                    tally.named("mark_read").record(l);
                }
            }
            for (key, example) in r.errors {
                tally.error_examples.entry(key.clone()).or_insert(example);
                tally.error(key);
            }
            tally.op("reads", clock.in_window(done));
            if measured {
                tally
                    .named("read")
                    .record(done.saturating_duration_since(intended));
            }
            Flow::Go
        },
    )
    .await;
    tally
}

/// What one read saw: each page's latency and whether it was right, the mark-read's
/// latency, and errors with an example.
#[derive(Default)]
struct ReadResult {
    pages: Vec<(Duration, bool)>,
    mark_read: Option<Duration>,
    errors: Vec<(String, String)>,
}

async fn read_once(api: &HttpApi, side: &Side, conv: ConversationId, page_size: u32) -> ReadResult {
    let mut r = ReadResult::default();
    let token = &side.user.token;
    let t = Instant::now();
    let latest = api
        .history(
            token,
            conv,
            HistoryQuery {
                after: None,
                before: None,
                around: None,
                limit: Some(page_size),
            },
        )
        .await;
    let page = match latest {
        Ok(page) => page,
        Err(e) => {
            r.pages.push((t.elapsed(), false));
            r.errors
                .push((format!("read_{}", error_key(&e)), e.to_string()));
            return r;
        }
    };
    // The latest page: ascending, contiguous, not past the head it names.
    let contiguous = page
        .messages
        .windows(2)
        .all(|w| w[1].seq.0 == w[0].seq.0 + 1);
    let last = page.messages.last().map_or(Seq(0), |m| m.seq);
    let ok = contiguous && last <= page.head && page.messages.len() <= page_size as usize;
    r.pages.push((t.elapsed(), ok));
    if !ok {
        r.errors.push((
            "bad_latest_page".into(),
            format!("{conv} head {}", page.head),
        ));
    }
    // The page before it is history that cannot change: exactly the seqs below.
    if let Some(first) = page.messages.first().map(|m| m.seq).filter(|s| s.0 > 1) {
        let expect = (first.0 - 1).min(u64::from(page_size));
        let t = Instant::now();
        let older = api
            .history(
                token,
                conv,
                HistoryQuery {
                    after: None,
                    before: Some(first),
                    around: None,
                    limit: Some(page_size),
                },
            )
            .await;
        match older {
            Ok(p) => {
                let verdict = check_page(&p.messages, first, expect);
                r.pages.push((t.elapsed(), verdict.is_ok()));
                if let Err(key) = verdict {
                    r.errors.push((key, format!("{conv} before {first}")));
                }
            }
            Err(e) => {
                r.pages.push((t.elapsed(), false));
                r.errors
                    .push((format!("read_{}", error_key(&e)), e.to_string()));
            }
        }
    }
    if last > Seq(0) {
        let t = Instant::now();
        match side.conn.mark_read(conv, last).await {
            Ok(()) => r.mark_read = Some(t.elapsed()),
            Err(e) => r
                .errors
                .push((format!("mark_read_{}", error_key(&e)), e.to_string())),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn params() -> MixedParams {
        let s = Scenario::from_toml(
            "kind = \"mixed\"\nusers = 50\nrate = 100\nduration_secs = 2\nwindow = 16\n\
             [mixed]\nconversations = 60\nmax_members = 12\nreaders = 5\nread_rate = 10\n\
             burst_factor = 4\nburst_period_secs = 1\nburst_secs = 0.25\n",
            "t",
            "t",
        )
        .unwrap();
        s.mixed.unwrap()
    }

    #[test]
    fn the_plan_is_seeded_covers_everyone_and_never_repeats_a_direct_pair() {
        let m = params();
        let a = plan(50, &m);
        let b = plan(50, &m);
        assert_eq!(a.convs, b.convs, "the same seed makes the same plan");
        let mut covered = HashSet::new();
        let mut pairs = HashSet::new();
        let mut directs = 0;
        for c in &a.convs {
            assert!((2..=12).contains(&c.members.len()), "{c:?}");
            let distinct: HashSet<_> = c.members.iter().collect();
            assert_eq!(distinct.len(), c.members.len(), "{c:?}");
            covered.extend(c.members.iter().copied());
            if c.members.len() == 2 {
                directs += 1;
                let p = (
                    c.members[0].min(c.members[1]),
                    c.members[0].max(c.members[1]),
                );
                assert!(pairs.insert(p), "direct pair {p:?} twice");
            }
        }
        assert_eq!(covered.len(), 50, "everyone is in some conversation");
        // Zipf sizes with s = 1.5: most conversations are direct, some are groups.
        assert!(
            directs > a.convs.len() / 3,
            "{directs} of {}",
            a.convs.len()
        );
        assert!(directs < a.convs.len(), "no group at all");
        assert_eq!(a.readers.len(), 5);
        assert_eq!(a.writers.iter().filter(|w| **w).count(), 50);
        let mut other = m.clone();
        other.seed = 2;
        assert_ne!(plan(50, &other).convs, a.convs);
    }

    #[test]
    fn bursts_raise_the_rate_for_their_share_of_each_period() {
        let s = Scenario::from_toml(
            "kind = \"mixed\"\nusers = 50\nrate = 100\nduration_secs = 2\nwindow = 16\n\
             [mixed]\nconversations = 60\nmax_members = 12\n\
             burst_factor = 4\nburst_period_secs = 1\nburst_secs = 0.25\n",
            "t",
            "t",
        )
        .unwrap();
        let m = s.mixed.clone().unwrap();
        let offsets = burst_offsets(&s, &m);
        // Per second: 0.25 s at 400/s and 0.75 s at 100/s = 175.
        assert!((345..=355).contains(&offsets.len()), "{}", offsets.len());
        let in_first_burst = offsets
            .iter()
            .filter(|o| **o < Duration::from_millis(250))
            .count();
        assert!((98..=102).contains(&in_first_burst), "{in_first_burst}");
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        let mut flat = m;
        flat.burst_factor = 1.0;
        assert_eq!(burst_offsets(&s, &flat).len(), 200);
    }
}
