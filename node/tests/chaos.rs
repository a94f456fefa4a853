//! Fault scenarios under a steady load with the history checker on (docs/reliability.md,
//! "Fault scenarios under load").
//!
//! The scenarios are written against a small fault interface (`cluster::Cluster`: kill,
//! stop, start, pause, resume, partition, heal, slow link, add a node, fill and free a disk)
//! with three backends: `chat-node` processes on loopback (`cluster::ProcCluster`), processes
//! in network namespaces on a bridge with iptables partitions (`netns::NetnsCluster`), and
//! containers on a Docker network the test creates (`docker::DockerCluster`). Client-link faults
//! (cutting every client connection, dropping acks) come from a relay every client goes
//! through (`links`). Each scenario runs a fresh load of direct-message pairs spread over the
//! nodes (`load`), injects its faults, heals, and then requires: nothing acknowledged lost, no
//! duplicate, no order violation, no missed push, the same history through every node, one
//! leader and one ring again, and every conversation served again. Timings are measured and
//! printed, never asserted.
//!
//! `cargo test --workspace --test chaos` runs the CI subset (the tests not ignored, short
//! durations). `scripts/chaos` runs every test, ignored ones included, with `CHAOS_FULL=1`
//! (long durations, more load) and prints the figures. A test is ignored because it belongs to
//! the full set only.

mod harness;

#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/docker.rs"]
mod docker;
#[path = "chaos/links.rs"]
mod links;
#[path = "chaos/load.rs"]
mod load;
#[path = "chaos/netns.rs"]
mod netns;
#[path = "chaos/scenarios.rs"]
mod scenarios;

use std::time::Duration;

use cluster::{Bench, ProcCluster};
use netns::NetnsCluster;
use scenarios::{secs, Fault, Plan};

/// The scenario tests share two cores with everything else: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the nodes keep their data and logs: removed afterwards unless `CHAOS_KEEP=1`.
fn scratch() -> tempfile::TempDir {
    let keep = std::env::var("CHAOS_KEEP").is_ok_and(|v| v == "1");
    let dir = tempfile::Builder::new()
        .prefix("chaos-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    if keep {
        eprintln!("node data and logs are kept in {}", dir.path().display());
    }
    dir
}

/// Runs `ci` (or `full` under `CHAOS_FULL=1`) on a fresh three-node cluster of processes and
/// fails unless every scenario kept the contract.
async fn must_keep_the_contract_on_processes(ci: Vec<Fault>, full: Vec<Fault>) {
    let figures = must_run_on_processes(Plan::new(ci, full)).await;
    scenarios::assert_all_ok(&figures);
}

async fn must_run_on_processes(plan: Plan) -> Vec<scenarios::Figures> {
    let _one_at_a_time = SERIAL.lock().await;
    let root = scratch();
    let cluster = ProcCluster::must_start(root.path()).await;
    let mut bench = Bench::must_wrap(cluster, 3).await;
    let figures = scenarios::must_run_all(&mut bench, &plan, "cp").await;
    scenarios::print_table(&figures);
    figures
}

/// As [`must_keep_the_contract_on_processes`], on nodes in network namespaces; skipped with
/// a message where `ip netns` is not permitted.
async fn must_keep_the_contract_in_namespaces(ci: Vec<Fault>, full: Vec<Fault>) {
    if let Some(figures) = must_run_in_namespaces(Plan::new(ci, full)).await {
        scenarios::assert_all_ok(&figures);
    }
}

/// The figures, or `None` (and a message) where `ip netns` is not permitted.
async fn must_run_in_namespaces(plan: Plan) -> Option<Vec<scenarios::Figures>> {
    let _one_at_a_time = SERIAL.lock().await;
    let root = scratch();
    let cluster = match NetnsCluster::try_start(root.path()).await {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("SKIPPED: network namespaces are not available here: {reason}");
            return None;
        }
    };
    let mut bench = Bench::must_wrap(cluster, 3).await;
    let figures = scenarios::must_run_all(&mut bench, &plan, "cn").await;
    scenarios::print_table(&figures);
    Some(figures)
}

// ----- the CI subset -------------------------------------------------------------------------

