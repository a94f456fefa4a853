//! The ceiling relay: the direct scenarios run against it unchanged and the checker passes,
//! and `calibrate` drives it from the command line. No chat server needed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chat_loadtest::relay::RELAY_THREAD;
use chat_loadtest::{run, Ceiling, Relay, Report, RunConfig, Scenario};

fn scenario_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn must_load(name: &str) -> Scenario {
    Scenario::from_file(&scenario_path(name)).expect("a shipped scenario")
}

async fn must_run_on_relay(scenario: Scenario) -> Report {
    let relay = Relay::start(2).expect("start the relay");
    let mut config = RunConfig::new(scenario, vec![relay.url()]);
    config.server_threads = Some(RELAY_THREAD.to_owned());
    config.progress = false;
    let report = tokio::time::timeout(Duration::from_secs(60), run(config))
        .await
        .expect("the run ends by itself")
        .expect("the run succeeds");
    println!("{}", report.to_text());
    assert!(report.relay);
    report
}

fn must_pass(report: &Report) {
    assert!(
        report.ok(),
        "{}\n{:#?}",
        report.check.verdict_line(),
        &report.check.violations[..report.check.violations.len().min(10)]
    );
    assert!(report.check.acked > 0, "nothing was acknowledged");
    assert_eq!(report.check.history_messages, report.check.acked);
    assert_eq!(
        report.check.deliveries, report.check.acked,
        "one push per message"
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let server = report
        .server
        .as_ref()
        .expect("the relay threads were sampled");
    assert!(server.cpu_secs >= 0.0);
    assert!(
        report
            .appended
            .as_ref()
            .is_some_and(|a| a.delta >= report.check.acked as f64),
        "the relay's /metrics counts its appends: {:?}",
        report.appended
    );
    assert!(!report.timeline.is_empty(), "a timeline for the chart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_and_flood_against_the_relay_keep_the_contract() {
    let mut pingpong = must_load("dm-pingpong");
    pingpong.users = 8;
    pingpong.rate = 200.0;
    pingpong.warmup_secs = 0.3;
    pingpong.duration_secs = 1.5;
    let relay_report = must_run_on_relay(pingpong.clone()).await;
    must_pass(&relay_report);
    assert!(relay_report.latency.contains_key("send_delivery"));
    // Against itself, the ceiling's ratios are defined and the runs are comparable.
    let c = Ceiling::of(&relay_report, &relay_report);
    assert!(c.differences.is_empty());
    assert_eq!(c.ratio("acks/s"), Some(1.0));

    let mut flood = must_load("dm-flood");
    flood.users = 4;
    flood.window = Some(16);
    flood.warmup_secs = 0.3;
    flood.duration_secs = 1.5;
    let report = must_run_on_relay(flood).await;
    must_pass(&report);
    assert!(
        report.throughput.acks_per_sec > 100.0,
        "{:?}",
        report.throughput
    );
}

#[test]
fn calibrate_runs_the_relay_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("relay.json");
    let svg = dir.path().join("relay.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .arg("calibrate")
        .arg("--scenario")
        .arg(scenario_path("dm-pingpong"))
        .args(["--users", "4", "--rate", "100", "--warmup-secs", "0.2"])
        .args(["--duration-secs", "1", "--quiet", "--relay-threads", "1"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run chat-loadtest calibrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the ceiling relay"), "{stdout}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("a report");
    assert!(report.relay && report.ok());
    let chart = std::fs::read_to_string(&svg).expect("the chart");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert!(
        chart.contains("send-&gt;ack p50") && chart.contains("<path"),
        "{chart}"
    );

    // `run --ceiling` states a run's figures against it (here: the relay again, started
    // alone by the `relay` command).
    let port = chat_testkit::free_port();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--secs",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the relay command");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .arg("run")
        .arg("--scenario")
        .arg(scenario_path("dm-pingpong"))
        .args(["--target", &format!("http://127.0.0.1:{port}")])
        .args(["--users", "4", "--rate", "100", "--warmup-secs", "0.2"])
        .args(["--duration-secs", "1", "--quiet"])
        .args(["--server-pid", &relay.id().to_string()])
        .arg("--ceiling")
        .arg(&json)
        .output()
        .expect("run chat-loadtest run");
    let _ = relay.kill();
    let _ = relay.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("against the ceiling"), "{stdout}");
    assert!(stdout.contains("send_ack p50 (us)"), "{stdout}");
}

/// Every other kind runs end to end against the relay at a tiny scale and passes the checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_runs_against_the_relay() {
    let short = |mut s: Scenario| {
        s.warmup_secs = 0.2;
        s.duration_secs = 1.0;
        s
    };

    let mut g = short(must_load("group-fanout-100"));
    g.users = 30;
    g.senders = Some(3);
    g.rate = 60.0;
    let r = must_run_on_relay(g).await;
    assert!(r.ok(), "{}", r.check.verdict_line());
    assert_eq!(
        r.check.history_messages,
        r.check.acked + 1,
        "the creation note"
    );
    assert_eq!(r.throughput.deliveries, r.check.acked * 29);
    assert!(r.latency.contains_key("send_last_delivery"));

    let mut b = short(must_load("broadcast"));
    b.users = 20;
    b.rate = 10.0;
    let r = must_run_on_relay(b).await;
    assert!(r.ok(), "{}", r.check.verdict_line());
    assert!(
        r.check.acked > 0 && r.check.acked % 19 == 0,
        "{}",
        r.check.acked
    );
    assert_eq!(r.throughput.deliveries, r.check.acked);
    assert!(r.latency.contains_key("send_last_delivery"));

    let mut h = short(must_load("history-paging"));
    h.users = 4;
    h.prefill = Some(120);
    h.rate = 100.0;
    let r = must_run_on_relay(h).await;
    assert!(r.ok(), "{}", r.check.verdict_line());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.throughput.pages > 0);
    assert!(r.latency.contains_key("history_page"));

    let mut i = short(must_load("idle-connections"));
    i.users = 50;
    let r = must_run_on_relay(i).await;
    assert_eq!(r.connections.open_at_end, 50);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.latency["connect"].count, 50);

    let mut c = short(must_load("reconnect-storm"));
    c.users = 20;
    let r = must_run_on_relay(c).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.throughput.setups_per_sec > 0.0);
    assert_eq!(r.connections.open_at_end, 20);

    // Without an event stream, what is sent to a user while it is away is never pushed
    // to it: the catch-up check must see that, on a server that really loses it.
    let mut u = short(must_load("reconnect-catch-up"));
    u.users = 16;
    u.reconnect = Some(chat_loadtest::scenario::ReconnectParams {
        senders: 4,
        message_rate: 200.0,
        send_window: 4,
    });
    let r = must_run_on_relay(u).await;
    assert!(r.check.acked > 0, "nothing was acknowledged");
    assert!(
        r.check.counts.undelivered > 0,
        "the relay cannot catch a resumed connection up: {}",
        r.check.verdict_line()
    );
    assert_eq!(
        r.check.counts.total(),
        r.check.counts.undelivered,
        "{:#?}",
        &r.check.violations[..r.check.violations.len().min(10)]
    );
    assert!(r
        .check
        .violations
        .iter()
        .any(|v| matches!(v, chat_loadtest::checker::Violation::NotCaughtUp { .. })));

    let mut m = short(must_load("mixed"));
    m.users = 30;
    m.rate = 60.0;
    m.window = Some(16);
    let mp = m.mixed.as_mut().expect("mixed.toml has a [mixed] table");
    mp.conversations = 20;
    mp.max_members = 6;
    mp.writers = Some(20);
    mp.readers = Some(5);
    mp.read_rate = 20.0;
    let r = must_run_on_relay(m).await;
    assert!(r.ok(), "{}", r.check.verdict_line());
    assert!(r.errors.is_empty(), "{:?} {:?}", r.errors, r.error_examples);
    assert!(r.check.acked > 0 && r.check.deliveries > 0);
    assert!(r.latency.contains_key("mark_read"));

    let mut l = short(must_load("login-storm"));
    l.users = 10;
    l.rate = 50.0;
    l.window = Some(8);
    l.login = Some(chat_loadtest::scenario::LoginParams { connect: true });
    let r = must_run_on_relay(l).await;
    assert!(r.errors.is_empty(), "{:?} {:?}", r.errors, r.error_examples);
    let logins = r.throughput.ops.get("logins").map_or(0, |o| o.count);
    assert!(logins >= 50, "{logins} logins");
    assert_eq!(
        r.throughput.ops.get("connects").map(|o| o.count),
        Some(logins)
    );
}
