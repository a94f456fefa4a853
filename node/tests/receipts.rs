//! Read marks, receipts, unread counts, typing and presence across two nodes.

mod harness;

use std::time::Duration;

use chat_client::{Connection, RawEvent};
use chat_types::{ClientMsgId, ConversationId, PresenceStatus, Seq, ServerFrame};
use harness::{must_be_ready, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

/// The next raw frame matching `pick`, skipping others, within a few seconds.
async fn must_see<T>(conn: &Connection, what: &str, pick: impl Fn(&ServerFrame) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Some(RawEvent::Frame(f)) = conn
            .next_raw_frame(Duration::from_millis(500))
            .await
            .expect("raw frame")
        {
            if let Some(v) = pick(&f) {
                return v;
            }
        }
    }
    panic!("no {what} within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_marks_receipts_unread_typing_and_presence_reach_the_right_connections() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    n2.start();
    must_be_ready(&n1, 2).await;
    must_be_ready(&n2, 2).await;

    let alice = n1
        .api()
        .register("rc_alice", "correct horse")
        .await
        .expect("register");
    let bob = n1
        .api()
        .register("rc_bob", "correct horse")
        .await
        .expect("register");
    let at = n1
        .api()
        .login("rc_alice", "correct horse")
        .await
        .expect("login")
        .token;
    let bt = n2
        .api()
        .login("rc_bob", "correct horse")
        .await
        .expect("login")
        .token;
    let (a, _) = Connection::connect(&n1.api().ws_url(&at))
        .await
        .expect("connect");
    let (b1, _) = Connection::connect(&n2.api().ws_url(&bt))
        .await
        .expect("connect");
    let (b2, _) = Connection::connect(&n1.api().ws_url(&bt))
        .await
        .expect("connect");
    a.request_contact(bob.user_id).await.expect("request");
    b1.accept_contact(alice.user_id).await.expect("accept");
    // Contact changes and profile changes are events of the streams of those concerned.
    let relation = must_see(&b2, "contact request", |f| match f {
        ServerFrame::Contact { user, relation, .. } if *user == alice.user_id => Some(*relation),
        _ => None,
    })
    .await;
    assert_eq!(relation, chat_types::Relation::Incoming);
    let relation = must_see(&a, "contact accepted", |f| match f {
        ServerFrame::Contact { user, relation, .. }
            if *user == bob.user_id && *relation == chat_types::Relation::Contact =>
        {
            Some(*relation)
        }
        _ => None,
    })
    .await;
    assert_eq!(relation, chat_types::Relation::Contact);
    b1.update_profile(chat_types::rest::ProfileUpdate {
        display_name: Some("Bob B.".into()),
        ..Default::default()
    })
    .await
    .expect("profile");
    let who = must_see(&a, "profile change", |f| match f {
        ServerFrame::ProfileChanged { user, .. } => Some(*user),
        _ => None,
    })
    .await;
    assert_eq!(who, bob.user_id);
    let conv = ConversationId::direct(alice.user_id, bob.user_id);

    for i in 1..=3 {
        a.send(conv, cmid(&format!("m{i}")), format!("hello {i}"))
            .await
            .expect("send");
    }
    for conn in [&b1, &b2] {
        for _ in 1..=3 {
            conn.next_message(Duration::from_secs(10))
                .await
                .expect("read")
                .expect("message");
        }
    }

    // The conversation list: latest first, with the unread count and a preview.
    let list = b1.list_conversations(None).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].conversation, list[0].last_seq, list[0].unread),
        (conv, Seq(3), 3)
    );
    assert_eq!(list[0].preview, "hello 3");
    let mine = a.list_conversations(None).await.expect("list");
    assert_eq!(mine[0].unread, 0, "one's own messages are read");

    // Bob reads up to 2 on one device: his other device learns it, Alice gets a receipt.
    let before = b2.last_event_seq();
    b1.mark_read(conv, Seq(2)).await.expect("mark read");
    let (seq, event_seq) = must_see(&b2, "read", |f| match f {
        ServerFrame::Read {
            conversation,
            seq,
            event_seq,
        } if *conversation == conv => Some((*seq, *event_seq)),
        _ => None,
    })
    .await;
    assert_eq!(seq, Seq(2));
    assert!(event_seq > before, "read marks are events of the stream");
    let (reader, seq) = must_see(&a, "receipt", |f| match f {
        ServerFrame::Receipt {
            conversation,
            user,
            seq,
            ..
        } if *conversation == conv => Some((*user, *seq)),
        _ => None,
    })
    .await;
    assert_eq!((reader, seq), (bob.user_id, Seq(2)));
    let list = b2.list_conversations(None).await.expect("list");
    assert_eq!((list[0].read_upto, list[0].unread), (Seq(2), 1));
    // Read marks never move back.
    b1.mark_read(conv, Seq(1)).await.expect("mark read");
    let list = b1.list_conversations(None).await.expect("list");
    assert_eq!(list[0].read_upto, Seq(2));
    // Not a member: forbidden.
    let carol = n1
        .api()
        .register("rc_carol", "correct horse")
        .await
        .expect("register");
    let theirs = ConversationId::direct(alice.user_id, carol.user_id);
    let err = b1.mark_read(theirs, Seq(1)).await.expect_err("forbidden");
    assert_eq!(err.code(), Some(chat_types::ErrorCode::Forbidden));

    // Typing reaches the other member's connections, ephemeral.
    a.typing(conv).await.expect("typing");
    let (who, expires) = must_see(&b1, "typing", |f| match f {
        ServerFrame::Typing {
            conversation,
            user,
            expires_ms,
        } if *conversation == conv => Some((*user, *expires_ms)),
        _ => None,
    })
    .await;
    assert_eq!(who, alice.user_id);
    assert!(expires > 0);

    // The contact list shows presence.
    let lists = a.contacts().await.expect("contacts");
    assert_eq!(
        lists.contacts[0].presence.map(|p| p.status),
        Some(PresenceStatus::Online)
    );
    // Presence goes to contacts: away, then offline when Bob's last connection closes.
    b1.set_presence(PresenceStatus::Away).await.expect("away");
    let status = must_see(&a, "presence away", |f| match f {
        ServerFrame::Presence { user, status, .. } if *user == bob.user_id => Some(*status),
        _ => None,
    })
    .await;
    assert_eq!(status, PresenceStatus::Away);
    let err = b1
        .set_presence(PresenceStatus::Offline)
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Some(chat_types::ErrorCode::InvalidArgument));
    b1.close().await.expect("close");
    b2.close().await.expect("close");
    let (status, last_seen) = must_see(&a, "presence offline", |f| match f {
        ServerFrame::Presence {
            user,
            status,
            last_seen_ms,
        } if *user == bob.user_id => {
            (*status == PresenceStatus::Offline).then_some((*status, *last_seen_ms))
        }
        _ => None,
    })
    .await;
    assert_eq!(status, PresenceStatus::Offline);
    assert!(last_seen.is_some(), "offline presence carries last seen");
    let lists = a.contacts().await.expect("contacts");
    let p = lists.contacts[0].presence.expect("presence");
    assert_eq!(p.status, PresenceStatus::Offline);
    assert!(p.last_seen_ms.is_some());
}
