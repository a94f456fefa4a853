//! The Docker backend: each `chat-node` runs in a container of an image built from the debug
//! binary by `scripts/docker-image` (nothing is pulled), as in `node/tests/docker.rs`.
//!
//! Networks: the nodes talk to each other over one private network the test creates (the
//! "peer" network; they advertise and join by container name, which Docker's DNS resolves on
//! it), and each container also sits alone on a small network of its own where its HTTP port
//! is published on `127.0.0.1:<fixed port>` (fixed, so that it survives `docker stop` and
//! `docker start`). A partition is `docker network disconnect` of the node from the peer
//! network, and `connect` again on heal: the cut-off node can no longer resolve the other
//! names (its dials fail at once) and packets on connections already open are dropped (they
//! hang, as with iptables), while its published port, on its own network, keeps carrying
//! client traffic, open WebSockets included. A node on one shared client network would not
//! do: Docker's DNS would resolve the other nodes' names to their addresses there, and the
//! peer wire would simply move over.
//!
//! Each node's `/data` is a bind mount of a directory under the test's scratch directory, so
//! its data survives stop and start, and, for disk-full scenarios, that directory is a small
//! tmpfs the test mounts (and fills from the host). Slow links use the nodes' fault switch.
//! Everything created (containers, networks, image, mounts) is removed on drop, also after a
//! panic; the test says SKIPPED where no Docker engine answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cluster::{must_set_faults, Cluster, DiskSize, SmallDisk};
use crate::harness::{free_port, ADMIN_TOKEN};

/// The uid and gid the image runs as (`scripts/docker-image`).
const IMAGE_UID: u32 = 10001;

fn docker(args: &[&str]) -> Result<Output, String> {
    Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("run docker {args:?}: {e}"))
}

/// `docker <args>`: its trimmed stdout, or its stderr as the error.
fn run(args: &[&str]) -> Result<String, String> {
    let out = docker(args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must_run(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a Docker engine answers here.
pub fn engine_answers() -> Result<(), String> {
    run(&["info", "--format", "{{.ServerVersion}}"]).map(|_| ())
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    Paused,
    Stopped,
}

struct DockerNode {
    /// The container's name, which is also its host name on the peer network.
    name: String,
    /// `127.0.0.1:<port>`.
    http: String,
    state: State,
    /// Disconnected from the peer network, and its address there before.
    cut: Option<String>,
}

/// Nodes in Docker containers; see the module comment.
pub struct DockerCluster {
    suffix: String,
    image: String,
    peer_network: String,
    root: PathBuf,
    nodes: Vec<DockerNode>,
    /// Whether each slot's `/data` is a small disk of its own.
    disk: Option<DiskSize>,
    /// Every container, network and the image this cluster created, for the cleanup.
    containers: Vec<String>,
    networks: Vec<String>,
    image_built: bool,
    /// Small disks, unmounted after the containers are removed.
    disks: Vec<Option<SmallDisk>>,
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("----- {} log (tail) -----\n{}", n.name, self.tail(&n.name));
            }
        }
        if std::env::var("CHAOS_KEEP").is_ok_and(|v| v == "1") {
            // The containers go, their logs stay with the data (as the processes' do).
            for n in &self.nodes {
                if let Ok(out) = docker(&["logs", &n.name]) {
                    let mut text = out.stdout;
                    text.extend_from_slice(&out.stderr);
                    let _ = std::fs::write(self.root.join(format!("{}.log", n.name)), text);
                }
            }
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(self.containers.iter().map(String::as_str));
            if let Err(e) = run(&args) {
                eprintln!("cleanup: {e}");
            }
        }
        for n in &self.networks {
            if let Err(e) = run(&["network", "rm", n]) {
                eprintln!("cleanup: {e}");
            }
        }
        if self.image_built {
            if let Err(e) = run(&["rmi", "--force", &self.image]) {
                eprintln!("cleanup: {e}");
            }
        }
        self.disks.clear();
    }
}

