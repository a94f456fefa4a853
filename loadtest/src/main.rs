//! chat-loadtest: drives scenarios against a cluster through the public protocol only.
//!
//! `run` executes a scenario and exits 2 when the checker finds a violation, 1 on any other
//! failure; `compare` prints two JSON reports side by side; `validate` checks scenario files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chat_loadtest::{compare, run, Report, RunConfig, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load tester and correctness oracle for the chat cluster"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
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
        /// A server process to sample CPU and memory of (repeat for several; summed).
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
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

fn real_main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run {
            scenario,
            targets,
            json,
            duration_secs,
            warmup_secs,
            users,
            rate,
            window,
            server_pids,
            quiet,
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
            let config = RunConfig {
                scenario: s,
                targets,
                server_pids,
                progress: !quiet,
                run_prefix: None,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let report = runtime.block_on(run(config))?;
            print!("{}", report.to_text());
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

fn read_report(path: &PathBuf) -> anyhow::Result<Report> {
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
