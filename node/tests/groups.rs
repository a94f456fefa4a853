//! Groups across three nodes: roles decide who may change what, membership changes are
//! ordered with the messages in the group's log, and nothing reaches a non-member.

mod harness;

use std::time::{Duration, Instant};

use chat_client::Connection;
use chat_types::{ClientMsgId, ErrorCode, GroupChange, MessageRef, Role};
use harness::{must_be_ready, must_sign_up, NodeProc};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

/// Signs up each of `names` on the nodes in turn and connects it there.
async fn sign_up_and_connect(
    nodes: &[&NodeProc],
    names: &[&str],
) -> (Vec<chat_types::UserId>, Vec<Connection>) {
    let mut users = Vec::new();
    let mut conns = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let api = nodes[i % nodes.len()].api();
        let (user, token) = must_sign_up(&api, name).await;
        let (c, _) = Connection::connect(&api.ws_url(&token))
            .await
            .expect("connect");
        users.push(user);
        conns.push(c);
    }
    (users, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_roles_and_changes_in_order_across_nodes() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    let mut n3 = NodeProc::new(root.path(), "n3", Some(n1.peer.clone()));
    n2.start();
    n3.start();
    for n in [&n1, &n2, &n3] {
        must_be_ready(n, 3).await;
    }
    let nodes = [&n1, &n2, &n3];
    let (users, conns) = sign_up_and_connect(
        &nodes,
        &["gr_owner", "gr_admin", "gr_member", "gr_outsider"],
    )
    .await;
    let (owner, admin, member, outsider) = (&conns[0], &conns[1], &conns[2], &conns[3]);

    let info = owner
        .create_group("team", vec![users[1], users[2]])
        .await
        .expect("create");
    let group = info.conversation;
    assert_eq!(info.members.len(), 3);
    owner
        .set_role(group, users[1], Role::Admin)
        .await
        .expect("promote");

    // Plain members and outsiders cannot manage; outsiders cannot even see the group.
    let err = member
        .add_members(group, vec![users[3]])
        .await
        .expect_err("member adds");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = outsider.get_group(group).await.expect_err("outsider looks");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = outsider
        .send(group, cmid("x1"), "let me in")
        .await
        .expect_err("outsider writes");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = admin
        .remove_member(group, users[0])
        .await
        .expect_err("admin removes owner");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));

    let forged = member
        .send_related(
            group,
            cmid("f1"),
            "",
            Some(MessageRef::Group {
                change: GroupChange::Deleted,
            }),
        )
        .await
        .expect_err("clients cannot forge group changes");
    assert_eq!(forged.code(), Some(ErrorCode::InvalidArgument));
    let first = member
        .send(group, cmid("m1"), "hello team")
        .await
        .expect("member writes");
    admin
        .add_members(group, vec![users[3]])
        .await
        .expect("admin adds");
    let joined = outsider
        .send(group, cmid("m2"), "thanks")
        .await
        .expect("new member writes");
    assert!(joined.seq > first.seq);
    admin
        .remove_member(group, users[2])
        .await
        .expect("admin removes member");
    let err = member
        .send(group, cmid("m3"), "still here?")
        .await
        .expect_err("removed");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = member
        .history(group, None, None, None)
        .await
        .expect_err("removed reads");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let last = owner
        .send(group, cmid("m4"), "bye")
        .await
        .expect("owner writes");

    // The log orders the changes with the messages.
    let page = owner
        .history(group, None, None, Some(100))
        .await
        .expect("history");
    let log: Vec<String> = page
        .messages
        .iter()
        .map(|m| match m.refers {
            Some(MessageRef::Group { change }) => format!("{change:?}"),
            _ => m.body.clone(),
        })
        .collect();
    let pos = |s: &str| {
        log.iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s} not in {log:?}"))
    };
    assert!(pos("Created") < pos("hello team"));
    assert!(pos("hello team") < pos(&format!("MemberAdded {{ user: UserId({}) }}", users[3].0)));
    assert!(pos("thanks") < pos(&format!("MemberRemoved {{ user: UserId({}) }}", users[2].0)));
    assert!(pos("MemberRemoved") < pos("bye"));
    assert_eq!(page.head, last.seq);

    // Pushes: the removed member got the change that removed it, then nothing more.
    let seen = pushed(member, Duration::from_millis(800)).await;
    assert!(seen.iter().any(|m| m.refers
        == Some(MessageRef::Group {
            change: GroupChange::MemberRemoved { user: users[2] }
        })));
    assert!(
        seen.iter().all(|m| m.body != "bye"),
        "nothing after removal reaches it"
    );
    let got_bye = pushed(outsider, Duration::from_millis(800))
        .await
        .iter()
        .any(|m| m.body == "bye");
    assert!(got_bye, "a member on another node gets the owner's message");

    // Ownership, leaving, deletion.
    let err = owner.leave_group(group).await.expect_err("owner leaves");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let info = owner
        .transfer_group(group, users[1])
        .await
        .expect("transfer");
    assert!(info
        .members
        .iter()
        .any(|m| m.user_id == users[1] && m.role == Role::Owner));
    owner.leave_group(group).await.expect("former owner leaves");
    assert_eq!(admin.list_groups().await.expect("list").len(), 1);
    admin.delete_group(group).await.expect("delete");
    assert!(admin.list_groups().await.expect("list").is_empty());
    let err = outsider
        .send(group, cmid("m5"), "anyone?")
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

