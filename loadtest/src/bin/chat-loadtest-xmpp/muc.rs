//! The `group-fanout` scenario over XMPP: one multi-user chat room (XEP-0045) of every user
//! of the run, shaped as chat-loadtest's own (`loadtest/src/group.rs`) so that the two reports
//! compare.
//!
//! Every user is set up as in the direct scenarios, then joins the room
//! `bench-<run prefix>@<muc service>` as nick `u<index>` with
//! `<history maxstanzas='0'/>` (no history replays); user 0 joins first, which creates the
//! room, and submits the instant-room configuration (an empty `jabber:x:data` form) before the
//! others join. A user is in once it received its own presence (status 110).
//!
//! `senders` users, spread evenly over the members (user 0 among them), post
//! `type='groupchat'` messages with the id `g<sender>-<k>` on an open-loop schedule at `rate`
//! messages/s in all. The room reflects each message to every occupant, its sender included:
//! the sender's own copy (its *echo*) is taken as the message's acknowledgement (`send_ack`),
//! it frees the sender's window (at most `window` messages not yet echoed, as chat-loadtest's
//! window counts messages not yet acknowledged), and it is not a delivery. Every other member
//! must receive every message: `send_delivery` per delivery, `send_last_delivery` per message
//! until its last recipient got it.
//!
//! The verdict, from what the clients saw (the room keeps no history here): for each
//! (sender, recipient), every message written and not bounced must arrive once and in order;
//! a message of no sender of this run, or with a nick that is not its sender's, is a phantom.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chat_loadtest::metrics::Live;
use chat_loadtest::report::{Connections, Report};
use chat_loadtest::sysstat::{loadavg, Machine};
use chat_loadtest::Fanout;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Mutex as AsyncMutex, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::drive::{
    build_report, drain_and_collect, measure_and_join, next_message, set_up_users, slot, slots,
    start, unix_ms, write_all, Clock, Config, Ctx, Paced, ReportParts, Started, Step, Tally, Track,
    Verdict, MAX_TRACKED,
};
use crate::xml::{escape, Element};
use crate::xmpp::{self, Sink, Stream};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_DATA: &str = "jabber:x:data";
/// The id of the owner's configuration request.
const CONFIG_ID: &str = "muc-config";

/// The room of run `prefix` on MUC service `service`.
pub fn room_jid(prefix: &str, service: &str) -> String {
    format!("bench-{prefix}@{service}")
}

/// The nick of user `user`.
pub fn nick(user: usize) -> String {
    format!("u{user}")
}

/// The user of a nick made by [`nick`].
pub fn parse_nick(nick: &str) -> Option<usize> {
    let digits = nick.strip_prefix('u')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The presence that joins `room` as `nick`, asking for no history.
pub fn join_stanza(room: &str, nick: &str) -> String {
    format!(
        "<presence xmlns='jabber:client' to='{}/{}'><x xmlns='{NS_MUC}'>\
         <history maxstanzas='0'/></x></presence>",
        escape(room),
        escape(nick)
    )
}

/// The owner's instant-room configuration: an empty submitted form (XEP-0045 section 10.1.2).
pub fn instant_room_stanza(room: &str, id: &str) -> String {
    format!(
        "<iq xmlns='jabber:client' type='set' to='{}' id='{}'><query xmlns='{NS_MUC_OWNER}'>\
         <x xmlns='{NS_DATA}' type='submit'/></query></iq>",
        escape(room),
        escape(id)
    )
}

/// A group message's id: sender, index. Readers parse it back to check what arrives.
pub fn group_id(sender: usize, k: u64) -> String {
    format!("g{sender}-{k}")
}

pub fn parse_group_id(id: &str) -> Option<(usize, u64)> {
    let (s, k) = id.strip_prefix('g')?.split_once('-')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(s) || !digits(k) {
        return None;
    }
    Some((s.parse().ok()?, k.parse().ok()?))
}

/// Message `k` of sender `sender` to `room`.
pub fn group_message_stanza(room: &str, sender: usize, k: u64, body: &str) -> String {
    format!(
        "<message xmlns='jabber:client' to='{}' type='groupchat' id='{}'><body>{}</body></message>",
        escape(room),
        group_id(sender, k),
        escape(body)
    )
}

/// Splits a JID into its bare part and its resource (empty if none).
fn split_jid(jid: &str) -> (&str, &str) {
    jid.split_once('/').unwrap_or((jid, ""))
}

/// What a frame says about a join of `room` as `nick`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinAnswer {
    /// Our own presence (status 110): we are in.
    Joined,
    /// The room refused us, with this condition.
    Refused(String),
    /// Something else (the room's other presences, its subject, ...).
    Other,
}

