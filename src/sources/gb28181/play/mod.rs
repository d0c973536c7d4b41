//! GB/T 28181 live video: the player pulls a channel while something needs it (an operator's
//! snapshot or `POST .../stream`, later patrol and the cascade). Demands arrive from the
//! `media::StreamBoard`; each wanted channel has one task that runs sessions (`session`) and
//! publishes the stream's health on the board under `device/channel`; a session that fails is
//! tried again with backoff while the channel is still wanted, and the stream stops (BYE) once
//! its hold has passed. Media ports come from `gb28181.media_ports` (one per stream) or are the
//! one `gb28181.media_single_port` (`mux`, streams told apart by SSRC); `y=` SSRC sequences
//! from `offer::Ssrcs`; UDP is read in batches (`udp`).

mod mux;
pub mod offer;
mod session;
mod udp;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::dialog::Command;
use crate::clock::now_ms;
use crate::media::diagnosis::Judge;
use crate::media::health::{Health, StreamState};
use crate::media::quality::{Diagnoser, Subject};
use crate::media::{channel_key, Demand, Holder, StreamBoard};
use crate::registry::Registry;
use crate::sessions::SessionBoard;
use crate::telemetry::Metrics;

/// Demands waiting for the player.
const DEMANDS: usize = 1024;
/// Backoff between failed sessions of a wanted channel.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The settings of `[gb28181]` the player uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway_id: String,
    /// The SIP domain (the realm): digits 4–8 go into `y=`.
    pub domain: String,
    pub ports: RangeInclusive<u16>,
    pub transport: offer::MediaTransport,
    pub media_address: Option<IpAddr>,
    pub invite_timeout: Duration,
    pub media_timeout: Duration,
    /// The single media port; 0: a port per stream.
    pub single_port: u16,
    /// Receiver reports to UDP senders this often; `None`: never.
    pub rtcp_interval: Option<Duration>,
}

impl Settings {
    pub fn from_config(c: &crate::config::Gb28181, gateway_id: &str) -> Self {
        Settings {
            gateway_id: gateway_id.to_owned(),
            domain: c.realm.clone(),
            ports: crate::config::parse_ports(&c.media_ports).unwrap_or(30000..=30999),
            transport: match c.media_transport {
                crate::config::GbMediaTransport::Udp => offer::MediaTransport::Udp,
                crate::config::GbMediaTransport::TcpPassive => offer::MediaTransport::TcpPassive,
                crate::config::GbMediaTransport::TcpActive => offer::MediaTransport::TcpActive,
            },
            media_address: c.media_address.parse().ok(),
            invite_timeout: c.invite_timeout,
            media_timeout: c.media_timeout,
            single_port: c.media_single_port,
            rtcp_interval: (!c.rtcp_interval.is_zero()).then_some(c.rtcp_interval),
        }
    }
}

/// The media pipeline the player feeds: the board streams are published on, the diagnosis
/// they share with RTSP, and how often a playing channel is diagnosed (`rtsp.diagnosis_every`;
/// `None`: never).
pub struct Video {
    pub board: StreamBoard,
    pub diagnoser: Arc<Diagnoser>,
    pub diagnosis_every: Option<Duration>,
}

/// What the player is handed at start.
pub struct Parts {
    pub commands: mpsc::Sender<Command>,
    pub sessions: SessionBoard,
    pub video: Video,
    pub registry: Registry,
    pub metrics: Metrics,
}

/// What every session of the player shares.
pub struct Ctx {
    pub settings: Settings,
    commands: mpsc::Sender<Command>,
    sessions: SessionBoard,
    board: StreamBoard,
    diagnoser: Arc<Diagnoser>,
    diagnosis_every: Option<Duration>,
    registry: Registry,
    metrics: Metrics,
    ports: Ports,
    /// The single media port, when configured.
    mux: Option<Arc<mux::Mux>>,
    ssrcs: Mutex<offer::Ssrcs>,
}

impl Ctx {
    fn take_ssrc(&self) -> Option<u32> {
        self.ssrcs.lock().unwrap_or_else(|p| p.into_inner()).take(now_ms())
    }

