//! Scenario files: what to run, at what scale, for how long.
//!
//! A scenario is a small TOML file (see `loadtest/scenarios/`). Unknown fields are refused, and
//! [`Scenario::validate`] refuses a field that does not apply to the scenario's kind, so that
//! a typo or a misplaced knob fails loudly instead of silently measuring something else.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shapes of load this version knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// Latency: pairs of users take turns, one message in flight per pair, on an open-loop
    /// schedule at a fixed total rate.
    DmPingpong,
    /// Throughput: in each pair one user (or both, `bidirectional`) keeps `window` sends in
    /// flight, as fast as the server acknowledges them (or at `rate` when it is not 0).
    DmFlood,
    /// Set-up cost: register, log in and connect `users` users, at most `window` at a time,
    /// started at `rate` per second (0: as fast as the window allows).
    ConnectStorm,
    /// Fan-out: one group of all `users`, each with one connection; `senders` of them post at
    /// `rate` messages/s in all (each with at most `window` in flight), and every other member
    /// must be pushed every message.
    GroupFanout,
    /// Memory per connection: register and log in `users` users, then open one WebSocket each
    /// (`window` at a time, started at `rate`/s, 0: as fast as the window allows), let them
    /// settle `warmup_secs` and hold them idle `duration_secs`.
    IdleConnections,
    /// One to many: `senders` users each broadcast to every other user (one direct message
    /// per target) at `rate` broadcasts/s in all, at most `window` in flight each.
    Broadcast,
    /// Reconnects: every connection drops at once and every user reconnects (resuming its
    /// event stream), `window` at a time (started at `rate`/s; 0: as fast as the window
    /// allows), storm after storm until the window ends.
    ReconnectStorm,
    /// Scrolling back: pairs whose conversations hold `prefill` messages; every user pages
    /// backwards through its conversation (`page_size` a page) at `rate` pages/s in all, at
    /// most `window` in flight each.
    HistoryPaging,
}

impl ScenarioKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::DmPingpong => "dm-pingpong",
            ScenarioKind::DmFlood => "dm-flood",
            ScenarioKind::ConnectStorm => "connect-storm",
            ScenarioKind::GroupFanout => "group-fanout",
            ScenarioKind::IdleConnections => "idle-connections",
            ScenarioKind::Broadcast => "broadcast",
            ScenarioKind::ReconnectStorm => "reconnect-storm",
            ScenarioKind::HistoryPaging => "history-paging",
        }
    }
}

/// One scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports; the file name when omitted.
    #[serde(default)]
    pub name: String,
    pub kind: ScenarioKind,
    /// How many users take part. The direct scenarios pair them up, so it must be even.
    pub users: u32,
    /// Operations started per second, all users together: messages for the direct scenarios,
    /// user set-ups for `connect-storm`. 0 means "as fast as the window allows" and is refused
    /// for `dm-pingpong`, whose point is a fixed schedule.
    pub rate: f64,
    /// How long the measured phase lasts, after the warm-up.
    pub duration_secs: f64,
    /// How long the load runs before anything is recorded in the histograms.
    #[serde(default)]
    pub warmup_secs: f64,
    /// `dm-flood`: sends in flight per sender. `connect-storm`: user set-ups in flight.
    #[serde(default)]
    pub window: Option<u32>,
    /// `dm-flood`: both users of a pair send, not only the first.
    #[serde(default)]
    pub bidirectional: bool,
    /// Size of each message body in bytes (16 to 16384).
    #[serde(default = "default_body_bytes")]
    pub body_bytes: usize,
    /// After the last send the run waits for every push it is owed; it gives up when none
    /// has arrived for this long (at most 120 s in all), and the missing ones are reported.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: f64,
    /// Users registered, logged in and connected at a time while setting up the direct
    /// scenarios (registration hashes a password: it is deliberately slow).
    #[serde(default = "default_setup_concurrency")]
    pub setup_concurrency: u32,
    /// `group-fanout`, `broadcast`: how many users send (spread evenly over the users).
    #[serde(default)]
    pub senders: Option<u32>,
    /// `history-paging`: messages written into each conversation before the load.
    #[serde(default)]
    pub prefill: Option<u64>,
    /// `history-paging`: messages asked for per page (1 to 200).
    #[serde(default)]
    pub page_size: Option<u32>,
}

fn default_body_bytes() -> usize {
    64
}
fn default_drain_secs() -> f64 {
    5.0
}
fn default_setup_concurrency() -> u32 {
    16
}

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario file {path} is not a valid scenario: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {name:?}: {message}")]
    Invalid { name: String, message: String },
}

