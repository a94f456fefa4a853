//! Reports: what a run measured and what the checker found, as a text table, as JSON, and two
//! reports side by side with ratios.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::checker::CheckReport;
use crate::metrics::{LatencySummary, TimelinePoint};
use crate::scenario::{Scenario, ScenarioKind};
use crate::scrape::CounterDelta;
use crate::sysstat::{Machine, ProcStats};

/// Bumped when a field changes meaning, so `compare` can refuse mismatched files.
pub const REPORT_FORMAT: u32 = 1;

/// How many violations the text report lists (the JSON has them all, up to
/// [`MAX_VIOLATIONS_KEPT`]).
const VIOLATIONS_SHOWN: usize = 20;
/// The most violations a report keeps; the counts always cover all of them.
pub const MAX_VIOLATIONS_KEPT: usize = 1000;

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub scenario: Scenario,
    /// The user name prefix of this run.
    pub run_prefix: String,
    pub targets: Vec<String>,
    pub started_unix_ms: u64,
    pub machine: Machine,
    /// Seconds spent registering, logging in, connecting and opening conversations before the
    /// load started (direct scenarios).
    pub setup_secs: f64,
    /// Length of the measured window the rates are computed over.
    pub measured_secs: f64,
    /// How long, after the last send, the run waited for outstanding pushes.
    #[serde(default)]
    pub drain_secs: f64,
    /// Latencies by name: `send_ack`, `send_delivery`, and for connect-storm `register`,
    /// `login`, `connect`, `setup`.
    pub latency: BTreeMap<String, LatencySummary>,
    pub throughput: Throughput,
    /// Failed attempts by stable error code (or client-side kind: timeout, closed_<code>...).
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error key.
    #[serde(default)]
    pub error_examples: BTreeMap<String, String>,
    pub connections: Connections,
    /// The servers named by `--server-pid`, summed.
    pub server: Option<ProcStats>,
    /// This process.
    pub loadgen: Option<ProcStats>,
    /// `chat_messages_appended_total` summed over the targets.
    pub appended: Option<CounterDelta>,
    pub check: CheckReport,
    /// Per-second throughput and latency percentiles (by arrival time), for the chart.
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    /// This run's figures as ratios of the ceiling relay's, when one was given.
    #[serde(default)]
    pub ceiling: Option<Ceiling>,
    /// The run was against the in-process ceiling relay (`calibrate`), not a chat server.
    #[serde(default)]
    pub relay: bool,
}

/// A run's figures against the same scenario run on the bare relay (`calibrate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// When the relay run started, to tell whether the two were measured side by side.
    pub relay_started_unix_ms: u64,
    /// Scenario parameters that differ between the two runs (empty when comparable).
    pub differences: Vec<String>,
    pub figures: Vec<CeilingFigure>,
}

/// One figure of the run beside the relay's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CeilingFigure {
    pub name: String,
    pub server: f64,
    pub relay: f64,
    /// `server / relay`: for a latency, how many times slower; for a rate, the fraction of
    /// the relay's reached; for CPU per operation, how many times more.
    pub ratio: Option<f64>,
}

