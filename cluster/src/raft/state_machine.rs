//! The metadata state machine store: the applied [`MetaState`], persisted in the `metakey_value`
//! column family, with the Raft store's own keys beside it.
//!
//! # What is stored where
//!
//! - The state's own keys (`u/`, `n/`, `s/`, `c/`), written by [`MetaState::apply`].
//! - `raft/last_applied`: the last applied log id; `raft/membership`: the last applied
//!   membership. Both are written in the same batch as the state writes of the entries they
//!   cover, so after a crash the state on disk is exactly "the log applied up to
//!   `raft/last_applied`" and openraft re-applies from there.
//! - `raft/snapshot`: the current snapshot (meta and data), so that it survives a restart and
//!   a leader can still send it to a lagging follower after the log before it was purged.
//!
//! # Durability
//!
//! Applying writes to the WAL without an fsync. That is safe because everything applied is
//! committed in the log, which is fsynced: losing the tail of the applied state to a power
//! loss only means re-applying it at startup. Log purges, which remove what re-applying
//! needs, happen only after a snapshot covers those entries; snapshots are written with an
//! fsync, and an fsync also makes every earlier WAL write durable (all column families share
//! one WAL), so the applied state is never behind a purge on disk.
//!
//! # Concurrency
//!
//! openraft calls `apply`, `install_snapshot` and friends one at a time, but builds
//! snapshots in a separate task, and the HTTP layer reads the state through [`SharedMeta`].
//! The state, the last applied log id and the membership therefore sit behind one `RwLock`,
//! so a snapshot is built from a consistent view; the current snapshot sits behind its own
//! `Mutex`, which also orders the writes of `raft/snapshot`.

// openraft's `StorageError` is large, but it is the error type the storage traits require;
// boxing it in the helpers only to unbox it at the trait boundary would buy nothing.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use chat_storage::db::CF_META;
use chat_storage::keys::{decode_versioned, encode_versioned};
use chat_storage::raft_kv::RaftKv;
use chat_storage::{Durability, StorageError};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{blocking, MetaEntry, MetaLogId, MetaMembership, RaftStorageError, TypeConfig};
use crate::meta::{MetaResponse, MetaState, NodeInfo};

const KEY_LAST_APPLIED: &[u8] = b"raft/last_applied";
const KEY_MEMBERSHIP: &[u8] = b"raft/membership";
const KEY_SNAPSHOT: &[u8] = b"raft/snapshot";
const RAFT_PREFIX: &[u8] = b"raft/";
/// Format of `raft/last_applied`, `raft/membership` and `raft/snapshot`.
const RAFT_KEY_FORMAT: u8 = 1;
/// Format of the snapshot data that travels between nodes.
const SNAPSHOT_FORMAT: u8 = 1;

type MetaSnapshotMeta = SnapshotMeta<u64, NodeInfo>;

/// Everything the state machine holds in memory, behind one lock.
#[derive(Debug, Default)]
struct Machine {
    meta: MetaState,
    last_applied: Option<MetaLogId>,
    membership: MetaMembership,
}

#[derive(Clone, Debug)]
struct CurrentSnapshot {
    meta: MetaSnapshotMeta,
    data: Vec<u8>,
}

/// A cheap, shared read handle on the local copy of the replicated metadata, for token checks
/// and username lookups. Reads do not go through Raft: they see what this node has applied.
#[derive(Clone)]
pub struct SharedMeta {
    machine: Arc<RwLock<Machine>>,
}

impl fmt::Debug for SharedMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMeta")
            .field("last_applied", &self.last_applied_index())
            .finish_non_exhaustive()
    }
}

impl SharedMeta {
    /// Runs `f` on the current state. Keep `f` short: applying waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        // A poisoned lock means a panic while applying; the state is still the best this node
        // has, and the Raft node has stopped applying, so reads go on.
        let machine = self.machine.read().unwrap_or_else(|e| e.into_inner());
        f(&machine.meta)
    }

    /// The log index of the last applied entry, for waiting until a write is visible here.
    pub fn last_applied_index(&self) -> Option<u64> {
        let machine = self.machine.read().unwrap_or_else(|e| e.into_inner());
        machine.last_applied.map(|id| id.index)
    }
}

/// The state machine store. Cheap to clone: clones share the state, the current snapshot and
/// the database, and a clone serves as the snapshot builder.
#[derive(Clone)]
pub struct StateMachineStore {
    kv: RaftKv,
    machine: Arc<RwLock<Machine>>,
    snapshot: Arc<Mutex<Option<CurrentSnapshot>>>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("kv", &self.kv)
            .finish_non_exhaustive()
    }
}

/// The snapshot data: the state's pairs with the log position they reflect.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<MetaLogId>,
    membership: MetaMembership,
    pairs: Vec<(Bin, Bin)>,
}

/// `raft/snapshot` as written (borrowing) and as read (owning); the field names match.
#[derive(Serialize)]
struct StoredSnapshotOut<'a> {
    meta: &'a MetaSnapshotMeta,
    data: BinRef<'a>,
}

