//! chat-loadtest: drives scenarios against a cluster through the public protocol only.
//!
//! `run` executes a scenario and exits 2 when the checker finds a violation, 1 on any other
//! failure; `calibrate` runs it against the in-process ceiling relay (and then, given targets,
//! against them, in interleaved rounds); `compare` prints two JSON reports side by side;
//! `chart` draws a report's timeline as SVG; `validate` checks scenario files; `relay` serves
//! the ceiling relay alone for a while.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chat_loadtest::relay::RELAY_THREAD;
use chat_loadtest::{compare, run, Ceiling, Relay, Report, RunConfig, Scenario};
use clap::{Args as ClapArgs, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load tester and correctness oracle for the chat cluster"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What the command line may change in a scenario.
#[derive(ClapArgs, Debug, Clone)]
struct Overrides {
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
    /// Spread the connections over the source addresses 127.0.0.1 to 127.0.0.N (targets
    /// named by an IPv4 loopback address only), to open more than ~28k connections to a node.
    #[arg(long)]
    source_addrs: Option<u32>,
}

impl Overrides {
    fn load(&self, path: &Path) -> anyhow::Result<Scenario> {
        let mut s = Scenario::from_file(path)?;
        if let Some(v) = self.duration_secs {
            s.duration_secs = v;
        }
        if let Some(v) = self.warmup_secs {
            s.warmup_secs = v;
        }
        if let Some(v) = self.users {
            s.users = v;
        }
        if let Some(v) = self.rate {
            s.rate = v;
        }
        if let Some(v) = self.window {
            s.window = Some(v);
        }
        if let Some(v) = self.source_addrs {
            s.source_addrs = Some(v);
        }
        s.validate()?;
        Ok(s)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a scenario against one or more nodes and reports.
    Run {
        /// Scenario file (see loadtest/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// Base URL of a node, e.g. http://127.0.0.1:8080; repeat for several nodes (users
        /// are spread round-robin, so the two users of a pair are on different nodes).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw the run's latency and throughput over time as SVG to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// A JSON report of the same scenario on the ceiling relay (`calibrate --json`): the
        /// report then states this run's figures as ratios of the relay's.
        #[arg(long)]
        ceiling: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// A server process to sample CPU and memory of (repeat for several; summed).
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Runs a scenario against the bare WebSocket relay started inside this process (the
    /// ceiling of this machine); with --target, then against the targets too, in
    /// interleaved rounds, stating the targets' figures as ratios of the relay's.
    Calibrate {
        #[arg(long)]
        scenario: PathBuf,
        /// Nodes to run the same scenario against after each relay run.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Relay run, target run, relay run, ...: this many of each (ratios: median, min-max).
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// The report of the last target run (with its ceiling), or of the last relay run
        /// when there are no targets, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The last relay run's report as JSON (for `run --ceiling`).
        #[arg(long)]
        relay_json: Option<PathBuf>,
        /// The last run's chart as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Runtime threads of the relay (default: the number of CPUs).
        #[arg(long)]
        relay_threads: Option<usize>,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        #[arg(long)]
        quiet: bool,
    },
    /// Serves the ceiling relay alone (for measuring it as a separate process).
    Relay {
        /// Loopback address to listen on.
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: String,
        #[arg(long)]
        threads: Option<usize>,
        /// Stops after this long (at most a day).
        #[arg(long, default_value_t = 3600)]
        secs: u64,
    },
    /// Draws a JSON report's timeline as SVG.
    Chart {
        report: PathBuf,
        #[arg(long)]
        svg: PathBuf,
    },
    /// Prints two JSON reports side by side with B/A ratios.
    Compare { a: PathBuf, b: PathBuf },
    /// Parses and validates scenario files.
    Validate { files: Vec<PathBuf> },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-loadtest: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_svg(path: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::write(path, chat_loadtest::chart::svg(report))
        .with_context(|| format!("writing {}", path.display()))
}

fn real_main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run {
            scenario,
            targets,
            json,
            svg,
            ceiling,
            overrides,
            server_pids,
            quiet,
        } => {
            let s = overrides.load(&scenario)?;
            let relay = ceiling.as_deref().map(read_report).transpose()?;
            let mut config = RunConfig::new(s, targets);
            config.server_pids = server_pids;
            config.progress = !quiet;
            let mut report = runtime()?.block_on(run(config))?;
            if let Some(relay) = &relay {
                report.ceiling = Some(Ceiling::of(&report, relay));
            }
            print!("{}", report.to_text());
            if let Some(path) = json {
                write_json(&path, &report)?;
            }
            if let Some(path) = svg {
                write_svg(&path, &report)?;
            }
            Ok(exit_code(&[&report]))
        }
        Command::Calibrate {
            scenario,
            targets,
            rounds,
            json,
            relay_json,
            svg,
            relay_threads,
            overrides,
            server_pids,
            quiet,
        } => {
            let s = overrides.load(&scenario)?;
            let rt = runtime()?;
            let rounds = rounds.clamp(1, 100);
            if s.reconnect.is_some() {
                anyhow::bail!(
                    "{}: the ceiling relay keeps no event stream, so it cannot serve the \
                     resumes of a reconnect storm with traffic ([reconnect]); use `run`",
                    s.name
                );
            }
            let mut relays: Vec<Report> = Vec::new();
            let mut servers: Vec<Report> = Vec::new();
            for round in 1..=rounds {
                if rounds > 1 {
                    eprintln!("== round {round} of {rounds}: relay");
                }
                let relay = Relay::start(relay_threads.unwrap_or_else(nproc))
                    .context("starting the relay")?;
                let mut config = RunConfig::new(s.clone(), vec![relay.url()]);
                config.server_threads = Some(RELAY_THREAD.to_owned());
                config.progress = !quiet;
                let relay_report = rt.block_on(run(config));
                drop(relay);
                let relay_report = relay_report?;
                println!("== the ceiling relay");
                print!("{}", relay_report.to_text());
                if !targets.is_empty() {
                    if rounds > 1 {
                        eprintln!("== round {round} of {rounds}: targets");
                    }
                    let mut config = RunConfig::new(s.clone(), targets.clone());
                    config.server_pids = server_pids.clone();
                    config.progress = !quiet;
                    let mut report = rt.block_on(run(config))?;
                    report.ceiling = Some(Ceiling::of(&report, &relay_report));
                    println!("== the targets");
                    print!("{}", report.to_text());
                    servers.push(report);
                }
                relays.push(relay_report);
            }
            if rounds > 1 {
                print!("{}", rounds_summary(&relays, &servers));
            }
            let last = servers.last().or(relays.last());
            if let (Some(path), Some(r)) = (json, last) {
                write_json(&path, r)?;
            }
            if let (Some(path), Some(r)) = (relay_json, relays.last()) {
                write_json(&path, r)?;
            }
            if let (Some(path), Some(r)) = (svg, last) {
                write_svg(&path, r)?;
            }
            let all: Vec<&Report> = relays.iter().chain(servers.iter()).collect();
            Ok(exit_code(&all))
        }
        Command::Relay {
            listen,
            threads,
            secs,
        } => {
            let relay = Relay::start_on(&listen, threads.unwrap_or_else(nproc))
                .with_context(|| format!("starting the relay on {listen}"))?;
            println!("relay listening on {}", relay.url());
            std::thread::sleep(Duration::from_secs(secs.min(86_400)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Chart { report, svg } => {
            let r = read_report(&report)?;
            write_svg(&svg, &r)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { a, b } => {
            let a = read_report(&a)?;
            let b = read_report(&b)?;
            print!("{}", compare(&a, &b));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => {
            for f in files {
                let s = Scenario::from_file(&f)?;
                println!(
                    "{}: ok ({}, {} users)",
                    f.display(),
                    s.kind.as_str(),
                    s.users
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_code(reports: &[&Report]) -> ExitCode {
    if reports.iter().all(|r| r.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// The ratios of every round, and their median and range.
fn rounds_summary(relays: &[Report], servers: &[Report]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "\n== {} rounds", relays.len());
    let mut names: Vec<String> = Vec::new();
    for s in servers {
        for f in s.ceiling.iter().flat_map(|c| c.figures.iter()) {
            if !names.contains(&f.name) {
                names.push(f.name.clone());
            }
        }
    }
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>12} {:>9} {:>17}",
        "figure (server / relay)", "server med", "relay med", "ratio med", "ratio min-max"
    );
    for name in names {
        let pick = |f: &dyn Fn(&chat_loadtest::report::CeilingFigure) -> Option<f64>| {
            let mut v: Vec<f64> = servers
                .iter()
                .filter_map(|s| s.ceiling.as_ref())
                .filter_map(|c| c.figures.iter().find(|x| x.name == name))
                .filter_map(f)
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let server = pick(&|f| Some(f.server));
        let relay = pick(&|f| Some(f.relay));
        let ratio = pick(&|f| f.ratio);
        let _ = writeln!(
            out,
            "{:<28} {:>12.1} {:>12.1} {:>9.3} {:>17}",
            name,
            median(&server).unwrap_or(f64::NAN),
            median(&relay).unwrap_or(f64::NAN),
            median(&ratio).unwrap_or(f64::NAN),
            match (ratio.first(), ratio.last()) {
                (Some(a), Some(b)) => format!("{a:.3}-{b:.3}"),
                _ => "-".into(),
            }
        );
    }
    out
}

fn median(sorted: &[f64]) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
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
