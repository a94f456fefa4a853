//! The media service of this node: where blobs are placed, how they reach their replicas, and
//! how a node without a blob reads it from one that has it.
//!
//! Placement: a blob lives on the first [`REPLICATION_FACTOR`] distinct ring nodes from its
//! content hash, like a conversation log. The node that took an upload keeps its copy and asks
//! the placement nodes to pull it (`Pull`, served by reading `Read` chunks back from the
//! uploading node); the upload is acknowledged once a majority of the placement nodes hold it,
//! the remaining pulls go on in the background. A node asked for a blob it does not hold
//! reads it chunk by chunk from the placement nodes (then from any node), so that a Range
//! request never moves more than its range; a placement node that lacks a blob (it joined
//! after the upload, or was down) pulls the whole blob once on the first read (read repair).
//!
//! With an S3-compatible store configured, the store replaces the ring for blobs: an upload is
//! acknowledged once the store has it, and a node without a local copy reads ranges from it.
//!
//! Payloads between nodes: `[MEDIA_WIRE_VERSION] ++ MessagePack with field names`.

use std::sync::Arc;
use std::time::Duration;

use chat_cluster::ring::Ring;
use chat_cluster::transport::{ByteBuf, Channel, PeerError};
use chat_cluster::Metadata;
use chat_media::{BlobHash, BlobStore, MediaError, Uploads};
use chat_types::NodeId;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::s3::S3Store;

/// Copies of each blob on the ring (fewer on smaller clusters).
pub const REPLICATION_FACTOR: usize = 3;
const MEDIA_WIRE_VERSION: u8 = 1;
/// Bytes per read between nodes.
pub const CHUNK: usize = 1024 * 1024;
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upload waits for a majority of its placement nodes.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Blobs offered to their placement at once during a rebalance.
const REBALANCE_CONCURRENCY: usize = 8;

