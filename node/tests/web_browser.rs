//! The web client in real browsers: a 3-node cluster serves `web/`, and
//! `web/tests/browser_test.py` drives two headless Chromium sessions on different nodes
//! through Selenium (register; a contact request and its acceptance, with presence; live
//! messages both ways with typing indicators and read receipts; a reply, an edit, a deletion
//! and a reaction; a group created and used by both; a dropped WebSocket that resumes from
//! the event cursor, with the outbox; a reload, logout and login, older pages, a profile
//! change; a picture and a file sent through the file input, the thumbnail, the viewer and
//! the download on the other side; search in English and Chinese with the sender and date
//! filters, a hit opening its conversation at the message; a revoked token), saving
//! screenshots to `$CHAT_SCREENSHOT_DIR` (default `target/screenshots`).
//!
//! Chromium, chromium-driver and Selenium come from `scripts/deps`; this test runs it when one
//! is missing and says SKIP only when they still cannot be had.

mod harness;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{must_be_ready, NodeProc};

/// The script takes about 45 s; a busy machine may slow it down a lot.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds node/")
        .to_owned()
}

/// What the browser test needs and this machine lacks.
fn missing_tools() -> Vec<&'static str> {
    let has = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {cmd}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    for tool in ["chromium", "chromedriver", "python3"] {
        if !has(tool) {
            missing.push(tool);
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        missing.push("selenium");
    }
    missing
}

/// `GET path` over a raw socket: the status line and headers (lowercased names), and the body.
fn get(addr: &str, path: &str) -> (String, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_in_two_browsers_on_a_three_node_cluster() {
    let root = workspace_root();
    if !missing_tools().is_empty() {
        let _ = Command::new(root.join("scripts/deps"))
            .stdin(Stdio::null())
            .status();
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        println!("SKIP: the browser test needs {missing:?}, which could not be installed");
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut n1 = NodeProc::new(dir.path(), "n1", None);
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(dir.path(), "n2", Some(n1.peer.clone()));
    let mut n3 = NodeProc::new(dir.path(), "n3", Some(n1.peer.clone()));
    n2.start();
    n3.start();
    for n in [&n1, &n2, &n3] {
        must_be_ready(n, 3).await;
    }

    // Every node serves the client, with the headers that keep it safe and fresh.
    let (status, headers, body) = get(&n3.http, "/");
    assert!(status.contains(" 200 "), "GET / -> {status}");
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&headers, "cache-control"), "no-cache");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let ws = format!("connect-src 'self' ws://{0} wss://{0}", n3.http);
    assert!(csp.contains(&ws), "{csp}");
    assert!(body.contains("/app.js"), "{body}");
    for (path, ty) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/api.js", "text/javascript; charset=utf-8"),
        ("/ui.js", "text/javascript; charset=utf-8"),
        ("/media.js", "text/javascript; charset=utf-8"),
        ("/contacts.js", "text/javascript; charset=utf-8"),
        ("/groups.js", "text/javascript; charset=utf-8"),
        ("/search.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/manifest.webmanifest", "application/manifest+json"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, _) = get(&n1.http, path);
        assert!(status.contains(" 200 "), "GET {path} -> {status}");
        assert_eq!(header(&headers, "content-type"), ty, "{path}");
    }

    let shots = std::env::var_os("CHAT_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let out_path = dir.path().join("browser_test.log");
    let out = std::fs::File::create(&out_path).expect("log file");
    let mut child = Command::new("python3")
        .arg(root.join("web/tests/browser_test.py"))
        .arg("--screenshots")
        .arg(&shots)
        .args([n1.base_url(), n2.base_url(), n3.base_url()])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("run python3");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{output}");
    let ok = status.is_some_and(|s| s.success());
    if !ok {
        for n in [&n1, &n2, &n3] {
            println!("--- {} log:\n{}", n.name, n.log_tail());
        }
    }
    assert!(
        status.is_some(),
        "the browser test did not finish within {SCRIPT_TIMEOUT:?}"
    );
    assert!(
        ok,
        "the browser test failed: {status:?}; see the output above"
    );
    println!("screenshots in {}", shots.display());
}