/// Reads a frame received while joining `room` as `nick`.
pub fn join_answer(el: &Element, room: &str, nick: &str) -> JoinAnswer {
    if el.local() != "presence" {
        return JoinAnswer::Other;
    }
    let (bare, resource) = split_jid(el.attr("from").unwrap_or(""));
    if !bare.eq_ignore_ascii_case(room) {
        return JoinAnswer::Other;
    }
    match el.attr("type") {
        Some("error") => {
            // The error names the occupant JID we asked for, or only the room.
            if resource.is_empty() || resource == nick {
                let cond = el
                    .child("error")
                    .and_then(|e| e.first_child_name())
                    .unwrap_or("?");
                return JoinAnswer::Refused(cond.to_owned());
            }
            return JoinAnswer::Other;
        }
        Some("unavailable") => return JoinAnswer::Other,
        _ => {}
    }
    let self_presence = el
        .children
        .iter()
        .filter(|c| c.local() == "x" && c.attr("xmlns") == Some(NS_MUC_USER))
        .flat_map(|x| x.children.iter())
        .any(|s| s.local() == "status" && s.attr("code") == Some("110"));
    // Status 110 is the room telling us this presence is our own; a server that does not
    // send it (pre-1.25 XEP-0045) is recognised by the nick.
    if self_presence || resource == nick {
        JoinAnswer::Joined
    } else {
        JoinAnswer::Other
    }
}

/// What one received stanza is to the group driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Not part of the load: presence, the subject, a notice without a body.
    Other,
    /// Message `k` of sender `sender`, with its body.
    Message { sender: usize, k: u64 },
    /// An error in answer to message `k` of sender `sender` (if the id is one of ours).
    Bounce {
        of: Option<(usize, u64)>,
        condition: String,
    },
    /// A groupchat message this run did not send (foreign room, id, or nick).
    Phantom,
}

/// Classifies `el` (already known to be a `<message/>`) for the room `room` whose sender `s`
/// is user `sender_users[s]` and writes at most `slots[s]` messages.
pub fn classify(el: &Element, room: &str, sender_users: &[usize], slots: &[u64]) -> Incoming {
    let ours = el.attr("id").and_then(parse_group_id);
    if el.attr("type") == Some("error") {
        let condition = el
            .child("error")
            .and_then(|e| e.first_child_name())
            .unwrap_or("?")
            .to_owned();
        return Incoming::Bounce {
            of: ours
                .filter(|&(s, k)| s < sender_users.len() && slots.get(s).is_some_and(|&n| k < n)),
            condition,
        };
    }
    if el.child("body").is_none() {
        return Incoming::Other;
    }
    let (bare, resource) = split_jid(el.attr("from").unwrap_or(""));
    if !bare.eq_ignore_ascii_case(room) {
        return Incoming::Phantom;
    }
    match (ours, parse_nick(resource)) {
        (Some((s, k)), Some(user))
            if sender_users.get(s) == Some(&user)
                && slots.get(s).is_some_and(|&n| k < n)
                && k < MAX_TRACKED =>
        {
            Incoming::Message { sender: s, k }
        }
        _ => Incoming::Phantom,
    }
}

