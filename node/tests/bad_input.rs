//! One real node answers bad input with clear errors and stays up.

mod harness;

use std::time::Duration;

use chat_client::{ClientError, Connection, ConnectionConfig, RawEvent};
use chat_types::{close, ClientMsgId, ConversationId, ErrorCode, Seq, ServerFrame};
use harness::{must_be_ready, NodeProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_answers_bad_input_with_clear_errors_and_loses_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = NodeProc::new(root.path(), "solo", None);
    n.start();
    must_be_ready(&n, 1).await;
    let api = n.api();

    // Registration rules.
    for (user, pass) in [
        ("ab", "long enough"),
        ("alice", "short"),
        ("bad name", "long enough"),
    ] {
        let err = api.register(user, pass).await.expect_err("refused");
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidArgument),
            "{user}/{pass}"
        );
    }
    let alice = api
        .register("Alice", "long enough")
        .await
        .expect("register");
    assert_eq!(alice.username, "alice");
    let bob = api.register("bob", "long enough").await.expect("register");
    let err = api
        .login("alice", "wrong password")
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    let login = api.login("ALICE", "long enough").await.expect("login");

    // No or bad token: 401 before the upgrade.
    let err = Connection::connect(&api.ws_url("nonsense"))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err:?}");

    let quiet = ConnectionConfig {
        heartbeat: false,
        ..Default::default()
    };
    let (conn, _) = Connection::connect_with(&api.ws_url(&login.token), quiet.clone())
        .await
        .expect("connect");
    let conv = ConversationId::direct(alice.user_id, bob.user_id);
    let ack = conn
        .send(conv, ClientMsgId::new("m1").expect("id"), "kept")
        .await
        .expect("send");
    assert_eq!(ack.seq, Seq(1));

    // Malformed JSON and unknown frame types: an error frame each, and the connection stays.
    conn.send_raw_text("{nope".into()).await.expect("send raw");
    conn.send_raw_text(r#"{"type":"teleport","id":"x1"}"#.into())
        .await
        .expect("send raw");
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match conn
            .next_raw_frame(Duration::from_secs(5))
            .await
            .expect("raw")
        {
            Some(RawEvent::Frame(ServerFrame::Error { error, .. })) => codes.push(error.code),
            // The cursor of the message sent above may come in between.
            Some(RawEvent::Frame(ServerFrame::EventCursor { .. })) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no error frame"),
        }
    }
    assert_eq!(
        codes,
        vec![ErrorCode::MalformedFrame, ErrorCode::UnknownFrame]
    );
    conn.ping().await.expect("connection still serves");

    // A body over the limit is refused; an empty one too; nothing is stored.
    let err = conn
        .send(
            conv,
            ClientMsgId::new("m2").expect("id"),
            "x".repeat(20_000),
        )
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    let err = conn
        .send(conv, ClientMsgId::new("m3").expect("id"), "")
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));

    // A conversation the user is not part of: forbidden, nothing stored.
    let carol = api
        .register("carol", "long enough")
        .await
        .expect("register");
    let theirs = ConversationId::direct(bob.user_id, carol.user_id);
    let err = conn
        .send(theirs, ClientMsgId::new("m4").expect("id"), "intrude")
        .await
        .expect_err("forbidden");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = conn
        .open_direct_by_username("nobody")
        .await
        .expect_err("no user");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    let page = conn.history(conv, None, None, None).await.expect("history");
    assert_eq!(page.head, Seq(1));
    assert_eq!(page.messages.len(), 1);

    // A frame over 64 KiB closes the connection with 1009.
    let _ = conn.send_raw_text("y".repeat(70 * 1024)).await;
    let info = conn
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(info.code, Some(close::TOO_BIG));

    // Too many malformed frames in a row close the connection as abuse.
    let (conn, _) = Connection::connect_with(&api.ws_url(&login.token), quiet)
        .await
        .expect("reconnect");
    for _ in 0..10 {
        let _ = conn.send_raw_text("not json".into()).await;
    }
    let info = conn
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(info.code, Some(close::PROTOCOL_ABUSE));

    // The node is still healthy and the accepted message is still there.
    let (conn, _) = Connection::connect(&api.ws_url(&login.token))
        .await
        .expect("node still accepts");
    let page = conn.history(conv, None, None, None).await.expect("history");
    assert_eq!(page.messages[0].body, "kept");
    let closed = conn.close().await;
    assert!(closed.is_ok() || matches!(closed, Err(ClientError::Closed { .. })));
    n.stop();
}

/// A connection that sends nothing for two heartbeats is closed (resumable); one whose client
/// keeps pinging stays open however long it is idle otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_two_heartbeats_and_a_pinging_one_is_kept() {
    let root = tempfile::tempdir().expect("tempdir");
    let node =
        harness::must_start_configured(root.path(), "n1", "[limits]\nheartbeat_ms = 1000\n").await;
    let api = node.api();
    let (_, token) = harness::must_sign_up(&api, "idle_carol").await;
    let quiet = ConnectionConfig {
        heartbeat: false,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let (silent, _) = Connection::connect_with(&api.ws_url(&token), quiet)
        .await
        .expect("connect the silent one");
    let (pinging, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect the pinging one");

    let closed = silent
        .wait_closed(Duration::from_secs(20))
        .await
        .expect("the silent connection is closed");
    assert_eq!(closed.code, Some(close::GOING_AWAY), "{closed:?}");
    assert!(closed.reason.contains("heartbeats"), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, before two heartbeats",
        started.elapsed()
    );
    // Twice as long again: the pings keep the other one open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pinging.close_status().is_none(),
        "{:?}",
        pinging.close_status()
    );
    pinging
        .ping()
        .await
        .expect("the pinging connection still answers");
}
