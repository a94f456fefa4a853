//! The fault interface the scenarios are written against ([`Cluster`]), its process backend
//! ([`ProcCluster`]: `chat-node` processes on loopback), and [`Bench`]: a cluster together
//! with the client relays and what the scenarios know about it (node ids, who should be a
//! member), with the waits every scenario needs (serving, converged, leader).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_cluster::ring::{Ring, DEFAULT_VNODES};
use chat_types::{ConversationId, NodeId, RingEpoch};
use serde_json::{json, Value};

use crate::harness::{self, NodeProc, ADMIN_TOKEN};
use crate::links::Links;

/// What a fault scenario can do to a cluster. Nodes are numbered by slot, in the order they
/// were started; a slot keeps its addresses and its data across kill and start.
pub trait Cluster {
    /// The backend's name, for reports.
    fn backend(&self) -> &'static str;
    /// `host:port` of slot `i`'s HTTP listener, reachable from this process.
    fn http_addr(&self, i: usize) -> String;
    /// Whether slot `i`'s process exists (a paused one does).
    fn is_running(&self, i: usize) -> bool;
    fn is_paused(&self, i: usize) -> bool;
    /// If slot `i`'s process ended on its own, how (it then counts as not running and can be
    /// started again); `None` while it runs or after the test stopped it.
    fn exited(&mut self, i: usize) -> Option<String>;
    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self, i: usize);
    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self, i: usize);
    /// Starts slot `i` again, with its data and addresses.
    fn start(&mut self, i: usize);
    /// SIGSTOP.
    fn pause(&mut self, i: usize);
    /// SIGCONT.
    fn resume(&mut self, i: usize);
    /// Cuts node `i` off from every other node, both directions (clients still reach it).
    async fn partition(&mut self, i: usize);
    /// Ends every partition and slow link.
    async fn heal(&mut self);
    /// Delays every request node `i` sends to its peers by `delay`.
    async fn slow(&mut self, i: usize, delay: Duration);
    /// Starts a new node that joins the cluster; its slot.
    fn add_node(&mut self) -> usize;
    /// The end of slot `i`'s log.
    fn log_tail(&self, i: usize) -> String;
    /// Fills the file system holding slot `i`'s data directory to the last byte with a file
    /// of the test's; the filler's size. `Err` when the backend was started without a small
    /// disk per node (see [`SmallDisk`]).
    fn fill_disk(&mut self, i: usize) -> Result<u64, String>;
    /// Deletes the filler of [`Cluster::fill_disk`] (and grows the disk, see [`DiskSize`]).
    fn free_disk(&mut self, i: usize);
}

/// The sizes of a [`SmallDisk`]: what it starts with, and what it grows to when the filler
/// is deleted.
///
/// Why two: RocksDB reserves its write-ahead log 70 MiB at a time (1.1 times the 64 MiB
/// write buffer, `fallocate`), so on a disk that had room for that reservation a full disk is
/// only felt when the log is switched, minutes later at the load of these tests; and after a
/// "no space" error RocksDB resumes writing by itself only once 64 MiB are free. A disk that
/// starts smaller than the reservation (RocksDB ignores the failed `fallocate`) fails the
/// node's writes as soon as it is full; growing it when the filler goes, as an operator who
/// extends a volume does, leaves room for both.
#[derive(Clone, Copy, Debug)]
pub struct DiskSize {
    pub start: u64,
    pub freed: u64,
}

/// A small file system of its own for one node's data directory: a tmpfs mounted over the
/// (empty) directory, so that a test can fill it up. Unmounted on drop.
pub struct SmallDisk {
    path: std::path::PathBuf,
    size: DiskSize,
}

impl SmallDisk {
    /// The name of the file the test fills the disk with.
    const FILLER: &'static str = "chaos-disk-filler";

