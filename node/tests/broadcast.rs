//! Broadcast: one request to many users and groups, a result per target, and a retry that
//! stores nothing twice.

mod harness;

use chat_client::Connection;
use chat_types::{ClientMsgId, ConversationId, ErrorCode, Seq};
use harness::{must_be_ready, NodeProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reports_each_target_and_a_retry_adds_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = NodeProc::new(root.path(), "solo", None);
    n.start();
    must_be_ready(&n, 1).await;
    let api = n.api();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for name in ["bc_alice", "bc_bob", "bc_carol"] {
        ids.push(
            api.register(name, "correct horse")
                .await
                .expect("register")
                .user_id,
        );
        let token = api.login(name, "correct horse").await.expect("login").token;
        conns.push(
            Connection::connect(&api.ws_url(&token))
                .await
                .expect("connect")
                .0,
        );
    }
    let (alice, bob, carol) = (&conns[0], &conns[1], &conns[2]);
    carol.block_user(ids[0]).await.expect("carol blocks alice");
    let group = alice
        .create_group("news", vec![ids[1]])
        .await
        .expect("group")
        .conversation;

    let cmid = ClientMsgId::new("bc-1").expect("id");
    let targets = vec![ids[1], ids[2]];
    let results = alice
        .broadcast(cmid.clone(), "hello all", targets.clone(), vec![group])
        .await
        .expect("broadcast");
    assert_eq!(results.len(), 3);
    let to_bob = ConversationId::direct(ids[0], ids[1]);
    assert_eq!(results[0].conversation, to_bob);
    assert_eq!(results[0].seq, Some(Seq(1)));
    assert_eq!(
        results[1].error.as_ref().map(|e| e.code),
        Some(ErrorCode::Forbidden),
        "carol blocked the sender: refused, the others still sent"
    );
    let group_seq = results[2].seq.expect("stored in the group");

    let again = alice
        .broadcast(cmid, "hello all", targets, vec![group])
        .await
        .expect("retry");
    assert_eq!(again[0].seq, Some(Seq(1)));
    assert_eq!(again[2].seq, Some(group_seq));
    let page = bob
        .history(to_bob, None, None, None)
        .await
        .expect("history");
    assert_eq!(page.head, Seq(1), "the retry stored nothing twice");

    // Bad requests: no targets, a direct id among the groups, an empty body.
    let err = alice
        .broadcast(ClientMsgId::new("bc-2").expect("id"), "x", vec![], vec![])
        .await
        .expect_err("no targets");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = alice
        .broadcast(
            ClientMsgId::new("bc-3").expect("id"),
            "x",
            vec![],
            vec![to_bob],
        )
        .await
        .expect_err("not a group");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = alice
        .broadcast(
            ClientMsgId::new("bc-4").expect("id"),
            "",
            vec![ids[1]],
            vec![],
        )
        .await
        .expect_err("empty body");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
}
