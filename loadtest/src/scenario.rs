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
    /// A realistic day: conversations of Zipf-distributed sizes (direct ones and groups of 3
    /// to `max_members`), messages at `rate`/s in all with bursts (at most `window` in
    /// flight), each in a conversation drawn by Zipf activity from a writer among its members;
    /// readers page history and mark read at `read_rate`/s. Parameters in `[mixed]`.
    Mixed,
    /// Search: pairs whose conversations hold `prefill` messages of a vocabulary, each with a
    /// unique planted word; once the index caught up, queries at `rate`/s in all (at most
    /// `window` in flight), each unique word checked to find exactly its message. Parameters
    /// in `[search]`.
    Search,
    /// Logins: `users` users registered in the (untimed) set-up log in over and over at
    /// `rate` logins/s in all (0: as fast as `window` logins in flight allow), each optionally
    /// followed by a WebSocket connect. Parameters in `[login]`.
    LoginStorm,
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
            ScenarioKind::Mixed => "mixed",
            ScenarioKind::Search => "search",
            ScenarioKind::LoginStorm => "login-storm",
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
    /// Operations started per second, all users together: messages for the direct scenarios
    /// and `mixed` (outside bursts), user set-ups for `connect-storm`, queries for `search`,
    /// logins for `login-storm`. 0 means "as fast as the window allows" and is refused for the
    /// kinds whose point is a fixed schedule (`dm-pingpong`, `mixed`, `search`, ...).
    pub rate: f64,
    /// How long the measured phase lasts, after the warm-up.
    pub duration_secs: f64,
    /// How long the load runs before anything is recorded in the histograms.
    #[serde(default)]
    pub warmup_secs: f64,
    /// `dm-flood`: sends in flight per sender. `connect-storm`: user set-ups in flight.
    /// `mixed`: sends in flight in all (and reads in flight in all). `search`: queries in
    /// flight in all. `login-storm`: logins in flight in all.
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
    /// Spread the users' sockets over the source addresses 127.0.0.1 to 127.0.0.<n> (1 to
    /// 254), so that one machine can open more than ~28k connections to one node. Only for
    /// targets given as IPv4 loopback addresses. Absent: the system picks the source.
    #[serde(default)]
    pub source_addrs: Option<u32>,
    /// `mixed`: the shape of the day.
    #[serde(default)]
    pub mixed: Option<MixedParams>,
    /// `search`: the corpus and the query mix.
    #[serde(default)]
    pub search: Option<SearchParams>,
    /// `login-storm`: what follows each login.
    #[serde(default)]
    pub login: Option<LoginParams>,
    /// `reconnect-storm`: messages sent to the storming users while they come and go.
    #[serde(default)]
    pub reconnect: Option<ReconnectParams>,
}

