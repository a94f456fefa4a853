//! The `search` scenario: message, people and conversation search over REST, checked.
//!
//! Users are paired as in the direct scenarios. The set-up writes `prefill` messages spread
//! over the pairs (both users of a pair write), each made of `words_per_message` words of a
//! generated vocabulary (drawn with Zipf weights, s = 1, so that common words have many hits
//! and rare ones few) and one word planted in that message alone (`<run><n>q`, all of one
//! length, so that none is a prefix of another). Every prefill send is recorded in the checker
//! like any other. Then the run waits until the index caught up: the planted word of every
//! pair's last message (highest seq) is found (at most `index_wait_secs`; the wait is reported as
//! `index_catch_up`).
//!
//! Queries then run on an open-loop schedule at `rate`/s in all, at most `window` in flight,
//! each by a member of the conversations it is about:
//! - `unique_share` of them ask for one planted word: the answer must be exactly that message
//!   (its conversation, seq, sender and word), anything else is a `search` violation;
//! - `users_share` ask for a user by name: that user must be among the people found;
//! - `conversations_share` ask for a conversation by the other member's name: it must be
//!   among the conversations found;
//! - the rest ask for one or two vocabulary words (AND), unchecked beyond errors.
//!
//! Latencies are from each query's intended time (`search` for all, and `search_unique`,
//! `search_words`, `search_users`, `search_conversations`); queries/s count in
//! `search_queries`; failed queries count by the server's error code (`search_<code>`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::MessageSearch;
use chat_types::{ClientMsgId, Seq, UserId};
use futures_util::StreamExt;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, close_all, run_schedule, send_body, Flow, Pump, Schedule, Side};
use crate::dm::{set_up_pairs, Pair};
use crate::metrics::{error_key, Live, Tally};
use crate::report::Connections;
use crate::run::{lock, spawn_progress, Clock, Ctx, Outcome, RunConfig, SharedChecker};
use crate::scenario::SearchParams;
use crate::setup::Targets;

/// Prefill sends in flight in all.
const PREFILL_WINDOW: usize = 64;
/// Loops the queries are spread over (each with its share of the rate and the window).
const QUERY_LOOPS: usize = 4;

/// The vocabulary: `n` distinct lowercase words of 2 to 4 syllables, the same for a seed.
pub(crate) fn vocabulary(n: usize, seed: u64) -> Vec<String> {
    const ONSETS: [&str; 16] = [
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh",
    ];
    const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    // Bounded: 96 syllables, 2 to 4 of them: far more words than the 100,000 allowed.
    while out.len() < n {
        let syllables = rng.gen_range(2..=4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.gen_range(0..ONSETS.len())]);
            w.push_str(VOWELS[rng.gen_range(0..VOWELS.len())]);
        }
        if seen.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

/// The word planted in prefill message `n` of the run with `prefix`: one token (letters and
/// digits), all of one length, so that no planted word is a prefix of another.
pub(crate) fn planted_word(prefix: &str, n: u64) -> String {
    let run: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{run}w{n:08}q")
}

/// One prefill message that was acknowledged: what a query for its word must find.
#[derive(Clone, Debug)]
struct Planted {
    word: String,
    pair: usize,
    sender: UserId,
    seq: Seq,
}

