//! A run's timeline as a hand-written SVG: latency percentiles per second (log scale) above,
//! throughput per second below, the measured window shaded. No dependencies: the chart is a
//! few polylines, axes and labels.

use std::fmt::Write;

use crate::metrics::TimelinePoint;
use crate::report::Report;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 76.0;
const PANEL: f64 = 230.0;
const GAP: f64 = 60.0;
const BOTTOM: f64 = 46.0;

const ACK: &str = "#1f77b4";
const DELIVERY: &str = "#ff7f0e";

/// One line of the chart.
struct Series<'a> {
    label: &'a str,
    color: &'a str,
    dashed: bool,
    values: Vec<Option<f64>>,
}

/// The chart of `report`'s timeline (an empty chart with a note when it has none).
pub fn svg(report: &Report) -> String {
    let points = &report.timeline;
    let height = TOP + 2.0 * PANEL + GAP + BOTTOM;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>"
    );
    let s = &report.scenario;
    let title = format!(
        "{} ({}): {} users, rate {}, {} s measured after {} s warm-up{}",
        s.name,
        s.kind.as_str(),
        s.users,
        if s.rate > 0.0 {
            format!("{}/s", s.rate)
        } else {
            "unpaced".into()
        },
        s.duration_secs,
        s.warmup_secs,
        ""
    );
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"40\" fill=\"#555\">{}</text>",
        escape(&format!(
            "{}{} | load average {} | {}",
            if report.relay {
                "the ceiling relay at "
            } else {
                ""
            },
            report.targets.join(" "),
            report
                .machine
                .loadavg_before
                .map_or("?".into(), |l| format!("{:.2}", l[0])),
            report
                .check
                .verdict_line()
                .split(" lost=")
                .next()
                .unwrap_or("")
        ))
    );
    if points.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{LEFT}\" y=\"{}\">no timeline in this report</text></svg>",
            TOP + 40.0
        );
        return out;
    }
    let secs = points.iter().map(|p| p.second).max().unwrap_or(0) as f64 + 1.0;
    let x_of = |t: f64| LEFT + (t / secs) * (WIDTH - LEFT - RIGHT);

    // The measured window, shaded in both panels.
    let (m0, m1) = (s.warmup_secs, s.warmup_secs + s.duration_secs);
    for top in [TOP, TOP + PANEL + GAP] {
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{PANEL}\" fill=\"#f0f4f8\"/>",
            x_of(m0),
            (x_of(m1.min(secs)) - x_of(m0)).max(0.0)
        );
    }

    let mid = |p: &TimelinePoint| p.second as f64 + 0.5;
    let lat = |f: fn(&TimelinePoint) -> Option<u64>| -> Vec<Option<f64>> {
        points
            .iter()
            .map(|p| f(p).map(|v| v.max(1) as f64))
            .collect()
    };
    let latency = vec![
        Series {
            label: "send->ack p50",
            color: ACK,
            dashed: false,
            values: lat(|p| p.ack_p50_us),
        },
        Series {
            label: "send->ack p99",
            color: ACK,
            dashed: true,
            values: lat(|p| p.ack_p99_us),
        },
        Series {
            label: "send->delivery p50",
            color: DELIVERY,
            dashed: false,
            values: lat(|p| p.delivery_p50_us),
        },
        Series {
            label: "send->delivery p99",
            color: DELIVERY,
            dashed: true,
            values: lat(|p| p.delivery_p99_us),
        },
    ];
    let throughput = vec![
        Series {
            label: "acks/s",
            color: ACK,
            dashed: false,
            values: points.iter().map(|p| Some(p.acks as f64)).collect(),
        },
        Series {
            label: "deliveries/s",
            color: DELIVERY,
            dashed: false,
            values: points.iter().map(|p| Some(p.deliveries as f64)).collect(),
        },
    ];
    let xs: Vec<f64> = points.iter().map(mid).collect();

    // Latency: log scale over whole powers of ten.
    let all: Vec<f64> = latency
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let (lo_exp, hi_exp) = if all.is_empty() {
        (1, 6)
    } else {
        let a = lo.log10().floor() as i32;
        let b = hi.log10().ceil() as i32;
        (a, b.max(a + 1))
    };
    let top = TOP;
    let y_lat = |v: f64| {
        let f = (v.log10() - f64::from(lo_exp)) / f64::from(hi_exp - lo_exp);
        top + PANEL - f * PANEL
    };
    frame(&mut out, top, "latency (from the intended send time)");
    for e in lo_exp..=hi_exp {
        let v = 10f64.powi(e);
        grid_line(&mut out, y_lat(v), &fmt_us(v));
    }
    for s in &latency {
        line(&mut out, &xs, &s.values, &x_of, &y_lat, s);
    }
    legend(&mut out, top, &latency);

    // Throughput: linear from 0. When deliveries outnumber acks tenfold (a fan-out), acks get
    // their own scale on the right.
    let top2 = TOP + PANEL + GAP;
    let max_of = |s: &Series<'_>| s.values.iter().flatten().copied().fold(0.0, f64::max);
    let (max_acks, max_deliveries) = (max_of(&throughput[0]), max_of(&throughput[1]));
    let split = max_acks > 0.0 && max_deliveries > 10.0 * max_acks;
    let max = if split {
        max_deliveries
    } else {
        max_acks.max(max_deliveries)
    };
    let scale = |max: f64| {
        let step = nice_step(max / 4.0);
        (step, (max / step).ceil().max(1.0) * step)
    };
    let (step, ymax) = scale(max);
    let y_tp = |v: f64| top2 + PANEL - (v / ymax) * PANEL;
    frame(&mut out, top2, "throughput (per second of arrival)");
    let mut v = 0.0;
    while v <= ymax + step / 2.0 {
        grid_line(&mut out, y_tp(v), &fmt_count(v));
        v += step;
    }
    if split {
        let (astep, amax) = scale(max_acks);
        let y_ack = |v: f64| top2 + PANEL - (v / amax) * PANEL;
        let mut v = 0.0;
        while v <= amax + astep / 2.0 {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{:.1}\" fill=\"{ACK}\">{}</text>",
                WIDTH - RIGHT + 4.0,
                y_ack(v) + 4.0,
                fmt_count(v)
            );
            v += astep;
        }
        line(
            &mut out,
            &xs,
            &throughput[0].values,
            &x_of,
            &y_ack,
            &throughput[0],
        );
        line(
            &mut out,
            &xs,
            &throughput[1].values,
            &x_of,
            &y_tp,
            &throughput[1],
        );
        let relabelled = [
            Series {
                label: "acks/s (right scale)",
                color: ACK,
                dashed: false,
                values: Vec::new(),
            },
            Series {
                label: "deliveries/s",
                color: DELIVERY,
                dashed: false,
                values: Vec::new(),
            },
        ];
        legend(&mut out, top2, &relabelled);
    } else {
        for s in &throughput {
            line(&mut out, &xs, &s.values, &x_of, &y_tp, s);
        }
        legend(&mut out, top2, &throughput);
    }

    // The time axis, under both panels.
    let xstep = nice_step(secs / 10.0).max(1.0);
    let mut t = 0.0;
    while t <= secs {
        let x = x_of(t);
        for base in [TOP + PANEL, top2 + PANEL] {
            let _ = writeln!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{base}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#333\"/>",
                base + 4.0
            );
            let _ = writeln!(
                out,
                "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
                base + 17.0
            );
        }
        t += xstep;
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">seconds since \
         the load started (shaded: the measured window)</text>",
        (LEFT + WIDTH - RIGHT) / 2.0,
        top2 + PANEL + 36.0
    );
    out.push_str("</svg>\n");
    out
}