/// The `[mixed]` table of a `mixed` scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedParams {
    /// How many conversations the users share.
    pub conversations: u32,
    /// The largest conversation: sizes run from 2 (a direct conversation) to this.
    pub max_members: u32,
    /// Zipf exponent of the sizes: size `k` has weight `1 / (k - 1)^s`, so most
    /// conversations are direct and a few are large groups.
    #[serde(default = "default_size_zipf")]
    pub size_zipf: f64,
    /// Zipf exponent of the conversations' activity: conversation of rank `r` (a random
    /// order) gets a share `1 / r^s` of the messages (0: all alike).
    #[serde(default = "default_activity_zipf")]
    pub activity_zipf: f64,
    /// How many users send (the first of a random order); all when absent.
    #[serde(default)]
    pub writers: Option<u32>,
    /// How many users read (page history and mark read); none when absent.
    #[serde(default)]
    pub readers: Option<u32>,
    /// Reads per second, all readers together: one read is the latest page of one of the
    /// reader's conversations, the page before it, and a mark-read up to the latest message.
    #[serde(default)]
    pub read_rate: f64,
    /// Messages asked for per history page (1 to 200).
    #[serde(default = "default_mixed_page")]
    pub page_size: u32,
    /// During a burst the message rate is `rate * burst_factor` (1 to 100; 1: no bursts).
    #[serde(default = "default_burst_factor")]
    pub burst_factor: f64,
    /// A burst of `burst_secs` starts every `burst_period_secs` (from the start of the load).
    #[serde(default)]
    pub burst_period_secs: f64,
    #[serde(default)]
    pub burst_secs: f64,
    /// Seed of every random choice (sizes, members, activity, senders), so that runs repeat.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// The `[search]` table of a `search` scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Messages written before the queries, spread over the pairs (checked, not measured).
    pub prefill: u64,
    /// Words of the generated vocabulary the bodies are drawn from (Zipf, s = 1).
    #[serde(default = "default_vocabulary")]
    pub vocabulary: u32,
    /// Vocabulary words per message (a unique word is planted in each besides).
    #[serde(default = "default_words_per_message")]
    pub words_per_message: u32,
    /// Shares of the queries (the rest are vocabulary queries of one or two words): for one
    /// message's unique word (checked: exactly that message), for a user by name (checked:
    /// that user is among the people found), for a conversation by the other member's name
    /// (checked: the conversation is found).
    #[serde(default = "default_unique_share")]
    pub unique_share: f64,
    #[serde(default)]
    pub users_share: f64,
    #[serde(default)]
    pub conversations_share: f64,
    /// Hits asked for per message query (1 to 100).
    #[serde(default = "default_search_limit")]
    pub limit: u32,
    /// How long to wait for the index to catch up with the prefill.
    #[serde(default = "default_index_wait")]
    pub index_wait_secs: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// The `[login]` table of a `login-storm` scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginParams {
    /// Open a WebSocket (hello/welcome) with each new token, then close it.
    #[serde(default)]
    pub connect: bool,
}

/// The `[reconnect]` table of a `reconnect-storm` scenario: traffic during the storms, so
/// that every reconnect has events to catch up on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectParams {
    /// How many of the users send instead of storming (the first ones). Each stays
    /// connected and writes, round-robin, to its share of the storming users (one direct
    /// conversation each).
    pub senders: u32,
    /// Messages sent per second, all senders together, on an open-loop schedule.
    pub message_rate: f64,
    /// Sends in flight per sender.
    #[serde(default = "default_send_window")]
    pub send_window: u32,
}

fn default_send_window() -> u32 {
    16
}

