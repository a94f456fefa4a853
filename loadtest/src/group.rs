//! The `group-fanout` scenario: one group of every user of the run, `senders` of them posting
//! on an open-loop schedule, every other member pushed every message.
//!
//! Users connect (spread round-robin over the targets), the first creates the group with all
//! the others in one `create_group` (adding members later would write one `member_added` note
//! per member into the log and fan each out to everyone already in: quadratic), and every
//! connection is an observer of the checker. Senders are spread evenly over the members and
//! reuse the flood sender of the direct scenarios (a fixed schedule, at most `window` sends in
//! flight each). Besides the per-push latency (`send_delivery`), the run measures each
//! message's send-to-last-delivery latency (`send_last_delivery`): the time until the last of
//! its `users - 1` recipients got it, lock-free from every reader.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_types::{ClientMsgId, UserId};
use futures_util::StreamExt;

use crate::common::{self, close_all, set_up_users, slot, slots, timeline_secs, Pump, Schedule};
use crate::dm::flood_sender;
use crate::metrics::{Live, Tally};
use crate::report::Connections;
use crate::run::{lock, spawn_progress, Clock, Ctx, Outcome, RunConfig};
use crate::setup::Targets;

/// How long to wait for the group's creation note to reach every member before the load.
const SETTLE: Duration = Duration::from_secs(60);

/// One scheduled message of one sender: how many recipients still owe its push, and the
/// latest latency of those that got it.
struct Slot {
    remaining: AtomicU32,
    worst_us: AtomicU64,
}

/// The last-delivery bookkeeping of a group run: per sender, one slot per scheduled message.
/// Shared by this crate's driver and the XMPP driver (`chat-loadtest-xmpp`), so that both
/// count `send_last_delivery` the same way.
pub struct Fanout {
    recipients: u32,
    senders: Vec<Vec<Slot>>,
}

impl Fanout {
    /// `recipients` per message; `slots_per_sender[s]` messages scheduled for sender `s`.
    pub fn new(recipients: u32, slots_per_sender: &[u64]) -> Fanout {
        Fanout {
            recipients,
            senders: slots_per_sender
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| Slot {
                            remaining: AtomicU32::new(recipients),
                            worst_us: AtomicU64::new(0),
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// The slot of a paced sender's client message id `<letter><sender>-<k>`.
    fn parse(cmid: &ClientMsgId) -> Option<(usize, u64)> {
        let rest = cmid
            .as_str()
            .strip_prefix(|c: char| c.is_ascii_lowercase())?;
        let (s, k) = rest.split_once('-')?;
        Some((s.parse().ok()?, k.parse().ok()?))
    }

    /// One recipient got `cmid`, `latency` after its intended send time.
    pub(crate) fn delivered(&self, cmid: &ClientMsgId, latency: Duration) {
        if let Some((s, k)) = Fanout::parse(cmid) {
            self.delivered_at(s, k, latency);
        }
    }

    /// One recipient got message `k` of sender `s`, `latency` after its intended send time;
    /// an unknown sender or slot is ignored.
    pub fn delivered_at(&self, s: usize, k: u64, latency: Duration) {
        let Some(slot) = self
            .senders
            .get(s)
            .and_then(|slots| slots.get(usize::try_from(k).ok()?))
        else {
            return;
        };
        slot.worst_us
            .fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
        // Saturating: a duplicate push must not wrap the count (the checker reports it).
        let _ = slot
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1));
    }

    /// The send-to-last-delivery latency of every message that reached all its recipients
    /// and that `measured(sender, k)` places in the measured window, and how many messages
    /// reached only some of their recipients (never sent, failed or pushed to nobody: the
    /// checker judges those).
    pub fn last_deliveries(&self, measured: impl Fn(usize, u64) -> bool) -> (Vec<Duration>, u64) {
        let mut latencies = Vec::new();
        let mut incomplete = 0u64;
        for (s, slots) in self.senders.iter().enumerate() {
            for (k, sl) in slots.iter().enumerate() {
                let remaining = sl.remaining.load(Ordering::Relaxed);
                if remaining == self.recipients {
                    continue;
                }
                if remaining > 0 {
                    incomplete += 1;
                    continue;
                }
                if measured(s, k as u64) {
                    latencies.push(Duration::from_micros(sl.worst_us.load(Ordering::Relaxed)));
                }
            }
        }
        (latencies, incomplete)
    }

    /// [`Fanout::last_deliveries`] into `tally`: `send_last_delivery` and
    /// `fanout_incomplete`.
    pub(crate) fn account(
        &self,
        tally: &mut Tally,
        clock: &Clock,
        phases: &[Duration],
        interval: Duration,
    ) {
        let (latencies, incomplete) =
            self.last_deliveries(|s, k| clock.measured(slot(clock.start, phases[s], interval, k)));
        for l in latencies {
            tally.last_delivery.record(l);
        }
        if incomplete > 0 {
            tally.errors.insert("fanout_incomplete".into(), incomplete);
        }
    }
}

pub(crate) async fn run_group(
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
    let n = sides.len();
    let owner = Arc::clone(&sides[0]);
    let members: Vec<UserId> = sides[1..].iter().map(|s| s.user.user_id).collect();
    // The creation must fit in one frame (see the module comment).
    let frame_bytes = 120
        + members
            .iter()
            .map(|u| u.0.to_string().len() + 1)
            .sum::<usize>();
    if frame_bytes > limits.max_frame_bytes as usize {
        close_all(sides.iter().cloned()).await;
        bail!(
            "creating a group of {n} members takes a {frame_bytes}-byte frame, over the \
             server's max_frame_bytes ({}): raise [limits] max_frame_bytes on the nodes",
            limits.max_frame_bytes
        );
    }
    let group = match owner.conn.create_group("lt-fanout", members).await {
        Ok(g) => g,
        Err(e) => {
            close_all(sides.iter().cloned()).await;
            return Err(crate::run::setup_error(
                &format!("{} creating a group of {n}", owner.user.username),
                e,
            ));
        }
    };
    let conv = group.conversation;
    if group.members.len() != n {
        close_all(sides.iter().cloned()).await;
        bail!(
            "the group was created with {} members, not {n}",
            group.members.len()
        );
    }
    lock(&checker).group_members(conv, group.members.iter().map(|m| m.user_id));

    // Senders spread over the members; each gets an equal share of the rate.
    let senders_n = scenario.senders.unwrap_or(1).min(n as u32) as usize;
    let sender_sides: Vec<usize> = (0..senders_n).map(|i| i * n / senders_n).collect();
    let interval = Duration::from_secs_f64(senders_n as f64 / scenario.rate);
    let recipients = (n - 1) as u32;

    // Every member but the creator is pushed the creation note first: wait for it, so that
    // the load starts on a settled group (and the note's fan-out is not measured).
    let notes_missing = futures_util::stream::iter(sides[1..].iter().map(|side| {
        let checker = Arc::clone(&checker);
        let live = Arc::clone(&live);
        async move {
            let deadline = Instant::now() + SETTLE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match side.conn.next_message(left).await {
                    Ok(Some(m)) => {
                        lock(&checker).delivered(side.observer, &m);
                        if matches!(m.refers, Some(chat_types::MessageRef::Group { .. })) {
                            Live::add(&live.notes);
                            return 0u64;
                        }
                    }
                    // Timed out, or closed (the reader reports the close).
                    Ok(None) | Err(_) => return 1,
                }
            }
        }
    }))
    .buffer_unordered(1024)
    .fold(0u64, |a, b| async move { a + b })
    .await;
    if notes_missing > 0 {
        tally
            .errors
            .insert("creation_note_missing".into(), notes_missing);
    }
    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let setup = setup_started.elapsed();
    live.start_timeline(clock.start, timeline_secs(scenario));
    let phases: Vec<Duration> = (0..senders_n)
        .map(|i| interval.mul_f64(i as f64 / senders_n as f64))
        .collect();
    let per_sender: Vec<u64> = phases
        .iter()
        .map(|ph| slots(clock.start, *ph, interval, clock.send_end))
        .collect();
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
        .map(|(i, &side)| {
            tokio::spawn(flood_sender(
                Arc::clone(&sides[side]),
                conv,
                i,
                Arc::clone(&ctx),
                window,
                Schedule::Fixed {
                    interval,
                    phase: phases[i],
                },
            ))
        })
        .collect();

