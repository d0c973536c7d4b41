//! The inputs' start: every source vigil listens or pulls with (GB/T 28181 SIP, MQTT, the
//! GA/T 1400 view-library endpoint, the QUIC hub for lower gateways, RTSP pulls), each under
//! its share of the descriptors, and the boards they publish for the API.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::Error;
use crate::config::{Config, MqttMode, RelayMode, UpstreamProtocol};
use crate::images::ImageStore;
use crate::media::StreamBoard;
use crate::net::{Budget, ConnCap};
use crate::profiles::ProfileSet;
use crate::registry::Protocol;
use crate::sessions::SessionBoard;
use crate::sources::Shared;

/// The device password every config key ships with (what GB/T 28181 devices come with).
const SHIPPED_DEVICE_PASSWORD: &str = "12345678";

/// What the started sources answer: their addresses and the boards the API reads.
pub struct Inputs {
    pub sip_addr: Option<SocketAddr>,
    pub gat1400_addr: Option<SocketAddr>,
    pub quic_addr: Option<SocketAddr>,
    pub gb_sessions: SessionBoard,
    pub streams: StreamBoard,
    pub profiles: Arc<ProfileSet>,
}

/// What the sources share beside the config.
pub struct Deps<'a> {
    pub shared: Shared,
    pub media: ImageStore,
    pub impaired: crate::rate::Impaired,
    pub fds: &'a Budget,
    /// The board every pulled stream is published on (RTSP cameras, GB/T 28181 channels).
    pub streams: StreamBoard,
}

/// The media board every pulled stream is published on, with the decode pool snapshots and
/// diagnosis share.
pub fn stream_board(config: &Config) -> StreamBoard {
    let decode_threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).div_ceil(2);
    StreamBoard::new(crate::media::snapshot::Pool::new(decode_threads), config.rtsp.snapshot_max_age)
}