/// The largest scale one load generator process is meant to drive.
pub const MAX_USERS: u32 = 100_000;
/// The most targets one broadcast may name (the server's default `max_broadcast_targets`).
pub const MAX_BROADCAST_TARGETS: u32 = 10_000;
/// The longest phase a scenario may ask for, so that every run ends by itself.
pub const MAX_PHASE_SECS: f64 = 3600.0;

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        let default_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Scenario::from_toml(&text, &shown, &default_name)
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        default_name: &str,
    ) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        if scenario.name.is_empty() {
            scenario.name = if default_name.is_empty() {
                scenario.kind.as_str().to_owned()
            } else {
                default_name.to_owned()
            };
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks the values and that every field given applies to this kind.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |message: String| {
            Err(ScenarioError::Invalid {
                name: self.name.clone(),
                message,
            })
        };
        let dm = matches!(
            self.kind,
            ScenarioKind::DmPingpong | ScenarioKind::DmFlood | ScenarioKind::HistoryPaging
        );
        if self.users == 0 || self.users > MAX_USERS {
            return bad(format!(
                "users must be 1 to {MAX_USERS}, not {}",
                self.users
            ));
        }
        if dm && (self.users < 2 || self.users % 2 == 1) {
            return bad(format!(
                "users must be even and at least 2 for {} (users are paired), not {}",
                self.kind.as_str(),
                self.users
            ));
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return bad(format!("rate must be 0 or positive, not {}", self.rate));
        }
        if self.kind == ScenarioKind::DmPingpong && self.rate == 0.0 {
            return bad("dm-pingpong needs a rate above 0: it runs on a fixed schedule".into());
        }
        for (field, v) in [
            ("duration_secs", self.duration_secs),
            ("warmup_secs", self.warmup_secs),
            ("drain_secs", self.drain_secs),
        ] {
            if !v.is_finite() || !(0.0..=MAX_PHASE_SECS).contains(&v) {
                return bad(format!("{field} must be 0 to {MAX_PHASE_SECS}, not {v}"));
            }
        }
        if self.duration_secs <= 0.0 {
            return bad("duration_secs must be above 0".into());
        }
        let fanout = matches!(
            self.kind,
            ScenarioKind::GroupFanout | ScenarioKind::Broadcast
        );
        if fanout {
            let kind = self.kind.as_str();
            if self.users < 2 {
                return bad(format!("{kind} needs at least 2 users, not {}", self.users));
            }
            if self.kind == ScenarioKind::Broadcast && self.users > MAX_BROADCAST_TARGETS + 1 {
                return bad(format!(
                    "broadcast goes to every other user, at most {MAX_BROADCAST_TARGETS}: \
                     users must be at most {}",
                    MAX_BROADCAST_TARGETS + 1
                ));
            }
            if self.rate == 0.0 {
                return bad(format!(
                    "{kind} needs a rate above 0: it runs on a fixed schedule"
                ));
            }
            match self.senders {
                None => return bad(format!("{kind} needs senders")),
                Some(n) if n == 0 || n > self.users => {
                    return bad(format!(
                        "senders must be 1 to users ({}), not {n}",
                        self.users
                    ))
                }
                Some(_) => {}
            }
        } else if self.senders.is_some() {
            return bad("senders applies to group-fanout and broadcast only".into());
        }
        if self.kind == ScenarioKind::HistoryPaging {
            match self.prefill {
                None => return bad("history-paging needs prefill".into()),
                Some(n) if n == 0 || n > 1_000_000 => {
                    return bad(format!("prefill must be 1 to 1000000, not {n}"))
                }
                Some(_) => {}
            }
            if let Some(p) = self.page_size {
                if p == 0 || p > 200 {
                    return bad(format!("page_size must be 1 to 200, not {p}"));
                }
            }
            if self.rate == 0.0 {
                return bad(
                    "history-paging needs a rate above 0: it runs on a fixed schedule".into(),
                );
            }
        } else if self.prefill.is_some() || self.page_size.is_some() {
            return bad("prefill and page_size apply to history-paging only".into());
        }
        match (self.kind, self.window) {
            (ScenarioKind::DmPingpong, Some(_)) => {
                return bad(
                    "window does not apply to dm-pingpong (one message in flight per pair)".into(),
                )
            }
            (
                ScenarioKind::DmFlood
                | ScenarioKind::ConnectStorm
                | ScenarioKind::GroupFanout
                | ScenarioKind::IdleConnections
                | ScenarioKind::Broadcast
                | ScenarioKind::ReconnectStorm
                | ScenarioKind::HistoryPaging,
                None,
            ) => return bad(format!("{} needs a window", self.kind.as_str())),
            (_, Some(w)) if w == 0 || w > 65_536 => {
                return bad(format!("window must be 1 to 65536, not {w}"))
            }
            _ => {}
        }
        if self.bidirectional && self.kind != ScenarioKind::DmFlood {
            return bad("bidirectional applies to dm-flood only".into());
        }
        if !(16..=16_384).contains(&self.body_bytes) {
            return bad(format!(
                "body_bytes must be 16 to 16384, not {}",
                self.body_bytes
            ));
        }
        if self.setup_concurrency == 0 || self.setup_concurrency > 1024 {
            return bad(format!(
                "setup_concurrency must be 1 to 1024, not {}",
                self.setup_concurrency
            ));
        }
        Ok(())
    }

    /// Number of pairs in the direct scenarios.
    pub fn pairs(&self) -> usize {
        (self.users / 2) as usize
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain_secs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml(text, "test.toml", "test")
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut kinds = Vec::new();
        for name in [
            "dm-pingpong",
            "dm-flood",
            "connect-storm",
            "group-fanout-100",
            "group-fanout-1k",
            "group-fanout-10k",
            "idle-connections",
            "broadcast",
            "reconnect-storm",
            "history-paging",
        ] {
            let s = Scenario::from_file(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(s.name, name);
            kinds.push(s.kind);
        }
        assert_eq!(
            kinds,
            [
                ScenarioKind::DmPingpong,
                ScenarioKind::DmFlood,
                ScenarioKind::ConnectStorm,
                ScenarioKind::GroupFanout,
                ScenarioKind::GroupFanout,
                ScenarioKind::GroupFanout,
                ScenarioKind::IdleConnections,
                ScenarioKind::Broadcast,
                ScenarioKind::ReconnectStorm,
                ScenarioKind::HistoryPaging,
            ]
        );
        // Every file in the directory parses (the CI suite validates them all too).
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::from_file(&path).unwrap();
            }
        }
    }

    #[test]
    fn group_fanout_needs_senders_a_rate_and_a_window() {
        let ok = "kind = \"group-fanout\"\nusers = 10\nrate = 5\nduration_secs = 1\n\
                  window = 8\nsenders = 2\n";
        assert_eq!(parse(ok).unwrap().senders, Some(2));
        for (bad, why) in [
            (ok.replace("senders = 2", "senders = 11"), "senders must be"),
            (ok.replace("senders = 2\n", ""), "needs senders"),
            (ok.replace("rate = 5", "rate = 0"), "rate above 0"),
            (ok.replace("window = 8\n", ""), "needs a window"),
            (ok.replace("users = 10", "users = 1"), "at least 2"),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let err = parse(
            "kind = \"dm-flood\"\nusers = 2\nrate = 0\nduration_secs = 1\n\
                         window = 4\nsenders = 1\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("group-fanout and broadcast only"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_name() {
        let err = parse(
            "kind = \"dm-flood\"\nusers = 2\nrate = 0\nduration_secs = 1\nwindow = 4\nwindw = 8\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("windw"), "{err}");
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let err =
            parse("kind = \"dm-storm\"\nusers = 2\nrate = 1\nduration_secs = 1\n").unwrap_err();
        assert!(err.to_string().contains("dm-storm"), "{err}");
    }

    #[test]
    fn fields_that_do_not_apply_are_refused() {
        let err =
            parse("kind = \"dm-pingpong\"\nusers = 2\nrate = 10\nduration_secs = 1\nwindow = 4\n")
                .unwrap_err();
        assert!(err.to_string().contains("window does not apply"), "{err}");
        let err =
            parse("kind = \"dm-pingpong\"\nusers = 2\nrate = 0\nduration_secs = 1\n").unwrap_err();
        assert!(err.to_string().contains("rate above 0"), "{err}");
        let err =
            parse("kind = \"dm-flood\"\nusers = 3\nrate = 0\nduration_secs = 1\nwindow = 4\n")
                .unwrap_err();
        assert!(err.to_string().contains("even"), "{err}");
        let err = parse("kind = \"connect-storm\"\nusers = 3\nrate = 0\nduration_secs = 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("needs a window"), "{err}");
    }

    #[test]
    fn history_paging_needs_a_prefill_and_pairs() {
        let ok = "kind = \"history-paging\"\nusers = 4\nrate = 50\nduration_secs = 1\n\
                  window = 2\nprefill = 100\n";
        assert_eq!(parse(ok).unwrap().prefill, Some(100));
        for (bad, why) in [
            (ok.replace("prefill = 100\n", ""), "needs prefill"),
            (ok.replace("users = 4", "users = 3"), "even"),
            (format!("{ok}page_size = 500\n"), "page_size must be"),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let err = parse(
            "kind = \"dm-flood\"\nusers = 2\nrate = 0\nduration_secs = 1\n\
                         window = 4\nprefill = 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("history-paging only"), "{err}");
    }

    #[test]
    fn the_name_defaults_to_the_file_stem() {
        let s =
            parse("kind = \"connect-storm\"\nusers = 3\nrate = 0\nduration_secs = 1\nwindow = 2\n")
                .unwrap();
        assert_eq!(s.name, "test");
        assert_eq!(s.body_bytes, 64);
    }
}