/// The senders' users: `senders` of `users`, spread evenly, user 0 first (as chat-loadtest).
pub fn sender_users(users: usize, senders: usize) -> Vec<usize> {
    let senders = senders.clamp(1, users.max(1));
    (0..senders).map(|i| i * users / senders).collect()
}

/// The room and what every task of a run shares about it.
struct Room {
    jid: String,
    users: usize,
    /// The user of each sender.
    sender_users: Vec<usize>,
    /// The sender of each user, if it sends.
    sender_of: Vec<Option<usize>>,
    /// Messages each sender's schedule holds.
    slots: Vec<u64>,
    sinks: Vec<AsyncMutex<Sink>>,
    /// Per sender: messages it may still have not echoed.
    windows: Vec<Semaphore>,
    /// Per sender: messages written, bounced, echoed.
    sent: Vec<AtomicU64>,
    bounced: Vec<AtomicU64>,
    echoed: Vec<AtomicU64>,
    fanout: Fanout,
}

/// Joins `room` as `nick` on a user's connection; the owner then submits the instant-room
/// configuration. Returns how long it took.
async fn join(
    sink: &mut Sink,
    stream: &mut Stream,
    room: &str,
    nick: &str,
    owner: bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    sink.send(WsMessage::Text(join_stanza(room, nick)))
        .await
        .context("writing the join")?;
    let answer = xmpp::wait_for(
        stream,
        |e| join_answer(e, room, nick) != JoinAnswer::Other,
        "the room's self-presence",
        xmpp::STEP_TIMEOUT,
    )
    .await?;
    if let JoinAnswer::Refused(cond) = join_answer(&answer, room, nick) {
        bail!("the room refused the join: {cond}");
    }
    if owner {
        sink.send(WsMessage::Text(instant_room_stanza(room, CONFIG_ID)))
            .await
            .context("writing the room configuration")?;
        let reply = xmpp::wait_for(
            stream,
            |e| e.local() == "iq" && e.attr("id") == Some(CONFIG_ID),
            "the room configuration's result",
            xmpp::STEP_TIMEOUT,
        )
        .await?;
        if reply.attr("type") != Some("result") {
            bail!(
                "the instant-room configuration was refused: {}",
                reply
                    .child("error")
                    .and_then(|e| e.first_child_name())
                    .unwrap_or("?")
            );
        }
    }
    Ok(t0.elapsed())
}

