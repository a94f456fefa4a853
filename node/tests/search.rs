//! Search through the protocol on a 3-node cluster: English, Chinese and Japanese text,
//! results only from conversations the user may read (a stranger and a removed member find
//! nothing), edits and deletions, filters and paging, people and conversation names, and
//! answers after a node is killed.

mod harness;

use std::time::{Duration, Instant};

use chat_client::{Connection, HttpApi, MessageSearch};
use chat_types::search::MessageSearchResponse;
use chat_types::{ClientMsgId, ConversationId, ErrorCode, MessageRef, Seq};
use harness::{must_sign_up, must_start_trio};

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

async fn search(api: &HttpApi, token: &str, q: &str, f: &MessageSearch) -> MessageSearchResponse {
    api.search_messages(token, q, f).await.expect("search")
}

/// Searches until `check` holds (the index is asynchronous), panicking after 10 s.
async fn must_find(
    api: &HttpApi,
    token: &str,
    q: &str,
    f: &MessageSearch,
    check: impl Fn(&MessageSearchResponse) -> bool,
) -> MessageSearchResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = search(api, token, q, f).await;
        if check(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "search for {q:?} never matched: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST path` with the operator token; the status.
async fn must_post_admin(addr: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        harness::ADMIN_TOKEN
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn seqs(r: &MessageSearchResponse) -> Vec<(ConversationId, Seq)> {
    r.hits.iter().map(|h| (h.conversation, h.seq)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_what_the_user_may_read_in_any_language_and_survives_a_node_loss() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut trio = must_start_trio(root.path(), &[]).await;
    let (a1, a2, a3) = (
        trio.nodes[0].api(),
        trio.nodes[1].api(),
        trio.nodes[2].api(),
    );
    let (alice, alice_t) = must_sign_up(&a1, "search_alice").await;
    let (bob, bob_t) = must_sign_up(&a2, "search_bob").await;
    let (carol, carol_t) = must_sign_up(&a3, "search_carol").await;
    let connect = |api: &HttpApi, t: &str| {
        let url = api.ws_url(t);
        async move { Connection::connect(&url).await.expect("connect").0 }
    };
    let alice_c = connect(&a1, &alice_t).await;
    let bob_c = connect(&a2, &bob_t).await;
    let carol_c = connect(&a3, &carol_t).await;

    // A direct conversation in three languages.
    let dm = alice_c
        .open_direct_by_id(bob)
        .await
        .expect("dm")
        .conversation;
    let sent = [
        ("e1", "Let's meet at the Café Central tomorrow"),
        ("c1", "我们明天去北京开会"),
        ("j1", "東京で会議があります"),
        ("e2", "the quarterly report is attached"),
    ];
    for (id, body) in sent {
        alice_c.send(dm, cmid(id), body).await.expect("send");
    }
    let none = MessageSearch::default();
    let started = Instant::now();
    let r = must_find(&a2, &bob_t, "北京", &none, |r| !r.hits.is_empty()).await;
    let first_found = started.elapsed();
    assert_eq!(seqs(&r), vec![(dm, Seq(2))]);
    assert!(!r.partial);
    let hit = &r.hits[0];
    let marked: String = hit
        .snippet
        .chars()
        .skip(hit.highlights[0].0)
        .take(hit.highlights[0].1 - hit.highlights[0].0)
        .collect();
    assert_eq!(marked, "北京");
    for (q, want) in [
        ("明天去", Seq(2)),
        ("会議", Seq(3)),
        ("東京", Seq(3)),
        ("cafe", Seq(1)),
        ("CAFÉ central", Seq(1)),
        ("quarterly report", Seq(4)),
    ] {
        let r = must_find(&a3, &alice_t, q, &none, |r| !r.hits.is_empty()).await;
        assert_eq!(seqs(&r), vec![(dm, want)], "{q}");
    }
    // A stranger finds nothing of it, whichever node they ask.
    for api in [&a1, &a2, &a3] {
        let r = search(api, &carol_t, "北京", &none).await;
        assert!(
            r.hits.is_empty(),
            "carol reads alice and bob's messages: {r:?}"
        );
    }
    let err = a3
        .search_messages(
            &carol_t,
            "北京",
            &MessageSearch {
                conversation: Some(dm),
                ..Default::default()
            },
        )
        .await
        .expect_err("filter on a foreign conversation");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));

    // A group: members find its messages; after removal, nothing.
    let group = alice_c
        .create_group("Roadmap planning", vec![bob, carol])
        .await
        .expect("group")
        .conversation;
    carol_c
        .send(group, cmid("g1"), "launch checklist for the release")
        .await
        .expect("carol sends");
    bob_c
        .send(group, cmid("g2"), "the launch is on friday")
        .await
        .expect("bob sends");
    let r = must_find(&a1, &carol_t, "launch", &none, |r| r.hits.len() == 2).await;
    assert_eq!(seqs(&r)[0].0, group);
    let by_bob = MessageSearch {
        sender: Some(bob),
        ..Default::default()
    };
    let r = search(&a1, &carol_t, "launch", &by_bob).await;
    assert_eq!(r.hits.len(), 1);
    assert_eq!(r.hits[0].sender, bob);
    alice_c
        .remove_member(group, carol)
        .await
        .expect("remove carol");
    let r = must_find(&a2, &carol_t, "launch", &none, |r| r.hits.is_empty()).await;
    assert!(r.hits.is_empty());
    let r = search(&a2, &bob_t, "launch", &none).await;
    assert_eq!(r.hits.len(), 2, "bob still reads the group");

    // Edits replace the text; deletions remove it.
    alice_c
        .send_related(
            dm,
            cmid("edit1"),
            "the annual report is attached",
            Some(MessageRef::Edit { seq: Seq(4) }),
        )
        .await
        .expect("edit");
    must_find(&a1, &bob_t, "annual", &none, |r| {
        seqs(r) == vec![(dm, Seq(4))]
    })
    .await;
    let r = search(&a1, &bob_t, "quarterly", &none).await;
    assert!(r.hits.is_empty(), "the old text is gone: {r:?}");
    alice_c
        .send_related(
            dm,
            cmid("del1"),
            "",
            Some(MessageRef::Delete { seq: Seq(1) }),
        )
        .await
        .expect("delete");
    must_find(&a1, &bob_t, "cafe", &none, |r| r.hits.is_empty()).await;

    // Paging: newest first, every hit once.
    for i in 0..25 {
        bob_c
            .send(
                dm,
                cmid(&format!("p{i}")),
                format!("paging marker number {i}"),
            )
            .await
            .expect("send");
    }
    must_find(&a1, &alice_t, "marker", &none, |r| r.hits.len() == 20).await;
    let mut all = Vec::new();
    let mut f = MessageSearch {
        limit: Some(10),
        ..Default::default()
    };
    loop {
        let page = search(&a3, &alice_t, "marker", &f).await;
        all.extend(seqs(&page));
        match page.next {
            Some(next) => f.cursor = Some(next),
            None => break,
        }
    }
    let mut sorted = all.clone();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.1));
    sorted.dedup();
    assert_eq!(all.len(), 25);
    assert_eq!(all, sorted, "newest first, no repeats");

    // People and conversation names.
    let users = a1
        .search_users(&carol_t, "serch_alice")
        .await
        .expect("users");
    assert_eq!(
        users.users.first().map(|u| u.user_id),
        Some(alice),
        "typo-tolerant"
    );
    let users = a1.search_users(&carol_t, "search_b").await.expect("users");
    assert_eq!(users.users.first().map(|u| u.user_id), Some(bob), "prefix");
    let convs = a2
        .search_conversations(&bob_t, "roadmap")
        .await
        .expect("convs");
    assert_eq!(
        convs.conversations.first().map(|c| c.conversation),
        Some(group)
    );
    let convs = a2
        .search_conversations(&carol_t, "roadmap")
        .await
        .expect("convs");
    assert!(convs.conversations.is_empty(), "carol left the group");
    let err = a1
        .search_messages(&alice_t, "   ", &none)
        .await
        .expect_err("empty query");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = a1
        .search_messages(&alice_t, "🙂 ***", &none)
        .await
        .expect_err("nothing searchable in the query");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));

    // An operator rebuilds one node's index from its logs: the answers stay the same.
    let rebuilt = must_post_admin(&trio.nodes[1].http, "/v1/admin/search/rebuild").await;
    assert_eq!(rebuilt, 202);
    must_find(
        &a2,
        &alice_t,
        "marker",
        &MessageSearch {
            limit: Some(50),
            ..Default::default()
        },
        |r| r.hits.len() == 25,
    )
    .await;
    let r = must_find(&a2, &bob_t, "会議", &none, |r| !r.hits.is_empty()).await;
    assert_eq!(seqs(&r), vec![(dm, Seq(3))]);

    // A node dies: its replicas answer for it.
    trio.nodes[2].kill9();
    let r = must_find(&a1, &bob_t, "北京", &none, |r| !r.hits.is_empty()).await;
    assert_eq!(seqs(&r), vec![(dm, Seq(2))]);
    let r = must_find(
        &a2,
        &alice_t,
        "marker",
        &MessageSearch {
            limit: Some(50),
            ..Default::default()
        },
        |r| r.hits.len() == 25,
    )
    .await;
    assert_eq!(r.hits.len(), 25);
    eprintln!("first hit visible {first_found:?} after the send was acknowledged");
    let _ = carol;
}