/// What a rebalance did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebalanced {
    /// Blobs held here when it started.
    pub scanned: u64,
    /// Placement nodes that answered they hold a blob (after pulling it if they lacked it).
    pub confirmed: u64,
    /// Local copies dropped because this node is no longer in their placement.
    pub dropped: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum MediaPeerRequest {
    /// Up to `len` bytes of a blob from `offset`.
    Read { hash: String, offset: u64, len: u32 },
    /// Fetch this blob (from `sources` first, then anywhere) and keep it.
    Pull {
        hash: String,
        size: u64,
        sources: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum MediaPeerReply {
    Bytes(ByteBuf),
    /// This node does not hold the blob.
    Missing,
    /// The blob is stored here now.
    Held,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, PeerError> {
    crate::peer_codec::encode(MEDIA_WIRE_VERSION, v)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    crate::peer_codec::decode(MEDIA_WIRE_VERSION, "media", bytes)
}

/// The ring key of a blob.
fn blob_key(hash: &BlobHash) -> Vec<u8> {
    let mut k = b"blob/".to_vec();
    k.extend_from_slice(&hash.0);
    k
}

/// This node's blobs and uploads, and the way to the other nodes' blobs.
pub struct MediaService {
    pub blobs: BlobStore,
    pub uploads: Uploads,
    meta: Arc<Metadata>,
    durable: bool,
    /// When set, blobs live there instead of on the ring: uploads are written through to it
    /// and nodes without a local copy read from it.
    s3: Option<Arc<S3Store>>,
}

impl MediaService {
    pub fn new(
        blobs: BlobStore,
        meta: Arc<Metadata>,
        durable: bool,
        s3: Option<Arc<S3Store>>,
    ) -> Arc<Self> {
        let uploads = Uploads::new(&blobs);
        Arc::new(MediaService {
            blobs,
            uploads,
            meta,
            durable,
            s3,
        })
    }

    pub fn durable(&self) -> bool {
        self.durable
    }

    fn placement(&self, ring: &Ring, hash: &BlobHash) -> Vec<NodeId> {
        ring.successors(&blob_key(hash), REPLICATION_FACTOR)
    }

    fn peer_addr(&self, node: NodeId) -> Option<String> {
        self.meta.node_info(node).map(|i| i.peer_addr)
    }

    /// Nodes to read a blob from, best first: its placement, then every other member.
    fn sources(&self, hash: &BlobHash) -> Vec<String> {
        let me = self.meta.node_id();
        let ring = self.meta.ring();
        let mut nodes = self.placement(&ring, hash);
        for (id, _) in self.meta.nodes().iter() {
            if !nodes.contains(id) {
                nodes.push(*id);
            }
        }
        nodes
            .into_iter()
            .filter(|n| *n != me)
            .filter_map(|n| self.peer_addr(n))
            .collect()
    }

    /// Makes a blob this node holds durable on the ring: returns once a majority of its
    /// placement nodes hold it (this node counts when it is one of them).
    pub async fn replicate(&self, hash: BlobHash, size: u64) -> Result<(), MediaError> {
        if let Some(s3) = &self.s3 {
            let key = hash.to_hex();
            let stored = |e: crate::s3::S3Error| {
                tracing::warn!(error = %e, "writing a blob to S3 failed");
                MediaError::Unsupported {
                    reason: "the object store did not take the upload".into(),
                }
            };
            if s3.head(&key).await.map_err(stored)? != Some(size) {
                s3.put_file(&key, &self.blobs.path(&hash), size)
                    .await
                    .map_err(stored)?;
            }
            return Ok(());
        }
        let me = self.meta.node_id();
        let ring = self.meta.ring();
        let placement = self.placement(&ring, &hash);
        let need = placement.len() / 2 + 1;
        // On a one-node cluster this node alone is the majority; pulls still go on below.
        let mut held = usize::from(placement.contains(&me));
        let Some(my_addr) = self.peer_addr(me) else {
            return Err(MediaError::Unsupported {
                reason: "this node is not in the cluster yet".into(),
            });
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(placement.len().max(1));
        let mut asked = 0usize;
        for node in placement.iter().copied().filter(|n| *n != me) {
            let Some(addr) = self.peer_addr(node) else {
                continue;
            };
            asked += 1;
            let transport = self.meta.transport().clone();
            let req = encode(&MediaPeerRequest::Pull {
                hash: hash.to_hex(),
                size,
                sources: vec![my_addr.clone()],
            });
            let tx = tx.clone();
            // Each pull runs to its end even after the upload is acknowledged.
            tokio::spawn(async move {
                let ok = match req {
                    Ok(req) => match transport
                        .request(&addr, Channel::Media, req, REPLICATE_TIMEOUT)
                        .await
                    {
                        Ok(bytes) => matches!(decode(&bytes), Ok(MediaPeerReply::Held)),
                        Err(e) => {
                            tracing::warn!(peer = %addr, error = %e, "blob pull failed");
                            false
                        }
                    },
                    Err(_) => false,
                };
                let _ = tx.send(ok).await;
            });
        }
        drop(tx);
        let mut answered = 0usize;
        while held < need && answered < asked {
            match rx.recv().await {
                Some(ok) => {
                    answered += 1;
                    held += usize::from(ok);
                }
                None => break,
            }
        }
        if held >= need {
            Ok(())
        } else {
            Err(MediaError::Unsupported {
                reason: format!("only {held} of {need} replicas hold the upload"),
            })
        }
    }

    /// Up to `len` bytes of a blob from `offset`, from here or from another node.
    pub async fn read(
        &self,
        hash: &BlobHash,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, MediaError> {
        // A local copy may be dropped by a rebalance between the check and the read: then
        // the read goes where the blob now is.
        match self.blobs.read_at(hash, offset, len).await {
            Err(MediaError::NotFound) => {}
            other => return other,
        }
        if let Some(s3) = &self.s3 {
            match s3.get_range(&hash.to_hex(), offset, len.min(CHUNK)).await {
                Ok(Some(bytes)) => return Ok(bytes),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading a blob from S3 failed"),
            }
        }
        self.read_remote(hash, offset, len).await
    }

    async fn read_remote(
        &self,
        hash: &BlobHash,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, MediaError> {
        let req = encode(&MediaPeerRequest::Read {
            hash: hash.to_hex(),
            offset,
            len: u32::try_from(len.min(CHUNK)).unwrap_or(CHUNK as u32),
        })
        .map_err(|e| MediaError::Unsupported {
            reason: e.to_string(),
        })?;
        for addr in self.sources(hash) {
            match self
                .meta
                .transport()
                .request(&addr, Channel::Media, req.clone(), PEER_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| decode::<MediaPeerReply>(&b).map_err(|e| e.to_string()))
            {
                Ok(MediaPeerReply::Bytes(b)) => return Ok(b.0),
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, "blob read failed; trying the next node");
                    continue;
                }
            }
        }
        Err(MediaError::NotFound)
    }

    /// Copies a whole blob onto this node from `first` and then the usual sources.
    async fn pull(&self, hash: BlobHash, size: u64, first: Vec<String>) -> Result<(), MediaError> {
        if self.blobs.exists(&hash).await {
            return Ok(());
        }
        let mut sources = first;
        for s in self.sources(&hash) {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        let mut last = MediaError::NotFound;
        'source: for addr in sources {
            let mut writer = self.blobs.writer(size).await?;
            let mut offset = 0u64;
            while offset < size {
                let want = usize::try_from((size - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
                let req = encode(&MediaPeerRequest::Read {
                    hash: hash.to_hex(),
                    offset,
                    len: want as u32,
                })
                .map_err(|e| MediaError::Unsupported {
                    reason: e.to_string(),
                })?;
                let reply = self
                    .meta
                    .transport()
                    .request(&addr, Channel::Media, req, PEER_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|b| decode::<MediaPeerReply>(&b).map_err(|e| e.to_string()));
                match reply {
                    Ok(MediaPeerReply::Bytes(b)) if !b.0.is_empty() => {
                        offset += b.0.len() as u64;
                        writer.write(&b.0).await?;
                    }
                    Ok(_) => {
                        last = MediaError::NotFound;
                        continue 'source;
                    }
                    Err(e) => {
                        tracing::debug!(peer = %addr, error = %e, "blob pull read failed");
                        continue 'source;
                    }
                }
            }
            match writer.finish_expect(hash, self.durable).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// After a ring change: every blob held here is offered to the nodes that are now its
    /// placement (each pulls what it lacks), and a node that is no longer one of them drops
    /// its copy once every placement node answered that it holds the blob. Safe to run again
    /// at any time; with an S3 store there is nothing to move.
    pub async fn rebalance(&self) -> Result<Rebalanced, MediaError> {
        let mut done = Rebalanced::default();
        if self.s3.is_some() {
            return Ok(done);
        }
        let me = self.meta.node_id();
        let Some(my_addr) = self.peer_addr(me) else {
            return Ok(done);
        };
        let ring = self.meta.ring();
        let blobs = self.blobs.list().await?;
        let results = futures_util::stream::iter(blobs)
            .map(|blob| {
                let placement = self.placement(&ring, &blob.hash);
                let my_addr = my_addr.clone();
                async move {
                    let mut held = 0usize;
                    for node in placement.iter().copied().filter(|n| *n != me) {
                        let Some(addr) = self.peer_addr(node) else {
                            continue;
                        };
                        let Ok(req) = encode(&MediaPeerRequest::Pull {
                            hash: blob.hash.to_hex(),
                            size: blob.size,
                            sources: vec![my_addr.clone()],
                        }) else {
                            continue;
                        };
                        let reply = self
                            .meta
                            .transport()
                            .request(&addr, Channel::Media, req, REPLICATE_TIMEOUT)
                            .await;
                        if matches!(reply.as_deref().map(decode), Ok(Ok(MediaPeerReply::Held))) {
                            held += 1;
                        }
                    }
                    let others = placement.iter().filter(|n| **n != me).count();
                    let mine = placement.contains(&me);
                    let drop = !mine && !placement.is_empty() && held == others;
                    if drop && self.blobs.remove(&blob.hash).await.is_ok() {
                        (held, true)
                    } else {
                        (held, false)
                    }
                }
            })
            .buffer_unordered(REBALANCE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (held, dropped) in results {
            done.scanned += 1;
            done.confirmed += held as u64;
            done.dropped += u64::from(dropped);
        }
        Ok(done)
    }

    /// Runs [`MediaService::rebalance`] after every ring change (once the ring has been still
    /// for a moment), until the node stops.
    pub fn start_rebalancer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut ring = self.meta.ring_watch();
        tokio::spawn(async move {
            loop {
                if ring.changed().await.is_err() {
                    return;
                }
                // Joins and failures come in bursts of ring changes: wait for the last.
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if !ring.has_changed().unwrap_or(false) {
                        break;
                    }
                    ring.borrow_and_update();
                }
                ring.borrow_and_update();
                match me.rebalance().await {
                    Ok(r) if r.scanned > 0 => tracing::info!(
                        blobs = r.scanned,
                        confirmed = r.confirmed,
                        dropped = r.dropped,
                        "blobs rebalanced after a ring change"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "rebalancing blobs failed"),
                }
            }
        })
    }

    /// Read repair: a placement node that lacks a blob fetches it once.
    pub async fn repair_if_placed_here(&self, hash: BlobHash, size: u64) {
        if self.s3.is_some() {
            return;
        }
        let ring = self.meta.ring();
        if self.placement(&ring, &hash).contains(&self.meta.node_id())
            && !self.blobs.exists(&hash).await
        {
            if let Err(e) = self.pull(hash, size, Vec::new()).await {
                tracing::warn!(error = %e, "read repair of a blob failed");
            }
        }
    }

    /// Serves another node's media request.
    pub async fn handle_peer(&self, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
        let req: MediaPeerRequest = decode(payload)?;
        let bad_hash = |_| PeerError::BadPayload("bad blob hash".into());
        let reply = match req {
            MediaPeerRequest::Read { hash, offset, len } => {
                let hash = BlobHash::from_hex(&hash).map_err(bad_hash)?;
                if !self.blobs.exists(&hash).await {
                    MediaPeerReply::Missing
                } else {
                    let len = (len as usize).min(CHUNK);
                    match self.blobs.read_at(&hash, offset, len).await {
                        Ok(bytes) => MediaPeerReply::Bytes(ByteBuf(bytes)),
                        Err(MediaError::NotFound) => MediaPeerReply::Missing,
                        Err(e) => return Err(PeerError::Handler(e.to_string())),
                    }
                }
            }
            MediaPeerRequest::Pull {
                hash,
                size,
                sources,
            } => {
                let hash = BlobHash::from_hex(&hash).map_err(bad_hash)?;
                match self.pull(hash, size, sources).await {
                    Ok(()) => MediaPeerReply::Held,
                    Err(MediaError::NotFound) => MediaPeerReply::Missing,
                    Err(e) => return Err(PeerError::Handler(e.to_string())),
                }
            }
        };
        encode(&reply)
    }
}
