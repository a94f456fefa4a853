//! Latency histograms, per-task tallies and the live counters behind the progress line.
//!
//! Each task that sends or receives keeps its own [`Tally`] (no sharing on the hot path) and
//! hands it back when it ends; the runner merges them. Only the [`Live`] counters are shared,
//! as relaxed atomics, for the once-a-second progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use chat_client::ClientError;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency a histogram holds; longer ones are recorded as this.
pub const MAX_LATENCY: Duration = Duration::from_secs(120);

/// A latency histogram in microseconds, 3 significant figures. The counts (about 150 KiB)
/// are allocated on the first record, as most tasks fill only one or two of a [`Tally`]'s.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    hist: Option<Histogram<u64>>,
}

impl Latency {
    pub fn new() -> Latency {
        Latency::default()
    }

    fn hist(&mut self) -> &mut Histogram<u64> {
        self.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_LATENCY.as_micros() as u64, 3)
                .expect("constant bounds: 1 us to 120 s at 3 significant figures are valid")
        })
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        self.hist().saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        if let Some(o) = &other.hist {
            // Both have the same bounds, which is the only way `add` can fail.
            let _ = self.hist().add(o);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, |h| h.len())
    }

    pub fn summary(&self) -> LatencySummary {
        let Some(h) = self.hist.as_ref().filter(|h| !h.is_empty()) else {
            return LatencySummary::default();
        };
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Percentiles of one latency, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What one task measured.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Send to ack, from the intended send time.
    pub ack: Latency,
    /// Send to the push at the other user, from the intended send time.
    pub delivery: Latency,
    /// Send to the push at the last member of a group, from the intended send time.
    pub last_delivery: Latency,
    /// One history page, from its intended time (`history-paging`).
    pub page: Latency,
    pub register: Latency,
    pub login: Latency,
    pub connect: Latency,
    /// Whole user set-up (register + login + connect), from the intended start.
    pub setup: Latency,
    pub sends: u64,
    pub acks: u64,
    pub duplicate_acks: u64,
    pub deliveries: u64,
    /// Acks and pushes received inside the measured window.
    pub acks_measured: u64,
    pub deliveries_measured: u64,
    pub setups_measured: u64,
    /// History pages read, and read inside the measured window.
    pub pages: u64,
    pub pages_measured: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first error message seen under each key, to tell what went wrong.
    pub error_examples: BTreeMap<String, String>,
    /// Latencies of the newer scenarios by name (`search_unique`, `mark_read`, ...), reported
    /// beside the fixed ones.
    pub named: BTreeMap<String, Latency>,
    /// Operations by name (`search_queries`, `logins`, ...): all of them, and those that
    /// ended inside the measured window.
    pub ops: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    /// The latency named `name`, created empty on first use.
    pub fn named(&mut self, name: &str) -> &mut Latency {
        self.named.entry(name.to_owned()).or_default()
    }

    /// Counts one operation named `name`, and in the window when `measured`.
    pub fn op(&mut self, name: &str, measured: bool) {
        let e = self.ops.entry(name.to_owned()).or_default();
        e.0 += 1;
        e.1 += u64::from(measured);
    }

    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    /// Counts `e` under its [`error_key`] and keeps its message if it is the first of its key.
    pub fn client_error(&mut self, e: &ClientError) {
        let key = error_key(e);
        self.error_examples
            .entry(key.clone())
            .or_insert_with(|| e.to_string());
        self.error(key);
    }

    pub fn merge(&mut self, o: &Tally) {
        self.ack.merge(&o.ack);
        self.delivery.merge(&o.delivery);
        self.last_delivery.merge(&o.last_delivery);
        self.page.merge(&o.page);
        self.register.merge(&o.register);
        self.login.merge(&o.login);
        self.connect.merge(&o.connect);
        self.setup.merge(&o.setup);
        self.sends += o.sends;
        self.acks += o.acks;
        self.duplicate_acks += o.duplicate_acks;
        self.deliveries += o.deliveries;
        self.acks_measured += o.acks_measured;
        self.deliveries_measured += o.deliveries_measured;
        self.setups_measured += o.setups_measured;
        self.pages += o.pages;
        self.pages_measured += o.pages_measured;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.error_examples {
            self.error_examples
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        for (k, l) in &o.named {
            self.named(k).merge(l);
        }
        for (k, (all, measured)) in &o.ops {
            let e = self.ops.entry(k.clone()).or_default();
            e.0 += all;
            e.1 += measured;
        }
    }
}

/// The key an error is counted under: the server's stable code, or the client-side kind.
pub fn error_key(e: &ClientError) -> String {
    match e {
        ClientError::Server(wire) => serde_json::to_value(wire.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "server".into()),
        ClientError::Closed { code: Some(c), .. } => format!("closed_{c}"),
        ClientError::Closed { code: None, .. } => "closed".into(),
        ClientError::Timeout => "timeout".into(),
        ClientError::Http(_) => "http".into(),
        ClientError::Ws(_) => "websocket".into(),
        ClientError::Protocol(_) => "protocol".into(),
    }
}

/// Counters shared by every task, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub sends: AtomicU64,
    pub acks: AtomicU64,
    pub fresh_acks: AtomicU64,
    pub deliveries: AtomicU64,
    /// Pushes of notes the server wrote itself (a group's creation), not counted as
    /// deliveries.
    pub notes: AtomicU64,
    pub errors: AtomicU64,
    pub setups: AtomicU64,
    pub connections: AtomicI64,
    /// Per-second throughput and latency, for the chart; set by the driver once the
    /// schedule is known.
    pub timeline: OnceLock<Timeline>,
}

