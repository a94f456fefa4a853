//! Two real `chat-node` processes, users on both: profiles, contacts, blocks, the
//! direct-message policy and sessions, all stored in the Raft metadata and seen from either
//! node.

mod harness;

use std::future::Future;
use std::time::{Duration, Instant};

use chat_client::{ClientError, Connection, HttpApi};
use chat_types::rest::{ContactRequestBody, HistoryQuery, ProfileUpdate, SettingsUpdate};
use chat_types::{close, ClientMsgId, ConversationId, DmPolicy, ErrorCode, Relation, Seq, UserId};
use harness::{must_be_ready, NodeProc};

const PASSWORD: &str = "correct horse";

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid client message id")
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    let err = r.expect_err("the server refuses");
    err.code()
        .unwrap_or_else(|| panic!("expected a server error, got {err:?}"))
}

/// Polls `f` until it returns `Some`: replication to the other node takes a moment.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct User {
    id: UserId,
    name: String,
    token: String,
}

async fn must_sign_up(register_on: &HttpApi, login_on: &HttpApi, name: &str) -> User {
    let reg = register_on
        .register(name, PASSWORD)
        .await
        .expect("register");
    let login = login_on.login(name, PASSWORD).await.expect("login");
    User {
        id: reg.user_id,
        name: name.to_owned(),
        token: login.token,
    }
}

async fn must_connect(api: &HttpApi, user: &User) -> Connection {
    Connection::connect(&api.ws_url(&user.token))
        .await
        .expect("connect")
        .0
}

