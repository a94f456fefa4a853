//! Automatic failure detection: a killed owner is marked down by the leader without any
//! operator, its conversations move to the others with every acknowledged message, and when
//! it comes back it is marked up and catches up before serving again.

mod harness;

use std::time::Instant;

use chat_client::Connection;
use chat_types::rest::HistoryQuery;
use chat_types::Seq;
use harness::{
    must_be_ready, must_be_ready_with, must_find_conversation_on, must_partition,
    must_send_retrying, must_start_trio,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_without_an_operator_and_rejoins_when_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut trio = must_start_trio(root.path(), &[]).await;
    let api = trio.nodes[0].api();
    let (_, conv) = must_find_conversation_on(&api, &trio.ring, trio.ids[2], "fo").await;
    let token = api
        .login("fo0", "correct horse")
        .await
        .expect("login")
        .token;
    let (conn, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    for i in 1..=5u64 {
        assert_eq!(
            must_send_retrying(&conn, conv, &format!("m{i}"), "x")
                .await
                .seq,
            Seq(i)
        );
    }

    // Kill the owner; nobody removes it.
    trio.nodes[2].kill9();
    let killed = Instant::now();
    let ack = must_send_retrying(&conn, conv, "m6", "x").await;
    eprintln!(
        "first send acknowledged {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        (ack.seq, ack.duplicate),
        (Seq(6), false),
        "nothing acknowledged was lost"
    );
    let ready = must_be_ready_with(&trio.nodes[0], 2, 3).await;
    assert_eq!(
        ready["voters"].as_array().map(|v| v.len()),
        Some(3),
        "marked down, not removed: it stays a voter"
    );

    // It comes back with its old data: marked up, it takes its conversations back and
    // catches up first, so the log continues without a gap.
    trio.nodes[2].start();
    for n in &trio.nodes {
        must_be_ready(n, 3).await;
    }
    let ack = must_send_retrying(&conn, conv, "m7", "x").await;
    assert_eq!(ack.seq, Seq(7));
    let history = trio.nodes[2]
        .api()
        .history(
            &token,
            conv,
            HistoryQuery {
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("history through the returned node");
    assert_eq!(
        history.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    // Replica by replica: the returned node's own copy holds the same entries as the others'.
    let copies = must_agree_on_replicas(&trio.nodes, conv).await;
    assert_eq!(copies.len(), 3, "three replicas of the log");
    assert_eq!(copies[0].len(), 7);

    // The operator endpoint answers bad input with clear errors.
    let base = trio.nodes[0].base_url();
    let (status, _) = harness::reqwest_lite::Client
        .get(&format!("{base}/v1/admin/logs/{conv}"))
        .await
        .expect("get");
    assert_eq!(status, 401, "the operator token is required");
    for query in [
        "dm:x?limit=5",
        "{conv}?limit=0",
        "{conv}?limit=5000",
        "{conv}?after=-1",
    ] {
        let url = format!(
            "{base}/v1/admin/logs/{}",
            query.replace("{conv}", &conv.to_string())
        );
        let v = harness::reqwest_lite::Client
            .get_json_authorized(&url, harness::ADMIN_TOKEN)
            .await
            .expect("get");
        assert_eq!(v["code"], "invalid_argument", "{query}: {v}");
    }
}

/// Polls every node's own copy of `conv` (`GET /v1/admin/logs/...`) until the replicas hold
/// identical entries (seq, writer's epoch, digest), for up to 10 s; returns the copies.
async fn must_agree_on_replicas(
    nodes: &[harness::NodeProc],
    conv: chat_types::ConversationId,
) -> Vec<Vec<harness::LogEntry>> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut copies = Vec::new();
        for n in nodes {
            let copy = harness::local_copy(&n.http, &conv)
                .await
                .expect("local log");
            copies.extend(copy);
        }
        if copies.windows(2).all(|w| w[0] == w[1]) {
            return copies;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still differ after 10 s: {copies:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_owner_is_routed_around_and_cannot_fork_the_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let trio = must_start_trio(root.path(), &[]).await;
    let api = trio.nodes[0].api();
    let (_, conv) = must_find_conversation_on(&api, &trio.ring, trio.ids[2], "pt").await;
    let token = api
        .login("pt0", "correct horse")
        .await
        .expect("login")
        .token;
    let (conn, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    // A second client of the same user stays on the node that will be cut off.
    let (cut_off, _) = Connection::connect(&trio.nodes[2].api().ws_url(&token))
        .await
        .expect("connect to n3");
    for i in 1..=3u64 {
        assert_eq!(
            must_send_retrying(&conn, conv, &format!("m{i}"), "x")
                .await
                .seq,
            Seq(i)
        );
    }

    must_partition(&trio.nodes, Some(2)).await;
    let ack = must_send_retrying(&conn, conv, "m4", "x").await;
    assert_eq!(
        ack.seq,
        Seq(4),
        "the majority side takes over with every message"
    );
    must_be_ready_with(&trio.nodes[0], 2, 3).await;
    // The cut-off node cannot get a write acknowledged: no replica takes its epoch.
    let lonely = cut_off
        .send(
            conv,
            chat_types::ClientMsgId::new("lonely").expect("id"),
            "x",
        )
        .await;
    assert!(
        lonely.is_err(),
        "a minority owner must not acknowledge: {lonely:?}"
    );

    must_partition(&trio.nodes, None).await;
    for n in &trio.nodes {
        must_be_ready(n, 3).await;
    }
    let ack = must_send_retrying(&conn, conv, "m5", "x").await;
    assert_eq!(ack.seq, Seq(5), "one history after healing, no fork");
    let history = api
        .history(
            &token,
            conv,
            HistoryQuery {
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(
        history.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    assert!(history
        .messages
        .iter()
        .all(|m| m.client_msg_id.as_str() != "lonely"));
}
