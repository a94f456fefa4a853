//! The node's handle on the cluster: its Raft node for metadata, membership and join, the
//! current ring, and writes forwarded to the leader.
//!
//! A write may arrive at any node; a follower forwards it to the leader over the peer
//! transport (`Cluster` channel) so that clients never need to know who leads. A new node
//! joins by naming any member: the request is forwarded to the leader, which adds the node as
//! a learner, then promotes it to voter while the cluster has fewer than [`MAX_VOTERS`].
//!
//! Writes are batched: openraft (0.9) makes one log entry of each client write and runs
//! each entry through its core on its own, which bounded logins (one session entry each) to
//! a few thousand a second however many were waiting. Commands that arrive while earlier
//! ones are on their way go into one [`MetaCommand::Batch`] entry, applied in order and
//! answered one by one.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chat_storage::Store;
use chat_types::{NodeId, RingEpoch};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::error::ClusterError;
use crate::meta::{MetaCommand, MetaResponse, MetaState, NodeInfo};
use crate::raft::network::{serve_raft_rpc, PeerNetworkFactory};
use crate::raft::{open_stores, MetaRaft, SharedMeta};
use crate::ring::{Ring, DEFAULT_VNODES};
use crate::transport::{Channel, PeerError, Transport};

/// Voters kept in the metadata group; further nodes are learners.
pub const MAX_VOTERS: usize = 3;
const CLUSTER_RPC_VERSION: u8 = 1;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands in one batched log entry, at most.
const MAX_WRITE_BATCH: usize = 256;
/// Batched entries on their way at once: while they are, the next commands queue up into
/// the next batch.
const WRITE_BATCHES_IN_FLIGHT: usize = 4;

/// A command waiting to be proposed, and where its answer goes.
type QueuedWrite = (
    MetaCommand,
    oneshot::Sender<Result<MetaResponse, ClusterError>>,
);

/// How this node takes part in the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub node_id: NodeId,
    /// What other nodes and clients are told about this node.
    pub advertise: NodeInfo,
    /// Peer address of any member, for a node that is not yet part of a cluster.
    pub join: Option<String>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A member the leader cannot reach for this long is marked down (0: never).
    pub failure_timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum ClusterRequest {
    Join {
        node_id: u64,
        info: NodeInfo,
    },
    Write(MetaCommand),
    Remove {
        node_id: u64,
    },
    /// Are you there? (the failure detector)
    Ping,
}

