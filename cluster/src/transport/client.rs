//! The sending side: one multiplexed connection per peer address, made on first use and
//! remade after a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::faults::Faults;
use super::frame::{read_frame, write_all, Channel, Envelope, EnvelopeBody, ENVELOPE_VERSION};
use super::{PeerError, TransportError};

/// How long a dial may take. A live peer answers in milliseconds; a dead host drops the SYN
/// and the dial would otherwise last the whole request timeout, holding up the retry that
/// the caller makes once the ring has routed around that host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, PeerError>>>>>;

/// A live connection to one peer.
struct PeerConn {
    outbound: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    /// The reader task, stopped with the connection (a peer behind a partition never closes
    /// its end, so the reader would otherwise wait for as long as TCP keeps trying).
    reader: tokio::task::AbortHandle,
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PeerConn {
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.outbound.is_closed()
    }
}

/// Sends requests to peers and waits for their replies. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// The connection to one peer address, or none yet. Dialling holds only this slot, so a
/// dial that hangs (a dead host drops the SYN) delays requests to that address alone, never
/// those to the other peers.
type Slot = tokio::sync::Mutex<Option<Arc<PeerConn>>>;

struct Inner {
    conns: Mutex<HashMap<String, Arc<Slot>>>,
    next_id: AtomicU64,
    faults: Faults,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self::new(Faults::default())
    }
}

impl Transport {
    pub fn new(faults: Faults) -> Self {
        Transport {
            inner: Arc::new(Inner {
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                faults,
            }),
        }
    }

    /// The fault switches of this transport (tests and chaos runs only).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Sends one request and waits for its reply payload.
    pub async fn request(
        &self,
        addr: &str,
        channel: Channel,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.inner.faults.before_send(addr).await?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Envelope {
            version: ENVELOPE_VERSION,
            id,
            body: EnvelopeBody::Request { channel, payload },
        }
        .encode()?;
        let conn = tokio::time::timeout(timeout, self.connection(addr))
            .await
            .map_err(|_| TransportError::Timeout {
                addr: addr.to_owned(),
            })??;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        if conn.outbound.send(frame).is_err() {
            lock(&conn.pending).remove(&id);
            return Err(TransportError::ConnectionLost {
                addr: addr.to_owned(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(error))) => Err(TransportError::Remote {
                addr: addr.to_owned(),
                error,
            }),
            Ok(Err(_)) => Err(TransportError::ConnectionLost {
                addr: addr.to_owned(),
            }),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                // No answer in time: the connection may be dead without knowing it (packets
                // dropped by a partition; after it heals, TCP's retransmission backoff can
                // keep it silent for tens of seconds). The next request dials afresh.
                conn.closed.store(true, Ordering::Release);
                Err(TransportError::Timeout {
                    addr: addr.to_owned(),
                })
            }
        }
    }

    async fn connection(&self, addr: &str) -> Result<Arc<PeerConn>, TransportError> {
        let slot = lock(&self.inner.conns)
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut current = slot.lock().await;
        if let Some(c) = current.as_ref() {
            if c.is_open() {
                return Ok(c.clone());
            }
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(TransportError::Unreachable {
                    addr: addr.to_owned(),
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr: addr.to_owned(),
                    detail: format!(
                        "no answer to the connection attempt within {CONNECT_TIMEOUT:?}"
                    ),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(spawn_connection(stream, addr.to_owned()));
        *current = Some(conn.clone());
        Ok(conn)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the writer and reader tasks of one connection.
fn spawn_connection(stream: TcpStream, addr: String) -> PeerConn {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));

    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = write_all(&mut wr, &frame).await {
                tracing::debug!(peer = %addr, error = %e, "peer write failed");
                break;
            }
        }
    });

    let reader_pending = pending.clone();
    let closed = Arc::new(AtomicBool::new(false));
    let reader_closed = closed.clone();
    let reader = tokio::spawn(async move {
        loop {
            let bytes = match read_frame(&mut rd).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "peer read failed");
                    break;
                }
            };
            match Envelope::decode(&bytes) {
                Ok(Envelope {
                    id,
                    body: EnvelopeBody::Reply { result },
                    ..
                }) => {
                    if let Some(waiter) = lock(&reader_pending).remove(&id) {
                        let _ = waiter.send(result.map(|b| b.0));
                    }
                }
                Ok(_) => {
                    tracing::warn!("peer sent a request on a client connection; closing it");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable frame from peer; closing connection");
                    break;
                }
            }
        }
        // Mark the connection dead so the next request dials again, and fail every request
        // still waiting on it (dropping a waiter's sender wakes it with "connection lost").
        reader_closed.store(true, Ordering::Release);
        lock(&reader_pending).clear();
    });

    PeerConn {
        outbound: tx,
        pending,
        closed,
        reader: reader.abort_handle(),
    }
}