    /// Mounts a tmpfs of `size.start` over `path` (created when missing), owned by `owner`
    /// (uid, gid) if given; `Err` with the reason where mounting is not permitted.
    pub fn try_mount(
        path: &Path,
        size: DiskSize,
        owner: Option<(u32, u32)>,
    ) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut opts = format!("size={},mode=0755", size.start);
        if let Some((uid, gid)) = owner {
            opts.push_str(&format!(",uid={uid},gid={gid}"));
        }
        mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"], path)?;
        Ok(SmallDisk {
            path: path.to_owned(),
            size,
        })
    }

    /// Writes the filler until the file system has no byte left; its size.
    pub fn fill(&self) -> Result<u64, String> {
        use std::io::Write;
        let path = self.path.join(Self::FILLER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut written = 0u64;
        // Big blocks first, then smaller ones for what is left.
        for block in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0u8; block];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
        }
        Ok(written)
    }

    /// Deletes the filler and grows the file system to `size.freed`.
    pub fn free(&self) -> Result<(), String> {
        let filler = self.path.join(Self::FILLER);
        if filler.exists() {
            std::fs::remove_file(&filler).map_err(|e| format!("{}: {e}", filler.display()))?;
        }
        let opts = format!("remount,size={}", self.size.freed);
        mount(&["-o", &opts], &self.path)
    }
}

fn mount(args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `chat-node` processes on loopback (the test harness's [`NodeProc`]). Partitions and slow
/// links go through each node's fault switch `PUT /v1/admin/faults`; a restart clears it.
pub struct ProcCluster {
    root: std::path::PathBuf,
    nodes: Vec<NodeProc>,
    /// Each slot's small disk, if it has one (unmounted after `nodes` are dropped).
    disks: Vec<Option<SmallDisk>>,
    paused: Vec<bool>,
    cut: BTreeSet<usize>,
    delay: BTreeMap<usize, Duration>,
}

impl ProcCluster {
    /// Three nodes, formed and ready.
    pub async fn must_start(root: &Path) -> ProcCluster {
        Self::must_start_on(root, Vec::new()).await
    }

    /// Three nodes whose data directories are each on a small disk of their own (for
    /// [`Cluster::fill_disk`]); `Err` with the reason where mounting is not permitted.
    pub async fn try_start_with_disks(root: &Path, size: DiskSize) -> Result<ProcCluster, String> {
        let mut disks = Vec::new();
        // The harness names the nodes n1, n2, n3 and keeps their data in `root/<name>`.
        for name in ["n1", "n2", "n3"] {
            disks.push(Some(SmallDisk::try_mount(&root.join(name), size, None)?));
        }
        Ok(Self::must_start_on(root, disks).await)
    }

    async fn must_start_on(root: &Path, disks: Vec<Option<SmallDisk>>) -> ProcCluster {
        let trio = harness::must_start_trio(root, &[]).await;
        ProcCluster {
            root: root.to_owned(),
            paused: vec![false; trio.nodes.len()],
            nodes: trio.nodes,
            disks,
            cut: BTreeSet::new(),
            delay: BTreeMap::new(),
        }
    }

    fn pid(&self, i: usize) -> u32 {
        harness::pid_of(&self.nodes[i]).expect("a running node has a pid")
    }

    fn signal(&self, i: usize, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid(i).to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.nodes[i].name);
    }

    /// Pushes the fault state to every node that can take it.
    async fn apply(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if !self.is_running(i) || self.paused[i] {
                continue;
            }
            let cut: Vec<String> = if self.cut.contains(&i) {
                (0..self.nodes.len())
                    .filter(|&j| j != i)
                    .map(|j| self.nodes[j].peer.clone())
                    .collect()
            } else {
                self.cut
                    .iter()
                    .map(|&j| self.nodes[j].peer.clone())
                    .collect()
            };
            let delay = self.delay.get(&i).copied().unwrap_or_default();
            must_set_faults(&n.http, &cut, delay).await;
        }
    }
}

