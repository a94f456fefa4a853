//! The checks can fail: with a guarantee deliberately broken (`CHAT_FAILPOINTS`, debug builds
//! only), the same scenario the replication tests pass must visibly lose or duplicate
//! messages. If these tests ever pass with the switch on, the scenario no longer tests the
//! guarantee.

mod harness;

use chat_client::Connection;
use chat_types::rest::HistoryQuery;
use chat_types::{ConversationId, Seq};
use harness::{
    must_be_ready, must_find_conversation_on, must_send_retrying, must_start_trio, Trio,
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
