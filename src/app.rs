//! Wiring: connects the database, loads the registry, restores presence, starts the
//! presence, rate and HTTP tasks on one `TaskTracker` with a `CancellationToken` tree, and
//! shuts them down in order, narrating each step: the sources and HTTP stop taking input →
//! presence writes its final checkpoint → the writers drain → the pool closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api::{self, AppState};
use crate::clock::now_ms;
use crate::config::Config;
use crate::db::Db;
use crate::presence::runner::WriterHealth;
use crate::presence::{self, PresenceTable};
use crate::registry::{Admission, NewDevice, Org, OrgKind, Protocol, Registry};
use crate::telemetry::Metrics;

/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::Error),
    #[error("presence: {0}")]
    Presence(sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Gb28181(#[from] crate::sources::gb28181::Error),
    #[error(transparent)]
    Mqtt(#[from] crate::sources::mqtt::Error),
    #[error(transparent)]
    Gat1400(#[from] crate::sources::gat1400::Error),
    #[error(transparent)]
    Link(#[from] crate::link::hub::Error),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Db(e) => e.kind(),
            Error::Registry(e) => e.kind(),
            Error::Presence(e) => crate::db::sqlx_kind(e),
            Error::Bind { .. } => crate::error::ErrorKind::Unavailable,
            Error::Config(_) => crate::error::ErrorKind::InvalidInput,
            Error::Gb28181(e) => e.kind(),
            Error::Mqtt(e) => e.kind(),
            Error::Gat1400(e) => e.kind(),
            Error::Link(e) => e.kind(),
        }
    }
}

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
    cancel: CancellationToken,
    sources_cancel: CancellationToken,
    http_cancel: CancellationToken,
    tracker: TaskTracker,
    http: tokio::task::JoinHandle<()>,
    db: Db,
}

/// Turns the config's org seed into orgs (validated already).
fn seed_orgs(config: &Config) -> Vec<Org> {
    config
        .orgs
        .iter()
        .filter_map(|o| {
            Some(Org {
                id: o.id.clone(),
                name: o.name.clone(),
                kind: OrgKind::parse(&o.kind)?,
                parent_id: o.parent.clone(),
                gb_prefix: o.gb_prefix.clone(),
            })
        })
        .collect()
}

/// The relay's routes and sinks from `[[upstreams]]`. GA/T 1400 upstreams take the kinds it
/// has standard objects for (the others through the extension path, where configured);
/// check-config refuses protocols that are not built (GB/T 28181 cascade).
/// A configured upstream's sink.
enum Upstream {
    Gat1400(Box<crate::sinks::gat1400::Gat1400>),
    Link(Box<crate::link::sink::Link>),
}

impl Upstream {
    fn protocol(&self) -> &'static str {
        match self {
            Upstream::Gat1400(_) => "gat1400",
            Upstream::Link(_) => "quic",
        }
    }
}

/// This gateway's certificates for the QUIC link, from `[quic]`.
fn link_identity(config: &Config) -> Result<crate::link::tls::Identity, Error> {
    let q = &config.quic;
    crate::link::tls::Identity::load(q.cert.as_ref(), q.key.as_ref(), q.ca.as_ref())
        .map_err(|e| Error::Config(format!("quic: {e}")))
}

