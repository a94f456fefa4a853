//! `chat-node status` and `chat-node remove`: the operator commands, speaking to any node's
//! admin API over HTTP with the operator token from `CHAT_ADMIN_TOKEN`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// Sends one HTTP/1.1 request and returns the status and the body.
fn request(node: &str, method: &str, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
    let host = node
        .strip_prefix("http://")
        .unwrap_or(node)
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP reply from {host}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line from {host}"))?;
    Ok((status, body.to_owned()))
}

fn token() -> anyhow::Result<String> {
    std::env::var("CHAT_ADMIN_TOKEN")
        .map_err(|_| anyhow!("set CHAT_ADMIN_TOKEN to the cluster's operator token"))
}

/// One member's own counts, asked of that member (`None` when it does not answer).
fn local_counts(http: &str, token: &str) -> Option<serde_json::Value> {
    let (code, body) = request(http, "GET", "/v1/admin/cluster", token).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["local"].clone())
}

pub fn status(node: &str) -> anyhow::Result<()> {
    let token = token()?;
    let (code, body) = request(node, "GET", "/v1/admin/cluster", &token)?;
    if code != 200 {
        bail!("{node} answered {code}: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("decoding the status")?;
    println!(
        "leader {}  ring epoch {}  (asked node {})",
        v["leader"], v["ring_epoch"], v["node_id"]
    );
    println!(
        "{:<22} {:<7} {:<5} {:<22} {:<22} {:>11} {:>13} {:>8}",
        "node", "role", "ring", "http", "peer", "connections", "conversations", "sessions"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let role = if m["voter"] == true {
            "voter"
        } else {
            "learner"
        };
        let ring = if m["in_ring"] == false { "down" } else { "in" };
        let http = m["http_addr"].as_str().unwrap_or("?");
        let counts = local_counts(http, &token);
        let count = |k: &str| {
            counts
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| c[k].to_string())
        };
        println!(
            "{:<22} {:<7} {:<5} {:<22} {:<22} {:>11} {:>13} {:>8}",
            m["node_id"],
            role,
            ring,
            http,
            m["peer_addr"].as_str().unwrap_or("?"),
            count("connections"),
            count("conversation_actors"),
            count("session_actors"),
        );
    }
    Ok(())
}

pub fn remove(node: &str, id: u64) -> anyhow::Result<()> {
    let (code, body) = request(
        node,
        "POST",
        &format!("/v1/admin/nodes/{id}/remove"),
        &token()?,
    )?;
    if code != 200 {
        bail!("{node} answered {code}: {body}");
    }
    println!("node {id} removed");
    Ok(())
}

pub fn drain(node: &str) -> anyhow::Result<()> {
    let (code, body) = request(node, "POST", "/v1/admin/drain", &token()?)?;
    if code != 200 {
        bail!("{node} answered {code}: {body}");
    }
    println!("{node} drained: it left the cluster and closed its clients; stop it now");
    Ok(())
}
