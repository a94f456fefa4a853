//! The correctness oracle: a history checker over what clients saw through the public protocol.
//!
//! The load generator records every event a client observes, in the order it observed them:
//! a send invoked, its ack (or failure), every push delivered to every connection, and at the
//! end a full read of each conversation's history. [`Checker::check`] then judges that record
//! against the delivery contract (DESIGN.md section 4) without knowing anything of the server:
//!
//! - **lost**: an acknowledged (or delivered) message is missing from the final history;
//! - **duplicated**: one sender's client message id is stored (or delivered) at two seqs;
//! - **gap**: the final history does not hold exactly the seqs `1..=head`;
//! - **disagreement**: two observers (an ack, a push, the history) name different messages at
//!   the same `(conversation, seq)`, or a stored body differs from the one sent;
//! - **phantom**: a message in the history or a push that no client of this run ever sent;
//! - **out of order**: a connection's pushes of one conversation do not strictly increase in
//!   seq, or a sender's message acknowledged before its next send was invoked was stored after
//!   that next one (the real-time order of one sender; concurrent sends of a window have no
//!   order to keep, as the protocol promises none between them);
//! - **undelivered**: a connection that stayed open missed the push of an acknowledged message
//!   of one of its user's conversations (sent after it opened, from another connection);
//! - **caught up on resume**: a user's successive connections that each resumed the event
//!   stream where the one before ended ([`Checker::observer_resumed`]) are one stream: a
//!   message pushed again after a resume is `duplicated`, one pushed below the highest seq
//!   an earlier connection had is `out of order`, and while the last one is open, an
//!   acknowledged message sent to the user after the first one opened that none of them got
//!   is `undelivered`;
//! - **misdelivered**: a push of a conversation reached a connection of a non-member;
//! - **unchecked**: a conversation whose history could not be read, so nothing above could be
//!   judged for it. It counts as a violation: the oracle never passes what it did not see;
//! - **search**: a search that must have exactly one known answer (a unique word planted in
//!   one acknowledged message, a user's own name, a conversation's member) returned something
//!   else. The driver judges each answer and records the mismatch with
//!   [`Checker::search_mismatch`].
//!
//! A send that failed (timeout, closed connection, a server error) has an unknown outcome: the
//! message may or may not be stored, and either is correct. Bodies are compared by hash, and no
//! body ever appears in a violation, so reports carry no message content.
//!
//! Groups: the members of a group conversation are declared with [`Checker::group_members`]
//! (a direct conversation's are in its id); a push of a group to anyone else is misdelivered.
//! The notes the server writes into a group's log (`refers: {"kind": "group"}`: created, member
//! added, ...) were sent by no client: they are not phantoms, but they must agree between the
//! pushes and the history like any other message.
//!
//! Every observed message is interned once (conversation, sender, client message id, body
//! hash), so that a push costs 16 bytes of memory: a group fan-out to 10,000 connections
//! records millions of them.
//!
//! The checker is plain data with `&mut self` methods and no I/O: the runner wraps it in a
//! mutex, and the unit tests below feed it good and deliberately broken histories.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use chat_types::{ClientMsgId, ConversationId, Message, MessageRef, Seq, UserId};
use serde::{Deserialize, Serialize};

/// One connection that receives pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObserverId(pub u32);

/// One invoked send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// An interned `(conversation, sender, client message id)`.
type KeyId = u32;
/// An interned message: a key, a body hash, and whether the server wrote it (a group note).
type MsgId = u32;

#[derive(Clone, Debug)]
struct Key {
    conv: ConversationId,
    sender: UserId,
    cmid: ClientMsgId,
}

#[derive(Clone, Copy, Debug)]
struct Msg {
    key: KeyId,
    body: u64,
    note: bool,
}

/// A message seen at a seq: by a push or in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    seq: Seq,
    msg: MsgId,
}

#[derive(Clone, Debug)]
enum Outcome {
    Pending,
    Acked { seq: Seq, duplicate: bool, at: u64 },
    Failed,
}

#[derive(Clone, Debug)]
struct Op {
    via: Option<ObserverId>,
    key: KeyId,
    body: u64,
    invoked_at: u64,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
struct Observer {
    user: UserId,
    opened_at: u64,
    closed: bool,
    deliveries: BTreeMap<ConversationId, Vec<Seen>>,
    /// The connection this one resumed the event stream of (see
    /// [`Checker::observer_resumed`]).
    resumed_from: Option<u32>,
    /// The server answered the resume with `resync`: the stream starts afresh here.
    resume_refused: bool,
}

#[derive(Clone, Debug)]
enum HistoryRead {
    Read { head: Seq, messages: Vec<Seen> },
    Failed(String),
}

/// Records what clients saw; [`Checker::check`] judges it.
#[derive(Clone, Debug, Default)]
pub struct Checker {
    clock: u64,
    ops: Vec<Op>,
    /// The first op of each key.
    sent: HashMap<KeyId, OpId>,
    observers: Vec<Observer>,
    conversations: BTreeSet<ConversationId>,
    histories: BTreeMap<ConversationId, HistoryRead>,
    groups: HashMap<ConversationId, HashSet<UserId>>,
    keys: Vec<Key>,
    key_index: HashMap<u64, Vec<KeyId>>,
    msgs: Vec<Msg>,
    msg_index: HashMap<(KeyId, u64, bool), MsgId>,
    searches: Vec<Violation>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn intern_key(&mut self, conv: ConversationId, sender: UserId, cmid: &ClientMsgId) -> KeyId {
        let mut h = DefaultHasher::new();
        (conv, sender, cmid.as_str()).hash(&mut h);
        let h = h.finish();
        if let Some(ids) = self.key_index.get(&h) {
            for &id in ids {
                let k = &self.keys[id as usize];
                if k.conv == conv && k.sender == sender && k.cmid == *cmid {
                    return id;
                }
            }
        }
        let id = self.keys.len() as KeyId;
        self.keys.push(Key {
            conv,
            sender,
            cmid: cmid.clone(),
        });
        self.key_index.entry(h).or_default().push(id);
        id
    }

    fn intern(&mut self, m: &Message) -> Seen {
        let key = self.intern_key(m.conversation, m.sender, &m.client_msg_id);
        let body = body_hash(&m.body);
        let note = matches!(m.refers, Some(MessageRef::Group { .. }));
        let next = self.msgs.len() as MsgId;
        let msg = *self.msg_index.entry((key, body, note)).or_insert(next);
        if msg == next {
            self.msgs.push(Msg { key, body, note });
        }
        Seen { seq: m.seq, msg }
    }

    fn key_of(&self, msg: MsgId) -> &Key {
        &self.keys[self.msgs[msg as usize].key as usize]
    }

    /// Whether `user` is a member of `conv`: from the id for a direct conversation, from
    /// [`Checker::group_members`] for a group.
    fn is_member(&self, conv: &ConversationId, user: UserId) -> bool {
        match conv {
            ConversationId::Direct { .. } => conv.is_member(user),
            ConversationId::Group { .. } => {
                self.groups.get(conv).is_some_and(|m| m.contains(&user))
            }
        }
    }

