//! Appends as the log grows: one writer appends one message at a time round-robin over many
//! conversations (as conversation actors do), the memtables are flushed to SST files after
//! every slice (as a long-running node's are), and each slice reports its appends per second
//! (docs/benchmarks.md, "Lookups on a grown database").
//!
//! Every append looks its client message id up first, and for a new message that lookup
//! misses: without filters a miss reads an index block of every SST file that may hold the
//! key, so appends slow down as files accumulate; with them it mostly stops at the filter.
//!
//!     cargo build --release --locked --workspace --example bench_growth
//!     $CARGO_TARGET_DIR/release/examples/bench_growth [--messages 1000000] [--slice 100000]
//!         [--conversations 1000] [--dir /var/tmp/chat-bench/growth]

use std::path::PathBuf;
use std::time::Instant;

use chat_storage::{ConversationLog, Durability, RocksConversationLog, Store};

mod common;
use common::{args_or_exit, request};

struct Args {
    messages: u64,
    slice: u64,
    conversations: u64,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 1_000_000,
        slice: 100_000,
        conversations: 1_000,
        dir: PathBuf::from("/var/tmp/chat-bench/growth"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} must be a positive number, not {value:?}"))
        };
        match flag.as_str() {
            "--messages" => args.messages = number()?,
            "--slice" => args.slice = number()?,
            "--conversations" => args.conversations = number()?,
            "--dir" => args.dir = PathBuf::from(&value),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = args_or_exit("bench_growth", parse_args());
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("create the scratch directory");
    let store = Store::open(&args.dir).expect("open the store");
    let log = RocksConversationLog::new(store.clone(), Durability::Wal);
    println!("| messages stored | appends/s in the slice |");
    println!("|---|---|");
    let mut written = 0u64;
    while written < args.messages {
        let started = Instant::now();
        let end = (written + args.slice).min(args.messages);
        for i in written..end {
            log.append(request(i % args.conversations, i))
                .expect("append");
        }
        let rate = (end - written) as f64 / started.elapsed().as_secs_f64();
        written = end;
        println!("| {written} | {rate:.0} |");
        store.flush().expect("flush");
    }
}
