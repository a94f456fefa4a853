//! The checks can fail: with a guarantee deliberately broken (`CHAT_FAILPOINTS`, debug builds
//! only), the same scenario the replication tests pass must visibly lose or duplicate
//! messages. If these tests ever pass with the switch on, the scenario no longer tests the
//! guarantee.

mod harness;

use std::time::{Duration, Instant};

use chat_client::{Ack, Connection};
use chat_cluster::ring::{Ring, DEFAULT_VNODES};
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, NodeId, RingEpoch, Seq};
use harness::{must_be_ready, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

/// Three nodes with `failpoints`; a conversation owned by the third; Alice connected to the
/// first. Returns the nodes, the third's id, Alice's connection, a token and the conversation.
async fn must_setup(
    root: &std::path::Path,
    failpoints: &str,
) -> (Vec<NodeProc>, NodeId, Connection, String, ConversationId) {
    let env = vec![("CHAT_FAILPOINTS".to_owned(), failpoints.to_owned())];
    let mut n1 = NodeProc::new(root, "n1", None);
    n1.env = env.clone();
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut nodes = vec![n1];
    for name in ["n2", "n3"] {
        let mut n = NodeProc::new(root, name, Some(nodes[0].peer.clone()));
        n.env = env.clone();
        n.start();
        nodes.push(n);
    }
    let mut ids = Vec::new();
    let mut epoch = 0;
    for n in &nodes {
        let r = must_be_ready(n, 3).await;
        ids.push(NodeId(r["node_id"].as_u64().expect("id")));
        epoch = r["ring_epoch"].as_u64().expect("epoch");
    }
    let ring = Ring::new(ids.clone(), RingEpoch(epoch), DEFAULT_VNODES);
    let api = nodes[0].api();
    let mut users = Vec::new();
    let conv = loop {
        let i = users.len();
        assert!(i < 40, "no conversation owned by n3");
        let name = format!("brk{i}");
        users.push(
            api.register(&name, "correct horse")
                .await
                .expect("register"),
        );
        let found = users.iter().skip(1).find(|u| {
            ring.owner_of_conversation(&ConversationId::direct(users[0].user_id, u.user_id))
                == Some(ids[2])
        });
        if let Some(u) = found {
            break ConversationId::direct(users[0].user_id, u.user_id);
        }
    };
    let token = api
        .login("brk0", "correct horse")
        .await
        .expect("login")
        .token;
    let (conn, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    (nodes, ids[2], conn, token, conv)
}

async fn must_send(conn: &Connection, conv: ConversationId, id: &str) -> Ack {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.send(conv, cmid(id), id).await {
            Ok(ack) => return ack,
            Err(e) if Instant::now() < deadline && e.code().is_some_and(|c| c.retryable()) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("send {id}: {e:?}"),
        }
    }
}

async fn kill_owner(nodes: &mut [NodeProc], owner: NodeId) {
    nodes[2].kill9();
    nodes[0].admin(&["remove", &owner.0.to_string()]);
    must_be_ready(&nodes[0], 2).await;
    must_be_ready(&nodes[1], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_before_the_quorum_loses_acknowledged_messages() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, owner, conn, token, conv) = must_setup(root.path(), "ack_before_quorum").await;
    for i in 1..=5u64 {
        assert_eq!(must_send(&conn, conv, &format!("a{i}")).await.seq, Seq(i));
    }
    kill_owner(&mut nodes, owner).await;
    let after = must_send(&conn, conv, "a6").await;
    assert!(
        after.seq < Seq(6),
        "with acks before the quorum, acknowledged messages 1..5 must be lost (got seq {})",
        after.seq
    );
    let history = nodes[0]
        .api()
        .history(&token, conv, HistoryQuery::default())
        .await
        .expect("history");
    assert!(history.messages.len() < 6, "the loss is visible in history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_records_left_behind_duplicate_a_retried_send() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, owner, conn, token, conv) =
        must_setup(root.path(), "dedup_not_replicated").await;
    for i in 1..=3u64 {
        assert_eq!(must_send(&conn, conv, &format!("d{i}")).await.seq, Seq(i));
    }
    kill_owner(&mut nodes, owner).await;
    let retry = must_send(&conn, conv, "d2").await;
    assert!(
        !retry.duplicate && retry.seq == Seq(4),
        "without replicated dedup records a retry is stored twice (got {retry:?})"
    );
    let history = nodes[0]
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