fn relay_plan(
    config: &Config,
    media: &crate::media::MediaStore,
    db: &Db,
) -> Result<(crate::events::Relay, Vec<(String, Upstream)>), Error> {
    use crate::event::EventKind;
    let tz = config.timezone();
    let mut relay = crate::events::Relay::none(&config.gateway.id, tz);
    let mut routes = Vec::new();
    let mut sinks = Vec::new();
    for u in &config.upstreams {
        let wanted: Vec<EventKind> = if u.events.is_empty() {
            EventKind::ALL.to_vec()
        } else {
            u.events.iter().filter_map(|k| EventKind::parse(k)).collect()
        };
        if u.protocol == "quic" {
            // A hub takes every kind: it relays them on by its own routes.
            let link = crate::link::sink::Link::new(
                &u.url,
                &u.server_name,
                link_identity(config)?,
                &config.gateway.id,
                &config.gateway.name,
                media.clone(),
            )
            .map_err(|e| Error::Config(format!("upstreams {}: {e}", u.name)))?;
            routes.push((u.name.clone(), wanted));
            sinks.push((u.name.clone(), Upstream::Link(Box::new(link))));
            continue;
        }
        if u.protocol != "gat1400" {
            warn!(upstream = %u.name, protocol = %u.protocol, "Relaying over this protocol is not built yet; the upstream is ignored.");
            continue;
        }
        let subscription = u.mode == "subscription";
        let kinds: Vec<EventKind> = wanted
            .iter()
            .copied()
            .filter(|k| {
                if subscription {
                    // What subscriptions have categories for: faces, vehicles, device status.
                    crate::outbox::subscriptions::category(*k).is_some()
                } else {
                    crate::sinks::gat1400::KINDS.contains(k)
                        || !u.extension.is_empty() && crate::sinks::gat1400::EXTENSION_KINDS.contains(k)
                }
            })
            .collect();
        let left: Vec<&str> = u
            .events
            .iter()
            .map(String::as_str)
            .filter(|k| EventKind::parse(k).is_none_or(|k| !kinds.contains(&k)))
            .collect();
        if !left.is_empty() {
            warn!(upstream = %u.name, kinds = ?left, "GA/T 1400 has no standard object for these kinds; set `extension` on this upstream (the district's interface document names the path) to relay them.");
        }
        let mut sink =
            crate::sinks::gat1400::Gat1400::new(&u.url, &u.user_id, &u.password, media.clone(), tz, &u.extension)
                .map_err(|e| Error::Config(format!("upstreams {}: {e}", u.name)))?;
        if subscription {
            sink = sink.subscription_mode(db.clone(), &u.name);
            info!(upstream = %u.name, "Subscription mode: records wait for the upper view library's subscriptions at /VIID/Subscribes.");
        }
        routes.push((u.name.clone(), kinds));
        sinks.push((u.name.clone(), Upstream::Gat1400(Box::new(sink))));
    }
    relay.routes = Arc::new(crate::outbox::Routes(routes));
    Ok((relay, sinks))
}

