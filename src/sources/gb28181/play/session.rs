//! One live session of one channel: bind a media port (or lease an SSRC of the single port),
//! INVITE through the SIP server, read the answer, then receive RTP (UDP in batches, or TCP) →
//! reorder window → PS demux → access units → the media pipeline's health (frames, GOP, loss,
//! the keyframe cache for snapshots), with an RTCP receiver report to UDP senders every
//! `gb28181.rtcp_interval` (to where the device's sender reports come from, else its RTP
//! port + 1, as ZLMediaKit does). Ends with the
//! reason a GB/T 28181 engineer would look for: `invite_timeout`, `invite_refused` (SIP code),
//! `no_media`, `ssrc_mismatch`, `bad_media`, `stalled`, `bye_from_device`, or stopped because
//! nobody needs the stream any more (then BYE).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::mux::{Handoff, Lease};
use super::offer::{self, Agreed, Format, MediaTransport};
use super::udp::BatchSocket;
use super::Ctx;
use crate::clock::now_ms;
use crate::media::diagnosis::Judge;
use crate::media::health::{Health, Keyframe, MediaInfo, StreamState, Unit};
use crate::media::quality::{self, Subject};
use crate::media::snapshot;
use crate::protocol::ps::es::{Assembler, Codec};
use crate::protocol::ps::{Demuxer, StreamType};
use crate::protocol::rtp::{self, Packet, Reception, Reorder, TcpFramer};
use crate::protocol::rtp_h26x::Depacketizer;
use crate::sources::gb28181::dialog::{Command, DialogEvent, EVENTS};

/// Packets held to put UDP back in order (about 100 ms of a 2 Mbit/s stream).
const REORDER_WINDOW: usize = 16;
/// Largest keyframe kept for snapshots.
const MAX_KEYFRAME: usize = 4 << 20;
/// `recvmmsg` batches read per wake-up before yielding.
const ROUNDS: usize = 4;
/// Datagrams taken from the single port's queue per wake-up before yielding.
const BATCH: usize = 64;

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// Nobody needs the stream (or vigil stops): BYE sent.
    Stopped,
    /// A failure, with the state it leaves the stream in and the words for the operator.
    Failed { state: StreamState, error: String, played: bool },
}