impl Live {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Starts the per-second timeline at `start`, `secs` seconds long (later events are
    /// dropped). Only the first call counts.
    pub fn start_timeline(&self, start: Instant, secs: f64) {
        let _ = self.timeline.set(Timeline::new(start, secs));
    }

    /// An ack received at `at`, `latency` after its intended send time.
    pub fn timeline_ack(&self, at: Instant, latency: Duration) {
        if let Some(t) = self.timeline.get() {
            t.record(at, latency, Kind::Ack);
        }
    }

    /// A push received at `at`, `latency` after its intended send time.
    pub fn timeline_delivery(&self, at: Instant, latency: Duration) {
        if let Some(t) = self.timeline.get() {
            t.record(at, latency, Kind::Delivery);
        }
    }
}

/// Sub-buckets per power of two of the timeline's histograms: values are kept within about
/// 1/16 (6%), enough for a chart, in 400 counters a second.
const SUB: u64 = 16;
const SUB_BITS: u32 = 4;
const BUCKETS: usize = 400;

/// The bucket of `us` microseconds: exact below 16, then 16 per power of two.
fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let sub = (us >> (octave - SUB_BITS)) & (SUB - 1);
    let i = SUB + u64::from(octave - SUB_BITS) * SUB + sub;
    (i as usize).min(BUCKETS - 1)
}

/// The middle of bucket `i`, in microseconds.
fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let octave = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (octave - u64::from(SUB_BITS));
    (1u64 << octave) + sub * width + width / 2
}

#[derive(Clone, Copy)]
enum Kind {
    Ack,
    Delivery,
}

/// One second of the timeline.
struct Second {
    acks: AtomicU64,
    deliveries: AtomicU64,
    ack: Vec<AtomicU32>,
    delivery: Vec<AtomicU32>,
}

