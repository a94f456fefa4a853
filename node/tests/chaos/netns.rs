//! The network-namespace backend: each `chat-node` runs in its own `ip netns` with a veth pair
//! into a bridge this test creates (a private 10.x.y.0/24; the bridge itself is .1, so this
//! process reaches every node through it). A partition is real packet loss: iptables DROP
//! rules inside the cut-off node's namespace for the other nodes' addresses, so its peer
//! connections hang rather than fail. Slow links still come from the nodes' own fault switch
//! (the kernels here have no `netem`). Everything is removed on drop, also after a panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{must_set_faults, Cluster, DiskSize, SmallDisk};
use crate::harness::ADMIN_TOKEN;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must_run(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

struct NsNode {
    name: String,
    ns: String,
    ip: String,
    data_dir: PathBuf,
    join: Option<String>,
    child: Option<Child>,
    paused: bool,
}

impl NsNode {
    fn http(&self) -> String {
        format!("{}:8080", self.ip)
    }

    fn peer(&self) -> String {
        format!("{}:9080", self.ip)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open node log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_chat-node")])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--http-addr", &self.http(), "--peer-addr", &self.peer()])
            .env(
                "CHAT_LOG",
                std::env::var("TEST_CHAT_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env("CHAT_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        // `ip netns exec` execs the program: the child is the node itself.
        self.child = Some(cmd.spawn().expect("spawn chat-node in its namespace"));
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        must_run(&["kill", sig, &pid.to_string()]);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    }
}

/// Nodes in network namespaces on a bridge; see the module comment.
pub struct NetnsCluster {
    tag: String,
    bridge: String,
    net: String,
    root: PathBuf,
    nodes: Vec<NsNode>,
    forward_rule: bool,
    /// Each slot's small disk, if it has one (unmounted after the nodes are killed).
    disks: Vec<Option<SmallDisk>>,
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if std::thread::panicking() {
                eprintln!("----- {} log (tail) -----\n{}", n.name, n.log_tail());
            }
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = run(&["ip", "netns", "del", &n.ns]);
        }
        if self.forward_rule {
            let _ = run(&self.forward_args("-D"));
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl NetnsCluster {
    /// Creates the bridge and three namespaces and starts a node in each; `Err` with the
    /// reason when this machine does not allow network namespaces (the caller skips).
    pub async fn try_start(root: &Path) -> Result<NetnsCluster, String> {
        Self::try_start_on(root, None).await
    }

    /// As [`NetnsCluster::try_start`], each node's data directory on a small disk of its own
    /// (for [`Cluster::fill_disk`]); `Err` also where mounting is not permitted.
    pub async fn try_start_with_disks(root: &Path, size: DiskSize) -> Result<NetnsCluster, String> {
        Self::try_start_on(root, Some(size)).await
    }

    async fn try_start_on(root: &Path, disk: Option<DiskSize>) -> Result<NetnsCluster, String> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let net = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250);
        let probe = format!("chaos{tag}probe");
        run(&["ip", "netns", "add", &probe]).map_err(|e| format!("ip netns not permitted: {e}"))?;
        let _ = run(&["ip", "netns", "del", &probe]);
        let mut c = NetnsCluster {
            bridge: format!("chb{tag}"),
            tag,
            net,
            root: root.to_owned(),
            nodes: Vec::new(),
            forward_rule: false,
            disks: Vec::new(),
        };
        run(&["ip", "link", "add", &c.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}.1/24", c.net),
            "dev",
            &c.bridge,
        ])?;
        run(&["ip", "link", "set", &c.bridge, "up"])?;
        // Bridged frames go through the host's FORWARD chain (br_netfilter), whose policy
        // may be DROP (Docker sets it): let this bridge's traffic through while we run.
        c.forward_rule = run(&c.forward_args("-I")).is_ok();
        for i in 0..3 {
            c.add_slot()?;
            if let Some(size) = disk {
                let d = SmallDisk::try_mount(&c.nodes[i].data_dir, size, None)?;
                c.disks.push(Some(d));
            }
            if i == 0 {
                c.nodes[0].start();
                must_ready(&c.nodes[0].http(), 1, &c.nodes[0]).await;
            }
        }
        for i in 1..3 {
            c.nodes[i].start();
        }
        for n in &c.nodes {
            must_ready(&n.http(), 3, n).await;
        }
        Ok(c)
    }

    fn forward_args<'a>(&'a self, op: &'a str) -> Vec<&'a str> {
        vec![
            "iptables",
            op,
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]
    }

    /// A namespace with a veth into the bridge, and the node that will live in it.
    fn add_slot(&mut self) -> Result<usize, String> {
        let i = self.nodes.len();
        let ns = format!("chaos{}n{i}", self.tag);
        let host = format!("chv{}n{i}", self.tag);
        let inside = format!("chp{}n{i}", self.tag);
        let ip = format!("{}.{}", self.net, 10 + i);
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &inside,
        ])?;
        run(&["ip", "link", "set", &inside, "netns", &ns])?;
        run(&["ip", "link", "set", &host, "master", &self.bridge])?;
        run(&["ip", "link", "set", &host, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &inside,
        ])?;
        run(&["ip", "-n", &ns, "link", "set", &inside, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let join = self.nodes.first().map(|n| n.peer());
        let name = format!("ns{}", i + 1);
        self.nodes.push(NsNode {
            data_dir: self.root.join(&name),
            name,
            ns,
            ip,
            join,
            child: None,
            paused: false,
        });
        Ok(i)
    }

    fn iptables(&self, i: usize, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.nodes[i].ns, "iptables"];
        all.extend_from_slice(args);
        must_run(&all);
    }
}

