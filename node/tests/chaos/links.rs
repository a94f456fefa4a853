//! The client side of the network: every WebSocket of the load goes through a small TCP relay
//! in this process, one listener per node slot. The relay is where client-link faults come
//! from, since the nodes' own fault switches only cover the peer wire:
//!
//! - **cut**: the relay drops both sockets of every client connection (or of one user's), so
//!   the clients see their connection end without a close frame and resume elsewhere;
//! - **drop acks**: the relay parses the server-to-client WebSocket frames (unmasked, never
//!   compressed by these nodes) and silently discards a share of the `ack` frames, so the
//!   sender times out and sends again with the same `client_msg_id`.
//!
//! The relay learns whose connection it carries from the `token=` of the upgrade request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What the relays share: the live connections and the fault settings.
#[derive(Default)]
struct Shared {
    next_id: AtomicU64,
    /// Connection id -> (token of the client, the task relaying it).
    conns: Mutex<HashMap<u64, (Option<String>, AbortHandle)>>,
    /// Share of `ack` frames to discard, per mille.
    drop_acks_permille: AtomicU32,
    acks_dropped: AtomicU64,
}

/// One relay per node slot, all living until dropped.
pub struct Links {
    shared: Arc<Shared>,
    /// (relay address, upstream node address) per slot.
    slots: Vec<(String, String)>,
    listeners: Vec<AbortHandle>,
}

impl Drop for Links {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
        self.cut_all();
    }
}

impl Links {
    pub fn new() -> Links {
        Links {
            shared: Arc::new(Shared::default()),
            slots: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Opens a relay on loopback to the node at `upstream` (`host:port`); its slot index.
    pub async fn add(&mut self, upstream: &str) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a client relay");
        let addr = listener.local_addr().expect("relay address").to_string();
        let shared = Arc::clone(&self.shared);
        let up = upstream.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (registered, wait) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(relay(client, up.clone(), Arc::clone(&shared), id, wait));
                // Registered before the relay starts, so that its removal comes after.
                lock(&shared.conns).insert(id, (None, task.abort_handle()));
                let _ = registered.send(());
            }
        });
        self.listeners.push(task.abort_handle());
        self.slots.push((addr, upstream.to_owned()));
        self.slots.len() - 1
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The WebSocket URL of `token` through the relay of `slot`.
    pub fn ws_url(&self, slot: usize, token: &str) -> String {
        format!("ws://{}/v1/ws?token={token}", self.slots[slot].0)
    }

    /// Drops every client connection at once; how many there were.
    pub fn cut_all(&self) -> usize {
        let conns: Vec<AbortHandle> = lock(&self.shared.conns)
            .drain()
            .map(|(_, (_, h))| h)
            .collect();
        for h in &conns {
            h.abort();
        }
        conns.len()
    }

    /// The handle a client uses to drop its own connection (one it judged dead).
    pub fn cutter(&self) -> Cutter {
        Cutter(Arc::clone(&self.shared))
    }

    /// From now on, discard `permille`/1000 of the `ack` frames on their way to clients.
    pub fn drop_acks(&self, permille: u32) {
        self.shared
            .drop_acks_permille
            .store(permille.min(1000), Ordering::Relaxed);
    }

    pub fn acks_dropped(&self) -> u64 {
        self.shared.acks_dropped.load(Ordering::Relaxed)
    }
}

/// Drops the relayed connections of one client.
#[derive(Clone)]
pub struct Cutter(Arc<Shared>);

impl Cutter {
    /// Drops every relayed connection carrying `token`.
    pub fn cut(&self, token: &str) {
        let mut conns = lock(&self.0.conns);
        let ids: Vec<u64> = conns
            .iter()
            .filter(|(_, (t, _))| t.as_deref() == Some(token))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, h)) = conns.remove(&id) {
                h.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Relays one client connection until either side ends or the relay is cut.
async fn relay(
    client: TcpStream,
    upstream: String,
    shared: Arc<Shared>,
    id: u64,
    registered: tokio::sync::oneshot::Receiver<()>,
) {
    let _ = registered.await;
    let _ = client.set_nodelay(true);
    if let Ok(server) = TcpStream::connect(&upstream).await {
        let _ = server.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::select! {
            _ = upward(cr, sw, &shared, id) => {}
            _ = downward(sr, cw, &shared) => {}
        }
    }
    lock(&shared.conns).remove(&id);
}

/// Client to server: the upgrade request (whose token names the connection), then bytes.
async fn upward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    id: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let mut named = false;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if !named {
            head.extend_from_slice(&buf[..n]);
            if let Some(line_end) = head.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
                let token = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|target| target.split_once("token="))
                    .map(|(_, t)| t.split('&').next().unwrap_or("").to_owned());
                if let Some(entry) = lock(&shared.conns).get_mut(&id) {
                    entry.0 = token;
                }
                named = true;
                head.clear();
            } else if head.len() > 64 * 1024 {
                named = true;
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Server to client: the upgrade response as is, then WebSocket frames, some `ack` frames
/// discarded when asked.
async fn downward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The response head.
    let upgraded = loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.write_all(&pending).await?;
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            to.write_all(&head).await?;
            break head.starts_with(b"HTTP/1.1 101");
        }
    };
    loop {
        if upgraded {
            let mut out = Vec::new();
            while let Some(len) = frame_len(&pending) {
                let frame: Vec<u8> = pending.drain(..len).collect();
                if !(is_ack(&frame) && should_drop(shared)) {
                    out.extend_from_slice(&frame);
                }
            }
            if !out.is_empty() {
                to.write_all(&out).await?;
            }
        } else if !pending.is_empty() {
            to.write_all(&pending).await?;
            pending.clear();
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The length of the complete WebSocket frame at the start of `b`, if it is all there.
fn frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (len, ext) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 2),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 8)
        }
        126 | 127 => return None,
        n => (n as usize, 0),
    };
    let total = 2 + ext + if masked { 4 } else { 0 } + len;
    (b.len() >= total).then_some(total)
}

/// A final, unmasked text frame holding an `ack`.
fn is_ack(frame: &[u8]) -> bool {
    let fin_text = frame[0] == 0x81;
    let unmasked = frame[1] & 0x80 == 0;
    fin_text && unmasked && frame.windows(12).any(|w| w == b"\"type\":\"ack\"")
}

fn should_drop(shared: &Shared) -> bool {
    let permille = shared.drop_acks_permille.load(Ordering::Relaxed);
    let drop = permille > 0 && rand::random::<u32>() % 1000 < permille;
    if drop {
        shared.acks_dropped.fetch_add(1, Ordering::Relaxed);
    }
    drop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_needs_the_whole_frame() {
        let mut f = vec![0x81, 5];
        f.extend_from_slice(b"hello");
        assert_eq!(frame_len(&f), Some(7));
        assert_eq!(frame_len(&f[..6]), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend_from_slice(&[b'x'; 256]);
        assert_eq!(frame_len(&long), Some(260));
    }
}
