//! Every conversation operation as a member, a removed member, a stranger and a blocked user:
//! outsiders all get the same answer, whether or not the conversation exists.

mod harness;

use chat_client::{ClientError, Connection};
use chat_types::{ClientMsgId, ConversationId, ErrorCode, GroupId, Seq};
use harness::{must_be_ready, NodeProc};

/// The error code of each conversation operation for `who` on `conv`.
async fn codes(who: &Connection, conv: ConversationId) -> Vec<(String, Option<ErrorCode>)> {
    let code = |r: Result<(), ClientError>| r.err().and_then(|e| e.code());
    let mut out = Vec::new();
    let send = who
        .send(conv, ClientMsgId::new("probe").expect("id"), "x")
        .await
        .map(|_| ());
    out.push(("send".into(), code(send)));
    let history = who.history(conv, None, None, None).await.map(|_| ());
    out.push(("history".into(), code(history)));
    out.push(("mark_read".into(), code(who.mark_read(conv, Seq(1)).await)));
    out.push(("typing".into(), code(who.typing(conv).await)));
    if conv.group_id().is_some() {
        let get = who.get_group(conv).await.map(|_| ());
        out.push(("get_group".into(), code(get)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_get_the_same_answer_for_every_operation() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = NodeProc::new(root.path(), "solo", None);
    n.start();
    must_be_ready(&n, 1).await;
    let api = n.api();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for name in [
        "az_owner",
        "az_member",
        "az_removed",
        "az_stranger",
        "az_blocked",
    ] {
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
    let [owner, member, removed, stranger, blocked] = &conns[..] else {
        panic!("five users");
    };
    let group = owner
        .create_group("club", vec![ids[1], ids[2]])
        .await
        .expect("group")
        .conversation;
    owner
        .send(group, ClientMsgId::new("g1").expect("id"), "hi")
        .await
        .expect("send");
    owner.remove_member(group, ids[2]).await.expect("remove");
    let dm = ConversationId::direct(ids[0], ids[1]);
    owner
        .send(dm, ClientMsgId::new("d1").expect("id"), "hi")
        .await
        .expect("send");
    member.block_user(ids[4]).await.expect("member blocks");
    let blocked_dm = ConversationId::direct(ids[1], ids[4]);

    // A member may do everything.
    for (op, code) in codes(member, group).await {
        assert_eq!(code, None, "member {op} on the group");
    }
    // Outsiders: the same codes on the group, on a group that does not exist, and on a
    // direct conversation of others.
    let missing = ConversationId::group(GroupId(999_999));
    let expected_group = vec![
        ("send".to_owned(), Some(ErrorCode::Forbidden)),
        ("history".to_owned(), Some(ErrorCode::Forbidden)),
        ("mark_read".to_owned(), Some(ErrorCode::Forbidden)),
        ("typing".to_owned(), Some(ErrorCode::Forbidden)),
        ("get_group".to_owned(), Some(ErrorCode::NotFound)),
    ];
    for (who, name) in [(removed, "removed"), (stranger, "stranger")] {
        assert_eq!(
            codes(who, group).await,
            expected_group,
            "{name} on the group"
        );
        assert_eq!(
            codes(who, missing).await,
            expected_group,
            "{name} on no group"
        );
        assert_eq!(
            codes(who, dm).await,
            expected_group[..4].to_vec(),
            "{name} on others' direct conversation"
        );
    }
    // A blocked user cannot write to the one who blocked them, nor open the conversation.
    let err = blocked
        .send(blocked_dm, ClientMsgId::new("b1").expect("id"), "hello?")
        .await
        .expect_err("blocked");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = blocked
        .open_direct_by_id(ids[1])
        .await
        .expect_err("blocked");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let head = member
        .history(blocked_dm, None, None, None)
        .await
        .expect("history")
        .head;
    assert_eq!(head, Seq(0), "nothing was stored");
}
