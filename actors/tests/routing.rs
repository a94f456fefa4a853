//! Two nodes in one process (real RocksDB in temp dirs, real Raft, real loopback transport):
//! a node that does not own a conversation answers `NotOwner`, and a router sends each
//! request to the owner whichever node it starts on. A conversation's deliveries follow its
//! log even when a message in it did not come through the actor delivering.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chat_actors::peer_wire::{decode, encode, ActorReply, ActorRequest, ActorRequestBody};
use chat_actors::{ActorError, Draft, LocalLogs, Router};
use chat_cluster::transport::{
    serve, Channel, PeerError, PeerHandler, PeerHandlerFuture, Transport,
};
use chat_cluster::{ClusterSettings, Metadata, NodeInfo};
use chat_storage::{AppendRequest, Durability, RocksConversationLog, RocksUserEventLog, Store};
use chat_types::{
    ClientMsgId, ConversationId, EventSeq, MessageRef, NodeId, RingEpoch, Seq, UserEvent, UserId,
};

struct Dispatch {
    meta: OnceLock<Arc<Metadata>>,
    router: OnceLock<Arc<Router>>,
}

impl PeerHandler for Dispatch {
    fn handle(&self, channel: Channel, payload: Vec<u8>) -> PeerHandlerFuture {
        let meta = self.meta.get().cloned();
        let router = self.router.get().cloned();
        Box::pin(async move {
            match (channel, meta, router) {
                (Channel::Actor, _, Some(r)) => r.handle_peer(&payload).await,
                (Channel::Raft | Channel::Cluster, Some(m), _) => {
                    m.handle_peer(channel, &payload).await
                }
                _ => Err(PeerError::ShuttingDown),
            }
        })
    }
}

struct TestNode {
    _dir: tempfile::TempDir,
    peer: String,
    meta: Arc<Metadata>,
    router: Arc<Router>,
    logs: LocalLogs,
}

async fn must_start(id: u64, join: Option<String>) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let peer = listener.local_addr().expect("addr").to_string();
    let dispatch = Arc::new(Dispatch {
        meta: OnceLock::new(),
        router: OnceLock::new(),
    });
    serve(listener, dispatch.clone());
    let settings = ClusterSettings {
        node_id: NodeId(id),
        advertise: NodeInfo {
            http_addr: "127.0.0.1:1".into(),
            peer_addr: peer.clone(),
        },
        join,
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        failure_timeout_ms: 0,
    };
    let meta = Metadata::start(store.clone(), settings, Transport::default())
        .await
        .expect("start metadata");
    let _ = dispatch.meta.set(meta.clone());
    let logs = LocalLogs {
        conversations: Arc::new(RocksConversationLog::new(store.clone(), Durability::Wal)),
        events: Arc::new(RocksUserEventLog::new(store, Durability::Wal)),
    };
    let router = Router::new(meta.clone(), logs.clone());
    let _ = dispatch.router.set(router.clone());
    TestNode {
        _dir: dir,
        peer,
        meta,
        router,
        logs,
    }
}

async fn must_see_members(node: &TestNode, n: usize) {
    let mut watch = node.meta.ring_watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|r| r.members().len() == n),
    )
    .await
    .expect("ring reaches the expected size")
    .expect("ring watch open");
}

