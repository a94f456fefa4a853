//! Counters for `/metrics`, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub ws_connections_total: AtomicU64,
    pub ws_frames_in_total: AtomicU64,
    pub messages_appended_total: AtomicU64,
    pub messages_deduplicated_total: AtomicU64,
    pub send_batches_total: AtomicU64,
    pub client_errors_total: AtomicU64,
    pub registrations_total: AtomicU64,
    pub logins_total: AtomicU64,
    pub push_sent_total: AtomicU64,
    pub push_failed_total: AtomicU64,
    pub push_dropped_total: AtomicU64,
    pub media_uploads_total: AtomicU64,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub connections: usize,
    pub conversations: usize,
    pub sessions: usize,
    pub peer_push_requests: u64,
    pub ring_epoch: u64,
    pub ring_members: usize,
    pub is_leader: bool,
    pub ready: bool,
    pub users: usize,
    pub messages_indexed: u64,
    pub index_backlog: usize,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        line(
            "chat_ws_connections_total",
            "counter",
            "WebSocket connections accepted.",
            c(&self.ws_connections_total),
        );
        line(
            "chat_ws_frames_in_total",
            "counter",
            "WebSocket frames received.",
            c(&self.ws_frames_in_total),
        );
        line(
            "chat_messages_appended_total",
            "counter",
            "Messages appended through this node.",
            c(&self.messages_appended_total),
        );
        line(
            "chat_messages_deduplicated_total",
            "counter",
            "Sends answered from the dedup record.",
            c(&self.messages_deduplicated_total),
        );
        line(
            "chat_send_batches_total",
            "counter",
            "Requests to conversation owners carrying a client's sends (sends queued behind each other share one).",
            c(&self.send_batches_total),
        );
        line(
            "chat_client_errors_total",
            "counter",
            "Error frames and error replies sent to clients.",
            c(&self.client_errors_total),
        );
        line(
            "chat_registrations_total",
            "counter",
            "Accounts registered through this node.",
            c(&self.registrations_total),
        );
        line(
            "chat_push_sent_total",
            "counter",
            "Offline push notifications the gateway accepted.",
            c(&self.push_sent_total),
        );
        line(
            "chat_push_failed_total",
            "counter",
            "Offline push notifications given up after retries.",
            c(&self.push_failed_total),
        );
        line(
            "chat_push_dropped_total",
            "counter",
            "Offline push notifications dropped on a full queue.",
            c(&self.push_dropped_total),
        );
        line(
            "chat_logins_total",
            "counter",
            "Successful logins through this node.",
            c(&self.logins_total),
        );
        line(
            "chat_peer_push_requests_total",
            "counter",
            "Push requests sent to other nodes (batched per node).",
            g.peer_push_requests,
        );
        line(
            "chat_connections",
            "gauge",
            "Live WebSocket connections on this node.",
            g.connections as u64,
        );
        line(
            "chat_conversation_actors",
            "gauge",
            "Conversation actors running on this node.",
            g.conversations as u64,
        );
        line(
            "chat_session_actors",
            "gauge",
            "User session actors running on this node.",
            g.sessions as u64,
        );
        line(
            "chat_ring_epoch",
            "gauge",
            "Raft log index of the membership the ring was built from.",
            g.ring_epoch,
        );
        line(
            "chat_ring_members",
            "gauge",
            "Nodes in the ring.",
            g.ring_members as u64,
        );
        line(
            "chat_raft_leader",
            "gauge",
            "1 when this node leads the metadata group.",
            u64::from(g.is_leader),
        );
        line(
            "chat_ready",
            "gauge",
            "1 when this node is a member with a known leader.",
            u64::from(g.ready),
        );
        line(
            "chat_users",
            "gauge",
            "Registered accounts.",
            g.users as u64,
        );
        line(
            "chat_media_uploads_total",
            "counter",
            "Media uploads finished through this node.",
            c(&self.media_uploads_total),
        );
        line(
            "chat_search_indexed_total",
            "counter",
            "Messages this node's search index took since start.",
            g.messages_indexed,
        );
        line(
            "chat_search_backlog",
            "gauge",
            "Messages held here and not yet indexed (counted up to one batch).",
            g.index_backlog as u64,
        );
        out
    }
}
