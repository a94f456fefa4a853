//! Fault injection for the peer wire, applied on the sending side. Off unless switched on:
//! `netem` is not available on our machines, so latency, loss and partitions for tests and
//! chaos runs come from here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::TransportError;

#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<FaultState>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct FaultState {
    /// Peer addresses this node cannot reach.
    partitioned: HashSet<String>,
    /// Added before every send.
    delay: Duration,
}

impl Faults {
    /// Makes `addr` unreachable from this node until [`Faults::heal`].
    pub fn partition(&self, addr: &str) {
        self.state().partitioned.insert(addr.to_owned());
    }

    pub fn heal(&self) {
        let mut s = self.state();
        s.partitioned.clear();
        s.delay = Duration::ZERO;
    }

    /// Replaces the set of unreachable peer addresses.
    pub fn set_partitioned(&self, addrs: impl IntoIterator<Item = String>) {
        self.state().partitioned = addrs.into_iter().collect();
    }

    /// The peer addresses currently cut off, and the added delay.
    pub fn snapshot(&self) -> (Vec<String>, Duration) {
        let s = self.state();
        let mut cut: Vec<String> = s.partitioned.iter().cloned().collect();
        cut.sort();
        (cut, s.delay)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn before_send(&self, addr: &str) -> Result<(), TransportError> {
        let (cut, delay) = {
            let s = self.state();
            (s.partitioned.contains(addr), s.delay)
        };
        if cut {
            return Err(TransportError::Unreachable {
                addr: addr.to_owned(),
                detail: "partitioned by fault injection".into(),
            });
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}
