//! A client that sends while it receives is not a slow consumer: the node writes replies and
//! pushes while the client's own requests are still being handled, so only a client that
//! does not read fills its outbound queue.

mod harness;

use std::time::Duration;

use chat_client::{Connection, RawEvent};
use chat_types::{ClientFrame, ClientMsgId, ConversationId, ErrorCode, Seq, ServerFrame};
use futures_util::future::join_all;
use harness::{must_sign_up, must_start_configured};

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
    let node = must_start_configured(
        root.path(),
        "n1",
        "[limits]\noutbound_queue = 32\n[rate_limits]\nsends_per_second = 100000\n",
    )
    .await;
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

/// A client that sends without waiting for acks has its sends to one conversation go to the
/// owner together; each is still stored in the order sent and answered in the order asked,
/// whatever else sits between them: another request, a bad send, a retry, a send elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_behind_each_other_are_stored_and_answered_in_the_order_sent() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = must_start_configured(
        root.path(),
        "n1",
        "[rate_limits]\nsends_per_second = 100000\n",
    )
    .await;
    let api = node.api();
    let (alice, at) = must_sign_up(&api, "order_alice").await;
    let (bob, _) = must_sign_up(&api, "order_bob").await;
    let (carol, _) = must_sign_up(&api, "order_carol").await;
    let (with_bob, with_carol) = (
        ConversationId::direct(alice, bob),
        ConversationId::direct(alice, carol),
    );
    let (a, _) = Connection::connect(&api.ws_url(&at)).await.expect("alice");

    const FRAMES: usize = 300;
    // What each request is, and so what its answer must be.
    let mut expected_bob_bodies = Vec::new();
    let mut frames = Vec::new();
    for i in 0..FRAMES {
        let id = format!("r{i}");
        let frame = match i {
            50 => ClientFrame::Ping { id },
            100 => send_frame(id, with_bob, "empty".into(), String::new()),
            120 => send_frame(id, with_bob, "m10".into(), "m10 again".into()),
            150 => send_frame(id, with_carol, "c150".into(), "to carol".into()),
            _ => {
                expected_bob_bodies.push(format!("m{i}"));
                send_frame(id, with_bob, format!("m{i}"), format!("m{i}"))
            }
        };
        frames.push(frame);
    }
    for f in &frames {
        a.send_frame(f).await.expect("send a frame");
    }

    let mut answers = Vec::new();
    while answers.len() < FRAMES {
        match a.next_raw_frame(Duration::from_secs(20)).await {
            Ok(Some(RawEvent::Frame(f))) => {
                if answer_id(&f).is_some_and(|id| id.starts_with('r')) {
                    answers.push(f);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("{} of {FRAMES} answers", answers.len()),
            Err(e) => panic!("connection failed after {} answers: {e}", answers.len()),
        }
    }
    let mut next_seq = 1;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer_id(answer),
            Some(format!("r{i}").as_str()),
            "answers in request order"
        );
        match (i, answer) {
            (50, ServerFrame::Pong { .. }) => {}
            (100, ServerFrame::Error { error, .. }) => {
                assert_eq!(error.code, ErrorCode::InvalidArgument, "{error:?}")
            }
            (120, ServerFrame::Ack { seq, duplicate, .. }) => {
                assert!(*duplicate, "a retry is a duplicate");
                assert_eq!(*seq, Seq(11), "the retry names the original's seq");
            }
            (
                150,
                ServerFrame::Ack {
                    conversation,
                    seq,
                    duplicate,
                    ..
                },
            ) => assert_eq!(
                (*conversation, *seq, *duplicate),
                (with_carol, Seq(1), false)
            ),
            (
                _,
                ServerFrame::Ack {
                    conversation,
                    seq,
                    duplicate,
                    ..
                },
            ) => {
                assert_eq!(
                    (*conversation, *seq, *duplicate),
                    (with_bob, Seq(next_seq), false)
                );
                next_seq += 1;
            }
            (_, other) => panic!("request {i} got {other:?}"),
        }
    }
    // Stored in the order sent.
    assert_eq!(all_bodies(&a, with_bob).await, expected_bob_bodies);

    // They did go together: fewer requests to the owner than sends.
    let (_, metrics) = harness::reqwest_lite::Client
        .get(&format!("{}/metrics", node.base_url()))
        .await
        .expect("metrics");
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let (appended, batches) = (
        counter("chat_messages_appended_total "),
        counter("chat_send_batches_total "),
    );
    assert_eq!(appended as usize, expected_bob_bodies.len() + 1);
    assert!(
        batches < appended,
        "{appended} sends went out in {batches} requests: none queued behind another"
    );
}

/// The request id a reply names (the replies this file asks for).
fn answer_id(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Ack { id, .. } | ServerFrame::Pong { id } => Some(id),
        ServerFrame::Error { id, .. } => id.as_deref(),
        _ => None,
    }
}

/// Frames a client sent before its close are handled before the close is answered: sends it
/// pipelined and then closed on are all stored, in the order sent, though their acks can no
/// longer reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_pipelined_before_a_close_are_stored_in_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = must_start_configured(
        root.path(),
        "n1",
        "[rate_limits]\nsends_per_second = 100000\n",
    )
    .await;
    let api = node.api();
    let (alice, at) = must_sign_up(&api, "closing_alice").await;
    let (bob, _) = must_sign_up(&api, "closing_bob").await;
    let conv = ConversationId::direct(alice, bob);
    let (a, _) = Connection::connect(&api.ws_url(&at)).await.expect("alice");

    const SENDS: usize = 200;
    for i in 0..SENDS {
        let frame = send_frame(format!("r{i}"), conv, format!("m{i}"), format!("m{i}"));
        a.send_frame(&frame).await.expect("send a frame");
    }
    a.close().await.expect("the close is answered");

    let (again, _) = Connection::connect(&api.ws_url(&at))
        .await
        .expect("alice again");
    let expected: Vec<String> = (0..SENDS).map(|i| format!("m{i}")).collect();
    assert_eq!(all_bodies(&again, conv).await, expected);
}

/// Every message body of `conv`, in seq order, paged through `history`.
async fn all_bodies(conn: &Connection, conv: ConversationId) -> Vec<String> {
    let mut stored = Vec::new();
    let mut after = Seq(0);
    loop {
        let page = conn
            .history(conv, Some(after), None, Some(100))
            .await
            .expect("history");
        let Some(last) = page.messages.last() else {
            return stored;
        };
        after = last.seq;
        stored.extend(page.messages.into_iter().map(|m| m.body));
    }
}

/// A `send` frame with request id `id`.
fn send_frame(id: String, conversation: ConversationId, cmid: String, body: String) -> ClientFrame {
    ClientFrame::Send {
        id,
        conversation,
        client_msg_id: ClientMsgId::new(cmid).expect("id"),
        body,
        refers: None,
        attachments: Vec::new(),
    }
}
