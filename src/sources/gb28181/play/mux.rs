//! The single media port (`gb28181.media_single_port`, ZLMediaKit's "single port mode"): every
//! stream is offered the same port and told apart by its `y=` SSRC. UDP datagrams are read in
//! batches, routed by the SSRC in their header (RTCP by its sender's) to the stream that leased
//! it, from the device's host only; with `tcp_passive` the same port listens and each
//! connection is handed, with the bytes already read, to the stream whose SSRC its first
//! packet carries. A lease is given back when its stream ends; an SSRC is never leased twice
//! at once. Unknown SSRCs, other hosts and streams that cannot keep up are counted and dropped;
//! a TCP connection from a host no stream expects is closed before anything is read, and at
//! most `IDENTIFYING` connections are read at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::udp::BatchSocket;
use crate::protocol::rtp::{self, TcpFramer};
use crate::telemetry::Metrics;

/// Datagrams queued for one stream (a keyframe burst at 8 Mbit/s is about 600).
const QUEUE: usize = 2048;
/// A connection must send its first RTP packet within this.
const FIRST_PACKET: Duration = Duration::from_secs(10);
/// The most read from a connection while looking for its first packet.
const FIRST_BYTES: usize = 128 * 1024;
/// Connections read for their first packet at once (each holds at most `FIRST_BYTES`).
const IDENTIFYING: usize = 64;

/// One datagram for a stream.
pub struct Datagram {
    pub data: Bytes,
    pub from: SocketAddr,
}

/// A TCP media connection identified by its first packet, with everything read from it so far.
pub struct Handoff {
    pub stream: TcpStream,
    pub first: Vec<u8>,
}

struct Route {
    /// The device's host, once its answer said it. Packets that come before (a device starts
    /// on the ACK, which may be sent before the stream has read the answer) are handed over
    /// and the stream checks their host itself.
    host: Option<IpAddr>,
    packets: mpsc::Sender<Datagram>,
    tcp: Option<oneshot::Sender<Handoff>>,
}

/// The shared port.
pub struct Mux {
    udp: BatchSocket,
    pub port: u16,
    routes: Mutex<HashMap<u32, Route>>,
    metrics: Metrics,
    /// Connections being read for their first packet.
    identifying: Arc<tokio::sync::Semaphore>,
}

/// A stream's claim on an SSRC of the shared port.
pub struct Lease {
    mux: Arc<Mux>,
    ssrc: u32,
    pub packets: mpsc::Receiver<Datagram>,
    pub tcp: Option<oneshot::Receiver<Handoff>>,
}