#[derive(Serialize, Deserialize)]
enum ClusterReply {
    Pong,
    Joined,
    Removed,
    /// The answer and the log index of the entry, so the asking node can wait until it has
    /// applied it too (read-your-writes on the node a client talks to).
    Written {
        resp: MetaResponse,
        index: u64,
    },
    Failed {
        retry: bool,
        detail: String,
    },
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ClusterError> {
    let mut out = vec![CLUSTER_RPC_VERSION];
    rmp_serde::encode::write_named(&mut out, v)
        .map_err(|e| ClusterError::BadPayload(e.to_string()))?;
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ClusterError> {
    match bytes.split_first() {
        Some((&CLUSTER_RPC_VERSION, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| ClusterError::BadPayload(e.to_string()))
        }
        _ => Err(ClusterError::BadPayload(
            "unknown cluster rpc version".into(),
        )),
    }
}

/// The node's view of, and voice in, the cluster.
pub struct Metadata {
    node_id: NodeId,
    raft: MetaRaft,
    shared: SharedMeta,
    transport: Transport,
    ring: watch::Receiver<Arc<Ring>>,
    nodes: watch::Receiver<Arc<Vec<(NodeId, NodeInfo)>>>,
    /// Commands for the next batched entry (see the module doc).
    writes: mpsc::UnboundedSender<QueuedWrite>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Metadata {
    /// Opens the Raft stores, starts the Raft node, and bootstraps or joins a cluster when
    /// this node is not part of one yet. Returns before a join completes; see [`Self::is_ready`].
    pub async fn start(
        store: Store,
        settings: ClusterSettings,
        transport: Transport,
    ) -> Result<Arc<Metadata>, ClusterError> {
        let (log_store, state_machine) = open_stores(store)?;
        let shared = state_machine.shared();
        let config = Config {
            cluster_name: "chat".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_timeout_min_ms,
            election_timeout_max: settings.election_timeout_max_ms,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
        );
        let raft = MetaRaft::new(
            settings.node_id.0,
            config,
            PeerNetworkFactory::new(transport.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;

        let (ring_tx, ring_rx) =
            watch::channel(Arc::new(Ring::new([], RingEpoch(0), DEFAULT_VNODES)));
        let (nodes_tx, nodes_rx) = watch::channel(Arc::new(Vec::new()));
        spawn_membership_watch(raft.clone(), shared.clone(), ring_tx, nodes_tx);

        let (writes_tx, writes_rx) = mpsc::unbounded_channel();
        let meta = Arc::new(Metadata {
            node_id: settings.node_id,
            raft,
            shared,
            transport,
            ring: ring_rx,
            nodes: nodes_rx,
            writes: writes_tx,
        });
        spawn_write_batcher(Arc::downgrade(&meta), writes_rx);

        let initialized = meta
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized {
            match &settings.join {
                None => {
                    let mut members = std::collections::BTreeMap::new();
                    members.insert(settings.node_id.0, settings.advertise.clone());
                    meta.raft
                        .initialize(members)
                        .await
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                    tracing::info!(node = %settings.node_id, "bootstrapped a new cluster");
                }
                Some(seed) => {
                    let meta = meta.clone();
                    let seed = seed.clone();
                    let info = settings.advertise.clone();
                    tokio::spawn(async move { meta.join_until_done(&seed, info).await });
                }
            }
        }
        if settings.failure_timeout_ms > 0 {
            spawn_failure_detector(
                Arc::downgrade(&meta),
                Duration::from_millis(settings.failure_timeout_ms),
            );
        }
        Ok(meta)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The current ring. Cheap: a shared pointer.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.borrow().clone()
    }

    /// Changes whenever the membership (and so the ring) changes.
    pub fn ring_watch(&self) -> watch::Receiver<Arc<Ring>> {
        self.ring.clone()
    }

    /// Addresses of a member node.
    pub fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        self.nodes
            .borrow()
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, info)| info.clone())
    }

    /// All member nodes with their addresses.
    pub fn nodes(&self) -> Arc<Vec<(NodeId, NodeInfo)>> {
        self.nodes.borrow().clone()
    }

    /// Reads the local copy of the replicated metadata.
    pub fn read<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        self.shared.read(f)
    }

    /// Member of the cluster, with a known leader: ready to serve.
    pub fn is_ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.running_state.is_ok()
            && m.current_leader.is_some()
            && self.ring().members().contains(&self.node_id)
    }

