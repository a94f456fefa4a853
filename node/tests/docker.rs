//! The container image: `scripts/docker-image` packs the debug `chat-node` into an image, three
//! containers on a private Docker network form a cluster by container name, a user registered
//! through one node logs in through another, and the cluster keeps serving when the leader's
//! container is killed. Skipped (passes) where no Docker engine answers.

mod harness;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chat_client::HttpApi;
use harness::{reqwest_lite, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(30);

fn docker(args: &[&str]) -> std::io::Result<Output> {
    Command::new("docker").args(args).output()
}

/// Runs `docker <args>` and returns its trimmed stdout, panicking when it fails.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args).expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything the test created in Docker, removed when it ends, also on failure.
#[derive(Default)]
struct Resources {
    image: Option<String>,
    network: Option<String>,
    containers: Vec<String>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                if let Ok(out) = docker(&["logs", "--tail", "40", c]) {
                    eprintln!(
                        "--- docker logs {c}:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        if let Some(n) = &self.network {
            let _ = docker(&["network", "rm", n]);
        }
        if let Some(i) = &self.image {
            let _ = docker(&["rmi", "--force", i]);
        }
    }
}

/// One node's container and its HTTP port published on loopback.
struct Node {
    name: String,
    http: String,
}

impl Node {
    fn api(&self) -> HttpApi {
        HttpApi::new(&format!("http://{}", self.http)).expect("api")
    }
}

fn start_node(res: &mut Resources, image: &str, name: &str, join: Option<&str>) -> Node {
    let network = res.network.clone().expect("network created first");
    res.containers.push(name.to_owned());
    let token = format!("CHAT_ADMIN_TOKEN={ADMIN_TOKEN}");
    let http = format!("{name}:8080");
    let peer = format!("{name}:9080");
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        &network,
        "--publish",
        "127.0.0.1::8080",
        "--env",
        &token,
        "--env",
        "CHAT_LOG=info,openraft=warn",
        image,
        "--advertise-http-addr",
        &http,
        "--advertise-peer-addr",
        &peer,
    ];
    if let Some(j) = join {
        args.extend(["--join", j]);
    }
    docker_ok(&args);
    let port = docker_ok(&["port", name, "8080/tcp"]);
    let http = port
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("{name}: no loopback port in {port:?}"))
        .to_owned();
    Node {
        name: name.to_owned(),
        http,
    }
}

/// Polls `/readyz` until the node is ready with a ring of `members` members, `voters` Raft
/// voters and a leader other than `not_leader`.
async fn wait_ready(
    node: &Node,
    members: std::ops::RangeInclusive<usize>,
    voters: usize,
    not_leader: Option<u64>,
) -> serde_json::Value {
    let url = format!("http://{}/readyz", node.http);
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match reqwest_lite::Client.get_json(&url).await {
            Ok(v) => {
                let count = |k: &str| v[k].as_array().map(|m| m.len());
                if v["ready"] == true
                    && count("members").is_some_and(|m| members.contains(&m))
                    && count("voters") == Some(voters)
                    && v["leader"].as_u64().is_some()
                    && v["leader"].as_u64() != not_leader
                {
                    return v;
                }
                v.to_string()
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{} not ready with {members:?} ring members and {voters} voters (leader not \
             {not_leader:?}) within {WAIT:?}; last /readyz: {last}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_a_three_node_cluster_that_survives_a_killed_container() {
    if !docker(&["info"]).is_ok_and(|o| o.status.success()) {
        println!("SKIP: no docker engine");
        return;
    }
    let started = Instant::now();
    let suffix = unique_suffix();
    let mut res = Resources::default();

    // The image, from the debug binary this test was built with.
    let image = format!("chat-node-test:{suffix}");
    res.image = Some(image.clone());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/docker-image");
    let out = Command::new(script)
        .arg(env!("CARGO_BIN_EXE_chat-node"))
        .arg(&image)
        .output()
        .expect("run scripts/docker-image");
    assert!(
        out.status.success(),
        "scripts/docker-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), image);
    let user = docker_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert!(
        !user.is_empty() && !user.starts_with('0') && !user.starts_with("root"),
        "the image runs as a non-root user, got {user:?}"
    );

    let network = format!("chat-test-{suffix}");
    docker_ok(&["network", "create", &network]);
    res.network = Some(network.clone());

    // n1 bootstraps; n2 and n3 join it by container name, which Docker's DNS resolves.
    let names: Vec<String> = (1..=3)
        .map(|i| format!("chat-test-{suffix}-n{i}"))
        .collect();
    let n1 = start_node(&mut res, &image, &names[0], None);
    wait_ready(&n1, 1..=1, 1, None).await;
    let join = format!("{}:9080", names[0]);
    let n2 = start_node(&mut res, &image, &names[1], Some(&join));
    let n3 = start_node(&mut res, &image, &names[2], Some(&join));
    let nodes = [n1, n2, n3];
    let mut ids = Vec::new();
    let mut leader = None;
    for n in &nodes {
        let ready = wait_ready(n, 3..=3, 3, None).await;
        ids.push(ready["node_id"].as_u64().expect("node_id in /readyz"));
        leader = ready["leader"].as_u64();
    }
    let leader = leader.expect("a leader");

    // Accounts are cluster-wide: register through n1, log in through n2.
    let reg = nodes[0]
        .api()
        .register("docker-alice", "correct horse")
        .await
        .expect("register through n1");
    let login = nodes[1]
        .api()
        .login("docker-alice", "correct horse")
        .await
        .expect("login through n2");
    assert_eq!(login.user_id, reg.user_id);
    assert!(!login.token.is_empty());

    // Kill the leader's container: the other two elect a new leader among themselves over
    // the container names they advertise, and keep serving.
    let victim = ids
        .iter()
        .position(|&id| id == leader)
        .expect("the leader is one of the three");
    docker_ok(&["kill", &nodes[victim].name]);
    let survivors: Vec<&Node> = (0..3).filter(|&i| i != victim).map(|i| &nodes[i]).collect();
    for n in &survivors {
        // The killed node stays a voter; the new leader may already have marked it down,
        // which takes it out of the ring (its share moves to the survivors).
        let ready = wait_ready(n, 2..=3, 3, Some(leader)).await;
        assert_ne!(ready["node_id"].as_u64(), Some(leader));
    }
    let again = survivors[0]
        .api()
        .login("docker-alice", "correct horse")
        .await
        .expect("login through a survivor");
    assert_eq!(again.user_id, reg.user_id);

    println!(
        "docker cluster test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