    fn release_ssrc(&self, n: u32) {
        self.ssrcs.lock().unwrap_or_else(|p| p.into_inner()).release(n, now_ms());
    }

    fn count_dropped(&self, reason: &str) {
        self.metrics.gb_media_dropped.with_label_values(&[reason]).inc();
    }
}

/// The media ports: one per stream, taken from the range in turn.
struct Ports {
    range: RangeInclusive<u16>,
    state: Mutex<(u16, HashSet<u16>)>,
}

impl Ports {
    fn new(range: RangeInclusive<u16>) -> Self {
        let start = *range.start();
        Ports { range, state: Mutex::new((start, HashSet::new())) }
    }

    /// Binds the next free port of the range on `ip` with `bind`; `None` when every port is
    /// taken (by vigil or by another process).
    fn bind<S>(&self, ip: IpAddr, bind: impl Fn(IpAddr, u16) -> std::io::Result<S>) -> Option<(S, u16)> {
        let size = usize::from(self.range.end() - self.range.start()) + 1;
        for _ in 0..size {
            let port = {
                let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let (next, in_use) = &mut *g;
                let port = *next;
                *next = if port >= *self.range.end() { *self.range.start() } else { port + 1 };
                if in_use.contains(&port) {
                    continue;
                }
                in_use.insert(port);
                port
            };
            // Bound on the address offered (or all addresses when it is the route's).
            match bind(ip, port) {
                Ok(sock) => return Some((sock, port)),
                Err(_) => self.release(port),
            }
        }
        None
    }

    fn release(&self, port: u16) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&port);
    }
}

