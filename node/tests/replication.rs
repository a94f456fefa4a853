//! Replicated conversation logs across real processes: acknowledged messages survive a
//! kill -9 of their owner, and history follows ownership when nodes leave and join.

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

fn node_id(ready: &serde_json::Value) -> NodeId {
    NodeId(ready["node_id"].as_u64().expect("node_id in readyz"))
}

/// Sends until acknowledged, with the same client message id each time, as a client does
/// while ownership moves.
async fn must_send(conn: &Connection, conv: ConversationId, id: &str, body: &str) -> Ack {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn.send(conv, cmid(id), body).await {
            Ok(ack) => return ack,
            Err(e) if Instant::now() < deadline && e.code().is_some_and(|c| c.retryable()) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("send {id} failed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_owner_kill_and_follow_ownership_on_join() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    let mut n3 = NodeProc::new(root.path(), "n3", Some(n1.peer.clone()));
    n2.start();
    n3.start();
    let r1 = must_be_ready(&n1, 3).await;
    let r2 = must_be_ready(&n2, 3).await;
    let r3 = must_be_ready(&n3, 3).await;
    let (id1, id2, id3) = (node_id(&r1), node_id(&r2), node_id(&r3));
    let ring = Ring::new(
        [id1, id2, id3],
        RingEpoch(r1["ring_epoch"].as_u64().expect("epoch")),
        DEFAULT_VNODES,
    );

    let api = n1.api();
    let mut users = Vec::new();
    for i in 0..8 {
        let name = format!("repl{i}");
        users.push((
            api.register(&name, "correct horse")
                .await
                .expect("register")
                .user_id,
            name,
        ));
    }
    let (alice, bob) = users
        .iter()
        .flat_map(|a| users.iter().map(move |b| (a.clone(), b.clone())))
        .find(|(a, b)| {
            a.0 < b.0 && ring.owner_of_conversation(&ConversationId::direct(a.0, b.0)) == Some(id3)
        })
        .expect("a conversation owned by n3");
    let conv = ConversationId::direct(alice.0, bob.0);
    let alice_token = n1
        .api()
        .login(&alice.1, "correct horse")
        .await
        .expect("login")
        .token;
    let bob_token = n2
        .api()
        .login(&bob.1, "correct horse")
        .await
        .expect("login")
        .token;
    let (a1, _) = Connection::connect(&n1.api().ws_url(&alice_token))
        .await
        .expect("connect");
    let (b2, _) = Connection::connect(&n2.api().ws_url(&bob_token))
        .await
        .expect("connect");

    for i in 1..=10u64 {
        let ack = a1
            .send(conv, cmid(&format!("a{i}")), format!("m{i}"))
            .await
            .expect("send");
        assert_eq!(ack.seq, Seq(i));
    }

    // The owner dies without warning; the operator removes it.
    n3.kill9();
    let out = n1.admin(&["remove", &id3.0.to_string()]);
    assert!(out.contains("removed"), "{out}");
    must_be_ready(&n1, 2).await;
    must_be_ready(&n2, 2).await;

    // The new owner has every acknowledged message: the log continues at 11, no gap, no reuse.
    let ack = must_send(&a1, conv, "a11", "m11").await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(11), false));
    let retry = must_send(&a1, conv, "a3", "m3").await;
    assert_eq!(
        (retry.seq, retry.duplicate),
        (Seq(3), true),
        "dedup records survived too"
    );
    let history = n2
        .api()
        .history(
            &bob_token,
            conv,
            HistoryQuery {
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .expect("history after the owner's death");
    assert_eq!(history.head, Seq(11));
    assert_eq!(
        history
            .messages
            .iter()
            .map(|m| m.body.clone())
            .collect::<Vec<_>>(),
        (1..=11).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // Bob's session follows the ring: he still gets live messages.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_11 = false;
    while !saw_11 && Instant::now() < deadline {
        if let Some(m) = b2.next_message(Duration::from_secs(1)).await.expect("read") {
            saw_11 = m.seq == Seq(11);
        }
    }
    assert!(saw_11, "bob receives the first message after the failover");

    // A new node joins; whichever node owns the conversation now has its whole history.
    let mut n4 = NodeProc::new(root.path(), "n4", Some(n2.peer.clone()));
    n4.start();
    for n in [&n1, &n2, &n4] {
        must_be_ready(n, 3).await;
    }
    let ack = must_send(&a1, conv, "a12", "m12").await;
    assert_eq!(ack.seq, Seq(12));
    let (a4, _) = Connection::connect(&n4.api().ws_url(&alice_token))
        .await
        .expect("connect");
    let page = a4
        .history(conv, None, None, Some(100))
        .await
        .expect("history via n4");
    assert_eq!(page.head, Seq(12));
    assert_eq!(
        page.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    let status = n4.admin(&["status"]);
    assert_eq!(status.matches("voter").count(), 3, "{status}");
    assert!(!status.contains(&id3.0.to_string()), "{status}");

    // Draining n1: it leaves the cluster and tells its clients to go elsewhere; nothing is
    // lost and the log continues on the remaining nodes.
    let out = n1.admin(&["drain"]);
    assert!(out.contains("drained"), "{out}");
    let closed = a1
        .wait_closed(Duration::from_secs(10))
        .await
        .expect("a1 closed");
    assert_eq!(closed.code, Some(chat_types::close::GOING_AWAY));
    n1.stop();
    for n in [&n2, &n4] {
        must_be_ready(n, 2).await;
    }
    let (a2, _) = Connection::connect(&n2.api().ws_url(&alice_token))
        .await
        .expect("alice reconnects to n2");
    let ack = must_send(&a2, conv, "a13", "m13").await;
    assert_eq!(ack.seq, Seq(13));
    let page = a4
        .history(conv, None, None, Some(100))
        .await
        .expect("history via n4");
    assert_eq!(
        page.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=13).collect::<Vec<_>>()
    );
}
