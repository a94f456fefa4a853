//! chat-loadtest-xmpp: the peer benchmark's load generator. It runs chat-loadtest's direct
//! scenarios (`dm-pingpong`, `dm-flood`) and its group fan-out (`group-fanout`, through a
//! multi-user chat room, XEP-0045), from the same scenario files, against an XMPP server over
//! WebSocket (RFC 7395) — ejabberd in `scripts/bench-ejabberd` — and writes the same JSON
//! report, so that `chat-loadtest compare` puts a chat-node run and an XMPP run side by side.
//!
//! `run` executes a scenario (exit 0 on PASS, 2 when a message was lost, duplicated or
//! reordered, 1 when the run failed); `ratios` prints interleaved rounds of two servers as
//! ratios with their median and range. See docs/peer-ejabberd.md.

mod drive;
mod muc;
mod ratios;
mod xml;
mod xmpp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chat_loadtest::{Report, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs chat-loadtest's direct and group fan-out scenarios against an XMPP server \
             over WebSocket"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a dm-pingpong, dm-flood or group-fanout scenario against an XMPP server and
    /// reports.
    Run {
        /// Scenario file (loadtest/scenarios/dm-*.toml, group-fanout-*.toml).
        #[arg(long)]
        scenario: PathBuf,
        /// The server's XMPP-over-WebSocket endpoint, e.g. ws://127.0.0.1:5280/ws (loopback).
        #[arg(long)]
        target: String,
        /// The XMPP domain users are registered in.
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// group-fanout: the multi-user chat service the room is made on (default:
        /// conference.<domain>).
        #[arg(long)]
        muc_service: Option<String>,
        /// Write the report as JSON (chat-loadtest's format) to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A server process to sample CPU and memory of, with its descendants (repeat for
        /// several; summed). For ejabberd, beam.smp's pid.
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
        /// Override the scenario's measured duration.
        #[arg(long)]
        duration_secs: Option<f64>,
        /// Override the scenario's warm-up.
        #[arg(long)]
        warmup_secs: Option<f64>,
        /// Override the scenario's number of users.
        #[arg(long)]
        users: Option<u32>,
        /// Override the scenario's rate (per second, all users together; 0 = unpaced).
        #[arg(long)]
        rate: Option<f64>,
        /// Override the scenario's window.
        #[arg(long)]
        window: Option<u32>,
    },
    /// Interleaved rounds side by side: `--ours` report i against `--peer` report i, each
    /// figure as ours / peer, with the median and range over the rounds.
    Ratios {
        #[arg(long, required = true)]
        ours: Vec<PathBuf>,
        #[arg(long, required = true)]
        peer: Vec<PathBuf>,
        #[arg(long, default_value = "chat-node")]
        ours_name: String,
        #[arg(long, default_value = "ejabberd")]
        peer_name: String,
    },
}

fn main() -> ExitCode {
    match real_main(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-loadtest-xmpp: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run {
            scenario,
            target,
            domain,
            muc_service,
            json,
            server_pids,
            quiet,
            duration_secs,
            warmup_secs,
            users,
            rate,
            window,
        } => {
            let mut s = Scenario::from_file(&scenario)?;
            if let Some(v) = duration_secs {
                s.duration_secs = v;
            }
            if let Some(v) = warmup_secs {
                s.warmup_secs = v;
            }
            if let Some(v) = users {
                s.users = v;
            }
            if let Some(v) = rate {
                s.rate = v;
            }
            if let Some(v) = window {
                s.window = Some(v);
            }
            s.validate()?;
            if let Some(service) = &muc_service {
                muc::check_service(service)?;
            }
            let group = s.kind == chat_loadtest::ScenarioKind::GroupFanout;
            let config = drive::Config {
                scenario: s,
                target,
                domain,
                muc_service,
                server_pids,
                progress: !quiet,
            };
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(drive::run(&config))?;
            print!("{}", report.to_text());
            if group {
                println!(
                    "note: the room reflects each message to its sender too; that echo is \
                     counted as the message's ack (send_ack, acks, server CPU per op) and not as \
                     a delivery; the verdict compares what each sender wrote with what every \
                     other member received (no archive to read back)."
                );
            } else {
                println!(
                    "note: XMPP messages have no server ack here (no XEP-0198), so acks are 0 \
                     and server CPU per op is per message delivered in the window; the verdict \
                     compares what was sent with what the other user received (no archive to \
                     read back)."
                );
            }
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Ratios {
            ours,
            peer,
            ours_name,
            peer_name,
        } => {
            if ours.len() != peer.len() {
                anyhow::bail!(
                    "{} reports of ours but {} of the peer: give one of each per round",
                    ours.len(),
                    peer.len()
                );
            }
            let ours = ours
                .iter()
                .map(|p| read_report(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let peer = peer
                .iter()
                .map(|p| read_report(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", ratios::summary(&ours, &peer, &ours_name, &peer_name));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a chat-loadtest JSON report", path.display()))?;
    if report.format != chat_loadtest::report::REPORT_FORMAT {
        anyhow::bail!(
            "{} has report format {}, this build reads {}",
            path.display(),
            report.format,
            chat_loadtest::report::REPORT_FORMAT
        );
    }
    Ok(report)
}
