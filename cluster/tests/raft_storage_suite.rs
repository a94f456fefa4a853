//! The metadata Raft store on real RocksDB: openraft's own storage conformance suite, then
//! what the suite does not cover (restart, snapshot install, state machine answers, corrupt
//! bytes on disk).

// openraft's StorageError is large by design and is the error type its suite returns.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};

use chat_cluster::meta::{MetaCommand, MetaResponse, NodeInfo};
use chat_cluster::raft::{open_stores, LogStore, MetaEntry, StateMachineStore, TypeConfig};
use chat_storage::raft_kv::RaftKv;
use chat_storage::{Durability, Store};
use chat_types::UserId;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, LogState, Membership, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
    Vote,
};
use tempfile::TempDir;

type RaftStorageError = openraft::StorageError<u64>;

/// Opens a fresh store in a temporary directory, which is the guard: it lives as long as the
/// test that uses the store.
struct RocksStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftStorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = Store::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open_stores(store).map_err(|e| StorageIOError::read(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), RaftStorageError> {
    // The suite starts its own tokio runtimes, so this is a plain test.
    Suite::test_all(RocksStoreBuilder)
}

fn must_open(dir: &TempDir) -> (LogStore, StateMachineStore) {
    let store = Store::open(dir.path()).expect("open store");
    open_stores(store).expect("open raft stores")
}

fn blank(term: u64, index: u64) -> MetaEntry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Blank,
    }
}

fn command(term: u64, index: u64, cmd: MetaCommand) -> MetaEntry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> MetaEntry {
    let nodes: BTreeMap<u64, NodeInfo> = voters
        .iter()
        .map(|id| {
            (
                *id,
                NodeInfo {
                    http_addr: format!("127.0.0.1:{}", 8000 + id),
                    peer_addr: format!("127.0.0.1:{}", 9000 + id),
                },
            )
        })
        .collect();
    let config = vec![voters.iter().copied().collect::<BTreeSet<u64>>()];
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(config, nodes)),
    }
}

fn register(name: &str) -> MetaCommand {
    MetaCommand::RegisterUser {
        username: name.into(),
        password_hash: "argon2-hash".into(),
        now_ms: 7,
    }
}

fn session(token_hash: &str, user: u64) -> MetaCommand {
    MetaCommand::CreateSession {
        token_hash: token_hash.into(),
        user_id: UserId(user),
        now_ms: 8,
    }
}

/// A short history: membership, a blank entry, two users and a session.
fn history() -> Vec<MetaEntry> {
    vec![
        membership(1, 1, &[1, 2, 3]),
        blank(1, 2),
        command(1, 3, register("alice")),
        command(1, 4, register("bob")),
        command(2, 5, session("tok-a", 1)),
    ]
}

#[tokio::test]
async fn state_machine_answers_each_entry_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = must_open(&dir);
    let replies = sm
        .apply(vec![
            membership(1, 1, &[1]),
            blank(1, 2),
            command(1, 3, register("alice")),
            command(1, 4, register("alice")),
            command(1, 5, session("t", 1)),
            command(1, 6, session("t2", 99)),
            command(
                1,
                7,
                MetaCommand::RevokeSession {
                    token_hash: "t".into(),
                },
            ),
        ])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![
            MetaResponse::None,
            MetaResponse::None,
            MetaResponse::Registered { user_id: UserId(1) },
            MetaResponse::UsernameTaken,
            MetaResponse::SessionCreated,
            MetaResponse::UnknownUser,
            MetaResponse::SessionRevoked { existed: true },
        ]
    );
    let shared = sm.shared();
    assert_eq!(shared.last_applied_index(), Some(7));
    assert_eq!(shared.read(|s| s.user_count()), 1);
    assert!(shared.read(|s| s.session("t").is_none()));
    assert!(sm
        .apply(Vec::<MetaEntry>::new())
        .await
        .expect("apply nothing")
        .is_empty());
}

