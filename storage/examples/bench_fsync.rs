//! Durable writes with group commit: our conversation log in fsync mode against raw RocksDB
//! doing the same fsynced writes from the same number of threads (docs/benchmarks.md,
//! "Durable writes").
//!
//! Each writer thread appends to its own conversation, as concurrent conversations do on a
//! node (fsynced appends run on the blocking pool, where RocksDB merges concurrent synced
//! writes into one WAL sync). The raw baseline puts one record of the same size per write
//! with `sync = true` from as many threads. Rounds alternate (raw, ours, raw, ours, ...) so
//! that a noisy machine affects both alike; the report gives medians and their ratio.
//!
//!     cargo build --release --locked --workspace --example bench_fsync
//!     $CARGO_TARGET_DIR/release/examples/bench_fsync [--threads 1,8,32] [--seconds 3]
//!         [--rounds 3] [--dir /var/tmp/chat-bench/fsync]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_storage::{ConversationLog, Durability, RocksConversationLog, Store};

mod common;
use common::{args_or_exit, request, BODY};

struct Args {
    threads: Vec<usize>,
    seconds: u64,
    rounds: usize,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        threads: vec![1, 8, 32],
        seconds: 3,
        rounds: 3,
        dir: PathBuf::from("/var/tmp/chat-bench/fsync"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag}: {e}");
        match flag.as_str() {
            "--threads" => {
                args.threads = value
                    .split(',')
                    .map(|t| t.trim().parse().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => args.seconds = value.parse().map_err(bad)?,
            "--rounds" => args.rounds = value.parse().map_err(bad)?,
            "--dir" => args.dir = PathBuf::from(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.threads.contains(&0) || args.seconds == 0 || args.rounds == 0 {
        return Err("threads, seconds and rounds must be positive".into());
    }
    Ok(args)
}

/// Runs `threads` writers for `secs`, each calling `write(thread, i)`; writes per second.
fn run(threads: usize, secs: u64, write: Arc<dyn Fn(usize, u64) + Send + Sync>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, count, write) = (stop.clone(), count.clone(), write.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    write(t, i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("writer thread");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the scratch directory");
    dir.to_owned()
}

fn raw(dir: &Path, threads: usize, secs: u64) -> f64 {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = Arc::new(rocksdb::DB::open(&opts, fresh(dir)).expect("open raw RocksDB"));
    // The record our log stores per message is about this size (MessagePack).
    let value = vec![b'x'; BODY.len() + 64];
    let write = Arc::new(move |t: usize, i: u64| {
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(true);
        let key = format!("c{t:04}/{i:016}");
        db.put_opt(key.as_bytes(), &value, &w).expect("raw put");
    });
    run(threads, secs, write)
}

fn ours(dir: &Path, threads: usize, secs: u64) -> f64 {
    let store = Store::open(&fresh(dir)).expect("open store");
    let log = Arc::new(RocksConversationLog::new(store, Durability::Fsync));
    assert!(log.syncs());
    let write = Arc::new(move |t: usize, i: u64| {
        log.append(request(t as u64, i)).expect("append");
    });
    run(threads, secs, write)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args = args_or_exit("bench_fsync", parse_args());
    println!(
        "fsynced writes, {} s per run, {} alternating rounds, in {}",
        args.seconds,
        args.rounds,
        args.dir.display()
    );
    println!(
        "| writer threads | raw RocksDB, sync puts/s | our log, fsync appends/s | ours / raw |"
    );
    println!("|---|---|---|---|");
    for &threads in &args.threads {
        let (mut r, mut o) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            r.push(raw(&args.dir.join("raw"), threads, args.seconds));
            o.push(ours(&args.dir.join("ours"), threads, args.seconds));
        }
        let (r, o) = (median(r), median(o));
        println!("| {threads} | {r:.0} | {o:.0} | {:.2} |", o / r);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