    /// A connection of `user` is open and will report its pushes from now on.
    pub fn observer_opened(&mut self, user: UserId) -> ObserverId {
        self.open_observer(user, None)
    }

    fn open_observer(&mut self, user: UserId, resumed_from: Option<u32>) -> ObserverId {
        let opened_at = self.tick();
        self.observers.push(Observer {
            user,
            opened_at,
            closed: false,
            deliveries: BTreeMap::new(),
            resumed_from,
            resume_refused: false,
        });
        ObserverId((self.observers.len() - 1) as u32)
    }

    /// A new connection of `previous`'s user is open: it resumed the event stream from the
    /// cursor `previous` ended with, after every push `previous` received was recorded. The
    /// user's successive resumed connections form one chain, judged as one stream: every
    /// message once and in order across them, and, when the last one stays open, every
    /// message sent to the user since the first one opened.
    pub fn observer_resumed(&mut self, previous: ObserverId) -> ObserverId {
        let user = self.observers.get(previous.0 as usize).map(|o| o.user);
        match user {
            Some(user) => self.open_observer(user, Some(previous.0)),
            // Not an observer of this checker: nothing to resume, a connection of nobody.
            None => self.open_observer(UserId(0), None),
        }
    }

    /// The server answered `observer`'s resume with `resync` (its cursor could not be
    /// served): its chain starts afresh with it, owing nothing from before.
    pub fn resume_refused(&mut self, observer: ObserverId) {
        if let Some(o) = self.observers.get_mut(observer.0 as usize) {
            o.resume_refused = true;
        }
    }

    /// The connection closed: it is no longer expected to receive every push itself (a
    /// connection that resumed from it takes over, see [`Checker::observer_resumed`]).
    pub fn observer_closed(&mut self, observer: ObserverId) {
        if let Some(o) = self.observers.get_mut(observer.0 as usize) {
            o.closed = true;
        }
    }

    /// A conversation whose history will be read at the end. Sending to one registers it.
    pub fn watch(&mut self, conv: ConversationId) {
        self.conversations.insert(conv);
    }

    /// The members of group `conv` for the whole run (and watches it).
    pub fn group_members(
        &mut self,
        conv: ConversationId,
        members: impl IntoIterator<Item = UserId>,
    ) {
        self.conversations.insert(conv);
        self.groups.insert(conv, members.into_iter().collect());
    }

    /// `sender` invokes a send of `body` to `conv` with `cmid`, from connection `via`.
    /// A retry of the same message is the same op: record it once.
    pub fn send_invoked(
        &mut self,
        via: Option<ObserverId>,
        sender: UserId,
        conv: ConversationId,
        cmid: ClientMsgId,
        body: &str,
    ) -> OpId {
        let invoked_at = self.tick();
        let id = OpId(self.ops.len());
        self.conversations.insert(conv);
        let key = self.intern_key(conv, sender, &cmid);
        self.sent.entry(key).or_insert(id);
        self.ops.push(Op {
            via,
            key,
            body: body_hash(body),
            invoked_at,
            outcome: Outcome::Pending,
        });
        id
    }

    /// The server acknowledged `op` at `seq`.
    pub fn send_acked(&mut self, op: OpId, seq: Seq, duplicate: bool) {
        let at = self.tick();
        if let Some(o) = self.ops.get_mut(op.0) {
            o.outcome = Outcome::Acked { seq, duplicate, at };
        }
    }

    /// `op` failed without an ack: its outcome is unknown.
    pub fn send_failed(&mut self, op: OpId) {
        self.tick();
        if let Some(o) = self.ops.get_mut(op.0) {
            o.outcome = Outcome::Failed;
        }
    }

    /// Connection `observer` received the push of `message`.
    pub fn delivered(&mut self, observer: ObserverId, message: &Message) {
        self.delivered_many(observer, std::slice::from_ref(message));
    }

    /// Connection `observer` received the pushes of `messages`, in this order.
    pub fn delivered_many(&mut self, observer: ObserverId, messages: &[Message]) {
        self.tick();
        if observer.0 as usize >= self.observers.len() {
            return;
        }
        for m in messages {
            let seen = self.intern(m);
            self.observers[observer.0 as usize]
                .deliveries
                .entry(m.conversation)
                .or_default()
                .push(seen);
        }
    }

    /// The full history of `conv` as read at the end (all pages, ascending), with the
    /// largest `head` the pages announced.
    pub fn history_read(&mut self, conv: ConversationId, head: Seq, messages: &[Message]) {
        self.tick();
        self.conversations.insert(conv);
        let messages = messages.iter().map(|m| self.intern(m)).collect();
        self.histories
            .insert(conv, HistoryRead::Read { head, messages });
    }

    /// The history of `conv` could not be read.
    pub fn history_failed(&mut self, conv: ConversationId, reason: impl Into<String>) {
        self.tick();
        self.conversations.insert(conv);
        self.histories
            .insert(conv, HistoryRead::Failed(reason.into()));
    }

    /// A search for `query` did not return the one answer it must: `detail` says what came
    /// back instead (never a message body).
    pub fn search_mismatch(&mut self, query: impl Into<String>, detail: impl Into<String>) {
        self.searches.push(Violation::WrongSearchResult {
            query: query.into(),
            detail: detail.into(),
        });
    }

    /// The conversations to read at the end.
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.conversations.iter().copied().collect()
    }