/// Runs one session of the subject's channel until `cancel` or a failure.
pub async fn run(
    ctx: &Ctx,
    subject: &Subject,
    health: &Arc<Health>,
    judge: &Arc<Mutex<Judge>>,
    cancel: &CancellationToken,
) -> Ended {
    let device: &str = &subject.device_id;
    let channel: &str = subject.channel.as_deref().unwrap_or(device);
    let failed = |state, error: String| Ended::Failed { state, error, played: false };
    let Some(sip) = ctx.sessions.get(device).map(|s| s.source) else {
        return failed(StreamState::InviteRefused, "the device is not registered (no SIP session)".into());
    };
    let ip = match ctx.settings.media_address {
        Some(ip) => ip,
        None => match crate::net::route_to(sip).await {
            Some(ip) => ip,
            None => return failed(StreamState::BadMedia, format!("no local address routes to the device at {sip}")),
        },
    };
    let transport = ctx.settings.transport;
    let Some(seq) = ctx.take_ssrc() else {
        return failed(StreamState::BadMedia, "all 10,000 SSRC sequences are in use".into());
    };
    let _ssrc_guard = SsrcGuard { seq, ctx };
    let Some(y) = crate::protocol::sdp::build_ssrc(false, &ctx.settings.domain, seq) else {
        return failed(
            StreamState::BadMedia,
            format!("the SIP domain {:?} is too short for a y= SSRC", ctx.settings.domain),
        );
    };
    let offered = crate::protocol::sdp::ssrc_value(&y).unwrap_or(0);
    let bound = match (transport, &ctx.mux) {
        (MediaTransport::TcpActive, _) => Some((Input::Connect, 0)),
        (MediaTransport::Udp, Some(mux)) => mux.lease(offered).map(|l| (Input::MuxUdp(l), mux.port)),
        (MediaTransport::TcpPassive, Some(mux)) => mux.lease(offered).map(|l| (Input::MuxTcp(l), mux.port)),
        (MediaTransport::Udp, None) => {
            ctx.ports.bind(ip, |ip, port| BatchSocket::new(super::bind_udp(ip, port)?)).map(|(s, p)| (Input::Udp(s), p))
        }
        (MediaTransport::TcpPassive, None) => ctx.ports.bind(ip, super::bind_tcp).map(|(l, p)| (Input::Listen(l), p)),
    };
    let Some((mut input, port)) = bound else {
        let why = match ctx.mux {
            Some(_) => format!("the SSRC {y} is still held by another stream on the single media port"),
            None => format!("no free media port in {:?}", ctx.settings.ports),
        };
        return failed(StreamState::BadMedia, why);
    };
    let _port = PortGuard { port: (port != 0 && ctx.mux.is_none()).then_some(port), ctx };
    let sdp = offer::offer(&ctx.settings.gateway_id, ip, port, &y, transport);
    let call_id = format!("{}@vigil", uuid::Uuid::now_v7().simple());
    let (events_tx, mut events) = mpsc::channel(EVENTS);
    let started = Instant::now();
    health.session_started(started, false);
    let cmd = Command::Invite {
        call_id: call_id.clone(),
        device: device.to_owned(),
        channel: channel.to_owned(),
        sdp,
        ssrc: y.clone(),
        events: events_tx,
    };
    if ctx.commands.send(cmd).await.is_err() {
        return Ended::Stopped; // the SIP server is gone: vigil is stopping
    }
    let hangup = || {
        let _ = ctx.commands.try_send(Command::Hangup { call_id: call_id.clone() });
    };
    // The answer.
    let deadline = tokio::time::sleep(ctx.settings.invite_timeout);
    tokio::pin!(deadline);
    let answer = loop {
        tokio::select! {
            _ = cancel.cancelled() => { hangup(); return Ended::Stopped; }
            _ = &mut deadline => {
                hangup();
                return failed(StreamState::InviteTimeout, format!("no answer to the INVITE within {:?}", ctx.settings.invite_timeout));
            }
            e = events.recv() => match e {
                Some(DialogEvent::Provisional(_)) => continue,
                Some(DialogEvent::Answered { sdp }) => break sdp,
                Some(DialogEvent::Refused { code, reason }) => {
                    return failed(StreamState::InviteRefused, format!("SIP {code} {reason}"));
                }
                Some(DialogEvent::NotRegistered) => {
                    return failed(StreamState::InviteRefused, "the device is not registered (no SIP session)".into());
                }
                Some(DialogEvent::NoAnswer) => {
                    return failed(StreamState::InviteTimeout, "no final answer to the INVITE (Timer B)".into());
                }
                Some(DialogEvent::ByeFromDevice) | None => {
                    return failed(StreamState::ByeFromDevice, "the device ended the dialog before media".into());
                }
            }
        }
    };
    let agreed = match offer::check_answer(&answer, offered, transport) {
        Ok(a) => a,
        Err(e) => {
            hangup();
            return failed(StreamState::BadMedia, e.to_string());
        }
    };
    if agreed.ssrc_rebound {
        info!(device, channel, offered = %y, answered = ?agreed.ssrc, "The device answered its own y= SSRC; receiving that one.");
    }
    if let Input::MuxUdp(lease) | Input::MuxTcp(lease) = &mut input {
        let theirs = agreed.ssrc.unwrap_or(offered);
        if !lease.bind(agreed.from.ip(), theirs) {
            hangup();
            return failed(
                StreamState::SsrcMismatch,
                format!("the device answered y= SSRC {theirs}, which another stream holds on the single media port"),
            );
        }
    }
    let diagnosis =
        Diagnosis { subject: subject.clone(), judge: judge.clone(), busy: Arc::default(), last: None, samples: 0 };
    let mut rx = Receiver::new(agreed, health.clone(), ctx, diagnosis);
    let ended = rx.receive(input, &mut events, cancel, started).await;
    if !matches!(&ended, Ended::Failed { state: StreamState::ByeFromDevice, .. }) {
        hangup();
    }
    ended
}

