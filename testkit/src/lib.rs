//! Test-only helpers for the tests that start real processes (`chat-node`, the load tester's
//! relay) on loopback. A dev-dependency only: no product crate may depend on it, and it
//! depends on nothing but `std`.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback TCP port that is free now and that no outgoing connection can take before the
/// process it is meant for binds it.
///
/// A port from `bind(127.0.0.1:0)` is one of the kernel's ephemeral ports, the same range
/// every outgoing connection draws its local port from: between the pick and the child's
/// bind, a connection between two other test nodes may take it, and the child then fails to
/// start. So the pick is made below that range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`), from a start that depends on the process id so
/// that test binaries run one after another do not reuse each other's ports, and no port is
/// handed out twice by one process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = pick_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) - 1;
        let port = low + (n % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports below the kernel's ephemeral range and above the well-known ones.
fn pick_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000;
    // A machine whose ephemeral range starts low leaves nothing below it: use the ports
    // above it instead (the race is back, but tests still run).
    if ephemeral_low > low + 1_000 {
        (low, ephemeral_low)
    } else {
        (61_000, 65_535)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = pick_range();
        let picks: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = picks.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            picks.len(),
            "a port handed out twice: {picks:?}"
        );
        for p in picks {
            assert!((low..high).contains(&p), "{p} outside {low}..{high}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("still free");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let first = free_port();
        let _held = TcpListener::bind((Ipv4Addr::LOCALHOST, first + 1)).ok();
        let second = free_port();
        assert_ne!(second, first + 1, "the held port was handed out");
    }
}
