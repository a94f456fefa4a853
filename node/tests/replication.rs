//! Replicated conversation logs across real processes: acknowledged messages survive a
//! kill -9 of their owner, and history follows ownership when nodes leave and join.

mod harness;

use std::time::{Duration, Instant};

use chat_client::Connection;
use chat_types::rest::HistoryQuery;
use chat_types::{ClientMsgId, Seq};
use harness::{
    must_be_ready, must_find_conversation_on, must_send_retrying, must_start_trio, NodeProc, Trio,
};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_owner_kill_and_follow_ownership_on_join() {
    let root = tempfile::tempdir().expect("tempdir");
    let Trio { nodes, ids, ring } = must_start_trio(root.path(), &[]).await;
    let [mut n1, n2, mut n3]: [NodeProc; 3] = nodes.try_into().ok().expect("three nodes");
    let id3 = ids[2];
    let api = n1.api();
    let (users, conv) = must_find_conversation_on(&api, &ring, id3, "repl").await;
    let bob_name = format!("repl{}", users.len() - 1);
    let alice_token = api
        .login("repl0", "correct horse")
        .await
        .expect("login")
        .token;
    let bob_token = n2
        .api()
        .login(&bob_name, "correct horse")
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
    let ack = must_send_retrying(&a1, conv, "a11", "m11").await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(11), false));
    let retry = must_send_retrying(&a1, conv, "a3", "m3").await;
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
    let ack = must_send_retrying(&a1, conv, "a12", "m12").await;
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
    // Every member's own counts: alice's connection on n1, another on n4.
    let rows: Vec<&str> = status.lines().filter(|l| l.contains("voter")).collect();
    assert!(
        rows.iter()
            .all(|r| r.contains(" in ") && !r.trim_end().ends_with('-')),
        "every member in the ring and answering: {status}"
    );
    let n1_row = rows
        .iter()
        .find(|r| r.contains(&n1.http))
        .unwrap_or_else(|| panic!("a row for n1: {status}"));
    let n1_counts: Vec<u64> = n1_row
        .split_whitespace()
        .rev()
        .take(3)
        .map(|c| c.parse().expect("a count"))
        .collect();
    assert!(n1_counts[2] >= 1, "alice's connection on n1: {status}");

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
    let ack = must_send_retrying(&a2, conv, "a13", "m13").await;
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
