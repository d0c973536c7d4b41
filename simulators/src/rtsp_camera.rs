//! `vigil-sim rtsp-camera`: many synthetic RTSP cameras in one tokio process, with the faults
//! no real server offers. H.264 clips are made once with Debian's ffmpeg (a 26 s moving test
//! pattern and a black one), split into access units and packetized into RTP (RFC 6184,
//! FU-A) up front; a session only copies a frame's bytes and patches sequence numbers,
//! timestamps and SSRC, so one process serves hundreds of ~1 Mbit/s streams over RTSP/TCP
//! (interleaved; UDP SETUP is answered 461).
//!
//! The path picks the behaviour: `/live/N` healthy, `/stall/N` (plays `--stall-after`, then
//! sends and answers nothing with TCP open), `/jump/N` (RTP time jumps an hour after 3 s),
//! `/ssrc/N` (SSRC changes after 3 s), `/limit/N` (SETUP → 453), `/badsdp/N` (DESCRIBE → an
//! SDP that is not one), `/slow/N` (DESCRIBE answered after `--slow`), `/black/N` (a black
//! picture), `/frozen/N` (the first GOP over and over, timestamps advancing); any other
//! path is a 404.
//!
//! `vigil-sim rtsp-camera --listen 127.0.0.1:8554` prints `rtsp://127.0.0.1:8554` first.
#![allow(clippy::disallowed_methods)] // a simulator paces by real time

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:8554")]
    pub listen: SocketAddr,
    /// Where the generated clips are kept between runs.
    #[arg(long, default_value = "target/sim-clips")]
    pub clips: PathBuf,
    /// Video bitrate of the clips.
    #[arg(long, default_value_t = 1000)]
    pub bitrate_kbps: u32,
    /// `/stall/N` plays this long before it stalls.
    #[arg(long, default_value_t = 3.0)]
    pub stall_after: f64,
    /// `/slow/N` answers DESCRIBE after this many seconds.
    #[arg(long, default_value_t = 15.0)]
    pub slow: f64,
    /// Stop after this many seconds (0: run until killed).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

const FPS: u32 = 25;
const CLOCK: u32 = 90_000;
const MAX_PAYLOAD: usize = 1400;

/// One frame as bytes ready for the wire: interleaved RTP packets whose sequence number,
/// timestamp and SSRC are patched per session at `headers` (offsets of RTP headers).
struct Frame {
    wire: Vec<u8>,
    headers: Vec<usize>,
}

struct Clip {
    frames: Vec<Frame>,
    /// Frames in the first GOP (what `/frozen/N` repeats).
    first_gop: usize,
    sps: Vec<u8>,
    pps: Vec<u8>,
}

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    playing: AtomicU64,
    bytes: AtomicU64,
}

struct Shared {
    live: Clip,
    black: Clip,
    args: Args,
    stats: Stats,
}