#[derive(Deserialize)]
struct StoredSnapshotIn {
    meta: MetaSnapshotMeta,
    data: Bin,
}

/// A byte string that MessagePack stores as `bin`, not as an array of small integers.
struct Bin(Vec<u8>);

struct BinRef<'a>(&'a [u8]);

impl Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl Serialize for BinRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bin, D::Error> {
        struct BinVisitor;
        impl<'de> serde::de::Visitor<'de> for BinVisitor {
            type Value = Bin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bin, E> {
                Ok(Bin(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bin, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bin(out))
            }
        }
        d.deserialize_byte_buf(BinVisitor)
    }
}

fn encode_raft_key<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    encode_versioned(CF_META, RAFT_KEY_FORMAT, value)
}

fn poisoned() -> StorageIOError<u64> {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Read,
        AnyError::error("the state machine lock is poisoned by an earlier panic"),
    )
}

fn lock_snapshot(
    snapshot: &Mutex<Option<CurrentSnapshot>>,
) -> Result<MutexGuard<'_, Option<CurrentSnapshot>>, StorageIOError<u64>> {
    snapshot.lock().map_err(|_| poisoned())
}

fn write_machine(
    machine: &RwLock<Machine>,
) -> Result<RwLockWriteGuard<'_, Machine>, StorageIOError<u64>> {
    machine.write().map_err(|_| poisoned())
}

/// Reads the whole state machine from disk.
fn load(kv: &RaftKv) -> Result<(Machine, Option<CurrentSnapshot>), StorageError> {
    let mut machine = Machine::default();
    let mut snapshot = None;
    let mut state_pairs = Vec::new();
    for (key, value) in kv.meta_pairs()? {
        if !key.starts_with(RAFT_PREFIX) {
            state_pairs.push((key, value));
        } else if key == KEY_LAST_APPLIED {
            machine.last_applied = decode_versioned(CF_META, RAFT_KEY_FORMAT, &key, &value)?;
        } else if key == KEY_MEMBERSHIP {
            machine.membership = decode_versioned(CF_META, RAFT_KEY_FORMAT, &key, &value)?;
        } else if key == KEY_SNAPSHOT {
            let stored: StoredSnapshotIn =
                decode_versioned(CF_META, RAFT_KEY_FORMAT, &key, &value)?;
            snapshot = Some(CurrentSnapshot {
                meta: stored.meta,
                data: stored.data.0,
            });
        }
    }
    machine.meta = MetaState::load(state_pairs)?;
    Ok((machine, snapshot))
}

/// After a failed apply the in-memory state may be ahead of the disk: read it back.
fn reload_after_failure(kv: &RaftKv, machine: &mut Machine) {
    match load(kv) {
        Ok((loaded, _)) => *machine = loaded,
        Err(e) => tracing::error!(error = %e, "reloading the state machine after a failed apply"),
    }
}

fn snapshot_id(last: Option<MetaLogId>) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    match last {
        Some(id) => format!(
            "{}-{}-{}-{millis}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("none-{millis}"),
    }
}

impl StateMachineStore {
    /// Opens the state machine, loading the state, last applied log id, membership and
    /// current snapshot from the database.
    pub fn open(kv: RaftKv) -> Result<StateMachineStore, StorageError> {
        let (machine, snapshot) = load(&kv)?;
        Ok(StateMachineStore {
            kv,
            machine: Arc::new(RwLock::new(machine)),
            snapshot: Arc::new(Mutex::new(snapshot)),
        })
    }

    /// A read handle on the applied metadata, shared with this store.
    pub fn shared(&self) -> SharedMeta {
        SharedMeta {
            machine: self.machine.clone(),
        }
    }