impl DockerCluster {
    /// Builds the image, creates the networks and starts three formed nodes; `Err` with the
    /// reason where no Docker engine answers (the caller skips). With `disk`, each node's
    /// `/data` is a small disk of its own (for [`Cluster::fill_disk`]); `Err` also where
    /// mounting is not permitted.
    pub async fn try_start(root: &Path, disk: Option<DiskSize>) -> Result<DockerCluster, String> {
        engine_answers().map_err(|e| format!("no Docker engine answers: {e}"))?;
        let suffix = unique_suffix();
        let mut c = DockerCluster {
            image: format!("chat-node-chaos:{suffix}"),
            peer_network: format!("chaos-{suffix}"),
            suffix,
            root: root.to_owned(),
            nodes: Vec::new(),
            disk,
            containers: Vec::new(),
            networks: Vec::new(),
            image_built: false,
            disks: Vec::new(),
        };
        let started = Instant::now();
        c.must_build_image();
        eprintln!(
            "docker: image {} built in {:.1} s",
            c.image,
            started.elapsed().as_secs_f64()
        );
        must_run(&["network", "create", &c.peer_network]);
        c.networks.push(c.peer_network.clone());
        for i in 0..3 {
            c.create_slot()?;
            c.start(i);
            if i == 0 {
                must_ready(&c.nodes[0].http, 1, &c, 0).await;
            }
        }
        for i in 0..3 {
            must_ready(&c.nodes[i].http, 3, &c, i).await;
        }
        Ok(c)
    }

    /// The image, from the debug `chat-node` this test was built with.
    fn must_build_image(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/docker-image");
        self.image_built = true;
        let out = Command::new(script)
            .arg(env!("CARGO_BIN_EXE_chat-node"))
            .arg(&self.image)
            .output()
            .expect("run scripts/docker-image");
        assert!(
            out.status.success(),
            "scripts/docker-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), self.image);
    }

    /// Creates (does not start) the container of a new slot, on its own network and the peer
    /// network; it joins the first running node, if any.
    fn create_slot(&mut self) -> Result<usize, String> {
        let i = self.nodes.len();
        let name = format!("chaos-{}-n{}", self.suffix, i + 1);
        let own_network = format!("{name}-net");
        must_run(&["network", "create", &own_network]);
        self.networks.push(own_network.clone());

        let data = self.root.join(format!("n{}", i + 1));
        match self.disk {
            Some(size) => {
                let d = SmallDisk::try_mount(&data, size, Some((IMAGE_UID, IMAGE_UID)))?;
                self.disks.push(Some(d));
            }
            None => {
                std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
                std::os::unix::fs::chown(&data, Some(IMAGE_UID), Some(IMAGE_UID))
                    .map_err(|e| format!("chown {}: {e}", data.display()))?;
                self.disks.push(None);
            }
        }

        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8080");
        let volume = format!("{}:/data", data.display());
        let token = format!("CHAT_ADMIN_TOKEN={ADMIN_TOKEN}");
        let log = format!(
            "CHAT_LOG={}",
            std::env::var("TEST_CHAT_LOG").unwrap_or_else(|_| "info,openraft=warn".into())
        );
        let http = format!("{name}:8080");
        let peer = format!("{name}:9080");
        let join = self
            .nodes
            .iter()
            .find(|n| n.state == State::Running)
            .map(|n| format!("{}:9080", n.name));
        let mut args = vec![
            "create",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            &own_network,
            "--publish",
            &publish,
            "--volume",
            &volume,
            "--env",
            &token,
            "--env",
            &log,
            &self.image,
            "--advertise-http-addr",
            &http,
            "--advertise-peer-addr",
            &peer,
        ];
        if let Some(j) = &join {
            args.extend(["--join", j]);
        }
        self.containers.push(name.clone());
        must_run(&args);
        must_run(&["network", "connect", &self.peer_network, &name]);
        self.nodes.push(DockerNode {
            name,
            http: format!("127.0.0.1:{port}"),
            state: State::Stopped,
            cut: None,
        });
        Ok(i)
    }

    /// The last 150 lines of the container's log.
    fn tail(&self, name: &str) -> String {
        match docker(&["logs", name]) {
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(150)..].join("\n")
            }
            Err(e) => e,
        }
    }

    /// The container's address on the peer network (empty when it is not on it).
    fn peer_ip(&self, i: usize) -> String {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.peer_network
        );
        run(&["inspect", "--format", &format, &self.nodes[i].name]).unwrap_or_default()
    }
}