impl Cluster for ProcCluster {
    fn backend(&self) -> &'static str {
        "processes"
    }

    fn http_addr(&self, i: usize) -> String {
        self.nodes[i].http.clone()
    }

    fn is_running(&self, i: usize) -> bool {
        harness::pid_of(&self.nodes[i]).is_some()
    }

    fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    fn exited(&mut self, i: usize) -> Option<String> {
        self.nodes[i].exited()
    }

    fn kill(&mut self, i: usize) {
        if self.paused[i] {
            self.resume(i);
        }
        self.nodes[i].kill9();
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].start();
    }

    fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.paused[i] = true;
    }

    fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.paused[i] = false;
    }

    async fn partition(&mut self, i: usize) {
        self.cut.insert(i);
        self.apply().await;
    }

    async fn heal(&mut self) {
        self.cut.clear();
        self.delay.clear();
        self.apply().await;
    }

    async fn slow(&mut self, i: usize, delay: Duration) {
        self.delay.insert(i, delay);
        self.apply().await;
    }

    fn add_node(&mut self) -> usize {
        let name = format!("n{}", self.nodes.len() + 1);
        let join = self
            .nodes
            .iter()
            .find_map(|n| harness::pid_of(n).is_some().then(|| n.peer.clone()));
        let mut n = NodeProc::new(&self.root, &name, join);
        n.start();
        self.nodes.push(n);
        self.paused.push(false);
        self.nodes.len() - 1
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

/// `PUT /v1/admin/faults` on the node at `http` (`host:port`).
pub async fn must_set_faults(http: &str, cut: &[String], delay: Duration) {
    let body = json!({ "partition": cut, "delay_ms": delay.as_millis() as u64 });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_json(
            "PUT",
            &format!("http://{http}/v1/admin/faults"),
            Some(&body),
        )
        .await
        {
            Ok((200, _)) => return,
            r if Instant::now() > deadline => panic!("faults on {http}: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One HTTP request with the operator token and a JSON body; the status and JSON answer.
pub async fn http_json(
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value))
}

/// Slots the clients are told to avoid (down, paused, drained), as a load balancer's health
/// checks would; they still try every slot when the preferred ones fail.
#[derive(Default)]
pub struct Health {
    avoid: Mutex<BTreeSet<usize>>,
}

impl Health {
    pub fn avoid(&self, i: usize) {
        lock(&self.avoid).insert(i);
    }

    pub fn clear(&self, i: usize) {
        lock(&self.avoid).remove(&i);
    }

    /// Every slot of `0..slots` after `after`, round the ring, the healthy ones first.
    pub fn order(&self, after: usize, slots: usize) -> Vec<usize> {
        let avoid = lock(&self.avoid).clone();
        let ring: Vec<usize> = (1..=slots).map(|k| (after + k) % slots).collect();
        let mut order: Vec<usize> = ring
            .iter()
            .copied()
            .filter(|i| !avoid.contains(i))
            .collect();
        order.extend(ring.iter().copied().filter(|i| avoid.contains(i)));
        order
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cluster under test with its client relays and what the scenarios know of it.
pub struct Bench<C: Cluster> {
    pub cluster: C,
    pub links: Links,
    pub health: Arc<Health>,
    /// Node id of each slot that has ever served.
    pub ids: BTreeMap<usize, NodeId>,
    /// Slots that are members of the cluster when every fault has healed.
    pub members: BTreeSet<usize>,
}

/// What every node said in `/readyz`.
#[derive(Clone, Debug)]
pub struct Ready {
    pub ready: bool,
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub epoch: u64,
    pub members: BTreeSet<NodeId>,
}

impl Ready {
    fn of(v: &Value) -> Option<Ready> {
        let ids = |k: &str| -> BTreeSet<NodeId> {
            v[k].as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).map(NodeId).collect())
                .unwrap_or_default()
        };
        Some(Ready {
            ready: v["ready"].as_bool()?,
            node_id: NodeId(v["node_id"].as_u64()?),
            leader: v["leader"].as_u64().map(NodeId),
            epoch: v["ring_epoch"].as_u64()?,
            members: ids("members"),
        })
    }
}

impl<C: Cluster> Bench<C> {
    /// Wraps a formed cluster of `slots` nodes: a relay per node, every node's id.
    pub async fn must_wrap(cluster: C, slots: usize) -> Bench<C> {
        let mut bench = Bench {
            cluster,
            links: Links::new(),
            health: Arc::new(Health::default()),
            ids: BTreeMap::new(),
            members: (0..slots).collect(),
        };
        for i in 0..slots {
            let slot = bench.links.add(&bench.cluster.http_addr(i)).await;
            assert_eq!(slot, i);
            bench.must_serve(i).await;
        }
        bench
    }

    pub fn slots(&self) -> usize {
        self.links.slots()
    }

    /// Slots whose process runs and is not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.slots())
            .filter(|&i| self.cluster.is_running(i) && !self.cluster.is_paused(i))
            .collect()
    }

    pub fn slot_of(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().find(|(_, n)| **n == id).map(|(s, _)| *s)
    }

    pub async fn readyz(&self, i: usize) -> Option<Ready> {
        let url = format!("http://{}/readyz", self.cluster.http_addr(i));
        let (_, v) = http_json("GET", &url, None).await.ok()?;
        Ready::of(&v)
    }

    /// The end of every member's log, each under its slot.
    fn member_logs(&self) -> String {
        let logs: Vec<String> = self
            .members
            .iter()
            .map(|&i| format!("--- slot {i}:\n{}", self.cluster.log_tail(i)))
            .collect();
        logs.join("\n")
    }

    /// Waits until slot `i` is ready as a member of a cluster of the expected size.
    pub async fn must_serve(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(r) = self.readyz(i).await {
                self.ids.insert(i, r.node_id);
                if r.ready && r.members.len() == self.members.len() {
                    return started.elapsed();
                }
            }
            if Instant::now() > deadline {
                // The cause is as often on another node (a leader that never added it).
                panic!(
                    "slot {i} not serving with {} members within 120 s; logs:\n{}",
                    self.members.len(),
                    self.member_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Raft leader's slot as some live node sees it.
    pub async fn leader(&self) -> Option<usize> {
        for i in self.live() {
            if let Some(r) = self.readyz(i).await {
                if let Some(l) = r.leader {
                    return self.slot_of(l);
                }
            }
        }
        None
    }

    /// The ring as a live node sees it.
    pub async fn must_ring(&self) -> Ring {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for i in self.live() {
                if let Some(r) = self.readyz(i).await {
                    if r.ready {
                        return Ring::new(r.members, RingEpoch(r.epoch), DEFAULT_VNODES);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no live node is ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The slot owning `conv` in `ring`.
    pub fn owner(&self, ring: &Ring, conv: &ConversationId) -> Option<usize> {
        ring.owner_of_conversation(conv)
            .and_then(|id| self.slot_of(id))
    }

    /// Waits until every member slot is ready and they agree on one leader (a member), one
    /// ring epoch and the expected members; how long that took.
    pub async fn must_converge(&self) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let expected: BTreeSet<NodeId> = self
            .members
            .iter()
            .filter_map(|s| self.ids.get(s).copied())
            .collect();
        loop {
            let mut views = Vec::new();
            for &i in &self.members {
                views.push(self.readyz(i).await);
            }
            let agreed = views.iter().all(|v| {
                v.as_ref().is_some_and(|r| {
                    r.ready
                        && r.members == expected
                        && r.leader.is_some_and(|l| expected.contains(&l))
                        && Some(r.leader) == views[0].as_ref().map(|f| f.leader)
                        && Some(r.epoch) == views[0].as_ref().map(|f| f.epoch)
                })
            });
            if agreed {
                return started.elapsed();
            }
            if Instant::now() > deadline {
                panic!(
                    "the cluster did not converge within 120 s: {views:?}\n{}",
                    self.member_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.health.avoid(i);
        self.cluster.kill(i);
    }

    pub fn stop(&mut self, i: usize) {
        self.health.avoid(i);
        self.cluster.stop(i);
    }

    /// Starts slot `i` again and waits until it serves; how long that took.
    pub async fn start(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        self.cluster.start(i);
        self.must_serve(i).await;
        self.health.clear(i);
        started.elapsed()
    }

    pub fn pause(&mut self, i: usize) {
        self.health.avoid(i);
        self.cluster.pause(i);
    }

    pub fn resume(&mut self, i: usize) {
        self.cluster.resume(i);
        self.health.clear(i);
    }

    /// Starts a new node, waits until the cluster has it as a member; its slot.
    pub async fn add_node(&mut self) -> usize {
        let i = self.cluster.add_node();
        let slot = self.links.add(&self.cluster.http_addr(i)).await;
        assert_eq!(slot, i);
        self.members.insert(i);
        self.must_serve(i).await;
        i
    }

    /// Drains slot `i` (it leaves the cluster, its clients get 1001), then stops it.
    pub async fn must_drain(&mut self, i: usize) {
        let url = format!("http://{}/v1/admin/drain", self.cluster.http_addr(i));
        let (status, body) = http_json("POST", &url, Some(&json!({})))
            .await
            .expect("drain request");
        assert_eq!(status, 200, "drain slot {i}: {body}");
        self.health.avoid(i);
        self.members.remove(&i);
        self.cluster.stop(i);
    }
}