/// The first connection from the device's host (others are closed and counted: anyone on
/// the network could connect to a listening media port).
async fn accept_from(listener: &tokio::net::TcpListener, host: std::net::IpAddr) -> Option<tokio::net::TcpStream> {
    loop {
        match listener.accept().await {
            Ok((t, peer)) if peer.ip() == host => return Some(t),
            Ok((_, peer)) => debug!(peer = %peer, "A media connection from another host than the device's, closed."),
            Err(_) => return None,
        }
    }
}

/// A media port given back when the session ends.
struct PortGuard<'a> {
    port: Option<u16>,
    ctx: &'a Ctx,
}

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.port {
            self.ctx.ports.release(p);
        }
    }
}

/// Where media comes in.
enum Input {
    Udp(BatchSocket),
    /// `tcp_passive`: the device connects here.
    Listen(tokio::net::TcpListener),
    /// `tcp_active`: vigil connects to the answer's address.
    Connect,
    /// The single port: datagrams with the stream's SSRC.
    MuxUdp(Lease),
    /// The single port, `tcp_passive`: the connection whose first packet has the stream's SSRC.
    MuxTcp(Lease),
}

/// Largest RTP-over-TCP read at once.
const TCP_READ: usize = 64 * 1024;

thread_local! {
    /// The TCP read buffer of the streams this thread serves.
    static RECV: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; TCP_READ]);
}

struct SsrcGuard<'a> {
    seq: u32,
    ctx: &'a Ctx,
}

impl Drop for SsrcGuard<'_> {
    fn drop(&mut self) {
        self.ctx.release_ssrc(self.seq);
    }
}

/// An RTP payload held in the reorder window, with what an elementary stream needs of its
/// header.
struct Held {
    payload: Vec<u8>,
    timestamp: u32,
    marker: bool,
}

/// When a playing channel is diagnosed: at each keyframe until `alarm_after` samples of this
/// session are in (a verdict within seconds of an operator's or patrol's pull), then every
/// `rtsp.diagnosis_every`; never two at once.
struct Diagnosis {
    subject: Subject,
    judge: Arc<Mutex<Judge>>,
    busy: Arc<AtomicBool>,
    last: Option<Instant>,
    samples: u32,
}

/// RTP in, access units into health.
struct Receiver<'a> {
    diagnosis: Diagnosis,
    agreed: Agreed,
    ssrc: Option<u32>,
    /// The address media is taken from, once the first good packet came.
    source: Option<SocketAddr>,
    health: Arc<Health>,
    ctx: &'a Ctx,
    reorder: Reorder<Held>,
    /// The last sequence number released in order (a gap before the next breaks a fragment).
    released: Option<u64>,
    demuxer: Demuxer,
    /// For elementary streams over RTP (`98 H264`, `99 H265` answers).
    depacketizer: Option<Depacketizer>,
    assembler: Assembler,
    lost_reported: u64,
    wrong_ssrc: u64,
    packets: u64,
    packets_reported: u64,
    played: bool,
    sized: bool,
    /// For receiver reports: vigil's SSRC as a receiver, what came, where reports go.
    reporter: u32,
    reception: Reception,
    rtcp_to: Option<SocketAddr>,
    epoch: Instant,
}

impl<'a> Receiver<'a> {
    fn new(agreed: Agreed, health: Arc<Health>, ctx: &'a Ctx, diagnosis: Diagnosis) -> Self {
        let mut assembler = Assembler::default();
        let depacketizer = match agreed.format {
            Format::Ps => None,
            Format::Es(codec) => Some(Depacketizer::new(codec)),
        };
        if let Format::Es(codec) = agreed.format {
            assembler.set_hint(Some(codec));
        }
        Receiver {
            diagnosis,
            ssrc: agreed.ssrc,
            agreed,
            source: None,
            health,
            ctx,
            reorder: Reorder::new(REORDER_WINDOW),
            released: None,
            demuxer: Demuxer::default(),
            depacketizer,
            assembler,
            lost_reported: 0,
            wrong_ssrc: 0,
            packets: 0,
            packets_reported: 0,
            played: false,
            sized: false,
            reporter: uuid::Uuid::new_v4().as_u128() as u32,
            reception: Reception::default(),
            rtcp_to: None,
            epoch: Instant::now(),
        }
    }

