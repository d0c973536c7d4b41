//! The SIP transport between vigil and one upper platform (`upstreams[].transport`).
//!
//! - UDP: one socket bound at `listen`; requests and answers go as datagrams.
//! - TCP: vigil connects to the upper (`server_addr`) when it first has something to send and
//!   keeps the connection: its REGISTER, keepalives, catalog and NOTIFYs go on it, and the
//!   upper's requests (queries, SUBSCRIBE, INVITE) come back on it, as WVP sends them (to the
//!   address the registration came from). vigil also listens at `listen` (the Contact it
//!   registers) for connections the upper opens itself, from the upper's host only (16 at
//!   most: a new one past that closes the oldest). Messages
//!   are cut by Content-Length (`protocol::sip::message::frame_len`); a stream that cannot be
//!   framed (two Content-Lengths, a message past 64 KiB, one not whole within 10 s) is closed,
//!   as is one the upper stops reading (a write stuck 10 s). Each connection is a task of its
//!   own with a bounded queue; the UA learns a connection ended (`Incoming::Lost`) and
//!   registers again over a new one when it was the upper's.
//!
//! Nothing here reads a message beyond its framing: the UA (`mod.rs`) parses and answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::net::frames::{End, Frames};
use crate::protocol::sip::message;

/// How long connecting to the upper may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A message must be whole this long after its first byte.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(10);
/// A write the upper does not take in this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one connection at most; past it they are dropped (the transaction's
/// Timer F sees to it).
const QUEUE: usize = 256;
/// Connections the upper's host may hold open to `listen` at once; a new one past it closes
/// the oldest (an upper that reconnects without closing cannot pile them up).
const MAX_ACCEPTED: usize = 16;

/// `upstreams[].transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

impl Transport {
    /// From the config's text (already validated: "", "udp" or "tcp", any case).
    pub fn parse(s: &str) -> Option<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "" | "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }

    /// As written in Via.
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// The Contact URI parameter (`;transport=tcp`; nothing for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
        }
    }

    /// Whether requests are retransmitted (RFC 3261 §17.1.2.2: over UDP only).
    pub fn unreliable(self) -> bool {
        self == Transport::Udp
    }
}

/// What arrives.
#[derive(Debug)]
pub enum Incoming {
    /// A whole message and where it came from.
    Message(Vec<u8>, SocketAddr),
    /// A TCP connection ended (closed, reset, stuck, or its stream could not be framed:
    /// `unframeable`).
    Lost { peer: SocketAddr, why: String, unframeable: bool },
}

/// A socket bound before the task runs (so a taken port fails at start).
pub enum Bound {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
}

impl Bound {
    pub fn bind(transport: Transport, addr: SocketAddr) -> std::io::Result<Bound> {
        Ok(match transport {
            Transport::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Bound::Udp(s)
            }
            Transport::Tcp => {
                let s = std::net::TcpListener::bind(addr)?;
                s.set_nonblocking(true)?;
                Bound::Tcp(s)
            }
        })
    }
}

/// One upstream's transport, owned by its UA task.
pub enum Link {
    Udp { sock: UdpSocket, buf: Vec<u8> },
    Tcp(Box<Tcp>),
}

pub struct Tcp {
    upper: SocketAddr,
    listener: TcpListener,
    conns: HashMap<SocketAddr, Conn>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    next_id: u64,
    cancel: CancellationToken,
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

enum Event {
    Frame(Vec<u8>, SocketAddr),
    Ended { peer: SocketAddr, id: u64, why: String, unframeable: bool },
}

impl Link {
    /// The bound socket in the runtime; connections end with `cancel`.
    pub fn new(bound: Bound, upper: SocketAddr, cancel: &CancellationToken) -> std::io::Result<Link> {
        Ok(match bound {
            Bound::Udp(s) => Link::Udp { sock: UdpSocket::from_std(s)?, buf: vec![0u8; 65_536] },
            Bound::Tcp(l) => {
                let (events_tx, events_rx) = mpsc::channel(QUEUE);
                Link::Tcp(Box::new(Tcp {
                    upper,
                    listener: TcpListener::from_std(l)?,
                    conns: HashMap::new(),
                    events_tx,
                    events_rx,
                    next_id: 0,
                    cancel: cancel.child_token(),
                }))
            }
        })
    }

    /// The port vigil is reached at (Via and Contact).
    pub fn port(&self) -> u16 {
        let addr = match self {
            Link::Udp { sock, .. } => sock.local_addr(),
            Link::Tcp(t) => t.listener.local_addr(),
        };
        addr.map(|a| a.port()).unwrap_or(0)
    }