    /// Judges everything recorded so far.
    pub fn check(&self) -> CheckReport {
        let mut v: Vec<Violation> = Vec::new();
        // (conv, seq) -> the history's message there; key -> the history's seqs of it.
        let mut stored: HashMap<(ConversationId, Seq), MsgId> = HashMap::new();
        let mut stored_at: HashMap<KeyId, Vec<Seq>> = HashMap::new();
        let mut readable: BTreeSet<ConversationId> = BTreeSet::new();
        let mut history_messages = 0u64;

        for conv in &self.conversations {
            let (head, messages) = match self.histories.get(conv) {
                Some(HistoryRead::Read { head, messages }) => (*head, messages),
                Some(HistoryRead::Failed(reason)) => {
                    v.push(Violation::Unchecked {
                        conv: *conv,
                        reason: reason.clone(),
                    });
                    continue;
                }
                None => {
                    v.push(Violation::Unchecked {
                        conv: *conv,
                        reason: "history never read".into(),
                    });
                    continue;
                }
            };
            readable.insert(*conv);
            history_messages += messages.len() as u64;
            for m in messages {
                match stored.get(&(*conv, m.seq)) {
                    Some(&first) if first != m.msg => {
                        let (a, b) = (self.key_of(first), self.key_of(m.msg));
                        v.push(Violation::Disagreement {
                            conv: *conv,
                            seq: m.seq,
                            detail: format!(
                                "history pages hold two messages at this seq: {}/{} and {}/{}",
                                a.sender, a.cmid, b.sender, b.cmid
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        stored.insert((*conv, m.seq), m.msg);
                        stored_at
                            .entry(self.msgs[m.msg as usize].key)
                            .or_default()
                            .push(m.seq);
                    }
                }
            }
            let top = messages.iter().map(|m| m.seq).max().unwrap_or_default();
            let head = head.max(top);
            for s in 1..=head.0 {
                if !stored.contains_key(&(*conv, Seq(s))) {
                    v.push(Violation::Gap {
                        conv: *conv,
                        seq: Seq(s),
                        head,
                    });
                }
            }
            if stored.contains_key(&(*conv, Seq(0))) {
                v.push(Violation::Disagreement {
                    conv: *conv,
                    seq: Seq(0),
                    detail: "history holds a message at seq 0".into(),
                });
            }
        }

        // Every stored message was sent by someone (or is a server note), once, with the
        // body sent.
        let mut keys: Vec<(&KeyId, &Vec<Seq>)> = stored_at.iter().collect();
        keys.sort_by(|a, b| {
            let (x, y) = (&self.keys[*a.0 as usize], &self.keys[*b.0 as usize]);
            (x.conv, x.sender, &x.cmid).cmp(&(y.conv, y.sender, &y.cmid))
        });
        for (key, seqs) in keys {
            let k = &self.keys[*key as usize];
            if seqs.len() > 1 {
                v.push(Violation::Duplicate {
                    conv: k.conv,
                    sender: k.sender,
                    cmid: k.cmid.clone(),
                    seqs: seqs.clone(),
                    source: "history".into(),
                });
            }
            match self.sent.get(key) {
                None => {
                    for seq in seqs {
                        let note = stored
                            .get(&(k.conv, *seq))
                            .is_some_and(|m| self.msgs[*m as usize].note);
                        if !note {
                            v.push(Violation::Phantom {
                                conv: k.conv,
                                seq: *seq,
                                sender: k.sender,
                                cmid: k.cmid.clone(),
                                source: "history".into(),
                            });
                        }
                    }
                }
                Some(op) => {
                    let sent_body = self.ops[op.0].body;
                    for seq in seqs {
                        let differs = stored
                            .get(&(k.conv, *seq))
                            .is_some_and(|m| self.msgs[*m as usize].body != sent_body);
                        if differs {
                            v.push(Violation::Disagreement {
                                conv: k.conv,
                                seq: *seq,
                                detail: format!(
                                    "the stored body of {}/{} differs from the one sent",
                                    k.sender, k.cmid
                                ),
                            });
                        }
                    }
                }
            }
        }

        // Every ack names a message that is stored, where the ack says.
        let mut sends = 0u64;
        let mut acked = 0u64;
        let mut failed = 0u64;
        let mut duplicate_acks = 0u64;
        let mut resends = 0u64;
        let mut keys_sent = HashSet::new();
        for op in &self.ops {
            sends += 1;
            resends += u64::from(!keys_sent.insert(op.key));
            let (seq, duplicate) = match op.outcome {
                Outcome::Acked { seq, duplicate, .. } => (seq, duplicate),
                Outcome::Failed => {
                    failed += 1;
                    continue;
                }
                Outcome::Pending => continue,
            };
            acked += 1;
            duplicate_acks += u64::from(duplicate);
            let k = &self.keys[op.key as usize];
            if !readable.contains(&k.conv) {
                continue;
            }
            match stored_at.get(&op.key) {
                None => v.push(Violation::Lost {
                    conv: k.conv,
                    sender: k.sender,
                    cmid: k.cmid.clone(),
                    seq,
                    evidence: "acknowledged".into(),
                }),
                Some(seqs) if !seqs.contains(&seq) => v.push(Violation::Disagreement {
                    conv: k.conv,
                    seq,
                    detail: format!(
                        "{}/{} was acknowledged at this seq but is stored at {}",
                        k.sender,
                        k.cmid,
                        join_seqs(seqs)
                    ),
                }),
                Some(_) => {}
            }
        }

        // Pushes: to members only, in order, each agreeing with the history.
        let mut deliveries = 0u64;
        for (i, obs) in self.observers.iter().enumerate() {
            let id = ObserverId(i as u32);
            for (conv, seen) in &obs.deliveries {
                deliveries += seen.len() as u64;
                if !self.is_member(conv, obs.user) {
                    v.push(Violation::Misdelivered {
                        observer: id,
                        user: obs.user,
                        conv: *conv,
                        pushes: seen.len() as u64,
                    });
                    continue;
                }
                let mut prev: Option<Seq> = None;
                let mut first_seq: HashMap<KeyId, Seq> = HashMap::with_capacity(seen.len());
                let mut dups: BTreeMap<KeyId, BTreeSet<Seq>> = BTreeMap::new();
                for m in seen {
                    if let Some(p) = prev {
                        if m.seq <= p {
                            v.push(Violation::DeliveryOrder {
                                observer: id,
                                conv: *conv,
                                prev: p,
                                next: m.seq,
                            });
                        }
                    }
                    prev = Some(prev.map_or(m.seq, |p| p.max(m.seq)));
                    let info = self.msgs[m.msg as usize];
                    match first_seq.entry(info.key) {
                        Entry::Vacant(e) => {
                            e.insert(m.seq);
                        }
                        Entry::Occupied(e) if *e.get() != m.seq => {
                            dups.entry(info.key)
                                .or_insert_with(|| BTreeSet::from([*e.get()]))
                                .insert(m.seq);
                        }
                        Entry::Occupied(_) => {}
                    }
                    if !readable.contains(conv) {
                        continue;
                    }
                    let k = &self.keys[info.key as usize];
                    let sent = info.note || self.sent.contains_key(&info.key);
                    match (stored.get(&(*conv, m.seq)), sent) {
                        (_, false) => v.push(Violation::Phantom {
                            conv: *conv,
                            seq: m.seq,
                            sender: k.sender,
                            cmid: k.cmid.clone(),
                            source: format!("push to observer {}", id.0),
                        }),
                        (Some(&s), _) if s == m.msg => {}
                        (Some(&s), _) => {
                            let sk = self.key_of(s);
                            v.push(Violation::Disagreement {
                                conv: *conv,
                                seq: m.seq,
                                detail: format!(
                                    "observer {} was pushed {}/{} here, the history holds {}/{}{}",
                                    id.0,
                                    k.sender,
                                    k.cmid,
                                    sk.sender,
                                    sk.cmid,
                                    if self.msgs[s as usize].key == info.key {
                                        " with another body"
                                    } else {
                                        ""
                                    }
                                ),
                            })
                        }
                        (None, _) if stored_at.contains_key(&info.key) => {
                            v.push(Violation::Disagreement {
                                conv: *conv,
                                seq: m.seq,
                                detail: format!(
                                    "observer {} was pushed {}/{} at this seq, the history \
                                     stores it elsewhere",
                                    id.0, k.sender, k.cmid
                                ),
                            })
                        }
                        (None, _) => v.push(Violation::Lost {
                            conv: *conv,
                            sender: k.sender,
                            cmid: k.cmid.clone(),
                            seq: m.seq,
                            evidence: format!("pushed to observer {}", id.0),
                        }),
                    }
                }
                for (key, seqs) in dups {
                    let k = &self.keys[key as usize];
                    v.push(Violation::Duplicate {
                        conv: *conv,
                        sender: k.sender,
                        cmid: k.cmid.clone(),
                        seqs: seqs.into_iter().collect(),
                        source: format!("pushes to observer {}", id.0),
                    });
                }
            }
        }

        // Every open connection of a member got every acknowledged message sent after it
        // opened by another connection.
        let mut acked_by_conv: BTreeMap<ConversationId, Vec<(&Op, Seq)>> = BTreeMap::new();
        for op in &self.ops {
            if let Outcome::Acked { seq, .. } = op.outcome {
                acked_by_conv
                    .entry(self.keys[op.key as usize].conv)
                    .or_default()
                    .push((op, seq));
            }
        }
        let chains = self.chains();
        // The last connection of a chain owes what its chain owes (judged below).
        let chained: HashSet<usize> = chains.iter().filter_map(|c| c.last().copied()).collect();
        for (i, obs) in self.observers.iter().enumerate() {
            if obs.closed || chained.contains(&i) {
                continue;
            }
            let id = ObserverId(i as u32);
            for (conv, ops) in &acked_by_conv {
                if !self.is_member(conv, obs.user) {
                    continue;
                }
                let got: HashSet<Seq> = obs
                    .deliveries
                    .get(conv)
                    .map(|seen| seen.iter().map(|m| m.seq).collect())
                    .unwrap_or_default();
                for (op, seq) in ops {
                    if op.via == Some(id) || op.invoked_at < obs.opened_at || got.contains(seq) {
                        continue;
                    }
                    let k = &self.keys[op.key as usize];
                    v.push(Violation::Undelivered {
                        observer: id,
                        conv: *conv,
                        seq: *seq,
                        sender: k.sender,
                        cmid: k.cmid.clone(),
                    });
                }
            }
        }

        for chain in &chains {
            self.check_chain(chain, &acked_by_conv, &mut v);
        }

        // One sender's real-time order: a message acknowledged before the next send was
        // invoked must be stored before it.
        let mut by_sender: BTreeMap<(ConversationId, UserId), Vec<Timed<'_>>> = BTreeMap::new();
        for op in &self.ops {
            let Outcome::Acked { seq, at, .. } = op.outcome else {
                continue;
            };
            let seq = match stored_at.get(&op.key) {
                Some(seqs) if seqs.len() == 1 => seqs[0],
                _ => seq,
            };
            let k = &self.keys[op.key as usize];
            by_sender
                .entry((k.conv, k.sender))
                .or_default()
                .push((op.invoked_at, at, seq, op));
        }
        for ((conv, sender), mut list) in by_sender {
            let mut by_ack: Vec<(u64, Seq, &Op)> =
                list.iter().map(|&(_, at, seq, op)| (at, seq, op)).collect();
            by_ack.sort_by_key(|&(at, _, _)| at);
            list.sort_by_key(|&(invoked, _, _, _)| invoked);
            let mut next = 0;
            let mut highest: Option<(Seq, &Op)> = None;
            for (invoked, _, seq, op) in list {
                while next < by_ack.len() && by_ack[next].0 < invoked {
                    let (_, s, o) = by_ack[next];
                    match highest {
                        Some((h, _)) if h >= s => {}
                        _ => highest = Some((s, o)),
                    }
                    next += 1;
                }
                if let Some((h, earlier)) = highest {
                    if h >= seq {
                        v.push(Violation::SenderOrder {
                            conv,
                            sender,
                            earlier: self.keys[earlier.key as usize].cmid.clone(),
                            earlier_seq: h,
                            later: self.keys[op.key as usize].cmid.clone(),
                            later_seq: seq,
                        });
                    }
                }
            }
        }

        v.extend(self.searches.iter().cloned());
        let counts = ViolationCounts::of(&v);
        CheckReport {
            conversations: self.conversations.len() as u64,
            history_messages,
            sends,
            resends,
            acked,
            failed,
            duplicate_acks,
            deliveries,
            counts,
            violations: v,
        }
    }
}

impl Checker {
    /// The chains of resumed connections (see [`Checker::observer_resumed`]) of two or
    /// more connections, each in the order the connections opened.
    fn chains(&self) -> Vec<Vec<usize>> {
        let mut head: Vec<usize> = Vec::with_capacity(self.observers.len());
        let mut chains: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, o) in self.observers.iter().enumerate() {
            let h = match o.resumed_from {
                Some(p) if !o.resume_refused && (p as usize) < i => head[p as usize],
                _ => i,
            };
            head.push(h);
            chains.entry(h).or_default().push(i);
        }
        chains.into_values().filter(|c| c.len() > 1).collect()
    }

    /// Judges one user's resumed connections as one stream: a later connection is pushed
    /// no seq an earlier one had (`duplicated`) and none below the highest one had (`out of
    /// order`); when the last connection stayed open, every acknowledged message of the
    /// user's conversations sent since the first one opened (from outside the chain)
    /// reached one of them (`undelivered`). Each connection's own pushes are judged with
    /// everyone else's.
    fn check_chain(
        &self,
        chain: &[usize],
        acked_by_conv: &BTreeMap<ConversationId, Vec<(&Op, Seq)>>,
        v: &mut Vec<Violation>,
    ) {
        let (Some(&first), Some(&last)) = (chain.first(), chain.last()) else {
            return;
        };
        let user = self.observers[first].user;
        let mut earlier: HashMap<ConversationId, (Seq, HashSet<Seq>)> = HashMap::new();
        for (n, &i) in chain.iter().enumerate() {
            let obs = &self.observers[i];
            if n > 0 {
                for (conv, seen) in &obs.deliveries {
                    let Some((top, had)) = earlier.get(conv) else {
                        continue;
                    };
                    for m in seen {
                        if had.contains(&m.seq) {
                            let k = self.key_of(m.msg);
                            v.push(Violation::Redelivered {
                                observer: ObserverId(i as u32),
                                user,
                                conv: *conv,
                                seq: m.seq,
                                sender: k.sender,
                                cmid: k.cmid.clone(),
                            });
                        } else if m.seq < *top {
                            v.push(Violation::DeliveryOrder {
                                observer: ObserverId(i as u32),
                                conv: *conv,
                                prev: *top,
                                next: m.seq,
                            });
                        }
                    }
                }
            }
            for (conv, seen) in &obs.deliveries {
                let (top, had) = earlier.entry(*conv).or_default();
                for m in seen {
                    *top = (*top).max(m.seq);
                    had.insert(m.seq);
                }
            }
        }
        if self.observers[last].closed {
            return;
        }
        let start = self.observers[first].opened_at;
        let links: HashSet<ObserverId> = chain.iter().map(|&i| ObserverId(i as u32)).collect();
        for (conv, ops) in acked_by_conv {
            if !self.is_member(conv, user) {
                continue;
            }
            let had = earlier.get(conv).map(|(_, had)| had);
            for (op, seq) in ops {
                let from_chain = op.via.is_some_and(|o| links.contains(&o));
                if from_chain || op.invoked_at < start || had.is_some_and(|h| h.contains(seq)) {
                    continue;
                }
                let k = &self.keys[op.key as usize];
                v.push(Violation::NotCaughtUp {
                    user,
                    first: ObserverId(first as u32),
                    last: ObserverId(last as u32),
                    conv: *conv,
                    seq: *seq,
                    sender: k.sender,
                    cmid: k.cmid.clone(),
                });
            }
        }
    }
}

/// An acknowledged op with its invoke time, ack time and the seq it is stored at.
type Timed<'a> = (u64, u64, Seq, &'a Op);

fn body_hash(body: &str) -> u64 {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

fn join_seqs(seqs: &[Seq]) -> String {
    seqs.iter()
        .map(|s| s.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One way the record breaks the contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    Lost {
        conv: ConversationId,
        sender: UserId,
        cmid: ClientMsgId,
        seq: Seq,
        evidence: String,
    },
    Duplicate {
        conv: ConversationId,
        sender: UserId,
        cmid: ClientMsgId,
        seqs: Vec<Seq>,
        source: String,
    },
    Gap {
        conv: ConversationId,
        seq: Seq,
        head: Seq,
    },
    Disagreement {
        conv: ConversationId,
        seq: Seq,
        detail: String,
    },
    Phantom {
        conv: ConversationId,
        seq: Seq,
        sender: UserId,
        cmid: ClientMsgId,
        source: String,
    },
    DeliveryOrder {
        observer: ObserverId,
        conv: ConversationId,
        prev: Seq,
        next: Seq,
    },
    SenderOrder {
        conv: ConversationId,
        sender: UserId,
        earlier: ClientMsgId,
        earlier_seq: Seq,
        later: ClientMsgId,
        later_seq: Seq,
    },
    Undelivered {
        observer: ObserverId,
        conv: ConversationId,
        seq: Seq,
        sender: UserId,
        cmid: ClientMsgId,
    },
    Misdelivered {
        observer: ObserverId,
        user: UserId,
        conv: ConversationId,
        pushes: u64,
    },
    /// A connection that resumed a user's event stream was pushed a message an earlier
    /// connection of the chain already had.
    Redelivered {
        observer: ObserverId,
        user: UserId,
        conv: ConversationId,
        seq: Seq,
        sender: UserId,
        cmid: ClientMsgId,
    },
    /// A user's chain of resumed connections, the last one still open, never got a message
    /// sent to the user after the first one opened.
    NotCaughtUp {
        user: UserId,
        first: ObserverId,
        last: ObserverId,
        conv: ConversationId,
        seq: Seq,
        sender: UserId,
        cmid: ClientMsgId,
    },
    Unchecked {
        conv: ConversationId,
        reason: String,
    },
    WrongSearchResult {
        query: String,
        detail: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost {
                conv,
                sender,
                cmid,
                seq,
                evidence,
            } => write!(
                f,
                "lost: {conv} {sender}/{cmid} ({evidence} at seq {seq}) is not in the history"
            ),
            Violation::Duplicate {
                conv,
                sender,
                cmid,
                seqs,
                source,
            } => write!(
                f,
                "duplicated: {conv} {sender}/{cmid} at seqs {} ({source})",
                join_seqs(seqs)
            ),
            Violation::Gap { conv, seq, head } => {
                write!(f, "gap: {conv} has no message at seq {seq} (head {head})")
            }
            Violation::Disagreement { conv, seq, detail } => {
                write!(f, "disagreement: {conv} seq {seq}: {detail}")
            }
            Violation::Phantom {
                conv,
                seq,
                sender,
                cmid,
                source,
            } => write!(
                f,
                "phantom: {conv} seq {seq} {sender}/{cmid} was never sent ({source})"
            ),
            Violation::DeliveryOrder {
                observer,
                conv,
                prev,
                next,
            } => write!(
                f,
                "out of order: observer {} was pushed {conv} seq {next} after seq {prev}",
                observer.0
            ),
            Violation::SenderOrder {
                conv,
                sender,
                earlier,
                earlier_seq,
                later,
                later_seq,
            } => write!(
                f,
                "out of order: {conv} sender {sender}: {earlier} (acknowledged before {later} \
                 was sent) is stored at seq {earlier_seq}, after {later} at seq {later_seq}"
            ),
            Violation::Undelivered {
                observer,
                conv,
                seq,
                sender,
                cmid,
            } => write!(
                f,
                "undelivered: observer {} never got {conv} seq {seq} ({sender}/{cmid})",
                observer.0
            ),
            Violation::Misdelivered {
                observer,
                user,
                conv,
                pushes,
            } => write!(
                f,
                "misdelivered: observer {} of non-member {user} got {pushes} pushes of {conv}",
                observer.0
            ),
            Violation::Redelivered {
                observer,
                user,
                conv,
                seq,
                sender,
                cmid,
            } => write!(
                f,
                "duplicated: user {user}'s observer {} resumed the event stream and was pushed \
                 {conv} seq {seq} ({sender}/{cmid}) again",
                observer.0
            ),
            Violation::NotCaughtUp {
                user,
                first,
                last,
                conv,
                seq,
                sender,
                cmid,
            } => write!(
                f,
                "undelivered: user {user} never got {conv} seq {seq} ({sender}/{cmid}) on its \
                 resumed connections (observers {} to {})",
                first.0, last.0
            ),
            Violation::Unchecked { conv, reason } => {
                write!(
                    f,
                    "unchecked: the history of {conv} could not be read: {reason}"
                )
            }
            Violation::WrongSearchResult { query, detail } => {
                write!(f, "search: the query {query:?} {detail}")
            }
        }
    }
}

/// Violations by class, as the verdict line states them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationCounts {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub disagreements: u64,
    pub phantoms: u64,
    pub undelivered: u64,
    pub misdelivered: u64,
    pub unchecked: u64,
    /// Searches whose one known answer did not come back (`search` scenario).
    #[serde(default)]
    pub search: u64,
}

impl ViolationCounts {
    fn of(violations: &[Violation]) -> ViolationCounts {
        let mut c = ViolationCounts::default();
        for v in violations {
            let slot = match v {
                Violation::Lost { .. } => &mut c.lost,
                Violation::Duplicate { .. } | Violation::Redelivered { .. } => &mut c.duplicated,
                Violation::DeliveryOrder { .. } | Violation::SenderOrder { .. } => {
                    &mut c.out_of_order
                }
                Violation::Gap { .. } => &mut c.gaps,
                Violation::Disagreement { .. } => &mut c.disagreements,
                Violation::Phantom { .. } => &mut c.phantoms,
                Violation::Undelivered { .. } | Violation::NotCaughtUp { .. } => &mut c.undelivered,
                Violation::Misdelivered { .. } => &mut c.misdelivered,
                Violation::Unchecked { .. } => &mut c.unchecked,
                Violation::WrongSearchResult { .. } => &mut c.search,
            };
            *slot += 1;
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.gaps
            + self.disagreements
            + self.phantoms
            + self.undelivered
            + self.misdelivered
            + self.unchecked
            + self.search
    }
}

/// The checker's judgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub conversations: u64,
    pub history_messages: u64,
    pub sends: u64,
    /// Of `sends`, those that repeated an earlier send's client message id (a send cut off
    /// by a lost connection and sent again): one message, stored once or not at all.
    #[serde(default)]
    pub resends: u64,
    pub acked: u64,
    pub failed: u64,
    pub duplicate_acks: u64,
    pub deliveries: u64,
    pub counts: ViolationCounts,
    /// Every violation found (reports print the first few).
    pub violations: Vec<Violation>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.counts.total() == 0
    }