pub(crate) async fn run_search(
    config: &RunConfig,
    targets: &Targets,
    prefix: &str,
    checker: SharedChecker,
    live: Arc<Live>,
    progress_stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let scenario = &config.scenario;
    let Some(q) = scenario.search.clone() else {
        anyhow::bail!("search needs a [search] table");
    };
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

    // The prefill, on a clock whose window never starts: recorded and checked, not measured.
    let pre_start = Instant::now();
    let pre_ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock: Clock {
            start: pre_start,
            measure_start: pre_start + Duration::from_secs(86_400),
            send_end: pre_start + Duration::from_secs(86_400),
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
    let words = Arc::new(vocabulary(q.vocabulary as usize, q.seed));
    let planted = prefill(&pairs, &pre_ctx, &words, &q, prefix, &mut tally).await;
    // (While they keep coming: a receiver the node closed as a slow consumer owes nothing.)
    common::drain(
        &live,
        scenario,
        || Live::get(&live.deliveries) < Live::get(&live.fresh_acks),
        &mut tally,
    )
    .await;
    if planted.is_empty() {
        pump.stop(&mut tally).await;
        close_all(pairs.iter().flat_map(|p| p.sides.iter().cloned())).await;
        anyhow::bail!("no prefill message was acknowledged: nothing to search for");
    }
    let waited = wait_for_index(targets, &pairs, &planted, &q, &mut tally).await;
    tally.named("index_catch_up").record(waited);
    let setup = setup_started.elapsed();
    if config.progress {
        eprintln!(
            "search: {} messages written, index caught up {:.1}s after the last",
            planted.len(),
            waited.as_secs_f64()
        );
    }

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    live.start_timeline(clock.start, common::timeline_secs(scenario));
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        clock,
        checker: Arc::clone(&checker),
        live: Arc::clone(&live),
    });
    let hard_end = clock.send_end + common::SENDER_GRACE;
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), clock, progress_stop, hard_end));
    let world = Arc::new(World {
        targets: targets.clone(),
        pairs: pairs.clone(),
        planted,
        words,
        params: q.clone(),
    });
    let window = scenario.window.unwrap_or(1) as usize;
    let loops = QUERY_LOOPS.min(window);
    let queriers: Vec<_> = (0..loops)
        .map(|i| {
            let share = window / loops + usize::from(i < window % loops);
            tokio::spawn(querier(
                Arc::clone(&ctx),
                Arc::clone(&world),
                Schedule::share(scenario.rate, loops, i),
                share,
                q.seed.wrapping_add(1 + i as u64),
            ))
        })
        .collect();
    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(queriers, hard_end, "querier", &mut tally).await?;
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }
    let reads = crate::dm::history_reads(&pairs, targets);
    crate::run::read_histories(&checker, reads, common::HISTORY_PAGE).await;
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

/// Writes the prefill: message `n` in pair `n % pairs`, from its two users in turn, with
/// vocabulary words and its planted word. Returns the acknowledged ones.
async fn prefill(
    pairs: &[Arc<Pair>],
    ctx: &Arc<Ctx>,
    words: &Arc<Vec<String>>,
    q: &SearchParams,
    prefix: &str,
    tally: &mut Tally,
) -> Vec<Planted> {
    let zipf: Vec<f64> = (1..=words.len()).map(|r| 1.0 / r as f64).collect();
    let Ok(pick) = WeightedIndex::new(&zipf) else {
        return Vec::new();
    };
    let mut rng = StdRng::seed_from_u64(q.seed);
    let n_pairs = pairs.len() as u64;
    let mut bodies = Vec::with_capacity(q.prefill as usize);
    for _ in 0..q.prefill {
        let mut body = String::new();
        for _ in 0..q.words_per_message {
            body.push(' ');
            body.push_str(&words[pick.sample(&mut rng)]);
        }
        bodies.push(body);
    }
    let results = futures_util::stream::iter(bodies.into_iter().enumerate().map(|(n, words)| {
        let n = n as u64;
        let pair = Arc::clone(&pairs[(n % n_pairs) as usize]);
        let side: Arc<Side> = Arc::clone(&pair.sides[((n / n_pairs) % 2) as usize]);
        let ctx = Arc::clone(ctx);
        let word = planted_word(prefix, n);
        async move {
            let now = Instant::now();
            let body = format!("{}{words} {word}", ctx.clock.body(now, 0));
            let sender = side.user.user_id;
            let sent = match ClientMsgId::new(format!("s{n}")) {
                Ok(cmid) => Some(send_body(side, ctx, pair.conv, cmid, now, body).await),
                Err(_) => None,
            };
            (n, pair.index, sender, word, sent)
        }
    }))
    .buffer_unordered(PREFILL_WINDOW)
    .collect::<Vec<_>>()
    .await;
    let mut planted = Vec::new();
    for (_, pair, sender, word, sent) in results {
        let Some(sent) = sent else {
            tally.error("bad_client_msg_id");
            continue;
        };
        let seq = sent.seq;
        let fresh = matches!(sent.acked, Some((_, false)));
        common::account(tally, &ctx.clock, sent);
        if let (true, Some(seq)) = (fresh, seq) {
            planted.push(Planted {
                word,
                pair,
                sender,
                seq,
            });
        }
    }
    planted.sort_by(|a, b| a.word.cmp(&b.word));
    planted
}

