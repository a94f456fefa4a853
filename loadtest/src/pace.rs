//! Waiting for a send's slot on the schedule, to within a tenth of a millisecond.
//!
//! Latency is timed from each send's slot (so that a slow server cannot hide its delay), so
//! any lateness of the load generator's own wake-up counts as the server's latency. tokio's
//! timer ticks in whole milliseconds and rounds each deadline up to the next tick: a plain
//! `tokio::time::sleep_until` returns up to ~2 ms late (1 ms on average), which put ~1.6 ms
//! into the bare relay's own round trip. [`sleep_until`] sleeps on tokio's timer until
//! shortly before the slot, then lets one thread of its own (sleeping with the kernel's
//! high-resolution timers) wake the task at the slot itself.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long before its slot a wait hands over from tokio's timer to the precise one: more
/// than tokio's rounding (up to a tick and a bit of scheduling).
const HAND_OVER: Duration = Duration::from_millis(3);

/// Waits until `at`, returning within ~0.1 ms after it (the kernel's timer slack and a
/// wake-up of the runtime).
pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at - now > HAND_OVER {
        tokio::time::sleep_until((at - HAND_OVER).into()).await;
    }
    let (wake, woken) = oneshot::channel();
    match TIMER.as_ref().map(|timer| timer.send((at, wake))) {
        Some(Ok(())) => {
            let _ = woken.await;
        }
        // No timer thread could be started: tokio's timer it is.
        _ => tokio::time::sleep_until(at.into()).await,
    }
}

type Wait = (Instant, oneshot::Sender<()>);

/// The precise timer: one thread that fires each wait at its instant.
static TIMER: LazyLock<Option<mpsc::Sender<Wait>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("loadtest-pace".into())
        .spawn(move || fire(rx))
        .ok()
        .map(|_| tx)
});

/// One wait in the timer's queue, earliest first (ties in the order queued).
struct Due {
    at: Instant,
    order: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

fn fire(waits: mpsc::Receiver<Wait>) {
    let mut queue: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut order = 0u64;
    loop {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(due)) = queue.pop() {
                let _ = due.wake.send(());
            }
        }
        let next = match queue.peek() {
            Some(Reverse(d)) => waits.recv_timeout(d.at.saturating_duration_since(now)),
            None => waits.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, wake)) => {
                queue.push(Reverse(Due { at, order, wake }));
                order += 1;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many waits at once, out of order: each returns at or after its instant, and none far
    /// after it (the bound is loose: a shared test machine may pause any thread).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_wait_returns_at_its_instant_not_before() {
        let start = Instant::now() + Duration::from_millis(20);
        let offsets_us = [9_700u64, 300, 4_100, 4_100, 150, 12_345, 0, 7_777];
        let waits = offsets_us.iter().map(|&us| {
            let at = start + Duration::from_micros(us);
            tokio::spawn(async move {
                sleep_until(at).await;
                let now = Instant::now();
                (now >= at, now.saturating_duration_since(at))
            })
        });
        let mut lates = Vec::new();
        for w in waits {
            let (on_time, late) = w.await.expect("the wait's task");
            assert!(on_time, "a wait returned before its instant");
            lates.push(late);
        }
        for late in &lates {
            assert!(*late < Duration::from_millis(500), "{lates:?}");
        }
        // A wait for an instant already past returns at once.
        let before = Instant::now();
        sleep_until(before - Duration::from_millis(5)).await;
        assert!(before.elapsed() < Duration::from_millis(500));
    }
}