    fn apply_blocking(
        kv: &RaftKv,
        machine: &RwLock<Machine>,
        entries: Vec<MetaEntry>,
    ) -> Result<Vec<MetaResponse>, RaftStorageError> {
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut m = write_machine(machine)?;
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut responses = Vec::with_capacity(entries.len());
        let mut membership = None;
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => responses.push(MetaResponse::None),
                EntryPayload::Normal(cmd) => match m.meta.apply_at(entry.log_id.index, &cmd) {
                    Ok((response, state_writes)) => {
                        writes.extend(state_writes.into_iter().map(|w| (w.key, w.value)));
                        responses.push(response);
                    }
                    Err(e) => {
                        reload_after_failure(kv, &mut m);
                        return Err(StorageIOError::apply(entry.log_id, &e).into());
                    }
                },
                EntryPayload::Membership(mem) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), mem));
                    responses.push(MetaResponse::None);
                }
            }
        }
        let persisted = (|| {
            writes.push((
                KEY_LAST_APPLIED.to_vec(),
                Some(encode_raft_key(&Some(last))?),
            ));
            if let Some(mem) = &membership {
                writes.push((KEY_MEMBERSHIP.to_vec(), Some(encode_raft_key(mem)?)));
            }
            kv.meta_write(writes, Durability::Wal)
        })();
        if let Err(e) = persisted {
            reload_after_failure(kv, &mut m);
            return Err(StorageIOError::apply(last, &e).into());
        }
        m.last_applied = Some(last);
        if let Some(mem) = membership {
            m.membership = mem;
        }
        Ok(responses)
    }

    fn build_blocking(
        kv: &RaftKv,
        machine: &RwLock<Machine>,
        current: &Mutex<Option<CurrentSnapshot>>,
    ) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let write_err = |e: &StorageError| StorageIOError::write_snapshot(None, e);
        // One consistent view: the pairs and the log position they reflect.
        let (last_applied, membership, pairs) = {
            let m = machine.read().map_err(|_| poisoned())?;
            let pairs = m.meta.dump().map_err(|e| write_err(&e))?;
            (m.last_applied, m.membership.clone(), pairs)
        };
        let data = SnapshotData {
            last_applied,
            membership: membership.clone(),
            pairs: pairs.into_iter().map(|(k, v)| (Bin(k), Bin(v))).collect(),
        };
        let bytes = encode_versioned(CF_META, SNAPSHOT_FORMAT, &data).map_err(|e| write_err(&e))?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied),
        };

        let mut cur = lock_snapshot(current)?;
        // An install may have moved the state past this build meanwhile; keep the newer one.
        let newer = match cur.as_ref() {
            Some(c) => c.meta.last_log_id <= meta.last_log_id,
            None => true,
        };
        if newer {
            let signature = Some(meta.signature());
            let stored = encode_raft_key(&StoredSnapshotOut {
                meta: &meta,
                data: BinRef(&bytes),
            })
            .and_then(|stored| {
                kv.meta_write([(KEY_SNAPSHOT.to_vec(), Some(stored))], Durability::Fsync)
            });
            if let Err(e) = stored {
                return Err(StorageIOError::write_snapshot(signature, &e).into());
            }
            *cur = Some(CurrentSnapshot {
                meta: meta.clone(),
                data: bytes.clone(),
            });
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    fn install_blocking(
        kv: &RaftKv,
        machine: &RwLock<Machine>,
        current: &Mutex<Option<CurrentSnapshot>>,
        meta: MetaSnapshotMeta,
        bytes: Vec<u8>,
    ) -> Result<(), RaftStorageError> {
        let signature = Some(meta.signature());
        let read_err = |e: &StorageError| StorageIOError::read_snapshot(signature.clone(), e);
        let data: SnapshotData = decode_versioned(CF_META, SNAPSHOT_FORMAT, KEY_SNAPSHOT, &bytes)
            .map_err(|e| read_err(&e))?;
        if data.last_applied != meta.last_log_id || data.membership != meta.last_membership {
            return Err(StorageIOError::read_snapshot(
                signature,
                AnyError::error(format!(
                    "snapshot data is at {:?} but its meta says {:?}",
                    data.last_applied, meta.last_log_id
                )),
            )
            .into());
        }
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
            data.pairs.into_iter().map(|(k, v)| (k.0, v.0)).collect();
        // Validate before touching the disk: a snapshot that does not load is refused.
        let state = MetaState::load(pairs.clone()).map_err(|e| read_err(&e))?;

        let write_err = |e: &StorageError| StorageIOError::write_snapshot(signature.clone(), e);
        let raft_pairs = (|| {
            Ok::<_, StorageError>([
                (
                    KEY_LAST_APPLIED.to_vec(),
                    encode_raft_key(&meta.last_log_id)?,
                ),
                (
                    KEY_MEMBERSHIP.to_vec(),
                    encode_raft_key(&meta.last_membership)?,
                ),
                (
                    KEY_SNAPSHOT.to_vec(),
                    encode_raft_key(&StoredSnapshotOut {
                        meta: &meta,
                        data: BinRef(&bytes),
                    })?,
                ),
            ])
        })()
        .map_err(|e| write_err(&e))?;
        pairs.extend(raft_pairs);

        let mut cur = lock_snapshot(current)?;
        kv.meta_replace(pairs, Durability::Fsync)
            .map_err(|e| write_err(&e))?;
        {
            let mut m = write_machine(machine)?;
            m.meta = state;
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
        }
        *cur = Some(CurrentSnapshot { meta, data: bytes });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (kv, machine, current) = (self.kv.clone(), self.machine.clone(), self.snapshot.clone());
        blocking(move || Self::build_blocking(&kv, &machine, &current)).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<MetaLogId>, MetaMembership), RaftStorageError> {
        let m = self.machine.read().map_err(|_| poisoned())?;
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = MetaEntry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<MetaEntry> = entries.into_iter().collect();
        let (kv, machine) = (self.kv.clone(), self.machine.clone());
        blocking(move || Self::apply_blocking(&kv, &machine, entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &MetaSnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let (kv, machine, current) = (self.kv.clone(), self.machine.clone(), self.snapshot.clone());
        let meta = meta.clone();
        let bytes = snapshot.into_inner();
        blocking(move || Self::install_blocking(&kv, &machine, &current, meta, bytes)).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let cur = lock_snapshot(&self.snapshot)?;
        Ok(cur.as_ref().map(|c| Snapshot {
            meta: c.meta.clone(),
            snapshot: Box::new(Cursor::new(c.data.clone())),
        }))
    }
}