impl Ceiling {
    /// `run` beside `relay`.
    pub fn of(run: &Report, relay: &Report) -> Ceiling {
        let mut differences = Vec::new();
        let (a, b) = (&run.scenario, &relay.scenario);
        if a.kind != b.kind {
            differences.push(format!("kind {} vs {}", a.kind.as_str(), b.kind.as_str()));
        }
        for (name, x, y) in [
            ("users", f64::from(a.users), f64::from(b.users)),
            ("rate", a.rate, b.rate),
            ("duration_secs", a.duration_secs, b.duration_secs),
            (
                "window",
                f64::from(a.window.unwrap_or(0)),
                f64::from(b.window.unwrap_or(0)),
            ),
            ("body_bytes", a.body_bytes as f64, b.body_bytes as f64),
        ] {
            if x != y {
                differences.push(format!("{name} {x} vs {y}"));
            }
        }
        let mut figures = Vec::new();
        let mut add = |name: String, server: Option<f64>, relay: Option<f64>| {
            if let (Some(server), Some(relay)) = (server, relay) {
                if server == 0.0 && relay == 0.0 {
                    return;
                }
                let ratio = (relay > 0.0).then(|| server / relay);
                figures.push(CeilingFigure {
                    name,
                    server,
                    relay,
                    ratio,
                });
            }
        };
        for (name, l) in &run.latency {
            let r = relay.latency.get(name);
            for (q, v, rv) in [
                ("p50", l.p50_us, r.map(|r| r.p50_us)),
                ("p99", l.p99_us, r.map(|r| r.p99_us)),
            ] {
                add(
                    format!("{name} {q} (us)"),
                    Some(v as f64),
                    rv.map(|v| v as f64),
                );
            }
        }
        let (t, rt) = (&run.throughput, &relay.throughput);
        if t.sends > 0 {
            add("acks/s".into(), Some(t.acks_per_sec), Some(rt.acks_per_sec));
            add(
                "deliveries/s".into(),
                Some(t.deliveries_per_sec),
                Some(rt.deliveries_per_sec),
            );
        }
        if t.setups > 0 {
            add(
                "set-ups/s".into(),
                Some(t.setups_per_sec),
                Some(rt.setups_per_sec),
            );
        }
        if t.pages > 0 {
            add(
                "pages/s".into(),
                Some(t.pages_per_sec),
                Some(rt.pages_per_sec),
            );
        }
        for (name, o) in &t.ops {
            add(
                format!("{name}/s"),
                Some(o.per_sec),
                rt.ops.get(name).map(|r| r.per_sec),
            );
        }
        add(
            "server cpu us/op".into(),
            run.server.as_ref().and_then(|p| p.cpu_us_per_op),
            relay.server.as_ref().and_then(|p| p.cpu_us_per_op),
        );
        Ceiling {
            relay_started_unix_ms: relay.started_unix_ms,
            differences,
            figures,
        }
    }

