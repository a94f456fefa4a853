//! The node's configuration: a TOML file, then `CHAT_*` environment variables, then flags.
//! `config/example.toml` holds every field with its default; a test parses it.

use std::path::PathBuf;

use serde::Deserialize;

/// The root of the node's configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub push: PushConfig,
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    pub media: MediaConfig,
    pub search: SearchConfig,
}

/// Uploads, downloads and thumbnails.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest upload, bytes; a larger `Content-Length` is refused before the body is read.
    pub max_upload_bytes: u64,
    /// Bytes of uploads each user may keep (originals; thumbnails are not counted).
    pub quota_bytes: u64,
    /// Images with more pixels than this are refused from their header (decompression bombs).
    pub max_image_pixels: u64,
    /// How long a signed media link (`POST /v1/media/{id}/link`) stays valid, ms.
    pub link_ttl_ms: u64,
    /// Resumable uploads untouched this long are removed, ms.
    pub upload_expiry_ms: u64,
    /// Keep blobs in an S3-compatible store instead of on the ring's nodes.
    pub s3: Option<crate::s3::S3Config>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_bytes: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            link_ttl_ms: 3_600_000,
            upload_expiry_ms: 24 * 3_600_000,
            s3: None,
        }
    }
}

/// The full-text index of the messages this node holds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Off: nothing is indexed here and queries skip this node's index.
    pub enabled: bool,
    /// How often the indexer looks for new messages, ms (a message is findable within about
    /// this long of its write).
    pub interval_ms: u64,
    /// How long a query waits for the other nodes' answers, ms.
    pub fanout_timeout_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enabled: true,
            interval_ms: 200,
            fanout_timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where RocksDB keeps this node's data (created when missing).
    pub data_dir: PathBuf,
    /// Client HTTP and WebSocket listener.
    pub http_addr: String,
    /// Node-to-node listener (Raft and actor messages).
    pub peer_addr: String,
    /// The HTTP address other nodes and clients are told; defaults to `http_addr`.
    pub advertise_http_addr: Option<String>,
    /// The peer address other nodes are told; defaults to `peer_addr`.
    pub advertise_peer_addr: Option<String>,
    /// fsync every conversation-log write (`true`) or rely on the WAL (`false`).
    pub fsync: bool,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Threads of the async runtime; 0: one per core. Storage writes run inline on these
    /// threads. More threads than cores once let direct-message floods use the cores a
    /// waiting write left idle; since a client's queued sends share one write they no longer
    /// carry more, and they cost group fan-out latency (docs/operations.md has the figures).
    pub worker_threads: usize,
}

impl NodeConfig {
    /// The async runtime's thread count (`worker_threads`, or the automatic choice).
    pub fn runtime_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./data"),
            http_addr: "127.0.0.1:8080".into(),
            peer_addr: "127.0.0.1:9080".into(),
            advertise_http_addr: None,
            advertise_peer_addr: None,
            fsync: false,
            log_format: "text".into(),
            worker_threads: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Peer address of any member to join; empty to start (or restart) on its own.
    pub join: Option<String>,
    /// Raft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Raft election timeout range.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A member the Raft leader cannot reach for this long is marked down: its conversations
    /// and users move to the other nodes until it answers again. 0 turns detection off.
    pub failure_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            join: None,
            heartbeat_ms: 150,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            failure_timeout_ms: 1500,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket frame; larger ones close the connection with 1009.
    pub max_frame_bytes: u32,
    /// Largest message body in bytes.
    pub max_body_bytes: u32,
    /// Most messages in one history page.
    pub max_history_page: u32,
    /// Pushes queued for one connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Malformed frames in a row before the connection is closed.
    pub max_bad_frames: u32,
    /// Most members a group may have.
    pub max_group_members: u32,
    /// Most targets (users and groups) of one broadcast.
    pub max_broadcast_targets: u32,
    /// Clients must send something this often.
    pub heartbeat_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            max_history_page: 200,
            outbound_queue: 1024,
            max_bad_frames: 10,
            max_group_members: 100_000,
            max_broadcast_targets: 10_000,
            heartbeat_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Password hashes computed at once (each holds ~19 MiB and a core for tens of ms).
    pub hash_concurrency: usize,
    /// argon2id memory cost of new password hashes, KiB (19456, OWASP's minimum, by default;
    /// lower only for tests).
    pub argon2_memory_kib: u32,
    /// File holding the operator token for `/v1/admin` (the `CHAT_ADMIN_TOKEN` environment
    /// variable takes precedence). Without either, the admin API is disabled.
    pub admin_token_file: Option<PathBuf>,
    /// The operator token, read from the environment or `admin_token_file` at start.
    #[serde(skip)]
    pub admin_token: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            argon2_memory_kib: 19_456,
            admin_token_file: None,
            admin_token: None,
        }
    }
}

