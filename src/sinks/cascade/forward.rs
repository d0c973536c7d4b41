//! Video to an upper platform that plays a channel: one task per play. It finds the channel's
//! stream on the board (asking the GB/T 28181 player for it when the channel is a device's,
//! holding it while it plays), waits for a keyframe, opens the media socket the answer names,
//! and once the upper has ACKed sends every access unit as a PS pack (`protocol::ps::mux`)
//! cut into RTP packets with the upper's SSRC: over UDP, or over TCP with the RFC 4571 length
//! (vigil connecting to the upper, or the upper to vigil). It starts from the stream's cached
//! keyframe so the upper decodes at once. One pull serves every consumer: two uppers, patrol
//! and snapshots all read the same stream, and a GB/T 28181 channel stops once the last holder
//! lets go. The UA (`play`) learns the outcome through `Event`s.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::catalog::Video;
use crate::media::health::{Health, Unit};
use crate::media::snapshot::Codec as PictureCodec;
use crate::media::{channel_key, Demand, DemandError, Holder, StreamBoard};
use crate::protocol::ps::es::Codec;
use crate::protocol::ps::mux;
use crate::protocol::rtp::Packet;
use crate::protocol::sdp::{self, Direction, RtpMap, Sdp, Setup, Transport};

/// RTP payload bytes per packet.
const MTU: usize = 1400;
/// Access units queued for a slow upper before it skips to the next keyframe.
const QUEUE: usize = 256;
/// How long a GB/T 28181 channel is held per renewal, and how often the hold is renewed.
const HOLD: Duration = Duration::from_secs(30);
const RENEW: Duration = Duration::from_secs(10);
/// The upper has this long to ACK the 200 (then vigil sends BYE).
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// How long a TCP media connection may take to open.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the cached keyframe waits for the first live unit to take its time from.
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// One frame at 25 fps, 90 kHz.
const FRAME_90K: i64 = 3_600;
/// A source silent this long has ended: BYE.
const SILENT: Duration = Duration::from_secs(30);

/// What the play task tells the UA.
#[derive(Debug)]
pub enum Event {
    /// The source plays: answer 200 with this SDP.
    Answer { call_id: String, sdp: String },
    /// The play cannot start: answer the INVITE with this code.
    Refuse { call_id: String, code: u16, reason: String },
    /// The play ended on vigil's side (the source, the media connection, no ACK): BYE.
    Ended { call_id: String, why: String },
}

/// How the upper wants the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    Udp,
    /// The upper listens (`a=setup:passive`): vigil connects.
    TcpConnect,
    /// The upper connects (`a=setup:active`): vigil listens.
    TcpListen,
}

/// An upper's INVITE, read.
#[derive(Debug, Clone)]
pub struct Offer {
    pub channel: String,
    pub video: Video,
    /// Where the media goes (`c=` and the `m=` port).
    pub to: SocketAddr,
    pub carry: Carry,
    pub ssrc: u32,
    pub payload: u8,
}

/// Reads an upper's offer for `channel`: the SSRC from `y=` (`picked` when it has none and the
/// upstream allows it), the media address, UDP or TCP and who connects. The error is the SIP
/// answer: code and reason.
pub fn read_offer(body: &[u8], channel: &str, video: Video, picked: Option<u32>) -> Result<Offer, (u16, String)> {
    let text = std::str::from_utf8(body).map_err(|_| (400, "Bad Request (SDP is not UTF-8)".to_owned()))?;
    let s = Sdp::parse(text).map_err(|e| (400, format!("Bad Request ({e})")))?;
    let m = s.video().ok_or((488, "Not Acceptable Here (no m=video)".to_owned()))?;
    let ssrc = match s.ssrc.as_deref() {
        Some(y) => sdp::ssrc_value(y).map_err(|e| (400, format!("Bad Request ({e})")))?,
        None => picked.ok_or((400, "Bad Request (no y= SSRC)".to_owned()))?,
    };
    let ip: IpAddr = s.address.parse().map_err(|_| (400, "Bad Request (c= is not an IP address)".to_owned()))?;
    if ip.is_unspecified() || m.port == 0 {
        return Err((400, "Bad Request (no media address in c= / m=)".to_owned()));
    }
    let payload = m
        .payload_of("PS")
        .or_else(|| m.payload_of("MP2P"))
        .or_else(|| m.payloads.first().copied())
        .ok_or((488, "Not Acceptable Here (no payload type)".to_owned()))?;
    let carry = match (m.transport, m.setup) {
        (Transport::Udp, _) => Carry::Udp,
        (Transport::Tcp, Some(Setup::Active)) => Carry::TcpListen,
        (Transport::Tcp, _) => Carry::TcpConnect,
    };
    Ok(Offer { channel: channel.to_owned(), video, to: SocketAddr::new(ip, m.port), carry, ssrc, payload })
}

