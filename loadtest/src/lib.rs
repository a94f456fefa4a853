//! chat-loadtest: load scenarios, metrics, reports and a correctness oracle, all over the
//! public protocol.
//!
//! Owns the scenario files and their parsing ([`scenario`]), the drivers that run them (direct
//! message ping-pong and flood, connect storm, group fan-out, broadcast, history paging, idle
//! connections, reconnect storm, `mixed` (a day of Zipf-sized conversations, bursts, readers
//! and writers), `search` (message, people and conversation search, each unique word checked
//! to find exactly its message) and `login-storm` (logins/s with pre-registered users)), the
//! helpers they share (`common`: sign-up and connect, the push pump into the checker, the
//! open-loop scheduler, the drain), the spreading of connections over several 127.0.0.x
//! source addresses (`source_addrs`, [`setup::Targets::with_sources`]), the measurements (HDR latency histograms from the intended
//! send time, throughput, a per-second timeline, errors by stable code, server CPU and memory
//! from `/proc`, the servers' own `/metrics` counters), the reports (text, JSON, SVG charts,
//! side-by-side comparison, ratios against the ceiling), the ceiling itself ([`relay`]: a bare
//! WebSocket relay run in-process by `calibrate`) and the history checker ([`checker`]) that
//! judges every run against the delivery contract of DESIGN.md section 4.
//!
//! Must not depend on any server crate (`chat-storage`, `chat-cluster`, `chat-actors`,
//! `chat-node`): it sees the cluster only through `chat-client` and `chat-types`, exactly as
//! any other client does, so that what it measures and checks is what users get. It sends
//! traffic only to loopback addresses, and every loop it runs is bounded in count and time.

mod broadcast;
pub mod chart;
pub mod checker;
mod common;
mod dm;
mod group;
mod history;
mod idle;
mod login;
pub mod metrics;
mod mixed;
pub mod pace;
mod reconnect;
pub mod relay;
pub mod report;
mod run;
pub mod scenario;
pub mod scrape;
mod search;
pub mod setup;
mod storm;
pub mod sysstat;

pub use checker::{CheckReport, Checker, Violation, ViolationCounts};
pub use group::Fanout;
pub use relay::Relay;
pub use report::{compare, Ceiling, Report};
pub use run::{run, RunConfig};
pub use scenario::{Scenario, ScenarioKind};