#[tokio::test]
async fn reopened_store_returns_the_same_vote_log_and_applied_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = history();
    let vote = Vote::new_committed(2, 1);
    let (state_before, log_before, applied_before, snapshot_meta) = {
        let (mut log, mut sm) = must_open(&dir);
        log.save_vote(&vote).await.expect("save vote");
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_committed(Some(log_id(2, 1, 5)))
            .await
            .expect("save committed");
        sm.apply(entries.clone()).await.expect("apply");
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build snapshot");
        log.purge(log_id(1, 1, 2)).await.expect("purge");
        let state = log.get_log_state().await.expect("log state");
        let logs = log.try_get_log_entries(..).await.expect("read log");
        let applied = sm.applied_state().await.expect("applied state");
        (state, logs, applied, snapshot.meta)
    };

    let (mut log, mut sm) = must_open(&dir);
    assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("read committed"),
        Some(log_id(2, 1, 5))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state, state_before);
    assert_eq!(
        state,
        LogState {
            last_purged_log_id: Some(log_id(1, 1, 2)),
            last_log_id: Some(log_id(2, 1, 5)),
        }
    );
    let logs = log.try_get_log_entries(..).await.expect("read log");
    assert_eq!(logs, log_before);
    assert_eq!(logs, entries[2..].to_vec());

    let applied = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, applied_before);
    assert_eq!(applied.0, Some(log_id(2, 1, 5)));
    assert_eq!(applied.1.log_id(), &Some(log_id(1, 1, 1)));
    let shared = sm.shared();
    assert_eq!(
        shared.read(|s| s.user_by_name("bob").map(|a| a.user_id)),
        Some(UserId(2))
    );
    assert_eq!(
        shared.read(|s| s.session("tok-a").map(|r| r.user_id)),
        Some(UserId(1))
    );
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("a snapshot survives restart");
    assert_eq!(current.meta, snapshot_meta);

    // Applying goes on from the reloaded state: the next user id follows bob's.
    let replies = sm
        .apply([command(2, 6, register("carol"))])
        .await
        .expect("apply");
    assert_eq!(
        replies,
        vec![MetaResponse::Registered { user_id: UserId(3) }]
    );
}

#[tokio::test]
async fn installed_snapshot_replaces_the_state_and_survives_restart() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let (_leader_log, mut leader) = must_open(&leader_dir);
    leader.apply(history()).await.expect("apply on leader");
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let data = built.snapshot.get_ref().clone();
    assert_eq!(
        data.first(),
        Some(&1),
        "snapshot data starts with its format version"
    );

    {
        let (_log, mut follower) = must_open(&follower_dir);
        // State the snapshot must wipe out.
        follower
            .apply([membership(1, 1, &[1]), command(1, 2, register("zed"))])
            .await
            .expect("apply on follower");
        let shared = follower.shared();
        let mut receiving = follower
            .begin_receiving_snapshot()
            .await
            .expect("begin receiving");
        receiving.get_mut().extend_from_slice(&data);
        follower
            .install_snapshot(&built.meta, receiving)
            .await
            .expect("install");
        // The handle taken before the install sees the installed state.
        assert!(shared.read(|s| s.user_by_name("zed").is_none()));
        assert_eq!(shared.read(|s| s.user_count()), 2);
        assert_eq!(shared.last_applied_index(), Some(5));
    }

    let (_log, mut follower) = must_open(&follower_dir);
    assert_eq!(
        follower.applied_state().await.expect("applied"),
        leader.applied_state().await.expect("applied")
    );
    let shared = follower.shared();
    assert!(shared.read(|s| s.user_by_name("zed").is_none()));
    assert!(shared.read(|s| s.user_by_name("alice").is_some()));
    assert!(shared.read(|s| s.session("tok-a").is_some()));
    let current = follower
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("installed snapshot survives restart");
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), data);
}

#[tokio::test]
async fn a_snapshot_that_does_not_match_its_meta_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = must_open(&dir);
    sm.apply(history()).await.expect("apply");
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let other_dir = tempfile::tempdir().expect("tempdir");
    let (_other_log, mut other) = must_open(&other_dir);
    let mut meta = built.meta.clone();
    meta.last_log_id = Some(log_id(9, 1, 50));
    assert!(other
        .install_snapshot(&meta, built.snapshot.clone())
        .await
        .is_err());

    let mut garbage = other.begin_receiving_snapshot().await.expect("begin");
    garbage.get_mut().extend_from_slice(&[1, 0xc1, 0xc1]);
    assert!(other.install_snapshot(&built.meta, garbage).await.is_err());
    assert_eq!(other.applied_state().await.expect("applied").0, None);
}

#[tokio::test]
async fn corrupt_log_bytes_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let (mut log, _sm) = open_stores(store.clone()).expect("open raft stores");
    let kv = RaftKv::new(store);
    kv.append_log([(1, vec![9, 1, 2])], Durability::Wal)
        .expect("unknown version");
    assert!(log.try_get_log_entries(1..2).await.is_err());
    kv.append_log([(1, vec![1, 0xc1])], Durability::Wal)
        .expect("bad msgpack");
    assert!(log.try_get_log_entries(..).await.is_err());
    assert!(log.get_log_state().await.is_err());
    kv.append_log([(1, Vec::new())], Durability::Wal)
        .expect("empty value");
    assert!(log.try_get_log_entries(..).await.is_err());
}
