//! Ratios of interleaved rounds: report `i` of ours beside report `i` of the peer, each figure
//! as ours / peer, and the median and range over the rounds (PEERS.md's method).

use std::fmt::Write;

use chat_loadtest::Report;

/// What a figure's ratio (ours / peer) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One figure read from a report.
pub struct Figure {
    pub name: &'static str,
    pub better: Better,
    pub get: fn(&Report) -> Option<f64>,
}

fn latency(
    r: &Report,
    name: &str,
    q: fn(&chat_loadtest::metrics::LatencySummary) -> u64,
) -> Option<f64> {
    r.latency
        .get(name)
        .filter(|l| l.count > 0)
        .map(|l| q(l) as f64)
}

fn delivery(r: &Report, q: fn(&chat_loadtest::metrics::LatencySummary) -> u64) -> Option<f64> {
    latency(r, "send_delivery", q)
}

/// Messages the server took in per second: acknowledged ones (for an XMPP room, those it
/// reflected to their sender), or for a report without acks (XMPP direct) delivered ones.
fn accepted_per_sec(r: &Report) -> f64 {
    if r.throughput.acks > 0 {
        r.throughput.acks_per_sec
    } else {
        r.throughput.deliveries_per_sec
    }
}

fn cpu_per(r: &Report, per_sec: f64) -> Option<f64> {
    let s = r.server.as_ref()?;
    let n = per_sec * r.measured_secs;
    (n > 0.0).then(|| s.cpu_secs * 1e6 / n)
}

