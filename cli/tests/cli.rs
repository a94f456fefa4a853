//! End-to-end tests of the `chat` binary: a real `chat-node` on loopback, and `chat` run as a
//! subprocess the way a person or a script runs it (the interactive mode inside tmux).
//!
//! The node is `<target>/debug/chat-node`, built with `cargo build --bin chat-node` when it is
//! missing (this crate may not depend on the server's crates, so it cannot name the binary
//! through Cargo).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chat_testkit::free_port;

const PASSWORD: &str = "correct horse";

// ---------------------------------------------------------------------------------------
// The node (the few lines of node/tests/harness/mod.rs this needs).

/// `<target>/debug/chat-node`, built once if missing.
fn chat_node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Tests run as <target>/debug/deps/cli-<hash>.
        let exe = std::env::current_exe().expect("current exe");
        let debug = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/debug")
            .to_path_buf();
        let bin = debug.join("chat-node");
        if !bin.exists() {
            let target = debug.parent().expect("<target>");
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--bin", "chat-node", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(target)
                .status()
                .expect("run cargo build --bin chat-node");
            assert!(status.success(), "cargo build --bin chat-node failed");
        }
        assert!(bin.exists(), "no chat-node at {}", bin.display());
        bin
    })
}

struct Node {
    dir: tempfile::TempDir,
    http: String,
    peer: String,
    child: Option<Child>,
}

