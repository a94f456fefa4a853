//! Replicated conversation logs: the owner's quorum writes, a new owner's catch-up, and the
//! replica side of both.
//!
//! Each conversation's log lives on its owner and the next distinct nodes of the ring
//! ([`REPLICATION_FACTOR`] in all, fewer on smaller clusters). The owner stores a message,
//! sends it to the other replicas, and acknowledges once a majority of the replica set
//! (itself included) holds it; slower replicas finish in the background.
//!
//! Why a new owner cannot lose an acknowledged message or hand out a seq twice: before it
//! serves, it *seals* every node that may hold the log (the replica sets of every ring it has
//! seen that are still members) at its epoch, which makes those logs refuse the old owner's
//! writes from then on; then it fetches whatever they hold beyond its own head. An
//! acknowledged message is on a majority of some earlier replica set, and at least one of
//! those nodes is still a member (one node lost of three), so the catch-up finds it. If any
//! such node does not answer, the owner refuses to serve (`unavailable`, retry) rather than
//! guess: a dead node must be removed from the ring first.

use std::collections::BTreeSet;
use std::time::Duration;

use chat_cluster::ring::{conversation_key, Ring};
use chat_storage::StorageError;
use chat_types::{ConversationId, Message, NodeId, RingEpoch, Seq};
use tokio::task::JoinSet;

use crate::error::ActorError;
use crate::peer_wire::{ActorReply, ActorRequestBody};
use crate::router::{lock, Router};

/// Copies of each conversation log, the owner included.
pub const REPLICATION_FACTOR: usize = 3;
/// Messages per catch-up or repair page.
const PAGE: u32 = 500;
const SEAL_ATTEMPTS: u32 = 10;

fn storage_error(e: StorageError) -> ActorError {
    match e {
        StorageError::StaleEpoch { fence, .. } => ActorError::StaleEpoch {
            fence: RingEpoch(fence),
        },
        other => {
            tracing::error!(error = %other, "conversation log failure");
            ActorError::Storage
        }
    }
}

/// Runs a log write (which may fsync) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ActorError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("log task failed: {e}"))))
        .map_err(storage_error)
}

/// The replica set of `conv` under `ring`, owner first.
pub fn replicas(ring: &Ring, conv: &ConversationId) -> Vec<NodeId> {
    ring.successors(&conversation_key(conv), REPLICATION_FACTOR)
}

impl Router {
    pub(crate) fn ring(&self) -> std::sync::Arc<Ring> {
        self.meta.ring()
    }

    /// Sends a request to one specific node (no ownership routing).
    async fn direct(
        &self,
        node: NodeId,
        epoch: RingEpoch,
        body: ActorRequestBody,
    ) -> Result<ActorReply, ActorError> {
        if node == self.node_id {
            return Err(ActorError::BadPayload(
                "a node does not replicate to itself".into(),
            ));
        }
        self.remote(node, epoch, body).await
    }

    /// Replicates `messages` (consecutive, of one conversation, already stored here) to the
    /// other replicas under `ring`, and returns once a majority of the replica set holds them.
    pub(crate) async fn replicate_quorum(
        &self,
        conv: ConversationId,
        ring: &Ring,
        messages: Vec<Message>,
    ) -> Result<(), ActorError> {
        let set = replicas(ring, &conv);
        let majority = set.len() / 2 + 1;
        let mut acks = usize::from(set.contains(&self.node_id));
        let others: Vec<NodeId> = set.into_iter().filter(|n| *n != self.node_id).collect();
        if acks >= majority && others.is_empty() {
            return Ok(());
        }
        let Some(me) = self.me.upgrade() else {
            return Err(ActorError::Unavailable("node is shutting down".into()));
        };
        let epoch = ring.epoch();
        let mut tasks = JoinSet::new();
        for node in others {
            let me = me.clone();
            let messages = messages.clone();
            tasks.spawn(async move { me.replicate_to(node, conv, epoch, messages).await });
        }
        let mut last_err = None;
        while acks < majority {
            match tasks.join_next().await {
                Some(Ok(Ok(()))) => acks += 1,
                Some(Ok(Err(e))) => last_err = Some(e),
                Some(Err(e)) => last_err = Some(ActorError::Unavailable(e.to_string())),
                None => {
                    return Err(match last_err {
                        Some(ActorError::StaleEpoch { fence }) => ActorError::StaleEpoch { fence },
                        Some(e) => ActorError::Unavailable(format!("no replica quorum: {e}")),
                        None => ActorError::Unavailable("no replica quorum".into()),
                    })
                }
            }
        }
        // The rest finish on their own; a replica that misses them is repaired later.
        tasks.detach_all();
        Ok(())
    }

