//! Blob store benchmark: writes a 100 MiB blob through [`BlobWriter`] in 64 KiB chunks, reads
//! it back in 256 KiB pieces with `read_at` (as the node's download path does), compares both
//! with plain `std::fs` on a file of the same size and chunking in the same run, reads 1 MiB
//! from the middle with `open_range` and with `read_at` while counting the bytes the process
//! read (`/proc/self/io`), and times thumbnails of a 4000x3000 JPEG and PNG. It prints its
//! figures; it asserts nothing about time.
//!
//! ```text
//! cargo run --release -p chat-media --example bench_blobs -- [options]
//!   --dir PATH      scratch directory, emptied first (default /var/tmp/chat-bench/blobs)
//!   --size-mib N    blob size (default 100)
//!   --rounds R      rounds of every write/read (default 5); figures are medians
//!   --no-thumbs     skip the thumbnails
//! ```
//!
//! "Cold" reads evict the file from the page cache first with `dd iflag=nocache count=0`
//! (posix_fadvise DONTNEED; no root needed) after an fsync; `read_bytes` then shows whether
//! the bytes really came from the disk. The VM's host may still cache them.

use std::error::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_media::{thumbnails, BlobHash, BlobStore, ImageLimits};
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};
use tokio::io::AsyncReadExt;

type Res<T> = Result<T, Box<dyn Error>>;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const WRITE_CHUNK: usize = 64 * KIB;
const READ_PIECE: usize = 256 * KIB;

// ---------------------------------------------------------------------------------------
// Helpers.

/// `rchar` (bytes returned by read-like syscalls, page cache or not) and `read_bytes`
/// (bytes the process caused to be fetched from storage) of this process, all threads.
#[derive(Clone, Copy, Default)]
struct Io {
    rchar: u64,
    read_bytes: u64,
    cpu: f64,
}

fn io_now() -> Io {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Io {
        rchar: field("rchar:"),
        read_bytes: field("read_bytes:"),
        cpu: cpu_seconds(),
    }
}

fn io_delta(a: Io, b: Io) -> Io {
    Io {
        rchar: b.rchar.saturating_sub(a.rchar),
        read_bytes: b.read_bytes.saturating_sub(a.read_bytes),
        cpu: b.cpu - a.cpu,
    }
}

/// User + system CPU seconds of the whole process (every thread, tokio's blocking pool
/// too), in 10 ms ticks.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of proc(5); "state" (field 3) is index 0 here.
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

