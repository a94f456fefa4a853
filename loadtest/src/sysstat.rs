//! CPU time and memory of processes (the servers, and the load generator itself) from
//! `/proc`, and the machine facts a report records beside its figures.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Linux reports CPU time in `/proc/<pid>/stat` in USER_HZ ticks, which is 100 on every
/// architecture Linux supports today (the kernel's HZ may differ; USER_HZ does not).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of one or more processes, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User plus system CPU time.
    pub cpu_secs: f64,
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn read(pid: u32) -> std::io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let cpu_secs = parse_cpu_ticks(&stat)
            .map(|t| t as f64 / TICKS_PER_SEC)
            .ok_or_else(|| std::io::Error::other(format!("unreadable /proc/{pid}/stat")))?;
        Ok(ProcSample {
            cpu_secs,
            rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
            hwm_kib: parse_status_kib(&status, "VmHWM:").unwrap_or(0),
        })
    }

    /// The sum over `pids`.
    pub fn read_all(pids: &[u32]) -> std::io::Result<ProcSample> {
        let mut total = ProcSample::default();
        for pid in pids {
            let s = ProcSample::read(*pid)?;
            total.cpu_secs += s.cpu_secs;
            total.rss_kib += s.rss_kib;
            total.hwm_kib += s.hwm_kib;
        }
        Ok(total)
    }

    /// This process.
    pub fn read_self() -> std::io::Result<ProcSample> {
        ProcSample::read(std::process::id())
    }

    /// The CPU time of this process's threads named `name` (the in-process relay's runtime),
    /// summed. Memory cannot be told apart by thread, so it is left at 0.
    pub fn read_threads(name: &str) -> std::io::Result<ProcSample> {
        let mut ticks = 0u64;
        let mut found = false;
        for entry in std::fs::read_dir("/proc/self/task")? {
            let path = entry?.path().join("stat");
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(&path) else {
                continue;
            };
            if thread_name(&stat) == Some(name) {
                found = true;
                ticks += parse_cpu_ticks(&stat).unwrap_or(0);
            }
        }
        if !found {
            return Err(std::io::Error::other(format!("no thread named {name}")));
        }
        Ok(ProcSample {
            cpu_secs: ticks as f64 / TICKS_PER_SEC,
            rss_kib: 0,
            hwm_kib: 0,
        })
    }
}

/// The command name of a `/proc/.../stat` line: between the first `(` and the last `)`.
fn thread_name(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may itself hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The machine a report was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    /// 1, 5 and 15 minute load averages before the run and after it.
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
    pub kernel: Option<String>,
}

impl Machine {
    pub fn now() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_before: loadavg(),
            loadavg_after: None,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
        }
    }
}

/// The load averages from `/proc/loadavg`.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// CPU and memory of the server processes and of the load generator over the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcStats {
    pub pids: Vec<u32>,
    /// CPU seconds used inside the measured window.
    pub cpu_secs: f64,
    /// `cpu_secs` divided by the window: 1.0 is one core busy.
    pub cores: f64,
    /// CPU microseconds per acknowledged message (or per user set up in connect-storm).
    pub cpu_us_per_op: Option<f64>,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    pub hwm_kib: u64,
}

impl ProcStats {
    pub fn between(
        pids: Vec<u32>,
        start: &ProcSample,
        end: &ProcSample,
        window: Duration,
        ops: u64,
    ) -> ProcStats {
        let cpu_secs = (end.cpu_secs - start.cpu_secs).max(0.0);
        let secs = window.as_secs_f64();
        ProcStats {
            pids,
            cpu_secs,
            cores: if secs > 0.0 { cpu_secs / secs } else { 0.0 },
            cpu_us_per_op: (ops > 0).then(|| cpu_secs * 1e6 / ops as f64),
            rss_kib_start: start.rss_kib,
            rss_kib_end: end.rss_kib,
            hwm_kib: end.hwm_kib,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cpu_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "1234 (chat (node) x) S 1 1234 1234 0 -1 4194560 2000 0 0 0 \
                    150 25 0 0 20 0 9 0 100 1000000 5000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
    }

    #[test]
    fn named_threads_can_be_read() {
        let t = std::thread::Builder::new()
            .name("lt-test-spin".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = x.wrapping_add(1);
                }
                std::hint::black_box(x);
                std::thread::sleep(Duration::from_millis(300));
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let s = ProcSample::read_threads("lt-test-spin").unwrap();
        assert!(s.cpu_secs > 0.05, "{s:?}");
        t.join().unwrap();
        assert!(ProcSample::read_threads("no-such-thread").is_err());
        assert_eq!(thread_name("12 (a (b) c) S 1"), Some("a (b) c"));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = ProcSample::read_self().unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(loadavg().is_some());
    }
}
