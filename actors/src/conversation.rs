//! The conversation actor: one per conversation, on its owner node, the single writer of the
//! conversation's log. Before it serves anything it catches up from the nodes that may hold
//! the log (see `replication`). Then, per send (one or more messages of one sender, in
//! order), it checks membership, lets the log deduplicate by client message id and assign the
//! next seqs in one write, replicates to a majority of the replica set, answers the sender,
//! and hands the messages to an ordered fan-out queue so that a slow recipient never delays
//! the next append.
//!
//! A retried send (same client message id) is replicated again before its answer: the first
//! attempt may have stored the message here and failed before reaching a quorum.
//!
//! Membership is the actor's own: the members as of the log's head, moved on by each group
//! change note as it is written. Who may send and read, and who each message reaches, is
//! decided by the message's place in the log, not by when the metadata changed: a message
//! written before a removal reaches the removed member, one written before an addition does
//! not reach the new member, however long either waited in the fan-out queue. Should a
//! change's note never come (the node that made the change died between the Raft commit and
//! the note), the actor takes the metadata's members once they have differed from its own for
//! [`MEMBERS_STALE_AFTER`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use chat_storage::{AppendRequest, ConversationLog};
use chat_types::{
    ConversationId, GroupChange, Message, MessageRef, NodeId, RingEpoch, Seq, UserId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::connection::ConnRef;
use crate::error::ActorError;
use crate::logs::{Entries, LogRef};
use crate::peer_wire::{Appended, Draft};
use crate::router::Router;
use crate::session::Outgoing;

/// A conversation's members, sorted, as of one place in its log.
type Members = Arc<[UserId]>;

fn members_from(mut users: Vec<UserId>) -> Members {
    users.sort_unstable();
    users.dedup();
    users.into()
}

/// A message to deliver and who it reaches.
struct Delivery {
    message: Message,
    /// The sending connection, which already shows the message.
    origin: Option<ConnRef>,
    /// Its place in the backlog (none for messages a previous owner left undelivered).
    permit: Option<OwnedSemaphorePermit>,
    /// The members as of the message's place in the log. Consecutive deliveries share one
    /// `Arc` until a membership change, which is how a batch knows where to end.
    recipients: Members,
}

/// Messages of one conversation acknowledged but not yet delivered to every member, at
/// most. A conversation whose members' sessions fall behind its senders makes the next send
/// wait for room, so that delivery latency stays bounded instead of a backlog growing
/// without end (the acks slow down to the rate pushes can go out).
const MAX_FANOUT_BACKLOG: usize = 128;

/// Messages delivered together at most: what queued up while the previous batch went out.
const MAX_DELIVERY_BATCH: usize = 64;

/// How long the actor's members may differ from the metadata's before it takes the
/// metadata's: longer than a change's note takes to follow it (`await_group_change` waits up
/// to 5 s for this node to apply the change first).
const MEMBERS_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// How often, at most, a group's actor compares its members with the metadata's (a send or
/// history read triggers the comparison).
const MEMBERS_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Tries per member and message before a live delivery is given up (about 30 s).
const DELIVERY_ATTEMPTS: u32 = 20;

pub enum ConversationMsg {
    /// Catch up and deliver what a previous owner left undelivered, without a client request.
    Wake,
    /// Messages of one sender, stored in the order given, in one write and one replication
    /// round. A group change's note travels alone.
    Append {
        sender: UserId,
        drafts: Vec<Draft>,
        origin: Option<ConnRef>,
        reply: RpcReplyPort<Result<Vec<Appended>, ActorError>>,
    },
    History {
        reader: UserId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
        reply: RpcReplyPort<Result<(Seq, Vec<Message>), ActorError>>,
    },
}

pub struct ConversationActor;

pub struct ConversationArgs {
    pub conversation: ConversationId,
    pub log: Arc<dyn ConversationLog>,
    pub router: Weak<Router>,
}

pub struct ConversationState {
    conversation: ConversationId,
    log: Arc<dyn ConversationLog>,
    router: Weak<Router>,
    /// The ring epoch this actor caught up at; `None` until it has.
    synced_at: Option<RingEpoch>,
    fanout: mpsc::UnboundedSender<Delivery>,
    /// The members as of the log's head (see the module doc); `None` until first needed, and
    /// after a change note could not be written (the metadata is then the best account).
    members: Option<Members>,
    /// When `members` was last compared with the metadata's.
    members_checked: tokio::time::Instant,
    /// Since when they have differed, as far as the comparisons saw.
    members_differ_since: Option<tokio::time::Instant>,
    /// One permit per message a client's send put in the fan-out queue (see
    /// [`MAX_FANOUT_BACKLOG`]).
    backlog: Arc<Semaphore>,
    /// Set when the actor stops: its delivery task then stops too.
    stopped: Arc<AtomicBool>,
}

impl ConversationState {
    /// Catches up when not yet done under the current ring; returns the router and the ring
    /// to write under.
    async fn ready(&mut self) -> Result<(Arc<Router>, Arc<chat_cluster::Ring>), ActorError> {
        let log = LogRef::Conversation(self.conversation);
        let (router, ring, fresh) =
            crate::replication::synced(&self.router, log, &mut self.synced_at).await?;
        if fresh {
            self.deliver_again()?;
        }
        Ok((router, ring))
    }

    /// The members as this node's metadata has them now; `None` once the node is stopping.
    fn agreed_members(&self) -> Option<Members> {
        let router = self.router.upgrade()?;
        Some(members_from(router.members_of(&self.conversation)))
    }

    /// The members as of the log's head, loaded from this node's metadata when not yet known.
    fn members(&mut self) -> Members {
        if let Some(m) = &self.members {
            return m.clone();
        }
        let Some(m) = self.agreed_members() else {
            return members_from(Vec::new());
        };
        self.members = Some(m.clone());
        m
    }

    /// Takes the metadata's members when they have differed from the actor's for
    /// [`MEMBERS_STALE_AFTER`]: a change was agreed whose note never came. Compares at most
    /// every [`MEMBERS_CHECK_EVERY`].
    fn reconcile_members(&mut self) {
        if self.members.is_none()
            || self.conversation.group_id().is_none()
            || self.members_checked.elapsed() < MEMBERS_CHECK_EVERY
        {
            return;
        }
        self.members_checked = tokio::time::Instant::now();
        let Some(agreed) = self.agreed_members() else {
            return;
        };
        if self.members.as_ref() == Some(&agreed) {
            self.members_differ_since = None;
            return;
        }
        let since = *self
            .members_differ_since
            .get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= MEMBERS_STALE_AFTER {
            tracing::warn!(
                conv = %self.conversation,
                "members differ from the metadata's with no change note; taking the metadata's"
            );
            self.members = Some(agreed);
            self.members_differ_since = None;
        }
    }

    /// Stores `drafts` in order (see [`ConversationMsg::Append`]), replicates them to a
    /// majority, queues them for delivery and returns one outcome per draft. An error for
    /// the whole batch means none was acknowledged.
    async fn append(
        &mut self,
        sender: UserId,
        drafts: Vec<Draft>,
        origin: Option<ConnRef>,
    ) -> Result<Vec<Appended>, ActorError> {
        let change = match drafts.as_slice() {
            [Draft {
                refers: Some(MessageRef::Group { change }),
                ..
            }] => Some(*change),
            _ => None,
        };
        if change.is_none() {
            self.reconcile_members();
        }
        let before = self.members();
        // Who these messages reach, and the members after them when they change them.
        let (recipients, after) = match (change, self.router.upgrade()) {
            (Some(change), Some(router)) => {
                // The change is agreed in Raft; before its note goes into the log, this
                // node's copy of the metadata must show it.
                router.await_group_change(&self.conversation, change).await;
                let after = members_after(&router, &self.conversation, change);
                let recipients = note_recipients(&before, &after, change);
                if after == before {
                    (recipients, None)
                } else {
                    // Until the note is stored, the metadata is the best account.
                    self.members = None;
                    (recipients, Some(after))
                }
            }
            _ if before.binary_search(&sender).is_err() => return Err(ActorError::Forbidden),
            _ => (before, None),
        };
        let (router, ring) = self.ready().await?;
        let epoch = ring.epoch();
        let ts_ms = now_ms();
        // Each draft's own checks; what passes is stored, in order.
        let mut outcomes: Vec<Option<Appended>> = Vec::with_capacity(drafts.len());
        let mut reqs = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let refused = match draft.refers {
                Some(MessageRef::Group { .. }) if change.is_none() => Err(
                    ActorError::InvalidArgument("a group change's note travels alone".into()),
                ),
                refers => check_refers(&*self.log, &self.conversation, sender, refers),
            };
            if let Err(e) = refused {
                outcomes.push(Some(Err(e)));
                continue;
            }
            outcomes.push(None);
            reqs.push(AppendRequest {
                conversation: self.conversation,
                sender,
                client_msg_id: draft.client_msg_id,
                body: draft.body,
                ts_ms,
                refers: draft.refers,
                attachments: draft.attachments,
                epoch,
            });
        }
        if reqs.is_empty() {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        // Room in the fan-out backlog before the messages are stored and acknowledged.
        let mut permit = self
            .backlog
            .clone()
            .acquire_many_owned(reqs.len().min(MAX_FANOUT_BACKLOG) as u32)
            .await
            .ok();
        // An fsyncing write runs on the blocking pool, where concurrent appends of different
        // conversations share RocksDB's group commit; a WAL write inline.
        let log = self.log.clone();
        let written = if log.syncs() {
            tokio::task::spawn_blocking(move || log.append_many(reqs))
                .await
                .unwrap_or_else(|e| {
                    Err(chat_storage::StorageError::Io(format!(
                        "append task failed: {e}"
                    )))
                })
        } else {
            log.append_many(reqs)
        };
        let stored = match written {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(conv = %self.conversation, error = %e, "append failed");
                // A fence newer than our ring: another owner took over; catch up anew.
                self.synced_at = None;
                return Err(ActorError::Unavailable(
                    "the conversation is moving; retry".into(),
                ));
            }
        };
        // A retried send goes out again as stored, with the epoch of the owner that first
        // wrote it, so that every replica ends up with the same entry (once per seq).
        let mut entries = std::collections::BTreeMap::new();
        for outcome in &stored {
            entries
                .entry(outcome.message.seq)
                .or_insert_with(|| chat_storage::Written {
                    message: outcome.message.clone(),
                    epoch: outcome.epoch,
                });
        }
        let entries = Entries::Messages(entries.into_values().collect());
        let log_ref = LogRef::Conversation(self.conversation);
        let replicated = if router.breakage.ack_before_quorum {
            // Deliberately broken (tests only): acknowledge now, replicate later.
            let (router, ring) = (router.clone(), ring.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                let _ = router.replicate_quorum(log_ref, &ring, entries).await;
            });
            Ok(())
        } else {
            router.replicate_quorum(log_ref, &ring, entries).await
        };
        if let Err(e) = replicated {
            tracing::warn!(conv = %self.conversation, first = %stored[0].message.seq, count = stored.len(), error = %e, "no replica quorum; not acknowledged");
            // Catch up again before the next append: this node may no longer be the owner
            // others see, and must not pile up writes nobody acknowledged.
            self.synced_at = None;
            return Err(ActorError::Unavailable(format!(
                "not stored on a majority of replicas; retry with the same client_msg_id ({e})"
            )));
        }
        if change.is_some() {
            // A note came: whatever difference was seen before may be this one.
            self.members_differ_since = None;
        }
        if after.is_some() {
            self.members = after;
        }
        let mut stored = stored.into_iter();
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            let Some(outcome) = stored.next() else { break };
            if !outcome.duplicate {
                // One backlog place per message; a batch larger than the whole backlog
                // shares the last.
                let place = match permit.as_mut() {
                    Some(p) if p.num_permits() > 1 => p.split(1),
                    _ => permit.take(),
                };
                let _ = self.fanout.send(Delivery {
                    message: outcome.message.clone(),
                    origin,
                    permit: place,
                    recipients: recipients.clone(),
                });
            }
            *slot = Some(Ok((outcome.message, outcome.duplicate)));
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(ActorError::BadPayload("no outcome".into()))))
            .collect())
    }

    /// Queues for delivery every stored message beyond the delivery watermark: a previous
    /// owner may have acknowledged them and died before they reached every member.
    fn deliver_again(&mut self) -> Result<(), ActorError> {
        let recipients = self.members();
        let after = self
            .log
            .delivered(&self.conversation)
            .map_err(crate::logs::storage_error)?;
        for message in stored_between(&*self.log, &self.conversation, after, None)? {
            let _ = self.fanout.send(Delivery {
                message,
                origin: None,
                permit: None,
                recipients: recipients.clone(),
            });
        }
        Ok(())
    }
}