/// Runs a group-fanout scenario to the end and reports.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let scenario = &config.scenario;
    let prefix = chat_loadtest::setup::run_prefix();
    let started_unix_ms = unix_ms();
    let mut machine = Machine::now();
    let live = Arc::new(Live::default());
    let service = config
        .muc_service
        .clone()
        .unwrap_or_else(|| format!("conference.{}", config.domain));
    let room_jid = room_jid(&prefix, &service);

    let setup_started = Instant::now();
    let mut connections = Connections::default();
    let mut tally = Tally::default();
    let online = set_up_users(config, &prefix, &mut tally, &mut connections).await?;
    let users = online.len();
    if users < 2 {
        bail!("group-fanout needs at least 2 users");
    }
    let mut halves: Vec<(Sink, Stream)> = online.into_iter().map(|o| (o.sink, o.stream)).collect();

    // The owner creates and configures the room; then the others join, as many at a time as
    // the set-up allows.
    let joined = {
        let (sink, stream) = &mut halves[0];
        join(sink, stream, &room_jid, &nick(0), true).await
    };
    let mut join_error = joined.map(|t| tally.join.record(t)).err().map(|e| (0, e));
    if join_error.is_none() {
        let room = room_jid.as_str();
        let results =
            futures_util::stream::iter(halves.iter_mut().enumerate().skip(1).map(
                |(i, (sink, stream))| async move {
                    (i, join(sink, stream, room, &nick(i), false).await)
                },
            ))
            .buffer_unordered(scenario.setup_concurrency as usize)
            .collect::<Vec<_>>()
            .await;
        for (i, r) in results {
            match r {
                Ok(t) => tally.join.record(t),
                Err(e) => {
                    join_error.get_or_insert((i, e));
                }
            }
        }
    }
    if let Some((i, e)) = join_error {
        for (mut sink, _) in halves {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
        return Err(e.context(format!("user {i} joining {room_jid}")));
    }
    let setup = setup_started.elapsed();
    if config.progress {
        eprintln!(
            "[set-up] {users} users registered, logged in and in {room_jid} in {:.1}s",
            setup.as_secs_f64()
        );
    }

    // Senders spread over the members; each gets an equal share of the rate.
    let sender_users = sender_users(users, scenario.senders.unwrap_or(1) as usize);
    let senders_n = sender_users.len();
    let mut sender_of = vec![None; users];
    for (s, &u) in sender_users.iter().enumerate() {
        sender_of[u] = Some(s);
    }
    let interval = Duration::from_secs_f64(senders_n as f64 / scenario.rate);
    let phases: Vec<Duration> = (0..senders_n)
        .map(|i| interval.mul_f64(i as f64 / senders_n as f64))
        .collect();
    let recipients = (users - 1) as u32;
    let window = scenario.window.unwrap_or(1) as usize;

    let clock = Clock::new(Instant::now() + Duration::from_millis(50), scenario);
    let per_sender: Vec<u64> = phases
        .iter()
        .map(|ph| slots(clock.start, *ph, interval, clock.send_end))
        .collect();
    let mut streams = Vec::with_capacity(users);
    let mut sinks = Vec::with_capacity(users);
    for (sink, stream) in halves {
        sinks.push(AsyncMutex::new(sink));
        streams.push(stream);
        live.connection_opened();
    }
    let room = Arc::new(Room {
        jid: room_jid.clone(),
        users,
        sender_users: sender_users.clone(),
        sender_of,
        slots: per_sender.clone(),
        sinks,
        windows: (0..senders_n).map(|_| Semaphore::new(window)).collect(),
        sent: (0..senders_n).map(|_| AtomicU64::new(0)).collect(),
        bounced: (0..senders_n).map(|_| AtomicU64::new(0)).collect(),
        echoed: (0..senders_n).map(|_| AtomicU64::new(0)).collect(),
        fanout: Fanout::new(recipients, &per_sender),
    });
    let Started {
        ctx,
        hard_end,
        progress,
        stop_tx,
        stop_rx,
    } = start(config, scenario, &live, clock);
    let readers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(user, stream)| {
            tokio::spawn(read_member(
                Arc::clone(&room),
                user,
                stream,
                Arc::clone(&ctx),
                stop_rx.clone(),
                hard_end,
            ))
        })
        .collect();
    let senders: Vec<_> = (0..senders_n)
        .map(|s| {
            tokio::spawn(send_group(
                Arc::clone(&room),
                s,
                Arc::clone(&ctx),
                window,
                interval,
                phases[s],
            ))
        })
        .collect();

    let (server, loadgen) = measure_and_join(config, &clock, senders, hard_end, &mut tally).await?;
    connections.open_at_end = live.connections();
    // Every message written is owed one delivery per other member and an echo to its sender,
    // or one bounce; wait while they come.
    let r = u64::from(recipients);
    let owed = || {
        let sends = Live::get(&live.sends);
        let bounced = ctx.bounced.load(Ordering::Relaxed);
        Live::get(&live.deliveries) + bounced * r < sends * r
            || Live::get(&live.acks) + bounced < sends
    };
    let drained = drain_and_collect(
        scenario,
        owed,
        || Live::get(&live.deliveries) + Live::get(&live.acks),
        &stop_tx,
        readers,
        hard_end,
        &mut tally,
    )
    .await;
    if let Some(p) = progress {
        p.abort();
    }
    close_all(&room).await;

    let (latencies, incomplete) = room
        .fanout
        .last_deliveries(|s, k| clock.measured(slot(clock.start, phases[s], interval, k)));
    for l in latencies {
        tally.last_delivery.record(l);
    }
    if incomplete > 0 {
        tally.errors.insert("fanout_incomplete".into(), incomplete);
    }
    let sent: Vec<u64> = room
        .sent
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let bounced: Vec<u64> = room
        .bounced
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let echo_missing: u64 = (0..senders_n)
        .map(|s| {
            sent[s]
                .saturating_sub(bounced[s])
                .saturating_sub(room.echoed[s].load(Ordering::Relaxed))
        })
        .sum();
    if echo_missing > 0 {
        tally.errors.insert("echo_missing".into(), echo_missing);
    }
    let verdict = group_verdict(&tally, users, &sender_users, &sent, &bounced);

    machine.loadavg_after = loadavg();
    build_report(ReportParts {
        config,
        prefix,
        started_unix_ms,
        machine,
        setup,
        drained,
        tally,
        connections,
        server,
        loadgen,
        verdict,
        timeline: live.timeline.get().map(|t| t.points()).unwrap_or_default(),
    })
}

