//! Rate limits: a client over its allowance gets `rate_limited` with `retry_after_ms`, loses
//! nothing already accepted, and is served again after the wait.

mod harness;

use std::time::Duration;

use chat_client::Connection;
use chat_types::{ClientMsgId, ConversationId, ErrorCode, Seq};
use harness::must_start_configured;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_allowance_a_client_waits_and_loses_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let n = must_start_configured(
        root.path(),
        "solo",
        "[rate_limits]\nsends_per_second = 3\nlogins_per_minute_per_account = 3\ncontact_requests_per_minute = 2\n",
    )
    .await;
    let api = n.api();
    let mut ids = Vec::new();
    for name in ["rl_alice", "rl_bob", "rl_carol", "rl_dave"] {
        ids.push(
            api.register(name, "correct horse")
                .await
                .expect("register")
                .user_id,
        );
    }
    let token = api
        .login("rl_alice", "correct horse")
        .await
        .expect("login")
        .token;
    let (a, _) = Connection::connect(&api.ws_url(&token))
        .await
        .expect("connect");
    let conv = ConversationId::direct(ids[0], ids[1]);
    let cmid = |s: &str| ClientMsgId::new(s).expect("id");

    for i in 1..=3 {
        a.send(conv, cmid(&format!("m{i}")), "hi")
            .await
            .expect("within the allowance");
    }
    let err = a
        .send(conv, cmid("m4"), "hi")
        .await
        .expect_err("over the allowance");
    let chat_client::ClientError::Server(e) = err else {
        panic!("expected a server error, got {err:?}");
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry);
    let wait = e.retry_after_ms.expect("retry_after_ms");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let ack = a
        .send(conv, cmid("m4"), "hi")
        .await
        .expect("served after the wait");
    assert_eq!(
        ack.seq,
        Seq(4),
        "the limited send stored nothing; nothing was lost"
    );

    // Login attempts per account, wrong password or not.
    for _ in 0..2 {
        let e = api
            .login("rl_bob", "wrong password")
            .await
            .expect_err("wrong");
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    }
    api.login("rl_bob", "correct horse")
        .await
        .expect("third attempt");
    let e = api
        .login("rl_bob", "correct horse")
        .await
        .expect_err("fourth attempt");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));

    // Contact requests per user.
    a.request_contact(ids[1]).await.expect("first request");
    a.request_contact(ids[2]).await.expect("second request");
    let e = a.request_contact(ids[3]).await.expect_err("third request");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));
}