/// Messages that queue up behind a delivery go out to the members together (one write per
/// member's stream, one request per node for the whole run). A burst from two senders with a
/// removal and an addition in the middle must still reach every member once each, in log
/// order; the removed member gets exactly what the log holds up to the note that removed it,
/// the added one exactly what it holds from the note that added it, whenever the changes land
/// and however long the messages before them waited for delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_a_removal_in_the_middle_reaches_each_member_in_log_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    n2.start();
    for n in [&n1, &n2] {
        must_be_ready(n, 2).await;
    }
    let nodes = [&n1, &n2];
    let (users, conns) = sign_up_and_connect(
        &nodes,
        &[
            "bu_owner",
            "bu_writer",
            "bu_reader",
            "bu_leaver",
            "bu_joiner",
        ],
    )
    .await;
    let (owner, writer, reader, leaver, joiner) =
        (&conns[0], &conns[1], &conns[2], &conns[3], &conns[4]);
    let group = owner
        .create_group("burst", vec![users[1], users[2], users[3]])
        .await
        .expect("create")
        .conversation;

    const EACH: usize = 150;
    fn burst<'a>(
        c: &'static str,
        conn: &'a Connection,
        group: chat_types::ConversationId,
    ) -> impl std::future::Future<Output = Vec<Result<chat_client::Ack, chat_client::ClientError>>> + 'a
    {
        let sends: Vec<_> = (0..EACH)
            .map(|i| conn.send(group, cmid(&format!("{c}{i}")), format!("{c} {i}")))
            .collect();
        futures_util::future::join_all(sends)
    }
    let changes = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let removed = owner.remove_member(group, users[3]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        (removed, owner.add_members(group, vec![users[4]]).await)
    };
    let (from_owner, from_writer, (removed, added)) =
        tokio::join!(burst("o", owner, group), burst("w", writer, group), changes);
    removed.expect("owner removes a member mid-burst");
    added.expect("owner adds a member mid-burst");
    let acked = from_owner
        .into_iter()
        .chain(from_writer)
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(acked, 2 * EACH, "every send is accepted");

    // The log as stored, from the group's creation note on.
    let mut log = Vec::new();
    let mut after = Some(chat_types::Seq(0));
    loop {
        let page = owner
            .history(group, after, None, Some(200))
            .await
            .expect("history");
        let Some(last) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        log.extend(page.messages.into_iter().map(|m| (m.seq, m.refers)));
        after = Some(last);
    }
    let removal_at = log
        .iter()
        .position(|(_, r)| {
            *r == Some(MessageRef::Group {
                change: GroupChange::MemberRemoved { user: users[3] },
            })
        })
        .expect("the removal note is in the log");
    let added_at = log
        .iter()
        .position(|(_, r)| {
            *r == Some(MessageRef::Group {
                change: GroupChange::MemberAdded { user: users[4] },
            })
        })
        .expect("the addition note is in the log");
    assert!(removal_at < added_at);
    let seqs: Vec<_> = log.iter().map(|(s, _)| *s).collect();

    async fn pushed_seqs(conn: &Connection) -> Vec<chat_types::Seq> {
        pushed(conn, Duration::from_secs(3))
            .await
            .into_iter()
            .map(|m| m.seq)
            .collect()
    }
    let created = seqs[0];
    let strip = |v: Vec<chat_types::Seq>| -> Vec<chat_types::Seq> {
        v.into_iter().filter(|s| *s != created).collect()
    };
    assert_eq!(
        strip(pushed_seqs(reader).await),
        seqs[1..].to_vec(),
        "a member who only reads gets every message once, in log order"
    );
    assert_eq!(
        strip(pushed_seqs(leaver).await),
        seqs[1..=removal_at].to_vec(),
        "the removed member gets everything up to the note that removed it, and nothing after"
    );
    assert_eq!(
        pushed_seqs(joiner).await,
        seqs[added_at..].to_vec(),
        "the added member gets the note that added it and everything after, nothing before"
    );
}

