//! Smoke test: one real `chat-node` process on loopback, then `dm-pingpong` and `dm-flood` at a
//! small scale for about 3 s each and a 2 s `group-fanout` to 20 members, through the library
//! API. The checker must find nothing, and messages must have been acknowledged and pushed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_loadtest::{run, Report, RunConfig, Scenario};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `<target>/<profile>/chat-node`, built if missing. Integration tests run from
/// `<target>/<profile>/deps/`, and `CARGO_BIN_EXE_*` only names binaries of this package.
fn must_find_node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from <target>/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("chat-node");
    if bin.exists() {
        return bin;
    }
    let target_dir = profile_dir.parent().expect("a target directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bin", "chat-node"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --bin chat-node");
    assert!(status.success(), "cargo build --bin chat-node failed");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// A node process, killed when dropped.
struct Node {
    child: Child,
    http: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn must_start() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("node.log");
        let out = std::fs::File::create(&log).expect("node log");
        let child = Command::new(must_find_node_binary())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--http-addr")
            .arg(&http)
            .arg("--peer-addr")
            .arg(&peer)
            .env("CHAT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("spawn chat-node");
        Node {
            child,
            http,
            log,
            _dir: dir,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/readyz` until it says `"ready": true`, for at most 60 s.
    async fn must_be_ready(&self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let url = format!("{}/readyz", self.base_url());
            if let Ok(resp) = client.get(url).send().await {
                if let Ok(text) = resp.text().await {
                    let ready = serde_json::from_str::<serde_json::Value>(&text)
                        .is_ok_and(|v| v["ready"] == true);
                    if ready {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chat-node not ready within 60 s; log:\n{}", self.log_tail());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn must_load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::from_file(&path).expect("a shipped scenario")
}

async fn must_run(node: &Node, scenario: Scenario) -> Report {
    let mut config = RunConfig::new(scenario, vec![node.base_url()]);
    config.server_pids = vec![node.child.id()];
    config.progress = false;
    let report = tokio::time::timeout(Duration::from_secs(60), run(config))
        .await
        .expect("the run ends by itself")
        .unwrap_or_else(|e| panic!("run failed: {e:#}\nnode log:\n{}", node.log_tail()));
    println!("{}", report.to_text());
    report
}

fn must_pass(report: &Report) {
    must_keep_the_contract(report);
    assert_eq!(
        report.check.history_messages, report.check.acked,
        "every acknowledged message (and nothing else) is read back"
    );
}

fn must_keep_the_contract(report: &Report) {
    assert!(
        report.ok(),
        "{}\nfirst violations: {:#?}",
        report.check.verdict_line(),
        &report.check.violations[..report.check.violations.len().min(10)]
    );
    assert!(report.check.acked > 0, "nothing was acknowledged");
    assert!(report.check.deliveries > 0, "nothing was pushed");
    assert!(report.latency.contains_key("send_ack"));
    assert!(report.latency.contains_key("send_delivery"));
    assert!(report.throughput.acks_per_sec > 0.0);
    assert!(report.server.is_some(), "the server pid was sampled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_and_flood_against_one_node_keep_the_contract() {
    let node = Node::must_start();
    node.must_be_ready().await;

    let mut pingpong = must_load("dm-pingpong");
    pingpong.users = 8;
    pingpong.rate = 80.0; // 20 per pair per second
    pingpong.warmup_secs = 0.5;
    pingpong.duration_secs = 2.5;
    let report = must_run(&node, pingpong).await;
    must_pass(&report);

    let mut flood = must_load("dm-flood");
    flood.users = 8;
    flood.window = Some(8);
    flood.warmup_secs = 0.5;
    flood.duration_secs = 2.5;
    let report = must_run(&node, flood).await;
    must_pass(&report);
    assert!(report
        .appended
        .is_some_and(|a| a.delta >= report.check.acked as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fanout_against_one_node_keeps_the_contract() {
    let node = Node::must_start();
    node.must_be_ready().await;

    let mut fanout = must_load("group-fanout-100");
    fanout.users = 20;
    fanout.senders = Some(4);
    fanout.rate = 40.0;
    fanout.window = Some(8);
    fanout.warmup_secs = 0.5;
    fanout.duration_secs = 1.5;
    let report = must_run(&node, fanout).await;
    must_keep_the_contract(&report);
    // The group's log holds the creation note and every acknowledged message; each message
    // reached the 19 other members, and its last delivery was measured.
    assert_eq!(report.check.history_messages, report.check.acked + 1);
    assert!(report.latency.contains_key("send_last_delivery"));
    assert_eq!(report.throughput.deliveries, report.check.acked * 19);
    // Falling behind the schedule on a loaded machine is not a contract failure.
    let errors: Vec<_> = report
        .errors
        .keys()
        .filter(|k| *k != "unsent_behind_schedule")
        .collect();
    assert!(errors.is_empty(), "{:?}", report.errors);
}
