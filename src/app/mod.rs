//! Wiring: the gateway as four subsystems started in order — the core (`core`: database,
//! registry, presence restored), the pipeline (`pipeline`: event writer, outbox bound, relay
//! runners, presence, rates), the inputs (`inputs`: every source) and the API (`http`) — and
//! stopped in the reverse order, each stage awaited before the next is told to stop: the API
//! and the sources stop taking input → the pipeline drains what they handed over and presence
//! writes its final checkpoint → the database closes.

mod core;
mod error;
mod http;
mod inputs;
mod pipeline;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::Db;
use crate::telemetry::Metrics;
pub use error::Error;

/// A started gateway: its addresses and the means to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    /// The GB/T 28181 SIP (UDP) address, when the source is enabled.
    pub sip_addr: Option<SocketAddr>,
    /// The GA/T 1400 view-library address, when enabled.
    pub gat1400_addr: Option<SocketAddr>,
    /// The QUIC hub's address (UDP), when `[quic] listen` is set.
    pub quic_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    api: http::Api,
    inputs: Stage,
    pipeline: Stage,
    db: Db,
}

/// Tasks stopped together: a token to tell them, a tracker to wait for them.
#[derive(Default)]
struct Stage {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    /// Tells the stage's tasks to stop and waits for them, at most `grace`.
    async fn stop(&self, name: &str, grace: Duration) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            warn!(stage = name, grace_s = grace.as_secs(), "Some tasks did not stop in time.");
        }
    }
}

/// Starts everything; returns once the API listens.
pub async fn start(config: Config) -> Result<Running, Error> {
    let started_at = crate::clock::now_ms();
    // One TLS provider for the whole process (ring): libraries that build their own rustls
    // configuration (the MQTT client's `mqtts://`) take the process default, and rustls
    // refuses to guess one. Already installed (a second gateway in one process): kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Descriptors: the soft limit raised to the hard one, then split between the listeners.
    let fds = crate::net::Budget::split(crate::net::fds::raise_nofile());
    info!(
        nofile = fds.nofile,
        sip_tcp = fds.sip_tcp,
        mqtt = fds.mqtt,
        gat1400 = fds.gat1400,
        http = fds.http,
        "Connection caps from the open-file limit."
    );
    let config = Arc::new(config);
    let url = config.database_url();
    info!(database = %crate::db::redact(&url), "Connecting to the database.");
    let db = Db::connect(&url, config.database.max_connections).await?;
    let registry = core::open_registry(&db, &config).await?;
    let presence = core::restore_presence(&db, &registry).await?;
    let metrics = Metrics::new();
    let (pipeline, inputs) = (Stage::default(), Stage::default());
    let streams = inputs::stream_board(&config);
    let p = pipeline::spawn_pipeline(&config, &db, &registry, presence, &metrics, &streams, &pipeline).await?;
    let shared = crate::sources::Shared {
        registry: registry.clone(),
        presence: p.presence.clone(),
        metrics: metrics.clone(),
        rejections: p.rejections.clone(),
        events: p.events.clone(),
    };
    let deps = inputs::Deps { shared, media: p.media.clone(), impaired: p.impaired.clone(), fds: &fds, streams };
    let i = inputs::spawn_sources(&config, deps, &inputs.cancel, &inputs.tracker).await?;
    // Patrol pulls channels through the media board the sources publish on.
    let patrol_deps = crate::patrol::Deps {
        registry: registry.clone(),
        board: i.streams.clone(),
        sessions: i.gb_sessions.clone(),
        images: p.media.clone(),
    };
    let patrol_settings = crate::patrol::Settings::from_config(&config);
    let patrol = crate::patrol::spawn(patrol_settings, patrol_deps, inputs.cancel.clone(), &inputs.tracker).await;
    let state = crate::api::AppState {
        registry,
        presence: p.presence,
        rate: p.rate,
        metrics: metrics.clone(),
        tz: config.timezone(),
        config: config.clone(),
        started_at,
        writer: p.writer,
        import_lock: Arc::default(),
        rate_cache: Arc::default(),
        rejections: p.rejections,
        events: p.events,
        gb_sessions: i.gb_sessions,
        media: p.media,
        profiles: i.profiles,
        streams: i.streams,
        patrol,
        relay_targets: Arc::new(p.targets),
        outbox_gate: p.outbox_gate,
    };
    let api = http::spawn_api(&config, state, &fds).await?;
    let (sip_addr, gat1400_addr, quic_addr) = (i.sip_addr, i.gat1400_addr, i.quic_addr);
    Ok(Running { http_addr: api.addr, sip_addr, gat1400_addr, quic_addr, metrics, api, inputs, pipeline, db })
}

impl Running {
    /// Stops in order, awaiting each stage (bounded) before the next.
    pub async fn shutdown(self) {
        info!("Shutting down: the API and the sources stop taking input.");
        self.api.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.api.task).await.is_err() {
            warn!("HTTP connections did not close within 5 s; dropping them.");
        }
        self.inputs.stop("inputs", Duration::from_secs(10)).await;
        info!("Shutting down: the pipeline drains and presence writes its final checkpoint.");
        self.pipeline.stop("pipeline", Duration::from_secs(15)).await;
        info!("Shutting down: closing the database.");
        self.db.close().await;
        info!("vigil stopped.");
    }
}

/// Runs until `shutdown` is cancelled, then stops in order.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let running = start(config).await?;
    shutdown.cancelled().await;
    running.shutdown().await;
    Ok(())
}