/// Every ring change stops the conversation actors (a send in flight then fails with a
/// retryable `Unavailable`): waits until every node of `nodes` has applied the same ring and
/// it has stayed for a while.
async fn must_see_a_settled_ring(nodes: &[&TestNode]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rings never settled"
        );
        let seen = nodes[0].meta.ring();
        if nodes.iter().all(|n| *n.meta.ring() == *seen) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if nodes.iter().all(|n| *n.meta.ring() == *seen) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_owner_and_non_owners_answer_not_owner() {
    let a = must_start(1, None).await;
    let b = must_start(2, Some(a.peer.clone())).await;
    must_see_members(&a, 2).await;
    must_see_members(&b, 2).await;
    // The join is several membership changes (learner, then voter through a joint
    // configuration), each a new ring epoch.
    must_see_a_settled_ring(&[&a, &b]).await;
    let ring = b.meta.ring();
    assert_eq!(*ring, *a.meta.ring(), "both nodes build the same ring");

    // A conversation owned by node 1.
    let conv = (2..200u64)
        .map(|u| ConversationId::direct(UserId(1), UserId(u)))
        .find(|c| ring.owner_of_conversation(c) == Some(NodeId(1)))
        .expect("node 1 owns some conversation");

    // Asked directly, node 2 refuses and names the owner.
    let req = ActorRequest {
        epoch: ring.epoch(),
        body: ActorRequestBody::History {
            conversation: conv,
            reader: UserId(1),
            after: None,
            before: None,
            limit: 10,
        },
    };
    let bytes = Transport::default()
        .request(
            &b.peer,
            Channel::Actor,
            encode(&req).expect("encode"),
            Duration::from_secs(5),
        )
        .await
        .expect("node 2 answers");
    let reply: Result<ActorReply, ActorError> = decode(&bytes).expect("decode");
    assert_eq!(
        reply.expect_err("node 2 is not the owner"),
        ActorError::NotOwner {
            owner: NodeId(1),
            epoch: ring.epoch()
        }
    );

    // Garbage on the actor channel is an error reply, not a crash.
    let bytes = Transport::default()
        .request(
            &b.peer,
            Channel::Actor,
            vec![1, 0xc1, 0xff],
            Duration::from_secs(5),
        )
        .await
        .expect("node 2 answers garbage");
    let reply: Result<ActorReply, ActorError> = decode(&bytes).expect("decode");
    assert!(matches!(reply, Err(ActorError::BadPayload(_))));

    // Through node 2's router the append lands at node 1, the single writer.
    let cmid = ClientMsgId::new("x1").expect("id");
    let (m, dup) = b
        .router
        .append(
            UserId(1),
            conv,
            cmid.clone(),
            "via node 2".into(),
            None,
            Vec::new(),
            None,
        )
        .await
        .expect("append routed to the owner");
    assert_eq!((m.seq, dup), (Seq(1), false));
    let (m, dup) = a
        .router
        .append(
            UserId(1),
            conv,
            cmid,
            "again via node 1".into(),
            None,
            Vec::new(),
            None,
        )
        .await
        .expect("retry at the owner");
    assert_eq!((m.seq, dup, m.body.as_str()), (Seq(1), true, "via node 2"));
    // Several drafts through node 2 travel as one request and are stored in order; each
    // gets its own outcome, a retry its original and a bad reference its own refusal.
    let draft = |cmid: &str, body: &str, refers| Draft {
        client_msg_id: ClientMsgId::new(cmid).expect("id"),
        body: body.into(),
        refers,
        attachments: Vec::new(),
    };
    let outcomes = b
        .router
        .append_many(
            UserId(1),
            conv,
            vec![
                draft("x3", "second", None),
                draft("x1", "first, retried", None),
                draft("x4", "", Some(MessageRef::Delete { seq: Seq(40) })),
                draft("x5", "third", None),
            ],
            None,
        )
        .await
        .expect("a batch routed to the owner");
    let seen: Vec<Result<(u64, bool, String), ActorError>> = outcomes
        .into_iter()
        .map(|o| o.map(|(m, dup)| (m.seq.0, dup, m.body)))
        .collect();
    assert_eq!(seen[0], Ok((2, false, "second".into())));
    assert_eq!(seen[1], Ok((1, true, "via node 2".into())));
    assert!(
        matches!(seen[2], Err(ActorError::InvalidArgument(_))),
        "{:?}",
        seen[2]
    );
    assert_eq!(seen[3], Ok((3, false, "third".into())));
    assert_eq!(
        b.router.stats().conversations,
        0,
        "no conversation actor on the non-owner"
    );
    assert_eq!(a.router.stats().conversations, 1);
    let (head, page) = b
        .router
        .history(UserId(1), conv, None, None, 10)
        .await
        .expect("history via node 2");
    let bodies: Vec<&str> = page.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        (head, bodies),
        (Seq(3), vec!["via node 2", "second", "third"])
    );

    // A request from a newer epoch than the node has seen waits, then is judged by the
    // node's ring: still not the owner.
    let req = ActorRequest {
        epoch: RingEpoch(ring.epoch().0 + 100),
        ..req
    };
    let bytes = Transport::default()
        .request(
            &b.peer,
            Channel::Actor,
            encode(&req).expect("encode"),
            Duration::from_secs(10),
        )
        .await
        .expect("node 2 answers after waiting");
    let reply: Result<ActorReply, ActorError> = decode(&bytes).expect("decode");
    assert!(matches!(
        reply,
        Err(ActorError::NotOwner {
            owner: NodeId(1),
            ..
        })
    ));
    // Non-members are refused before any routing.
    let err = b
        .router
        .append(
            UserId(99),
            conv,
            ClientMsgId::new("x2").expect("id"),
            "no".into(),
            None,
            Vec::new(),
            None,
        )
        .await
        .expect_err("not a member");
    assert_eq!(err, ActorError::Forbidden);
    a.meta.shutdown().await;
    b.meta.shutdown().await;
}

/// A ring change stops a conversation's actor while it may still be handling a send; the
/// message it appends last then sits in the log where the successor's queue never had it.
/// The successor's next delivery must bring it along, in order, and the delivery watermark
/// must not pass it (which would leave it out of every member's event stream for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_the_log_but_not_in_the_delivery_queue_still_reaches_every_member() {
    let a = must_start(1, None).await;
    must_see_members(&a, 1).await;
    must_see_a_settled_ring(&[&a]).await;
    let conv = ConversationId::direct(UserId(1), UserId(2));
    let send = |n: u64, from: u64| {
        a.router.append(
            UserId(from),
            conv,
            ClientMsgId::new(format!("m{n}")).expect("id"),
            format!("message {n}"),
            None,
            Vec::new(),
            None,
        )
    };
    let (m, _) = send(1, 1).await.expect("first send");
    assert_eq!(m.seq, Seq(1));

    // What the stopped actor did: stored a message under the same ring, outside the queue
    // of the actor now serving the conversation.
    let written = a
        .logs
        .conversations
        .append(AppendRequest {
            conversation: conv,
            sender: UserId(2),
            client_msg_id: ClientMsgId::new("left-behind").expect("id"),
            body: "appended by the stopped actor".into(),
            ts_ms: 1,
            refers: None,
            attachments: Vec::new(),
            epoch: a.meta.ring().epoch(),
        })
        .expect("append to the local log");
    assert_eq!(written.message.seq, Seq(2));
    let (m, _) = send(3, 1).await.expect("send after it");
    assert_eq!(m.seq, Seq(3));

    for user in [UserId(1), UserId(2)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let seqs = loop {
            let events = a
                .logs
                .events
                .read_after(user, EventSeq(0), 10)
                .expect("read events");
            let seqs: Vec<u64> = events
                .iter()
                .filter_map(|e| match &e.event {
                    UserEvent::Message { message } => Some(message.seq.0),
                    _ => None,
                })
                .collect();
            if seqs.len() >= 3 || tokio::time::Instant::now() > deadline {
                break seqs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(seqs, [1, 2, 3], "user {user}'s events");
    }
    let page = a.router.local_log(conv, Seq(0), 10).expect("local log");
    assert_eq!(
        page.delivered,
        Seq(3),
        "the watermark follows what went out"
    );
    a.meta.shutdown().await;
}