impl Node {
    fn start() -> Node {
        let mut node = Node {
            dir: tempfile::tempdir().unwrap(),
            http: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .unwrap();
        let child = Command::new(chat_node_bin())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--http-addr")
            .arg(&self.http)
            .arg("--peer-addr")
            .arg(&self.peer)
            .env("CHAT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn chat-node");
        self.child = Some(child);
        self.wait_ready();
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn wait_ready(&self) {
        wait_for("the node to be ready", Duration::from_secs(60), || {
            http_get(&self.http, "/readyz")
                .filter(|body| body.contains("\"ready\":true"))
                .map(drop)
        })
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", self.log()));
    }

    /// SIGTERM and wait for the exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("----- node log (tail) -----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// A GET over a raw socket: the body when the status is 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// The client.

/// One user of the `chat` binary: a server, a token file and a private config directory.
struct User {
    name: String,
    server: String,
    home: PathBuf,
    token_file: PathBuf,
}

impl User {
    fn new(node: &Node, root: &Path, name: &str) -> User {
        let home = root.join(format!("home-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        User {
            name: name.to_owned(),
            server: node.url(),
            token_file: home.join("token.json"),
            home,
        }
    }

    /// `chat --server URL --token-file FILE ARGS`, in a clean environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(args)
            .env_remove("CHAT_TOKEN")
            .env_remove("CHAT_SERVER")
            .env_remove("CHAT_TOKEN_FILE")
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("xdg"));
        cmd
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(self.command(args), stdin)
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, "");
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn register_and_login(&self) {
        let out = self.run(&["register", &self.name, "--password-stdin"], PASSWORD);
        assert_success(&out, &["register"]);
        let out = self.run(&["login", &self.name, "--password-stdin"], PASSWORD);
        assert_success(&out, &["login"]);
    }

    fn token(&self) -> String {
        let text = std::fs::read_to_string(&self.token_file).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
}

fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    input.write_all(b"\n").unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "chat {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_failure(out: &Output, code: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure, stderr: {stderr}"
    );
    assert!(
        stderr.contains(code),
        "expected {code} in stderr, got: {stderr}"
    );
    stderr
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The lines a child prints on one stream, as they come.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line satisfying `want`, skipping others; panics after `timeout`.
fn next_line(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no expected line within {timeout:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn one_shot_commands_work_for_people_and_scripts() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = User::new(&node, root.path(), "alice");
    let bob = User::new(&node, root.path(), "bob");

    let out = alice.run(&["register", "alice", "--password-stdin"], PASSWORD);
    assert_success(&out, &["register"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("registered alice"));
    let out = bob.run(&["--json", "register", "bob", "--password-stdin"], PASSWORD);
    assert_success(&out, &["register"]);
    let reg = &json_lines(&String::from_utf8(out.stdout).unwrap())[0];
    assert_eq!(reg["username"], "bob");
    let bob_id = reg["user_id"].as_u64().unwrap();

    // A taken name and a bad password: the server's stable codes, non-zero exits.
    assert_failure(
        &alice.run(&["register", "alice", "--password-stdin"], PASSWORD),
        "conflict",
    );
    let stderr = assert_failure(
        &alice.run(&["login", "alice", "--password-stdin"], "wrong password"),
        "unauthorized",
    );
    assert!(stderr.starts_with("error: unauthorized: "), "{stderr}");
    let out = alice.run(
        &["--json", "login", "alice", "--password-stdin"],
        "nope nope",
    );
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");
    assert!(!alice.token_file.exists());

    // Not logged in yet.
    assert_failure(&alice.run(&["send", "bob", "hi"], ""), "not_logged_in");

    // Log in without --token-file: the file goes under $XDG_CONFIG_HOME/chat, owner-only.
    let mut login = Command::new(env!("CARGO_BIN_EXE_chat"));
    login
        .args([
            "--server",
            &node.url(),
            "login",
            "alice",
            "--password-stdin",
        ])
        .env_remove("CHAT_TOKEN")
        .env_remove("CHAT_TOKEN_FILE")
        .env("HOME", &alice.home)
        .env("XDG_CONFIG_HOME", alice.home.join("xdg"));
    let out = run_with_stdin(login, PASSWORD);
    assert_success(&out, &["login"]);
    let default_file = alice.home.join("xdg").join("chat").join("session.json");
    let meta = std::fs::metadata(&default_file).expect("the default token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let _ = meta;
    // The same session for the rest of the test, through --token-file.
    std::fs::copy(&default_file, &alice.token_file).unwrap();
    let out = bob.run(&["login", "bob", "--password-stdin"], PASSWORD);
    assert_success(&out, &["login"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as bob"));

    // Send: the seq, alone (text) or in a JSON object.
    assert_eq!(alice.ok(&["send", "bob", "hello bob"]).trim(), "1");
    let sent = json_lines(&alice.ok(&["--json", "send", "bob", "second one"]));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["seq"], 2);
    assert_eq!(sent[0]["duplicate"], false);
    let conversation = sent[0]["conversation"].as_str().unwrap().to_owned();
    assert!(conversation.starts_with("dm:"), "{conversation}");
    assert!(sent[0]["client_msg_id"]
        .as_str()
        .unwrap()
        .starts_with("cli-"));
    // A message from stdin.
    let out = bob.run(&["send", "alice", "-"], "from a pipe");
    assert_success(&out, &["send", "-"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");

    // History, both ways, text and JSON, with --limit and --before.
    let text = bob.ok(&["history", "alice"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("#1 ") && lines[0].ends_with("alice: hello bob"),
        "{text}"
    );
    assert!(lines[2].ends_with("bob: from a pipe"), "{text}");
    let page = json_lines(&alice.ok(&["--json", "history", "bob", "--limit", "2"]));
    assert_eq!(page.len(), 2);
    assert_eq!(
        (page[0]["seq"].as_u64(), page[1]["seq"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(page[1]["sender_username"], "bob");
    assert_eq!(page[1]["body"], "from a pipe");
    assert_eq!(page[1]["conversation"], conversation.as_str());
    let older = json_lines(&alice.ok(&["--json", "history", "bob", "--before", "2"]));
    assert_eq!(older.len(), 1);
    assert_eq!(older[0]["body"], "hello bob");
    assert_failure(&alice.run(&["history", "nobody-here"], ""), "not_found");

    // Profiles and contacts.
    let me = alice.ok(&["profile"]);
    assert!(me.starts_with("alice (user "), "{me}");
    let p = json_lines(&alice.ok(&["--json", "profile", "bob"]));
    assert_eq!(p[0]["username"], "bob");
    assert_eq!(p[0]["user_id"].as_u64(), Some(bob_id));
    let c = json_lines(&alice.ok(&["--json", "contacts"]));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["contacts"], serde_json::json!([]));
    assert!(alice.ok(&["contacts"]).contains("(none)"));

    // CHAT_TOKEN stands in for the file.
    let token = alice.token();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
    cmd.args(["--server", &node.url(), "--token-file"])
        .arg(root.path().join("no-such-file"))
        .args(["--json", "profile"])
        .env("CHAT_TOKEN", &token);
    let out = run_with_stdin(cmd, "");
    assert_success(&out, &["profile with CHAT_TOKEN"]);
    assert_eq!(
        json_lines(&String::from_utf8(out.stdout).unwrap())[0]["username"],
        "alice"
    );

    // Logout revokes the token everywhere and forgets it.
    assert!(alice.ok(&["logout"]).contains("logged out"));
    assert!(!alice.token_file.exists());
    assert_failure(&alice.run(&["profile"], ""), "not_logged_in");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat"));
    cmd.args(["--server", &node.url(), "profile"])
        .env("CHAT_TOKEN", &token)
        .env("HOME", &alice.home);
    assert_failure(&run_with_stdin(cmd, ""), "unauthorized");
}

#[test]
fn tail_prints_messages_as_they_arrive_and_resumes_after_a_restart() {
    let mut node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = User::new(&node, root.path(), "alice");
    let bob = User::new(&node, root.path(), "bob");
    alice.register_and_login();
    bob.register_and_login();
    // Something before the tail starts: not printed, the tail shows what is new.
    bob.ok(&["send", "alice", "before the tail"]);

    let mut tail = alice
        .command(&["--json", "tail"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(tail.stdout.take().unwrap());
    let stderr = lines_of(tail.stderr.take().unwrap());
    next_line(&stderr, Duration::from_secs(20), |l| {
        l.contains("connected")
    });

    bob.ok(&["send", "alice", "live one"]);
    let line = next_line(&stdout, Duration::from_secs(20), |_| true);
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(m["body"], "live one", "{line}");
    assert_eq!(m["sender_username"], "bob");
    assert_eq!(m["seq"], 2);

    // The node restarts; a message sent before the tail is back arrives through the resume.
    node.stop();
    node.spawn();
    bob.ok(&["send", "alice", "after the restart"]);
    let line = next_line(&stdout, Duration::from_secs(60), |_| true);
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(m["body"], "after the restart", "{line}");
    assert_eq!(m["seq"], 3);
    // Alice's own message from another device shows too; nothing is printed twice.
    alice.ok(&["send", "bob", "from alice"]);
    let line = next_line(&stdout, Duration::from_secs(20), |_| true);
    let m: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (m["body"].as_str(), m["seq"].as_u64()),
        (Some("from alice"), Some(4))
    );

    // Ctrl-C ends it cleanly.
    signal(&tail, "INT");
    let status = wait_for("tail to exit", Duration::from_secs(10), || {
        tail.try_wait().unwrap()
    })
    .unwrap_or_else(|e| {
        let _ = tail.kill();
        panic!("{e}");
    });
    assert!(status.success(), "tail exited with {status}");
    assert!(stdout.try_recv().is_err(), "nothing printed twice");
}

// ---------------------------------------------------------------------------------------
// Files and search.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for x in data {
        a = (a + u32::from(*x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// A valid 2x2 RGB PNG, encoded by hand: IHDR, one IDAT holding a zlib stream of one stored
/// (uncompressed) deflate block, IEND.
fn tiny_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    // Each scanline: filter type 0, then two RGB pixels.
    let raw = [0u8, 255, 0, 0, 0, 255, 0, 0, 0, 0, 255, 255, 255, 255];
    let len = u16::try_from(raw.len()).unwrap();
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// Runs `chat search` until it prints at least one line (the index is asynchronous), for up
/// to 10 s; returns stdout.
fn search_until_found(user: &User, args: &[&str]) -> String {
    let mut last = String::new();
    wait_for("a search hit", Duration::from_secs(10), || {
        last = user.ok(args);
        (!last.trim().is_empty()).then(|| last.clone())
    })
    .unwrap_or_else(|e| panic!("{e}: chat {args:?} printed {last:?}"))
}

#[test]
fn files_go_up_with_messages_come_down_intact_and_messages_are_searchable() {
    let node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = User::new(&node, root.path(), "alice");
    let bob = User::new(&node, root.path(), "bob");
    let carol = User::new(&node, root.path(), "carol");
    alice.register_and_login();
    bob.register_and_login();
    carol.register_and_login();

    // A picture, without a message: the JSON ack lists the attachment.
    let png = tiny_png();
    let pic = root.path().join("pic.png");
    std::fs::write(&pic, &png).unwrap();
    let pic_arg = pic.to_str().unwrap();
    let sent = json_lines(&alice.ok(&["--json", "send", "bob", "--file", pic_arg]));
    assert_eq!(sent[0]["seq"], 1);
    let att = &sent[0]["attachments"][0];
    assert_eq!(att["mime"], "image/png", "{att}");
    assert_eq!(att["name"], "pic.png");
    assert_eq!(att["size"].as_u64(), Some(png.len() as u64));
    assert_eq!(
        (att["width"].as_u64(), att["height"].as_u64()),
        (Some(2), Some(2))
    );
    let media_id = att["id"].as_str().unwrap().to_owned();
    // With a message, and a plain-text file too (one message, two attachments).
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "line one\nline two\n").unwrap();
    let out = alice.ok(&[
        "send",
        "bob",
        "two files",
        "--file",
        pic_arg,
        "-f",
        notes.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "2");
    // Nothing to send, a missing file, too many files: refused before anything goes out.
    assert_failure(&alice.run(&["send", "bob"], ""), "invalid_argument");
    assert_failure(
        &alice.run(&["send", "bob", "x", "--file", "/no/such/file.png"], ""),
        "io",
    );
    let many: Vec<&str> = (0..11).flat_map(|_| ["--file", pic_arg]).collect();
    let mut args = vec!["send", "bob", "many"];
    args.extend(many);
    assert_failure(&alice.run(&args, ""), "invalid_argument");

    // Bob's history shows the attachments under their messages.
    let text = bob.ok(&["history", "alice"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("#1 ") && lines[0].ends_with("alice:"),
        "{text}"
    );
    assert_eq!(
        lines[1],
        format!(
            "  \u{1f4ce} pic.png (image/png, {} B, 2x2) media {media_id}",
            png.len()
        ),
        "{text}"
    );
    assert!(lines[2].ends_with("alice: two files"), "{text}");
    assert!(lines[3].contains("pic.png"), "{text}");
    assert!(lines[4].contains("notes.txt (text/plain, 18 B)"), "{text}");
    let page = json_lines(&bob.ok(&["--json", "history", "alice"]));
    assert_eq!(page[0]["attachments"][0]["id"], media_id.as_str());
    assert_eq!(page[1]["attachments"].as_array().map(Vec::len), Some(2));

    // Bob downloads it: the same bytes, under the media's name by default, never over an
    // existing file without --force.
    let downloads = root.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let mut cmd = bob.command(&["download", &media_id]);
    cmd.current_dir(&downloads);
    let out = run_with_stdin(cmd, "");
    assert_success(&out, &["download"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("saved pic.png"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(downloads.join("pic.png")).unwrap(), png);
    let mut cmd = bob.command(&["download", &media_id]);
    cmd.current_dir(&downloads);
    assert_failure(&run_with_stdin(cmd, ""), "exists");
    std::fs::write(downloads.join("pic.png"), b"old").unwrap();
    let mut cmd = bob.command(&["download", &media_id, "--force"]);
    cmd.current_dir(&downloads);
    assert_success(&run_with_stdin(cmd, ""), &["download --force"]);
    assert_eq!(std::fs::read(downloads.join("pic.png")).unwrap(), png);
    let named = root.path().join("copy.png");
    let got = json_lines(&bob.ok(&[
        "--json",
        "download",
        &media_id,
        "-o",
        named.to_str().unwrap(),
    ]));
    assert_eq!(got[0]["size"].as_u64(), Some(png.len() as u64));
    assert_eq!(std::fs::read(&named).unwrap(), png);
    let out = bob.run(&["download", &media_id, "-o", "-"], "");
    assert_success(&out, &["download -o -"]);
    assert_eq!(out.stdout, png);
    // Carol is in no conversation with it: not found, and no file left behind.
    let mut cmd = carol.command(&["download", &media_id]);
    cmd.current_dir(&downloads);
    std::fs::remove_file(downloads.join("pic.png")).unwrap();
    assert_failure(&run_with_stdin(cmd, ""), "not_found");
    assert!(!downloads.join("pic.png").exists());
    assert_failure(
        &bob.run(&["download", "../../etc/passwd"], ""),
        "invalid_argument",
    );

    // A file over 8 MiB goes up in resumable chunks and comes down in ranges, intact.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 123)
        .map(|i: usize| b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[i % 38])
        .collect();
    let big_path = root.path().join("big.txt");
    std::fs::write(&big_path, &big).unwrap();
    let sent = json_lines(&alice.ok(&[
        "--json",
        "send",
        "bob",
        "the big one",
        "--file",
        big_path.to_str().unwrap(),
    ]));
    let big_id = sent[0]["attachments"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sent[0]["attachments"][0]["size"].as_u64(),
        Some(big.len() as u64)
    );
    let big_copy = root.path().join("big-copy.txt");
    bob.ok(&["download", &big_id, "-o", big_copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&big_copy).unwrap() == big,
        "the big file differs"
    );

    // Search: Chinese text by a two-character word, marked in brackets off a terminal.
    alice.ok(&["send", "bob", "我们明天去北京开会"]);
    let found = search_until_found(&bob, &["search", "北京"]);
    let lines: Vec<&str> = found.lines().collect();
    assert_eq!(lines.len(), 1, "{found}");
    assert!(lines[0].starts_with("[alice] #"), "{found}");
    assert!(lines[0].contains(" alice: "), "{found}");
    assert!(lines[0].contains("[北京]"), "{found}");
    let hits = json_lines(&alice.ok(&["--json", "search", "北京"]));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["body"], "我们明天去北京开会");
    assert_eq!(hits[0]["sender_username"], "alice");
    assert!(hits[0]["highlights"]
        .as_array()
        .is_some_and(|h| !h.is_empty()));
    // Filters: the conversation with alice, and by sender.
    assert_eq!(
        bob.ok(&["search", "北京", "--user", "alice"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        bob.ok(&["search", "北京", "--sender", "bob"])
            .lines()
            .count(),
        0
    );
    let conversation = hits[0]["conversation"].as_str().unwrap();
    assert_eq!(
        bob.ok(&["search", "北京", "--conversation", conversation])
            .lines()
            .count(),
        1
    );
    // Carol is not in the conversation: nothing (and a note on stderr, exit 0).
    let out = carol.run(&["search", "北京"], "");
    assert_success(&out, &["search as carol"]);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no messages found"));
    assert!(json_lines(&carol.ok(&["--json", "search", "北京"])).is_empty());

    // Paging: newest first, one page by default, every page with --all.
    for i in 1..=3 {
        bob.ok(&["send", "alice", &format!("lunch plan {i}")]);
    }
    search_until_found(&alice, &["search", "plan", "--sender", "bob"]);
    let all = wait_for("every lunch plan", Duration::from_secs(10), || {
        let out = alice.ok(&["search", "lunch", "--limit", "1", "--all"]);
        (out.lines().count() == 3).then_some(out)
    })
    .unwrap();
    let order: Vec<bool> = (1..=3)
        .rev()
        .zip(all.lines())
        .map(|(i, l)| l.contains(&format!("[lunch] plan {i}")))
        .collect();
    assert_eq!(order, vec![true; 3], "{all}");
    let out = alice.run(&["search", "lunch", "--limit", "1"], "");
    assert_success(&out, &["search --limit 1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("more results"));

    // People.
    let people = alice.ok(&["search", "--people", "caro"]);
    assert!(people.starts_with("carol (user "), "{people}");
    let people = json_lines(&alice.ok(&["--json", "search", "--people", "bob"]));
    assert_eq!(people[0]["username"], "bob");
}

// ---------------------------------------------------------------------------------------
// The interactive client in a pseudo-terminal (tmux).

struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"])
            .env_remove("TMUX")
            .env_remove("CHAT_TOKEN")
            .env_remove("CHAT_SERVER");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    fn wait_screen(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        wait_for(what, Duration::from_secs(30), || {
            last = self.screen();
            want(&last).then(|| last.clone())
        })
        .unwrap_or_else(|e| panic!("{e}; the screen:\n{last}"))
    }

    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "chat", "-l", text]);
        self.run(&["send-keys", "-t", "chat", "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn the_interactive_client_sends_and_shows_messages_in_a_terminal() {
    if !Tmux::available() {
        println!("SKIP: tmux is not installed (scripts/deps installs it)");
        return;
    }
    let mut node = Node::start();
    let root = tempfile::tempdir().unwrap();
    let alice = User::new(&node, root.path(), "alice");
    let bob = User::new(&node, root.path(), "bob");
    alice.register_and_login();
    bob.register_and_login();

    let tmux = Tmux {
        socket: format!("chat-cli-test-{}", std::process::id()),
    };
    // The shell records how `chat ui` exited (tmux itself is not always quick to notice).
    let exit_file = root.path().join("ui-exit");
    let command = format!(
        "{} --server {} --token-file {} ui; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_chat"),
        alice.server,
        alice.token_file.display(),
        exit_file.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "110",
        "-y",
        "30",
        &command,
    ]);
    tmux.wait_screen("the UI to connect", |s| s.contains("connected as alice"));

    tmux.type_line("/open bob");
    tmux.wait_screen("the conversation to open", |s| s.contains("Message to bob"));
    tmux.type_line("hello from the terminal");
    tmux.wait_screen("the message to be acked", |s| {
        s.contains("alice: hello from the terminal") && !s.contains("sending")
    });

    // Bob has it, through REST history.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bob_token = bob.token();
    let api = chat_client::HttpApi::new(&node.url()).unwrap();
    let bodies: Vec<String> = rt.block_on(async {
        let me = api.my_profile(&bob_token).await.unwrap();
        let out = bob.ok(&["--json", "history", "alice"]);
        let conversation: chat_types::ConversationId = json_lines(&out)[0]["conversation"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(conversation.is_member(me.user_id));
        api.history(&bob_token, conversation, Default::default())
            .await
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.body)
            .collect()
    });
    assert_eq!(bodies, vec!["hello from the terminal".to_owned()]);

    // A reply appears without any key press.
    bob.ok(&["send", "alice", "hi alice, bob here"]);
    tmux.wait_screen("the reply", |s| s.contains("bob: hi alice, bob here"));

    // Typed while the node is down: pending, then sent once after the reconnect.
    node.stop();
    tmux.wait_screen("the UI to notice", |s| s.contains("disconnected"));
    tmux.type_line("written offline");
    tmux.wait_screen("the pending message", |s| {
        s.contains("alice: written offline (sending")
    });
    node.spawn();
    tmux.wait_screen("the outbox to be sent", |s| {
        s.contains("alice: written offline") && !s.contains("sending") && s.contains("connected as")
    });
    let out = bob.ok(&["--json", "history", "alice"]);
    let bodies: Vec<serde_json::Value> = json_lines(&out)
        .into_iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        vec![
            "hello from the terminal",
            "hi alice, bob here",
            "written offline"
        ]
    );

    // A file from bob shows as an attachment line under his message.
    let png = tiny_png();
    let pic = root.path().join("pic.png");
    std::fs::write(&pic, &png).unwrap();
    bob.ok(&[
        "send",
        "alice",
        "a picture",
        "--file",
        pic.to_str().unwrap(),
    ]);
    let attachment = format!("pic.png ({} B)", png.len());
    tmux.wait_screen("the attachment line", |s| {
        s.contains("bob: a picture") && s.contains(&attachment)
    });
    // /file sends one from here: uploading, then acked, then bob has it.
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "from the terminal\n").unwrap();
    tmux.type_line(&format!("/file {}", notes.display()));
    tmux.wait_screen("the file to be sent", |s| {
        s.contains("notes.txt (18 B)") && !s.contains("uploading") && !s.contains("sending")
    });
    let last = json_lines(&bob.ok(&["--json", "history", "alice", "--limit", "1"]));
    assert_eq!(last[0]["attachments"][0]["name"], "notes.txt");
    // /search shows the hits in the message pane until Esc.
    let mut screen = String::new();
    wait_for("search results", Duration::from_secs(10), || {
        tmux.type_line("/search terminal");
        std::thread::sleep(Duration::from_millis(500));
        screen = tmux.screen();
        (screen.contains("Search: terminal") && screen.contains("alice: hello from the"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; the screen:\n{screen}"));
    tmux.run(&["send-keys", "-t", "chat", "Escape"]);
    tmux.wait_screen("the messages again", |s| {
        !s.contains("Search: terminal") && s.contains("bob: a picture")
    });

    // /quit leaves cleanly and gives the terminal back.
    tmux.type_line("/quit");
    let status = wait_for("the UI to exit", Duration::from_secs(15), || {
        std::fs::read_to_string(&exit_file)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .unwrap_or_else(|e| {
        let ps = Command::new("ps")
            .args(["-eo", "pid,ppid,stat,etimes,args"])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        let ps: Vec<&str> = ps.lines().filter(|l| l.contains("chat")).collect();
        panic!(
            "{e}; the screen:\n{}\nprocesses:\n{}",
            tmux.screen(),
            ps.join("\n")
        )
    });
    let status = status.trim();
    assert_eq!(status, "0", "exit status of chat ui");
    let screen = tmux.screen();
    assert!(
        !screen.contains("Conversations"),
        "the alternate screen was left:\n{screen}"
    );
}