/// The figures compared, in order.
pub const FIGURES: &[Figure] = &[
    Figure {
        name: "delivery p50 (us)",
        better: Better::Lower,
        get: |r| delivery(r, |l| l.p50_us),
    },
    Figure {
        name: "delivery p99 (us)",
        better: Better::Lower,
        get: |r| delivery(r, |l| l.p99_us),
    },
    Figure {
        name: "delivery p99.9 (us)",
        better: Better::Lower,
        get: |r| delivery(r, |l| l.p999_us),
    },
    Figure {
        name: "last delivery p50 (us)",
        better: Better::Lower,
        get: |r| latency(r, "send_last_delivery", |l| l.p50_us),
    },
    Figure {
        name: "last delivery p99 (us)",
        better: Better::Lower,
        get: |r| latency(r, "send_last_delivery", |l| l.p99_us),
    },
    Figure {
        name: "deliveries/s",
        better: Better::Higher,
        get: |r| Some(r.throughput.deliveries_per_sec),
    },
    Figure {
        name: "accepted/s (acks|echoes|deliv.)",
        better: Better::Higher,
        get: |r| Some(accepted_per_sec(r)),
    },
    Figure {
        name: "server cpu us/delivery",
        better: Better::Lower,
        get: |r| cpu_per(r, r.throughput.deliveries_per_sec),
    },
    Figure {
        name: "server cpu us/accepted",
        better: Better::Lower,
        get: |r| cpu_per(r, accepted_per_sec(r)),
    },
    Figure {
        name: "server cores",
        better: Better::Lower,
        get: |r| r.server.as_ref().map(|s| s.cores),
    },
    Figure {
        name: "server rss end (MiB)",
        better: Better::Lower,
        get: |r| r.server.as_ref().map(|s| s.rss_kib_end as f64 / 1024.0),
    },
];

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The summary table of `ours[i]` against `peer[i]`.
pub fn summary(ours: &[Report], peer: &[Report], ours_name: &str, peer_name: &str) -> String {
    let mut out = String::new();
    let rounds = ours.len().min(peer.len());
    let kind = ours
        .first()
        .map(|r| r.scenario.name.clone())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "== {kind}: {ours_name} / {peer_name}, {rounds} interleaved rounds (ratio = {ours_name} / {peer_name})"
    );
    for i in 0..rounds {
        let (a, b) = (&ours[i].scenario, &peer[i].scenario);
        let mut diffs = Vec::new();
        if a.kind != b.kind {
            diffs.push(format!("kind {} vs {}", a.kind.as_str(), b.kind.as_str()));
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
                diffs.push(format!("{name} {x} vs {y}"));
            }
        }
        if !diffs.is_empty() {
            let _ = writeln!(
                out,
                "warning: round {} compares different runs: {}",
                i + 1,
                diffs.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<32} {:>11} {:>11} {:>9} {:>17}  {:<7} per round",
        "figure", ours_name, peer_name, "ratio med", "ratio min-max", "better"
    );
    for f in FIGURES {
        let a: Vec<Option<f64>> = ours[..rounds].iter().map(|r| (f.get)(r)).collect();
        let b: Vec<Option<f64>> = peer[..rounds].iter().map(|r| (f.get)(r)).collect();
        if a.iter().chain(b.iter()).all(Option::is_none) {
            continue;
        }
        let ratios: Vec<Option<f64>> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
                _ => None,
            })
            .collect();
        let r = sorted(ratios.iter().flatten().copied().collect());
        let range = match (r.first(), r.last()) {
            (Some(lo), Some(hi)) => format!("{}-{}", ratio(Some(*lo)), ratio(Some(*hi))),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:>11} {:>11} {:>9} {:>17}  {:<7} {}",
            f.name,
            num(median(&sorted(a.iter().flatten().copied().collect()))),
            num(median(&sorted(b.iter().flatten().copied().collect()))),
            ratio(median(&r)),
            range,
            match f.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            },
            ratios
                .iter()
                .map(|v| ratio(*v))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for (name, reports) in [(ours_name, ours), (peer_name, peer)] {
        let verdicts: Vec<String> = reports[..rounds]
            .iter()
            .map(|r| {
                let errors: u64 = r.errors.values().sum();
                format!(
                    "{}{}",
                    if r.ok() { "PASS" } else { "FAIL" },
                    if errors > 0 {
                        format!(" ({errors} errors)")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        let _ = writeln!(out, "{name}: {}", verdicts.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report(p50: u64, deliveries_per_sec: f64, acks: u64) -> Report {
        let json = serde_json::json!({
            "format": chat_loadtest::report::REPORT_FORMAT,
            "scenario": chat_loadtest::Scenario::from_toml(
                "kind = \"dm-flood\"\nusers = 2\nrate = 0\nwindow = 4\nduration_secs = 10\n",
                "t",
                "dm-flood",
            ).unwrap(),
            "run_prefix": "x",
            "targets": [],
            "started_unix_ms": 0,
            "machine": chat_loadtest::sysstat::Machine::default(),
            "setup_secs": 0.0,
            "measured_secs": 10.0,
            "latency": {"send_delivery": {"count": 5, "mean_us": 1.0, "p50_us": p50,
                "p90_us": p50, "p99_us": p50 * 2, "p999_us": p50 * 3, "max_us": p50 * 4}},
            "throughput": {"sends": 1, "acks": acks, "duplicate_acks": 0, "deliveries": 1,
                "setups": 0, "acks_per_sec": deliveries_per_sec * 2.0,
                "deliveries_per_sec": deliveries_per_sec, "setups_per_sec": 0.0},
            "errors": {},
            "connections": {"opened": 2, "failed": 0, "open_at_end": 2},
            "server": {"pids": [1], "cpu_secs": 1.0, "cores": 0.1, "cpu_us_per_op": null,
                "rss_kib_start": 0, "rss_kib_end": 1024, "hwm_kib": 1024},
            "loadgen": null,
            "appended": null,
            "check": chat_loadtest::Checker::new().check(),
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ratios_are_ours_over_the_peer_with_median_and_range() {
        let ours = [
            report(100, 1000.0, 5),
            report(200, 3000.0, 5),
            report(300, 2000.0, 5),
        ];
        let peer = [
            report(400, 100.0, 0),
            report(400, 100.0, 0),
            report(400, 100.0, 0),
        ];
        let text = summary(&ours, &peer, "ours", "peer");
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        let p50 = line("delivery p50");
        assert!(p50.contains(" 0.500 "), "{p50}");
        assert!(p50.contains("0.250-0.750"), "{p50}");
        let d = line("deliveries/s");
        assert!(d.contains(" 20.0 "), "{d}");
        // Ours has acks (twice its deliveries); the peer's accepted are its deliveries.
        let acc = line("accepted/s");
        assert!(acc.contains(" 40.0 "), "{acc}");
        // 1 s of CPU over 10 s at 100 deliveries/s: 1000 us each for the peer.
        let cpu = line("server cpu us/delivery");
        assert!(cpu.contains(" 1000 "), "{cpu}");
        assert!(text.contains("ours: PASS, PASS, PASS"), "{text}");
    }
}
