//! Wiring: opens storage, starts the cluster and the actors, serves peers and clients, and
//! shuts all of it down in order.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use chat_actors::{LocalLogs, Router, RouterBreakage};
use chat_cluster::transport::{
    serve, Channel, PeerError, PeerHandler, PeerHandlerFuture, Transport,
};
use chat_cluster::{ClusterSettings, Metadata, NodeInfo};
use chat_storage::{Breakage, Durability, RocksConversationLog, RocksUserEventLog, Store};
use chat_types::{close, NodeId};
use rand::RngCore;

use crate::auth::Auth;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::media::MediaService;
use crate::metrics::Metrics;
use crate::search::SearchService;
use chat_media::BlobStore;

/// Dispatches peer requests by channel.
struct PeerDispatch {
    meta: Arc<Metadata>,
    router: std::sync::OnceLock<Arc<Router>>,
    media: std::sync::OnceLock<Arc<MediaService>>,
    search: std::sync::OnceLock<Arc<SearchService>>,
}

impl PeerHandler for PeerDispatch {
    fn handle(&self, channel: Channel, payload: Vec<u8>) -> PeerHandlerFuture {
        let meta = self.meta.clone();
        let router = self.router.get().cloned();
        let media = self.media.get().cloned();
        let search = self.search.get().cloned();
        Box::pin(async move {
            match channel {
                Channel::Raft | Channel::Cluster => meta.handle_peer(channel, &payload).await,
                Channel::Actor => match router {
                    Some(r) => r.handle_peer(&payload).await,
                    None => Err(PeerError::ShuttingDown),
                },
                Channel::Media => match media {
                    Some(m) => m.handle_peer(&payload).await,
                    None => Err(PeerError::ShuttingDown),
                },
                Channel::Search => match search {
                    Some(s) => s.handle_peer(&payload).await,
                    None => Err(PeerError::ShuttingDown),
                },
            }
        })
    }
}

/// This node's id: made once, kept in the data directory.
fn node_id(store: &Store) -> anyhow::Result<NodeId> {
    if let Some(raw) = store.local_get("node_id")? {
        let bytes: [u8; 8] = raw
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("stored node id is corrupt"))?;
        return Ok(NodeId(u64::from_be_bytes(bytes)));
    }
    // Node ids must be unique in the cluster; 63 random bits make a collision negligible.
    let id = (rand::rngs::OsRng.next_u64() >> 1).max(1);
    store.local_put("node_id", &id.to_be_bytes())?;
    Ok(NodeId(id))
}