/// The answer to `offer`: `a=sendonly`, the upper's SSRC in `y=`, the opposite `a=setup` for
/// TCP, vigil's media address.
pub fn answer(offer: &Offer, ip: IpAddr, port: u16) -> String {
    let (transport, setup) = match offer.carry {
        Carry::Udp => (Transport::Udp, None),
        Carry::TcpConnect => (Transport::Tcp, Some(Setup::Active)),
        Carry::TcpListen => (Transport::Tcp, Some(Setup::Passive)),
    };
    Sdp {
        origin: offer.channel.clone(),
        address: ip.to_string(),
        session: "Play".into(),
        uri: None,
        times: (0, 0),
        media: vec![sdp::Media {
            kind: "video".into(),
            port,
            transport,
            payloads: vec![offer.payload],
            rtpmaps: vec![RtpMap { payload: offer.payload, encoding: "PS".into(), clock_rate: 90_000 }],
            direction: Some(Direction::SendOnly),
            setup,
            connection_new: setup.is_some(),
            other: Vec::new(),
        }],
        ssrc: Some(format!("{:010}", offer.ssrc)),
        format: Some("v/////a/1/8/1".into()),
    }
    .render()
}

/// What every play task of the cascade shares.
pub struct Media {
    pub board: StreamBoard,
    /// How long a channel may take to give a keyframe before the INVITE is refused.
    pub ready_wait: Duration,
}

/// Numbers the holds of plays (`Holder::Upper`).
static PLAYS: AtomicU64 = AtomicU64::new(1);

/// The media socket, bound before the answer names it.
enum Socket {
    Udp(UdpSocket),
    Connect(tokio::net::TcpSocket),
    Listen(TcpListener),
}