/// Drops the file's pages from the page cache (after an fsync: dirty pages cannot be dropped).
fn evict(path: &Path) -> Res<()> {
    std::fs::File::open(path)?.sync_all()?;
    let status = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()?;
    if !status.success() {
        return Err("dd iflag=nocache failed".into());
    }
    Ok(())
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_d(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median_u(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn fmt_bytes(b: u64) -> String {
    if b >= MIB as u64 {
        format!("{:.2} MiB", b as f64 / MIB as f64)
    } else if b >= KIB as u64 {
        format!("{:.0} KiB", b as f64 / KIB as f64)
    } else {
        format!("{b} B")
    }
}

/// Incompressible bytes, like a video (SplitMix64).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------
// The measured operations.

fn raw_write(path: &Path, data: &[u8], durable: bool) -> Res<Duration> {
    let _ = std::fs::remove_file(path);
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    for chunk in data.chunks(WRITE_CHUNK) {
        f.write_all(chunk)?;
    }
    if durable {
        f.sync_all()?;
    }
    drop(f);
    Ok(t.elapsed())
}

fn raw_read(path: &Path) -> Res<(Duration, usize)> {
    let mut buf = vec![0u8; READ_PIECE];
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut total = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok((t.elapsed(), total))
}

async fn blob_write(store: &BlobStore, data: &[u8], durable: bool) -> Res<(Duration, BlobHash)> {
    let t = Instant::now();
    let mut w = store.writer(data.len() as u64).await?;
    for chunk in data.chunks(WRITE_CHUNK) {
        w.write(chunk).await?;
    }
    let info = w.finish(durable).await?;
    Ok((t.elapsed(), info.hash))
}

/// Reads `start..start + len` in `READ_PIECE` pieces, one `read_at` each (the node's way).
async fn blob_read_pieces(
    store: &BlobStore,
    hash: &BlobHash,
    start: u64,
    len: u64,
) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let mut at = start;
    let end = start + len;
    let mut total = 0;
    while at < end {
        let want = (end - at).min(READ_PIECE as u64) as usize;
        let piece = store.read_at(hash, at, want).await?;
        if piece.is_empty() {
            break;
        }
        at += piece.len() as u64;
        total += piece.len();
    }
    Ok((t.elapsed(), total))
}

async fn blob_read_range(
    store: &BlobStore,
    hash: &BlobHash,
    start: u64,
    len: u64,
) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let mut reader = store.open_range(hash, start, start + len - 1).await?;
    let mut buf = Vec::with_capacity(len as usize);
    reader.read_to_end(&mut buf).await?;
    Ok((t.elapsed(), buf.len()))
}

// ---------------------------------------------------------------------------------------

struct Options {
    dir: PathBuf,
    size: usize,
    rounds: usize,
    thumbs: bool,
}

fn parse_options() -> Res<Options> {
    let mut o = Options {
        dir: PathBuf::from("/var/tmp/chat-bench/blobs"),
        size: 100 * MIB,
        rounds: 5,
        thumbs: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Res<String> {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value").into())
        };
        match arg.as_str() {
            "--dir" => o.dir = PathBuf::from(value()?),
            "--size-mib" => o.size = value()?.parse::<usize>()?.max(2) * MIB,
            "--rounds" => o.rounds = value()?.parse::<usize>()?.max(1),
            "--no-thumbs" => o.thumbs = false,
            "-h" | "--help" => {
                println!("see the comment at the top of media/examples/bench_blobs.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

#[derive(Default)]
struct Column {
    times: Vec<Duration>,
    io: Vec<Io>,
}

impl Column {
    fn push(&mut self, d: Duration, io: Io) {
        self.times.push(d);
        self.io.push(io);
    }
    fn time(&self) -> Duration {
        median_d(self.times.clone())
    }
    fn rchar(&self) -> u64 {
        median_u(self.io.iter().map(|i| i.rchar).collect())
    }
    fn read_bytes(&self) -> u64 {
        median_u(self.io.iter().map(|i| i.read_bytes).collect())
    }
    fn cpu_ms(&self) -> f64 {
        let mut v: Vec<f64> = self.io.iter().map(|i| i.cpu * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

async fn measured<F, Fut>(column: &mut Column, f: F) -> Res<usize>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Res<(Duration, usize)>>,
{
    let before = io_now();
    let (d, n) = f().await?;
    let after = io_now();
    column.push(d, io_delta(before, after));
    Ok(n)
}

async fn blobs(o: &Options) -> Res<()> {
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir)?;
    }
    std::fs::create_dir_all(&o.dir)?;
    let store = BlobStore::open(&o.dir.join("store"))?;
    let raw_path = o.dir.join("raw.bin");
    let mut data = random_bytes(o.size, 42);
    let size = o.size;

    // Reading /proc/self/io itself counts in rchar: measure that overhead once.
    let a = io_now();
    let b = io_now();
    let probe_overhead = io_delta(a, b).rchar;

    // raw, blob, raw + fsync, blob + fsync, SHA-256 alone
    let mut w: [Column; 5] = Default::default();
    let mut r_raw_warm = Column::default();
    let mut r_blob_warm = Column::default();
    let mut r_raw_cold = Column::default();
    let mut r_blob_cold = Column::default();
    let mut g_range_warm = Column::default();
    let mut g_pieces_warm = Column::default();
    let mut g_range_cold = Column::default();
    let mut g_pieces_cold = Column::default();
    let range_len = MIB as u64;
    // The middle, deliberately not page aligned.
    let range_start = (size as u64 / 2).saturating_sub(500_000);

    for round in 0..o.rounds {
        // A different blob each round, so nothing is deduplicated.
        data[..8].copy_from_slice(&(round as u64 + 1).to_le_bytes());

        let io = io_now();
        let d = raw_write(&raw_path, &data, false)?;
        w[0].push(d, io_delta(io, io_now()));
        let io = io_now();
        let (d, hash) = blob_write(&store, &data, false).await?;
        w[1].push(d, io_delta(io, io_now()));
        store.remove(&hash).await?;
        let io = io_now();
        let d = raw_write(&raw_path, &data, true)?;
        w[2].push(d, io_delta(io, io_now()));
        let io = io_now();
        let (d, hash) = blob_write(&store, &data, true).await?;
        w[3].push(d, io_delta(io, io_now()));
        let io = io_now();
        let t = Instant::now();
        let check = BlobHash::of(&data);
        w[4].push(t.elapsed(), io_delta(io, io_now()));
        if check != hash {
            return Err("the blob's hash is not the SHA-256 of its bytes".into());
        }
        let blob_path = store.path(&hash);

        // Whole-file reads, warm (page cache) then cold (evicted first).
        let n = measured(&mut r_raw_warm, || async { raw_read(&raw_path) }).await?;
        assert_len(n, size)?;
        let n = measured(&mut r_blob_warm, || {
            blob_read_pieces(&store, &hash, 0, size as u64)
        })
        .await?;
        assert_len(n, size)?;
        evict(&raw_path)?;
        let n = measured(&mut r_raw_cold, || async { raw_read(&raw_path) }).await?;
        assert_len(n, size)?;
        evict(&blob_path)?;
        let n = measured(&mut r_blob_cold, || {
            blob_read_pieces(&store, &hash, 0, size as u64)
        })
        .await?;
        assert_len(n, size)?;

        // 1 MiB from the middle.
        for _ in 0..5 {
            let n = measured(&mut g_range_warm, || {
                blob_read_range(&store, &hash, range_start, range_len)
            })
            .await?;
            assert_len(n, MIB)?;
            let n = measured(&mut g_pieces_warm, || {
                blob_read_pieces(&store, &hash, range_start, range_len)
            })
            .await?;
            assert_len(n, MIB)?;
        }
        evict(&blob_path)?;
        let n = measured(&mut g_range_cold, || {
            blob_read_range(&store, &hash, range_start, range_len)
        })
        .await?;
        assert_len(n, MIB)?;
        evict(&blob_path)?;
        let n = measured(&mut g_pieces_cold, || {
            blob_read_pieces(&store, &hash, range_start, range_len)
        })
        .await?;
        assert_len(n, MIB)?;
        store.remove(&hash).await?;
        println!("round {} of {} done", round + 1, o.rounds);
    }
    let _ = std::fs::remove_file(&raw_path);

    let mib = size / MIB;
    println!();
    println!(
        "## Blob writes and reads ({mib} MiB, median of {} rounds)",
        o.rounds
    );
    println!(
        "MB/s are MiB/s; CPU is the whole process's user + system time during the operation \
         (10 ms ticks)."
    );
    println!(
        "| operation | std::fs (dd-like) | its CPU | chat-media | its CPU | chat-media / std::fs |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, raw: &Column, blob: &Column| {
        println!(
            "| {name} | {:.0} MB/s ({:.0} ms) | {:.0} ms | {:.0} MB/s ({:.0} ms) | {:.0} ms | {:.2} |",
            mbps(size, raw.time()),
            ms(raw.time()),
            raw.cpu_ms(),
            mbps(size, blob.time()),
            ms(blob.time()),
            blob.cpu_ms(),
            mbps(size, blob.time()) / mbps(size, raw.time())
        );
    };
    row(
        "write, 64 KiB chunks, no fsync (`finish(false)`)",
        &w[0],
        &w[1],
    );
    row("write, 64 KiB chunks, fsync (`finish(true)`)", &w[2], &w[3]);
    row(
        "read all, 256 KiB pieces, page cache (`read_at`)",
        &r_raw_warm,
        &r_blob_warm,
    );
    row(
        "read all, 256 KiB pieces, evicted first (`read_at`)",
        &r_raw_cold,
        &r_blob_cold,
    );
    println!(
        "| SHA-256 of the {mib} MiB alone (in memory, `BlobHash::of`) | | | {:.0} MB/s ({:.0} ms) | {:.0} ms | |",
        mbps(size, w[4].time()),
        ms(w[4].time()),
        w[4].cpu_ms()
    );
    println!();
    println!(
        "Bytes read by the process for the evicted whole-file reads: std::fs rchar {} / \
         read_bytes {}; read_at rchar {} / read_bytes {}.",
        fmt_bytes(r_raw_cold.rchar()),
        fmt_bytes(r_raw_cold.read_bytes()),
        fmt_bytes(r_blob_cold.rchar()),
        fmt_bytes(r_blob_cold.read_bytes())
    );

    println!();
    println!(
        "## Range read of 1 MiB from the middle of the {mib} MiB blob (bytes {}-{})",
        range_start,
        range_start + range_len - 1
    );
    println!(
        "rchar and read_bytes are this process's deltas from /proc/self/io around the read \
         (reading /proc/self/io and /proc/self/stat adds {probe_overhead} B to rchar; the range \
         is {range_len} B)."
    );
    println!("| how | cache | time (median) | rchar (bytes) | read_bytes | samples |");
    println!("|---|---|---|---|---|---|");
    for (name, cache, c) in [
        ("`open_range` + read_to_end", "page cache", &g_range_warm),
        (
            "`read_at`, 4 x 256 KiB (node)",
            "page cache",
            &g_pieces_warm,
        ),
        ("`open_range` + read_to_end", "evicted", &g_range_cold),
        ("`read_at`, 4 x 256 KiB (node)", "evicted", &g_pieces_cold),
    ] {
        println!(
            "| {name} | {cache} | {:.2} ms | {} | {} | {} |",
            ms(c.time()),
            c.rchar(),
            fmt_bytes(c.read_bytes()),
            c.times.len()
        );
    }
    Ok(())
}

fn assert_len(got: usize, want: usize) -> Res<()> {
    if got != want {
        return Err(format!("read {got} bytes, expected {want}").into());
    }
    Ok(())
}

/// A 4000x3000 photo-like picture: smooth gradients and waves plus some grain, so that
/// JPEG and PNG sizes and decode costs are in a realistic range (pure noise or flat colour
/// would not be).
fn photo(width: u32, height: u32) -> RgbImage {
    let mut state = 7u64;
    RgbImage::from_fn(width, height, |x, y| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let grain = ((state >> 59) as f32) - 16.0;
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let wave = ((fx * 23.0).sin() * (fy * 17.0).cos()) * 40.0;
        let r = 90.0 + 120.0 * fx + wave + grain;
        let g = 60.0 + 150.0 * fy - wave * 0.5 + grain;
        let b = 140.0 + 80.0 * (fx * fy * 9.0).sin() + grain;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    })
}

fn thumbs(o: &Options) -> Res<()> {
    let (width, height) = (4000, 3000);
    let img = photo(width, height);
    let jpeg = o.dir.join("photo.jpg");
    let png = o.dir.join("photo.png");
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).write_image(
        img.as_raw(),
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    std::fs::write(&jpeg, &bytes)?;
    img.save(&png)?;
    drop(img);
    let limits = ImageLimits::default();
    println!();
    println!(
        "## Thumbnails of a {width}x{height} image (s 96x96, m 320, l 1280; median of {} runs)",
        o.rounds.max(3)
    );
    println!("| source | file size | decode alone | `thumbnails()` total | its CPU | outputs |");
    println!("|---|---|---|---|---|---|");
    for (name, path) in [("JPEG q90", &jpeg), ("PNG (RGB)", &png)] {
        let mut decode = Vec::new();
        let mut total = Vec::new();
        let mut cpu = Vec::new();
        let mut outputs = String::new();
        for _ in 0..o.rounds.max(3) {
            let t = Instant::now();
            let decoded = image::open(path)?;
            decode.push(t.elapsed());
            drop(decoded);
            let cpu0 = cpu_seconds();
            let t = Instant::now();
            let made = thumbnails(path, &limits)?;
            total.push(t.elapsed());
            cpu.push(Duration::from_secs_f64((cpu_seconds() - cpu0).max(0.0)));
            outputs = made
                .iter()
                .map(|t| {
                    format!(
                        "{} {}x{} {}",
                        t.size,
                        t.width,
                        t.height,
                        fmt_bytes(t.bytes.len() as u64)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
        }
        println!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {outputs} |",
            fmt_bytes(std::fs::metadata(path)?.len()),
            ms(median_d(decode)),
            ms(median_d(total)),
            ms(median_d(cpu)),
        );
    }
    let _ = std::fs::remove_file(&jpeg);
    let _ = std::fs::remove_file(&png);
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let o = parse_options()?;
    println!(
        "blob benchmark in {} ({} MiB, {} rounds)",
        o.dir.display(),
        o.size / MIB,
        o.rounds
    );
    blobs(&o).await?;
    if o.thumbs {
        thumbs(&o)?;
    }
    Ok(())
}
