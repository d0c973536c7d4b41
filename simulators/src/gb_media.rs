//! The media side of `vigil-sim gb-device`: a device channel answering a live INVITE
//! (`s=Play`) with PS over RTP, as IPCs and NVRs do. Clips (H.264 and H.265 test patterns, a
//! black one) are made once with Debian's ffmpeg and cut into access units; each session packs
//! its access units into PS (`vigil::protocol::ps::mux`), one pack per picture, cut into RTP
//! payloads at 1,400 bytes (PT 96, 90 kHz, the marker on a pack's last packet) and sends them
//! at 25 fps over UDP, or over TCP with the RFC 4571 two-byte length (the offer's
//! `a=setup:passive`: the device connects; `active`: the device listens and vigil connects).
//!
//! A channel's fault (`--media-faults 1=black,2=no-rtp`, by the channel's index) picks how it
//! misbehaves: `no-rtp` (200, then nothing), `own-ssrc` (answers and sends its own `y=`, as
//! Hikvision and Dahua platforms do), `private` (Hikvision 0xBD private packets with start codes
//! inside), `no-psm` (no program stream map), `stop` (no more RTP after 3 s, the dialog
//! stays), `bye` (BYE from the device after 3 s), `black`, `frozen` (the first GOP over and
//! over, timestamps advancing), `h265`, `es` and `es-h265` (answers `98 H264` or `99 H265`
//! and sends the elementary stream over RTP, RFC 6184 / RFC 7798, as some IPCs do), and
//! `rtcp` RRs vigil sends to the RTP port + 1 are printed. `--max-sessions N` answers 503 past N sessions at once
//! (an NVR's preview links). `--drop-permille N` drops that share of RTP packets (loss
//! accounting). The SIP side of the dialog (the answer, ACK, BYE) is the caller's; this module
//! builds the answer and plays.
#![allow(clippy::disallowed_methods)] // a simulator paces by real time

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use vigil::protocol::ps::es::{AccessUnit, Assembler, Codec};
use vigil::protocol::ps::mux;
use vigil::protocol::rtp::Packet;
use vigil::protocol::sdp::{Direction, Media, RtpMap, Sdp, Setup, Transport};
use vigil::protocol::sip::message::Message;

const FPS: u64 = 25;
const TICKS_PER_FRAME: u64 = 90_000 / FPS;
const MTU: usize = 1_400;
/// When `stop` and `bye` channels misbehave.
const FAULT_AFTER: Duration = Duration::from_secs(3);

/// How a channel misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    NoRtp,
    OwnSsrc,
    Private,
    NoPsm,
    Stop,
    Bye,
    Black,
    Frozen,
    H265,
    /// H.264 elementary stream over RTP (answers 98 H264/90000).
    Es,
    /// H.265 elementary stream over RTP (answers 99 H265/90000).
    EsH265,
}

