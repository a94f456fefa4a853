//! Starts real `chat-node` processes on loopback for the multi-process tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_client::HttpApi;

/// The operator token every test node is started with.
pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789";

pub use chat_testkit::free_port;

/// One node process with its own data directory and ports.
pub struct NodeProc {
    pub name: String,
    pub data_dir: PathBuf,
    pub http: String,
    pub peer: String,
    pub join: Option<String>,
    /// Extra environment for the process (e.g. `CHAT_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn new(root: &Path, name: &str, join: Option<String>) -> NodeProc {
        NodeProc {
            name: name.to_owned(),
            data_dir: root.join(name),
            http: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            join,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open node log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-node"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(&self.http)
            .arg("--peer-addr")
            .arg(&self.peer)
            .env(
                "CHAT_LOG",
                std::env::var("TEST_CHAT_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env("CHAT_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        if let Some(j) = &self.join {
            cmd.arg("--join").arg(j);
        }
        cmd.envs(self.env.iter().cloned());
        self.child = Some(cmd.spawn().expect("spawn chat-node"));
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn api(&self) -> HttpApi {
        HttpApi::new(&self.base_url()).expect("api")
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(status.success(), "{} exited with {status}", self.name);
                        return;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        panic!("{} did not stop within 15 s of SIGTERM", self.name);
                    }
                }
            }
        }
    }

    /// If the process ended on its own, its exit status (and it no longer counts as running).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.to_string())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `chat-node <args> --node <this node>` (an operator command) and returns its
    /// stdout, panicking when it fails.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-node"))
            .args(args)
            .arg("--node")
            .arg(&self.http)
            .env("CHAT_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run chat-node admin command");
        assert!(
            out.status.success(),
            "chat-node {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log (tail) -----\n{}", self.name, self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one node named `name` under `root` with `config` (TOML) as its configuration file,
/// and waits until it serves.
pub async fn must_start_configured(root: &Path, name: &str, config: &str) -> NodeProc {
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    let mut node = NodeProc::new(root, name, None);
    node.env = vec![("CHAT_CONFIG".into(), path.display().to_string())];
    node.start();
    must_be_ready(&node, 1).await;
    node
}

/// Polls `/readyz` until the node is ready with `members` ring members, up to three of
/// them voters.
pub async fn must_be_ready(node: &NodeProc, members: usize) -> serde_json::Value {
    must_be_ready_with(node, members, members.min(3)).await
}

/// Polls `/readyz` until the node is ready with `members` ring members and `voters` voters
/// (a node marked down leaves the ring but stays a voter).
pub async fn must_be_ready_with(
    node: &NodeProc,
    members: usize,
    voters: usize,
) -> serde_json::Value {
    let client = reqwest_lite::Client;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = client
            .get_json(&format!("{}/readyz", node.base_url()))
            .await
        {
            let count = |k: &str| v[k].as_array().map(|m| m.len());
            if v["ready"] == true
                && count("members") == Some(members)
                && count("voters") == Some(voters)
            {
                return v;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "{} not ready with {members} members; log:\n{}",
                node.name,
                node.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tiny HTTP GET for JSON endpoints, over a raw TCP stream (no extra client dependency).
pub mod reqwest_lite {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Client;

    impl Client {
        pub async fn get(&self, url: &str) -> std::io::Result<(u16, String)> {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut s = tokio::net::TcpStream::connect(host).await?;
            let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
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
            Ok((status, body))
        }

        /// PUT a JSON body with a bearer token; returns the status.
        pub async fn put_json(
            &self,
            url: &str,
            token: &str,
            body: &serde_json::Value,
        ) -> std::io::Result<u16> {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let body = body.to_string();
            let mut s = tokio::net::TcpStream::connect(host).await?;
            let req = format!(
                "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            Ok(text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0))
        }

        pub async fn get_json(&self, url: &str) -> std::io::Result<serde_json::Value> {
            let (_, body) = self.get(url).await?;
            serde_json::from_str(&body).map_err(std::io::Error::other)
        }

        /// GET with a bearer token; the body as JSON.
        pub async fn get_json_authorized(
            &self,
            url: &str,
            token: &str,
        ) -> std::io::Result<serde_json::Value> {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut s = tokio::net::TcpStream::connect(host).await?;
            let req = format!(
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b)
                .unwrap_or_default();
            serde_json::from_str(body).map_err(std::io::Error::other)
        }
    }
}

/// One entry of a node's own copy of a log: seq, the writer's epoch, the message's digest.
pub type LogEntry = (u64, u64, String);

/// The own copy of `conv` held by the node whose HTTP listener is `http` (`host:port`), page
/// by page (`GET /v1/admin/logs/...`); `None` when that node is not one of the
/// conversation's replicas under its ring.
pub async fn local_copy(
    http: &str,
    conv: &chat_types::ConversationId,
) -> Result<Option<Vec<LogEntry>>, String> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("http://{http}/v1/admin/logs/{conv}?after={after}&limit=1000");
        let asked = reqwest_lite::Client.get_json_authorized(&url, ADMIN_TOKEN);
        let v = match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(format!("{http} did not show its copy of {conv}: {e}")),
            Err(_) => return Err(format!("{http} did not show its copy of {conv} within 5 s")),
        };
        match v["replica"].as_bool() {
            Some(true) => {}
            Some(false) => return Ok(None),
            None => return Err(format!("{http} did not show its copy of {conv}: {v}")),
        }
        let page = v["entries"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last().and_then(|e| e["seq"].as_u64()) else {
            return Ok(Some(entries));
        };
        entries.extend(page.iter().map(|e| {
            (
                e["seq"].as_u64().unwrap_or(0),
                e["epoch"].as_u64().unwrap_or(0),
                e["digest"].as_str().unwrap_or("").to_owned(),
            )
        }));
        after = last;
    }
}

/// Three nodes started on loopback (the first bootstraps, the others join it), all ready,
/// with their ids and the ring they agree on.
pub struct Trio {
    pub nodes: Vec<NodeProc>,
    pub ids: Vec<chat_types::NodeId>,
    pub ring: chat_cluster::Ring,
}

pub async fn must_start_trio(root: &Path, env: &[(String, String)]) -> Trio {
    let mut first = NodeProc::new(root, "n1", None);
    first.env = env.to_vec();
    first.start();
    must_be_ready(&first, 1).await;
    let mut nodes = vec![first];
    for name in ["n2", "n3"] {
        let mut n = NodeProc::new(root, name, Some(nodes[0].peer.clone()));
        n.env = env.to_vec();
        n.start();
        nodes.push(n);
    }
    let mut ids = Vec::new();
    let mut epoch = 0;
    for n in &nodes {
        let r = must_be_ready(n, 3).await;
        ids.push(chat_types::NodeId(r["node_id"].as_u64().expect("node_id")));
        epoch = r["ring_epoch"].as_u64().expect("ring_epoch");
    }
    let ring = chat_cluster::Ring::new(
        ids.clone(),
        chat_types::RingEpoch(epoch),
        chat_cluster::ring::DEFAULT_VNODES,
    );
    Trio { nodes, ids, ring }
}

/// Registers users `<prefix>0`, `<prefix>1`, ... (password "correct horse") until the direct
/// conversation of user 0 with one of them is owned by `owner`; returns the user ids (user 0
/// first, the partner last) and that conversation.
pub async fn must_find_conversation_on(
    api: &HttpApi,
    ring: &chat_cluster::Ring,
    owner: chat_types::NodeId,
    prefix: &str,
) -> (Vec<chat_types::UserId>, chat_types::ConversationId) {
    let mut users = Vec::new();
    for i in 0..40 {
        let name = format!("{prefix}{i}");
        let id = api
            .register(&name, "correct horse")
            .await
            .expect("register")
            .user_id;
        users.push(id);
        if i > 0 {
            let conv = chat_types::ConversationId::direct(users[0], id);
            if ring.owner_of_conversation(&conv) == Some(owner) {
                return (users, conv);
            }
        }
    }
    panic!("no conversation owned by node {owner} among 40 users");
}

/// Sends until acknowledged, with the same client message id each time (as a client does
/// while ownership moves).
pub async fn must_send_retrying(
    conn: &chat_client::Connection,
    conv: chat_types::ConversationId,
    id: &str,
    body: &str,
) -> chat_client::Ack {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cmid = chat_types::ClientMsgId::new(id).expect("valid client message id");
        match conn.send(conv, cmid, body).await {
            Ok(ack) => return ack,
            Err(e) if Instant::now() < deadline && e.code().is_some_and(|c| c.retryable()) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("send {id}: {e:?}"),
        }
    }
}

/// Cuts `victim` off from the other nodes on the peer wire (both directions), or heals all
/// when `victim` is `None`.
pub async fn must_partition(nodes: &[NodeProc], victim: Option<usize>) {
    let client = reqwest_lite::Client;
    for (i, n) in nodes.iter().enumerate() {
        let cut: Vec<String> = match victim {
            None => Vec::new(),
            Some(v) if v == i => nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != v)
                .map(|(_, o)| o.peer.clone())
                .collect(),
            Some(v) => vec![nodes[v].peer.clone()],
        };
        let status = client
            .put_json(
                &format!("{}/v1/admin/faults", n.base_url()),
                ADMIN_TOKEN,
                &serde_json::json!({ "partition": cut }),
            )
            .await
            .expect("set faults");
        assert_eq!(status, 200, "faults on {}", n.name);
    }
}

/// Registers `name` (password "correct horse") and logs it in: its id and bearer token.
pub async fn must_sign_up(api: &HttpApi, name: &str) -> (chat_types::UserId, String) {
    let id = api
        .register(name, "correct horse")
        .await
        .expect("register")
        .user_id;
    let token = api.login(name, "correct horse").await.expect("login").token;
    (id, token)
}

/// The process id of `node` while its process runs (for SIGSTOP and SIGCONT in the fault
/// scenarios), `None` after kill9 or stop.
pub fn pid_of(node: &NodeProc) -> Option<u32> {
    node.child.as_ref().map(|c| c.id())
}