/// Polls until the planted word of the last message of every pair is found, for at most
/// `index_wait_secs`; returns how long it took. Words still
/// missing then are counted as `index_wait_timeout` (their queries will say more).
async fn wait_for_index(
    targets: &Targets,
    pairs: &[Arc<Pair>],
    planted: &[Planted],
    q: &SearchParams,
    tally: &mut Tally,
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(q.index_wait_secs);
    // The highest seq of a conversation was appended after all the others of it, and a
    // node indexes what it appends in order.
    let mut last: Vec<Option<&Planted>> = vec![None; pairs.len()];
    for p in planted {
        let slot = &mut last[p.pair];
        if slot.is_none_or(|l| l.seq < p.seq) {
            *slot = Some(p);
        }
    }
    let mut waiting: Vec<&Planted> = last.into_iter().flatten().collect();
    // Bounded by the deadline; each poll asks once for each word still missing.
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for p in waiting {
            let user = &pairs[p.pair].sides[0].user;
            let found = targets
                .api_of(user.index)
                .search_messages(&user.token, &p.word, &MessageSearch::default())
                .await
                .is_ok_and(|r| !r.hits.is_empty());
            if !found {
                still.push(p);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if !waiting.is_empty() {
        *tally.errors.entry("index_wait_timeout".into()).or_default() += waiting.len() as u64;
    }
    started.elapsed()
}

/// What every querier shares.
struct World {
    targets: Targets,
    pairs: Vec<Arc<Pair>>,
    planted: Vec<Planted>,
    words: Arc<Vec<String>>,
    params: SearchParams,
}

/// The kinds of query, by their latency name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unique,
    Words,
    Users,
    Conversations,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Unique => "search_unique",
            Kind::Words => "search_words",
            Kind::Users => "search_users",
            Kind::Conversations => "search_conversations",
        }
    }
}

/// One query's outcome: its kind, when it was due and done, and either a verdict (`None`:
/// right, or nothing to check; `Some(query, detail)`: a wrong answer) or an error.
type Answer = (
    Kind,
    Instant,
    Instant,
    Result<Option<(String, String)>, (String, String)>,
);

async fn querier(
    ctx: Arc<Ctx>,
    world: Arc<World>,
    schedule: Schedule,
    window: usize,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf: Vec<f64> = (1..=world.words.len()).map(|r| 1.0 / r as f64).collect();
    let pick_word = WeightedIndex::new(&zipf).ok();
    let p = world.params.clone();
    run_schedule(
        clock,
        &schedule,
        window,
        &mut tally,
        |_, intended| {
            let roll: f64 = rng.gen();
            let kind = if roll < p.unique_share {
                Kind::Unique
            } else if roll < p.unique_share + p.users_share {
                Kind::Users
            } else if roll < p.unique_share + p.users_share + p.conversations_share {
                Kind::Conversations
            } else {
                Kind::Words
            };
            let planted = world.planted[rng.gen_range(0..world.planted.len())].clone();
            let pair = rng.gen_range(0..world.pairs.len());
            let side = rng.gen_range(0..2usize);
            let mut text = String::new();
            if let Some(w) = &pick_word {
                text.push_str(&world.words[w.sample(&mut rng)]);
                if rng.gen_bool(0.5) {
                    text.push(' ');
                    text.push_str(&world.words[w.sample(&mut rng)]);
                }
            }
            let world = Arc::clone(&world);
            Live::add(&ctx.live.sends);
            Ok(async move {
                let r = ask(&world, kind, &planted, pair, side, &text).await;
                (kind, intended, Instant::now(), r)
            })
        },
        |tally, (kind, intended, done, r): Answer| {
            let measured = clock.in_window(done);
            tally.op("search_queries", measured);
            match r {
                Ok(verdict) => {
                    Live::add(&ctx.live.acks);
                    let latency = done.saturating_duration_since(intended);
                    ctx.live.timeline_ack(done, latency);
                    if clock.measured(intended) {
                        tally.named("search").record(latency);
                        tally.named(kind.name()).record(latency);
                    }
                    if let Some((query, detail)) = verdict {
                        lock(&ctx.checker).search_mismatch(query, detail);
                    }
                }
                Err((key, example)) => {
                    Live::add(&ctx.live.errors);
                    tally.error_examples.entry(key.clone()).or_insert(example);
                    tally.error(key);
                }
            }
            Flow::Go
        },
    )
    .await;
    tally
}