/// Starts every enabled source on `tracker`, stopped by `cancel`.
pub async fn spawn_sources(
    config: &Config,
    deps: Deps<'_>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Inputs, Error> {
    let Deps { shared, media, impaired, fds, streams } = deps;
    let metrics = &shared.metrics;
    let gb_sessions = SessionBoard::default();
    let pool = streams.pool().unwrap_or_else(|| crate::media::snapshot::Pool::new(1));
    let diagnoser = Arc::new(crate::media::quality::Diagnoser {
        pool,
        metrics: metrics.clone(),
        events: shared.events.clone(),
        impaired,
        alarm_after: config.rtsp.diagnosis_alarm_after.max(1),
    });
    let sip_addr = if config.gb28181.enabled {
        let cap = ConnCap::new("sip_tcp", fds.sip_tcp, Budget::per_address(fds.sip_tcp, 16, 1024), Some(metrics));
        let addr = crate::sources::gb28181::spawn(
            config.gb28181.clone(),
            config.timezone(),
            config.gateway.id.clone(),
            shared.clone(),
            gb_sessions.clone(),
            crate::sources::gb28181::play::Video {
                board: streams.clone(),
                diagnoser: diagnoser.clone(),
                diagnosis_every: crate::config::parse_every(&config.rtsp.diagnosis_every).ok().flatten(),
            },
            cap,
            cancel.clone(),
            tracker,
        )
        .await?;
        info!(sip = %addr, "GB/T 28181 devices register at this address.");
        Some(addr)
    } else {
        None
    };

    // Device profiles: a profile that does not compile or fails its own vectors is refused
    // (named in the log); the rest are used.
    let report = ProfileSet::load_dir(&config.mqtt.profiles_dir);
    for (file, problem) in &report.problems {
        error!(file, problem, "Device profile refused.");
    }
    let profiles = Arc::new(report.set);
    info!(profiles = profiles.profiles().len(), dir = %config.mqtt.profiles_dir.display(), "Device profiles loaded.");
    let mqtt = match config.mqtt.mode {
        MqttMode::Embedded => {
            let deps = crate::sources::mqtt::gate::Deps {
                registry: shared.registry.clone(),
                profiles: profiles.clone(),
                metrics: metrics.clone(),
                rejections: shared.rejections.clone(),
                device_password: config.mqtt.device_password.clone(),
                allow_anonymous: config.mqtt.allow_anonymous,
                max_packet: usize::try_from(config.mqtt.max_packet.as_u64()).unwrap_or(usize::MAX),
                message_deadline: config.mqtt.message_deadline,
            };
            // A device through the gate holds three descriptors (its socket, the gate's to the
            // broker, the broker's own).
            let total = fds.mqtt / 3;
            let cap = ConnCap::new("mqtt", total, Budget::per_address(total, 16, 1024), Some(metrics));
            let e = crate::sources::mqtt::start_broker(&config.mqtt, deps, cap, cancel.clone(), tracker).await?;
            // vigil's own client: the private port, with credentials made for this run.
            let mut own = config.mqtt.clone();
            (own.username, own.password) = (e.username, e.password);
            Some((own, e.url))
        }
        MqttMode::External => Some((config.mqtt.clone(), config.mqtt.url.clone())),
        MqttMode::Off => None,
    };
    if let Some((cfg, url)) = &mqtt {
        let ingest = crate::sources::ingest::Ingest::new(shared.clone(), media.clone(), Protocol::Mqtt, "mqtt");
        crate::sources::mqtt::spawn(cfg, url, profiles.clone(), ingest, cancel.clone(), tracker)?;
    }

    let gat1400_addr = if config.gat1400.enabled {
        let ingest = crate::sources::ingest::Ingest::new(shared.clone(), media.clone(), Protocol::Gat1400, "gat1400");
        let uppers = config
            .upstreams
            .iter()
            .filter(|u| u.protocol == Some(UpstreamProtocol::Gat1400) && u.mode == RelayMode::Subscription)
            .map(crate::outbox::subscriptions::Upper::of)
            .collect();
        let serve = crate::net::http::Serve {
            cap: ConnCap::new("gat1400", fds.gat1400, Budget::per_address(fds.gat1400, 8, 64), Some(metrics)),
            header_deadline: config.gat1400.header_deadline,
            tls: None,
        };
        let addr = crate::sources::gat1400::spawn(
            &config.gat1400,
            config.gateway.id.clone(),
            uppers,
            config.timezone(),
            profiles.clone(),
            ingest,
            serve,
            cancel.clone(),
            tracker,
        )
        .await?;
        Some(addr)
    } else {
        None
    };

    // The QUIC hub: lower gateways link here and their records enter this outbox.
    let quic_addr = if config.quic.listen.is_empty() {
        None
    } else {
        let addr = crate::link::hub::spawn(
            &config.quic.listen,
            super::relay::link_identity(config)?,
            config.gateway.id.clone(),
            shared.clone(),
            media.clone(),
            cancel.clone(),
            tracker,
        )?;
        info!(quic = %addr, "Lower gateways link to this hub at this address.");
        Some(addr)
    };

    if config.rtsp.enabled {
        crate::sources::rtsp::spawn(&config.rtsp, shared.clone(), diagnoser, streams.clone(), cancel.clone(), tracker)
            .map_err(|e| Error::Config(format!("cannot start the RTSP threads: {e}")))?;
    }
    warn_shipped_passwords(config);
    Ok(Inputs { sip_addr, gat1400_addr, quic_addr, gb_sessions, streams, profiles })
}

/// A WARN for each device port that other hosts reach while the shipped password is in use.
fn warn_shipped_passwords(config: &Config) {
    let mqtt_embedded = config.mqtt.mode == MqttMode::Embedded;
    for (key, on, listen, password) in [
        ("gb28181.password", config.gb28181.enabled, config.gb28181.listen, &config.gb28181.password),
        ("gat1400.password", config.gat1400.enabled, config.gat1400.listen, &config.gat1400.password),
        ("mqtt.device_password", mqtt_embedded, config.mqtt.listen, &config.mqtt.device_password),
    ] {
        if on && password == SHIPPED_DEVICE_PASSWORD && !listen.ip().is_loopback() {
            warn!(%key, %listen, "The shipped default device password is in use on a port other hosts reach: anyone who knows it can log in as any device that has no password of its own. Set the key, or give devices their own (docs/security.md).");
        }
    }
}
