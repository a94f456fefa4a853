//! The checks can fail: with a guarantee deliberately broken (`CHAT_FAILPOINTS`, debug builds
//! only), the same scenario the replication tests pass must visibly lose or duplicate
//! messages. If these tests ever pass with the switch on, the scenario no longer tests the
//! guarantee.

mod harness;

use std::time::{Duration, Instant};

use chat_client::Connection;
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, Seq};
use harness::{
    must_be_ready, must_be_ready_with, must_find_conversation_on, must_send_retrying,
    must_start_trio, pid_of, reqwest_lite, Trio, ADMIN_TOKEN,
};

/// Three nodes with `failpoints`, a conversation owned by the third, and its first user
/// connected to the first node.
async fn must_setup(
    root: &std::path::Path,
    failpoints: &str,
) -> (Trio, Connection, String, ConversationId) {
    let env = [("CHAT_FAILPOINTS".to_owned(), failpoints.to_owned())];
    let trio = must_start_trio(root, &env).await;
    let api = trio.nodes[0].api();
    let (_, conv) = must_find_conversation_on(&api, &trio.ring, trio.ids[2], "brk").await;
    let token = api
        .login("brk0", "correct horse")
        .await
        .expect("login")
        .token;
    let (conn, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    (trio, conn, token, conv)
}

async fn kill_owner(trio: &mut Trio) {
    trio.nodes[2].kill9();
    let owner = trio.ids[2].0.to_string();
    trio.nodes[0].admin(&["remove", &owner]);
    must_be_ready(&trio.nodes[0], 2).await;
    must_be_ready(&trio.nodes[1], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_before_the_quorum_loses_acknowledged_messages() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut trio, conn, token, conv) = must_setup(root.path(), "ack_before_quorum").await;
    for i in 1..=5u64 {
        assert_eq!(
            must_send_retrying(&conn, conv, &format!("a{i}"), "x")
                .await
                .seq,
            Seq(i)
        );
    }
    kill_owner(&mut trio).await;
    let after = must_send_retrying(&conn, conv, "a6", "x").await;
    assert!(
        after.seq < Seq(6),
        "with acks before the quorum, acknowledged messages 1..5 must be lost (got seq {})",
        after.seq
    );
    let history = trio.nodes[0]
        .api()
        .history(&token, conv, HistoryQuery::default())
        .await
        .expect("history");
    assert!(history.messages.len() < 6, "the loss is visible in history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_records_left_behind_duplicate_a_retried_send() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut trio, conn, token, conv) = must_setup(root.path(), "dedup_not_replicated").await;
    for i in 1..=3u64 {
        assert_eq!(
            must_send_retrying(&conn, conv, &format!("d{i}"), "x")
                .await
                .seq,
            Seq(i)
        );
    }
    kill_owner(&mut trio).await;
    let retry = must_send_retrying(&conn, conv, "d2", "x").await;
    assert!(
        !retry.duplicate && retry.seq == Seq(4),
        "without replicated dedup records a retry is stored twice (got {retry:?})"
    );
    let history = trio.nodes[0]
        .api()
        .history(&token, conv, HistoryQuery::default())
        .await
        .expect("history");
    let copies = history
        .messages
        .iter()
        .filter(|m| m.client_msg_id.as_str() == "d2")
        .count();
    assert_eq!(copies, 2, "the duplicate is visible in history");
}

/// What happened to a write its old owner made after ownership had moved.
struct StaleWrite {
    /// The old owner's answer to the write it began before it was stopped.
    stale: Result<chat_client::Ack, chat_client::ClientError>,
    /// The new owner's acknowledgement of a write made meanwhile.
    fresh: chat_client::Ack,
    /// The history afterwards: (seq, client message id).
    history: Vec<(u64, String)>,
}

fn signal(node: &harness::NodeProc, sig: &str) {
    let pid = pid_of(node).expect("running node").to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {}", node.name);
}

/// The owner of a conversation (not the Raft leader) begins a write whose replication is held
/// up on its peer link (3 s), and is stopped (SIGSTOP) right then. The others mark it down,
/// a new owner takes over and acknowledges another write at the same seq. Then the old owner
/// resumes and its held-up replication reaches the replicas, which the new owner sealed at
/// the newer epoch.
async fn stale_owner_writes_late(failpoints: &str) -> StaleWrite {
    let root = tempfile::tempdir().expect("tempdir");
    let env = [("CHAT_FAILPOINTS".to_owned(), failpoints.to_owned())];
    let trio = must_start_trio(root.path(), &env).await;
    let leader = must_be_ready(&trio.nodes[0], 3).await["leader"].as_u64();
    let slot = (1..3)
        .find(|&i| Some(trio.ids[i].0) != leader)
        .expect("a follower");
    let (old, others) = (&trio.nodes[slot], [&trio.nodes[0], &trio.nodes[3 - slot]]);
    let api = trio.nodes[0].api();
    let (users, conv) = must_find_conversation_on(&api, &trio.ring, trio.ids[slot], "fen").await;
    let bob = format!("fen{}", users.len() - 1);
    let alice_token = api
        .login("fen0", "correct horse")
        .await
        .expect("login")
        .token;
    let bob_token = api.login(&bob, "correct horse").await.expect("login").token;
    let (alice, _) = Connection::connect(&old.api().ws_url(&alice_token))
        .await
        .expect("alice on the owner");
    let (bob, _) = Connection::connect(&others[0].api().ws_url(&bob_token))
        .await
        .expect("bob elsewhere");
    for i in 1..=3u64 {
        assert_eq!(
            must_send_retrying(&alice, conv, &format!("f{i}"), "x")
                .await
                .seq,
            Seq(i)
        );
    }

    let status = reqwest_lite::Client
        .put_json(
            &format!("{}/v1/admin/faults", old.base_url()),
            ADMIN_TOKEN,
            &serde_json::json!({ "partition": [], "delay_ms": 3000 }),
        )
        .await
        .expect("set faults");
    assert_eq!(status, 200);
    let stale = tokio::spawn(async move {
        let cmid = ClientMsgId::new("stale").expect("id");
        alice.send(conv, cmid, "stale").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old, "-STOP");
    let stopped = Instant::now();
    must_be_ready_with(others[0], 2, 3).await;
    must_be_ready_with(others[1], 2, 3).await;
    let fresh = must_send_retrying(&bob, conv, "fresh", "x").await;
    eprintln!(
        "the new owner acknowledged seq {} {:?} after the stop",
        fresh.seq,
        stopped.elapsed()
    );
    signal(old, "-CONT");
    let stale = stale.await.expect("send task");
    eprintln!("the old owner answered {stale:?}");
    // Heal its link; it is marked up again and may own the conversation once more.
    let status = reqwest_lite::Client
        .put_json(
            &format!("{}/v1/admin/faults", old.base_url()),
            ADMIN_TOKEN,
            &serde_json::json!({}),
        )
        .await
        .expect("clear faults");
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let query = HistoryQuery {
            limit: Some(100),
            ..Default::default()
        };
        match others[0].api().history(&bob_token, conv, query).await {
            Ok(page) => break page,
            Err(e) if Instant::now() < deadline => {
                eprintln!("history not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("history: {e}"),
        }
    };
    let history = page
        .messages
        .iter()
        .map(|m| (m.seq.0, m.client_msg_id.as_str().to_owned()))
        .collect();
    StaleWrite {
        stale,
        fresh,
        history,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_epoch_fencing_a_stopped_owners_late_write_is_acknowledged_and_lost() {
    let run = stale_owner_writes_late("no_fencing").await;
    let stale = run
        .stale
        .expect("without fencing the replicas take the old owner's write");
    assert_eq!(
        stale.seq, run.fresh.seq,
        "two owners acknowledged the same seq: {:?}",
        run.history
    );
    assert!(
        !run.history.iter().any(|(_, id)| id == "stale"),
        "the old owner's acknowledged write is gone from history: {:?}",
        run.history
    );
}

/// The control: the same run with fencing on acknowledges nothing twice and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_epoch_fencing_a_stopped_owners_late_write_is_refused() {
    let run = stale_owner_writes_late("").await;
    assert!(
        run.stale.is_err(),
        "the replicas sealed at the newer epoch refuse the old owner: {:?}",
        run.stale
    );
    assert_eq!(
        run.history.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=run.fresh.seq.0).collect::<Vec<_>>(),
        "one gapless history"
    );
    assert_eq!(
        run.history.last().map(|(_, id)| id.as_str()),
        Some("fresh"),
        "{:?}",
        run.history
    );
}