    /// The next message or lost connection. Cancel-safe.
    pub async fn recv(&mut self) -> Incoming {
        match self {
            Link::Udp { sock, buf } => loop {
                match sock.recv_from(buf).await {
                    Ok((n, from)) => return Incoming::Message(buf[..n].to_vec(), from),
                    Err(e) => {
                        debug!(error = %e, "Cascade UDP receive error.");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
            Link::Tcp(t) => t.recv().await,
        }
    }

    /// Sends `bytes` to `to`: over UDP a datagram; over TCP on the connection with `to`, or a
    /// new one when `to` is the upper's address. Never waits on the peer.
    pub async fn send(&mut self, bytes: &[u8], to: SocketAddr) {
        match self {
            Link::Udp { sock, .. } => {
                if let Err(e) = sock.send_to(bytes, to).await {
                    debug!(peer = %to, error = %e, "Cannot send SIP to the upper platform.");
                }
            }
            Link::Tcp(t) => t.send(bytes, to),
        }
    }
}

impl Tcp {
    async fn recv(&mut self) -> Incoming {
        loop {
            tokio::select! {
                Some(e) = self.events_rx.recv() => match e {
                    Event::Frame(bytes, from) => return Incoming::Message(bytes, from),
                    // Only the connection now held with `peer` is lost to the UA; the end of
                    // one already let go (replaced) says nothing about the one in use.
                    Event::Ended { peer, id, why, unframeable } => {
                        if self.conns.get(&peer).is_some_and(|c| c.id == id) {
                            self.conns.remove(&peer);
                            return Incoming::Lost { peer, why, unframeable };
                        }
                    }
                },
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) if peer.ip() == self.upper.ip() => {
                        debug!(peer = %peer, "The upper platform connected for SIP.");
                        let accepted = self.conns.iter().filter(|(p, _)| **p != self.upper);
                        if accepted.clone().count() >= MAX_ACCEPTED {
                            if let Some(oldest) = accepted.min_by_key(|(_, c)| c.id).map(|(p, _)| *p) {
                                debug!(peer = %oldest, "Too many SIP connections from the upper's host; the oldest closed.");
                                self.conns.remove(&oldest);
                            }
                        }
                        self.open(peer, Some(stream));
                    }
                    Ok((_, peer)) => debug!(peer = %peer, "SIP connection from another host than the upper platform, closed."),
                    Err(e) => {
                        debug!(error = %e, "Cascade SIP accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn send(&mut self, bytes: &[u8], to: SocketAddr) {
        if !self.conns.contains_key(&to) {
            if to != self.upper {
                debug!(peer = %to, "No SIP connection with this peer any more; message dropped.");
                return;
            }
            self.open(to, None);
        }
        let Some(c) = self.conns.get(&to) else { return };
        match c.tx.try_send(bytes.to_vec()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(peer = %to, "SIP connection's queue full; message dropped.");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Its task ended; the event saying so is on its way.
                debug!(peer = %to, "SIP connection just ended; message dropped.");
            }
        }
    }

    /// A connection's task: `stream` accepted, or (None) to be made to `peer`.
    fn open(&mut self, peer: SocketAddr, stream: Option<TcpStream>) {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel(QUEUE);
        // A connection replaced: dropping its sender ends its task.
        self.conns.insert(peer, Conn { id, tx });
        tokio::spawn(connection(stream, peer, id, rx, self.events_tx.clone(), self.cancel.clone()));
    }
}

async fn connection(
    stream: Option<TcpStream>,
    peer: SocketAddr,
    id: u64,
    mut out: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let ended = |why: String, unframeable: bool| Event::Ended { peer, id, why, unframeable };
    let stream = match stream {
        Some(s) => s,
        None => match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => {
                debug!(peer = %peer, "Connected to the upper platform for SIP.");
                s
            }
            Ok(Err(e)) => {
                let _ = events.send(ended(format!("cannot connect: {e}"), false)).await;
                return;
            }
            Err(_) => {
                let _ = events.send(ended(format!("no connection within {CONNECT_TIMEOUT:?}"), false)).await;
                return;
            }
        },
    };
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut frames = Frames::new(rd, message::frame_len, MESSAGE_DEADLINE, None);
    let (why, unframeable) = loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = frames.next() => match r {
                Ok(frame) => {
                    if events.send(Event::Frame(frame, peer)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break (e.to_string(), matches!(e, End::Unframeable(_) | End::Late(_))),
            },
            m = out.recv() => match m {
                Some(bytes) => {
                    if let Err(e) = crate::net::frames::write_within(&mut wr, &bytes, WRITE_TIMEOUT).await {
                        break (e.to_string(), false);
                    }
                }
                // The link let this connection go (replaced, or the UA ended).
                None => return,
            },
        }
    };
    debug!(peer = %peer, why = %why, "SIP connection with the upper platform ended.");
    let _ = events.send(ended(why, unframeable)).await;
}