/// Offline push notifications through a gateway's webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// `http://host:port/path` of the push gateway; none: no offline push.
    pub webhook_url: Option<String>,
    /// Tries per notification (with backoff from 250 ms, doubling).
    pub attempts: u32,
    /// How long one try waits for the gateway.
    pub timeout_ms: u64,
    /// Notifications waiting to be sent; beyond this they are dropped (and counted).
    pub queue: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            webhook_url: None,
            attempts: 5,
            timeout_ms: 5_000,
            queue: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads the operator token from `CHAT_ADMIN_TOKEN` or `auth.admin_token_file`.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        if let Some(s3) = &mut self.media.s3 {
            if let Ok(k) = std::env::var("CHAT_S3_SECRET_ACCESS_KEY") {
                s3.secret_access_key = Some(k.trim().to_owned());
            } else if let Some(path) = &s3.secret_access_key_file {
                let k = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                s3.secret_access_key = Some(k.trim().to_owned());
            }
        }
        if let Ok(t) = std::env::var("CHAT_ADMIN_TOKEN") {
            if !t.trim().is_empty() {
                self.auth.admin_token = Some(t.trim().to_owned());
                return Ok(());
            }
        }
        if let Some(path) = &self.auth.admin_token_file {
            let t = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            self.auth.admin_token = Some(t.trim().to_owned());
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        for (name, addr) in [
            ("node.http_addr", &self.node.http_addr),
            ("node.peer_addr", &self.node.peer_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be host:port with a numeric host, got {addr:?}"
                )));
            }
        }
        if !matches!(self.node.log_format.as_str(), "text" | "json") {
            return bad("node.log_format must be \"text\" or \"json\"");
        }
        if self.node.worker_threads > 1024 {
            return bad("node.worker_threads is at most 1024 (0: one per core)");
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.election_timeout_min_ms <= c.heartbeat_ms {
            return bad("cluster.election_timeout_min_ms must exceed cluster.heartbeat_ms > 0");
        }
        if c.failure_timeout_ms != 0 && c.failure_timeout_ms < 2 * c.heartbeat_ms {
            return bad("cluster.failure_timeout_ms must be 0 (off) or at least two heartbeats");
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return bad("cluster.election_timeout_max_ms must exceed election_timeout_min_ms");
        }
        let l = &self.limits;
        if l.max_frame_bytes < 1024
            || l.max_body_bytes == 0
            || l.max_body_bytes >= l.max_frame_bytes
        {
            return bad(
                "limits: need max_frame_bytes >= 1024 and 0 < max_body_bytes < max_frame_bytes",
            );
        }
        if l.max_history_page == 0 || l.outbound_queue == 0 || l.heartbeat_ms < 1000 {
            return bad(
                "limits: max_history_page and outbound_queue must be > 0, heartbeat_ms >= 1000",
            );
        }
        let m = &self.media;
        if m.max_upload_bytes == 0 || m.quota_bytes == 0 || m.max_image_pixels == 0 {
            return bad("media: max_upload_bytes, quota_bytes and max_image_pixels must be > 0");
        }
        if m.link_ttl_ms < 1000 {
            return bad("media.link_ttl_ms must be at least 1000");
        }
        if self.search.interval_ms == 0 || self.search.fanout_timeout_ms == 0 {
            return bad("search: interval_ms and fanout_timeout_ms must be > 0");
        }
        if self.auth.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return bad("the admin token must be at least 16 characters");
        }
        if let Some(url) = &self.push.webhook_url {
            crate::push::WebhookUrl::parse(url).map_err(ConfigError::Invalid)?;
        }
        self.rate_limits.validate().map_err(ConfigError::Invalid)?;
        if self.push.attempts == 0 || self.push.queue == 0 || self.push.timeout_ms == 0 {
            return bad("push: attempts, queue and timeout_ms must be > 0");
        }
        if self.auth.argon2_memory_kib < 8 {
            return bad("auth.argon2_memory_kib must be at least 8");
        }
        if self.auth.hash_concurrency == 0 {
            return bad("auth.hash_concurrency must be > 0");
        }
        Ok(())
    }

    pub fn wire_limits(&self) -> chat_types::Limits {
        chat_types::Limits {
            max_frame_bytes: self.limits.max_frame_bytes,
            max_body_bytes: self.limits.max_body_bytes,
            max_history_page: self.limits.max_history_page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.toml");
        let cfg = Config::from_file(&path).expect("example config parses");
        cfg.validate().expect("example config is valid");
        assert_eq!(cfg.node.http_addr, NodeConfig::default().http_addr);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("[node]\nhttp_adr = \"x\"").is_err());
        let mut cfg = Config::default();
        cfg.node.http_addr = "localhost".into();
        assert!(cfg.validate().is_err());
        let mut cfg = Config::default();
        cfg.cluster.election_timeout_min_ms = 10;
        assert!(cfg.validate().is_err());
        let mut cfg = Config::default();
        cfg.node.worker_threads = 100_000;
        assert!(cfg.validate().is_err());
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn runtime_threads_default_to_one_per_core_and_a_set_value_is_kept() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(NodeConfig::default().runtime_threads(), cores);
        let cfg: Config = toml::from_str("[node]\nworker_threads = 3").expect("parses");
        assert_eq!(cfg.node.runtime_threads(), 3);
    }
}