impl Second {
    fn new() -> Second {
        Second {
            acks: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            ack: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            delivery: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// Throughput and latency per second of a run, recorded lock-free by every task.
pub struct Timeline {
    start: Instant,
    seconds: Vec<Second>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("seconds", &self.seconds.len())
            .finish()
    }
}

/// The longest timeline kept, in seconds.
const MAX_TIMELINE_SECS: f64 = 4000.0;

impl Timeline {
    pub fn new(start: Instant, secs: f64) -> Timeline {
        let n = secs.clamp(1.0, MAX_TIMELINE_SECS).ceil() as usize;
        Timeline {
            start,
            seconds: (0..n).map(|_| Second::new()).collect(),
        }
    }

    fn record(&self, at: Instant, latency: Duration, kind: Kind) {
        let i = at.saturating_duration_since(self.start).as_secs() as usize;
        let Some(s) = self.seconds.get(i) else {
            return;
        };
        let b = bucket_of(latency.as_micros() as u64);
        let (count, hist) = match kind {
            Kind::Ack => (&s.acks, &s.ack),
            Kind::Delivery => (&s.deliveries, &s.delivery),
        };
        count.fetch_add(1, Ordering::Relaxed);
        hist[b].fetch_add(1, Ordering::Relaxed);
    }

    /// One point per second up to the last second that saw anything.
    pub fn points(&self) -> Vec<TimelinePoint> {
        let last = self.seconds.iter().rposition(|s| {
            s.acks.load(Ordering::Relaxed) + s.deliveries.load(Ordering::Relaxed) > 0
        });
        let Some(last) = last else {
            return Vec::new();
        };
        self.seconds[..=last]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ack: Vec<u32> = s.ack.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                let del: Vec<u32> = s
                    .delivery
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                TimelinePoint {
                    second: i as u32,
                    acks: s.acks.load(Ordering::Relaxed),
                    deliveries: s.deliveries.load(Ordering::Relaxed),
                    ack_p50_us: quantile(&ack, 0.50),
                    ack_p99_us: quantile(&ack, 0.99),
                    delivery_p50_us: quantile(&del, 0.50),
                    delivery_p99_us: quantile(&del, 0.99),
                }
            })
            .collect()
    }
}

fn quantile(counts: &[u32], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return Some(bucket_value(i));
        }
    }
    None
}

/// One second of a run: events received in it (by arrival time) and the latency percentiles
/// of those events, from the intended send time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start of the load (warm-up included).
    pub second: u32,
    pub acks: u64,
    pub deliveries: u64,
    pub ack_p50_us: Option<u64>,
    pub ack_p99_us: Option<u64>,
    pub delivery_p50_us: Option<u64>,
    pub delivery_p99_us: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{ErrorCode, WireError};

    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert!((999..=1001).contains(&s.max_us), "{s:?}");
        let mut m = Latency::new();
        m.record(Duration::from_secs(1000));
        m.merge(&l);
        assert_eq!(m.count(), 1001);
        assert!(m.summary().max_us >= MAX_LATENCY.as_micros() as u64 - 1_000_000);
    }

    #[test]
    fn timeline_buckets_keep_values_within_a_sixteenth() {
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            999,
            12_345,
            1_000_000,
            100_000_000,
        ] {
            let v = bucket_value(bucket_of(us));
            let err = (v as f64 - us as f64).abs() / (us.max(1) as f64);
            assert!(err <= 1.0 / 16.0, "{us} -> {v}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let start = Instant::now();
        let t = Timeline::new(start, 3.0);
        for us in 1..=100u64 {
            t.record(start, Duration::from_micros(us * 10), Kind::Ack);
        }
        t.record(
            start + Duration::from_millis(1500),
            Duration::from_millis(5),
            Kind::Delivery,
        );
        t.record(start + Duration::from_secs(10), Duration::ZERO, Kind::Ack);
        let p = t.points();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].acks, 100);
        let p50 = p[0].ack_p50_us.unwrap();
        assert!((470..=530).contains(&p50), "{p50}");
        assert_eq!(p[1].deliveries, 1);
        assert_eq!(p[1].ack_p50_us, None);
    }

    #[test]
    fn errors_are_keyed_by_their_stable_code() {
        let e = ClientError::Server(WireError::new(ErrorCode::RateLimited, "slow down"));
        assert_eq!(error_key(&e), "rate_limited");
        assert_eq!(error_key(&ClientError::Timeout), "timeout");
        let closed = ClientError::Closed {
            code: Some(4003),
            reason: String::new(),
        };
        assert_eq!(error_key(&closed), "closed_4003");
    }
}
