//! Automatic failure detection: a killed owner is marked down by the leader without any
//! operator, its conversations move to the others with every acknowledged message, and when
//! it comes back it is marked up and catches up before serving again.

mod harness;

use std::time::{Duration, Instant};

use chat_client::{Ack, Connection};
use chat_cluster::ring::{Ring, DEFAULT_VNODES};
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, ConversationId, NodeId, RingEpoch, Seq};
use harness::{must_be_ready, must_be_ready_with, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

async fn must_send(conn: &Connection, conv: ConversationId, id: &str) -> Ack {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.send(conv, cmid(id), id).await {
            Ok(ack) => return ack,
            Err(e) if Instant::now() < deadline && e.code().is_some_and(|c| c.retryable()) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("send {id}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_without_an_operator_and_rejoins_when_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    let mut n3 = NodeProc::new(root.path(), "n3", Some(n1.peer.clone()));
    n2.start();
    n3.start();
    let mut ids = Vec::new();
    let mut epoch = 0;
    for n in [&n1, &n2, &n3] {
        let r = must_be_ready(n, 3).await;
        ids.push(NodeId(r["node_id"].as_u64().expect("id")));
        epoch = r["ring_epoch"].as_u64().expect("epoch");
    }
    let ring = Ring::new(ids.clone(), RingEpoch(epoch), DEFAULT_VNODES);
    let api = n1.api();
    let mut users = Vec::new();
    let conv = loop {
        assert!(users.len() < 40, "no conversation owned by n3");
        let name = format!("fo{}", users.len());
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
        .login("fo0", "correct horse")
        .await
        .expect("login")
        .token;
    let (conn, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    for i in 1..=5u64 {
        assert_eq!(must_send(&conn, conv, &format!("m{i}")).await.seq, Seq(i));
    }

    // Kill the owner; nobody removes it.
    n3.kill9();
    let killed = Instant::now();
    let ack = must_send(&conn, conv, "m6").await;
    eprintln!(
        "first send acknowledged {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        (ack.seq, ack.duplicate),
        (Seq(6), false),
        "nothing acknowledged was lost"
    );
    let ready = must_be_ready_with(&n1, 2, 3).await;
    assert_eq!(
        ready["voters"].as_array().map(|v| v.len()),
        Some(3),
        "marked down, not removed: it stays a voter"
    );

    // It comes back with its old data: marked up, it takes its conversations back and
    // catches up first, so the log continues without a gap.
    n3.start();
    for n in [&n1, &n2, &n3] {
        must_be_ready(n, 3).await;
    }
    let ack = must_send(&conn, conv, "m7").await;
    assert_eq!(ack.seq, Seq(7));
    let history = n3
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
}
