//! Three real `chat-node` processes on loopback: two users on different nodes talk through a
//! conversation owned by the third; order, acks, dedup and history hold, also after every
//! node restarts.

mod harness;

use std::time::Duration;

use chat_client::Connection;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_in_order_dedup_retries_and_keep_history_across_restart() {
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
    assert_eq!(
        r1["voters"].as_array().map(|v| v.len()),
        Some(3),
        "three voters: {r1}"
    );

    // Every node computes the same ring; find two users whose conversation lives on n3.
    let epoch = RingEpoch(r1["ring_epoch"].as_u64().expect("epoch"));
    let ring = Ring::new([id1, id2, id3], epoch, DEFAULT_VNODES);
    let api1 = n1.api();
    let mut users = Vec::new();
    for i in 0..8 {
        let name = format!("user{i}");
        let reg = api1
            .register(&name, "correct horse")
            .await
            .expect("register");
        users.push((reg.user_id, name));
    }
    let (alice, bob) = users
        .iter()
        .flat_map(|a| users.iter().map(move |b| (a.clone(), b.clone())))
        .find(|(a, b)| {
            a.0 < b.0 && ring.owner_of_conversation(&ConversationId::direct(a.0, b.0)) == Some(id3)
        })
        .expect("some pair of 8 users has its conversation on n3");
    let conv = ConversationId::direct(alice.0, bob.0);

    // Usernames are unique cluster-wide, whichever node is asked.
    let dup = n2.api().register(&alice.1, "another password").await;
    assert_eq!(
        dup.expect_err("taken").code(),
        Some(chat_types::ErrorCode::Conflict)
    );

    // Alice on n1 (two devices: n1 and n3), Bob on n2.
    let alice_login = n1
        .api()
        .login(&alice.1, "correct horse")
        .await
        .expect("login");
    let bob_login = n2
        .api()
        .login(&bob.1, "correct horse")
        .await
        .expect("login");
    let (a1, w) = Connection::connect(&n1.api().ws_url(&alice_login.token))
        .await
        .expect("alice connects to n1");
    assert_eq!((w.user_id, w.node_id), (alice.0, id1));
    let (a3, _) = Connection::connect(&n3.api().ws_url(&alice_login.token))
        .await
        .expect("alice's second device connects to n3");
    let (b2, w) = Connection::connect(&n2.api().ws_url(&bob_login.token))
        .await
        .expect("bob connects to n2");
    assert_eq!(w.node_id, id2);

    let info = a1.open_direct_by_username(&bob.1).await.expect("open");
    assert_eq!(info.conversation, conv);
    assert_eq!(info.head, Seq(0));

    for i in 1..=5u64 {
        let ack = a1
            .send(conv, cmid(&format!("a{i}")), format!("hello {i}"))
            .await
            .expect("send");
        assert_eq!((ack.seq, ack.duplicate), (Seq(i), false));
    }
    for i in 1..=5u64 {
        let m = b2
            .next_message(Duration::from_secs(10))
            .await
            .expect("bob reads")
            .expect("bob gets every message");
        assert_eq!(
            (m.seq, m.sender, m.body.as_str()),
            (Seq(i), alice.0, format!("hello {i}").as_str())
        );
        let own = a3
            .next_message(Duration::from_secs(10))
            .await
            .expect("alice's other device reads")
            .expect("alice's other device gets her own sends");
        assert_eq!(own.seq, Seq(i));
    }
    let ack = b2
        .send(conv, cmid("b1"), "hi alice")
        .await
        .expect("bob sends");
    assert_eq!(ack.seq, Seq(6));
    for conn in [&a1, &a3] {
        let m = conn
            .next_message(Duration::from_secs(10))
            .await
            .expect("read")
            .expect("alice's devices get bob's reply");
        assert_eq!((m.seq, m.sender), (Seq(6), bob.0));
    }
    assert!(
        a1.next_message(Duration::from_millis(300))
            .await
            .expect("read")
            .is_none(),
        "the sending connection gets an ack, not a copy of its own message"
    );

    // A retried send returns the original seq and stores and pushes nothing.
    let retry = a1.send(conv, cmid("a2"), "hello 2").await.expect("retry");
    assert_eq!((retry.seq, retry.duplicate), (Seq(2), true));
    assert!(b2
        .next_message(Duration::from_millis(500))
        .await
        .expect("read")
        .is_none());

    let page = b2
        .history(conv, None, None, Some(100))
        .await
        .expect("history");
    assert_eq!(page.head, Seq(6));
    assert_eq!(
        page.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    let before = a3
        .history(conv, None, Some(Seq(4)), Some(2))
        .await
        .expect("history");
    assert_eq!(
        before.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let after = a1
        .history(conv, Some(Seq(4)), None, Some(10))
        .await
        .expect("history");
    assert_eq!(
        after.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![5, 6]
    );

    // A user outside the conversation can neither write nor read it.
    let carol = users
        .iter()
        .find(|u| u.0 != alice.0 && u.0 != bob.0)
        .expect("a third user");
    let carol_login = n3
        .api()
        .login(&carol.1, "correct horse")
        .await
        .expect("login");
    let (c3, _) = Connection::connect(&n3.api().ws_url(&carol_login.token))
        .await
        .expect("carol connects");
    let err = c3
        .send(conv, cmid("c1"), "let me in")
        .await
        .expect_err("forbidden");
    assert_eq!(err.code(), Some(chat_types::ErrorCode::Forbidden));
    let err = n3
        .api()
        .history(&carol_login.token, conv, HistoryQuery::default())
        .await
        .expect_err("forbidden");
    assert_eq!(err.code(), Some(chat_types::ErrorCode::Forbidden));

    for c in [a1, a3, b2, c3] {
        let _ = c.close().await;
    }

    // Restart every node; the history is the same, read through any node.
    for n in [&mut n1, &mut n2, &mut n3] {
        n.stop();
    }
    for n in [&mut n1, &mut n2, &mut n3] {
        n.start();
    }
    for n in [&n1, &n2, &n3] {
        must_be_ready(n, 3).await;
    }
    for (n, token) in [
        (&n1, &alice_login.token),
        (&n2, &bob_login.token),
        (&n3, &alice_login.token),
    ] {
        let h = n
            .api()
            .history(
                token,
                conv,
                HistoryQuery {
                    limit: Some(100),
                    ..Default::default()
                },
            )
            .await
            .expect("history after restart");
        assert_eq!(h.head, Seq(6));
        assert_eq!(
            h.messages, page.messages,
            "history after restart via {}",
            n.name
        );
    }
    // The log continues where it stopped, and dedup records survived.
    let (a1, _) = Connection::connect(&n2.api().ws_url(&alice_login.token))
        .await
        .expect("old token still valid after restart");
    let ack = a1
        .send(conv, cmid("a2"), "hello 2")
        .await
        .expect("retry after restart");
    assert_eq!((ack.seq, ack.duplicate), (Seq(2), true));
    let ack = a1
        .send(conv, cmid("a7"), "after restart")
        .await
        .expect("send");
    assert_eq!((ack.seq, ack.duplicate), (Seq(7), false));

    // Logout revokes the token everywhere: at once on the node that served it, and on the
    // others as soon as they apply the Raft entry (one heartbeat or so).
    n1.api().logout(&bob_login.token).await.expect("logout");
    let err = n1
        .api()
        .history(&bob_login.token, conv, HistoryQuery::default())
        .await
        .expect_err("revoked on the node that logged out");
    assert_eq!(err.code(), Some(chat_types::ErrorCode::Unauthorized));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match n2
            .api()
            .history(&bob_login.token, conv, HistoryQuery::default())
            .await
        {
            Err(e) => {
                assert_eq!(e.code(), Some(chat_types::ErrorCode::Unauthorized));
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("a revoked token still works on n2 after 3 s"),
        }
    }
}