/// A backlog larger than one indexer batch holds (more text than a commit takes) is indexed
/// in several commits, one right after the other, and every message of it is found once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_messages_is_indexed_in_several_batches_and_loses_none() {
    const MESSAGES: u64 = 1_200;
    let root = tempfile::tempdir().expect("tempdir");
    // The indexer sleeps 4 s between passes, so the whole backlog (about 18 MB of text,
    // more than twice the text one batch takes) waits for one or two passes.
    let node = harness::must_start_configured(
        root.path(),
        "n1",
        "[rate_limits]\nsends_per_second = 100000\n[search]\ninterval_ms = 4000\n",
    )
    .await;
    let api = node.api();
    let (alice, alice_token) = must_sign_up(&api, "bulk_alice").await;
    let (bob, _) = must_sign_up(&api, "bulk_bob").await;
    let dm = ConversationId::direct(alice, bob);
    let (a, _) = Connection::connect(&api.ws_url(&alice_token))
        .await
        .expect("connect");
    let filler = "ballast ".repeat(1_850);
    // A word of its own per message: letters only (digits split words) and all of one length
    // (a word also finds longer words it starts).
    let word = |i: u64| -> String {
        format!("{i:04}")
            .bytes()
            .map(|d| char::from(b'k' + (d - b'0')))
            .collect()
    };
    let sends = (1..=MESSAGES).map(|i| {
        let body = format!("{} {filler}", word(i));
        let a = &a;
        async move {
            a.send(dm, cmid(&format!("bulk{i}")), body)
                .await
                .expect("send")
                .seq
        }
    });
    let stored = futures_util::StreamExt::collect::<Vec<Seq>>(futures_util::StreamExt::buffered(
        futures_util::stream::iter(sends),
        64,
    ))
    .await;
    assert_eq!(stored.len() as u64, MESSAGES);

    // Every message, once: page through the word they all hold.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut found: Vec<Seq> = Vec::new();
        let mut cursor = None;
        loop {
            let f = MessageSearch {
                conversation: Some(dm),
                cursor: cursor.take(),
                limit: Some(100),
                ..Default::default()
            };
            let page = search(&api, &alice_token, "ballast", &f).await;
            found.extend(page.hits.iter().map(|h| h.seq));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        found.sort();
        if found.len() as u64 >= MESSAGES {
            let expected: Vec<Seq> = (1..=MESSAGES).map(Seq).collect();
            assert_eq!(found, expected, "every message indexed once");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MESSAGES} messages found",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And each by its own word, first and last.
    for i in [1, MESSAGES] {
        let r = search(&api, &alice_token, &word(i), &MessageSearch::default()).await;
        assert_eq!(seqs(&r), vec![(dm, Seq(i))]);
    }
}