impl Mux {
    /// Binds the port (UDP always; TCP too for `tcp_passive`) and starts reading it.
    pub fn start(
        ip: IpAddr,
        port: u16,
        tcp: bool,
        metrics: Metrics,
        cancel: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Arc<Mux>> {
        let udp = BatchSocket::new(super::bind_udp(ip, port)?)?;
        let listener = if tcp { Some(super::bind_tcp(ip, port)?) } else { None };
        let identifying = Arc::new(tokio::sync::Semaphore::new(IDENTIFYING));
        let mux = Arc::new(Mux { udp, port, routes: Mutex::default(), metrics, identifying });
        tracker.spawn(mux.clone().read_udp(cancel.clone()));
        if let Some(l) = listener {
            tracker.spawn(mux.clone().accept_tcp(l, cancel));
        }
        Ok(mux)
    }

    pub fn socket(&self) -> &tokio::net::UdpSocket {
        self.udp.socket()
    }

    /// Claims `ssrc` for a stream; `None` when another stream holds it.
    pub fn lease(self: &Arc<Self>, ssrc: u32) -> Option<Lease> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.contains_key(&ssrc) {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (tcp_tx, tcp_rx) = oneshot::channel();
        routes.insert(ssrc, Route { host: None, packets: tx, tcp: Some(tcp_tx) });
        Some(Lease { mux: self.clone(), ssrc, packets: rx, tcp: Some(tcp_rx) })
    }

    fn count(&self, reason: &str) {
        self.metrics.gb_media_dropped.with_label_values(&[reason]).inc();
    }

    async fn read_udp(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.udp.readable() => if let Err(e) = r {
                    warn!(port = self.port, error = %e, "The single media port failed; GB/T 28181 media over it stops.");
                    return;
                }
            }
            let read = self.udp.drain(4, |data, from| self.route(data, from));
            if let Err(e) = read {
                debug!(port = self.port, error = %e, "Single media port read failed.");
            }
        }
    }

    /// Routes one datagram by its SSRC (RTP) or its sender's (RTCP).
    fn route(&self, data: &[u8], from: SocketAddr) {
        let ssrc = match data {
            [b0, ..] if b0 >> 6 != 2 => None,
            _ if rtp::is_rtcp(data) => data.get(4..8),
            _ => data.get(8..12),
        };
        let Some(ssrc) = ssrc.and_then(|s| <[u8; 4]>::try_from(s).ok()).map(u32::from_be_bytes) else {
            self.count("malformed");
            return;
        };
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(route) = routes.get(&ssrc) else {
            drop(routes);
            self.count("unknown_ssrc");
            return;
        };
        if route.host.is_some_and(|h| h != from.ip()) {
            drop(routes);
            self.count("foreign_source");
            return;
        }
        if route.packets.try_send(Datagram { data: Bytes::copy_from_slice(data), from }).is_err() {
            drop(routes);
            self.count("queue_full");
        }
    }

    async fn accept_tcp(self: Arc<Self>, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "Single media port accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Nothing is read from a host no stream expects media from (a stream still
            // reading its answer expects it from anyone: it checks the host itself).
            let expected = {
                let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
                routes.values().any(|r| r.tcp.is_some() && r.host.is_none_or(|h| h == peer.ip()))
            };
            if !expected {
                self.count("foreign_source");
                continue;
            }
            // At most `IDENTIFYING` connections are read at once; the rest are closed.
            let Ok(permit) = self.identifying.clone().try_acquire_owned() else {
                self.count("too_many_connections");
                continue;
            };
            let mux = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::timeout(FIRST_PACKET, mux.identify(stream, peer)) => {}
                }
            });
        }
    }

    /// Reads a connection until its first RTP packet names the stream it belongs to.
    async fn identify(&self, mut stream: TcpStream, peer: SocketAddr) {
        let mut first = Vec::new();
        let mut framer = TcpFramer::default();
        let mut buf = vec![0u8; 16 * 1024];
        while first.len() < FIRST_BYTES {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            first.extend_from_slice(&buf[..n]);
            let mut ssrc = None;
            framer.push(&buf[..n], |p| {
                if ssrc.is_none() && !rtp::is_rtcp(p) {
                    ssrc = rtp::Packet::parse(p).ok().map(|p| p.ssrc);
                }
            });
            let Some(ssrc) = ssrc else { continue };
            let handoff = {
                let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
                match routes.get_mut(&ssrc) {
                    // Before the answer is read the stream checks the host itself.
                    Some(r) if r.host.is_none_or(|h| h == peer.ip()) => r.tcp.take(),
                    Some(_) => {
                        drop(routes);
                        self.count("foreign_source");
                        return;
                    }
                    None => None,
                }
            };
            match handoff {
                Some(tx) => {
                    let _ = tx.send(Handoff { stream, first });
                }
                None => self.count("unknown_ssrc"),
            }
            return;
        }
        self.count("malformed");
    }
}

impl Lease {
    pub fn mux(&self) -> &Arc<Mux> {
        &self.mux
    }

    /// The device's answer is in: take its packets from `host`, under `ssrc` (its own `y=`
    /// when it answered one). False when that SSRC is another stream's.
    pub fn bind(&mut self, host: IpAddr, ssrc: u32) -> bool {
        let mut routes = self.mux.routes.lock().unwrap_or_else(|p| p.into_inner());
        if ssrc != self.ssrc {
            if routes.contains_key(&ssrc) {
                return false;
            }
            if let Some(r) = routes.remove(&self.ssrc) {
                routes.insert(ssrc, r);
            }
            self.ssrc = ssrc;
        }
        if let Some(r) = routes.get_mut(&ssrc) {
            r.host = Some(host);
        }
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.mux.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.ssrc);
    }
}