/// The group's verdict: for each sender `s` (user `sender_users[s]`, `sent[s]` written,
/// `bounced[s]` refused) and each other member, every message not refused must have arrived
/// once and in order (`tally.tracks[s * users + member]`).
fn group_verdict(
    tally: &Tally,
    users: usize,
    sender_users: &[usize],
    sent: &[u64],
    bounced: &[u64],
) -> Verdict {
    let mut v = Verdict {
        conversations: 1,
        ..Verdict::default()
    };
    for (s, &from) in sender_users.iter().enumerate() {
        let owed = sent
            .get(s)
            .copied()
            .unwrap_or(0)
            .saturating_sub(bounced.get(s).copied().unwrap_or(0));
        for member in (0..users).filter(|&m| m != from) {
            let track = tally.tracks.get(&(s * users + member));
            let got = track.map_or(0, |t| t.distinct);
            v.deliveries += got;
            v.lost += owed.saturating_sub(got);
            if let Some(t) = track {
                v.duplicated += t.duplicates;
                v.out_of_order += t.reordered;
            }
        }
    }
    v
}

/// Reads what member `user` receives until told to stop or `deadline`.
async fn read_member(
    room: Arc<Room>,
    user: usize,
    mut stream: Stream,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut tracks: Vec<Track> = (0..room.sender_users.len())
        .map(|_| Track::default())
        .collect();
    let own = room.sender_of[user];
    while let Some((text, el, now)) =
        next_message(&mut stream, &mut stop, deadline, &mut tally).await
    {
        match classify(&el, &room.jid, &room.sender_users, &room.slots) {
            Incoming::Other => {}
            Incoming::Phantom => tally.phantoms += 1,
            Incoming::Bounce { of, condition } => {
                tally.error(format!("bounce_{condition}"), || text.clone());
                Live::add(&ctx.live.errors);
                // Only the sender is told; a bounce of anyone else's message is not ours.
                if let Some((s, _)) = of.filter(|&(s, _)| own == Some(s)) {
                    tally.bounced += 1;
                    ctx.bounced.fetch_add(1, Ordering::Relaxed);
                    room.bounced[s].fetch_add(1, Ordering::Relaxed);
                    room.windows[s].add_permits(1);
                }
            }
            Incoming::Message { sender, k } => {
                let latency = el
                    .child("body")
                    .and_then(|b| ctx.clock.intended_of(&b.text))
                    .map(|intended| (intended, now.saturating_duration_since(intended)));
                if latency.is_none() {
                    tally.error("foreign_body", || text.chars().take(200).collect());
                }
                if !tracks[sender].record(k) {
                    if own == Some(sender) {
                        tally.duplicate_acks += 1;
                    }
                    continue;
                }
                if own == Some(sender) {
                    // Our own message reflected by the room: its acknowledgement.
                    room.echoed[sender].fetch_add(1, Ordering::Relaxed);
                    room.windows[sender].add_permits(1);
                    Live::add(&ctx.live.acks);
                    tally.acks += 1;
                    if ctx.clock.in_window(now) {
                        tally.acks_measured += 1;
                    }
                    if let Some((intended, latency)) = latency {
                        ctx.live.timeline_ack(now, latency);
                        if ctx.clock.measured(intended) {
                            tally.ack.record(latency);
                        }
                    }
                    continue;
                }
                Live::add(&ctx.live.deliveries);
                tally.deliveries += 1;
                if ctx.clock.in_window(now) {
                    tally.deliveries_measured += 1;
                }
                if let Some((intended, latency)) = latency {
                    ctx.live.timeline_delivery(now, latency);
                    if ctx.clock.measured(intended) {
                        tally.delivery.record(latency);
                    }
                    room.fanout.delivered_at(sender, k, latency);
                }
            }
        }
    }
    ctx.live.connection_closed();
    for (s, track) in tracks.into_iter().enumerate() {
        if own != Some(s) {
            tally.tracks.insert(s * room.users + user, track);
        }
    }
    tally
}

