//! Replicated logs (conversation logs and user event streams): the owner's quorum writes, a
//! new owner's catch-up, and the replica side of both.
//!
//! Each log lives on its owner and the next distinct nodes of the ring
//! ([`REPLICATION_FACTOR`] in all, fewer on smaller clusters). The owner stores an entry,
//! sends it to the other replicas, and acknowledges once a majority of the replica set
//! (itself included) holds it; slower replicas finish in the background.
//!
//! Why a new owner cannot lose an acknowledged entry or hand out a position twice: before it
//! serves, it *seals* every node that may hold the log (the replica sets of every ring it has
//! seen that are still members) at its epoch, which makes those logs refuse the old owner's
//! writes from then on; then it fetches whatever they hold beyond its own head. An
//! acknowledged entry is on a majority of some earlier replica set, and at least one of
//! those nodes is still a member (one node lost of three), so the catch-up finds it. If any
//! such node does not answer, the owner refuses to serve (`unavailable`, retry) rather than
//! guess: a dead node must be removed from the ring first.

use std::collections::BTreeSet;
use std::time::Duration;

use chat_cluster::ring::Ring;
use chat_types::{NodeId, RingEpoch};
use tokio::task::JoinSet;

use crate::error::ActorError;
pub use crate::logs::REPLICATION_FACTOR;
use crate::logs::{Entries, LogRef};
use crate::peer_wire::{ActorReply, ActorRequestBody};
use crate::router::{lock, Router};

/// Entries per catch-up or repair page.
const PAGE: u32 = 500;
const SEAL_ATTEMPTS: u32 = 10;
/// How far below the shorter head a catch-up compares entries (see `catch_up`).
const RECONCILE_WINDOW: u64 = 16;

/// The owner side's entry point to a log: the router and the current ring, after catching
/// `log` up when `synced_at` is not the current epoch (then recorded). The flag says whether
/// a catch-up just happened. `NotOwner` when this node does not own `log` under the current
/// ring.
pub(crate) async fn synced(
    router: &std::sync::Weak<Router>,
    log: LogRef,
    synced_at: &mut Option<RingEpoch>,
) -> Result<(std::sync::Arc<Router>, std::sync::Arc<Ring>, bool), ActorError> {
    let router = router
        .upgrade()
        .ok_or_else(|| ActorError::Unavailable("node is shutting down".into()))?;
    let ring = router.ring();
    // A request can wait in an actor's mailbox while the ring moves its log elsewhere: only
    // the owner under the current ring may catch up and write at its epoch (two writers at
    // one epoch would hand out the same position twice).
    let owner = log.owner(&ring);
    if owner != Some(router.node_id) {
        *synced_at = None;
        return Err(ActorError::NotOwner {
            owner: owner.unwrap_or(router.node_id),
            epoch: ring.epoch(),
        });
    }
    let fresh = *synced_at != Some(ring.epoch());
    if fresh {
        router.catch_up(log, &ring).await?;
        *synced_at = Some(ring.epoch());
    }
    Ok((router, ring, fresh))
}

impl Router {
    pub(crate) fn ring(&self) -> std::sync::Arc<Ring> {
        self.meta.ring()
    }

