//! The per-user event stream: a client that reconnects with its cursor gets every event it
//! missed, in order and once, or an explicit resync notice; the stream survives the loss of
//! the user's home node.

mod harness;

use std::time::{Duration, Instant};

use chat_client::{Connection, ConnectionConfig, RawEvent};
use chat_cluster::ring::{Ring, DEFAULT_VNODES};
use chat_types::{
    ClientMsgId, ConversationId, EventSeq, Message, NodeId, RingEpoch, Seq, ServerFrame,
};
use harness::{must_be_ready, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

fn node_id(ready: &serde_json::Value) -> NodeId {
    NodeId(ready["node_id"].as_u64().expect("node_id in readyz"))
}

async fn must_connect(url: &str, resume_from: Option<EventSeq>) -> Connection {
    let config = ConnectionConfig {
        resume_from,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect_with(url, config.clone()).await {
            Ok((c, _)) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connect failed: {e:?}"),
        }
    }
}

async fn must_next(conn: &Connection) -> Message {
    conn.next_message(Duration::from_secs(10))
        .await
        .expect("read")
        .expect("a message within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_a_cursor_replays_missed_events_in_order_even_after_home_loss() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    let mut n3 = NodeProc::new(root.path(), "n3", Some(n1.peer.clone()));
    n2.start();
    n3.start();
    let r1 = must_be_ready(&n1, 3).await;
    let (id1, id2, id3) = (
        node_id(&r1),
        node_id(&must_be_ready(&n2, 3).await),
        node_id(&must_be_ready(&n3, 3).await),
    );
    let ring = Ring::new(
        [id1, id2, id3],
        RingEpoch(r1["ring_epoch"].as_u64().expect("epoch")),
        DEFAULT_VNODES,
    );
    let api = n1.api();
    let mut users = Vec::new();
    // Register until some user's home (where the event stream is written) is n3, the node
    // that will die: each user lands there with probability 1/3.
    for i in 0..40 {
        let name = format!("resume{i}");
        users.push((
            api.register(&name, "correct horse")
                .await
                .expect("register")
                .user_id,
            name,
        ));
        if users.len() >= 2 && users.iter().any(|u| ring.home_of_user(u.0) == Some(id3)) {
            break;
        }
    }
    let bob = users
        .iter()
        .find(|u| ring.home_of_user(u.0) == Some(id3))
        .expect("a user homed on n3")
        .clone();
    let alice = users
        .iter()
        .find(|u| u.0 != bob.0)
        .expect("another user")
        .clone();
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

    let a = must_connect(&n1.api().ws_url(&alice_token), None).await;
    let b = must_connect(&n2.api().ws_url(&bob_token), None).await;
    a.send(conv, cmid("m1"), "one").await.expect("send");
    let first = must_next(&b).await;
    assert_eq!(first.seq, Seq(1));
    let cursor = b.last_event_seq();
    assert!(cursor > EventSeq(0), "pushes carry the event cursor");
    b.close().await.expect("close");

    // While Bob is away: four messages, then his home node dies and is removed.
    for i in 2..=5 {
        a.send(conv, cmid(&format!("m{i}")), format!("n{i}"))
            .await
            .expect("send");
    }
    n3.kill9();
    n1.admin(&["remove", &id3.0.to_string()]);
    must_be_ready(&n1, 2).await;
    must_be_ready(&n2, 2).await;

    // Bob resumes on n1 from his cursor: 2..5 in order, once each, then live traffic.
    let b = must_connect(&n1.api().ws_url(&bob_token), Some(cursor)).await;
    let mut seqs = Vec::new();
    for _ in 2..=5 {
        seqs.push(must_next(&b).await.seq.0);
    }
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    let resumed_to = b.last_event_seq();
    assert_eq!(resumed_to.0, cursor.0 + 4, "one event per missed message");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match a.send(conv, cmid("m6"), "six").await {
            Ok(ack) => {
                assert_eq!(ack.seq, Seq(6));
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("send after failover: {e:?}"),
        }
    }
    assert_eq!(must_next(&b).await.seq, Seq(6));
    assert!(
        b.next_message(Duration::from_millis(500))
            .await
            .expect("read")
            .is_none(),
        "nothing is delivered twice"
    );

    // The delivery acknowledgement: what a device confirms comes back to every new
    // connection of the user, never beyond the stream's head.
    let done = b.last_event_seq();
    b.ack_events(done).await.expect("ack");
    b.ack_events(EventSeq(done.0 + 1000))
        .await
        .expect("ack beyond the head");
    let (_, w) = Connection::connect(&n2.api().ws_url(&bob_token))
        .await
        .expect("connect");
    assert_eq!(w.acked_event_seq, done);

    // A cursor the stream cannot serve gets an explicit resync, never a silent gap.
    let c = must_connect(&n2.api().ws_url(&bob_token), Some(EventSeq(10_000))).await;
    let mut saw_resync = false;
    for _ in 0..5 {
        match c.next_raw_frame(Duration::from_secs(5)).await.expect("raw") {
            Some(RawEvent::Frame(ServerFrame::Resync { event_head })) => {
                assert_eq!(event_head, b.last_event_seq());
                saw_resync = true;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(
        saw_resync,
        "a cursor from the future is answered with resync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_connection_learns_its_cursor_so_a_resume_replays_none_of_its_own_sends() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let api = n1.api();
    let (alice, alice_token) = harness::must_sign_up(&api, "cursor_alice").await;
    let (bob, bob_token) = harness::must_sign_up(&api, "cursor_bob").await;
    let conv = ConversationId::direct(alice, bob);
    let a = must_connect(&api.ws_url(&alice_token), None).await;
    let b = must_connect(&api.ws_url(&bob_token), None).await;
    for i in 1..=3 {
        a.send(conv, cmid(&format!("own{i}")), "mine")
            .await
            .expect("send");
    }
    // Alice's stream holds her three messages; her sending connection is told so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.last_event_seq() < EventSeq(3) {
        assert!(
            Instant::now() < deadline,
            "the sender's cursor stayed at {:?}",
            a.last_event_seq()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.last_event_seq(), EventSeq(3));
    let cursor = a.last_event_seq();
    a.close().await.expect("close");

    // Resuming from it replays nothing of her own: the first push is Bob's new message.
    let a = must_connect(&api.ws_url(&alice_token), Some(cursor)).await;
    b.send(conv, cmid("reply"), "theirs").await.expect("send");
    let first = must_next(&a).await;
    assert_eq!((first.sender, first.seq), (bob, Seq(4)));
    assert_eq!(a.last_event_seq(), EventSeq(4));
}

/// A client cut off in the middle of a stream of pushes (the socket closed without a close
/// frame, as a network failure leaves it) keeps every push it received, and its cursor names
/// exactly the last of them: resuming from it brings every later message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_severed_connection_keeps_what_it_received_and_resuming_from_its_cursor_brings_the_rest_once(
) {
    const TOTAL: u64 = 200;
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let api = n1.api();
    let (alice, alice_token) = harness::must_sign_up(&api, "sever_alice").await;
    let (bob, bob_token) = harness::must_sign_up(&api, "sever_bob").await;
    let conv = ConversationId::direct(alice, bob);
    let a = must_connect(&api.ws_url(&alice_token), None).await;
    let b = must_connect(&api.ws_url(&bob_token), None).await;
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            a.send(conv, cmid(&format!("s{i}")), "flowing")
                .await
                .expect("send");
        }
        a
    });

    // Cut Bob off while the messages are still coming.
    let mut got: Vec<Seq> = Vec::new();
    while got.len() < 50 {
        got.push(must_next(&b).await.seq);
    }
    b.sever();
    assert!(b.was_severed());
    let closed = b
        .wait_closed(Duration::from_secs(10))
        .await
        .expect("closes");
    assert_eq!(closed.code, None, "no close frame: {closed:?}");
    assert!(
        b.ping().await.is_err(),
        "a severed connection carries nothing"
    );
    // Everything received before the cut is still there to take.
    loop {
        match b.next_message(Duration::from_secs(5)).await {
            Ok(Some(m)) => got.push(m.seq),
            Ok(None) => panic!("a severed connection ends its pushes"),
            Err(_) => break,
        }
    }
    let cursor = b.last_event_seq();
    assert_eq!(
        cursor,
        EventSeq(got.len() as u64),
        "the cursor covers exactly the pushes received"
    );

    let a = sender.await.expect("sender");
    let b = must_connect(&api.ws_url(&bob_token), Some(cursor)).await;
    while (got.len() as u64) < TOTAL {
        got.push(must_next(&b).await.seq);
    }
    assert!(
        b.next_message(Duration::from_millis(500))
            .await
            .expect("open")
            .is_none(),
        "nothing beyond the {TOTAL} messages"
    );
    let expected: Vec<Seq> = (1..=TOTAL).map(Seq).collect();
    assert_eq!(
        got, expected,
        "every message once, in order, across the cut"
    );
    a.close().await.expect("close");
}