/// Sender `s` on its open-loop schedule (`phase + k * interval`), with at most `window`
/// messages not yet echoed by the room; messages that are due together go out in one write.
/// Slots still unsent when the window ends are counted as `unsent_behind_schedule`.
async fn send_group(
    room: Arc<Room>,
    s: usize,
    ctx: Arc<Ctx>,
    window: usize,
    interval: Duration,
    phase: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let clock = ctx.clock;
    let sem = &room.windows[s];
    let n = room.slots[s];
    let user = room.sender_users[s];
    let mut k: u64 = 0;
    let mut batch: Vec<(u64, Instant)> = Vec::with_capacity(window.max(1));
    tokio::time::sleep_until(clock.start.into()).await;
    let paced = Paced {
        clock: &clock,
        phase,
        interval,
        slots: n,
        window,
        sem,
    };
    while k < n {
        batch.clear();
        match paced.next_batch(&mut k, &mut batch, &mut tally).await {
            Step::Write => {}
            Step::Again => continue,
            Step::Done => break,
        }
        let stanzas = batch.iter().map(|&(k, intended)| {
            let body = clock.body(intended, ctx.scenario.body_bytes);
            group_message_stanza(&room.jid, s, k, &body)
        });
        if let Err(e) = write_all(&room.sinks[user], stanzas).await {
            tally.error("send_failed", || e.to_string());
            break;
        }
        let written = batch.len() as u64;
        room.sent[s].fetch_add(written, Ordering::Relaxed);
        Live::add_n(&ctx.live.sends, written);
        tally.sends += written;
    }
    tally
}

