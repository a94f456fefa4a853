//! chat-node: one node of the chat cluster.
//!
//! Owns the binary: configuration (file, environment, flags), logging, the actix-web HTTP and
//! WebSocket surface, and the wiring of storage, cluster and actors with an orderly shutdown.
//! This is the only crate that knows actix-web; it holds no chat logic of its own beyond
//! translating the public protocol into router calls.

mod admin_cli;
mod app;
mod auth;
mod config;
mod http;
mod media;
mod metrics;
mod peer_codec;
mod push;
mod ratelimit;
mod s3;
mod search;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of the chat cluster. With no flags: a complete single node on ./data, serving
/// http://127.0.0.1:8080.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see config/example.toml).
    #[arg(long, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (RocksDB).
    #[arg(long, env = "CHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Client HTTP/WebSocket listen address.
    #[arg(long, env = "CHAT_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Node-to-node listen address.
    #[arg(long, env = "CHAT_PEER_ADDR")]
    peer_addr: Option<String>,
    /// Peer address of any cluster member to join.
    #[arg(long, env = "CHAT_JOIN")]
    join: Option<String>,
    /// HTTP address to advertise to others (defaults to --http-addr).
    #[arg(long, env = "CHAT_ADVERTISE_HTTP_ADDR")]
    advertise_http_addr: Option<String>,
    /// Peer address to advertise to others (defaults to --peer-addr).
    #[arg(long, env = "CHAT_ADVERTISE_PEER_ADDR")]
    advertise_peer_addr: Option<String>,
}

/// Operator commands; they talk to a running node and need `CHAT_ADMIN_TOKEN`.
#[derive(Subcommand, Debug)]
enum Command {
    /// Members, voters, leader and ring epoch of the cluster.
    Status {
        /// Any node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        node: String,
    },
    /// Drains a node: it leaves the cluster, its work moves to the others, its clients are
    /// told to reconnect elsewhere. Stop the process afterwards.
    Drain {
        /// The HTTP address of the node to drain.
        #[arg(long, default_value = "127.0.0.1:8080")]
        node: String,
    },
    /// Removes a node (dead, or done draining) from the cluster.
    Remove {
        /// The id of the node to remove (see `status`).
        id: u64,
        /// Any node's HTTP address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        node: String,
    },
}

fn load(args: Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        config.node.data_dir = v;
    }
    if let Some(v) = args.http_addr {
        config.node.http_addr = v;
    }
    if let Some(v) = args.peer_addr {
        config.node.peer_addr = v;
    }
    if let Some(v) = args.join {
        config.cluster.join = Some(v);
    }
    if let Some(v) = args.advertise_http_addr {
        config.node.advertise_http_addr = Some(v);
    }
    if let Some(v) = args.advertise_peer_addr {
        config.node.advertise_peer_addr = Some(v);
    }
    config.load_secrets()?;
    config.validate()?;
    Ok(config)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(cmd) = args.command.take() {
        let result = match cmd {
            Command::Status { node } => admin_cli::status(&node),
            Command::Remove { id, node } => admin_cli::remove(&node, id),
            Command::Drain { node } => admin_cli::drain(&node),
        };
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chat-node: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chat-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.node.runtime_threads())
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-node: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        init_logging(&config.node.log_format);
        match app::run(config).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("chat-node: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