/// Where the packets go once the play runs.
enum Sender {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

/// Runs one play: answers through `events`, sends once `ack` fires, until `cancel` (the
/// upper's BYE) or the source ends.
pub async fn run(
    media: Arc<Media>,
    call_id: String,
    offer: Offer,
    local: IpAddr,
    ack: oneshot::Receiver<()>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let holder = Holder::Upper(PLAYS.fetch_add(1, Ordering::Relaxed));
    let (key, gb) = match &offer.video {
        Video::Pulled(key) => (key.clone(), None),
        Video::Gb { device, channel } => (channel_key(device, channel), Some((device.clone(), channel.clone()))),
    };
    let hold = |hold: Duration| {
        gb.as_ref().map(|(device, channel)| {
            media.board.demand(Demand { device: device.clone(), channel: channel.clone(), hold, holder })
        })
    };
    let ended = async {
        if let Some(Err(e)) = hold(HOLD) {
            let code = match e {
                DemandError::NoPuller => 488,
                DemandError::Busy => 486,
            };
            return Err((code, format!("{e}")));
        }
        let health = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            h = ready(&media, &key) => h.ok_or((480, "Temporarily Unavailable (no picture from the channel yet)".to_owned()))?,
        };
        let (first, units) = health.tap(QUEUE);
        if first.as_ref().is_some_and(|k| k.codec == PictureCodec::Jpeg) {
            return Err((488, "Not Acceptable Here (the camera sends MJPEG, which PS cannot carry)".to_owned()));
        }
        let socket = bind(offer.carry, offer.to).await.map_err(|e| (500, format!("Server Internal Error (media socket: {e})")))?;
        let port = match &socket {
            Socket::Udp(s) => s.local_addr(),
            Socket::Connect(s) => s.local_addr(),
            Socket::Listen(l) => l.local_addr(),
        }
        .map(|a| a.port())
        .unwrap_or(0);
        let sdp = answer(&offer, local, port);
        let _ = events.send(Event::Answer { call_id: call_id.clone(), sdp }).await;
        let acked = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = tokio::time::timeout(ACK_WAIT, ack) => r,
        };
        if !matches!(acked, Ok(Ok(()))) {
            return Ok(Some("no ACK for the 200 within 60 s".to_owned()));
        }
        let sender = match socket {
            Socket::Udp(s) => Sender::Udp(s, offer.to),
            Socket::Connect(s) => match tokio::time::timeout(CONNECT_WAIT, s.connect(offer.to)).await {
                Ok(Ok(t)) => Sender::Tcp(t),
                Ok(Err(e)) => return Ok(Some(format!("cannot connect the media to {}: {e}", offer.to))),
                Err(_) => return Ok(Some(format!("the media connection to {} did not open", offer.to))),
            },
            Socket::Listen(l) => {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    r = tokio::time::timeout(CONNECT_WAIT, accept_from(&l, offer.to.ip())) => r,
                };
                match accepted {
                    Ok(Ok(t)) => Sender::Tcp(t),
                    _ => return Ok(Some("the upper did not open the media connection".to_owned())),
                }
            }
        };
        info!(channel = %offer.channel, to = %offer.to, carry = ?offer.carry, ssrc = offer.ssrc, "Cascade: the upper platform plays a channel.");
        Ok(stream(&media, &key, &health, first, units, sender, &offer, &cancel, &hold).await)
    }
    .await;
    let _ = hold(Duration::ZERO);
    match ended {
        Err((code, reason)) => {
            debug!(channel = %offer.channel, code, reason = %reason, "Cascade: an upper's INVITE refused.");
            let _ = events.send(Event::Refuse { call_id, code, reason }).await;
        }
        Ok(Some(why)) => {
            info!(channel = %offer.channel, why = %why, "Cascade: play to the upper platform ended; BYE.");
            let _ = events.send(Event::Ended { call_id, why }).await;
        }
        Ok(None) => debug!(channel = %offer.channel, "Cascade: the upper platform stopped the play."),
    }
}

/// The media socket for `carry`, on every address, of the family of the upper's `to`.
async fn bind(carry: Carry, to: SocketAddr) -> std::io::Result<Socket> {
    let any = SocketAddr::new(if to.is_ipv6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0, 0, 0, 0]) }, 0);
    Ok(match carry {
        Carry::Udp => Socket::Udp(UdpSocket::bind(any).await?),
        Carry::TcpConnect => {
            let s = if to.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
            s.bind(any)?;
            Socket::Connect(s)
        }
        Carry::TcpListen => Socket::Listen(TcpListener::bind(any).await?),
    })
}