/// The messages pushed to `conn` until none comes for `quiet`.
async fn pushed(conn: &Connection, quiet: Duration) -> Vec<chat_types::Message> {
    let mut seen = Vec::new();
    while let Some(m) = conn.next_message(quiet).await.expect("read") {
        seen.push(m);
    }
    seen
}

/// Whether `conn` receives a message with `body` within a second (skipping others).
async fn receives(conn: &Connection, body: &str) -> bool {
    while let Some(m) = conn
        .next_message(Duration::from_secs(1))
        .await
        .expect("read")
    {
        if m.body == body {
            return true;
        }
    }
    false
}

/// A group change agreed in the metadata whose note never reaches the group's log (the node
/// that made it died in between; here a failpoint skips the notes) still takes effect: the
/// group's owner node takes the agreed members within about ten seconds, after which the
/// removed member receives nothing more and may neither read nor write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_note_never_comes_still_takes_effect() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.env = vec![("CHAT_FAILPOINTS".into(), "no_group_notes".into())];
    n1.start();
    must_be_ready(&n1, 1).await;
    let (users, conns) = sign_up_and_connect(&[&n1], &["nn_owner", "nn_gone"]).await;
    let (owner, gone) = (&conns[0], &conns[1]);
    let group = owner
        .create_group("quiet", vec![users[1]])
        .await
        .expect("create")
        .conversation;
    owner
        .send(group, cmid("p0"), "before")
        .await
        .expect("owner writes");
    assert!(receives(gone, "before").await, "a member receives");

    owner
        .remove_member(group, users[1])
        .await
        .expect("owner removes");
    let removed_at = Instant::now();
    for i in 1.. {
        // Paced, to stay within the per-user send allowance.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let body = format!("probe {i}");
        owner
            .send(group, cmid(&format!("p{i}")), body.clone())
            .await
            .expect("owner writes");
        if !receives(gone, &body).await {
            break;
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(30),
            "the removed member still receives the group's messages"
        );
    }
    let err = gone
        .history(group, None, None, None)
        .await
        .expect_err("removed reads");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = gone
        .send(group, cmid("g1"), "still here?")
        .await
        .expect_err("removed writes");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    owner
        .send(group, cmid("after"), "after")
        .await
        .expect("owner writes");
    assert!(!receives(gone, "after").await, "nothing more reaches it");
}
