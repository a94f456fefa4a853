//! A cluster keeps three voters; further nodes join as learners that still serve clients.

mod harness;

use harness::{must_be_ready, NodeProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_a_learner_and_serves_clients() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(root.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut others: Vec<NodeProc> = ["n2", "n3", "n4"]
        .iter()
        .map(|name| NodeProc::new(root.path(), name, Some(n1.peer.clone())))
        .collect();
    // Join one at a time so that the first two joiners are the ones promoted.
    for (i, n) in others.iter_mut().enumerate() {
        n.start();
        must_be_ready(n, i + 2).await;
    }
    let ready = must_be_ready(&others[2], 4).await;
    let voters = ready["voters"].as_array().expect("voters").clone();
    assert_eq!(voters.len(), 3, "{ready}");
    assert!(
        !voters.contains(&ready["node_id"]),
        "the fourth node is a learner: {ready}"
    );

    // The learner serves: a user registered there can log in through a voter.
    let reg = others[2]
        .api()
        .register("late_joiner", "long enough")
        .await
        .expect("register through the learner");
    let login = n1
        .api()
        .login("late_joiner", "long enough")
        .await
        .expect("login through a voter");
    assert_eq!(login.user_id, reg.user_id);
}
