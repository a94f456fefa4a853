//! A client that sends while it receives is not a slow consumer: the node writes replies and
//! pushes while the client's own requests are still being handled, so only a client that
//! does not read fills its outbound queue.

mod harness;

use std::time::Duration;

use chat_client::Connection;
use chat_types::{ClientMsgId, ConversationId};
use futures_util::future::join_all;
use harness::{must_be_ready, must_sign_up, NodeProc};

const EACH: usize = 300;

async fn must_send_all(conn: &Connection, conv: ConversationId, who: &str) -> usize {
    let sends = (0..EACH).map(|i| {
        let cmid = ClientMsgId::new(format!("{who}{i}")).expect("id");
        conn.send(conv, cmid, format!("{who} {i}"))
    });
    let results = join_all(sends).await;
    for r in &results {
        if let Err(e) = r {
            panic!("{who}'s send failed: {e}");
        }
    }
    results.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_many_messages_while_receiving_many_is_not_closed() {
    let root = tempfile::tempdir().expect("tempdir");
    // A small outbound queue, so that one that is not drained while requests are handled
    // overflows within the run.
    let config = root.path().join("node.toml");
    std::fs::write(
        &config,
        "[limits]\noutbound_queue = 32\n[rate_limits]\nsends_per_second = 100000\n",
    )
    .expect("write config");
    let mut node = NodeProc::new(root.path(), "n1", None);
    node.env = vec![("CHAT_CONFIG".into(), config.display().to_string())];
    node.start();
    must_be_ready(&node, 1).await;
    let api = node.api();
    let (alice, at) = must_sign_up(&api, "bp_alice").await;
    let (bob, bt) = must_sign_up(&api, "bp_bob").await;
    let conv = ConversationId::direct(alice, bob);
    let (a, _) = Connection::connect(&api.ws_url(&at)).await.expect("alice");
    let (b, _) = Connection::connect(&api.ws_url(&bt)).await.expect("bob");

    // Both send at once, each with every message in flight: each receives the other's
    // messages (and a cursor per own message) while its own sends are being stored.
    let (sent_a, sent_b) = tokio::join!(must_send_all(&a, conv, "a"), must_send_all(&b, conv, "b"));
    assert_eq!((sent_a, sent_b), (EACH, EACH));

    // Each got every one of the other's messages, on the same connection.
    for (conn, from, who) in [(&a, bob, "alice"), (&b, alice, "bob")] {
        let mut got = 0;
        while got < EACH {
            match conn.next_message(Duration::from_secs(10)).await {
                Ok(Some(m)) if m.sender == from => got += 1,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{who} got {got} of {EACH} messages"),
                Err(e) => panic!("{who}'s connection failed after {got} messages: {e}"),
            }
        }
    }
}
