//! Offline push to a gateway: an HTTP POST of a documented JSON body per notice, retried with
//! backoff. Plain `http://` only (a gateway next to the cluster); see docs/operations.md.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::{OfflineNotice, OfflinePush};
use chat_cluster::Metadata;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::config::PushConfig;
use crate::metrics::Metrics;

/// Deliveries to the gateway in flight at once.
const PARALLEL: usize = 16;

/// `http://host:port/path`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host_port: String,
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("push.webhook_url must start with http://")?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host_port.is_empty() || !host_port.contains(':') {
            return Err("push.webhook_url needs host:port".into());
        }
        Ok(WebhookUrl {
            host_port: host_port.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Queues notices and posts them from background tasks; never blocks the caller.
pub struct WebhookPush {
    queue: mpsc::Sender<OfflineNotice>,
    metrics: Arc<Metrics>,
}

impl WebhookPush {
    pub fn start(
        config: &PushConfig,
        url: WebhookUrl,
        meta: Arc<Metadata>,
        metrics: Arc<Metrics>,
    ) -> Arc<WebhookPush> {
        let (tx, mut rx) = mpsc::channel::<OfflineNotice>(config.queue);
        let attempts = config.attempts;
        let timeout = Duration::from_millis(config.timeout_ms);
        let worker_metrics = metrics.clone();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(PARALLEL));
            while let Some(notice) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let body = notice_body(&notice, &meta);
                let url = url.clone();
                let metrics = worker_metrics.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    deliver(&url, &body, attempts, timeout, &metrics).await;
                });
            }
        });
        Arc::new(WebhookPush { queue: tx, metrics })
    }
}

impl OfflinePush for WebhookPush {
    fn notify(&self, notice: OfflineNotice) {
        if self.queue.try_send(notice).is_err() {
            Metrics::inc(&self.metrics.push_dropped_total);
            tracing::warn!("push queue full; a notification was dropped");
        }
    }
}

/// The JSON posted to the gateway (documented in docs/operations.md). Without preview, only
/// who is to be notified and that something happened.
pub fn notice_body(n: &OfflineNotice, meta: &Metadata) -> String {
    if !n.preview {
        return json!({
            "user_id": n.user,
            "event_seq": n.event_seq,
            "ts_ms": n.message.ts_ms,
            "preview": false,
        })
        .to_string();
    }
    let sender_username = meta.read(|s| s.user(n.message.sender).map(|a| a.username.clone()));
    json!({
        "user_id": n.user,
        "event_seq": n.event_seq,
        "ts_ms": n.message.ts_ms,
        "preview": true,
        "conversation": n.message.conversation,
        "seq": n.message.seq,
        "sender": n.message.sender,
        "sender_username": sender_username,
        "body": n.message.body.chars().take(200).collect::<String>(),
    })
    .to_string()
}

async fn deliver(
    url: &WebhookUrl,
    body: &str,
    attempts: u32,
    timeout: Duration,
    metrics: &Metrics,
) {
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=attempts.max(1) {
        match tokio::time::timeout(timeout, post(url, body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                Metrics::inc(&metrics.push_sent_total);
                return;
            }
            Ok(Ok(status)) if (400..500).contains(&status) && status != 429 => {
                tracing::warn!(status, "push gateway refused a notification; not retried");
                break;
            }
            Ok(Ok(status)) => tracing::debug!(status, attempt, "push gateway answered; retrying"),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, attempt, "push gateway unreachable; retrying")
            }
            Err(_) => tracing::debug!(attempt, "push gateway timed out; retrying"),
        }
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
    Metrics::inc(&metrics.push_failed_total);
}

/// One HTTP/1.1 POST; returns the status code.
async fn post(url: &WebhookUrl, body: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(&url.host_port).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_port,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line from the push gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_host_port_and_path() {
        assert_eq!(
            WebhookUrl::parse("http://127.0.0.1:9999/push").expect("valid"),
            WebhookUrl {
                host_port: "127.0.0.1:9999".into(),
                path: "/push".into()
            }
        );
        assert_eq!(WebhookUrl::parse("http://gw:80").expect("valid").path, "/");
        for bad in ["https://gw:443/x", "gw:80/x", "http:///x", "http://gw/x"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