fn default_size_zipf() -> f64 {
    1.5
}
fn default_activity_zipf() -> f64 {
    1.0
}
fn default_mixed_page() -> u32 {
    50
}
fn default_burst_factor() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1
}
fn default_vocabulary() -> u32 {
    2000
}
fn default_words_per_message() -> u32 {
    8
}
fn default_unique_share() -> f64 {
    0.5
}
fn default_search_limit() -> u32 {
    20
}
fn default_index_wait() -> f64 {
    60.0
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
/// The lowest rate above 0 (one operation per 1000 s): slower schedules are refused rather
/// than turned into intervals longer than any run.
pub const MIN_RATE: f64 = 0.001;
/// The most scheduled operations one run may plan ahead (`mixed` keeps its schedule).
pub const MAX_PLANNED_OPS: f64 = 20_000_000.0;

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
            ScenarioKind::DmPingpong
                | ScenarioKind::DmFlood
                | ScenarioKind::HistoryPaging
                | ScenarioKind::Search
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
        if self.rate > 0.0 && self.rate < MIN_RATE {
            return bad(format!(
                "rate must be 0 or at least {MIN_RATE} (one per 1000 s), not {}",
                self.rate
            ));
        }
        if matches!(
            self.kind,
            ScenarioKind::DmPingpong | ScenarioKind::Mixed | ScenarioKind::Search
        ) && self.rate == 0.0
        {
            return bad(format!(
                "{} needs a rate above 0: it runs on a fixed schedule",
                self.kind.as_str()
            ));
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
                | ScenarioKind::HistoryPaging
                | ScenarioKind::Mixed
                | ScenarioKind::Search
                | ScenarioKind::LoginStorm,
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
        if let Some(n) = self.source_addrs {
            if n == 0 || n > crate::setup::MAX_SOURCE_ADDRS {
                return bad(format!(
                    "source_addrs must be 1 to {}, not {n}",
                    crate::setup::MAX_SOURCE_ADDRS
                ));
            }
        }
        self.validate_tables()
            .map_err(|message| ScenarioError::Invalid {
                name: self.name.clone(),
                message,
            })
    }

    /// Each kind's own table is there when it must be, valid, and absent otherwise.
    fn validate_tables(&self) -> Result<(), String> {
        let kind = self.kind.as_str();
        for (table, given, owner) in [
            ("mixed", self.mixed.is_some(), ScenarioKind::Mixed),
            ("search", self.search.is_some(), ScenarioKind::Search),
            ("login", self.login.is_some(), ScenarioKind::LoginStorm),
            (
                "reconnect",
                self.reconnect.is_some(),
                ScenarioKind::ReconnectStorm,
            ),
        ] {
            if given && self.kind != owner {
                return Err(format!(
                    "the [{table}] table applies to {} only, not {kind}",
                    owner.as_str()
                ));
            }
        }
        let in_range = |field: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{field} must be {lo} to {hi}, not {v}"))
            }
        };
        match self.kind {
            ScenarioKind::Mixed => {
                let Some(m) = &self.mixed else {
                    return Err("mixed needs a [mixed] table (conversations, max_members)".into());
                };
                if m.conversations == 0 || m.conversations > MAX_USERS {
                    return Err(format!(
                        "mixed.conversations must be 1 to {MAX_USERS}, not {}",
                        m.conversations
                    ));
                }
                if m.max_members < 2 || m.max_members > self.users {
                    return Err(format!(
                        "mixed.max_members must be 2 to users ({}), not {}",
                        self.users, m.max_members
                    ));
                }
                in_range("mixed.size_zipf", m.size_zipf, 0.0, 10.0)?;
                in_range("mixed.activity_zipf", m.activity_zipf, 0.0, 10.0)?;
                for (field, v) in [("mixed.writers", m.writers), ("mixed.readers", m.readers)] {
                    if let Some(n) = v {
                        if n > self.users {
                            return Err(format!(
                                "{field} must be 0 to users ({}), not {n}",
                                self.users
                            ));
                        }
                    }
                }
                if m.writers == Some(0) {
                    return Err("mixed.writers must be at least 1".into());
                }
                in_range("mixed.read_rate", m.read_rate, 0.0, 1e6)?;
                if m.read_rate > 0.0 && m.read_rate < MIN_RATE {
                    return Err(format!(
                        "mixed.read_rate must be 0 or at least {MIN_RATE}, not {}",
                        m.read_rate
                    ));
                }
                if m.read_rate > 0.0 && m.readers.unwrap_or(0) == 0 {
                    return Err("mixed.read_rate needs mixed.readers above 0".into());
                }
                if m.page_size == 0 || m.page_size > 200 {
                    return Err(format!(
                        "mixed.page_size must be 1 to 200, not {}",
                        m.page_size
                    ));
                }
                in_range("mixed.burst_factor", m.burst_factor, 1.0, 100.0)?;
                in_range(
                    "mixed.burst_period_secs",
                    m.burst_period_secs,
                    0.0,
                    MAX_PHASE_SECS,
                )?;
                in_range("mixed.burst_secs", m.burst_secs, 0.0, MAX_PHASE_SECS)?;
                let bursts = m.burst_factor > 1.0;
                if bursts && !(m.burst_secs > 0.0 && m.burst_secs < m.burst_period_secs) {
                    return Err(format!(
                        "mixed.burst_factor {} needs 0 < burst_secs < burst_period_secs \
                         (not {} and {})",
                        m.burst_factor, m.burst_secs, m.burst_period_secs
                    ));
                }
                let planned = self.rate * m.burst_factor * (self.warmup_secs + self.duration_secs)
                    + m.read_rate * (self.warmup_secs + self.duration_secs);
                if planned > MAX_PLANNED_OPS {
                    return Err(format!(
                        "mixed plans about {planned:.0} operations, more than \
                         {MAX_PLANNED_OPS:.0}: lower the rate or the duration"
                    ));
                }
            }
            ScenarioKind::Search => {
                let Some(q) = &self.search else {
                    return Err("search needs a [search] table (prefill)".into());
                };
                if q.prefill == 0 || q.prefill > 1_000_000 {
                    return Err(format!(
                        "search.prefill must be 1 to 1000000, not {}",
                        q.prefill
                    ));
                }
                if q.vocabulary < 10 || q.vocabulary > 100_000 {
                    return Err(format!(
                        "search.vocabulary must be 10 to 100000, not {}",
                        q.vocabulary
                    ));
                }
                if q.words_per_message == 0 || q.words_per_message > 200 {
                    return Err(format!(
                        "search.words_per_message must be 1 to 200, not {}",
                        q.words_per_message
                    ));
                }
                in_range("search.unique_share", q.unique_share, 0.0, 1.0)?;
                in_range("search.users_share", q.users_share, 0.0, 1.0)?;
                in_range(
                    "search.conversations_share",
                    q.conversations_share,
                    0.0,
                    1.0,
                )?;
                let shares = q.unique_share + q.users_share + q.conversations_share;
                if shares > 1.0 + 1e-9 {
                    return Err(format!(
                        "search: unique_share + users_share + conversations_share must be at \
                         most 1, not {shares}"
                    ));
                }
                if q.limit == 0 || q.limit as usize > chat_types::search::MAX_SEARCH_PAGE {
                    return Err(format!(
                        "search.limit must be 1 to {}, not {}",
                        chat_types::search::MAX_SEARCH_PAGE,
                        q.limit
                    ));
                }
                in_range(
                    "search.index_wait_secs",
                    q.index_wait_secs,
                    0.1,
                    MAX_PHASE_SECS,
                )?;
            }
            ScenarioKind::ReconnectStorm => {
                let Some(r) = &self.reconnect else {
                    return Ok(());
                };
                if r.senders == 0 || r.senders > self.users / 2 {
                    return Err(format!(
                        "reconnect.senders must be 1 to half the users ({}), so that each \
                         sender writes to at least one storming user, not {}",
                        self.users / 2,
                        r.senders
                    ));
                }
                in_range("reconnect.message_rate", r.message_rate, MIN_RATE, 1e6)?;
                if r.send_window == 0 || r.send_window > 65_536 {
                    return Err(format!(
                        "reconnect.send_window must be 1 to 65536, not {}",
                        r.send_window
                    ));
                }
                let planned = r.message_rate * (self.warmup_secs + self.duration_secs);
                if planned > MAX_PLANNED_OPS {
                    return Err(format!(
                        "reconnect plans about {planned:.0} messages, more than \
                         {MAX_PLANNED_OPS:.0}: lower the message rate or the duration"
                    ));
                }
            }
            _ => {}
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
            "mixed",
            "search",
            "login-storm",
            "reconnect-catch-up",
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
                ScenarioKind::Mixed,
                ScenarioKind::Search,
                ScenarioKind::LoginStorm,
                ScenarioKind::ReconnectStorm,
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

    #[test]
    fn mixed_needs_its_table_and_sane_bursts() {
        let ok = "kind = \"mixed\"\nusers = 20\nrate = 50\nduration_secs = 1\nwindow = 8\n\
                  [mixed]\nconversations = 10\nmax_members = 5\nreaders = 2\nread_rate = 5\n\
                  burst_factor = 3\nburst_period_secs = 2\nburst_secs = 0.5\n";
        let m = parse(ok).unwrap().mixed.unwrap();
        assert_eq!((m.conversations, m.max_members, m.seed), (10, 5, 1));
        for (bad, why) in [
            (
                ok.replace("[mixed]\nconversations = 10\nmax_members = 5\nreaders = 2\nread_rate = 5\nburst_factor = 3\nburst_period_secs = 2\nburst_secs = 0.5\n", ""),
                "[mixed] table",
            ),
            (ok.replace("max_members = 5", "max_members = 21"), "max_members must be"),
            (ok.replace("max_members = 5", "max_members = 1"), "max_members must be"),
            (ok.replace("burst_secs = 0.5", "burst_secs = 2"), "burst_secs"),
            (ok.replace("burst_factor = 3", "burst_factor = 0.5"), "burst_factor"),
            (ok.replace("readers = 2", "readers = 0"), "read_rate needs"),
            (ok.replace("rate = 50", "rate = 0"), "rate above 0"),
            (ok.replace("window = 8\n", ""), "needs a window"),
            (ok.replace("conversations = 10", "conversations = 0"), "conversations"),
            (ok.replace("read_rate = 5", "read_rate = 1e-300"), "read_rate must be"),
            (ok.replace("rate = 50", "rate = 1e-300"), "at least 0.001"),
            (format!("{ok}sizes = 3\n"), "sizes"),
            (ok.replace("rate = 50", "rate = 1000000\nwarmup_secs = 100"), "operations"),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn search_and_login_tables_belong_to_their_kinds() {
        let ok = "kind = \"search\"\nusers = 4\nrate = 50\nduration_secs = 1\nwindow = 4\n\
                  [search]\nprefill = 100\n";
        let q = parse(ok).unwrap().search.unwrap();
        assert_eq!((q.prefill, q.vocabulary, q.limit), (100, 2000, 20));
        for (bad, why) in [
            (ok.replace("users = 4", "users = 5"), "even"),
            (ok.replace("prefill = 100", "prefill = 0"), "search.prefill"),
            (
                format!("{ok}unique_share = 0.8\nusers_share = 0.3\n"),
                "at most 1",
            ),
            (format!("{ok}limit = 101\n"), "search.limit"),
            (
                ok.replace("[search]\nprefill = 100\n", ""),
                "[search] table",
            ),
            (
                format!("{ok}[login]\nconnect = true\n"),
                "applies to login-storm only",
            ),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let login = "kind = \"login-storm\"\nusers = 3\nrate = 0\nduration_secs = 1\nwindow = 4\n";
        assert!(parse(login).unwrap().login.is_none());
        assert!(parse(&format!("{login}[login]\nconnect = true\n"))
            .unwrap()
            .login
            .is_some_and(|l| l.connect));
        let err = parse(&format!("{login}[login]\nconect = true\n")).unwrap_err();
        assert!(err.to_string().contains("conect"), "{err}");
        let err = parse(&format!(
            "{login}[mixed]\nconversations = 1\nmax_members = 2\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("applies to mixed only"), "{err}");
    }

    #[test]
    fn reconnect_traffic_is_checked() {
        let ok = "kind = \"reconnect-storm\"\nusers = 10\nrate = 0\nduration_secs = 1\n\
                  window = 4\n";
        assert_eq!(parse(ok).unwrap().reconnect, None);
        let with = |table: &str| parse(&format!("{ok}[reconnect]\n{table}"));
        let r = with("senders = 2\nmessage_rate = 50\n")
            .unwrap()
            .reconnect
            .unwrap();
        assert_eq!((r.senders, r.message_rate, r.send_window), (2, 50.0, 16));
        for (table, says) in [
            (
                "senders = 0\nmessage_rate = 50\n",
                "reconnect.senders must be",
            ),
            (
                "senders = 6\nmessage_rate = 50\n",
                "at least one storming user",
            ),
            (
                "senders = 2\nmessage_rate = 0\n",
                "reconnect.message_rate must be",
            ),
            (
                "senders = 2\nmessage_rate = 5\nsend_window = 0\n",
                "reconnect.send_window must be",
            ),
            ("senders = 2\n", "missing field `message_rate`"),
        ] {
            let err = with(table).unwrap_err();
            assert!(err.to_string().contains(says), "{table}: {err}");
        }
        let err = parse(
            "kind = \"connect-storm\"\nusers = 3\nrate = 0\nduration_secs = 1\nwindow = 2\n\
             [reconnect]\nsenders = 1\nmessage_rate = 1\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("applies to reconnect-storm only"),
            "{err}"
        );
    }

    #[test]
    fn source_addrs_are_checked() {
        let ok = "kind = \"connect-storm\"\nusers = 3\nrate = 0\nduration_secs = 1\nwindow = 2\n";
        assert_eq!(parse(ok).unwrap().source_addrs, None);
        assert_eq!(
            parse(&format!("{ok}source_addrs = 8\n"))
                .unwrap()
                .source_addrs,
            Some(8)
        );
        for n in [0, 255] {
            let err = parse(&format!("{ok}source_addrs = {n}\n")).unwrap_err();
            assert!(err.to_string().contains("source_addrs must be"), "{err}");
        }
    }
}