/// A media socket with a receive buffer for bursts (a keyframe is hundreds of packets).
fn bind_udp(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = std::net::SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A listener for one device's RTP over TCP (`tcp_passive`).
fn bind_tcp(ip: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = std::net::SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A channel being pulled: until when each holder wants it.
struct Wanted {
    holds: HashMap<Holder, Instant>,
    cancel: CancellationToken,
    /// A demand that came while the pull was stopping: started again once it has stopped.
    again: Vec<Demand>,
}

/// Starts the player (and opens the single media port when configured); demands reach it
/// through `board.demand`.
pub fn spawn(
    settings: Settings,
    parts: Parts,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), super::Error> {
    let mux = match settings.single_port {
        0 => None,
        port => {
            let ip = settings.media_address.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let tcp = settings.transport == offer::MediaTransport::TcpPassive;
            let mux = mux::Mux::start(ip, port, tcp, parts.metrics.clone(), cancel.clone(), tracker)
                .map_err(|source| super::Error::MediaPort { port, source })?;
            tracing::info!(port, tcp, "GB/T 28181 media on one port, streams told apart by SSRC.");
            Some(mux)
        }
    };
    let (tx, rx) = mpsc::channel(DEMANDS);
    parts.video.board.set_puller(tx);
    let ctx = Arc::new(Ctx {
        mux,
        ports: Ports::new(settings.ports.clone()),
        settings,
        commands: parts.commands,
        sessions: parts.sessions,
        board: parts.video.board,
        diagnoser: parts.video.diagnoser,
        diagnosis_every: parts.video.diagnosis_every,
        registry: parts.registry,
        metrics: parts.metrics,
        ssrcs: Mutex::default(),
    });
    let t = tracker.clone();
    tracker.spawn(manage(ctx, rx, cancel, t));
    Ok(())
}

/// Starts a pull per channel wanted, extends its hold on each demand, stops it once the hold
/// passed.
async fn manage(ctx: Arc<Ctx>, mut demands: mpsc::Receiver<Demand>, cancel: CancellationToken, tracker: TaskTracker) {
    let mut wanted: HashMap<String, Wanted> = HashMap::new();
    let (ended_tx, mut ended) = mpsc::channel::<String>(DEMANDS);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(d) = demands.recv() => {
                let key = channel_key(&d.device, &d.channel);
                let now = Instant::now();
                let until = now + d.hold;
                if let Some(w) = wanted.get_mut(&key) {
                    if w.cancel.is_cancelled() {
                        if !d.hold.is_zero() {
                            w.again.push(d);
                        }
                    } else if d.hold.is_zero() {
                        w.holds.remove(&d.holder);
                        if w.holds.values().all(|u| *u <= now) {
                            w.cancel.cancel();
                        }
                    } else {
                        let h = w.holds.entry(d.holder).or_insert(until);
                        *h = (*h).max(until);
                    }
                    continue;
                }
                if d.hold.is_zero() {
                    continue;
                }
                start(&ctx, &mut wanted, key, d, &cancel, &ended_tx, &tracker);
            }
            Some(key) = ended.recv() => {
                let again = wanted.remove(&key).map(|w| w.again).unwrap_or_default();
                for d in again {
                    let key = channel_key(&d.device, &d.channel);
                    match wanted.get_mut(&key) {
                        Some(w) => {
                            let until = Instant::now() + d.hold;
                            let h = w.holds.entry(d.holder).or_insert(until);
                            *h = (*h).max(until);
                        }
                        None => start(&ctx, &mut wanted, key, d, &cancel, &ended_tx, &tracker),
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for w in wanted.values().filter(|w| w.holds.values().all(|u| *u <= now)) {
                    w.cancel.cancel();
                }
            }
        }
    }
    for w in wanted.values() {
        w.cancel.cancel();
    }
}

/// Starts the pull of a channel newly wanted.
fn start(
    ctx: &Arc<Ctx>,
    wanted: &mut HashMap<String, Wanted>,
    key: String,
    d: Demand,
    cancel: &CancellationToken,
    ended: &mpsc::Sender<String>,
    tracker: &TaskTracker,
) {
    let token = cancel.child_token();
    let until = Instant::now() + d.hold;
    wanted.insert(
        key.clone(),
        Wanted { holds: HashMap::from([(d.holder, until)]), cancel: token.clone(), again: Vec::new() },
    );
    let (ctx, done) = (ctx.clone(), ended.clone());
    tracker.spawn(async move {
        pull(&ctx, &d.device, &d.channel, &token).await;
        let _ = done.send(key).await;
    });
}

/// Pulls one channel until cancelled: sessions, retried with backoff after a failure.
async fn pull(ctx: &Ctx, device: &str, channel: &str, cancel: &CancellationToken) {
    let key = channel_key(device, channel);
    let Some(d) = ctx.registry.read().device(device) else { return };
    let subject = Subject {
        device_id: Arc::from(device),
        key: d.key,
        channel: Some(Arc::from(channel)),
        org_id: d.org_id.clone(),
        source: "gb28181",
    };
    let health: Arc<Health> = ctx.board.add(&key, "gb_channel");
    // The judge (its baseline, its run of bad samples) lives as long as the channel is wanted.
    let judge = Arc::new(Mutex::new(Judge::default()));
    let mut failures = 0u32;
    debug!(device, channel, "GB/T 28181 live stream wanted: INVITE.");
    loop {
        let ended = session::run(ctx, &subject, &health, &judge, cancel).await;
        match ended {
            session::Ended::Stopped => {
                ctx.metrics.gb_plays.with_label_values(&["stopped"]).inc();
                debug!(device, channel, "GB/T 28181 live stream no longer wanted: BYE.");
                ctx.board.remove(&key);
                return;
            }
            session::Ended::Failed { state, error, played } => {
                ctx.metrics.gb_plays.with_label_values(&[state.as_str()]).inc();
                failures = if played { 1 } else { failures + 1 };
                let wait = (RETRY_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(RETRY_MAX);
                let now = now_ms();
                health.failed(state, now, error.clone(), now + wait.as_millis() as i64);
                if state == StreamState::Stalled {
                    health.count_stall();
                }
                warn!(device, channel, state = state.as_str(), error = %error, retry_in_s = wait.as_secs(), "GB/T 28181 live stream failed.");
                tokio::select! {
                    _ = cancel.cancelled() => return, // the failure stays on the board for the operator
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