impl Fault {
    /// The elementary stream this fault sends instead of PS, with its payload name.
    fn es(self) -> Option<(Codec, &'static str)> {
        match self {
            Fault::Es => Some((Codec::H264, "H264")),
            Fault::EsH265 => Some((Codec::H265, "H265")),
            _ => None,
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Fault> {
        Ok(match s {
            "healthy" => Fault::Healthy,
            "no-rtp" => Fault::NoRtp,
            "own-ssrc" => Fault::OwnSsrc,
            "private" => Fault::Private,
            "no-psm" => Fault::NoPsm,
            "stop" => Fault::Stop,
            "bye" => Fault::Bye,
            "black" => Fault::Black,
            "frozen" => Fault::Frozen,
            "h265" => Fault::H265,
            "es" => Fault::Es,
            "es-h265" => Fault::EsH265,
            _ => bail!("unknown media fault {s:?} (healthy, no-rtp, own-ssrc, private, no-psm, stop, bye, black, frozen, h265, es, es-h265)"),
        })
    }
}

/// `1=black,2=no-rtp`: faults by channel index.
pub fn parse_faults(text: &str) -> Result<HashMap<u32, Fault>> {
    let mut out = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (n, f) = item.split_once('=').with_context(|| format!("{item:?} is not INDEX=FAULT"))?;
        out.insert(n.trim().parse().with_context(|| format!("{n:?} is not a channel index"))?, f.trim().parse()?);
    }
    Ok(out)
}

/// One clip: its access units, and how many make the first GOP.
pub struct Clip {
    codec: Codec,
    units: Vec<AccessUnit>,
    first_gop: usize,
}

/// The clips every session plays from.
pub struct Clips {
    h264: Clip,
    h265: Clip,
    black: Clip,
}

impl Clips {
    /// Makes (once, kept in `dir`) and loads the clips at `kbps`.
    pub fn load(dir: &Path, kbps: u32) -> Result<Clips> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Clips {
            h264: Clip::load(&make_clip(dir, "testsrc2", Codec::H264, 20, kbps)?, Codec::H264)?,
            h265: Clip::load(&make_clip(dir, "testsrc2", Codec::H265, 20, kbps)?, Codec::H265)?,
            black: Clip::load(&make_clip(dir, "black", Codec::H264, 4, kbps)?, Codec::H264)?,
        })
    }

    fn for_fault(&self, fault: Fault) -> &Clip {
        match fault {
            Fault::H265 | Fault::EsH265 => &self.h265,
            Fault::Black => &self.black,
            _ => &self.h264,
        }
    }
}

