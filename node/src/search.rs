//! The search service of this node: feeds the full-text index from the messages this node
//! holds, answers other nodes' queries against it, and fans a user's query out to every node.
//!
//! Every message written here, as owner or as replica, is put on the storage's to-do list in
//! the same write (`storage::index_feed`); the indexer takes the list every
//! `search.interval_ms`, indexes, commits, and only then crosses the messages off. Edits
//! re-index the original seq with the new body, deletions remove it, reactions and group
//! notes are not text to search. Since every message lives on several nodes, a query asks all
//! of them and merges the pages, dropping the copies: a node that is down costs nothing but
//! its answer (`partial` says when a node did not answer in time).
//!
//! Queries between nodes: `[SEARCH_WIRE_VERSION] ++ MessagePack with field names`.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::logs::REPLICATION_FACTOR;
use chat_cluster::ring::conversation_key;
use chat_cluster::transport::{Channel, PeerError};
use chat_cluster::Metadata;
use chat_search::{
    merge_filtered, IndexOp, IndexedMessage, MessageIndex, SearchCursor, SearchError, SearchHit,
    SearchPage, SearchQuery,
};
use chat_storage::RocksConversationLog;
use chat_types::{ConversationId, MessageRef, NodeId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::config::SearchConfig;

const SEARCH_WIRE_VERSION: u8 = 1;
/// What one indexer batch left.
#[derive(Debug, PartialEq, Eq)]
enum Batch {
    /// It took everything on the list: wait for more.
    Drained,
    /// It was cut at [`BATCH`] or [`BATCH_BYTES`]: more may be waiting.
    Full,
}

/// Messages the indexer takes per commit, at most. Each commit costs a new segment (and its
/// merges), so under a flood fewer, larger commits index more per second of CPU: 20,000
/// instead of 2,000 took 9-15% off the CPU per message of a flood (docs/benchmarks.md).
const BATCH: usize = 20_000;
/// Message text per commit, at most: a batch of large messages is cut here, so that a batch
/// holds at most this much in memory however large the messages are.
const BATCH_BYTES: usize = 8 << 20;

/// A query as it travels to another node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryWire {
    pub text: String,
    pub reader: UserId,
    pub groups: Vec<ConversationId>,
    pub conversation: Option<ConversationId>,
    pub sender: Option<UserId>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub before: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum SearchReply {
    Hits(Vec<SearchHit>),
    /// Search is off on that node.
    Disabled,
    BadQuery(String),
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, PeerError> {
    crate::peer_codec::encode(SEARCH_WIRE_VERSION, v)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    crate::peer_codec::decode(SEARCH_WIRE_VERSION, "search", bytes)
}

impl QueryWire {
    fn to_query(&self) -> Result<SearchQuery, SearchError> {
        Ok(SearchQuery {
            text: self.text.clone(),
            reader: self.reader,
            groups: self.groups.clone(),
            conversation: self.conversation,
            sender: self.sender,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            before: self
                .before
                .as_deref()
                .map(SearchCursor::parse)
                .transpose()?,
            limit: self.limit as usize,
        })
    }
}

/// The merged answer to a user's query.
#[derive(Debug)]
pub struct Found {
    pub page: SearchPage,
    pub partial: bool,
}

pub struct SearchService {
    /// `None` when search is off on this node.
    index: Option<Arc<MessageIndex>>,
    logs: Arc<RocksConversationLog>,
    meta: Arc<Metadata>,
    config: SearchConfig,
    /// Messages indexed since start (metrics).
    indexed: std::sync::atomic::AtomicU64,
}

impl SearchService {
    pub fn open(
        dir: &std::path::Path,
        logs: Arc<RocksConversationLog>,
        meta: Arc<Metadata>,
        config: SearchConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let index = if config.enabled {
            std::fs::create_dir_all(dir)?;
            Some(Arc::new(MessageIndex::open(dir)?))
        } else {
            None
        };
        Ok(Arc::new(SearchService {
            index,
            logs,
            meta,
            config,
            indexed: Default::default(),
        }))
    }

    pub fn indexed_total(&self) -> u64 {
        self.indexed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the indexer until the node stops.
    pub fn start_indexer(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.index.as_ref()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let interval = Duration::from_millis(me.config.interval_ms);
            loop {
                // Drain what is there, then wait for more.
                loop {
                    let worker = me.clone();
                    let done = tokio::task::spawn_blocking(move || worker.index_batch())
                        .await
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("indexer task failed: {e}")));
                    match done {
                        Ok(Batch::Drained) => break,
                        Ok(Batch::Full) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "indexing failed; retrying");
                            break;
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        }))
    }

    /// Indexes one batch of the to-do list: [`BATCH`] messages or [`BATCH_BYTES`] of text,
    /// whichever comes first. Says whether more may be waiting.
    fn index_batch(&self) -> anyhow::Result<Batch> {
        let Some(index) = &self.index else {
            return Ok(Batch::Drained);
        };
        let mut todo = self.logs.unindexed(BATCH)?;
        if todo.is_empty() {
            return Ok(Batch::Drained);
        }
        let mut full = todo.len() >= BATCH;
        let mut ops = Vec::with_capacity(todo.len());
        let mut bytes = 0usize;
        let mut cut = None;
        for (taken, (conv, seq)) in todo.iter().enumerate() {
            if bytes >= BATCH_BYTES {
                cut = Some(taken);
                break;
            }
            let Some(m) = self.logs.message(conv, *seq)? else {
                continue;
            };
            bytes += m.body.len();
            match m.refers {
                None | Some(MessageRef::Reply { .. }) if !m.body.trim().is_empty() => {
                    ops.push(IndexOp::Put(IndexedMessage {
                        conversation: *conv,
                        seq: *seq,
                        sender: m.sender,
                        ts_ms: m.ts_ms,
                        body: m.body,
                    }));
                }
                Some(MessageRef::Edit { seq: target }) => {
                    // The original keeps its place (seq, time, sender); only the text changes.
                    if let Some(original) = self.logs.message(conv, target)? {
                        ops.push(IndexOp::Put(IndexedMessage {
                            conversation: *conv,
                            seq: target,
                            sender: original.sender,
                            ts_ms: original.ts_ms,
                            body: m.body,
                        }));
                    }
                }
                Some(MessageRef::Delete { seq: target }) => ops.push(IndexOp::Delete {
                    conversation: *conv,
                    seq: target,
                }),
                _ => {}
            }
        }
        if let Some(taken) = cut {
            // The rest stays on the list for the next batch.
            todo.truncate(taken);
            full = true;
        }
        let checkpoint = index.checkpoint() + todo.len() as u64;
        index.apply(ops, checkpoint)?;
        self.logs.mark_indexed(&todo)?;
        self.indexed
            .fetch_add(todo.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(if full { Batch::Full } else { Batch::Drained })
    }

    /// Empties the index and queues every message held here again.
    pub fn rebuild(&self) -> anyhow::Result<u64> {
        let Some(index) = &self.index else {
            return Ok(0);
        };
        index.clear()?;
        Ok(self.logs.reindex_all()?)
    }

    /// Asks every node (this one included) and merges their pages.
    pub async fn search(&self, q: QueryWire) -> Result<Found, SearchError> {
        // Fail fast on a query no node could run.
        q.to_query()?;
        if chat_search::tokens(&q.text).is_empty() {
            return Err(SearchError::BadQuery(
                "the query has no words to search".into(),
            ));
        }
        let me = self.meta.node_id();
        let timeout = Duration::from_millis(self.config.fanout_timeout_ms);
        let payload = encode(&q).map_err(|e| SearchError::Index(e.to_string()))?;
        // A node marked down would only cost the timeout; its replicas answer for it.
        let down = self.meta.read(|m| m.down_nodes().clone());
        let mut skipped = false;
        let remote = self
            .meta
            .nodes()
            .iter()
            .filter(|(id, _)| *id != me)
            .filter(|(id, _)| {
                let up = !down.contains(&id.0);
                skipped |= !up;
                up
            })
            .map(|(id, info)| {
                let transport = self.meta.transport().clone();
                let addr = info.peer_addr.clone();
                let payload = payload.clone();
                let id = *id;
                async move {
                    let reply = transport
                        .request(&addr, Channel::Search, payload, timeout)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|b| decode::<SearchReply>(&b).map_err(|e| e.to_string()));
                    if let Err(e) = &reply {
                        tracing::debug!(peer = %addr, error = %e, "a node did not answer a search");
                    }
                    (id, reply.ok())
                }
            })
            .collect::<Vec<_>>();
        let local = {
            let q = q.clone();
            let this = self.local_handle();
            tokio::task::spawn_blocking(move || this.search_local(&q))
        };
        let (remote, local) = tokio::join!(futures_util::future::join_all(remote), local);
        let mut pages = Vec::new();
        let mut answered = Vec::new();
        let mut partial = skipped;
        for (node, reply) in remote.into_iter().chain(std::iter::once((me, local.ok()))) {
            match reply {
                Some(SearchReply::Hits(h)) => {
                    pages.push(h);
                    answered.push(node);
                }
                Some(SearchReply::Disabled) => {}
                Some(SearchReply::BadQuery(m)) => return Err(SearchError::BadQuery(m)),
                None => partial = true,
            }
        }
        // One node answers for each conversation: the first of its replicas (owner first)
        // that answered. Replica indexes lag by a moment, so mixing their answers could show
        // an edited message by its old text next to a node that already has the new one.
        let ring = self.meta.ring();
        let mut answerer: HashMap<ConversationId, Option<NodeId>> = HashMap::new();
        let keep = |page: usize, hit: &SearchHit| {
            let chosen = *answerer.entry(hit.conversation).or_insert_with(|| {
                ring.successors(&conversation_key(&hit.conversation), REPLICATION_FACTOR)
                    .into_iter()
                    .find(|n| answered.contains(n))
            });
            // No replica answered (the ring moved): any copy will do.
            chosen.is_none_or(|n| answered.get(page) == Some(&n))
        };
        Ok(Found {
            page: merge_filtered(pages, q.limit as usize, keep),
            partial,
        })
    }

    fn local_handle(&self) -> LocalIndex {
        LocalIndex {
            index: self.index.clone(),
        }
    }

    /// Serves another node's query.
    pub async fn handle_peer(&self, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
        let q: QueryWire = decode(payload)?;
        let this = self.local_handle();
        let reply = tokio::task::spawn_blocking(move || this.search_local(&q))
            .await
            .map_err(|e| PeerError::Handler(e.to_string()))?;
        encode(&reply)
    }

    /// Messages waiting to be indexed here (at most one batch is counted).
    pub fn backlog(&self) -> usize {
        self.logs.unindexed(BATCH).map(|v| v.len()).unwrap_or(0)
    }
}

/// What a blocking search needs, without the service's other parts.
struct LocalIndex {
    index: Option<Arc<MessageIndex>>,
}

impl LocalIndex {
    fn search_local(&self, q: &QueryWire) -> SearchReply {
        let Some(index) = &self.index else {
            return SearchReply::Disabled;
        };
        match q.to_query().and_then(|q| index.search(&q)) {
            Ok(page) => SearchReply::Hits(page.hits),
            Err(SearchError::BadQuery(m)) => SearchReply::BadQuery(m),
            Err(SearchError::BadCursor) => SearchReply::BadQuery("bad cursor".into()),
            Err(e) => {
                tracing::warn!(error = %e, "local search failed");
                SearchReply::Hits(Vec::new())
            }
        }
    }
}
