//! chat-cli: the `chat` terminal client.
//!
//! Owns the command line (one-shot commands for people and scripts: `register`, `login`,
//! `logout`, `send` (with files), `history`, `tail`, `search`, `download`, `profile`,
//! `contacts`), the session token file, the
//! text and `--json` output, and the full-screen interactive UI (`chat` or `chat ui`, ratatui
//! over crossterm).
//!
//! Must not depend on anything of the server (storage, cluster, actors, node): it reaches the
//! cluster only through `chat-client` and the vocabulary of `chat-types`, like any third-party
//! client would. Nothing the server sends may make it panic, and the terminal is restored
//! however the UI ends.

mod commands;
mod config;
mod error;
mod media;
mod output;
mod search;
mod tail;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Ctx;
use crate::error::CliError;
use crate::output::Output;

/// Terminal client of the chat cluster.
#[derive(Parser, Debug)]
#[command(name = "chat", version, about, long_about = None)]
struct Args {
    /// Base URL of any node of the cluster [default: the server of the last login, else
    /// http://127.0.0.1:8080]
    #[arg(long, global = true, env = "CHAT_SERVER", value_name = "URL")]
    server: Option<String>,
    /// File that keeps the session token [default: $XDG_CONFIG_HOME/chat/session.json or
    /// ~/.config/chat/session.json]. The environment variable CHAT_TOKEN, when set, is used as
    /// the token instead of reading this file.
    #[arg(long, global = true, env = "CHAT_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line (errors too, on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates an account (does not log in).
    Register {
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Logs in and keeps the session token in the token file.
    Login {
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revokes the session token on every node and forgets it.
    Logout,
    /// Sends MESSAGE to USER in your direct conversation and prints its seq ("-": read the
    /// message from standard input). With --file, uploads the files first and attaches them
    /// (MESSAGE may then be left out).
    Send {
        user: String,
        message: Option<String>,
        /// A file to attach (repeatable, at most 10). Files over 8 MiB go up in resumable
        /// 4 MiB chunks.
        #[arg(long = "file", short = 'f', value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// Prints the messages of your direct conversation with USER, oldest first.
    History {
        user: String,
        /// At most this many messages (the server caps it, normally at 200).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only messages with a seq below SEQ (for paging back).
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
    },
    /// Prints messages as they arrive, reconnecting and resuming by itself, until Ctrl-C.
    Tail,
    /// Searches the messages of your conversations, newest first (with --people: users).
    Search {
        text: String,
        /// Only your direct conversation with USER.
        #[arg(long, value_name = "USER", conflicts_with = "conversation")]
        user: Option<String>,
        /// Only the conversation ID (`dm:1:2`, `g:7`).
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
        /// Only messages sent by USER.
        #[arg(long, value_name = "USER")]
        sender: Option<String>,
        /// At most N results per page (the server's default is 20, its maximum 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
        /// Search users by username and display name instead of messages.
        #[arg(long, conflicts_with_all = ["user", "conversation", "sender", "all"])]
        people: bool,
    },
    /// Saves the file MEDIA_ID (as shown under a message) to disk.
    Download {
        media_id: String,
        /// Where to write ("-": standard output; a directory: the file's name in it)
        /// [default: the file's name in the current directory].
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Shows your profile, or USER's.
    Profile { user: Option<String> },
    /// Lists your contacts and pending contact requests.
    Contacts,
    /// The full-screen interactive client (the default when no command is given).
    Ui,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = Output { json: args.json };
    let ctx = Ctx::new(args.server, args.token_file, out);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(out, &CliError::io("cannot start the runtime", &e)),
    };
    let result = runtime.block_on(run(&ctx, args.command.unwrap_or(Command::Ui)));
    // Background tasks (a heartbeat, a reader) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(out, &e),
    }
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), CliError> {
    match command {
        Command::Register {
            username,
            password_stdin,
        } => commands::register(ctx, &username, password_stdin).await,
        Command::Login {
            username,
            password_stdin,
        } => commands::login(ctx, &username, password_stdin).await,
        Command::Logout => commands::logout(ctx).await,
        Command::Send {
            user,
            message,
            files,
        } => commands::send(ctx, &user, message.as_deref(), &files).await,
        Command::History {
            user,
            limit,
            before,
        } => commands::history(ctx, &user, limit, before).await,
        Command::Tail => tail::run(ctx).await,
        Command::Search {
            text,
            people: true,
            limit,
            ..
        } => search::people(ctx, &text, limit).await,
        Command::Search {
            text,
            user,
            conversation,
            sender,
            limit,
            all,
            people: false,
        } => {
            let args = search::SearchArgs {
                text,
                user,
                conversation,
                sender,
                limit,
                all,
            };
            search::messages(ctx, args).await
        }
        Command::Download {
            media_id,
            output,
            force,
        } => media::download(ctx, &media_id, output.as_deref(), force).await,
        Command::Profile { user } => commands::profile(ctx, user.as_deref()).await,
        Command::Contacts => commands::contacts(ctx).await,
        Command::Ui => ui::run(ctx).await,
    }
}

/// Prints `e` on stderr and picks the exit code: a closed stdout (`chat tail | head -1`) ends
/// quietly and successfully, every other error exits 1.
fn report(out: Output, e: &CliError) -> ExitCode {
    if e.is_broken_pipe() {
        return ExitCode::SUCCESS;
    }
    out.error(e);
    ExitCode::FAILURE
}