/// The stored messages after `after` and, when given, before `before`, read in pages.
fn stored_between(
    log: &dyn ConversationLog,
    conversation: &ConversationId,
    mut after: Seq,
    before: Option<Seq>,
) -> Result<Vec<Message>, ActorError> {
    let mut out = Vec::new();
    while before.is_none_or(|b| after.0 + 1 < b.0) {
        let page = log
            .read_after(conversation, after, 500)
            .map_err(crate::logs::storage_error)?;
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        out.extend(
            page.into_iter()
                .filter(|m| before.is_none_or(|b| m.seq < b)),
        );
        after = last;
    }
    Ok(out)
}

/// Delivers consecutive messages to the members whose home is `node`, retrying for a while;
/// false when it gave up (or the actor stopped).
async fn deliver_with_retries(
    router: &Router,
    node: NodeId,
    users: Vec<UserId>,
    messages: &[Outgoing],
    stopped: &AtomicBool,
) -> bool {
    let mut delay = std::time::Duration::from_millis(50);
    for attempt in 1..=DELIVERY_ATTEMPTS {
        if attempt > 1 && stopped.load(Ordering::Acquire) {
            return false;
        }
        match router
            .deliver_batch(node, users.clone(), messages.to_vec())
            .await
        {
            Ok(()) => return true,
            Err(e) if attempt == DELIVERY_ATTEMPTS => tracing::warn!(
                conv = %messages[0].0.conversation,
                first = %messages[0].0.seq,
                count = messages.len(),
                %node,
                error = %e,
                "delivery failed; the next owner of the conversation delivers it again"
            ),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    false
}

/// The delivery side of one conversation actor. Deliveries leave in log order, and the
/// watermark never passes a message that has not gone out: an actor that stopped while a
/// newer one had started (a ring change while a request was in hand) may have appended a
/// message its own queue then abandoned, so a batch that does not follow on from what was
/// delivered first sends what lies between from the log.
struct Fanout {
    conversation: ConversationId,
    log: Arc<dyn ConversationLog>,
    /// A message could not be delivered: the watermark stays below it, so that the next actor
    /// for this conversation delivers it (and what follows) again.
    stuck: bool,
    /// The seq after the last one this task sent.
    next: Option<Seq>,
}

impl Fanout {
    async fn deliver(&mut self, router: &Router, batch: Vec<Delivery>, stopped: &AtomicBool) {
        let recipients = batch[0].recipients.clone();
        // Everything up to the watermark has gone out, whoever sent it.
        let delivered = self.log.delivered(&self.conversation).unwrap_or(Seq(0));
        let from = self.next.unwrap_or(Seq(0)).max(Seq(delivered.0 + 1));
        let mut permits = Vec::with_capacity(batch.len());
        let mut messages: Vec<Outgoing> = Vec::with_capacity(batch.len());
        for d in batch {
            permits.push(d.permit);
            if d.message.seq >= from {
                messages.push((d.message, d.origin));
            }
        }
        let Some(last) = messages.iter().map(|(m, _)| m.seq).max() else {
            return;
        };
        let follows_on = messages
            .iter()
            .enumerate()
            .all(|(i, (m, _))| m.seq.0 == from.0 + i as u64);
        if !follows_on && !self.stuck {
            let origins: std::collections::HashMap<Seq, ConnRef> = messages
                .iter()
                .filter_map(|(m, o)| o.map(|o| (m.seq, o)))
                .collect();
            let after = Seq(from.0.saturating_sub(1));
            match stored_between(&*self.log, &self.conversation, after, Some(Seq(last.0 + 1))) {
                Ok(stored) => {
                    tracing::debug!(conv = %self.conversation, %from, %last, queued = messages.len(), "delivering from the log what another actor left");
                    messages = stored
                        .into_iter()
                        .map(|m| {
                            let origin = origins.get(&m.seq).copied();
                            (m, origin)
                        })
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(conv = %self.conversation, error = %e, "cannot read undelivered messages");
                    self.stuck = true;
                }
            }
        }
        let homes = router.by_home(&recipients);
        for chunk in messages.chunks(MAX_DELIVERY_BATCH) {
            let mut all_delivered = true;
            for (node, users) in &homes {
                if !deliver_with_retries(router, *node, users.clone(), chunk, stopped).await {
                    all_delivered = false;
                }
            }
            self.stuck |= !all_delivered;
        }
        self.next = Some(Seq(last.0 + 1));
        if !self.stuck {
            // A WAL write, no fsync: inline.
            let _ = self.log.set_delivered(&self.conversation, last);
        }
        drop(permits);
    }
}

/// The members once `change` has taken effect: this node's metadata, which shows the change
/// once `await_group_change` has returned, with the change applied again in case that wait
/// ran out.
fn members_after(router: &Router, conversation: &ConversationId, change: GroupChange) -> Members {
    let mut users = router.members_of(conversation);
    match change {
        GroupChange::MemberAdded { user } => users.push(user),
        GroupChange::MemberRemoved { user } | GroupChange::MemberLeft { user } => {
            users.retain(|u| *u != user)
        }
        GroupChange::Deleted => users.clear(),
        GroupChange::Created
        | GroupChange::Updated
        | GroupChange::OwnerChanged { .. }
        | GroupChange::RoleChanged { .. } => {}
    }
    members_from(users)
}

/// Who a change note reaches: the members before it and after it, so that whoever it removes
/// learns of it (then hears nothing more), whoever it adds learns of it, and a deletion
/// reaches everyone who was in the group.
fn note_recipients(before: &Members, after: &Members, change: GroupChange) -> Members {
    let mut users: Vec<UserId> = before.iter().chain(after.iter()).copied().collect();
    if let GroupChange::MemberRemoved { user } | GroupChange::MemberLeft { user } = change {
        // Also when this actor first loaded its members after the change was agreed.
        users.push(user);
    }
    members_from(users)
}

/// A reply, edit, deletion or reaction must name an existing plain message (or reply) of
/// this conversation; only its sender may edit or delete it.
fn check_refers(
    log: &dyn ConversationLog,
    conv: &ConversationId,
    sender: UserId,
    refers: Option<MessageRef>,
) -> Result<(), ActorError> {
    let Some(r) = refers else {
        return Ok(());
    };
    let Some(seq) = r.seq() else {
        // A group change: written by the node itself, after the metadata agreed to it.
        return Ok(());
    };
    let target = match seq.0.checked_sub(1) {
        Some(before) => log
            .read_after(conv, Seq(before), 1)
            .map_err(crate::logs::storage_error)?
            .into_iter()
            .next()
            .filter(|m| m.seq == seq),
        None => None,
    };
    let Some(target) = target else {
        return Err(ActorError::InvalidArgument(format!(
            "message {seq} does not exist in this conversation"
        )));
    };
    if !matches!(target.refers, None | Some(MessageRef::Reply { .. })) {
        return Err(ActorError::InvalidArgument(format!(
            "message {seq} is an edit, deletion or reaction; refer to the original"
        )));
    }
    match r {
        MessageRef::Edit { .. } | MessageRef::Delete { .. } if target.sender != sender => {
            Err(ActorError::Forbidden)
        }
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<ConversationState, ActorProcessingErr> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let stopped = Arc::new(AtomicBool::new(false));
        let stop_seen = stopped.clone();
        let router = args.router.clone();
        let log = args.log.clone();
        let conversation = args.conversation;
        // Deliveries leave in seq order, sent once per node that is home to some member
        // (never once per member across the network), where each becomes an event of each
        // member's stream. A failed delivery is retried (event streams deduplicate) before
        // the next message goes out; once a message has reached every member, the delivery
        // watermark moves past it. Once the actor has stopped (the ring changed) the queue is
        // abandoned: the next actor delivers again from the watermark.
        tokio::spawn(async move {
            let mut fanout = Fanout {
                conversation,
                log,
                stuck: false,
                next: None,
            };
            // A message taken off the queue that must start the next batch.
            let mut next: Option<Delivery> = None;
            loop {
                let first = match next.take() {
                    Some(d) => d,
                    None => match rx.recv().await {
                        Some(d) => d,
                        None => return,
                    },
                };
                // What queued up while the last batch went out goes out together: one write
                // per member's stream and one request per node for all of it. A batch ends
                // where the membership changes, as that changes who the messages after it
                // reach. Each message's permit is released once it has gone out.
                let mut batch = vec![first];
                while batch.len() < MAX_DELIVERY_BATCH {
                    match rx.try_recv() {
                        Ok(d) if Arc::ptr_eq(&d.recipients, &batch[0].recipients) => batch.push(d),
                        Ok(d) => {
                            next = Some(d);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if stop_seen.load(Ordering::Acquire) {
                    return;
                }
                let Some(router) = router.upgrade() else {
                    return;
                };
                fanout.deliver(&router, batch, &stop_seen).await;
            }
        });
        Ok(ConversationState {
            conversation: args.conversation,
            log: args.log,
            router: args.router,
            synced_at: None,
            fanout: tx,
            members: None,
            members_checked: tokio::time::Instant::now(),
            members_differ_since: None,
            backlog: Arc::new(Semaphore::new(MAX_FANOUT_BACKLOG)),
            stopped,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopped.store(true, Ordering::Release);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: ConversationMsg,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationMsg::Append {
                sender,
                drafts,
                origin,
                reply,
            } => {
                let _ = reply.send(state.append(sender, drafts, origin).await);
            }
            ConversationMsg::Wake => {
                if let Err(e) = state.ready().await {
                    tracing::warn!(conv = %state.conversation, error = %e, "taking over failed; the next request retries");
                }
            }
            ConversationMsg::History {
                reader,
                after,
                before,
                limit,
                reply,
            } => {
                state.reconcile_members();
                // A new owner answers only after it has caught up.
                let page = match state.ready().await {
                    Ok(_) if state.members().binary_search(&reader).is_err() => {
                        Err(ActorError::Forbidden)
                    }
                    Ok(_) => read_page(&*state.log, &state.conversation, after, before, limit),
                    Err(e) => Err(e),
                };
                let _ = reply.send(page);
            }
        }
        Ok(())
    }
}

fn read_page(
    log: &dyn ConversationLog,
    conv: &ConversationId,
    after: Option<Seq>,
    before: Option<Seq>,
    limit: u32,
) -> Result<(Seq, Vec<Message>), ActorError> {
    let storage = |e: chat_storage::StorageError| {
        tracing::error!(conv = %conv, error = %e, "history read failed");
        ActorError::Storage
    };
    let head = log.head(conv).map_err(storage)?;
    let limit = limit as usize;
    let messages = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ActorError::InvalidArgument(
                "give at most one of after and before".into(),
            ))
        }
        (Some(after), None) => log.read_after(conv, after, limit).map_err(storage)?,
        (None, Some(before)) => log.read_before(conv, before, limit).map_err(storage)?,
        (None, None) => log.read_before(conv, head.next(), limit).map_err(storage)?,
    };
    Ok((head, messages))
}