    /// Resolves when this node's Raft core has stopped on a fatal error (for one, a metadata
    /// log write that failed on a full disk): the node then no longer follows the metadata
    /// and must be restarted. The reason, for the log.
    pub async fn stopped_on_error(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core has gone".into();
            }
        }
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader.map(NodeId)
    }

    /// Voter ids of the current membership.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .voter_ids()
            .map(NodeId)
            .collect()
    }

    /// Proposes a metadata change through Raft, forwarding to the leader when needed, and
    /// returns the state machine's answer once it is committed and applied locally. Commands
    /// that wait together share one log entry.
    pub async fn write(&self, cmd: MetaCommand) -> Result<MetaResponse, ClusterError> {
        if matches!(cmd, MetaCommand::SetNodeDown { .. } | MetaCommand::Batch(_)) {
            return self.write_entry(cmd).await;
        }
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((cmd, tx))
            .map_err(|_| ClusterError::ShuttingDown)?;
        rx.await.unwrap_or(Err(ClusterError::ShuttingDown))
    }

    /// Proposes the commands queued together, as one entry when there are several, and
    /// answers each.
    async fn write_batch(&self, mut batch: Vec<QueuedWrite>) {
        if batch.len() == 1 {
            if let Some((cmd, reply)) = batch.pop() {
                let _ = reply.send(self.write_entry(cmd).await);
            }
            return;
        }
        let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = cmds.len();
        match self.write_entry(MetaCommand::Batch(cmds)).await {
            Ok(MetaResponse::Batch(answers)) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(other) => {
                for reply in replies {
                    let _ = reply.send(Err(ClusterError::BadPayload(format!(
                        "unexpected answer to a batch of {count}: {other:?}"
                    ))));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.for_another()));
                }
            }
        }
    }

    /// Proposes one log entry (see [`Self::write`]).
    async fn write_entry(&self, cmd: MetaCommand) -> Result<MetaResponse, ClusterError> {
        let mut last_err = ClusterError::NoLeader;
        for attempt in 0..20u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt.min(6))).await;
            }
            match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => return Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                    let Some(node) = fwd.leader_node else {
                        last_err = ClusterError::NoLeader;
                        continue;
                    };
                    match self
                        .forward(&node.peer_addr, &ClusterRequest::Write(cmd.clone()))
                        .await
                    {
                        Ok(ClusterReply::Written { resp, index }) => {
                            let waited = self
                                .raft
                                .wait(Some(FORWARD_TIMEOUT))
                                .applied_index_at_least(Some(index), "forwarded write")
                                .await;
                            if let Err(e) = waited {
                                tracing::warn!(error = %e, "forwarded write not applied here yet");
                            }
                            return Ok(resp);
                        }
                        Ok(ClusterReply::Failed {
                            retry: true,
                            detail,
                        }) => {
                            last_err = ClusterError::Raft(detail);
                        }
                        Ok(ClusterReply::Failed {
                            retry: false,
                            detail,
                        }) => return Err(ClusterError::Raft(detail)),
                        Ok(ClusterReply::Joined | ClusterReply::Removed | ClusterReply::Pong) => {
                            return Err(ClusterError::BadPayload("unexpected reply".into()))
                        }
                        Err(e) => last_err = e,
                    }
                }
                Err(RaftError::Fatal(e)) => return Err(ClusterError::Raft(e.to_string())),
                Err(e) => last_err = ClusterError::Raft(e.to_string()),
            }
        }
        Err(last_err)
    }

    async fn forward(
        &self,
        addr: &str,
        req: &ClusterRequest,
    ) -> Result<ClusterReply, ClusterError> {
        let bytes = self
            .transport
            .request(addr, Channel::Cluster, encode(req)?, FORWARD_TIMEOUT)
            .await?;
        decode(&bytes)
    }

    async fn join_until_done(&self, seed: &str, info: NodeInfo) {
        let req = ClusterRequest::Join {
            node_id: self.node_id.0,
            info,
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.forward(seed, &req).await {
                Ok(ClusterReply::Joined) => {
                    tracing::info!(%seed, node = %self.node_id, "joined the cluster");
                    return;
                }
                Ok(ClusterReply::Failed { detail, .. }) => {
                    tracing::warn!(%seed, %detail, "join refused; retrying")
                }
                Ok(_) => tracing::warn!(%seed, "unexpected join reply; retrying"),
                Err(e) => tracing::warn!(%seed, error = %e, "join failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs `req` on the leader: `None` when this node leads (the caller does the work),
    /// otherwise the leader's reply.
    async fn on_leader(&self, req: &ClusterRequest) -> Option<ClusterReply> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.node_id.0) {
            return None;
        }
        let Some(leader) = m.current_leader else {
            return Some(ClusterReply::Failed {
                retry: true,
                detail: "no leader yet".into(),
            });
        };
        let Some(addr) = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.peer_addr.clone())
        else {
            return Some(ClusterReply::Failed {
                retry: true,
                detail: "leader address unknown".into(),
            });
        };
        Some(match self.forward(&addr, req).await {
            Ok(reply) => reply,
            Err(e) => ClusterReply::Failed {
                retry: true,
                detail: e.to_string(),
            },
        })
    }

    /// Removes a node from the cluster (a dead one, or one that has drained). When it was a
    /// voter and learners exist, a learner is promoted first so the group keeps
    /// [`MAX_VOTERS`]. Idempotent: removing a non-member succeeds.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), ClusterError> {
        let mut last = ClusterError::NoLeader;
        for attempt in 0..20u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt.min(5))).await;
            }
            match self.remove_on_leader(node.0).await {
                ClusterReply::Removed => return Ok(()),
                ClusterReply::Failed {
                    retry: true,
                    detail,
                } => last = ClusterError::Raft(detail),
                ClusterReply::Failed { detail, .. } => return Err(ClusterError::Raft(detail)),
                _ => {
                    return Err(ClusterError::BadPayload(
                        "unexpected reply to remove".into(),
                    ))
                }
            }
        }
        Err(last)
    }

    async fn remove_on_leader(&self, node_id: u64) -> ClusterReply {
        if let Some(reply) = self.on_leader(&ClusterRequest::Remove { node_id }).await {
            return reply;
        }
        let failed = |e: &dyn std::fmt::Display| ClusterReply::Failed {
            retry: true,
            detail: e.to_string(),
        };
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&node_id).is_none() {
            return ClusterReply::Removed;
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&node_id) {
            let learner = membership.learner_ids().find(|l| *l != node_id);
            if let Some(l) = learner {
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([l]));
                if let Err(e) = self.raft.change_membership(add, false).await {
                    return failed(&e);
                }
            }
            let remove = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
            if let Err(e) = self.raft.change_membership(remove, false).await {
                return failed(&e);
            }
        } else {
            let remove = ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
            if let Err(e) = self.raft.change_membership(remove, false).await {
                return failed(&e);
            }
        }
        tracing::info!(node = node_id, "removed from the cluster");
        ClusterReply::Removed
    }

    /// Adds a node: as a learner, then as a voter while voters are fewer than [`MAX_VOTERS`].
    /// Runs on the leader; elsewhere it forwards.
    async fn admit(&self, node_id: u64, info: NodeInfo) -> ClusterReply {
        if let Some(reply) = self
            .on_leader(&ClusterRequest::Join {
                node_id,
                info: info.clone(),
            })
            .await
        {
            return reply;
        }
        let m = self.raft.metrics().borrow().clone();
        let already = m
            .membership_config
            .membership()
            .get_node(&node_id)
            .is_some();
        if !already {
            if let Err(e) = self.raft.add_learner(node_id, info, true).await {
                return ClusterReply::Failed {
                    retry: true,
                    detail: e.to_string(),
                };
            }
        }
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.len() < MAX_VOTERS && !voters.contains(&node_id) {
            let add = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
            if let Err(e) = self.raft.change_membership(add, false).await {
                return ClusterReply::Failed {
                    retry: true,
                    detail: e.to_string(),
                };
            }
        }
        ClusterReply::Joined
    }

    /// Serves a request on the `Raft` or `Cluster` channel from a peer.
    pub async fn handle_peer(
        &self,
        channel: Channel,
        payload: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        match channel {
            Channel::Raft => serve_raft_rpc(&self.raft, payload).await,
            Channel::Cluster => {
                let req: ClusterRequest =
                    decode(payload).map_err(|e| PeerError::BadPayload(e.to_string()))?;
                let reply = match req {
                    ClusterRequest::Join { node_id, info } => self.admit(node_id, info).await,
                    ClusterRequest::Remove { node_id } => self.remove_on_leader(node_id).await,
                    ClusterRequest::Ping => ClusterReply::Pong,
                    ClusterRequest::Write(cmd) => match self.raft.client_write(cmd).await {
                        Ok(resp) => ClusterReply::Written {
                            index: resp.log_id.index,
                            resp: resp.data,
                        },
                        Err(e) => ClusterReply::Failed {
                            retry: !matches!(e, RaftError::Fatal(_)),
                            detail: e.to_string(),
                        },
                    },
                };
                encode(&reply).map_err(|e| PeerError::Handler(e.to_string()))
            }
            Channel::Actor | Channel::Media | Channel::Search => Err(PeerError::Handler(
                "only metadata requests are served here".into(),
            )),
        }
    }

    /// Whether this node currently leads the metadata group.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Rebuilds the ring whenever the applied membership or the set of nodes marked down
