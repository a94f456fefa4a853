//! A group of 1,000 members spread over three nodes: every message reaches every member's
//! connection, once, in order.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use chat_client::Connection;
use chat_types::{ClientMsgId, Seq, UserId};
use harness::must_start_trio;
use tokio::task::JoinSet;

const MEMBERS: usize = 1000;

/// The sum over the nodes of `chat_peer_push_requests_total`.
async fn push_requests(trio: &harness::Trio) -> u64 {
    let client = harness::reqwest_lite::Client;
    let mut total = 0;
    for n in &trio.nodes {
        let (_, body) = client
            .get(&format!("{}/metrics", n.base_url()))
            .await
            .expect("metrics");
        total += body
            .lines()
            .find_map(|l| l.strip_prefix("chat_peer_push_requests_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the push counter");
    }
    total
}
const MESSAGES: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_thousand_member_group_gets_every_message() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = root.path().join("node.toml");
    // Cheap password hashes and no login limits: 1,000 accounts are set up in seconds.
    std::fs::write(
        &config,
        "[auth]\nargon2_memory_kib = 64\n[rate_limits]\nlogins_per_minute_per_ip = 100000\n",
    )
    .expect("write config");
    let env = [("CHAT_CONFIG".to_owned(), config.display().to_string())];
    let trio = must_start_trio(root.path(), &env).await;
    let apis: Arc<Vec<_>> = Arc::new(trio.nodes.iter().map(|n| n.api()).collect());

    // Register, log in and connect each member to one of the three nodes, 32 at a time.
    let mut members: Vec<(UserId, Connection)> = Vec::with_capacity(MEMBERS);
    let mut tasks = JoinSet::new();
    for i in 0..MEMBERS {
        if tasks.len() >= 32 {
            if let Some(done) = tasks.join_next().await {
                members.push(done.expect("setup task"));
            }
        }
        let apis = apis.clone();
        tasks.spawn(async move {
            let api = &apis[i % 3];
            let name = format!("big{i}");
            let id = api
                .register(&name, "correct horse")
                .await
                .expect("register")
                .user_id;
            let token = api
                .login(&name, "correct horse")
                .await
                .expect("login")
                .token;
            let (conn, _) = Connection::connect(&api.ws_url(&token))
                .await
                .expect("connect");
            (id, conn)
        });
    }
    while let Some(done) = tasks.join_next().await {
        members.push(done.expect("setup task"));
    }
    members.sort_by_key(|(id, _)| *id);
    let owner = &members[0].1;
    let others: Vec<UserId> = members[1..].iter().map(|(id, _)| *id).collect();
    let group = owner
        .create_group("everyone", others)
        .await
        .expect("create");
    assert_eq!(group.members.len(), MEMBERS);
    let conv = group.conversation;

    let before = push_requests(&trio).await;
    let mut seqs = Vec::new();
    for i in 1..=MESSAGES {
        let ack = owner
            .send(
                conv,
                ClientMsgId::new(format!("all{i}")).expect("id"),
                format!("news {i}"),
            )
            .await
            .expect("send");
        seqs.push(ack.seq);
    }

    // Every other member's connection gets the creation and the three messages, in order.
    let mut tasks = JoinSet::new();
    for (id, conn) in members.into_iter().skip(1) {
        tasks.spawn(async move {
            let mut got = Vec::new();
            while got.len() < MESSAGES as usize {
                match conn
                    .next_message(Duration::from_secs(60))
                    .await
                    .expect("read")
                {
                    Some(m) if m.conversation == conv && m.refers.is_none() => got.push(m.seq),
                    Some(_) => continue,
                    None => break,
                }
            }
            (id, got)
        });
    }
    let mut complete = 0;
    while let Some(done) = tasks.join_next().await {
        let (id, got) = done.expect("reader task");
        assert_eq!(got, seqs, "member {id} got {got:?}");
        complete += 1;
    }
    assert_eq!(complete, MEMBERS - 1);
    // The relay: each message crosses to another node at most once per (home node, other
    // node holding connections) pair, 3 x 2, not once per member. (The group's `created`
    // change may still be fanning out when `before` is read: one more message.)
    let sent = push_requests(&trio).await - before;
    assert!(
        sent <= (MESSAGES + 1) * 3 * 2,
        "{sent} push requests between nodes for {MESSAGES} messages to {MEMBERS} members"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > Seq(0));
}