    /// Sends a request to one specific node (no ownership routing).
    pub(crate) async fn direct(
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

    /// Replicates `entries` (consecutive, already stored here) to the other replicas of `log`
    /// under `ring`, and returns once a majority of the replica set holds them.
    pub(crate) async fn replicate_quorum(
        &self,
        log: LogRef,
        ring: &Ring,
        entries: Entries,
    ) -> Result<(), ActorError> {
        let set = log.replicas(ring);
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
        let watermark = self.logs.watermark(log)?;
        let mut tasks = JoinSet::new();
        for node in others {
            let me = me.clone();
            let entries = entries.clone();
            tasks.spawn(async move { me.replicate_to(node, log, epoch, entries, watermark).await });
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

    /// Sends entries to one replica, first filling the replica's gap if it is behind.
    async fn replicate_to(
        &self,
        node: NodeId,
        log: LogRef,
        epoch: RingEpoch,
        entries: Entries,
        watermark: u64,
    ) -> Result<(), ActorError> {
        let body = ActorRequestBody::Replicate {
            log,
            epoch,
            entries: entries.clone(),
            watermark,
        };
        match self.direct(node, epoch, body).await {
            Ok(_) => Ok(()),
            Err(ActorError::Gap { head }) => {
                let upto = entries.first().unwrap_or(0);
                self.push_range(node, log, epoch, head, upto).await?;
                let body = ActorRequestBody::Replicate {
                    log,
                    epoch,
                    entries,
                    watermark,
                };
                self.direct(node, epoch, body).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the local entries with position in (`after`, `before`) to `node`, in pages.
    async fn push_range(
        &self,
        node: NodeId,
        log: LogRef,
        epoch: RingEpoch,
        mut after: u64,
        before: u64,
    ) -> Result<(), ActorError> {
        while after + 1 < before {
            let page = self
                .logs
                .read_after(log, after, PAGE as usize)?
                .before(before);
            let Some(last) = page.last() else {
                break;
            };
            let body = ActorRequestBody::Replicate {
                log,
                epoch,
                entries: page,
                watermark: 0,
            };
            self.direct(node, epoch, body).await?;
            after = last;
        }
        Ok(())
    }

    /// Makes this node's copy of `log` complete before it serves as owner under `ring`:
    /// seals every node that may hold the log, fetches what they hold beyond the local head,
    /// then brings the current replicas up to the same head.
    pub(crate) async fn catch_up(&self, log: LogRef, ring: &Ring) -> Result<(), ActorError> {
        let epoch = ring.epoch();
        let members: BTreeSet<NodeId> = ring.members().iter().copied().collect();
        let mut sources: BTreeSet<NodeId> = BTreeSet::new();
        for old in lock(&self.rings).iter() {
            sources.extend(log.replicas(old));
        }
        sources.extend(log.replicas(ring));
        sources.remove(&self.node_id);
        sources.retain(|n| members.contains(n));

        self.logs.seal(log, epoch).await?;
        let mut heads: Vec<(NodeId, u64)> = Vec::new();
        let mut watermark = self.logs.watermark(log)?;
        for node in sources {
            let (head, theirs) = self.seal_with_retry(node, log, epoch).await?;
            heads.push((node, head));
            watermark = watermark.max(theirs);
        }
        // Fetch from the fullest source first; the others then only add what it lacked.
        heads.sort_by_key(|h| std::cmp::Reverse(h.1));
        for (node, their_head) in &heads {
            // Start a little below the shorter head: the last entries this node wrote as an
            // earlier owner may never have reached a quorum and been replaced by a newer
            // owner's (an owner whose quorum write fails stops appending until it has caught
            // up again, so there are only a few such entries). Fetched entries of a newer
            // epoch replace them.
            let local_head = self.logs.head(log)?;
            let mut after = local_head.min(*their_head).saturating_sub(RECONCILE_WINDOW);
            while after < *their_head {
                let body = ActorRequestBody::Fetch {
                    log,
                    after,
                    limit: PAGE,
                };
                let page = match self.direct(*node, epoch, body).await? {
                    ActorReply::Entries { entries, .. } => entries,
                    _ => return Err(ActorError::BadPayload("unexpected reply to fetch".into())),
                };
                let Some(last) = page.last() else {
                    break;
                };
                self.logs.apply(log, epoch, page).await?;
                after = last;
            }
        }
        let head = self.logs.head(log)?;
        self.logs.raise_watermark(log, watermark.min(head))?;
        for node in log.replicas(ring) {
            if node == self.node_id {
                continue;
            }
            let theirs = heads
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, h)| *h)
                .unwrap_or(0);
            if theirs < head {
                if let Err(e) = self.push_range(node, log, epoch, theirs, head + 1).await {
                    tracing::warn!(%log, %node, error = %e, "replica repair failed");
                }
            }
        }
        tracing::debug!(%log, %epoch, head, "caught up");
        Ok(())
    }

    async fn seal_with_retry(
        &self,
        node: NodeId,
        log: LogRef,
        epoch: RingEpoch,
    ) -> Result<(u64, u64), ActorError> {
        let mut delay = Duration::from_millis(50);
        let mut last = ActorError::Unavailable(format!("node {node} did not answer"));
        for _ in 0..SEAL_ATTEMPTS {
            match self
                .direct(node, epoch, ActorRequestBody::Seal { log, epoch })
                .await
            {
                Ok(ActorReply::Sealed { head, watermark }) => return Ok((head, watermark)),
                Ok(_) => return Err(ActorError::BadPayload("unexpected reply to seal".into())),
                Err(e @ ActorError::StaleEpoch { .. }) => return Err(e),
                Err(e) => last = e,
            }
            if !self.ring().members().contains(&node) {
                return Ok((0, 0));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(800));
        }
        Err(ActorError::Unavailable(format!(
            "cannot take over {log}: {last}"
        )))
    }

    // ----- the replica side --------------------------------------------------------------

    pub(crate) async fn serve_replicate(
        &self,
        log: LogRef,
        epoch: RingEpoch,
        entries: Entries,
        watermark: u64,
    ) -> Result<ActorReply, ActorError> {
        let head = self.logs.head(log)?;
        if let Some(first) = entries.first() {
            if first > head + 1 {
                return Err(ActorError::Gap { head });
            }
        }
        let head = self.logs.apply(log, epoch, entries).await?;
        self.logs.raise_watermark(log, watermark.min(head))?;
        Ok(ActorReply::Head(head))
    }

    pub(crate) async fn serve_seal(
        &self,
        log: LogRef,
        epoch: RingEpoch,
    ) -> Result<ActorReply, ActorError> {
        let head = self.logs.seal(log, epoch).await?;
        Ok(ActorReply::Sealed {
            head,
            watermark: self.logs.watermark(log)?,
        })
    }

    pub(crate) fn serve_fetch(
        &self,
        log: LogRef,
        after: u64,
        limit: u32,
    ) -> Result<ActorReply, ActorError> {
        let head = self.logs.head(log)?;
        let entries = self.logs.read_after(log, after, limit.min(PAGE) as usize)?;
        Ok(ActorReply::Entries { head, entries })
    }
}