    let samples = common::sample_window(config, &clock).await;
    connections.open_at_end = live.connections();
    common::join_tasks(senders, hard_end, "sender", &mut tally).await?;
    // Every fresh ack is owed one push per other member. Wait while they keep coming, as in
    // the direct scenarios.
    let drained = common::drain(
        &live,
        scenario,
        || Live::get(&live.deliveries) < Live::get(&live.fresh_acks) * u64::from(recipients),
        &mut tally,
    )
    .await;
    pump.stop(&mut tally).await;
    if let Some(p) = progress {
        p.abort();
    }

    fanout.account(&mut tally, &clock, &phases, interval);

    let api = targets.apis[owner.user.target].clone();
    crate::run::read_histories(
        &checker,
        vec![(conv, api, owner.user.token.clone())],
        common::HISTORY_PAGE,
    )
    .await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_last_delivery_is_the_worst_of_all_recipients() {
        let f = Fanout::new(3, &[2, 1]);
        let id = |s: &str| ClientMsgId::new(s).unwrap();
        for us in [300, 100, 200] {
            f.delivered(&id("f0-1"), Duration::from_micros(us));
        }
        f.delivered(&id("f1-0"), Duration::from_micros(50));
        f.delivered(&id("f9-0"), Duration::from_micros(50)); // no such sender: ignored
        f.delivered(&id("x"), Duration::from_micros(50));
        f.delivered(&id("b1-0"), Duration::from_micros(70)); // any letter names the sender
        let s = &f.senders[0][1];
        assert_eq!(s.remaining.load(Ordering::Relaxed), 0);
        assert_eq!(s.worst_us.load(Ordering::Relaxed), 300);
        f.delivered(&id("f0-1"), Duration::from_micros(1)); // a duplicate does not wrap
        assert_eq!(s.remaining.load(Ordering::Relaxed), 0);
        assert_eq!(f.senders[1][0].remaining.load(Ordering::Relaxed), 1);
        // Slot 0-1 reached all three (worst 300 us); 1-0 only two of three; 0-0 none.
        let (all, incomplete) = f.last_deliveries(|_, _| true);
        assert_eq!((all, incomplete), (vec![Duration::from_micros(300)], 1));
        let (none, _) = f.last_deliveries(|s, _| s != 0);
        assert!(none.is_empty(), "outside the measured window");
    }
}