/// Starts everything; returns once the API listens.
/// Deletes quarantined devices no operator approved within `ttl`: at start, then every
/// tenth of `ttl` (at most hourly), so an id flood's leftovers do not stay for good.
async fn expire_quarantine(
    registry: Registry,
    presence: presence::runner::PresenceHandle,
    metrics: Metrics,
    ttl: std::time::Duration,
    cancel: CancellationToken,
) {
    let every = (ttl / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
    loop {
        match registry.expire_quarantined(now_ms()).await {
            Ok(keys) if !keys.is_empty() => {
                info!(devices = keys.len(), ttl = %humantime::format_duration(ttl), "Quarantined devices no one approved have expired and were deleted.");
                metrics.quarantine_expired.inc_by(keys.len() as u64);
                for k in keys {
                    let _ = presence.forget(k).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Cannot delete expired quarantined devices; trying again later."),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The device password every config key ships with (what GB/T 28181 devices come with).
const SHIPPED_DEVICE_PASSWORD: &str = "12345678";

pub async fn start(config: Config) -> Result<Running, Error> {
    let started_at = now_ms();
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
    let url = config.database_url();
    info!(database = %crate::db::redact(&url), "Connecting to the database.");
    let db = Db::connect(&url, config.database.max_connections).await?;
    let registry = Registry::load(db.clone(), config.admission.clone()).await?;
    registry.seed_orgs(&seed_orgs(&config)).await?;
    if !config.rtsp.cameras.is_empty() {
        let cams: Vec<NewDevice> = config
            .rtsp
            .cameras
            .iter()
            .map(|c| NewDevice {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: crate::registry::DeviceKind::parse(&c.kind).unwrap_or(crate::registry::DeviceKind::Camera),
                protocol: Protocol::Rtsp,
                org_id: c.org.clone(),
                profile: None,
                rtsp_url: Some(c.url.clone()),
                password: None,
                admission: Admission::Approved,
                attrs: Default::default(),
            })
            .map(|d| registry.prepare_device(d))
            .collect::<Result<_, _>>()?;
        registry.upsert_devices(cams, |_| {}).await?;
    }
    let (orgs, devices) = {
        let c = registry.read();
        (c.org_count(), c.device_count())
    };
    info!(orgs, devices, "Registry loaded.");

    // Presence: track every device, then restore what was persisted.
    let now = now_ms();
    let mut table = PresenceTable::new();
    {
        let cache = registry.read();
        for d in cache.devices() {
            table.track(d.key, Arc::from(d.id.as_str()), d.protocol.as_str(), now);
        }
    }
    let rows = presence::store::load_states(&db).await.map_err(Error::Presence)?;
    let last = presence::store::last_checkpoint(&db.pool).await.map_err(Error::Presence)?;
    let down_since = last.unwrap_or(now);
    let keyed: Vec<(u32, presence::StateRow)> = {
        let cache = registry.read();
        rows.into_iter().filter_map(|row| cache.device(&row.device_id).map(|d| (d.key, row))).collect()
    };
    let restored = table.restore(&keyed, down_since, now);
    let restored_devices = keyed.len();
    drop(keyed);
    let back_online = restored.iter().filter(|t| t.to == presence::State::Online).count();
    // The restore's transitions (the gap) are written by the presence writer in the
    // background, so start-up does not wait on 2 rows per device.
    if restored_devices > 0 {
        info!(
            devices = restored_devices,
            still_valid = back_online,
            gap_s = (now - down_since) / 1000,
            "Presence restored: devices with an open validity window stay online, the rest are unknown until fresh evidence."
        );
    }

    let metrics = Metrics::new();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let rejections = crate::rejections::Rejections::new(metrics.clone());
    rejections.persist(db.clone(), cancel.child_token(), &tracker);
    // The event writer stops after the sources (its token fires with the second step of
    // shutdown) and drains what they submitted.
    let max_image = crate::config::parse_bytes(&config.media.max_image).map_err(Error::Config)?;
    let media = crate::media::MediaStore::new(&config.gateway.data_dir, max_image);
    // The relay: which upstream takes which event (delivery rows are committed with the
    // events), and a runner per upstream that delivers them.
    let (mut relay, sinks) = relay_plan(&config, &media, &db)?;
    // The outbox's bound: backlog and free disk, looked at every 2 s.
    relay.gate = crate::outbox::gate::spawn(
        db.clone(),
        config.gateway.data_dir.clone(),
        crate::outbox::gate::Limits {
            max_backlog: config.relay.max_backlog,
            min_free_disk: crate::config::parse_bytes(&config.relay.min_free_disk).map_err(Error::Config)?,
            targets: relay.routes.names(),
        },
        metrics.clone(),
        cancel.child_token(),
        &tracker,
    );
    let outbox_gate = relay.gate.clone();
    let events = crate::events::spawn(db.clone(), relay.clone(), metrics.clone(), cancel.child_token(), &tracker);
    // Presence transitions, once committed, become status events, and rate samples
    // online-rate events, when an upstream takes them (the presence history and the rate
    // samples already serve everything local).
    let routed = |k: crate::event::EventKind| relay.routes.0.iter().any(|(_, kinds)| kinds.contains(&k));
    let status_tx = if routed(crate::event::EventKind::Status) {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::events::reports::QUEUE);
        crate::events::reports::spawn_status(rx, events.clone(), registry.clone(), &tracker);
        Some(tx)
    } else {
        None
    };
    let rate_reports = routed(crate::event::EventKind::OnlineRate).then(|| (events.clone(), config.gateway.id.clone()));
    let writer = Arc::new(WriterHealth::default());
    let presence_cancel = cancel.child_token();
    let handle = presence::runner::spawn(
        table,
        restored,
        &config.presence,
        &config.tuning,
        db.clone(),
        metrics.clone(),
        writer.clone(),
        status_tx,
        presence_cancel,
        &tracker,
    );
    tracker.spawn(expire_quarantine(
        registry.clone(),
        handle.clone(),
        metrics.clone(),
        config.admission.quarantine_ttl,
        cancel.child_token(),
    ));
    let impaired = crate::rate::Impaired::default();
    let rate_rx = crate::rate::sampling::spawn(
        crate::rate::sampling::Inputs {
            registry: registry.clone(),
            presence: handle.clone(),
            impaired: impaired.clone(),
            reports: rate_reports,
        },
        config.assessment.clone(),
        config.tuning.rate_refresh,
        metrics.clone(),
        cancel.child_token(),
        &tracker,
    );

    let mut targets = Vec::new();
    for (name, sink) in sinks {
        let status = Arc::new(std::sync::Mutex::new(crate::outbox::runner::TargetStatus {
            name: name.clone(),
            protocol: sink.protocol().into(),
            ..Default::default()
        }));
        targets.push(status.clone());
        let ctx = crate::outbox::runner::Context {
            db: db.clone(),
            metrics: metrics.clone(),
            added: relay.added.clone(),
            keep_delivered: config.relay.keep_delivered,
        };
        match sink {
            Upstream::Gat1400(s) => tracker.spawn(crate::outbox::runner::run(ctx, *s, status, cancel.child_token())),
            Upstream::Link(s) => tracker.spawn(crate::outbox::runner::run(ctx, *s, status, cancel.child_token())),
        };
        info!(upstream = %name, "Relaying to this upstream.");
    }
    let sources_cancel = cancel.child_token();
    let gb_sessions = crate::sources::gb28181::SessionBoard::default();
    let sip_addr = if config.gb28181.enabled {
        let addr = crate::sources::gb28181::spawn(
            config.gb28181.clone(),
            config.timezone(),
            config.gateway.id.clone(),
            crate::sources::Shared {
                registry: registry.clone(),
                presence: handle.clone(),
                metrics: metrics.clone(),
                rejections: rejections.clone(),
                events: events.clone(),
            },
            gb_sessions.clone(),
            crate::net::ConnCap::new(
                "sip_tcp",
                fds.sip_tcp,
                crate::net::Budget::per_address(fds.sip_tcp, 16, 1024),
                Some(&metrics),
            ),
            sources_cancel.clone(),
            &tracker,
        )
        .await?;
        info!(sip = %addr, "GB/T 28181 devices register at this address.");
        Some(addr)
    } else {
        None
    };

    // Device profiles: a profile that does not compile or fails its own vectors is refused
    // (named in the log); the rest are used.
    let report = crate::profiles::ProfileSet::load_dir(&config.mqtt.profiles_dir);
    for (file, problem) in &report.problems {
        error!(file, problem, "Device profile refused.");
    }
    let profiles = Arc::new(report.set);
    info!(profiles = profiles.profiles().len(), dir = %config.mqtt.profiles_dir.display(), "Device profiles loaded.");
    let shared = crate::sources::Shared {
        registry: registry.clone(),
        presence: handle.clone(),
        metrics: metrics.clone(),
        rejections: rejections.clone(),
        events: events.clone(),
    };
    let mqtt = match config.mqtt.mode.as_str() {
        "embedded" => {
            let deps = crate::sources::mqtt::gate::Deps {
                registry: registry.clone(),
                profiles: profiles.clone(),
                metrics: metrics.clone(),
                rejections: rejections.clone(),
                device_password: config.mqtt.device_password.clone(),
                allow_anonymous: config.mqtt.allow_anonymous,
                max_packet: crate::config::parse_bytes(&config.mqtt.max_packet).map_err(Error::Config)? as usize,
            };
            // A device through the gate holds three descriptors (its socket, the gate's to the
            // broker, the broker's own).
            let total = fds.mqtt / 3;
            let cap = crate::net::ConnCap::new(
                "mqtt",
                total,
                crate::net::Budget::per_address(total, 16, 1024),
                Some(&metrics),
            );
            let e =
                crate::sources::mqtt::start_broker(&config.mqtt, deps, cap, sources_cancel.clone(), &tracker).await?;
            // vigil's own client: the private port, with credentials made for this run.
            let mut own = config.mqtt.clone();
            (own.username, own.password) = (e.username, e.password);
            Some((own, e.url))
        }
        "external" => Some((config.mqtt.clone(), config.mqtt.url.clone())),
        _ => None,
    };
    if let Some((cfg, url)) = &mqtt {
        let ingest = crate::sources::ingest::Ingest::new(shared.clone(), media.clone(), Protocol::Mqtt, "mqtt");
        crate::sources::mqtt::spawn(cfg, url, profiles.clone(), ingest, sources_cancel.clone(), &tracker)?;
    }
    let gat1400_addr = if config.gat1400.enabled {
        let ingest = crate::sources::ingest::Ingest::new(shared.clone(), media.clone(), Protocol::Gat1400, "gat1400");
        Some(
            crate::sources::gat1400::spawn(
                &config.gat1400,
                config.gateway.id.clone(),
                config
                    .upstreams
                    .iter()
                    .filter(|u| u.protocol == "gat1400" && u.mode == "subscription")
                    .map(crate::outbox::subscriptions::Upper::of)
                    .collect(),
                config.timezone(),
                profiles.clone(),
                ingest,
                crate::net::http::Serve {
                    cap: crate::net::ConnCap::new(
                        "gat1400",
                        fds.gat1400,
                        crate::net::Budget::per_address(fds.gat1400, 8, 64),
                        Some(&metrics),
                    ),
                    header_deadline: config.gat1400.header_deadline,
                    tls: None,
                },
                sources_cancel.clone(),
                &tracker,
            )
            .await?,
        )
    } else {
        None
    };

    // The QUIC hub: lower gateways link here and their records enter this outbox.
    let quic_addr = if config.quic.listen.is_empty() {
        None
    } else {
        let addr = crate::link::hub::spawn(
            &config.quic.listen,
            link_identity(&config)?,
            config.gateway.id.clone(),
            shared.clone(),
            media.clone(),
            sources_cancel.clone(),
            &tracker,
        )?;
        info!(quic = %addr, "Lower gateways link to this hub at this address.");
        Some(addr)
    };

    let streams = if config.rtsp.enabled {
        crate::sources::rtsp::spawn(&config.rtsp, shared.clone(), impaired.clone(), sources_cancel.clone(), &tracker)
            .map_err(|e| Error::Config(format!("cannot start the RTSP threads: {e}")))?
    } else {
        crate::sources::rtsp::StreamBoard::empty()
    };

    let tz = config.timezone();
    if config.http.tokens.is_empty() {
        warn!(listen = %config.http.listen, "No API tokens configured: the API is open to anyone who can reach this loopback address.");
    }
    for (key, on, listen, password) in [
        ("gb28181.password", config.gb28181.enabled, config.gb28181.listen, &config.gb28181.password),
        ("gat1400.password", config.gat1400.enabled, config.gat1400.listen, &config.gat1400.password),
        ("mqtt.device_password", config.mqtt.mode == "embedded", config.mqtt.listen, &config.mqtt.device_password),
    ] {
        if on && password == SHIPPED_DEVICE_PASSWORD && !listen.ip().is_loopback() {
            warn!(%key, %listen, "The shipped default device password is in use on a port other hosts reach: anyone who knows it can log in as any device that has no password of its own. Set the key, or give devices their own (docs/security.md).");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.http.listen, source })?;
    let http_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.http.listen, source })?;
    let api_header_deadline = config.http.header_deadline;
    let api_tls = if config.http.tls_cert.is_empty() {
        None
    } else {
        let cfg = crate::net::tls::server_config(
            std::path::Path::new(&config.http.tls_cert),
            std::path::Path::new(&config.http.tls_key),
        )
        .map_err(|e| Error::Config(format!("http.tls_cert: {e}")))?;
        Some(cfg)
    };
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    let state = AppState {
        registry,
        presence: handle,
        rate: rate_rx,
        metrics: metrics.clone(),
        config: Arc::new(config),
        tz,
        started_at,
        writer,
        import_lock: Arc::new(tokio::sync::Mutex::new(())),
        rate_cache: Arc::default(),
        rejections,
        events,
        gb_sessions,
        media,
        profiles,
        streams,
        relay_targets: Arc::new(targets),
        outbox_gate,
    };
    let app = api::router(state);
    let http_cancel = CancellationToken::new();
    let stop = http_cancel.clone();
    let serve = crate::net::http::Serve {
        cap: crate::net::ConnCap::new(
            "http",
            fds.http,
            crate::net::Budget::per_address(fds.http, 8, 64),
            Some(&metrics),
        ),
        header_deadline: api_header_deadline,
        tls: api_tls,
    };
    let http = tokio::spawn(crate::net::http::serve(listener, app, serve, stop));
    info!(http = %http_addr, "vigil is running; dashboard at {scheme}://{http_addr}/");
    Ok(Running {
        http_addr,
        sip_addr,
        gat1400_addr,
        quic_addr,
        metrics,
        cancel,
        sources_cancel,
        http_cancel,
        tracker,
        http,
        db,
    })
}

impl Running {
    /// Stops in order and waits (bounded) for every task.
    pub async fn shutdown(self) {
        info!("Shutting down: sources and HTTP stop taking input.");
        self.sources_cancel.cancel();
        self.http_cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.http).await.is_err() {
            warn!("HTTP connections did not close within 5 s; dropping them.");
        }
        info!("Shutting down: presence writes its final checkpoint.");
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait()).await.is_err() {
            warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "Some tasks did not stop in time.");
        }
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
