//! The GB/T 28181 source: SIP over UDP and TCP on `gb28181.listen`. Devices REGISTER with
//! digest (MD5, qop=auth) and keep alive with MANSCDP `Notify/Keepalive`; registration and
//! keepalive become two separate pieces of evidence for presence. Unknown devices follow
//! `admission.policy`. After a registration vigil asks the device for its info, keepalive
//! settings, catalog and status and subscribes to catalog changes; alarms become events.
//! Writes observations to presence, admissions, channels and attributes to the registry and
//! alarms to the event log; never touches the database or another module's tables.
//! Sessions (contact, transport, expiry, last keepalive) are published on a `SessionBoard`
//! for the API.

pub mod catalog;
pub mod dialog;
pub mod play;
pub mod register;
mod server;

pub use crate::sessions::{SessionBoard, SessionInfo};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::net::frames::End;
use crate::protocol::sip::message;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Gb28181 as Gb28181Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the single media port gb28181.media_single_port = {port}: {source}")]
    MediaPort { port: u16, source: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Unavailable
    }
}

/// Requests queued for the SIP server task; a full queue slows the readers.
const INBOUND_QUEUE: usize = 8192;
/// A TCP connection with no bytes for this long is closed (devices send keepalives every 60 s).
const TCP_IDLE: Duration = Duration::from_secs(300);

/// Binds the SIP sockets (UDP, and TCP on the same port) and starts the source; returns the
/// bound address.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    cfg: Gb28181Config,
    tz: chrono_tz::Tz,
    gateway_id: String,
    shared: crate::sources::Shared,
    board: SessionBoard,
    video: play::Video,
    tcp_cap: crate::net::ConnCap,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, Error> {
    let (udp, tcp, addr) = bind_pair(cfg.listen).await?;
    let udp = Arc::new(udp);
    // Requests vigil sends name the address actually bound (not 0.0.0.0 or port 0).
    let mut cfg = cfg;
    cfg.listen = addr;
    // A message begun on a TCP connection must be whole by this (a sender dribbling a byte
    // at a time is closed, not kept forever).
    let cfg_deadline = cfg.message_deadline;
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let limits = TcpLimits {
        deadline: cfg_deadline,
        late: shared.metrics.connections_refused.with_label_values(&["sip_tcp", "deadline"]),
        unread: shared.metrics.connections_refused.with_label_values(&["sip_tcp", "unread"]),
    };
    let (commands_tx, commands) = mpsc::channel(1024);
    let settings = play::Settings::from_config(&cfg, &gateway_id);
    let parts = play::Parts {
        commands: commands_tx,
        sessions: board.clone(),
        video,
        registry: shared.registry.clone(),
        metrics: shared.metrics.clone(),
    };
    play::spawn(settings, parts, cancel.clone(), tracker)?;
    let mut server =
        server::Server::new(server::Parts { cfg, tz, gateway_id, shared, udp: udp.clone(), board, commands });
    server.restore_sessions().await;
    let span = tracing::info_span!("gb28181", listen = %addr);
    tracker.spawn(server.run(rx, cancel.clone()).instrument(span.clone()));
    tracker.spawn(read_udp(udp, tx.clone(), cancel.clone()).instrument(span.clone()));
    tracker.spawn(accept_tcp(tcp, tx, tcp_cap, limits, cancel).instrument(span));
    Ok(addr)
}

/// Receive buffer asked of the kernel for the SIP socket: a registration storm or a keepalive
/// burst queues here while the server works (capped by net.core.rmem_max; Linux's default
/// of 208 KiB dropped 0.03% of a 30,000 msg/s flood).
const UDP_RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Attempts at an ephemeral port free for both UDP and TCP (port 0 in the configuration).
const EPHEMERAL_ATTEMPTS: usize = 16;