/// Whether `user` is in `who`'s contact list, as `api`'s node sees it.
async fn has_contact(api: &HttpApi, who: &User, user: UserId) -> bool {
    api.contacts(&who.token)
        .await
        .expect("contacts")
        .contacts
        .iter()
        .any(|c| c.profile.user_id == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_contacts_blocks_policy_and_sessions_work_across_nodes() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "n2", Some(n1.peer.clone()));
    n2.start();
    must_be_ready(&n1, 2).await;
    must_be_ready(&n2, 2).await;
    let (api1, api2) = (n1.api(), n2.api());

    // Alice and Dave live on n1, Bob and Carol on n2.
    let alice = must_sign_up(&api1, &api1, "alice").await;
    let bob = must_sign_up(&api1, &api2, "bob").await;
    let carol = must_sign_up(&api2, &api2, "carol").await;
    let dave = must_sign_up(&api2, &api1, "dave").await;
    let a1 = must_connect(&api1, &alice).await;
    let b2 = must_connect(&api2, &bob).await;
    let d1 = must_connect(&api1, &dave).await;

    // --- Profiles -------------------------------------------------------------------------
    let fresh = api2
        .user_profile(&bob.token, alice.id)
        .await
        .expect("profile");
    assert_eq!(
        (
            fresh.display_name.as_str(),
            fresh.status_text.as_str(),
            fresh.avatar
        ),
        ("alice", "", None),
        "a profile nobody set shows the username"
    );
    // An avatar is an image one uploaded.
    let refused = api1
        .update_profile(
            &alice.token,
            &ProfileUpdate {
                avatar: Some(Some("media-42".into())),
                ..Default::default()
            },
        )
        .await
        .expect_err("not a media id");
    assert_eq!(refused.code(), Some(chat_types::ErrorCode::InvalidArgument));
    let picture = {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("encode png");
        out.into_inner()
    };
    let avatar = api1
        .upload(&alice.token, "me.png", picture)
        .await
        .expect("upload avatar")
        .id
        .to_string();
    let update = ProfileUpdate {
        display_name: Some("Alice Liddell".into()),
        status_text: Some("down the rabbit hole".into()),
        avatar: Some(Some(avatar.clone())),
    };
    let mine = api1
        .update_profile(&alice.token, &update)
        .await
        .expect("update");
    assert_eq!(mine.display_name, "Alice Liddell");
    // Bob, on the other node, sees it once n2 has applied it.
    let seen = eventually("alice's profile on n2", || async {
        let p = api2.user_profile(&bob.token, alice.id).await.ok()?;
        (p == mine).then_some(p)
    })
    .await;
    assert_eq!(seen.avatar.as_deref(), Some(avatar.as_str()));
    assert_eq!(
        b2.profile_by_username("ALICE").await.expect("ws profile"),
        mine
    );
    // A write through a node answers only once that node has applied it: read-your-writes.
    let cleared = api2
        .update_profile(
            &alice.token,
            &ProfileUpdate {
                avatar: Some(None),
                ..Default::default()
            },
        )
        .await
        .expect("clear avatar");
    assert_eq!(
        (cleared.avatar.as_deref(), cleared.status_text.as_str()),
        (None, "down the rabbit hole")
    );
    assert_eq!(
        api2.my_profile(&alice.token).await.expect("own profile"),
        cleared
    );
    let via_ws = a1
        .update_profile(ProfileUpdate {
            status_text: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect("ws update");
    assert_eq!(via_ws.status_text, "");
    assert_eq!(a1.my_profile().await.expect("own profile"), via_ws);
    // Bad values are refused with stable codes and change nothing.
    for bad in [
        ProfileUpdate {
            display_name: Some("x".repeat(65)),
            ..Default::default()
        },
        ProfileUpdate {
            display_name: Some("bell\u{7}".into()),
            ..Default::default()
        },
        ProfileUpdate {
            status_text: Some("s".repeat(141)),
            ..Default::default()
        },
        ProfileUpdate {
            avatar: Some(Some("has space".into())),
            ..Default::default()
        },
    ] {
        assert_eq!(
            code(api1.update_profile(&alice.token, &bad).await),
            ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }

    // --- Contact requests: request, accept, remove --------------------------------------
    assert_eq!(
        a1.request_contact_by_username(&bob.name)
            .await
            .expect("request"),
        Relation::Outgoing
    );
    let incoming = eventually("bob sees alice's request", || async {
        let c = api2.contacts(&bob.token).await.ok()?;
        (!c.incoming.is_empty()).then_some(c.incoming)
    })
    .await;
    assert_eq!(incoming[0].profile.user_id, alice.id);
    assert_eq!(incoming[0].profile.display_name, "Alice Liddell");
    let accepted = api2
        .accept_contact(&bob.token, alice.id)
        .await
        .expect("accept");
    assert_eq!(accepted.relation, Relation::Contact);
    assert!(has_contact(&api2, &bob, alice.id).await, "read-your-writes");
    let lists = eventually("alice sees bob as a contact", || async {
        let c = a1.contacts().await.ok()?;
        (!c.contacts.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(lists.contacts[0].profile.user_id, bob.id);
    assert!(lists.outgoing.is_empty() && lists.incoming.is_empty());
    // Either side may end it.
    assert_eq!(
        b2.remove_contact(alice.id).await.expect("remove"),
        Relation::None
    );
    eventually("the contact is gone on n1", || async {
        (!has_contact(&api1, &alice, bob.id).await).then_some(())
    })
    .await;
    assert_eq!(code(a1.remove_contact(bob.id).await), ErrorCode::NotFound);

    // Illegal moves: accept without a request, request to self, cancel someone else's.
    assert_eq!(
        code(api1.accept_contact(&alice.token, carol.id).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(api1.request_contact(&alice.token, alice.id).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            api1.request_contact_raw(
                &alice.token,
                &ContactRequestBody {
                    user_id: Some(bob.id),
                    username: Some(bob.name.clone())
                }
            )
            .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        d1.request_contact(bob.id).await.expect("dave asks bob"),
        Relation::Outgoing
    );
    assert_eq!(
        code(b2.cancel_contact(dave.id).await),
        ErrorCode::NotFound,
        "only the sender cancels; the recipient declines"
    );
    assert_eq!(
        b2.decline_contact(dave.id).await.expect("decline"),
        Relation::None
    );
    assert_eq!(
        d1.request_contact(bob.id).await.expect("ask again"),
        Relation::Outgoing
    );
    assert_eq!(
        d1.cancel_contact(bob.id).await.expect("cancel"),
        Relation::None
    );
    assert_eq!(code(d1.cancel_contact(bob.id).await), ErrorCode::NotFound);

    // Crossing requests make contacts: Carol asks Alice, Alice asks Carol.
    assert_eq!(
        api2.request_contact(&carol.token, alice.id)
            .await
            .expect("request")
            .relation,
        Relation::Outgoing
    );
    assert_eq!(
        api1.request_contact(&alice.token, carol.id)
            .await
            .expect("request")
            .relation,
        Relation::Contact
    );

    // --- Blocks -----------------------------------------------------------------------------
    let conv = ConversationId::direct(alice.id, bob.id);
    assert_eq!(
        b2.request_contact(alice.id).await.expect("request"),
        Relation::Outgoing
    );
    assert_eq!(
        api1.accept_contact(&alice.token, bob.id)
            .await
            .expect("accept")
            .relation,
        Relation::Contact
    );
    let ack = b2.send(conv, cmid("b1"), "hi alice").await.expect("send");
    assert_eq!(ack.seq, Seq(1));
    let blocked = api1.block_user(&alice.token, bob.id).await.expect("block");
    assert_eq!(blocked.relation, Relation::Blocked);
    assert!(
        !has_contact(&api1, &alice, bob.id).await,
        "blocking ends the contact"
    );
    let block_list = api1.blocks(&alice.token).await.expect("blocks");
    assert_eq!(
        block_list
            .blocked
            .iter()
            .map(|b| b.profile.user_id)
            .collect::<Vec<_>>(),
        vec![bob.id]
    );
    // Once n2 has applied the block (the contact is gone there too), Bob cannot write to
    // Alice, open the conversation, or ask her again; nothing is stored.
    eventually("the block reaches n2", || async {
        (!has_contact(&api2, &bob, alice.id).await).then_some(())
    })
    .await;
    assert_eq!(
        code(b2.send(conv, cmid("b2"), "are you there?").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(b2.open_direct_by_id(alice.id).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(b2.request_contact(alice.id).await),
        ErrorCode::Forbidden
    );
    // The block holds both ways: Alice cannot write to Bob either until she unblocks.
    assert_eq!(
        code(a1.send(conv, cmid("a1"), "hello?").await),
        ErrorCode::Forbidden
    );
    let page = api2
        .history(&bob.token, conv, HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(page.head, Seq(1), "nothing was stored");
    assert_eq!(page.messages.len(), 1);
    // Unblocking lets Bob write again (once n2 knows; a refused send stores nothing, so
    // retrying it is safe).
    assert_eq!(
        a1.unblock_user(bob.id).await.expect("unblock"),
        Relation::None
    );
    assert!(a1.blocks().await.expect("blocks").is_empty());
    let ack = eventually("the unblock reaches n2", || async {
        b2.send(conv, cmid("b2"), "are you there?").await.ok()
    })
    .await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(2), false));

    // --- Direct-message policy ---------------------------------------------------------------
    let settings = api2
        .update_settings(
            &carol.token,
            &SettingsUpdate {
                dm_policy: Some(DmPolicy::Contacts),
                push_preview: None,
            },
        )
        .await
        .expect("settings");
    assert_eq!(settings.dm_policy, DmPolicy::Contacts);
    assert_eq!(
        api2.settings(&carol.token)
            .await
            .expect("settings")
            .dm_policy,
        DmPolicy::Contacts
    );
    // Dave is a stranger to Carol: refused once n1 has applied her setting.
    eventually("carol's policy reaches n1", || async {
        match d1.open_direct_by_id(carol.id).await {
            Err(e) if e.code() == Some(ErrorCode::Forbidden) => Some(()),
            _ => None,
        }
    })
    .await;
    let dave_carol = ConversationId::direct(dave.id, carol.id);
    assert_eq!(
        code(d1.send(dave_carol, cmid("d1"), "hello stranger").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        d1.history(dave_carol, None, None, None)
            .await
            .expect("history")
            .head,
        Seq(0)
    );
    // Alice is her contact: admitted. Carol's notes to herself are always allowed.
    let alice_carol = ConversationId::direct(alice.id, carol.id);
    let info = a1.open_direct_by_id(carol.id).await.expect("contact opens");
    assert_eq!(info.conversation, alice_carol);
    assert_eq!(
        a1.send(alice_carol, cmid("a-c1"), "hi carol")
            .await
            .expect("contact sends")
            .seq,
        Seq(1)
    );
    let c2 = must_connect(&api2, &carol).await;
    c2.open_direct_by_id(carol.id).await.expect("notes to self");
    assert_eq!(
        c2.update_settings(SettingsUpdate {
            dm_policy: Some(DmPolicy::Anyone),
            push_preview: None,
        })
        .await
        .expect("ws settings")
        .dm_policy,
        DmPolicy::Anyone
    );
    assert_eq!(
        c2.settings().await.expect("settings").dm_policy,
        DmPolicy::Anyone
    );

    // --- Sessions ---------------------------------------------------------------------------
    let second = api2.login(&alice.name, PASSWORD).await.expect("login");
    let second_device = Connection::connect(&api2.ws_url(&second.token))
        .await
        .expect("second device")
        .0;
    let sessions = eventually("both sessions on n1", || async {
        let s = api1.sessions(&alice.token).await.ok()?.sessions;
        (s.len() == 2).then_some(s)
    })
    .await;
    assert!(sessions.iter().all(|s| s.session_id.len() == 16));
    let current: Vec<bool> = sessions.iter().map(|s| s.current).collect();
    assert_eq!(current.iter().filter(|c| **c).count(), 1);
    let other = sessions
        .iter()
        .find(|s| !s.current)
        .expect("the second device's session")
        .session_id
        .clone();
    assert_eq!(
        a1.sessions().await.expect("ws sessions").len(),
        2,
        "the WebSocket lists the same"
    );
    // Nobody else can revoke it, and bad ids are refused.
    assert_eq!(
        code(api2.revoke_session(&bob.token, &other).await),
        ErrorCode::NotFound
    );
    assert_eq!(code(b2.revoke_session(&other).await), ErrorCode::NotFound);
    assert_eq!(
        code(api1.revoke_session(&alice.token, "NOT-A-SESSION").await),
        ErrorCode::InvalidArgument
    );
    api1.revoke_session(&alice.token, &other)
        .await
        .expect("revoke");
    assert_eq!(
        api1.sessions(&alice.token)
            .await
            .expect("sessions")
            .sessions
            .len(),
        1
    );
    // The revoked token is refused on the other node, and its live connection is closed.
    let refused = eventually("the revoked token gets 401 on n2", || async {
        match api2.my_profile(&second.token).await {
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => Some(()),
            _ => None,
        }
    });
    let (_, closed) = tokio::join!(refused, second_device.wait_closed(Duration::from_secs(5)));
    assert_eq!(closed.expect("closed").code, Some(close::UNAUTHORIZED));
    a1.ping().await.expect("the first session still works");

    drop((a1, b2, c2, d1, second_device));
    n2.stop();
    n1.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_social_requests_get_stable_codes() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = NodeProc::new(root.path(), "solo", None);
    n.start();
    must_be_ready(&n, 1).await;
    let api = n.api();
    let alice = must_sign_up(&api, &api, "alice").await;
    let base = n.base_url();
    let client = reqwest_like(&base);

    // Malformed path ids and unknown actions.
    for (method, path, want) in [
        ("GET", "/v1/users/abc/profile", 400),
        ("GET", "/v1/users/0/profile", 400),
        ("PUT", "/v1/blocks/-1", 400),
        ("POST", "/v1/contacts/requests/2/shrug", 404),
        ("DELETE", "/v1/contacts/x", 400),
    ] {
        let (status, body) = client.send(method, path, &alice.token, None).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(v["code"].is_string(), "{body}");
    }
    // Unknown fields and wrong types in bodies.
    for (method, path, body) in [
        ("PATCH", "/v1/me/profile", r#"{"nickname":"x"}"#),
        ("PUT", "/v1/me/settings", r#"{"dm_policy":"friends"}"#),
        ("POST", "/v1/contacts/requests", r#"{"user_id":"two"}"#),
    ] {
        let (status, text) = client.send(method, path, &alice.token, Some(body)).await;
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(text.contains("invalid_argument"), "{text}");
    }
    // No token: 401.
    let (status, _) = client.send("GET", "/v1/contacts", "", None).await;
    assert_eq!(status, 401);

    // Unknown users (a user made through another node a moment ago would be waited for).
    assert_eq!(
        code(api.user_profile(&alice.token, UserId(999)).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(api.request_contact(&alice.token, UserId(999)).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(api.block_user(&alice.token, UserId(999)).await),
        ErrorCode::NotFound
    );

    // The same over the WebSocket: the connection stays up.
    let (conn, _) = Connection::connect(&api.ws_url(&alice.token))
        .await
        .expect("connect");
    assert_eq!(
        code(conn.request_contact_by_username("nobody").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(conn.block_user(alice.id).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(conn.revoke_session("zz").await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(conn.profile(UserId(999)).await), ErrorCode::NotFound);
    conn.ping().await.expect("still serving");
    drop(conn);
    n.stop();
}

/// A minimal HTTP/1.1 client for requests the SDK would never send.
fn reqwest_like(base: &str) -> RawHttp {
    RawHttp {
        host: base.trim_start_matches("http://").to_owned(),
    }
}

struct RawHttp {
    host: String,
}

impl RawHttp {
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.host)
            .await
            .expect("connect");
        let body = body.unwrap_or("");
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}