/// The stream `key` once it has a keyframe; `None` after `media.ready_wait`.
async fn ready(media: &Media, key: &str) -> Option<Arc<Health>> {
    let deadline = tokio::time::Instant::now() + media.ready_wait;
    loop {
        if let Some(h) = media.board.stream(key).filter(|h| h.keyframes().0.is_some()) {
            return Some(h);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        media.board.changed(key, left.min(Duration::from_millis(500))).await;
    }
}

/// The first TCP connection from the upper's host.
async fn accept_from(l: &TcpListener, host: IpAddr) -> std::io::Result<TcpStream> {
    loop {
        let (t, peer) = l.accept().await?;
        if peer.ip() == host {
            return Ok(t);
        }
        debug!(peer = %peer, "Cascade media: a connection from another host than the upper's, closed.");
    }
}

/// Sends the cached keyframe, then every unit, until the play ends; why it ended (`None`: the
/// upper stopped it).
#[allow(clippy::too_many_arguments)]
async fn stream(
    media: &Media,
    key: &str,
    health: &Arc<Health>,
    first: Option<crate::media::health::Keyframe>,
    mut units: mpsc::Receiver<Unit>,
    mut sender: Sender,
    offer: &Offer,
    cancel: &CancellationToken,
    hold: &impl Fn(Duration) -> Option<Result<(), DemandError>>,
) -> Option<String> {
    let mut rtp = Rtp { ssrc: offer.ssrc, payload: offer.payload, sequence: random_u16(), base: None, buf: Vec::new() };
    // The cached keyframe goes first, stamped one frame before the first live unit so the
    // upper's timeline runs on without a jump (the keyframe may be a GOP old); a live
    // keyframe makes it unneeded. A stream slower than `FIRST_WAIT` gets it as it was.
    let mut pending = None;
    if let Some(k) = first.filter(|k| ps_codec(k.codec).is_some()) {
        let next = tokio::select! {
            _ = cancel.cancelled() => return None,
            u = tokio::time::timeout(FIRST_WAIT, units.recv()) => u.ok().flatten(),
        };
        let (skip_cached, pts) = match &next {
            Some(u) => (u.keyframe, u.pts - FRAME_90K),
            None => (false, k.pts),
        };
        if let (false, Some(codec)) = (skip_cached, ps_codec(k.codec)) {
            if let Err(e) = rtp.send(&mut sender, codec, pts, true, &k.data).await {
                return Some(e);
            }
        }
        pending = next;
    }
    let mut renew = tokio::time::interval(RENEW);
    renew.tick().await;
    loop {
        if let Some(u) = pending.take() {
            if let Some(codec) = ps_codec(u.codec) {
                if let Err(e) = rtp.send(&mut sender, codec, u.pts, u.keyframe, &u.data).await {
                    return Some(e);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = renew.tick() => {
                let _ = hold(HOLD);
                if !media.board.stream(key).is_some_and(|h| Arc::ptr_eq(&h, health)) {
                    return Some("the source stream stopped".into());
                }
            }
            u = tokio::time::timeout(SILENT, units.recv()) => {
                let u = match u {
                    Ok(Some(u)) => u,
                    Ok(None) => return Some("the source stream stopped".into()),
                    Err(_) => return Some(format!("no picture from the source for {} s", SILENT.as_secs())),
                };
                pending = Some(u);
            }
        }
    }
}

fn random_u16() -> u16 {
    let b = uuid::Uuid::new_v4();
    u16::from_be_bytes([b.as_bytes()[0], b.as_bytes()[1]])
}

fn ps_codec(c: PictureCodec) -> Option<Codec> {
    match c {
        PictureCodec::H264 => Some(Codec::H264),
        PictureCodec::H265 => Some(Codec::H265),
        PictureCodec::Jpeg => None,
    }
}

/// The RTP side of one play.
struct Rtp {
    ssrc: u32,
    payload: u8,
    sequence: u16,
    /// The play's timeline starts `TIMELINE_START` before its first unit: the source's clock
    /// (hours into an RTSP session, anywhere in 33 bits) is not the upper's business, and
    /// GStreamer's PS demuxer clips everything of a stream that starts late in the clock.
    base: Option<i64>,
    buf: Vec<u8>,
}

/// Where the play's timeline starts (90 kHz): room for B-frames stamped before the first.
const TIMELINE_START: i64 = 90_000;

impl Rtp {
    /// One access unit as a PS pack in RTP packets (one timestamp, the marker on the last).
    async fn send(
        &mut self,
        to: &mut Sender,
        codec: Codec,
        pts: i64,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), String> {
        let base = *self.base.get_or_insert(pts - TIMELINE_START);
        let pts = ((pts - base).max(0) as u64) & 0x1_FFFF_FFFF;
        let pack = mux::pack(codec, pts, keyframe, data);
        let last = mux::rtp_payloads(&pack, MTU).count().saturating_sub(1);
        self.buf.clear();
        for (i, payload) in mux::rtp_payloads(&pack, MTU).enumerate() {
            let p = Packet {
                marker: i == last,
                payload_type: self.payload,
                sequence: self.sequence,
                timestamp: pts as u32,
                ssrc: self.ssrc,
                payload,
            };
            self.sequence = self.sequence.wrapping_add(1);
            match to {
                Sender::Udp(s, peer) => {
                    self.buf.clear();
                    p.write(&mut self.buf);
                    // A lost datagram is the upper's loss to see; an ICMP error is not fatal.
                    let _ = s.send_to(&self.buf, *peer).await;
                }
                Sender::Tcp(_) => {
                    let at = self.buf.len();
                    self.buf.extend([0, 0]);
                    p.write(&mut self.buf);
                    let n = (self.buf.len() - at - 2) as u16;
                    self.buf[at..at + 2].copy_from_slice(&n.to_be_bytes());
                }
            }
        }
        if let Sender::Tcp(t) = to {
            t.write_all(&self.buf).await.map_err(|e| format!("the media connection closed: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> Video {
        Video::Pulled("cam".into())
    }

    const OFFER: &str = "v=0\r\no=42010000002000000001 0 0 IN IP4 10.0.0.9\r\ns=Play\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n\
m=video 40000 TCP/RTP/AVP 96\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=setup:passive\r\na=connection:new\r\ny=0100000001\r\n";

    #[test]
    fn an_offer_is_answered_sendonly_with_the_uppers_ssrc_and_the_opposite_setup() {
        let o = read_offer(OFFER.as_bytes(), "42010400001310000001", video(), None).expect("offer");
        assert_eq!(
            (o.to, o.carry, o.ssrc, o.payload),
            ("10.0.0.9:40000".parse().expect("addr"), Carry::TcpConnect, 100_000_001, 96)
        );
        let a = answer(&o, "10.0.0.2".parse().expect("ip"), 41000);
        for line in
            ["m=video 41000 TCP/RTP/AVP 96", "a=sendonly", "a=setup:active", "y=0100000001", "c=IN IP4 10.0.0.2"]
        {
            assert!(a.contains(line), "{line} in {a}");
        }
        let active = OFFER.replace("a=setup:passive", "a=setup:active");
        let o = read_offer(active.as_bytes(), "c", video(), None).expect("offer");
        assert_eq!(o.carry, Carry::TcpListen);
        assert!(answer(&o, "10.0.0.2".parse().expect("ip"), 1).contains("a=setup:passive"));
    }

    #[test]
    fn an_offer_without_ssrc_or_address_is_refused_with_a_reason() {
        let no_y = OFFER.replace("y=0100000001\r\n", "");
        assert_eq!(read_offer(no_y.as_bytes(), "c", video(), None).map(|_| ()).map_err(|e| e.0), Err(400));
        assert_eq!(read_offer(no_y.as_bytes(), "c", video(), Some(7)).map(|o| o.ssrc), Ok(7));
        let bad_y = OFFER.replace("y=0100000001", "y=99999999999");
        assert_eq!(read_offer(bad_y.as_bytes(), "c", video(), None).map(|_| ()).map_err(|e| e.0), Err(400));
        let no_addr = OFFER.replace("c=IN IP4 10.0.0.9", "c=IN IP4 0.0.0.0");
        assert_eq!(read_offer(no_addr.as_bytes(), "c", video(), None).map(|_| ()).map_err(|e| e.0), Err(400));
        let audio = OFFER.replace("m=video", "m=audio");
        assert_eq!(read_offer(audio.as_bytes(), "c", video(), None).map(|_| ()).map_err(|e| e.0), Err(488));
        assert_eq!(read_offer(b"garbage", "c", video(), None).map(|_| ()).map_err(|e| e.0), Err(400));
    }
}