/// changes. The ring holds the members that are not down; its epoch is the log index of the
/// later of the two changes, which every node agrees on.
fn spawn_membership_watch(
    raft: MetaRaft,
    shared: SharedMeta,
    ring_tx: watch::Sender<Arc<Ring>>,
    nodes_tx: watch::Sender<Arc<Vec<(NodeId, NodeInfo)>>>,
) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        // `None` until the first membership is known; bootstrap writes it at log index 0.
        let mut last_seen = None;
        loop {
            let membership = metrics.borrow_and_update().membership_config.clone();
            let log_id = *membership.log_id();
            let (down, down_at) = shared.read(|s| (s.down_nodes().clone(), s.down_changed_at()));
            let epoch = RingEpoch(log_id.map(|l| l.index).unwrap_or(0).max(down_at));
            if last_seen != Some((log_id, down_at)) {
                last_seen = Some((log_id, down_at));
                let nodes: Vec<(NodeId, NodeInfo)> = membership
                    .membership()
                    .nodes()
                    .map(|(id, info)| (NodeId(*id), info.clone()))
                    .collect();
                let up = nodes
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| !down.contains(&id.0));
                let ring = Ring::new(up, epoch, DEFAULT_VNODES);
                tracing::info!(%epoch, members = nodes.len(), down = down.len(), "ring changed");
                let _ = nodes_tx.send(Arc::new(nodes));
                let _ = ring_tx.send(Arc::new(ring));
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The leader's failure detector. Every few hundred milliseconds the leader pings each
/// member; one it has not heard from for `timeout` is marked down through Raft (the ring
/// drops it, so its conversations and users move to nodes that answer, which catch up from
/// the replicas), and one that answers again for a few rounds is marked up. Only the leader
/// decides, and the decision is a log entry, so every node moves ownership at the same epoch.
fn spawn_failure_detector(meta: std::sync::Weak<Metadata>, timeout: Duration) {
    use std::collections::HashMap;
    let period = Duration::from_millis(300)
        .min(timeout / 2)
        .max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut last_ok: HashMap<u64, tokio::time::Instant> = HashMap::new();
        let mut ok_streak: HashMap<u64, u32> = HashMap::new();
        // The leader seen while following: when this node takes over, that one has been
        // silent for at least an election timeout already.
        let mut previous_leader: Option<u64> = None;
        let mut leading = false;
        loop {
            tokio::time::sleep(period).await;
            let Some(meta) = meta.upgrade() else { return };
            if !meta.is_leader() {
                last_ok.clear();
                ok_streak.clear();
                leading = false;
                previous_leader = meta.leader().map(|l| l.0).or(previous_leader);
                continue;
            }
            let down = meta.read(|s| s.down_nodes().clone());
            let now = tokio::time::Instant::now();
            if !leading {
                leading = true;
                // An election happened because the old leader went quiet: it is marked down
                // at the first ping it fails, not a whole failure timeout after this node
                // took over (so a killed leader's share moves about as fast as a follower's).
                if let Some(old) = previous_leader.filter(|l| *l != meta.node_id.0) {
                    last_ok.insert(old, now.checked_sub(timeout).unwrap_or(now));
                }
            }
            // A leader is reachable from a quorum by definition: if it was marked down while
            // it was cut off, and has now led for a few periods, it marks itself up (nobody
            // else runs this detector while it leads).
            let own = meta.node_id.0;
            let streak = ok_streak.entry(own).or_insert(0);
            *streak += 1;
            if down.contains(&own) && *streak >= 3 {
                tracing::info!(node = %meta.node_id, "leading while marked down; marking this node up");
                let _ = meta
                    .write(MetaCommand::SetNodeDown {
                        node: own,
                        down: false,
                    })
                    .await;
            }
            for (node, info) in meta.nodes().iter() {
                if *node == meta.node_id {
                    continue;
                }
                let seen = *last_ok.entry(node.0).or_insert(now);
                let ping = encode(&ClusterRequest::Ping);
                let answered = match ping {
                    Ok(bytes) => meta
                        .transport
                        .request(
                            &info.peer_addr,
                            Channel::Cluster,
                            bytes,
                            period.max(Duration::from_millis(250)),
                        )
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if answered {
                    last_ok.insert(node.0, tokio::time::Instant::now());
                    let streak = ok_streak.entry(node.0).or_insert(0);
                    *streak += 1;
                    if down.contains(&node.0) && *streak >= 3 {
                        tracing::info!(%node, "node answers again; marking it up");
                        let _ = meta
                            .write(MetaCommand::SetNodeDown {
                                node: node.0,
                                down: false,
                            })
                            .await;
                    }
                } else {
                    ok_streak.insert(node.0, 0);
                    if !down.contains(&node.0) && now.duration_since(seen) >= timeout {
                        tracing::warn!(%node, "node unreachable; marking it down");
                        let _ = meta
                            .write(MetaCommand::SetNodeDown {
                                node: node.0,
                                down: true,
                            })
                            .await;
                    }
                }
            }
        }
    });
}

/// Takes the queued writes off the queue as batches and proposes each, with at most
/// [`WRITE_BATCHES_IN_FLIGHT`] on their way; ends when the node's [`Metadata`] is dropped.
fn spawn_write_batcher(meta: Weak<Metadata>, mut queue: mpsc::UnboundedReceiver<QueuedWrite>) {
    let room = Arc::new(Semaphore::new(WRITE_BATCHES_IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let Ok(permit) = room.clone().acquire_owned().await else {
                return;
            };
            // What queued up while waiting for room goes together.
            let mut batch = vec![first];
            while batch.len() < MAX_WRITE_BATCH {
                match queue.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let Some(meta) = meta.upgrade() else {
                return;
            };
            tokio::spawn(async move {
                meta.write_batch(batch).await;
                drop(permit);
            });
        }
    });
}
