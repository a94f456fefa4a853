//! Latency histograms, per-task tallies and the live counters behind the progress line.
//!
//! Each task that sends or receives keeps its own [`Tally`] (no sharing on the hot path) and
//! hands it back when it ends; the runner merges them. Only the [`Live`] counters are shared,
//! as relaxed atomics, for the once-a-second progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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
    pub errors: BTreeMap<String, u64>,
    /// The first error message seen under each key, to tell what went wrong.
    pub error_examples: BTreeMap<String, String>,
}

impl Tally {
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
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.error_examples {
            self.error_examples
                .entry(k.clone())
                .or_insert_with(|| v.clone());
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
    pub errors: AtomicU64,
    pub setups: AtomicU64,
    pub connections: AtomicI64,
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
