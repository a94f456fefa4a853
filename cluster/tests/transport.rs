//! The peer transport over real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use chat_cluster::transport::{
    serve, Channel, PeerError, PeerHandler, PeerHandlerFuture, Transport, TransportError,
};

struct Echo;

impl PeerHandler for Echo {
    fn handle(&self, channel: Channel, payload: Vec<u8>) -> PeerHandlerFuture {
        Box::pin(async move {
            match channel {
                Channel::Actor => Ok(payload.into_iter().rev().collect()),
                Channel::Raft => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(payload)
                }
                Channel::Cluster | Channel::Media | Channel::Search => {
                    Err(PeerError::Handler("refused".into()))
                }
            }
        })
    }
}

async fn must_serve() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (addr, serve(listener, Arc::new(Echo)))
}

#[tokio::test]
async fn many_concurrent_requests_get_their_own_replies() {
    let (addr, _server) = must_serve().await;
    let t = Transport::default();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let t = t.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let payload = i.to_be_bytes().to_vec();
            let reply = t
                .request(
                    &addr,
                    Channel::Actor,
                    payload.clone(),
                    Duration::from_secs(5),
                )
                .await
                .expect("reply");
            assert_eq!(reply, payload.into_iter().rev().collect::<Vec<_>>());
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

#[tokio::test]
async fn handler_errors_timeouts_and_partitions_are_reported() {
    let (addr, server) = must_serve().await;
    let t = Transport::default();
    let err = t
        .request(&addr, Channel::Cluster, vec![], Duration::from_secs(5))
        .await
        .expect_err("handler refuses");
    assert!(matches!(
        err,
        TransportError::Remote {
            error: PeerError::Handler(_),
            ..
        }
    ));

    let err = t
        .request(&addr, Channel::Raft, vec![1], Duration::from_millis(50))
        .await
        .expect_err("slow handler");
    assert!(matches!(err, TransportError::Timeout { .. }));

    t.faults().partition(&addr);
    let err = t
        .request(&addr, Channel::Actor, vec![1], Duration::from_secs(1))
        .await
        .expect_err("partitioned");
    assert!(matches!(err, TransportError::Unreachable { .. }));
    t.faults().heal();
    t.request(&addr, Channel::Actor, vec![1], Duration::from_secs(1))
        .await
        .expect("healed");

    server.abort();
    let _ = server.await;
}

#[tokio::test]
async fn reconnects_after_the_peer_restarts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = serve(listener, Arc::new(Echo));
    let t = Transport::default();
    let a = addr.to_string();
    t.request(&a, Channel::Actor, vec![1, 2], Duration::from_secs(1))
        .await
        .expect("first");
    server.abort();
    let _ = server.await;
    // Connections accepted by the old server die with its tasks only when they are dropped;
    // a fresh server on the same port must be reachable through a redial.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let _server = serve(listener, Arc::new(Echo));
    let mut ok = false;
    for _ in 0..50 {
        if t.request(&a, Channel::Actor, vec![3], Duration::from_millis(200))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "transport never reached the restarted peer");
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_kill_the_server() {
    use tokio::io::AsyncWriteExt;
    let (addr, _server) = must_serve().await;
    let mut raw = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    raw.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .await
        .expect("write");
    raw.write_all(&[0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    drop(raw);
    let t = Transport::default();
    t.request(&addr, Channel::Actor, vec![9], Duration::from_secs(1))
        .await
        .expect("server still serves");
}
