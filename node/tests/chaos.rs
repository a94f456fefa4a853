//! Fault scenarios under a steady load with the history checker on (docs/reliability.md,
//! "Fault scenarios under load").
//!
//! The scenarios are written against a small fault interface (`cluster::Cluster`: kill,
//! stop, start, pause, resume, partition, heal, slow link, add a node) with two backends:
//! `chat-node` processes on loopback (`cluster::ProcCluster`) and processes in network
//! namespaces on a bridge with iptables partitions (`netns::NetnsCluster`). Client-link faults
//! (cutting every client connection, dropping acks) come from a relay every client goes
//! through (`links`). Each scenario runs a fresh load of direct-message pairs spread over the
//! nodes (`load`), injects its faults, heals, and then requires: nothing acknowledged lost, no
//! duplicate, no order violation, no missed push, the same history through every node, one
//! leader and one ring again, and every conversation served again. Timings are measured and
//! printed, never asserted.
//!
//! `cargo test --workspace --test chaos` runs the CI subset (the tests not ignored, short
//! durations). `scripts/chaos` runs every test, ignored ones included, with `CHAOS_FULL=1`
//! (long durations, more load) and prints the figures. A test is ignored either because it
//! belongs to the full set only, or because it exposes a product bug named in its reason.

mod harness;

#[path = "chaos/cluster.rs"]
mod cluster;
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

/// The faults that change the ring (a node leaves it and comes back) break pushes to open
/// connections (the bugs below), but what is stored must survive them all: this runs them in
/// a row on one cluster and judges the histories. The full-contract versions are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kills_partitions_pauses_and_flapping_in_order_once() {
    let ci = vec![
        Fault::KillOwner { down: secs(4) },
        Fault::KillLeader { down: secs(4) },
        Fault::PartitionFollower { cut: secs(6) },
        Fault::PauseLeader { pause: secs(5) },
        Fault::Flapping { total: secs(8) },
    ];
    let figures = must_run_on_processes(Plan::new(ci.clone(), ci)).await;
    scenarios::assert_histories_ok(&figures);
}

/// The same for a partition made of dropped packets (iptables in network namespaces), where
/// the cut-off node's peer connections hang instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_partition_that_drops_packets_in_order_once() {
    let ci = vec![Fault::PartitionFollower { cut: secs(6) }];
    if let Some(figures) = must_run_in_namespaces(Plan::new(ci.clone(), ci)).await {
        scenarios::assert_histories_ok(&figures);
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

// ----- exposing product bugs (see "Fault scenarios under load" in docs/reliability.md) -------

// Connections that stay open while the ring changes miss pushes: on a ring change every node
// re-attaches its connections to the users' new homes without a cursor, so the new home never
// pushes what it appended before the re-attach arrived (in particular the messages the new
// owner of a conversation delivers again right after taking over), and pushes to a node that
// cannot be reached are dropped for clients that never reconnect. After a ring change the
// restarted conversation actor and the stopped one's delivery task also deliver the same
// messages concurrently, and their pushes can overtake each other.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: open connections miss pushes across a ring change (re-attach without a cursor); see docs/reliability.md"]
async fn killing_the_owner_of_busy_conversations_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::KillOwner { down: secs(5) }],
        vec![Fault::KillOwner { down: secs(15) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: open connections miss pushes across a ring change, and pushes of one conversation overtake each other; see docs/reliability.md"]
async fn killing_the_raft_leader_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::KillLeader { down: secs(5) }],
        vec![Fault::KillLeader { down: secs(15) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: connections on a cut-off node miss every push of the partition; a leader marked down never marks itself up (cluster stuck); see docs/reliability.md"]
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
#[ignore = "bug: open connections miss pushes across a ring change, and pushes of one conversation overtake each other; see docs/reliability.md"]
async fn flapping_partitions_lose_and_miss_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::Flapping { total: secs(10) }],
        vec![Fault::Flapping { total: secs(20) }],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: connections on a cut-off node miss every push of the partition; see docs/reliability.md"]
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
#[ignore = "bug: open connections miss pushes across a ring change, and pushes of one conversation overtake each other; see docs/reliability.md"]
async fn a_leader_stopped_past_the_election_timeout_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(
        vec![Fault::PauseLeader { pause: secs(5) }],
        vec![Fault::PauseLeader { pause: secs(10) }],
    )
    .await;
}

// ----- the full set only (and exposing bugs too) ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos); bug: open connections miss pushes across a ring change; see docs/reliability.md"]
async fn a_rolling_restart_of_every_node_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(vec![Fault::RollingRestart], vec![Fault::RollingRestart])
        .await;
}

// A drained node keeps serving requests already on their way to its conversation actors: the
// actor catches up under the new ring (where it is not a member), seals the replicas at the
// new epoch and writes at the same epoch as the real new owner, so both assign a seq and one
// acknowledged message disappears from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full set (scripts/chaos); bug: a drained node still writes at the new epoch and an acknowledged message is lost; see docs/reliability.md"]
async fn adding_a_fourth_node_then_draining_the_first_loses_and_misses_nothing() {
    must_keep_the_contract_on_processes(vec![Fault::AddThenDrain], vec![Fault::AddThenDrain]).await;
}