    /// The one line a run ends with.
    pub fn verdict_line(&self) -> String {
        let c = &self.counts;
        format!(
            "verdict: {} lost={} duplicated={} out-of-order={} gaps={} disagreements={} \
             phantoms={} undelivered={} misdelivered={} unchecked={}{} ({} stored messages \
             checked in {} conversations)",
            if self.ok() { "PASS" } else { "FAIL" },
            c.lost,
            c.duplicated,
            c.out_of_order,
            c.gaps,
            c.disagreements,
            c.phantoms,
            c.undelivered,
            c.misdelivered,
            c.unchecked,
            if c.search > 0 {
                format!(" search={}", c.search)
            } else {
                String::new()
            },
            self.history_messages,
            self.conversations
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const A: UserId = UserId(1);
    const B: UserId = UserId(2);

    fn conv() -> ConversationId {
        ConversationId::direct(A, B)
    }

    fn cmid(s: &str) -> ClientMsgId {
        ClientMsgId::new(s).unwrap()
    }

    fn msg(seq: u64, sender: UserId, id: &str) -> Message {
        Message {
            conversation: conv(),
            seq: Seq(seq),
            sender,
            client_msg_id: cmid(id),
            body: format!("body of {id}"),
            ts_ms: 0,
            refers: None,
            attachments: Vec::new(),
        }
    }

    /// A run that keeps the contract: A sends m1..m3 one at a time from its connection, B's
    /// connection is pushed each, and the history holds them at 1..=3. Returns the checker
    /// before the history is read, and the observers.
    fn good_run() -> (Checker, ObserverId, ObserverId) {
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let ob = c.observer_opened(B);
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            let seq = i as u64 + 1;
            let op = c.send_invoked(Some(oa), A, conv(), cmid(id), &format!("body of {id}"));
            c.send_acked(op, Seq(seq), false);
            c.delivered(ob, &msg(seq, A, id));
        }
        (c, oa, ob)
    }

    fn good_history() -> Vec<Message> {
        vec![msg(1, A, "m1"), msg(2, A, "m2"), msg(3, A, "m3")]
    }

    #[test]
    fn a_correct_run_passes() {
        let (mut c, _, _) = good_run();
        c.history_read(conv(), Seq(3), &good_history());
        let r = c.check();
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!(
            (r.sends, r.acked, r.deliveries, r.history_messages),
            (3, 3, 3, 3)
        );
        assert!(r
            .verdict_line()
            .starts_with("verdict: PASS lost=0 duplicated=0 out-of-order=0"));
    }

    #[test]
    fn a_failed_send_may_or_may_not_be_stored() {
        for stored in [false, true] {
            let (mut c, oa, _) = good_run();
            let op = c.send_invoked(Some(oa), A, conv(), cmid("m4"), "body of m4");
            c.send_failed(op);
            let mut h = good_history();
            if stored {
                h.push(msg(4, A, "m4"));
            }
            c.history_read(conv(), Seq(h.len() as u64), &h);
            let r = c.check();
            assert!(r.ok(), "stored={stored}: {:#?}", r.violations);
            assert_eq!(r.failed, 1);
        }
    }

    #[test]
    fn a_send_cut_off_and_sent_again_is_one_message_and_counts_as_a_resend() {
        for stored_before_the_cut in [false, true] {
            let (mut c, oa, ob) = good_run();
            let cut = c.send_invoked(Some(oa), A, conv(), cmid("m4"), "body of m4");
            c.send_failed(cut);
            let again = c.send_invoked(Some(oa), A, conv(), cmid("m4"), "body of m4");
            c.send_acked(again, Seq(4), stored_before_the_cut);
            c.delivered(ob, &msg(4, A, "m4"));
            let mut h = good_history();
            h.push(msg(4, A, "m4"));
            c.history_read(conv(), Seq(4), &h);
            let r = c.check();
            assert!(r.ok(), "{:#?}", r.violations);
            assert_eq!(
                (r.sends, r.resends, r.acked, r.failed, r.duplicate_acks),
                (5, 1, 4, 1, u64::from(stored_before_the_cut))
            );
        }
    }

    #[test]
    fn a_lost_acknowledged_message_is_reported() {
        let (mut c, _, _) = good_run();
        let mut h = good_history();
        h.pop();
        c.history_read(conv(), Seq(2), &h);
        let r = c.check();
        // Acknowledged and pushed, then gone: both observations say so.
        assert_eq!(r.counts.lost, 2, "{:#?}", r.violations);
        assert!(!r.ok());
        assert!(r.verdict_line().contains("FAIL lost=2"));
    }

    #[test]
    fn a_duplicate_is_reported() {
        let (mut c, _, _) = good_run();
        // The retry of m2 was stored again at seq 4.
        let mut h = good_history();
        h.push(msg(4, A, "m2"));
        c.history_read(conv(), Seq(4), &h);
        let r = c.check();
        assert_eq!(r.counts.duplicated, 1, "{:#?}", r.violations);
        assert!(matches!(
            &r.violations[0],
            Violation::Duplicate { seqs, .. } if seqs == &[Seq(2), Seq(4)]
        ));
    }

    #[test]
    fn a_duplicate_push_is_reported() {
        let (mut c, _, ob) = good_run();
        c.delivered(ob, &msg(3, A, "m3"));
        c.history_read(conv(), Seq(3), &good_history());
        let r = c.check();
        assert_eq!(r.counts.out_of_order, 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_gap_is_reported() {
        let (mut c, _, _) = good_run();
        let h = vec![msg(1, A, "m1"), msg(3, A, "m3")];
        c.history_read(conv(), Seq(3), &h);
        let r = c.check();
        assert_eq!(r.counts.gaps, 1, "{:#?}", r.violations);
        assert!(r.violations.contains(&Violation::Gap {
            conv: conv(),
            seq: Seq(2),
            head: Seq(3)
        }));
    }

    #[test]
    fn a_head_beyond_the_stored_messages_is_a_gap() {
        let (mut c, _, _) = good_run();
        c.history_read(conv(), Seq(5), &good_history());
        let r = c.check();
        assert_eq!(r.counts.gaps, 2, "{:#?}", r.violations);
    }

    #[test]
    fn pushes_out_of_order_are_reported() {
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let ob = c.observer_opened(B);
        let mut ops = Vec::new();
        for id in ["m1", "m2", "m3"] {
            ops.push(c.send_invoked(Some(oa), A, conv(), cmid(id), &format!("body of {id}")));
        }
        for (i, op) in ops.into_iter().enumerate() {
            c.send_acked(op, Seq(i as u64 + 1), false);
        }
        for (seq, id) in [(1, "m1"), (3, "m3"), (2, "m2")] {
            c.delivered(ob, &msg(seq, A, id));
        }
        c.history_read(conv(), Seq(3), &good_history());
        let r = c.check();
        assert_eq!(r.counts.out_of_order, 1, "{:#?}", r.violations);
        assert!(matches!(
            r.violations[0],
            Violation::DeliveryOrder {
                prev: Seq(3),
                next: Seq(2),
                ..
            }
        ));
    }

    #[test]
    fn a_sender_reordered_by_the_server_is_reported() {
        // m1 was acknowledged before m2 was sent, yet m2 is stored first.
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let op1 = c.send_invoked(Some(oa), A, conv(), cmid("m1"), "body of m1");
        c.send_acked(op1, Seq(2), false);
        let op2 = c.send_invoked(Some(oa), A, conv(), cmid("m2"), "body of m2");
        c.send_acked(op2, Seq(1), false);
        c.history_read(conv(), Seq(2), &[msg(1, A, "m2"), msg(2, A, "m1")]);
        let r = c.check();
        assert_eq!(r.counts.out_of_order, 1, "{:#?}", r.violations);
        assert!(matches!(
            &r.violations[0],
            Violation::SenderOrder { earlier, later, .. }
                if earlier.as_str() == "m1" && later.as_str() == "m2"
        ));
    }

    #[test]
    fn concurrent_sends_may_be_stored_in_either_order() {
        // Both invoked before either was acknowledged: a window has no order to keep.
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let op1 = c.send_invoked(Some(oa), A, conv(), cmid("m1"), "body of m1");
        let op2 = c.send_invoked(Some(oa), A, conv(), cmid("m2"), "body of m2");
        c.send_acked(op1, Seq(2), false);
        c.send_acked(op2, Seq(1), false);
        c.history_read(conv(), Seq(2), &[msg(1, A, "m2"), msg(2, A, "m1")]);
        let r = c.check();
        assert!(r.ok(), "{:#?}", r.violations);
    }

    #[test]
    fn observers_that_disagree_are_reported() {
        // B was pushed m3 at seq 2, where the history (and the ack) hold m2.
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let ob = c.observer_opened(B);
        for (seq, id) in [(1, "m1"), (2, "m2"), (3, "m3")] {
            let op = c.send_invoked(Some(oa), A, conv(), cmid(id), &format!("body of {id}"));
            c.send_acked(op, Seq(seq), false);
        }
        for (seq, id) in [(1, "m1"), (2, "m3")] {
            c.delivered(ob, &msg(seq, A, id));
        }
        c.history_read(conv(), Seq(3), &good_history());
        let r = c.check();
        assert!(r.counts.disagreements >= 1, "{:#?}", r.violations);
        assert!(r
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Disagreement { seq: Seq(2), .. })));
    }

    #[test]
    fn an_ack_naming_another_seq_than_the_history_is_a_disagreement() {
        let (mut c, _, _) = good_run();
        let h = vec![msg(1, A, "m1"), msg(2, A, "m3"), msg(3, A, "m2")];
        c.history_read(conv(), Seq(3), &h);
        let r = c.check();
        assert!(r.counts.disagreements >= 2, "{:#?}", r.violations);
    }

    #[test]
    fn a_changed_body_is_a_disagreement() {
        let (mut c, _, _) = good_run();
        let mut h = good_history();
        h[1].body = "something else".into();
        c.history_read(conv(), Seq(3), &h);
        let r = c.check();
        assert!(r.counts.disagreements >= 1, "{:#?}", r.violations);
        // No content in the report.
        for v in &r.violations {
            assert!(!v.to_string().contains("something else"));
        }
    }

    #[test]
    fn a_phantom_message_is_reported() {
        let (mut c, _, _) = good_run();
        let mut h = good_history();
        h.push(msg(4, B, "never-sent"));
        c.history_read(conv(), Seq(4), &h);
        let r = c.check();
        assert_eq!(r.counts.phantoms, 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_missed_push_is_reported_unless_the_connection_closed() {
        for closed in [false, true] {
            let mut c = Checker::new();
            let oa = c.observer_opened(A);
            let ob = c.observer_opened(B);
            let op = c.send_invoked(Some(oa), A, conv(), cmid("m1"), "body of m1");
            c.send_acked(op, Seq(1), false);
            if closed {
                c.observer_closed(ob);
            }
            c.history_read(conv(), Seq(1), &[msg(1, A, "m1")]);
            let r = c.check();
            assert_eq!(
                r.counts.undelivered,
                u64::from(!closed),
                "{:#?}",
                r.violations
            );
        }
    }

    /// B's connection gets m1 and m2 and is cut off; A sends m3 and m4 while B is away;
    /// B's next connection resumes and gets `replayed`; then A sends m5 and it gets
    /// `live`. The history holds m1..m5. Returns the checker with the history read and B's
    /// second connection.
    fn resumed_run(replayed: &[u64], live: &[u64]) -> (Checker, ObserverId) {
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let b1 = c.observer_opened(B);
        let send = |c: &mut Checker, seq: u64| {
            let id = format!("m{seq}");
            let op = c.send_invoked(Some(oa), A, conv(), cmid(&id), &format!("body of {id}"));
            c.send_acked(op, Seq(seq), false);
        };
        for seq in 1..=2 {
            send(&mut c, seq);
            c.delivered(b1, &msg(seq, A, &format!("m{seq}")));
        }
        c.observer_closed(b1);
        send(&mut c, 3);
        send(&mut c, 4);
        let b2 = c.observer_resumed(b1);
        for &seq in replayed {
            c.delivered(b2, &msg(seq, A, &format!("m{seq}")));
        }
        send(&mut c, 5);
        for &seq in live {
            c.delivered(b2, &msg(seq, A, &format!("m{seq}")));
        }
        let h: Vec<Message> = (1..=5).map(|s| msg(s, A, &format!("m{s}"))).collect();
        c.history_read(conv(), Seq(5), &h);
        (c, b2)
    }

    #[test]
    fn a_resumed_connection_that_catches_up_once_and_in_order_passes() {
        let (c, _) = resumed_run(&[3, 4], &[5]);
        let r = c.check();
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!(r.deliveries, 5);
    }

    #[test]
    fn a_message_missed_across_a_resume_is_reported_while_the_chain_is_open() {
        let (c, _) = resumed_run(&[4], &[5]);
        let r = c.check();
        assert_eq!(r.counts.undelivered, 1, "{:#?}", r.violations);
        assert_eq!(r.counts.total(), 1, "{:#?}", r.violations);
        assert!(matches!(
            &r.violations[0],
            Violation::NotCaughtUp {
                seq: Seq(3),
                user: B,
                ..
            }
        ));
        assert!(r.violations[0].to_string().contains("seq 3"));

        // The chain's last connection closed too: it owed nothing more.
        let (mut c, b2) = resumed_run(&[4], &[5]);
        c.observer_closed(b2);
        assert!(c.check().ok());
    }

    #[test]
    fn a_message_pushed_again_after_a_resume_is_a_duplicate() {
        let (c, _) = resumed_run(&[2, 3, 4], &[5]);
        let r = c.check();
        assert_eq!(r.counts.duplicated, 1, "{:#?}", r.violations);
        assert_eq!(r.counts.total(), 1, "{:#?}", r.violations);
        assert!(matches!(
            &r.violations[0],
            Violation::Redelivered {
                seq: Seq(2),
                user: B,
                ..
            }
        ));
    }

    #[test]
    fn a_resume_that_goes_back_before_the_last_push_is_out_of_order() {
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let b1 = c.observer_opened(B);
        for seq in 1..=3 {
            let id = format!("m{seq}");
            let op = c.send_invoked(Some(oa), A, conv(), cmid(&id), &format!("body of {id}"));
            c.send_acked(op, Seq(seq), false);
        }
        // The first connection skipped m2 (its own order is kept: 1, 3), the next one
        // brings m2 after m3.
        c.delivered(b1, &msg(1, A, "m1"));
        c.delivered(b1, &msg(3, A, "m3"));
        c.observer_closed(b1);
        let b2 = c.observer_resumed(b1);
        c.delivered(b2, &msg(2, A, "m2"));
        let h: Vec<Message> = (1..=3).map(|s| msg(s, A, &format!("m{s}"))).collect();
        c.history_read(conv(), Seq(3), &h);
        let r = c.check();
        assert_eq!(r.counts.out_of_order, 1, "{:#?}", r.violations);
        assert_eq!(r.counts.total(), 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_refused_resume_starts_the_chain_afresh() {
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let b1 = c.observer_opened(B);
        let op = c.send_invoked(Some(oa), A, conv(), cmid("m1"), "body of m1");
        c.send_acked(op, Seq(1), false);
        c.observer_closed(b1);
        let b2 = c.observer_resumed(b1);
        // Without the resync, B still owes m1 (sent after its first connection opened).
        assert_eq!(
            {
                let mut c = c.clone();
                c.history_read(conv(), Seq(1), &[msg(1, A, "m1")]);
                c.check().counts.undelivered
            },
            1
        );
        c.resume_refused(b2);
        c.history_read(conv(), Seq(1), &[msg(1, A, "m1")]);
        let r = c.check();
        assert!(r.ok(), "{:#?}", r.violations);
    }

    #[test]
    fn a_push_to_a_non_member_is_reported() {
        let (mut c, _, _) = good_run();
        let stranger = c.observer_opened(UserId(9));
        c.delivered(stranger, &msg(1, A, "m1"));
        c.history_read(conv(), Seq(3), &good_history());
        let r = c.check();
        assert_eq!(r.counts.misdelivered, 1, "{:#?}", r.violations);
    }

    fn group_msg(seq: u64, sender: UserId, id: &str, note: bool) -> Message {
        Message {
            conversation: ConversationId::group(chat_types::GroupId(7)),
            seq: Seq(seq),
            sender,
            client_msg_id: cmid(id),
            body: if note {
                String::new()
            } else {
                format!("body of {id}")
            },
            ts_ms: 0,
            refers: note.then_some(MessageRef::Group {
                change: chat_types::GroupChange::Created,
            }),
            attachments: Vec::new(),
        }
    }

    /// A group of A, B and C: the server's `created` note at seq 1, then A's message at 2,
    /// pushed to B and C. `push_to_c` says whether C's connection got it.
    fn group_run(push_to_c: bool) -> (Checker, ConversationId) {
        const C: UserId = UserId(3);
        let g = ConversationId::group(chat_types::GroupId(7));
        let mut c = Checker::new();
        let oa = c.observer_opened(A);
        let ob = c.observer_opened(B);
        let oc = c.observer_opened(C);
        c.group_members(g, [A, B, C]);
        let note = group_msg(1, A, "sys-1", true);
        for o in [oa, ob, oc] {
            c.delivered(o, &note);
        }
        let op = c.send_invoked(Some(oa), A, g, cmid("m1"), "body of m1");
        c.send_acked(op, Seq(2), false);
        let m = group_msg(2, A, "m1", false);
        c.delivered_many(ob, std::slice::from_ref(&m));
        if push_to_c {
            c.delivered(oc, &m);
        }
        c.history_read(g, Seq(2), &[note, m]);
        (c, g)
    }

    #[test]
    fn a_group_fan_out_with_its_server_note_passes() {
        let (c, _) = group_run(true);
        let r = c.check();
        assert!(r.ok(), "{:#?}", r.violations);
        assert_eq!(r.deliveries, 5);
    }

    #[test]
    fn a_group_member_that_missed_a_push_is_reported() {
        let (c, _) = group_run(false);
        let r = c.check();
        assert_eq!(r.counts.undelivered, 1, "{:#?}", r.violations);
    }

    #[test]
    fn a_group_push_to_a_non_member_is_reported() {
        let (mut c, g) = group_run(true);
        let stranger = c.observer_opened(UserId(9));
        c.delivered(stranger, &group_msg(2, A, "m1", false));
        let r = c.check();
        assert_eq!(r.counts.misdelivered, 1, "{:#?}", r.violations);
        // Undeclared membership: every push of the group is misdelivered.
        let mut c = Checker::new();
        let ob = c.observer_opened(B);
        c.delivered(ob, &group_msg(1, A, "m1", false));
        c.history_read(g, Seq(1), &[group_msg(1, A, "m1", false)]);
        assert!(c.check().counts.misdelivered == 1);
    }

    #[test]
    fn a_client_message_passed_off_as_a_note_is_still_checked() {
        // A note that differs between the push and the history disagrees.
        let (mut c, g) = group_run(true);
        let ob = c.observer_opened(B);
        let mut forged = group_msg(1, A, "sys-1", true);
        forged.body = "changed".into();
        c.delivered(ob, &forged);
        let _ = g;
        let r = c.check();
        assert!(r.counts.disagreements >= 1, "{:#?}", r.violations);
    }

    #[test]
    fn an_unread_history_fails_the_check() {
        let (c, _, _) = good_run();
        let r = c.check();
        assert_eq!(r.counts.unchecked, 1, "{:#?}", r.violations);
        let (mut c, _, _) = good_run();
        c.history_failed(conv(), "timed out");
        assert_eq!(c.check().counts.unchecked, 1);
    }

    #[test]
    fn a_wrong_search_answer_fails_the_verdict() {
        let (mut c, _, _) = good_run();
        c.history_read(conv(), Seq(3), &good_history());
        assert!(c.check().ok());
        c.search_mismatch(
            "ltxw00000001q",
            "must find only dm:1:2 seq 1; found 0 hit(s)",
        );
        let r = c.check();
        assert!(!r.ok());
        assert_eq!(r.counts.search, 1);
        assert!(r.verdict_line().contains("FAIL"), "{}", r.verdict_line());
        assert!(
            r.verdict_line().contains("search=1"),
            "{}",
            r.verdict_line()
        );
        assert!(r.violations[0].to_string().starts_with("search:"));
    }
}