/// Polls `/readyz` of `http` until ready with `members` members.
async fn must_ready(http: &str, members: usize, node: &NsNode) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let url = format!("http://{http}/readyz");
        if let Ok((200, v)) = crate::cluster::http_json("GET", &url, None).await {
            if v["members"].as_array().map(|m| m.len()) == Some(members) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready with {members} members; log:\n{}",
            node.name,
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster for NetnsCluster {
    fn backend(&self) -> &'static str {
        "network namespaces"
    }

    fn http_addr(&self, i: usize) -> String {
        self.nodes[i].http()
    }

    fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    fn exited(&mut self, i: usize) -> Option<String> {
        let status = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        self.nodes[i].paused = false;
        Some(status.to_string())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    fn stop(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.paused {
            n.signal("-CONT");
            n.paused = false;
        }
        if let Some(mut child) = n.child.take() {
            must_run(&["kill", "-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(status.success(), "{} exited with {status}", n.name);
                        return;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        panic!("{} did not stop within 15 s of SIGTERM", n.name);
                    }
                }
            }
        }
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].start();
    }

    fn pause(&mut self, i: usize) {
        self.nodes[i].signal("-STOP");
        self.nodes[i].paused = true;
    }

    fn resume(&mut self, i: usize) {
        self.nodes[i].signal("-CONT");
        self.nodes[i].paused = false;
    }

    async fn partition(&mut self, i: usize) {
        let others: Vec<String> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.nodes[j].ip.clone())
            .collect();
        for ip in others {
            self.iptables(i, &["-A", "INPUT", "-s", &ip, "-j", "DROP"]);
            self.iptables(i, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"]);
        }
    }

    async fn heal(&mut self) {
        for i in 0..self.nodes.len() {
            self.iptables(i, &["-F"]);
            if self.is_running(i) && !self.nodes[i].paused {
                must_set_faults(&self.nodes[i].http(), &[], Duration::ZERO).await;
            }
        }
    }

    async fn slow(&mut self, i: usize, delay: Duration) {
        must_set_faults(&self.nodes[i].http(), &[], delay).await;
    }

    fn add_node(&mut self) -> usize {
        let i = self.add_slot().expect("a namespace for a new node");
        self.nodes[i].start();
        i
    }

    fn log_tail(&self, i: usize) -> String {
        self.nodes[i].log_tail()
    }

    fn fill_disk(&mut self, i: usize) -> Result<u64, String> {
        match self.disks.get(i) {
            Some(Some(d)) => d.fill(),
            _ => Err(format!("slot {i} has no small disk of its own")),
        }
    }

    fn free_disk(&mut self, i: usize) {
        if let Some(Some(d)) = self.disks.get(i) {
            d.free()
                .unwrap_or_else(|e| panic!("freeing slot {i}'s disk: {e}"));
        }
    }
}