/// Deliberate-breakage switches for tests that must see the delivery checks fail:
/// `CHAT_FAILPOINTS=ack_before_quorum,no_fencing,dedup_not_replicated,no_group_notes`. Debug
/// builds only; a release build refuses to break itself and says so.
fn breakage_from_env() -> (Breakage, RouterBreakage) {
    let mut log = Breakage::default();
    let mut router = RouterBreakage::default();
    let Ok(spec) = std::env::var("CHAT_FAILPOINTS") else {
        return (log, router);
    };
    if !cfg!(debug_assertions) {
        tracing::warn!("CHAT_FAILPOINTS is ignored in release builds");
        return (log, router);
    }
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "ack_before_quorum" => router.ack_before_quorum = true,
            "no_group_notes" => router.no_group_notes = true,
            "no_fencing" => log.no_fencing = true,
            "dedup_not_replicated" => log.dedup_not_replicated = true,
            other => tracing::warn!(failpoint = other, "unknown failpoint ignored"),
        }
        tracing::warn!(failpoint = name, "guarantee deliberately broken");
    }
    (log, router)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("creating {}", config.node.data_dir.display()))?;
    let store = Store::open(&config.node.data_dir.join("db"))
        .with_context(|| format!("opening the database in {}", config.node.data_dir.display()))?;
    let node_id = node_id(&store)?;
    let advertise = NodeInfo {
        http_addr: config
            .node
            .advertise_http_addr
            .clone()
            .unwrap_or_else(|| config.node.http_addr.clone()),
        peer_addr: config
            .node
            .advertise_peer_addr
            .clone()
            .unwrap_or_else(|| config.node.peer_addr.clone()),
    };
    tracing::info!(node = %node_id, %advertise, "starting");

    let peer_listener = tokio::net::TcpListener::bind(&config.node.peer_addr)
        .await
        .with_context(|| format!("binding the peer address {}", config.node.peer_addr))?;
    let transport = Transport::default();
    let settings = ClusterSettings {
        node_id,
        advertise,
        join: config.cluster.join.clone().filter(|j| !j.is_empty()),
        heartbeat_ms: config.cluster.heartbeat_ms,
        election_timeout_min_ms: config.cluster.election_timeout_min_ms,
        election_timeout_max_ms: config.cluster.election_timeout_max_ms,
        failure_timeout_ms: config.cluster.failure_timeout_ms,
    };
    // The peer listener must answer Raft before the Raft node can be elected or joined, so
    // it is served first and learns about the router once that exists.
    let dispatch = Arc::new(PeerDispatch {
        meta: Metadata::start(store.clone(), settings, transport).await?,
        router: std::sync::OnceLock::new(),
        media: std::sync::OnceLock::new(),
        search: std::sync::OnceLock::new(),
    });
    let peer_server = serve(peer_listener, dispatch.clone());
    let meta = dispatch.meta.clone();

    let durability = if config.node.fsync {
        Durability::Fsync
    } else {
        Durability::Wal
    };
    let (log_breakage, router_breakage) = breakage_from_env();
    let conversations =
        Arc::new(RocksConversationLog::new(store.clone(), durability).with_breakage(log_breakage));
    let logs = LocalLogs {
        conversations: conversations.clone(),
        events: Arc::new(RocksUserEventLog::new(store.clone(), durability)),
    };
    let router = Router::with_breakage(meta.clone(), logs, router_breakage);
    let _ = dispatch.router.set(router.clone());
    let blobs = BlobStore::open(&config.node.data_dir.join("media")).with_context(|| {
        format!(
            "opening the media store in {}",
            config.node.data_dir.display()
        )
    })?;
    let s3 = match &config.media.s3 {
        Some(c) => {
            let store = crate::s3::S3Store::new(c).context("configuring the S3 media store")?;
            store
                .ensure_bucket()
                .await
                .context("reaching the S3 media store")?;
            tracing::info!(endpoint = %c.endpoint, bucket = %c.bucket, "media blobs in S3");
            Some(Arc::new(store))
        }
        None => None,
    };
    let media = MediaService::new(blobs, meta.clone(), config.node.fsync, s3);
    let _ = dispatch.media.set(media.clone());
    let rebalancer = media.start_rebalancer();
    let search = SearchService::open(
        &config.node.data_dir.join("search"),
        conversations,
        meta.clone(),
        config.search.clone(),
    )
    .with_context(|| {
        format!(
            "opening the search index in {}",
            config.node.data_dir.display()
        )
    })?;
    let _ = dispatch.search.set(search.clone());
    let indexer = search.start_indexer();
    let upload_sweeper = {
        let media = media.clone();
        let expiry = config.media.upload_expiry_ms;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(600)).await;
                match media.uploads.expire(expiry, crate::auth::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "stale resumable uploads removed"),
                    Err(e) => tracing::warn!(error = %e, "sweeping stale uploads failed"),
                }
            }
        })
    };

    let metrics = Arc::new(Metrics::default());
    if let Some(url) = &config.push.webhook_url {
        let url = crate::push::WebhookUrl::parse(url).map_err(anyhow::Error::msg)?;
        let sink =
            crate::push::WebhookPush::start(&config.push, url, meta.clone(), metrics.clone());
        router.set_offline_push(sink);
        tracing::info!("offline push through the configured webhook");
    }
    let state = web::Data::new(AppState {
        auth: Auth::new(
            meta.clone(),
            config.auth.hash_concurrency,
            config.auth.argon2_memory_kib,
        ),
        config: config.clone(),
        meta: meta.clone(),
        router: router.clone(),
        metrics: metrics.clone(),
        runtime: tokio::runtime::Handle::current(),
        limits: crate::ratelimit::RateLimits::new(&config.rate_limits),
        media: media.clone(),
        search: search.clone(),
    });
    let json_limit = config.limits.max_frame_bytes as usize;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(json_limit)
                    .error_handler(http::rest::json_error),
            )
            .configure(http::routes)
    })
    .disable_signals()
    // Small frames go out at once: Nagle's algorithm with delayed ACKs costs ~40 ms a turn.
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .bind(&config.node.http_addr)
    .with_context(|| format!("binding the HTTP address {}", config.node.http_addr))?
    .run();
    let handle = server.handle();
    tracing::info!(http = %config.node.http_addr, peer = %config.node.peer_addr, "serving");
    let server_task = tokio::spawn(server);

    // A node whose metadata log has failed (its Raft core stopped, e.g. on a full disk)
    // would go on serving with a view of the cluster that no longer moves: it stops instead,
    // its share moves to the other nodes, and its supervisor restarts it.
    let fatal = tokio::select! {
        _ = shutdown_signal() => None,
        reason = meta.stopped_on_error() => Some(reason),
    };
    match &fatal {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(%reason, "the metadata log failed; stopping the node"),
    }
    router.close_all(close::GOING_AWAY, "node is shutting down; reconnect");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    handle.stop(true).await;
    let _ = server_task.await;
    if let Some(task) = indexer {
        task.abort();
    }
    upload_sweeper.abort();
    rebalancer.abort();
    meta.shutdown().await;
    peer_server.abort();
    let flushed = store.flush().context("flushing the database");
    if let Some(reason) = fatal {
        anyhow::bail!(
            "stopped because the metadata log failed ({reason}); restart the node once the \
             cause (such as a full disk) is gone"
        );
    }
    flushed?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
