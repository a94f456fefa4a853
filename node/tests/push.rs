//! Offline push: a user with no live connection gets a webhook POST per new message, retried
//! when the gateway fails, and without sender or preview when the user asked for privacy.

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::Connection;
use chat_types::rest::SettingsUpdate;
use chat_types::{ClientMsgId, ConversationId};
use harness::{must_sign_up, must_start_configured};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A push gateway on loopback: records each POST body; fails the very first request.
async fn must_start_gateway() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>, Arc<Mutex<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0u32));
    let (b, r) = (bodies.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                }
            };
            let n = {
                let mut r = r.lock().expect("lock");
                *r += 1;
                *r
            };
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            if n > 1 {
                if let Some(body) = body.and_then(|b| serde_json::from_str(&b).ok()) {
                    b.lock().expect("lock").push(body);
                }
            }
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    (port, bodies, requests)
}

async fn must_collect(bodies: &Mutex<Vec<serde_json::Value>>, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let got = bodies.lock().expect("lock").clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway got fewer than {n} notifications");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_get_webhook_posts_retried_and_private_on_request() {
    let (port, bodies, requests) = must_start_gateway().await;
    let root = tempfile::tempdir().expect("tempdir");
    let config = format!("[push]\nwebhook_url = \"http://127.0.0.1:{port}/push\"\nattempts = 5\n");
    let n = must_start_configured(root.path(), "solo", &config).await;
    let api = n.api();
    let (alice, at) = must_sign_up(&api, "push_alice").await;
    let (bob, bt) = must_sign_up(&api, "push_bob").await;
    let (a, _) = Connection::connect(&api.ws_url(&at))
        .await
        .expect("connect");
    let conv = ConversationId::direct(alice, bob);

    // Bob is offline: a notification with a preview, delivered despite the first failure.
    a.send(conv, ClientMsgId::new("p1").expect("id"), "dinner at 8")
        .await
        .expect("send");
    let got = must_collect(&bodies, 1).await;
    assert_eq!(got[0]["user_id"], bob.0);
    assert_eq!(got[0]["body"], "dinner at 8");
    assert_eq!(got[0]["sender_username"], "push_alice");
    assert!(
        *requests.lock().expect("lock") >= 2,
        "the failed first try was retried"
    );

    // Bob online: no notification for what he receives live.
    let (b, _) = Connection::connect(&api.ws_url(&bt))
        .await
        .expect("connect");
    a.send(conv, ClientMsgId::new("p2").expect("id"), "see you")
        .await
        .expect("send");
    b.next_message(Duration::from_secs(5))
        .await
        .expect("read")
        .expect("live message");
    // Privacy: no sender, no preview.
    b.update_settings(SettingsUpdate {
        dm_policy: None,
        push_preview: Some(false),
    })
    .await
    .expect("settings");
    b.close().await.expect("close");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(conv, ClientMsgId::new("p3").expect("id"), "secret")
        .await
        .expect("send");
    let got = must_collect(&bodies, 2).await;
    assert_eq!(got.len(), 2, "nothing was posted while bob was connected");
    assert_eq!(got[1]["preview"], false);
    assert!(got[1].get("body").is_none() && got[1].get("sender").is_none());
}