/// Polls `/readyz` of `http` until ready with `members` members.
async fn must_ready(http: &str, members: usize, c: &DockerCluster, i: usize) {
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
            c.nodes[i].name,
            c.log_tail(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster for DockerCluster {
    fn backend(&self) -> &'static str {
        "docker"
    }

    fn http_addr(&self, i: usize) -> String {
        self.nodes[i].http.clone()
    }

    fn is_running(&self, i: usize) -> bool {
        self.nodes[i].state != State::Stopped
    }

    fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].state == State::Paused
    }

    fn exited(&mut self, i: usize) -> Option<String> {
        if self.nodes[i].state != State::Running {
            return None;
        }
        let name = self.nodes[i].name.clone();
        let state = run(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            &name,
        ])
        .ok()?;
        let code = state.strip_prefix("false ")?;
        self.nodes[i].state = State::Stopped;
        Some(format!("exit code {code}"))
    }

    fn kill(&mut self, i: usize) {
        if self.nodes[i].state == State::Paused {
            self.resume(i);
        }
        if self.nodes[i].state == State::Running {
            must_run(&["kill", "--signal", "KILL", &self.nodes[i].name]);
            // `docker kill` returns once the signal is sent: wait until the container is
            // down, so that a `start` right after does not find it still running.
            must_run(&["wait", &self.nodes[i].name]);
        }
        self.nodes[i].state = State::Stopped;
    }

    fn stop(&mut self, i: usize) {
        if self.nodes[i].state == State::Paused {
            self.resume(i);
        }
        let name = self.nodes[i].name.clone();
        if self.nodes[i].state == State::Running {
            must_run(&["stop", "--time", "15", &name]);
            let code = must_run(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
            assert_eq!(
                code,
                "0",
                "{name} did not exit cleanly on SIGTERM; log:\n{}",
                self.tail(&name)
            );
        }
        self.nodes[i].state = State::Stopped;
    }

    fn start(&mut self, i: usize) {
        must_run(&["start", &self.nodes[i].name]);
        self.nodes[i].state = State::Running;
    }

    fn pause(&mut self, i: usize) {
        must_run(&["pause", &self.nodes[i].name]);
        self.nodes[i].state = State::Paused;
    }

    fn resume(&mut self, i: usize) {
        must_run(&["unpause", &self.nodes[i].name]);
        self.nodes[i].state = State::Running;
    }

    async fn partition(&mut self, i: usize) {
        if self.nodes[i].cut.is_none() {
            let ip = self.peer_ip(i);
            must_run(&[
                "network",
                "disconnect",
                &self.peer_network,
                &self.nodes[i].name,
            ]);
            self.nodes[i].cut = Some(ip);
        }
    }

    async fn heal(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(before) = self.nodes[i].cut.take() {
                must_run(&[
                    "network",
                    "connect",
                    &self.peer_network,
                    &self.nodes[i].name,
                ]);
                let after = self.peer_ip(i);
                if !before.is_empty() && before != after {
                    eprintln!(
                        "note: {} came back on the peer network at {after} (was {before})",
                        self.nodes[i].name
                    );
                }
            }
            if self.nodes[i].state == State::Running {
                must_set_faults(&self.nodes[i].http, &[], Duration::ZERO).await;
            }
        }
    }

    async fn slow(&mut self, i: usize, delay: Duration) {
        must_set_faults(&self.nodes[i].http, &[], delay).await;
    }

    fn add_node(&mut self) -> usize {
        let i = self
            .create_slot()
            .unwrap_or_else(|e| panic!("a container for a new node: {e}"));
        self.start(i);
        i
    }

    fn log_tail(&self, i: usize) -> String {
        self.tail(&self.nodes[i].name)
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