    /// Sends messages to one replica, first filling the replica's gap if it is behind.
    async fn replicate_to(
        &self,
        node: NodeId,
        conv: ConversationId,
        epoch: RingEpoch,
        messages: Vec<Message>,
    ) -> Result<(), ActorError> {
        let body = ActorRequestBody::Replicate {
            conversation: conv,
            epoch,
            messages: messages.clone(),
        };
        match self.direct(node, epoch, body).await {
            Ok(_) => Ok(()),
            Err(ActorError::Gap { head }) => {
                let upto = messages.first().map(|m| m.seq).unwrap_or(Seq(0));
                self.push_range(node, conv, epoch, head, upto).await?;
                let body = ActorRequestBody::Replicate {
                    conversation: conv,
                    epoch,
                    messages,
                };
                self.direct(node, epoch, body).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the local messages with seq in (`after`, `before`) to `node`, in pages.
    async fn push_range(
        &self,
        node: NodeId,
        conv: ConversationId,
        epoch: RingEpoch,
        mut after: Seq,
        before: Seq,
    ) -> Result<(), ActorError> {
        while after.next() < before {
            let page = self
                .log
                .read_after(&conv, after, PAGE as usize)
                .map_err(storage_error)?;
            let page: Vec<Message> = page.into_iter().filter(|m| m.seq < before).collect();
            let Some(last) = page.last().map(|m| m.seq) else {
                break;
            };
            let body = ActorRequestBody::Replicate {
                conversation: conv,
                epoch,
                messages: page,
            };
            self.direct(node, epoch, body).await?;
            after = last;
        }
        Ok(())
    }

    /// Makes this node's log of `conv` complete before it serves as owner under `ring`:
    /// seals every node that may hold the log, fetches what they hold beyond the local head,
    /// then brings the current replicas up to the same head.
    pub(crate) async fn catch_up(
        &self,
        conv: ConversationId,
        ring: &Ring,
    ) -> Result<(), ActorError> {
        let epoch = ring.epoch();
        let members: BTreeSet<NodeId> = ring.members().iter().copied().collect();
        let mut sources: BTreeSet<NodeId> = BTreeSet::new();
        for old in lock(&self.rings).iter() {
            sources.extend(replicas(old, &conv));
        }
        sources.extend(replicas(ring, &conv));
        sources.remove(&self.node_id);
        sources.retain(|n| members.contains(n));

        let log = self.log.clone();
        blocking(move || log.seal(&conv, epoch)).await?;
        let mut heads: Vec<(NodeId, Seq)> = Vec::new();
        for node in sources {
            heads.push((node, self.seal_with_retry(node, conv, epoch).await?));
        }
        // Fetch from the fullest source first; the others then only add what it lacked.
        heads.sort_by_key(|h| std::cmp::Reverse(h.1));
        for (node, their_head) in &heads {
            let mut local = self.log.head(&conv).map_err(storage_error)?;
            while local < *their_head {
                let body = ActorRequestBody::Fetch {
                    conversation: conv,
                    after: local,
                    limit: PAGE,
                };
                let page = match self.direct(*node, epoch, body).await? {
                    ActorReply::History { messages, .. } => messages,
                    _ => return Err(ActorError::BadPayload("unexpected reply to fetch".into())),
                };
                if page.is_empty() {
                    break;
                }
                let log = self.log.clone();
                local = blocking(move || log.apply_replicated(epoch, &page)).await?;
            }
        }
        let head = self.log.head(&conv).map_err(storage_error)?;
        for node in replicas(ring, &conv) {
            if node == self.node_id {
                continue;
            }
            let theirs = heads
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, h)| *h)
                .unwrap_or(Seq(0));
            if theirs < head {
                if let Err(e) = self
                    .push_range(node, conv, epoch, theirs, head.next())
                    .await
                {
                    tracing::warn!(conv = %conv, %node, error = %e, "replica repair failed");
                }
            }
        }
        tracing::debug!(conv = %conv, %epoch, %head, "caught up");
        Ok(())
    }

    async fn seal_with_retry(
        &self,
        node: NodeId,
        conv: ConversationId,
        epoch: RingEpoch,
    ) -> Result<Seq, ActorError> {
        let mut delay = Duration::from_millis(50);
        let mut last = ActorError::Unavailable(format!("node {node} did not answer"));
        for _ in 0..SEAL_ATTEMPTS {
            let body = ActorRequestBody::Seal {
                conversation: conv,
                epoch,
            };
            match self.direct(node, epoch, body).await {
                Ok(ActorReply::Head(h)) => return Ok(h),
                Ok(_) => return Err(ActorError::BadPayload("unexpected reply to seal".into())),
                Err(e @ ActorError::StaleEpoch { .. }) => return Err(e),
                Err(e) => last = e,
            }
            if !self.ring().members().contains(&node) {
                return Ok(Seq(0));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(800));
        }
        Err(ActorError::Unavailable(format!(
            "cannot take over {conv}: {last}"
        )))
    }

    // ----- the replica side --------------------------------------------------------------

    pub(crate) async fn serve_replicate(
        &self,
        conv: ConversationId,
        epoch: RingEpoch,
        messages: Vec<Message>,
    ) -> Result<ActorReply, ActorError> {
        if messages.iter().any(|m| m.conversation != conv) {
            return Err(ActorError::BadPayload(
                "messages of another conversation".into(),
            ));
        }
        let head = self.log.head(&conv).map_err(storage_error)?;
        if let Some(first) = messages.first() {
            if first.seq > head.next() {
                return Err(ActorError::Gap { head });
            }
        }
        let log = self.log.clone();
        let head = blocking(move || log.apply_replicated(epoch, &messages)).await?;
        Ok(ActorReply::Head(head))
    }

    pub(crate) async fn serve_seal(
        &self,
        conv: ConversationId,
        epoch: RingEpoch,
    ) -> Result<ActorReply, ActorError> {
        let log = self.log.clone();
        blocking(move || log.seal(&conv, epoch))
            .await
            .map(ActorReply::Head)
    }

    pub(crate) fn serve_fetch(
        &self,
        conv: ConversationId,
        after: Seq,
        limit: u32,
    ) -> Result<ActorReply, ActorError> {
        let head = self.log.head(&conv).map_err(storage_error)?;
        let messages = self
            .log
            .read_after(&conv, after, limit.min(PAGE) as usize)
            .map_err(storage_error)?;
        Ok(ActorReply::History { head, messages })
    }
}
