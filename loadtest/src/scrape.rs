//! Reads counters from each target's `GET /metrics` (Prometheus text), before and after a run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The counter that says how many messages the servers appended.
pub const APPENDED: &str = "chat_messages_appended_total";

/// A counter summed over every target, before and after the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterDelta {
    pub name: String,
    pub before: f64,
    pub after: f64,
    pub delta: f64,
}

/// Scrapes `name` from every target and sums it; `None` if any target does not answer.
pub async fn scrape_sum(targets: &[String], name: &str) -> Option<f64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let mut total = 0.0;
    for t in targets {
        let url = format!("{}/metrics", t.trim_end_matches('/'));
        let text = client.get(url).send().await.ok()?.text().await.ok()?;
        total += counter_value(&text, name)?;
    }
    Some(total)
}

/// The sum of the samples of `name` (with any labels) in a Prometheus text page.
pub fn counter_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue; // a longer name that starts with this one
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_counter_is_found_by_its_exact_name() {
        let text =
            "# HELP chat_messages_appended_total x\n# TYPE chat_messages_appended_total counter\n\
                    chat_messages_appended_total 42\nchat_messages_appended_total_extra 7\n\
                    other{a=\"b\"} 1\n";
        assert_eq!(counter_value(text, APPENDED), Some(42.0));
        assert_eq!(counter_value(text, "other"), Some(1.0));
        assert_eq!(counter_value(text, "missing"), None);
    }
}