/// Binds UDP and TCP on one port. With port 0 the kernel picks the UDP port, and another
/// process may already hold that port for TCP; a fresh pick is tried then (a fixed port is
/// tried once: its failure is the operator's to see).
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), Error> {
    let attempts = if listen.port() == 0 { EPHEMERAL_ATTEMPTS } else { 1 };
    let mut attempt = 1;
    loop {
        let udp = bind_udp(listen).map_err(|source| Error::Bind { addr: listen, source })?;
        let addr = udp.local_addr().map_err(|source| Error::Bind { addr: listen, source })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, addr)),
            Err(source) if attempt >= attempts => return Err(Error::Bind { addr, source }),
            Err(_) => attempt += 1,
        }
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        warn!(error = %e, "Cannot enlarge the SIP receive buffer; bursts may be dropped by the kernel.");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn read_udp(socket: Arc<UdpSocket>, tx: mpsc::Sender<server::Inbound>, cancel: CancellationToken) {
    let mut buf = vec![0u8; message::MAX_MESSAGE];
    loop {
        let r = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        match r {
            Ok((n, from)) => {
                let inbound = server::Inbound { bytes: buf[..n].to_vec(), from, reply: server::Reply::Udp };
                if tx.send(inbound).await.is_err() {
                    break;
                }
            }
            // ICMP port-unreachable from an earlier send surfaces here on Linux.
            Err(e) => debug!(error = %e, "SIP UDP receive error."),
        }
    }
}

/// What bounds a device's TCP connection: `deadline` for a message begun to be whole and for
/// an answer (or request) written to be taken; the counters of connections closed at each.
#[derive(Clone)]
struct TcpLimits {
    deadline: Duration,
    late: prometheus::IntCounter,
    unread: prometheus::IntCounter,
}

async fn accept_tcp(
    listener: TcpListener,
    tx: mpsc::Sender<server::Inbound>,
    cap: crate::net::ConnCap,
    limits: TcpLimits,
    cancel: CancellationToken,
) {
    let mut acceptor = crate::net::Acceptor::new(listener, cap);
    while let Some((stream, peer, slot)) = acceptor.next(&cancel).await {
        let tx = tx.clone();
        let cancel = cancel.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            serve_tcp(stream, peer, tx, limits, cancel).await;
            drop(slot);
        });
    }
}

/// Frames messages by Content-Length off one TCP connection and writes answers back. A peer
/// that does not take what is written to it within the deadline (its window stays shut) has
/// the whole connection closed and counted: a writer left waiting on it would hold the
/// connection's slot for good.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<server::Inbound>,
    limits: TcpLimits,
    cancel: CancellationToken,
) {
    let (rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let deadline = limits.deadline;
    // Ends with the first write that fails: `true` when the peer took nothing for the deadline.
    let mut writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if let Err(e) = crate::net::frames::write_within(&mut wr, &bytes, deadline).await {
                return matches!(e, crate::net::frames::WriteEnd::Stalled(_));
            }
        }
        false
    });
    let mut writer_ended = None;
    let mut frames = crate::net::frames::Frames::new(rd, message::frame_len, deadline, Some(TCP_IDLE));
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            stalled = &mut writer => {
                writer_ended = Some(stalled);
                break;
            }
            r = frames.next() => r,
        };
        match next {
            Ok(frame) => {
                let inbound = server::Inbound { bytes: frame, from: peer, reply: server::Reply::Tcp(out_tx.clone()) };
                if tx.send(inbound).await.is_err() {
                    break;
                }
            }
            Err(End::Late(_)) => {
                limits.late.inc();
                debug!(peer = %peer, "A SIP message was not complete within its deadline; closing the connection.");
                break;
            }
            Err(e @ End::Unframeable(_)) => {
                debug!(peer = %peer, error = %e, "SIP TCP stream cannot be framed; closing it.");
                break;
            }
            Err(e) => {
                debug!(peer = %peer, error = %e, "SIP TCP connection ended.");
                break;
            }
        }
    }
    drop(out_tx);
    // When the reader ended first, a write still waiting on the peer ends at its deadline.
    let stalled = match writer_ended {
        Some(r) => r,
        None => writer.await,
    };
    if matches!(stalled, Ok(true)) {
        limits.unread.inc();
        debug!(peer = %peer, "A SIP peer did not take what was written to it within the deadline; closing the connection.");
    }
}