pub async fn run(args: Args) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("the camera simulator listens on loopback only");
    }
    std::fs::create_dir_all(&args.clips).with_context(|| format!("create {}", args.clips.display()))?;
    let live = Clip::load(&make_clip(&args.clips, "testsrc2", 26, args.bitrate_kbps)?)?;
    let black = Clip::load(&make_clip(&args.clips, "black", 4, args.bitrate_kbps)?)?;
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("rtsp://{addr}");
    eprintln!(
        "rtsp-camera: {} + {} frames; paths /live/N /stall/N /jump/N /ssrc/N /limit/N /badsdp/N /slow/N /black/N /frozen/N",
        live.frames.len(),
        black.frames.len()
    );
    let seconds = args.seconds;
    let shared = Arc::new(Shared { live, black, args, stats: Stats::default() });
    let report = shared.clone();
    tokio::spawn(async move {
        let mut last = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let bytes = report.stats.bytes.load(Ordering::Relaxed);
            eprintln!(
                "rtsp-camera: {} sessions, {} playing, {:.1} Mbit/s",
                report.stats.sessions.load(Ordering::Relaxed),
                report.stats.playing.load(Ordering::Relaxed),
                (bytes - last) as f64 * 8.0 / 10.0 / 1e6
            );
            last = bytes;
        }
    });
    let serve = async {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("rtsp-camera: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(session(sock, shared.clone()));
        }
    };
    if seconds > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(seconds), serve).await;
    } else {
        tokio::select! {
            _ = serve => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

/// Makes (once) an Annex B H.264 clip with ffmpeg: keyframe every 2 s, no B-frames, one
/// slice per frame, parameter sets with each keyframe.
fn make_clip(dir: &Path, source: &str, seconds: u32, kbps: u32) -> Result<PathBuf> {
    let path = dir.join(format!("{source}-{seconds}s-{kbps}k.h264"));
    if path.exists() {
        return Ok(path);
    }
    let lavfi = match source {
        "black" => format!("color=c=black:size=640x360:rate={FPS}"),
        _ => format!("testsrc2=size=640x360:rate={FPS}"),
    };
    let tmp = dir.join(format!(".{source}-{}.h264", std::process::id()));
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &lavfi, "-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-bf", "0"])
        .args([
            "-x264-params",
            &format!("keyint={0}:min-keyint={0}:scenecut=0:repeat-headers=1:sliced-threads=0:threads=1", FPS * 2),
        ])
        .args(["-b:v", &format!("{kbps}k"), "-maxrate", &format!("{kbps}k"), "-bufsize", &format!("{}k", kbps / 2)])
        .args(["-f", "h264"])
        .arg(&tmp)
        .status()
        .context("run ffmpeg (Debian's ffmpeg package) to make the test clip")?;
    if !status.success() {
        bail!("ffmpeg could not make the {source} clip");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Splits Annex B into NAL units (without start codes).
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        while end > s && data[end - 1] == 0 {
            end -= 1; // the leading zero of a 4-byte start code, or trailing zeros
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

impl Clip {
    fn load(path: &Path) -> Result<Clip> {
        let data = std::fs::read(path)?;
        let mut units: Vec<Vec<&[u8]>> = Vec::new();
        let mut current: Vec<&[u8]> = Vec::new();
        let mut has_vcl = false;
        let (mut sps, mut pps) = (Vec::new(), Vec::new());
        for nal in nal_units(&data) {
            let t = nal[0] & 0x1f;
            match t {
                7 if sps.is_empty() => sps = nal.to_vec(),
                8 if pps.is_empty() => pps = nal.to_vec(),
                _ => {}
            }
            let vcl = t == 1 || t == 5;
            let starts_au = if vcl { nal.get(1).is_some_and(|b| b & 0x80 != 0) } else { matches!(t, 6..=9) };
            if starts_au && has_vcl {
                units.push(std::mem::take(&mut current));
                has_vcl = false;
            }
            if t == 9 {
                continue; // access unit delimiters are not sent
            }
            current.push(nal);
            has_vcl |= vcl;
        }
        if has_vcl {
            units.push(current);
        }
        if units.is_empty() || sps.is_empty() || pps.is_empty() {
            bail!("{} holds no H.264 frames with parameter sets", path.display());
        }
        let key = |u: &Vec<&[u8]>| u.iter().any(|n| n[0] & 0x1f == 5);
        let first_gop = units.iter().skip(1).position(key).map_or(units.len(), |p| p + 1);
        let frames = units.iter().map(|u| packetize(u)).collect();
        Ok(Clip { frames, first_gop, sps, pps })
    }
}

/// RFC 6184 packetization (single NAL unit or FU-A), framed for RTSP interleaved channel 0.
fn packetize(nals: &[&[u8]]) -> Frame {
    let mut wire = Vec::new();
    let mut headers = Vec::new();
    let mut push = |payload_parts: &[&[u8]], last: bool| {
        let len: usize = 12 + payload_parts.iter().map(|p| p.len()).sum::<usize>();
        wire.extend_from_slice(&[b'$', 0, (len >> 8) as u8, len as u8]);
        headers.push(wire.len());
        wire.extend_from_slice(&[0x80, if last { 0x80 | 96 } else { 96 }, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for p in payload_parts {
            wire.extend_from_slice(p);
        }
    };
    for (i, nal) in nals.iter().enumerate() {
        let last_nal = i + 1 == nals.len();
        if nal.len() <= MAX_PAYLOAD {
            push(&[nal], last_nal);
            continue;
        }
        let indicator = (nal[0] & 0xe0) | 28;
        let kind = nal[0] & 0x1f;
        let body = &nal[1..];
        let chunks: Vec<&[u8]> = body.chunks(MAX_PAYLOAD - 2).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let start = if k == 0 { 0x80 } else { 0 };
            let end = if k + 1 == chunks.len() { 0x40 } else { 0 };
            let header = [indicator, start | end | kind];
            push(&[&header, chunk], last_nal && end != 0);
        }
    }
    Frame { wire, headers }
}

struct Request {
    method: String,
    url: String,
    cseq: String,
    transport: Option<String>,
}

/// Reads RTSP requests (skipping interleaved data the client sends) into `tx`.
async fn read_requests(rd: tokio::net::tcp::OwnedReadHalf, tx: mpsc::Sender<Request>) {
    let mut rd = BufReader::new(rd);
    loop {
        let mut first = [0u8; 1];
        if rd.read_exact(&mut first).await.is_err() {
            return;
        }
        if first[0] == b'$' {
            let mut hdr = [0u8; 3];
            if rd.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let mut skip = vec![0u8; usize::from(u16::from_be_bytes([hdr[1], hdr[2]]))];
            if rd.read_exact(&mut skip).await.is_err() {
                return;
            }
            continue;
        }
        let mut line = String::new();
        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = format!("{}{}", first[0] as char, line);
        let mut parts = line.split_whitespace();
        let (method, url) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let (mut cseq, mut transport, mut length) = (String::new(), None, 0usize);
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "cseq" => cseq = v.trim().to_owned(),
                    "transport" => transport = Some(v.trim().to_owned()),
                    "content-length" => length = v.trim().parse().unwrap_or(0).min(65536),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        if tx.send(Request { method, url, cseq, transport }).await.is_err() {
            return;
        }
    }
}

fn response(cseq: &str, status: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut r = format!("RTSP/1.0 {status}\r\nCSeq: {cseq}\r\nServer: vigil-sim\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn random_u32() -> u32 {
    let u = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let x = (u as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
    (x >> 17) as u32
}

async fn session(sock: TcpStream, shared: Arc<Shared>) {
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    let (rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(read_requests(rd, tx));
    let mut mode = String::new();
    let mut playing_since: Option<Instant> = None;
    let (mut seq, mut ts_base, mut ssrc) = (random_u32() as u16, random_u32(), random_u32());
    let mut frame_no = 0usize;
    let mut jumped = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(u64::from(1000 / FPS)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = Vec::new();
    loop {
        let stalled =
            mode == "stall" && playing_since.is_some_and(|t| t.elapsed().as_secs_f64() > shared.args.stall_after);
        tokio::select! {
            req = rx.recv() => {
                let Some(req) = req else { break };
                if stalled {
                    continue; // a stalled camera answers nothing either
                }
                if mode.is_empty() {
                    mode = req.url.trim_start_matches("rtsp://").split('/').nth(1).unwrap_or("live").to_owned();
                }
                const MODES: [&str; 9] = ["live", "stall", "jump", "ssrc", "limit", "badsdp", "slow", "black", "frozen"];
                let out = match req.method.as_str() {
                    "DESCRIBE" if !MODES.contains(&mode.as_str()) => response(&req.cseq, "404 Not Found", &[], ""),
                    "OPTIONS" => response(&req.cseq, "200 OK", &[("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER".into())], ""),
                    "DESCRIBE" => {
                        if mode == "slow" {
                            tokio::time::sleep(Duration::from_secs_f64(shared.args.slow)).await;
                        }
                        let sdp = if mode == "badsdp" { "this is not an SDP\r\n".to_owned() } else { sdp(&shared.live) };
                        let base = format!("{}/", req.url.trim_end_matches('/'));
                        response(&req.cseq, "200 OK", &[("Content-Type", "application/sdp".into()), ("Content-Base", base)], &sdp)
                    }
                    "SETUP" if mode == "limit" => response(&req.cseq, "453 Not Enough Bandwidth", &[], ""),
                    "SETUP" => match req.transport.as_deref().filter(|t| t.contains("TCP")) {
                        Some(_) => response(
                            &req.cseq,
                            "200 OK",
                            &[("Transport", format!("RTP/AVP/TCP;unicast;interleaved=0-1;ssrc={ssrc:08X}")), ("Session", "5e551011;timeout=60".into())],
                            "",
                        ),
                        None => response(&req.cseq, "461 Unsupported Transport", &[], ""),
                    },
                    "PLAY" => {
                        playing_since = Some(Instant::now());
                        shared.stats.playing.fetch_add(1, Ordering::Relaxed);
                        response(
                            &req.cseq,
                            "200 OK",
                            &[("Session", "5e551011".into()), ("Range", "npt=0.000-".into()), ("RTP-Info", format!("url={};seq={seq};rtptime={ts_base}", req.url))],
                            "",
                        )
                    }
                    "TEARDOWN" => {
                        let _ = wr.write_all(&response(&req.cseq, "200 OK", &[], "")).await;
                        break;
                    }
                    _ => response(&req.cseq, "200 OK", &[("Session", "5e551011".into())], ""),
                };
                if wr.write_all(&out).await.is_err() {
                    break;
                }
            }
            _ = ticker.tick(), if playing_since.is_some() && !stalled => {
                let Some(since) = playing_since else { continue };
                let after3 = since.elapsed() > Duration::from_secs(3);
                if mode == "jump" && after3 && !jumped {
                    ts_base = ts_base.wrapping_add(3600 * CLOCK);
                    jumped = true;
                }
                if mode == "ssrc" && after3 && !jumped {
                    ssrc = ssrc.wrapping_add(1);
                    jumped = true;
                }
                let clip = if mode == "black" { &shared.black } else { &shared.live };
                let index = if mode == "frozen" { frame_no % clip.first_gop } else { frame_no % clip.frames.len() };
                let frame = &clip.frames[index];
                let ts = ts_base.wrapping_add((frame_no as u32).wrapping_mul(CLOCK / FPS));
                buf.clear();
                buf.extend_from_slice(&frame.wire);
                for &h in &frame.headers {
                    buf[h + 2..h + 4].copy_from_slice(&seq.to_be_bytes());
                    buf[h + 4..h + 8].copy_from_slice(&ts.to_be_bytes());
                    buf[h + 8..h + 12].copy_from_slice(&ssrc.to_be_bytes());
                    seq = seq.wrapping_add(1);
                }
                frame_no += 1;
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
                shared.stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
    }
    if playing_since.is_some() {
        shared.stats.playing.fetch_sub(1, Ordering::Relaxed);
    }
    shared.stats.sessions.fetch_sub(1, Ordering::Relaxed);
}

fn sdp(clip: &Clip) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let profile =
        clip.sps.get(1..4).map(|p| format!("{:02X}{:02X}{:02X}", p[0], p[1], p[2])).unwrap_or_else(|| "42C01E".into());
    format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=vigil-sim\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id={profile};sprop-parameter-sets={},{}\r\na=framerate:{FPS}\r\na=control:trackID=0\r\n",
        b64.encode(&clip.sps),
        b64.encode(&clip.pps)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_splits_and_fu_a_reassembles() {
        let data = [&[0u8, 0, 0, 1, 0x67, 1, 2][..], &[0, 0, 1, 0x68, 3], &[0, 0, 0, 1, 0x65, 0x88, 9, 9, 0]].concat();
        let nals = nal_units(&data);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 0x88, 9, 9][..]]);
        let big: Vec<u8> = std::iter::once(0x65).chain((0..4000u32).map(|i| i as u8)).collect();
        let f = packetize(&[&big]);
        assert_eq!(f.headers.len(), 3);
        // Reassemble: FU-A payloads after the 2-byte FU header.
        let mut rebuilt = vec![0x65];
        for (k, &h) in f.headers.iter().enumerate() {
            let len = usize::from(u16::from_be_bytes([f.wire[h - 2], f.wire[h - 1]]));
            let payload = &f.wire[h + 12..h + len];
            assert_eq!(payload[0] & 0x1f, 28);
            assert_eq!(payload[1] & 0x80 != 0, k == 0, "start bit");
            assert_eq!(payload[1] & 0x40 != 0, k == 2, "end bit");
            assert_eq!(f.wire[h + 1] & 0x80 != 0, k == 2, "marker on the last packet");
            rebuilt.extend_from_slice(&payload[2..]);
        }
        assert_eq!(rebuilt, big);
    }
}