/// Every fault that changes the ring or the nodes, in a row on one cluster, each judged on
/// the whole contract: what is stored and what is pushed to connections that stay open. The
/// longer versions, one cluster per fault, are the full set below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_partitions_pauses_flapping_restarts_and_a_drain_lose_and_miss_nothing() {
    let ci = vec![
        Fault::KillOwner { down: secs(4) },
        Fault::KillLeader { down: secs(4) },
        Fault::PartitionFollower { cut: secs(6) },
        Fault::PauseLeader { pause: secs(5) },
        Fault::Flapping { total: secs(8) },
        Fault::RollingRestart,
        Fault::AddThenDrain,
    ];
    let figures = must_run_on_processes(Plan::new(ci.clone(), ci)).await;
    scenarios::assert_all_ok(&figures);
}

/// The same for a partition made of dropped packets (iptables in network namespaces), where
/// the cut-off node's peer connections hang instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_drops_packets_loses_and_misses_nothing() {
    let ci = vec![Fault::PartitionFollower { cut: secs(6) }];
    if let Some(figures) = must_run_in_namespaces(Plan::new(ci.clone(), ci)).await {
        scenarios::assert_all_ok(&figures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_loses_and_misses_nothing() {
    let delay = Duration::from_millis(200);
    must_keep_the_contract_on_processes(
        vec![Fault::SlowLink {
            delay,
            total: secs(6),
        }],
        vec![Fault::SlowLink {
            delay,
            total: secs(30),
        }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acks_are_retried_without_a_duplicate() {
    must_keep_the_contract_on_processes(
        vec![Fault::DropAcks {
            permille: 300,
            total: secs(6),
        }],
        vec![Fault::DropAcks {
            permille: 300,
            total: secs(30),
        }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cut_off_all_at_once_resume_without_a_gap() {
    must_keep_the_contract_on_processes(
        vec![Fault::CutClients {
            times: 2,
            gap: secs(3),
        }],
        vec![Fault::CutClients {
            times: 5,
            gap: secs(4),
        }],
    )
    .await;
}

// ----- the full set: one fault per cluster, longer under CHAOS_FULL=1 ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn killing_the_owner_of_busy_conversations_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::KillOwner { down: secs(5) }],
        vec![Fault::KillOwner { down: secs(15) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn killing_the_raft_leader_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::KillLeader { down: secs(5) }],
        vec![Fault::KillLeader { down: secs(15) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn a_partitioned_node_loses_nothing_and_its_clients_miss_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::PartitionFollower { cut: secs(8) }],
        vec![
            Fault::PartitionFollower { cut: secs(30) },
            Fault::PartitionLeader { cut: secs(30) },
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn flapping_partitions_lose_and_miss_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::Flapping { total: secs(10) }],
        vec![Fault::Flapping { total: secs(20) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn partitions_that_drop_packets_in_network_namespaces_lose_and_miss_nothing() {
    must_keep_the_contract_in_namespaces(
        vec![Fault::PartitionFollower { cut: secs(8) }],
        vec![
            Fault::PartitionFollower { cut: secs(30) },
            Fault::KillOwner { down: secs(15) },
            Fault::PauseLeader { pause: secs(10) },
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn a_leader_stopped_past_the_election_timeout_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::PauseLeader { pause: secs(5) }],
        vec![Fault::PauseLeader { pause: secs(10) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn a_rolling_restart_of_every_node_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(vec![Fault::RollingRestart], vec![Fault::RollingRestart])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn adding_a_fourth_node_then_draining_the_first_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(vec![Fault::AddThenDrain], vec![Fault::AddThenDrain]).await;
}

// ----- the Docker backend --------------------------------------------------------------------

/// The figures of `plan` on three containers (`docker::DockerCluster`), each with its `/data`
/// on a small disk of its own if `disk` is given; `None` (and a message) where no Docker engine
/// answers or, with `disk`, where mounting is not permitted.
async fn must_run_in_docker(
    plan: Plan,
    disk: Option<cluster::DiskSize>,
) -> Option<Vec<scenarios::Figures>> {
    let _one_at_a_time = SERIAL.lock().await;
    let root = scratch();
    let cluster = match docker::DockerCluster::try_start(root.path(), disk).await {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return None;
        }
    };
    let mut bench = Bench::must_wrap(cluster, 3).await;
    let figures = scenarios::must_run_all(&mut bench, &plan, "cd").await;
    scenarios::print_table(&figures);
    Some(figures)
}

/// The owner of busy conversations killed (`docker kill`: its address then drops packets, no
/// connection is refused), then a follower's container cut off the other nodes with `docker
/// network disconnect` (its clients still reach it through its published port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_a_disconnected_container_lose_and_miss_nothing() {
    let ci = vec![
        Fault::KillOwner { down: secs(4) },
        Fault::PartitionFollower { cut: secs(6) },
    ];
    if let Some(figures) = must_run_in_docker(Plan::new(ci.clone(), ci), None).await {
        scenarios::assert_all_ok(&figures);
    }
}

/// Every container fault at full length: disconnect, pause, a slow link, docker stop and
/// start of every node in turn, docker kill of the owner and of the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn containers_killed_disconnected_paused_and_restarted_lose_and_miss_nothing() {
    let faults = vec![
        Fault::PartitionFollower { cut: secs(30) },
        Fault::PauseLeader { pause: secs(10) },
        Fault::SlowLink {
            delay: Duration::from_millis(200),
            total: secs(30),
        },
        Fault::RollingRestart,
        Fault::KillOwner { down: secs(15) },
        Fault::KillLeader { down: secs(15) },
    ];
    if let Some(figures) = must_run_in_docker(Plan::new(faults.clone(), faults), None).await {
        scenarios::assert_all_ok(&figures);
    }
}

// ----- disk full -----------------------------------------------------------------------------

/// Each node's data directory is a tmpfs of 48 MiB, grown to 192 MiB when the filler goes
/// (see `cluster::DiskSize` for why).
const SMALL_DISK: cluster::DiskSize = cluster::DiskSize {
    start: 48 << 20,
    freed: 192 << 20,
};

/// The figures of `plan` on three processes whose data directories are small disks; `None`
/// (and a message) where mounting a tmpfs is not permitted.
async fn must_run_on_processes_with_small_disks(plan: Plan) -> Option<Vec<scenarios::Figures>> {
    let _one_at_a_time = SERIAL.lock().await;
    let root = scratch();
    let cluster = match ProcCluster::try_start_with_disks(root.path(), SMALL_DISK).await {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("SKIPPED: a small disk per node is not available here: {reason}");
            return None;
        }
    };
    let mut bench = Bench::must_wrap(cluster, 3).await;
    let figures = scenarios::must_run_all(&mut bench, &plan, "cf").await;
    scenarios::print_table(&figures);
    Some(figures)
}

/// A follower's disk fills up under load while the metadata changes, and is freed again.
/// The node's metadata log write fails, so the node stops itself and its share moves to the
/// others; the test starts it again once there is room, as its supervisor would. Nothing
/// acknowledged may be lost, repeated or missed, and every conversation must be served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_and_the_node_serves_again_once_space_is_freed() {
    let plan = Plan::new(
        vec![Fault::DiskFull { hold: secs(6) }],
        vec![Fault::DiskFull { hold: secs(30) }],
    );
    if let Some(figures) = must_run_on_processes_with_small_disks(plan).await {
        scenarios::assert_all_ok(&figures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn a_full_disk_in_a_container_loses_nothing_and_the_node_serves_again() {
    let faults = vec![Fault::DiskFull { hold: secs(30) }];
    let plan = Plan::new(faults.clone(), faults);
    if let Some(figures) = must_run_in_docker(plan, Some(SMALL_DISK)).await {
        scenarios::assert_all_ok(&figures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos)"]
async fn a_full_disk_in_a_network_namespace_loses_nothing_and_the_node_serves_again() {
    let _one_at_a_time = SERIAL.lock().await;
    let root = scratch();
    let cluster = match NetnsCluster::try_start_with_disks(root.path(), SMALL_DISK).await {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("SKIPPED: network namespaces or small disks are not available: {reason}");
            return;
        }
    };
    let faults = vec![Fault::DiskFull { hold: secs(30) }];
    let mut bench = Bench::must_wrap(cluster, 3).await;
    let figures =
        scenarios::must_run_all(&mut bench, &Plan::new(faults.clone(), faults), "cg").await;
    scenarios::print_table(&figures);
    scenarios::assert_all_ok(&figures);
}