/// Ends every stream politely (`<close/>`, then the WebSocket close), 2 s at most each; the
/// room drops each occupant as its session ends.
async fn close_all(room: &Room) {
    futures_util::stream::iter(room.sinks.iter().map(|s| async move {
        let mut sink = s.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(WsMessage::Text(xmpp::close_frame())).await;
            let _ = sink.close().await;
        })
        .await;
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
}

/// A readable error for a JID that cannot be a room.
pub fn check_service(service: &str) -> anyhow::Result<()> {
    if service.is_empty() || service.contains(['@', '/', ' ', '<', '>', '\'', '"', '&']) {
        return Err(anyhow!(
            "MUC service {service:?} must be a domain, e.g. conference.localhost"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::xml;

    const ROOM: &str = "bench-ltx@conference.localhost";

    #[test]
    fn nicks_and_ids_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_nick(&nick(17)), Some(17));
        for bad in ["", "u", "x17", "u-1", "u1a", "u+1"] {
            assert_eq!(parse_nick(bad), None, "{bad}");
        }
        assert_eq!(parse_group_id(&group_id(3, 170)), Some((3, 170)));
        for bad in [
            "", "g", "g3", "g3-", "g-1", "3-1", "g3-1-2", "g+3-1", "p0-0-1",
        ] {
            assert_eq!(parse_group_id(bad), None, "{bad}");
        }
        assert_eq!(
            room_jid("ltx", "conference.localhost"),
            "bench-ltx@conference.localhost"
        );
        check_service("conference.localhost").unwrap();
        assert!(check_service("a@b").is_err());
    }

    #[test]
    fn the_join_asks_for_no_history_and_the_config_is_an_empty_submit() {
        let el = xml::parse(&join_stanza(ROOM, "u3")).unwrap();
        assert_eq!(el.local(), "presence");
        assert_eq!(el.attr("to"), Some("bench-ltx@conference.localhost/u3"));
        let x = el.child("x").unwrap();
        assert_eq!(x.attr("xmlns"), Some(NS_MUC));
        assert_eq!(x.child("history").unwrap().attr("maxstanzas"), Some("0"));

        let el = xml::parse(&instant_room_stanza(ROOM, "c1")).unwrap();
        assert_eq!(
            (el.attr("type"), el.attr("to"), el.attr("id")),
            (Some("set"), Some(ROOM), Some("c1"))
        );
        let q = el.child("query").unwrap();
        assert_eq!(q.attr("xmlns"), Some(NS_MUC_OWNER));
        let form = q.child("x").unwrap();
        assert_eq!(
            (form.attr("xmlns"), form.attr("type")),
            (Some(NS_DATA), Some("submit"))
        );
        assert!(form.children.is_empty());
    }

    #[test]
    fn only_our_own_presence_completes_the_join() {
        let own = xml::parse(&format!(
            "<presence xmlns='jabber:client' from='{ROOM}/u3' to='a@localhost/lt'>\
             <x xmlns='vcard-temp:x:update'/><x xmlns='{NS_MUC_USER}'>\
             <item affiliation='owner' role='moderator'/><status code='201'/>\
             <status code='110'/></x></presence>"
        ))
        .unwrap();
        assert_eq!(join_answer(&own, ROOM, "u3"), JoinAnswer::Joined);
        let other = xml::parse(&format!(
            "<presence from='{ROOM}/u0'><x xmlns='{NS_MUC_USER}'>\
             <item affiliation='owner' role='moderator'/></x></presence>"
        ))
        .unwrap();
        assert_eq!(join_answer(&other, ROOM, "u3"), JoinAnswer::Other);
        // The room's own presence (its capabilities) and a subject message are not answers.
        let caps = xml::parse(&format!("<presence from='{ROOM}'><c/></presence>")).unwrap();
        assert_eq!(join_answer(&caps, ROOM, "u3"), JoinAnswer::Other);
        let subject = xml::parse(&format!(
            "<message from='{ROOM}' type='groupchat'><subject/></message>"
        ))
        .unwrap();
        assert_eq!(join_answer(&subject, ROOM, "u3"), JoinAnswer::Other);
        let refused = xml::parse(&format!(
            "<presence from='{ROOM}/u3' type='error'><error type='wait'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ))
        .unwrap();
        assert_eq!(
            join_answer(&refused, ROOM, "u3"),
            JoinAnswer::Refused("service-unavailable".into())
        );
        let elsewhere = xml::parse(
            "<presence from='bench-other@conference.localhost/u3'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>",
        )
        .unwrap();
        assert_eq!(join_answer(&elsewhere, ROOM, "u3"), JoinAnswer::Other);
    }

    /// The stanza a member receives when sender `s` (user `from`) posts message `k`.
    fn reflected(s: usize, from: usize, k: u64, body: &str) -> Element {
        let sent = xml::parse(&group_message_stanza(ROOM, s, k, body)).unwrap();
        assert_eq!(sent.attr("type"), Some("groupchat"));
        assert_eq!(sent.attr("to"), Some(ROOM));
        let mut el = sent;
        el.attrs.retain(|(k, _)| k != "to");
        el.attrs
            .push(("from".into(), format!("{ROOM}/{}", nick(from))));
        el
    }

    #[test]
    fn group_messages_are_told_from_phantoms_bounces_and_notices() {
        let senders = sender_users(100, 10);
        assert_eq!(senders[..3], [0, 10, 20]);
        let slots = vec![5; 10];
        let el = reflected(2, 20, 4, "t1.xx");
        assert_eq!(
            classify(&el, ROOM, &senders, &slots),
            Incoming::Message { sender: 2, k: 4 }
        );
        assert_eq!(el.child("body").unwrap().text, "t1.xx");
        // The wrong nick for the sender, an index past the schedule, another room, a foreign id.
        for el in [
            reflected(2, 21, 4, "t1.xx"),
            reflected(2, 20, 5, "t1.xx"),
            reflected(11, 20, 0, "t1.xx"),
        ] {
            assert_eq!(classify(&el, ROOM, &senders, &slots), Incoming::Phantom);
        }
        let mut elsewhere = reflected(2, 20, 4, "t1.xx");
        elsewhere.attrs.retain(|(k, _)| k != "from");
        elsewhere
            .attrs
            .push(("from".into(), "bench-x@conference.localhost/u20".into()));
        assert_eq!(
            classify(&elsewhere, ROOM, &senders, &slots),
            Incoming::Phantom
        );
        let foreign = xml::parse(&format!(
            "<message from='{ROOM}/u20' type='groupchat' id='abc'><body>hi</body></message>"
        ))
        .unwrap();
        assert_eq!(
            classify(&foreign, ROOM, &senders, &slots),
            Incoming::Phantom
        );
        // The subject and configuration notices carry no body.
        let notice = xml::parse(&format!(
            "<message from='{ROOM}' type='groupchat'><x xmlns='{NS_MUC_USER}'>\
             <status code='104'/></x></message>"
        ))
        .unwrap();
        assert_eq!(classify(&notice, ROOM, &senders, &slots), Incoming::Other);
        let bounce = xml::parse(&format!(
            "<message from='{ROOM}' type='error' id='g1-3'><body>x</body><error type='wait'>\
             <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        ))
        .unwrap();
        assert_eq!(
            classify(&bounce, ROOM, &senders, &slots),
            Incoming::Bounce {
                of: Some((1, 3)),
                condition: "resource-constraint".into()
            }
        );
    }

    #[test]
    fn senders_are_spread_over_the_members() {
        assert_eq!(sender_users(1000, 10)[9], 900);
        assert_eq!(sender_users(3, 3), [0, 1, 2]);
        assert_eq!(sender_users(3, 9), [0, 1, 2]);
        assert_eq!(sender_users(5, 0), [0]);
    }

    #[test]
    fn the_verdict_counts_per_sender_and_recipient() {
        // 3 users; sender 0 is user 0 (wrote 3, 1 bounced), sender 1 is user 2 (wrote 2).
        let users = 3;
        let senders = [0, 2];
        let mut tally = Tally::default();
        let mut track = |s: usize, member: usize, ks: &[u64]| {
            let mut t = Track::default();
            for &k in ks {
                t.record(k);
            }
            tally.tracks.insert(s * users + member, t);
        };
        track(0, 1, &[0, 1]); // both owed
        track(0, 2, &[1]); // one lost
        track(1, 0, &[1, 0, 1]); // out of order, duplicated
                                 // Sender 1 to user 1: no track at all, both lost.
        let v = group_verdict(&tally, users, &senders, &[3, 2], &[1, 0]);
        assert_eq!(
            v,
            Verdict {
                conversations: 1,
                lost: 3,
                duplicated: 1,
                out_of_order: 1,
                deliveries: 5,
            }
        );
    }
}
