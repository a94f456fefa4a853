//! Replies, edits, deletions and reactions are new messages that name an earlier seq.

mod harness;

use std::time::Duration;

use chat_client::Connection;
use chat_types::{ClientMsgId, ConversationId, ErrorCode, MessageRef, Seq};
use harness::{must_be_ready, must_sign_up, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_edits_deletions_and_reactions_follow_their_rules() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = NodeProc::new(root.path(), "solo", None);
    n.start();
    must_be_ready(&n, 1).await;
    let api = n.api();
    let (alice, at) = must_sign_up(&api, "rel_alice").await;
    let (bob, bt) = must_sign_up(&api, "rel_bob").await;
    let (a, _) = Connection::connect(&api.ws_url(&at))
        .await
        .expect("connect");
    let (b, _) = Connection::connect(&api.ws_url(&bt))
        .await
        .expect("connect");
    let conv = ConversationId::direct(alice, bob);

    assert_eq!(
        a.send(conv, cmid("m1"), "lunch?").await.expect("send").seq,
        Seq(1)
    );
    let reply = b
        .send_related(
            conv,
            cmid("r1"),
            "yes",
            Some(MessageRef::Reply { seq: Seq(1) }),
        )
        .await
        .expect("reply");
    assert_eq!(reply.seq, Seq(2));
    let edit = a
        .send_related(
            conv,
            cmid("e1"),
            "lunch at 1?",
            Some(MessageRef::Edit { seq: Seq(1) }),
        )
        .await
        .expect("edit own message");
    assert_eq!(edit.seq, Seq(3));
    let react = b
        .send_related(
            conv,
            cmid("x1"),
            "👍",
            Some(MessageRef::Reaction { seq: Seq(1) }),
        )
        .await
        .expect("react");
    assert_eq!(react.seq, Seq(4));
    let delete = b
        .send_related(
            conv,
            cmid("d1"),
            "",
            Some(MessageRef::Delete { seq: Seq(2) }),
        )
        .await
        .expect("delete own reply");
    assert_eq!(delete.seq, Seq(5));

    // Refused, and nothing stored: someone else's message, an unknown seq, a relation to a
    // relation, a body on a deletion, an oversized reaction.
    let cases = [
        (
            "f1",
            "hijack",
            MessageRef::Edit { seq: Seq(1) },
            ErrorCode::Forbidden,
        ),
        (
            "f2",
            "",
            MessageRef::Delete { seq: Seq(1) },
            ErrorCode::Forbidden,
        ),
        (
            "f3",
            "hi",
            MessageRef::Reply { seq: Seq(99) },
            ErrorCode::InvalidArgument,
        ),
        (
            "f4",
            "hi",
            MessageRef::Reply { seq: Seq(0) },
            ErrorCode::InvalidArgument,
        ),
        (
            "f5",
            "👎",
            MessageRef::Reaction { seq: Seq(4) },
            ErrorCode::InvalidArgument,
        ),
        (
            "f6",
            "not empty",
            MessageRef::Delete { seq: Seq(2) },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (id, body, refers, code) in cases {
        let err = b
            .send_related(conv, cmid(id), body, Some(refers))
            .await
            .expect_err(id);
        assert_eq!(err.code(), Some(code), "{id}: {err:?}");
    }
    let err = a
        .send_related(
            conv,
            cmid("f7"),
            "x".repeat(33),
            Some(MessageRef::Reaction { seq: Seq(2) }),
        )
        .await
        .expect_err("reaction too long");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));

    // History keeps the originals and the relations, in order; pushes carry them too.
    let page = a.history(conv, None, None, None).await.expect("history");
    assert_eq!(page.head, Seq(5));
    let refs: Vec<_> = page.messages.iter().map(|m| m.refers).collect();
    assert_eq!(
        refs,
        vec![
            None,
            Some(MessageRef::Reply { seq: Seq(1) }),
            Some(MessageRef::Edit { seq: Seq(1) }),
            Some(MessageRef::Reaction { seq: Seq(1) }),
            Some(MessageRef::Delete { seq: Seq(2) }),
        ]
    );
    assert_eq!(page.messages[0].body, "lunch?", "the original stays");
    // A page around a seq has it in the middle; around goes alone.
    let around = api
        .history(
            &at,
            conv,
            chat_types::rest::HistoryQuery {
                around: Some(Seq(3)),
                limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("around");
    assert_eq!(
        around.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let err = api
        .history(
            &at,
            conv,
            chat_types::rest::HistoryQuery {
                around: Some(Seq(3)),
                after: Some(Seq(1)),
                ..Default::default()
            },
        )
        .await
        .expect_err("around with after");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));

    let mut pushed = Vec::new();
    while let Some(m) = a
        .next_message(Duration::from_millis(500))
        .await
        .expect("read")
    {
        pushed.push(m.refers);
    }
    assert!(pushed.contains(&Some(MessageRef::Delete { seq: Seq(2) })));
}