    async fn receive(
        &mut self,
        input: Input,
        events: &mut mpsc::Receiver<DialogEvent>,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Ended {
        let timeout = self.ctx.settings.media_timeout;
        // TCP: the connection first (the device's, or ours to its port), within the media
        // timeout; then the same receive loop over framed packets.
        let (tcp, first) = match input {
            Input::Udp(sock) => return self.receive_udp(Some(sock), None, events, cancel, started).await,
            Input::MuxUdp(lease) => return self.receive_udp(None, Some(lease), events, cancel, started).await,
            Input::MuxTcp(mut lease) => {
                let handed = match lease.tcp.take() {
                    Some(rx) => tokio::select! {
                        _ = cancel.cancelled() => return Ended::Stopped,
                        _ = tokio::time::sleep(timeout) => None,
                        h = rx => h.ok(),
                    },
                    None => None,
                };
                match handed {
                    Some(Handoff { stream, first })
                        if stream.peer_addr().is_ok_and(|p| p.ip() == self.agreed.from.ip()) =>
                    {
                        (stream, first)
                    }
                    Some(_) => {
                        self.ctx.count_dropped("foreign_source");
                        return self.fail(
                            StreamState::NoMedia,
                            "a connection from another host than the device's carried the stream's SSRC".into(),
                        );
                    }
                    None => {
                        return self.fail(
                            StreamState::NoMedia,
                            format!(
                                "no connection with the stream's SSRC on the single media port within {:.1} s",
                                timeout.as_secs_f64()
                            ),
                        );
                    }
                }
            }
            Input::Listen(listener) => {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => return Ended::Stopped,
                    _ = tokio::time::sleep(timeout) => None,
                    a = accept_from(&listener, self.agreed.from.ip()) => a,
                };
                match accepted {
                    Some(t) => (t, Vec::new()),
                    None => {
                        return self.fail(
                            StreamState::NoMedia,
                            format!("the device did not connect for media within {:.1} s", timeout.as_secs_f64()),
                        );
                    }
                }
            }
            Input::Connect => {
                let to = self.agreed.from;
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to)).await {
                    Ok(Ok(t)) => (t, Vec::new()),
                    Ok(Err(e)) => {
                        return self
                            .fail(StreamState::NoMedia, format!("cannot connect to the device's media port {to}: {e}"))
                    }
                    Err(_) => {
                        return self.fail(
                            StreamState::NoMedia,
                            format!(
                                "no connection to the device's media port {to} within {:.1} s",
                                timeout.as_secs_f64()
                            ),
                        )
                    }
                }
            }
        };
        self.receive_tcp(tcp, &first, events, cancel).await
    }

    fn fail(&self, state: StreamState, error: String) -> Ended {
        Ended::Failed { state, error, played: self.played }
    }

    async fn receive_tcp(
        &mut self,
        tcp: tokio::net::TcpStream,
        first: &[u8],
        events: &mut mpsc::Receiver<DialogEvent>,
        cancel: &CancellationToken,
    ) -> Ended {
        let timeout = self.ctx.settings.media_timeout;
        let peer = match tcp.peer_addr() {
            Ok(p) => p,
            Err(e) => return self.fail(StreamState::NoMedia, format!("the media connection failed: {e}")),
        };
        self.source = Some(peer);
        let mut framer = TcpFramer::default();
        let mut last_frame = Instant::now();
        // Bytes the single port read while finding whose connection this is.
        framer.push(first, |f| {
            if self.packet(f, peer) {
                last_frame = Instant::now();
            }
        });
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Stopped,
                e = events.recv() => match e {
                    Some(DialogEvent::ByeFromDevice) | None => return self.fail(StreamState::ByeFromDevice, "the device sent BYE".into()),
                    Some(_) => {}
                },
                _ = check.tick() => {
                    let quiet = last_frame.elapsed();
                    if quiet >= timeout {
                        return self.quiet(quiet);
                    }
                }
                r = tcp.readable() => {
                    if let Err(e) = r {
                        return self.fail(StreamState::Stalled, format!("the media connection failed: {e}"));
                    }
                    let read = RECV.with_borrow_mut(|buf| match tcp.try_read(&mut buf[..TCP_READ]) {
                        Ok(0) => Err(None),
                        Ok(n) => {
                            let mut pictured = false;
                            framer.push(&buf[..n], |f| pictured |= self.packet(f, peer));
                            Ok(pictured)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
                        Err(e) => Err(Some(e)),
                    });
                    match read {
                        Ok(true) => last_frame = Instant::now(),
                        Ok(false) => {}
                        Err(None) => {
                            let state = if self.played { StreamState::Stalled } else { StreamState::NoMedia };
                            return self.fail(state, "the device closed the media connection".into());
                        }
                        Err(Some(e)) => return self.fail(StreamState::Stalled, format!("the media connection failed: {e}")),
                    }
                }
            }
        }
    }

    async fn receive_udp(
        &mut self,
        own: Option<BatchSocket>,
        mut lease: Option<Lease>,
        events: &mut mpsc::Receiver<DialogEvent>,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Ended {
        let timeout = self.ctx.settings.media_timeout;
        let mut last_frame = started;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let every = self.ctx.settings.rtcp_interval;
        let mut rtcp = tokio::time::interval_at(
            Instant::now() + every.unwrap_or(Duration::MAX / 4),
            every.unwrap_or(Duration::MAX / 4),
        );
        loop {
            let readable = async {
                match &own {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            };
            let queued = async {
                match lease.as_mut() {
                    Some(l) => l.packets.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Stopped,
                e = events.recv() => match e {
                    Some(DialogEvent::ByeFromDevice) | None => {
                        return self.fail(StreamState::ByeFromDevice, "the device sent BYE".into());
                    }
                    Some(_) => {}
                },
                _ = check.tick() => {
                    let quiet = last_frame.elapsed();
                    if quiet >= timeout {
                        return self.quiet(quiet);
                    }
                }
                _ = rtcp.tick(), if every.is_some() => {
                    let sock = own.as_ref().map(|s| s.socket()).or_else(|| lease.as_ref().map(|l| l.mux().socket()));
                    if let Some(sock) = sock {
                        self.report(sock);
                    }
                }
                r = readable => {
                    if r.is_err() {
                        return self.fail(StreamState::BadMedia, "the media socket failed".into());
                    }
                    let mut pictured = false;
                    if let Some(sock) = &own {
                        if let Err(e) = sock.drain(ROUNDS, |data, from| pictured |= self.packet(data, from)) {
                            debug!(error = %e, "Media socket read failed.");
                        }
                    }
                    if pictured {
                        last_frame = Instant::now();
                    }
                }
                d = queued => {
                    let Some(d) = d else { return Ended::Stopped }; // the single port closed: vigil stops
                    let mut pictured = self.packet(&d.data, d.from);
                    if let Some(l) = lease.as_mut() {
                        for _ in 0..BATCH {
                            match l.packets.try_recv() {
                                Ok(d) => pictured |= self.packet(&d.data, d.from),
                                Err(_) => break,
                            }
                        }
                    }
                    if pictured {
                        last_frame = Instant::now();
                    }
                }
            }
        }
    }

    /// Sends an RTCP receiver report about the stream, once RTP has come.
    fn report(&mut self, sock: &UdpSocket) {
        let (Some(ssrc), Some(span), Some(source)) = (self.ssrc, self.reorder.span(), self.source) else { return };
        let to = self.rtcp_to.unwrap_or_else(|| SocketAddr::new(source.ip(), source.port().wrapping_add(1)));
        let rr = self.reception.report(self.reporter, ssrc, span, self.since_epoch(65_536));
        match sock.try_send_to(&rr.to_bytes(), to) {
            Ok(_) => self.ctx.metrics.gb_rtcp_reports.inc(),
            Err(e) => debug!(to = %to, error = %e, "RTCP receiver report not sent."),
        }
    }

    /// Time since the session's receiver started, in units of `1/hz` s (wrapping).
    fn since_epoch(&self, hz: u64) -> u64 {
        let d = self.epoch.elapsed();
        d.as_secs() * hz + u64::from(d.subsec_nanos()) * hz / 1_000_000_000
    }

    /// The end of a quiet stream: what it was quiet of.
    fn quiet(&self, quiet: Duration) -> Ended {
        let (state, error) = if self.played {
            (StreamState::Stalled, format!("no picture for {:.1} s", quiet.as_secs_f64()))
        } else if self.packets == 0 && self.wrong_ssrc > 0 {
            (
                StreamState::SsrcMismatch,
                format!("{} RTP packets came, none with the agreed SSRC {:?}", self.wrong_ssrc, self.ssrc),
            )
        } else if self.packets == 0 {
            (StreamState::NoMedia, format!("no RTP within {:.1} s of the answer", quiet.as_secs_f64()))
        } else {
            (StreamState::BadMedia, format!("{} RTP packets came and no picture could be read from them", self.packets))
        };
        Ended::Failed { state, error, played: self.played }
    }

    /// One datagram; true when it completed at least one picture.
    fn packet(&mut self, data: &[u8], from: SocketAddr) -> bool {
        if from.ip() != self.agreed.from.ip() && self.source.is_none_or(|s| s != from) {
            self.ctx.count_dropped("foreign_source");
            return false;
        }
        if rtp::is_rtcp(data) {
            // A sender report from the device: where its RTCP comes from, and its time for
            // the next receiver report's LSR/DLSR.
            if let Some((ssrc, ntp)) = rtp::sender_report(data) {
                if self.ssrc.is_none_or(|s| s == ssrc) {
                    self.reception.sender_report(ntp, self.since_epoch(65_536));
                    self.rtcp_to = Some(from);
                }
            }
            return false;
        }
        let p = match Packet::parse(data) {
            Ok(p) => p,
            Err(_) => {
                self.ctx.count_dropped("malformed");
                self.health.count_media_error();
                return false;
            }
        };
        match self.ssrc {
            Some(s) if s != p.ssrc => {
                self.wrong_ssrc += 1;
                self.ctx.count_dropped("ssrc");
                return false;
            }
            None => self.ssrc = Some(p.ssrc),
            _ => {}
        }
        if p.payload_type != self.agreed.payload_type {
            self.ctx.count_dropped("payload_type");
            return false;
        }
        self.source.get_or_insert(from);
        self.packets += 1;
        self.reception.packet(self.since_epoch(90_000) as u32, p.timestamp);
        // In order and nothing held (most packets): straight through, no copy.
        if let Some(seq) = self.reorder.in_order(p.sequence) {
            let gap = self.released.is_some_and(|r| seq != r + 1);
            self.released = Some(seq);
            return match self.depacketizer.is_some() {
                true => self.es_payload(p.payload, p.timestamp, p.marker, gap),
                false => self.payload(p.payload),
            };
        }
        let held = Held { payload: p.payload.to_vec(), timestamp: p.timestamp, marker: p.marker };
        let mut released = Vec::new();
        self.reorder.push(p.sequence, held, |seq, h| released.push((seq, h)));
        let mut pictured = false;
        for (seq, h) in released {
            let gap = self.released.is_some_and(|r| seq != r + 1);
            self.released = Some(seq);
            pictured |= match self.depacketizer.is_some() {
                true => self.es_payload(&h.payload, h.timestamp, h.marker, gap),
                false => self.payload(&h.payload),
            };
        }
        pictured
    }

    /// An elementary-stream payload in order: access units into health.
    fn es_payload(&mut self, payload: &[u8], timestamp: u32, marker: bool, gap: bool) -> bool {
        let Some(d) = self.depacketizer.as_mut() else { return false };
        let before = d.counters.malformed;
        // Each access unit goes from the depacketizer's buffer straight into the assembler.
        let assembler = &mut self.assembler;
        let mut units = Vec::new();
        d.push(payload, timestamp, marker, gap, |t, au| assembler.push(Some(u64::from(t)), au, |u| units.push(u)));
        if d.counters.malformed > before {
            self.ctx.count_dropped("malformed");
            self.health.count_media_error();
        }
        self.units(units)
    }

    /// A PS payload in order: PES out, access units out, into health.
    fn payload(&mut self, payload: &[u8]) -> bool {
        let mut video = Vec::new();
        self.demuxer.push(payload, |pes| {
            if pes.is_video() {
                video.push(pes);
            }
        });
        let mut units = Vec::new();
        for pes in video {
            let hint = self.demuxer.stream_type(pes.stream_id).and_then(|t| match t {
                StreamType::H264 => Some(Codec::H264),
                StreamType::H265 => Some(Codec::H265),
                _ => None,
            });
            self.assembler.set_hint(hint);
            self.assembler.push(pes.pts, &pes.payload, |u| units.push(u));
        }
        self.units(units)
    }

    /// Access units into health; true when there was one.
    fn units(&mut self, units: Vec<crate::protocol::ps::es::AccessUnit>) -> bool {
        let any = !units.is_empty();
        for u in units {
            let now = Instant::now();
            let lost = self.reorder.losses.lost;
            let loss = u16::try_from(lost - self.lost_reported).unwrap_or(u16::MAX);
            self.lost_reported = lost;
            let codec = match u.codec {
                Codec::H264 => snapshot::Codec::H264,
                Codec::H265 => snapshot::Codec::H265,
            };
            let len = u.data.len();
            let pts = u.pts.map_or(0, |p| p as i64);
            let keyframe = u.keyframe;
            // For listeners (an upper platform playing this channel), only while one listens;
            // published after `frame` (see `Health::tap`).
            let unit = self.health.tapped().then(|| Unit {
                codec,
                pts,
                keyframe,
                data: bytes::Bytes::copy_from_slice(&u.data),
            });
            let key =
                (keyframe && len <= MAX_KEYFRAME).then(|| Keyframe { codec, data: Arc::from(u.data), pts, seq: 0 });
            if let Some(k) = key.as_ref().filter(|_| !self.sized) {
                self.sized = true;
                self.describe(codec, k.clone());
            }
            let is_key = key.is_some();
            self.health.count_packets(self.packets - self.packets_reported);
            self.packets_reported = self.packets;
            let note = self.health.frame(now, len, loss, key);
            if let Some(u) = unit {
                self.health.publish(u);
            }
            self.ctx.metrics.gb_frames.inc();
            self.ctx.metrics.gb_bytes.inc_by(len as u64);
            if is_key {
                self.diagnose(now);
            }
            if let Some(ttff) = note.first {
                self.played = true;
                self.health.set_state(StreamState::Playing, now_ms(), None);
                self.ctx.metrics.gb_first_frame.observe(ttff as f64 / 1000.0);
                // Debug: a patrol round plays thousands of channels; failures are warnings.
                debug!(codec = codec.as_str(), first_frame_ms = ttff, "GB/T 28181 stream playing.");
            }
        }
        any
    }

    /// Starts a diagnosis of the keyframes when one is due.
    fn diagnose(&mut self, now: Instant) {
        let Some(every) = self.ctx.diagnosis_every else { return };
        let d = &mut self.diagnosis;
        let eager = d.samples < self.ctx.diagnoser.alarm_after;
        let due = eager || d.last.is_none_or(|t| now.duration_since(t) >= every);
        // The first keyframe alone says nothing about a frozen picture: wait for the second.
        if !due || self.health.keyframes().1.is_none() || d.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        d.last = Some(now);
        d.samples += 1;
        let job = quality::Job {
            subject: d.subject.clone(),
            health: self.health.clone(),
            judge: d.judge.clone(),
            busy: d.busy.clone(),
        };
        tokio::spawn(quality::diagnose(self.ctx.diagnoser.clone(), job));
    }

    /// Publishes the codec at once and the picture size once the first keyframe is decoded
    /// (PS carries no resolution; the decoder reads it from the parameter sets).
    fn describe(&self, codec: snapshot::Codec, key: Keyframe) {
        let transport = self.ctx.settings.transport.as_str();
        let info = MediaInfo { codec: Some(codec.as_str().into()), transport, ..MediaInfo::default() };
        self.health.set_media(info.clone());
        let Some(pool) = self.ctx.board.pool() else { return };
        let health = self.health.clone();
        tokio::spawn(async move {
            if let Ok(Ok(picture)) = pool.run(move || snapshot::decode(key.codec, &key.data)).await {
                health.set_media(MediaInfo { width: Some(picture.width()), height: Some(picture.height()), ..info });
            }
        });
    }
}