/// Asks one query and judges the answer when it has one known answer.
async fn ask(
    world: &World,
    kind: Kind,
    planted: &Planted,
    pair: usize,
    side: usize,
    words: &str,
) -> Result<Option<(String, String)>, (String, String)> {
    let err = |e: chat_client::ClientError| (format!("search_{}", error_key(&e)), e.to_string());
    let limit = Some(world.params.limit);
    match kind {
        Kind::Unique => {
            let p = &world.pairs[planted.pair];
            // Either member of the conversation may search for it.
            let user = &p.sides[side].user;
            let api = world.targets.api_of(user.index);
            let filters = MessageSearch {
                limit,
                ..MessageSearch::default()
            };
            let r = api
                .search_messages(&user.token, &planted.word, &filters)
                .await
                .map_err(err)?;
            let right = r.hits.len() == 1
                && r.hits.iter().all(|h| {
                    h.conversation == p.conv
                        && h.seq == planted.seq
                        && h.sender == planted.sender
                        && h.body.split_whitespace().any(|w| w == planted.word)
                });
            if right {
                return Ok(None);
            }
            let found: Vec<String> = r
                .hits
                .iter()
                .map(|h| format!("{} seq {} from {}", h.conversation, h.seq, h.sender))
                .collect();
            Ok(Some((
                planted.word.clone(),
                format!(
                    "must find only {} seq {} from {}; found {} hit(s){}: [{}]",
                    p.conv,
                    planted.seq,
                    planted.sender,
                    r.hits.len(),
                    if r.partial { " (partial)" } else { "" },
                    found.join(", ")
                ),
            )))
        }
        Kind::Words => {
            let user = &world.pairs[pair].sides[side].user;
            let filters = MessageSearch {
                limit,
                ..MessageSearch::default()
            };
            world
                .targets
                .api_of(user.index)
                .search_messages(&user.token, words, &filters)
                .await
                .map_err(err)?;
            Ok(None)
        }
        Kind::Users => {
            // Someone of another pair looks the user up by name.
            let p = &world.pairs[pair];
            let wanted = &p.sides[side].user;
            let asker = &world.pairs[(pair + 1) % world.pairs.len()].sides[1 - side].user;
            let r = world
                .targets
                .api_of(asker.index)
                .search_users(&asker.token, &wanted.username)
                .await
                .map_err(err)?;
            if r.users.iter().any(|u| u.user_id == wanted.user_id) {
                return Ok(None);
            }
            Ok(Some((
                wanted.username.clone(),
                format!(
                    "must find user {}; found {} other user(s)",
                    wanted.user_id,
                    r.users.len()
                ),
            )))
        }
        Kind::Conversations => {
            // A member looks up its direct conversation by the other member's name.
            let p = &world.pairs[pair];
            let me = &p.sides[side].user;
            let other = &p.sides[1 - side].user;
            let r = world
                .targets
                .api_of(me.index)
                .search_conversations(&me.token, &other.username)
                .await
                .map_err(err)?;
            if r.conversations.iter().any(|c| c.conversation == p.conv) {
                return Ok(None);
            }
            Ok(Some((
                other.username.clone(),
                format!(
                    "must find {} for {}; found {} other conversation(s)",
                    p.conv,
                    me.user_id,
                    r.conversations.len()
                ),
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_vocabulary_is_distinct_seeded_and_alphabetic() {
        let a = vocabulary(500, 7);
        assert_eq!(a, vocabulary(500, 7));
        assert_ne!(a, vocabulary(500, 8));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 500);
        assert!(a
            .iter()
            .all(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_lowercase())));
    }

    #[test]
    fn planted_words_are_one_token_and_never_a_prefix_of_another() {
        let a = planted_word("ltx1y2-abc", 7);
        let b = planted_word("ltx1y2-abc", 70);
        assert_eq!(a.len(), b.len());
        assert!(!b.starts_with(&a) && !a.starts_with(&b));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(planted_word("LTx", 1), "ltxw00000001q");
    }
}