    /// The ratio of the figure named `name`.
    pub fn ratio(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.ratio)
    }

    fn to_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "against the ceiling (the bare relay, same scenario, same machine):"
        );
        if !self.differences.is_empty() {
            let _ = writeln!(
                out,
                "  warning: the runs differ: {}",
                self.differences.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  {:<28} {:>12} {:>12} {:>9}",
            "figure", "server", "relay", "ratio"
        );
        for f in &self.figures {
            let reading = if f.name.ends_with("/s") {
                "of relay"
            } else {
                "x relay"
            };
            let _ = writeln!(
                out,
                "  {:<28} {:>12} {:>12} {:>9} {reading}",
                f.name,
                fmt_num(Some(f.server)),
                fmt_num(Some(f.relay)),
                f.ratio.map_or("-".into(), |r| format!("{r:.3}")),
            );
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Totals over the whole run (warm-up and drain included).
    pub sends: u64,
    pub acks: u64,
    pub duplicate_acks: u64,
    pub deliveries: u64,
    pub setups: u64,
    /// Rates inside the measured window.
    pub acks_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub setups_per_sec: f64,
    /// History pages read (`history-paging`), in all and per second in the window.
    #[serde(default)]
    pub pages: u64,
    #[serde(default)]
    pub pages_per_sec: f64,
    /// Other operations by name (`search_queries`, `logins`, `history_reads`, ...): how
    /// many in all, and per second in the window.
    #[serde(default)]
    pub ops: BTreeMap<String, OpRate>,
}

/// How many operations of one kind a run made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpRate {
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub opened: u64,
    pub failed: u64,
    /// Open when the load stopped (before the load tester closed them).
    pub open_at_end: i64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.check.ok()
    }

    /// The final text table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(
            out,
            "scenario {}: {} users, rate {}, window {}, {}s measured after {}s warm-up, \
             body {} B",
            if s.name == s.kind.as_str() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, s.kind.as_str())
            },
            s.users,
            if s.rate > 0.0 {
                format!("{}/s", s.rate)
            } else {
                "unpaced".into()
            },
            s.window.map_or("-".into(), |w| w.to_string()),
            s.duration_secs,
            s.warmup_secs,
            s.body_bytes
        );
        let _ = writeln!(
            out,
            "targets {}{}; run prefix {}; nproc {}; load average {} -> {}",
            self.targets.join(" "),
            if self.relay {
                " (the ceiling relay)"
            } else {
                ""
            },
            self.run_prefix,
            self.machine.nproc,
            fmt_load(self.machine.loadavg_before),
            fmt_load(self.machine.loadavg_after)
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (us)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, l) in &self.latency {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
                name, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        let t = &self.throughput;
        let _ = writeln!(out);
        if t.setups > 0 {
            let _ = writeln!(
                out,
                "set-ups {} ({:.1}/s measured)",
                t.setups, t.setups_per_sec
            );
        }
        if t.sends > 0 {
            let _ = writeln!(
                out,
                "sends {}  acks {} ({:.0}/s measured, {} duplicate)  deliveries {} ({:.0}/s measured)",
                t.sends, t.acks, t.acks_per_sec, t.duplicate_acks, t.deliveries, t.deliveries_per_sec
            );
        }
        if t.pages > 0 {
            let _ = writeln!(
                out,
                "history pages {} ({:.0}/s measured)",
                t.pages, t.pages_per_sec
            );
        }
        for (name, o) in &t.ops {
            let _ = writeln!(out, "{name} {} ({:.1}/s measured)", o.count, o.per_sec);
        }
        let c = &self.connections;
        let _ = writeln!(
            out,
            "connections opened {}  failed {}  open at end {}  (set-up took {:.1}s, drain {:.1}s)",
            c.opened, c.failed, c.open_at_end, self.setup_secs, self.drain_secs
        );
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(out, "errors {errors}");
        for (k, m) in &self.error_examples {
            let _ = writeln!(out, "  e.g. {k}: {m}");
        }
        if c.failed > 0 {
            let _ = writeln!(
                out,
                "warning: {} of {} set-ups failed",
                c.failed,
                c.failed + c.opened
            );
        }
        for (name, p) in [("server", &self.server), ("load generator", &self.loadgen)] {
            if let Some(p) = p {
                let rss = if p.hwm_kib == 0 {
                    "rss not measured (threads of this process)".to_owned()
                } else {
                    format!(
                        "rss {} -> {} KiB (peak {} KiB)",
                        p.rss_kib_start, p.rss_kib_end, p.hwm_kib
                    )
                };
                let _ = writeln!(
                    out,
                    "{name} cpu {:.2}s ({:.2} cores){}  {rss}{}",
                    p.cpu_secs,
                    p.cores,
                    p.cpu_us_per_op
                        .map_or(String::new(), |v| format!(", {v:.1} us/op")),
                    if p.pids.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " [pids {}]",
                            p.pids
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    }
                );
            }
        }
        // For fan-out, CPU per delivery says more than CPU per message sent.
        if t.deliveries_per_sec > 2.0 * t.acks_per_sec && self.measured_secs > 0.0 {
            let delivered = t.deliveries_per_sec * self.measured_secs;
            for (name, p) in [("server", &self.server), ("load generator", &self.loadgen)] {
                if let Some(p) = p {
                    let _ = writeln!(
                        out,
                        "{name} cpu per delivery in the window: {:.1} us",
                        p.cpu_secs * 1e6 / delivered
                    );
                }
            }
        }
        let memory_note = match self.scenario.kind {
            ScenarioKind::ConnectStorm => {
                Some("password hashing memory the allocator kept included")
            }
            ScenarioKind::IdleConnections => Some("measured after the logins: hashing excluded"),
            _ => None,
        };
        if let Some(note) = memory_note {
            for (name, p) in [("server", &self.server), ("load generator", &self.loadgen)] {
                let Some(p) = p.as_ref().filter(|p| p.hwm_kib > 0) else {
                    continue;
                };
                if c.open_at_end > 0 {
                    let grown = p.rss_kib_end.saturating_sub(p.rss_kib_start);
                    let _ = writeln!(
                        out,
                        "{name} rss grew {grown} KiB with {} connections open: {:.1} KiB each \
                         ({note})",
                        c.open_at_end,
                        grown as f64 / c.open_at_end as f64
                    );
                }
            }
        }
        if let Some(a) = &self.appended {
            let _ = writeln!(
                out,
                "{}: {} -> {} (+{})",
                a.name, a.before, a.after, a.delta
            );
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(out);
            c.to_text(&mut out);
        }
        let _ = writeln!(out);
        let ck = &self.check;
        let resent = match ck.resends {
            0 => String::new(),
            n => format!(" ({n} of them sent again with the client id of a send cut off)"),
        };
        let _ = writeln!(
            out,
            "checker: {} sends{resent}, {} acked, {} failed, {} pushes, {} stored messages read back",
            ck.sends, ck.acked, ck.failed, ck.deliveries, ck.history_messages
        );
        for v in ck.violations.iter().take(VIOLATIONS_SHOWN) {
            let _ = writeln!(out, "  {v}");
        }
        let total = ck.counts.total() as usize;
        if total > VIOLATIONS_SHOWN {
            let _ = writeln!(out, "  ... and {} more", total - VIOLATIONS_SHOWN);
        }
        let _ = writeln!(out, "{}", ck.verdict_line());
        out
    }

    /// The figures `compare` puts side by side, in order.
    pub fn figures(&self) -> Vec<(String, Option<f64>)> {
        let mut f: Vec<(String, Option<f64>)> = Vec::new();
        for (name, l) in &self.latency {
            for (q, v) in [
                ("p50", l.p50_us),
                ("p90", l.p90_us),
                ("p99", l.p99_us),
                ("p99.9", l.p999_us),
                ("max", l.max_us),
            ] {
                f.push((format!("{name} {q} (us)"), Some(v as f64)));
            }
        }
        let t = &self.throughput;
        f.push(("acks/s".into(), Some(t.acks_per_sec)));
        f.push(("deliveries/s".into(), Some(t.deliveries_per_sec)));
        if t.setups > 0 {
            f.push(("set-ups/s".into(), Some(t.setups_per_sec)));
        }
        if t.pages > 0 {
            f.push(("pages/s".into(), Some(t.pages_per_sec)));
        }
        for (name, o) in &t.ops {
            f.push((format!("{name}/s"), Some(o.per_sec)));
        }
        let errors: u64 = self.errors.values().sum();
        f.push(("errors".into(), Some(errors as f64)));
        for (name, p) in [("server", &self.server), ("loadgen", &self.loadgen)] {
            f.push((format!("{name} cores"), p.as_ref().map(|p| p.cores)));
            f.push((
                format!("{name} cpu us/op"),
                p.as_ref().and_then(|p| p.cpu_us_per_op),
            ));
            f.push((
                format!("{name} rss end (KiB)"),
                p.as_ref().map(|p| p.rss_kib_end as f64),
            ));
        }
        f.push(("violations".into(), Some(self.check.counts.total() as f64)));
        f
    }
}

fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |l| {
        format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
    })
}

/// Two reports side by side: each figure of A and of B, and B / A.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: {} ({}, {} users) {}",
        a.scenario.name,
        a.scenario.kind.as_str(),
        a.scenario.users,
        a.targets.join(" ")
    );
    let _ = writeln!(
        out,
        "B: {} ({}, {} users) {}",
        b.scenario.name,
        b.scenario.kind.as_str(),
        b.scenario.users,
        b.targets.join(" ")
    );
    if a.scenario.kind != b.scenario.kind {
        let _ = writeln!(out, "note: the two runs are of different kinds of scenario");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<26} {:>12} {:>12} {:>8}", "figure", "A", "B", "B/A");
    let fb: BTreeMap<String, Option<f64>> = b.figures().into_iter().collect();
    let mut names: Vec<String> = Vec::new();
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    for (name, va) in a.figures() {
        let vb = fb.get(&name).copied().flatten();
        names.push(name.clone());
        rows.push((name, va, vb));
    }
    for (name, vb) in b.figures() {
        if !names.contains(&name) {
            rows.push((name, None, vb));
        }
    }
    for (name, va, vb) in rows {
        if va.is_none() && vb.is_none() {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<26} {:>12} {:>12} {:>8}",
            name,
            fmt_num(va),
            fmt_num(vb),
            ratio(va, vb)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "A {}", a.check.verdict_line());
    let _ = writeln!(out, "B {}", b.check.verdict_line());
    out
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `B / A` to two decimals; "-" when either is missing or A is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:.2}", b / a),
        (Some(a), Some(b)) if a == 0.0 && b == 0.0 => "1.00".into(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::checker::Checker;

    pub(crate) fn sample(p50: u64, acks_per_sec: f64) -> Report {
        let scenario = Scenario::from_toml(
            "kind = \"dm-flood\"\nusers = 2\nrate = 0\nwindow = 4\nduration_secs = 1\n",
            "t",
            "flood",
        )
        .unwrap();
        let mut latency = BTreeMap::new();
        latency.insert(
            "send_ack".to_owned(),
            LatencySummary {
                count: 10,
                mean_us: p50 as f64,
                p50_us: p50,
                p90_us: p50 * 2,
                p99_us: p50 * 3,
                p999_us: p50 * 4,
                max_us: p50 * 5,
            },
        );
        Report {
            format: REPORT_FORMAT,
            scenario,
            run_prefix: "ltx".into(),
            targets: vec!["http://127.0.0.1:8080".into()],
            started_unix_ms: 0,
            machine: Machine::default(),
            setup_secs: 0.5,
            measured_secs: 1.0,
            drain_secs: 0.0,
            latency,
            throughput: Throughput {
                acks_per_sec,
                ..Throughput::default()
            },
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            connections: Connections::default(),
            server: None,
            loadgen: None,
            appended: None,
            check: Checker::new().check(),
            timeline: Vec::new(),
            ceiling: None,
            relay: false,
        }
    }

    #[test]
    fn compare_shows_ratios_of_b_over_a() {
        let text = compare(&sample(100, 1000.0), &sample(200, 500.0));
        let p50 = text
            .lines()
            .find(|l| l.starts_with("send_ack p50"))
            .unwrap();
        assert!(p50.ends_with("2.00"), "{p50}");
        let acks = text.lines().find(|l| l.starts_with("acks/s")).unwrap();
        assert!(acks.ends_with("0.50"), "{acks}");
    }

    #[test]
    fn a_report_round_trips_through_json_and_prints_its_verdict() {
        let r = sample(100, 1000.0);
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(r.to_text().contains("verdict: PASS"));
    }

    #[test]
    fn the_ceiling_states_ratios_and_differences() {
        let relay = sample(100, 10_000.0);
        let mut run = sample(250, 2_000.0);
        run.scenario.users = 4;
        let c = Ceiling::of(&run, &relay);
        assert_eq!(c.ratio("send_ack p50 (us)"), Some(2.5));
        assert_eq!(c.ratio("send_ack p99 (us)"), Some(2.5));
        assert!(
            c.differences.iter().any(|d| d.starts_with("users")),
            "{c:?}"
        );
        run.ceiling = Some(c);
        let text = run.to_text();
        assert!(text.contains("against the ceiling"), "{text}");
        assert!(text.contains("2.500 x relay"), "{text}");
    }

    #[test]
    fn ratios_handle_missing_and_zero() {
        assert_eq!(ratio(None, Some(1.0)), "-");
        assert_eq!(ratio(Some(0.0), Some(1.0)), "-");
        assert_eq!(ratio(Some(0.0), Some(0.0)), "1.00");
        assert_eq!(ratio(Some(4.0), Some(1.0)), "0.25");
    }
}