/// Makes an Annex B clip with ffmpeg: 640x360, 25 fps, a keyframe every second, no B-frames,
/// parameter sets with every keyframe.
fn make_clip(dir: &Path, source: &str, codec: Codec, seconds: u32, kbps: u32) -> Result<PathBuf> {
    let (ext, format, encoder, params) = match codec {
        Codec::H264 => ("h264", "h264", "libx264", "-x264-params"),
        Codec::H265 => ("h265", "hevc", "libx265", "-x265-params"),
    };
    let path = dir.join(format!("gb-{source}-{seconds}s-{kbps}k.{ext}"));
    if path.exists() {
        return Ok(path);
    }
    let lavfi = match source {
        "black" => format!("color=c=black:size=640x360:rate={FPS}"),
        _ => format!("testsrc2=size=640x360:rate={FPS}"),
    };
    let codec_params = match codec {
        Codec::H264 => format!("keyint={FPS}:min-keyint={FPS}:scenecut=0:repeat-headers=1:threads=1"),
        Codec::H265 => format!("keyint={FPS}:min-keyint={FPS}:scenecut=0:repeat-headers=1:bframes=0:log-level=error"),
    };
    let tmp = dir.join(format!(".gb-{source}-{}.{ext}", std::process::id()));
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &lavfi, "-t", &seconds.to_string()])
        .args(["-c:v", encoder, "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", "0", params, &codec_params])
        .args(["-b:v", &format!("{kbps}k"), "-f", format])
        .arg(&tmp)
        .status()
        .context("run ffmpeg (Debian's ffmpeg package) to make the test clip")?;
    if !status.success() {
        bail!("ffmpeg could not make the {source} {ext} clip");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

impl Clip {
    fn load(path: &Path, codec: Codec) -> Result<Clip> {
        let data = std::fs::read(path)?;
        let mut a = Assembler::default();
        a.set_hint(Some(codec));
        let mut units = Vec::new();
        a.push(None, &data, |u| units.push(u));
        a.flush(|u| units.push(u));
        if units.is_empty() || !units[0].keyframe {
            bail!("{} does not start with a keyframe", path.display());
        }
        let first_gop = units.iter().skip(1).position(|u| u.keyframe).map_or(units.len(), |p| p + 1);
        Ok(Clip { codec, units, first_gop })
    }
}

/// Where the device sends its media.
#[derive(Debug)]
enum Send {
    Udp {
        sock: UdpSocket,
        to: SocketAddr,
        /// The RTCP socket at the RTP port + 1: sender reports out, receiver reports in.
        rtcp: Option<UdpSocket>,
    },
    /// The device connects to vigil (offer `a=setup:passive`).
    TcpConnect(SocketAddr),
    /// The device listens (offer `a=setup:active`); vigil connects.
    TcpListen(TcpListener),
}

/// A session the caller starts once the INVITE is answered (media flows on ACK).
pub struct Session {
    pub call_id: String,
    send: Send,
    ssrc: u32,
    fault: Fault,
    drop_permille: u32,
    /// Stop after this many frames (the `push` mode); `None`: until stopped.
    frames: Option<u64>,
    payload_type: u8,
}

/// A session without SIP (`vigil-sim gb-device push`): to `to` over UDP, or over TCP by
/// connecting to it, `frames` frames.
pub fn push_session(to: SocketAddr, tcp: bool, ssrc: u32, fault: Fault, frames: u64) -> Result<Session> {
    let send = if tcp {
        Send::TcpConnect(to)
    } else {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_nonblocking(true)?;
        Send::Udp { sock: UdpSocket::from_std(sock)?, to, rtcp: None }
    };
    let payload_type = match fault.es() {
        Some((Codec::H264, _)) => 98,
        Some((Codec::H265, _)) => 99,
        None => 96,
    };
    Ok(Session { call_id: String::new(), send, ssrc, fault, drop_permille: 0, frames: Some(frames), payload_type })
}

/// What an INVITE got.
pub enum Answered {
    /// 200 with this SDP; play the session on ACK.
    Ok { sdp: String, session: Session },
    /// A refusal: the status line's code and reason.
    Refused(u16, &'static str),
}

/// Builds the answer to a live INVITE for `channel`.
pub async fn answer(msg: &Message<'_>, channel: &str, fault: Fault, drop_permille: u32) -> Answered {
    let Ok(text) = std::str::from_utf8(msg.body) else { return Answered::Refused(400, "Bad Request") };
    let Ok(offer) = Sdp::parse(text) else { return Answered::Refused(400, "Bad Request") };
    let Some(video) = offer.video() else { return Answered::Refused(488, "Not Acceptable Here") };
    let encoding = fault.es().map_or("PS", |(_, name)| name);
    let Some(pt) = video.payload_of(encoding) else { return Answered::Refused(488, "Not Acceptable Here") };
    if offer.session != "Play" {
        return Answered::Refused(488, "Not Acceptable Here");
    }
    let Some(mut ssrc) = offer.ssrc_value() else { return Answered::Refused(400, "Bad Request") };
    let mut y = offer.ssrc.clone();
    if fault == Fault::OwnSsrc {
        ssrc = 1_100_000_000 + (ssrc % 99_991);
        y = Some(format!("{ssrc:010}"));
    }
    let Ok(ip) = offer.address.parse::<std::net::IpAddr>() else {
        return Answered::Refused(488, "Not Acceptable Here");
    };
    let to = SocketAddr::new(ip, video.port);
    let (send, port, setup) = match (video.transport, video.setup) {
        (Transport::Udp, _) => match bind_pair().await {
            Some((sock, rtcp)) => {
                let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
                (Send::Udp { sock, to, rtcp: Some(rtcp) }, port, None)
            }
            None => return Answered::Refused(500, "Server Internal Error"),
        },
        (Transport::Tcp, Some(Setup::Active)) => match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => {
                let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                (Send::TcpListen(l), port, Some(Setup::Passive))
            }
            Err(_) => return Answered::Refused(500, "Server Internal Error"),
        },
        (Transport::Tcp, _) => (Send::TcpConnect(to), 9, Some(Setup::Active)),
    };
    let answer = Sdp {
        origin: channel.to_owned(),
        address: "127.0.0.1".into(),
        session: "Play".into(),
        uri: None,
        times: (0, 0),
        media: vec![Media {
            kind: "video".into(),
            port,
            transport: video.transport,
            payloads: vec![pt],
            rtpmaps: vec![RtpMap { payload: pt, encoding: encoding.into(), clock_rate: 90_000 }],
            direction: Some(Direction::SendOnly),
            setup,
            connection_new: video.transport == Transport::Tcp,
            other: Vec::new(),
        }],
        ssrc: y,
        format: Some("v/2/4/25/1/2048a///".into()),
    };
    let call_id = msg.header("Call-ID").unwrap_or("").to_owned();
    let session = Session { call_id, send, ssrc, fault, drop_permille, frames: None, payload_type: pt };
    Answered::Ok { sdp: answer.render(), session }
}

/// Plays a session until `stop` fires or the fault ends it; `byes` is told the Call-ID when the
/// device itself hangs up (`bye`). When `keyframe` is raised (the platform's `IFameCmd`) the
/// next frame sent is a keyframe, as an encoder asked for one does.
pub async fn play(
    clips: Arc<Clips>,
    s: Session,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    byes: mpsc::Sender<String>,
    keyframe: Arc<std::sync::atomic::AtomicBool>,
) {
    let clip = clips.for_fault(s.fault);
    let mut _rtcp = None;
    let mut out = match s.send {
        Send::Udp { sock, to, rtcp } => {
            if let Some(r) = rtcp {
                _rtcp = Some(AbortOnDrop(tokio::spawn(rtcp_side(r, to, s.ssrc, s.call_id.clone()))));
            }
            Out::Udp(sock, to)
        }
        Send::TcpConnect(to) => {
            // The receiver may still be starting: try for ten seconds.
            let mut tries = 0;
            loop {
                match TcpStream::connect(to).await {
                    Ok(t) => break Out::Tcp(t),
                    Err(e) if tries >= 200 => {
                        eprintln!("gb-device media: cannot connect to {to}: {e}");
                        return;
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Send::TcpListen(l) => {
            let accepted = tokio::select! {
                a = l.accept() => a,
                _ = &mut stop => return,
            };
            match accepted {
                Ok((t, _)) => Out::Tcp(t),
                Err(_) => return,
            }
        }
    };
    if s.fault == Fault::NoRtp {
        let _ = stop.await;
        return;
    }
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / FPS));
    let (mut seq, mut n, mut sent) = (rand_u16(), 0u64, 0u64);
    // A live encoder is somewhere in its GOP when the INVITE comes: start at a random frame
    // (the first picture a receiver can decode is the next keyframe). `frozen` starts at the
    // keyframe it repeats; `push` at the clip's start.
    let mut offset = if s.fault == Fault::Frozen || s.frames.is_some() {
        0
    } else {
        u64::from(rand_u16()) % clip.units.len() as u64
    };
    let mut packet = Vec::with_capacity(MTU + 16);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if s.frames.is_some_and(|f| n >= f) {
            return;
        }
        if started.elapsed() >= FAULT_AFTER {
            match s.fault {
                Fault::Stop => {
                    let _ = stop.await;
                    return;
                }
                Fault::Bye => {
                    let _ = byes.send(s.call_id.clone()).await;
                    return;
                }
                _ => {}
            }
        }
        if keyframe.swap(false, std::sync::atomic::Ordering::AcqRel) && s.fault != Fault::Frozen {
            let at = (n + offset) as usize % clip.units.len();
            if let Some(k) =
                (0..clip.units.len()).map(|i| (at + i) % clip.units.len()).find(|&i| clip.units[i].keyframe)
            {
                offset = (k + clip.units.len() - (n as usize % clip.units.len())) as u64;
            }
        }
        let index = if s.fault == Fault::Frozen {
            n as usize % clip.first_gop
        } else {
            (n + offset) as usize % clip.units.len()
        };
        let unit = &clip.units[index];
        let pts = n * TICKS_PER_FRAME;
        let pack;
        let mut es = Vec::new();
        let chunks: Vec<&[u8]> = match s.fault.es() {
            Some((codec, _)) => {
                for nal in vigil::protocol::rtp_h26x::nal_units(&unit.data) {
                    vigil::protocol::rtp_h26x::packetize(codec, nal, MTU, |p| es.push(p.to_vec()));
                }
                es.iter().map(Vec::as_slice).collect()
            }
            None => {
                pack = self::pack(clip.codec, pts, unit, s.fault);
                mux::rtp_payloads(&pack, MTU).collect()
            }
        };
        for (i, chunk) in chunks.iter().enumerate() {
            seq = seq.wrapping_add(1);
            sent += 1;
            if s.drop_permille > 0 && (sent * 7919) % 1000 < u64::from(s.drop_permille) {
                continue; // dropped on purpose (deterministic, spread over the stream)
            }
            packet.clear();
            Packet {
                marker: i + 1 == chunks.len(),
                payload_type: s.payload_type,
                sequence: seq,
                timestamp: pts as u32,
                ssrc: s.ssrc,
                payload: chunk,
            }
            .write(&mut packet);
            if !out.send(&packet).await {
                return;
            }
        }
        n += 1;
    }
}

enum Out {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Out {
    /// Sends one RTP packet; false when the peer is gone.
    async fn send(&mut self, packet: &[u8]) -> bool {
        match self {
            Out::Udp(sock, to) => {
                let _ = sock.send_to(packet, *to).await;
                true
            }
            Out::Tcp(t) => {
                let len = (packet.len() as u16).to_be_bytes();
                t.write_all(&len).await.is_ok() && t.write_all(packet).await.is_ok()
            }
        }
    }
}

/// One access unit as a pack, with the fault's changes.
fn pack(codec: Codec, pts: u64, unit: &AccessUnit, fault: Fault) -> Vec<u8> {
    match fault {
        Fault::NoPsm => {
            let mut out = Vec::with_capacity(unit.data.len() + 64);
            mux::pack_header(pts, 2, &mut out);
            for (i, chunk) in unit.data.chunks(mux::PES_PAYLOAD).enumerate() {
                mux::pes(0xE0, (i == 0).then_some(pts), chunk, &mut out);
            }
            out
        }
        Fault::Private => {
            let whole = mux::pack(codec, pts, unit.keyframe, &unit.data);
            // Hikvision's private stream 0xBD after the pack header, its payload holding what
            // looks like start codes (a naive scanner resyncs inside it).
            let mut out = whole[..14].to_vec();
            let private = [0, 0, 1, 0xBA, 0x44, 0, 0, 1, 0xE0, 0x12, 0x34, 0, 0, 1, 0xBC, 0xAB, 0xCD, 0xEF];
            mux::pes(0xBD, None, &private, &mut out);
            out.extend_from_slice(&whole[14..]);
            out
        }
        _ => mux::pack(codec, pts, unit.keyframe, &unit.data),
    }
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(7) >> 7)
        as u16
}

/// An RTP socket and its RTCP socket on the next port, both on loopback.
async fn bind_pair() -> Option<(UdpSocket, UdpSocket)> {
    for _ in 0..32 {
        let rtcp = UdpSocket::bind("127.0.0.1:0").await.ok()?;
        let port = rtcp.local_addr().ok()?.port();
        if port == 0 {
            continue;
        }
        if let Ok(rtp) = UdpSocket::bind(("127.0.0.1", port - 1)).await {
            return Some((rtp, rtcp));
        }
    }
    None
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The device's RTCP side: a sender report to the receiver's RTP port every 2 s, and each
/// receiver report that comes printed on stdout as
/// `rtcp-rr call=<Call-ID> source=<SSRC> fraction=<n/256> lost=<cumulative> jitter=<ticks>
/// lsr=<hex> from=<address>`.
async fn rtcp_side(sock: UdpSocket, to: SocketAddr, ssrc: u32, call_id: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let secs = (now.as_secs() + 2_208_988_800) as u32;
                let frac = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
                let mut sr = vec![0x80, 200, 0, 6];
                sr.extend(ssrc.to_be_bytes());
                sr.extend(secs.to_be_bytes());
                sr.extend(frac.to_be_bytes());
                sr.extend([0u8; 12]);
                let _ = sock.send_to(&sr, to).await;
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return };
                let b = &buf[..n];
                if n >= 32 && b[1] == 201 {
                    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                    let lost = word(12) & 0x00FF_FFFF;
                    use std::io::Write;
                    // A closed stdout (nobody reading) is not the session's end.
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "rtcp-rr call={call_id} source={} fraction={} lost={lost} jitter={} lsr={:08x} from={from}",
                        word(8), b[12], word(20), word(24)
                    );
                }
            }
        }
    }
}
