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

/// A listener that never accepts, with its one-place queue already taken: the kernel drops
/// further SYNs, so a dial to it hangs, as one to a dead host does.
async fn must_black_hole() -> (String, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue (its length is the backlog plus one) and then some.
    let fillers = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (addr.to_string(), listener, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_hangs_does_not_hold_up_requests_to_other_peers() {
    let (live, _server) = must_serve().await;
    let (dead, _listener, _fillers) = must_black_hole().await;
    let t = Transport::default();
    let stuck = {
        let (t, dead) = (t.clone(), dead.clone());
        tokio::spawn(async move {
            t.request(&dead, Channel::Actor, vec![1], Duration::from_secs(3))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let reply = t
        // Shorter than the dial timeout (1 s): a request that had to wait for the other
        // dial would time out.
        .request(
            &live,
            Channel::Actor,
            vec![1, 2],
            Duration::from_millis(800),
        )
        .await
        .expect("the live peer answers while the other dial hangs");
    assert_eq!(reply, vec![2, 1]);
    eprintln!("the live peer answered in {:?}", started.elapsed());
    let err = stuck
        .await
        .expect("task")
        .expect_err("the black hole never answers");
    assert!(
        matches!(err, TransportError::Unreachable { .. }),
        "a dial that gets no answer gives up before the request's own timeout: {err:?}"
    );
}