fn frame(out: &mut String, top: f64, title: &str) {
    let w = WIDTH - LEFT - RIGHT;
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{w}\" height=\"{PANEL}\" fill=\"none\" \
         stroke=\"#333\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\" font-weight=\"bold\">{}</text>",
        top - 6.0,
        escape(title)
    );
}

fn grid_line(out: &mut String, y: f64, label: &str) {
    let x2 = WIDTH - RIGHT;
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#ccc\" \
         stroke-width=\"0.5\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        LEFT - 6.0,
        y + 4.0,
        escape(label)
    );
}

fn line(
    out: &mut String,
    xs: &[f64],
    values: &[Option<f64>],
    x_of: &dyn Fn(f64) -> f64,
    y_of: &dyn Fn(f64) -> f64,
    s: &Series<'_>,
) {
    // A gap (a second without events) breaks the line.
    let mut d = String::new();
    let mut pen_down = false;
    for (x, v) in xs.iter().zip(values) {
        match v {
            Some(v) => {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    x_of(*x),
                    y_of(*v)
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if d.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{}/>",
        d.trim_end(),
        s.color,
        if s.dashed {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        }
    );
}

fn legend(out: &mut String, top: f64, series: &[Series<'_>]) {
    let x = WIDTH - RIGHT + 46.0;
    for (i, s) in series.iter().enumerate() {
        let y = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{}/>",
            x + 22.0,
            s.color,
            if s.dashed {
                " stroke-dasharray=\"5,3\""
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            x + 27.0,
            y + 4.0,
            escape(s.label)
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} us")
    }
}

fn fmt_count(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1500.0), 2000.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(fmt_us(1000.0), "1 ms");
        assert_eq!(fmt_count(2500.0), "2.5k");
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
