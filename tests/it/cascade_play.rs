//! GB/T 28181 cascade video: the upper platform (SIPp, `tests/fixtures/sipp/upper_invite.xml`)
//! INVITEs a channel of vigil's with a PS offer and its own SSRC, and GStreamer, standing where
//! the upper's media server would, receives what vigil sends to the address in that offer
//! (`rtpmp1sdepay ! mpegpsdemux ! h264parse`, over UDP and over TCP); ffprobe counts the
//! frames it wrote, or reads an H.265 capture. Both for an RTSP camera (gst-rtsp-server)
//! repackaged into PS, and for a GB/T 28181 device's channel relayed (the simulator's device,
//! whose stream vigil pulls only while the upper plays it). Channels the upper may not see
//! and offers without `y=` are refused with the codes GB/T 28181 platforms expect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::cascade::{fixture, LOWER, UPPER};
use crate::cascade_view::{upper_json, upper_view, SimUpper};
use crate::gb_play::{channel, registered_with_channels, SimDevice, DEVICE};
use crate::support::gateway::{Db, TestGateway};
use crate::support::rtsp::GstCamera;
use crate::support::{free_port, require_command};

const CAMERA: &str = "42010400001320000077";

/// The `[[upstreams]]` of an upper at `upper` (nothing answers there: the plays need no
/// registration), vigil listening for it on `listen`, SIP over UDP.
fn upstream(upper: u16, listen: u16) -> String {
    upstream_over(upper, listen, Sip::Udp)
}

/// The SIP transport between the upper and vigil.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sip {
    Udp,
    /// The upper connects to vigil's `listen` (SIPp `-t t1`: one connection).
    Tcp,
}

fn upstream_over(upper: u16, listen: u16, sip: Sip) -> String {
    let transport = if sip == Sip::Tcp { "tcp" } else { "udp" };
    format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"127.0.0.1:{upper}\"\n\
user_id = \"{LOWER}\"\npassword = \"12345678\"\nlisten = \"127.0.0.1:{listen}\"\nscope_kinds = [\"camera\", \"nvr\"]\n\
transport = \"{transport}\"\n"
    )
}

/// How the upper takes the media.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Carry {
    Udp,
    /// The upper listens (`a=setup:passive`); vigil connects.
    Tcp,
}

/// GStreamer where the upper's media server would be: PS over RTP on `port` into `out`,
/// demuxed to H.264, or kept as the PS capture (`demux` false, for ffprobe to read H.265).
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    fn start(carry: Carry, port: u16, out: PathBuf, demux: bool) -> Receiver {
        let gst = require_command("gst-launch-1.0");
        let caps = "application/x-rtp,media=video,clock-rate=90000,encoding-name=MP1S,payload=96";
        let source = match carry {
            Carry::Tcp => {
                format!("tcpserversrc host=127.0.0.1 port={port} ! application/x-rtp-stream ! rtpstreamdepay ! {caps}")
            }
            Carry::Udp => format!("udpsrc address=127.0.0.1 port={port} caps={caps}"),
        };
        let tail = if demux {
            "rtpmp1sdepay ! capssetter caps=video/mpeg,mpegversion=2,systemstream=true ! mpegpsdemux ! h264parse ! video/x-h264,stream-format=byte-stream"
        } else {
            "rtpmp1sdepay"
        };
        let pipeline = format!("{source} ! rtpjitterbuffer latency=100 ! {tail} ! filesink location={}", out.display());
        let child = Command::new(gst)
            .arg("-e")
            .args(pipeline.split(' '))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0");
        // Wait until GStreamer holds its port (bound by it: binding it here fails).
        let ready = |p: u16| match carry {
            Carry::Udp => std::net::UdpSocket::bind(("127.0.0.1", p)).is_err(),
            Carry::Tcp => std::net::TcpListener::bind(("127.0.0.1", p)).is_err(),
        };
        let mut waited = 0;
        while !ready(port) {
            waited += 1;
            assert!(waited < 400, "GStreamer did not take port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver { child, out }
    }

    /// Waits for the pipeline to end (UDP has no end: EOS is asked for with SIGINT); the file.
    async fn finish(mut self, carry: Carry) -> PathBuf {
        if carry == Carry::Udp {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.out.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("GStreamer did not finish within 20 s of the BYE ({carry:?})");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIPp, the upper, plays `channel` of the vigil listening on `vigil` for `play_ms`, asking
/// for the media at `media_port`. Its exit status says whether every step held.
fn invite(dir: &Path, vigil: u16, channel: &str, media_port: u16, (carry, sip): (Carry, Sip), play_ms: u64) -> Child {
    let template = std::fs::read_to_string(fixture("upper_invite.xml")).expect("scenario");
    let (proto, setup, answer) = match carry {
        Carry::Udp => ("RTP/AVP", "", "m=video [0-9]+ RTP/AVP 96"),
        Carry::Tcp => ("TCP/RTP/AVP", "a=setup:passive\na=connection:new\n", "a=setup:active"),
    };
    let scenario = template
        .replace("@CHANNEL@", channel)
        .replace("@MEDIA_PORT@", &media_port.to_string())
        .replace("@PROTO@", proto)
        .replace("@SETUP@", setup)
        .replace("@ANSWER_PROTO@", answer)
        .replace("@PLAY_MS@", &play_ms.to_string());
    let file = dir.join(format!("invite-{media_port}.xml"));
    std::fs::write(&file, scenario).expect("write scenario");
    Command::new(require_command("sipp"))
        .arg("-sf")
        .arg(&file)
        .arg(format!("127.0.0.1:{vigil}"))
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string(), "-m", "1", "-nostdin", "-timeout", "90s"])
        .args(if sip == Sip::Tcp { &["-t", "t1"][..] } else { &[] })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp")
}

async fn passed(mut sipp: Child, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = sipp.try_wait() {
            return status.success();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = sipp.kill();
    let _ = sipp.wait();
    false
}

/// ffprobe's codec and decoded frame count of a capture.
fn frames(path: &Path) -> (String, u64) {
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
    let mut f = text.split(',');
    let codec = f.next().unwrap_or("").to_owned();
    (codec, f.next().and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

/// One play from INVITE to BYE: what GStreamer received, as ffprobe reads it.
async fn play(dir: &Path, vigil: u16, channel: &str, carry: Carry, demux: bool) -> (String, u64) {
    play_over(dir, vigil, channel, (carry, Sip::Udp), demux).await
}

/// One play, its signalling over `sip`.
async fn play_over(dir: &Path, vigil: u16, channel: &str, (carry, sip): (Carry, Sip), demux: bool) -> (String, u64) {
    let port = free_port();
    let out = dir.join(format!("{channel}-{port}.{}", if demux { "h264" } else { "ps" }));
    let rx = Receiver::start(carry, port, out, demux);
    let sipp = invite(dir, vigil, channel, port, (carry, sip), 4_000);
    assert!(
        passed(sipp, Duration::from_secs(60)).await,
        "{carry:?} (SIP {sip:?}): SIPp, the upper, got its 200 (sendonly, its SSRC) and BYE's 200"
    );
    let out = rx.finish(carry).await;
    frames(&out)
}

/// A gst-rtsp-server camera in `codec` under `CAMERA`, playing in a vigil with an upstream
/// listening on the port answered.
async fn playing_camera(codec: &str) -> (GstCamera, TestGateway, u16) {
    playing_camera_over(codec, Sip::Udp).await
}

async fn playing_camera_over(codec: &str, sip: Sip) -> (GstCamera, TestGateway, u16) {
    require_command("ffprobe");
    let cam = GstCamera::start("none", codec);
    let listen = free_port();
    let gw = TestGateway::start(Db::Sqlite, &upstream_over(free_port(), listen, sip)).await;
    let body = json!({"id": CAMERA, "name": "东门", "kind": "camera", "protocol": "rtsp", "rtsp_url": cam.url});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    gw.api.wait_for(&format!("/devices/{CAMERA}/stream"), Duration::from_secs(30), |h| h["state"] == "playing").await;
    (cam, gw, listen)
}

/// An RTSP camera (gst-rtsp-server) with a GB/T 28181 id plays at the upper: vigil packs its
/// H.264 access units into PS, from the cached keyframe on, over UDP and over TCP (vigil
/// connecting to the upper); GStreamer demuxes it and ffprobe decodes the frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_plays_an_rtsp_camera_repackaged_as_ps_over_udp_and_tcp() {
    let (_cam, gw, listen) = playing_camera("h264").await;
    let dir = tempfile::tempdir().expect("temp dir");
    for carry in [Carry::Udp, Carry::Tcp] {
        let (codec, n) = play(dir.path(), listen, CAMERA, carry, true).await;
        // 4 s of a 25 fps camera, less what the jitter buffer holds at EOS.
        assert_eq!(codec, "h264", "{carry:?}");
        assert!(n >= 40, "{carry:?}: {n} frames decoded at the upper");
    }
    gw.shutdown().await;
}

/// The same over SIP on TCP: the upper connects to vigil's `listen`, and the INVITE, its 200,
/// the ACK and the BYE go on that connection (the media over UDP and over TCP as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_speaking_sip_over_tcp_plays_an_rtsp_camera() {
    let (_cam, gw, listen) = playing_camera_over("h264", Sip::Tcp).await;
    let dir = tempfile::tempdir().expect("temp dir");
    for carry in [Carry::Udp, Carry::Tcp] {
        let (codec, n) = play_over(dir.path(), listen, CAMERA, (carry, Sip::Tcp), true).await;
        assert_eq!(codec, "h264", "{carry:?}");
        assert!(n >= 40, "{carry:?}: {n} frames decoded at the upper");
    }
    gw.shutdown().await;
}

/// An H.265 camera: the PS capture (stream type 0x24 in its map) is what ffprobe reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_plays_an_h265_rtsp_camera_and_ffprobe_reads_the_capture() {
    let (_cam, gw, listen) = playing_camera("h265").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (codec, n) = play(dir.path(), listen, CAMERA, Carry::Udp, false).await;
    assert_eq!(codec, "hevc");
    assert!(n >= 40, "{n} frames in the capture");
    gw.shutdown().await;
}

/// A channel of a GB/T 28181 device plays at the upper: vigil INVITEs the device only now,
/// relays its video with the upper's SSRC, and lets the device go once the upper's BYE came
/// (no one else holds the channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_plays_a_gb_channel_relayed_from_its_device_and_the_device_is_let_go_after() {
    require_command("ffprobe");
    let listen = free_port();
    let first = free_port();
    let keys = format!(
        "media_ports = \"{first}-{}\"\ninvite_timeout = \"4s\"\nmedia_timeout = \"3s\"\n",
        first.saturating_add(30)
    );
    let gw = TestGateway::start_with_sip_and(Db::Sqlite, &keys, &upstream(free_port(), listen)).await;
    let _dev = SimDevice::start(gw.sip.expect("SIP"), 2, &[]);
    registered_with_channels(&gw, 2).await;
    let ch = channel(1);
    let stream = format!("/devices/{DEVICE}/channels/{ch}/stream");
    assert_eq!(gw.api.get(&stream).await.0, 404, "nobody pulls the channel before the upper plays it");
    let dir = tempfile::tempdir().expect("temp dir");
    for carry in [Carry::Udp, Carry::Tcp] {
        let (codec, n) = play(dir.path(), listen, &ch, carry, true).await;
        assert_eq!(codec, "h264", "{carry:?}");
        assert!(n >= 40, "{carry:?}: {n} frames decoded at the upper");
        // The upper's BYE released the only hold: the device's stream stops (BYE to it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while gw.api.get(&stream).await.0 != 404 {
            assert!(tokio::time::Instant::now() < deadline, "the channel is still pulled after the upper's BYE");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    gw.shutdown().await;
}

/// What vigil answers an INVITE sent from a plain socket (the refusals need no media).
async fn answer_code(vigil: u16, channel: &str, sdp: &str) -> u16 {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sock.local_addr().expect("addr");
    let invite = format!(
        "INVITE sip:{channel}@127.0.0.1:{vigil} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{channel}{}\r\n\
From: <sip:{UPPER}@4201000000>;tag=t1\r\nTo: <sip:{channel}@4201000000>\r\nCall-ID: refuse-{channel}-{}@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:{UPPER}@{me}>\r\nMax-Forwards: 70\r\nContent-Type: APPLICATION/SDP\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        sdp.len(),
        sdp.len()
    );
    sock.send_to(invite.as_bytes(), ("127.0.0.1", vigil)).await.expect("send");
    let mut buf = vec![0u8; 4096];
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await.expect("an answer").expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code >= 200 {
            return code;
        }
    }
}

/// A channel the upper may not see (out of its scope, or unknown) is 404; an offer without
/// `y=` is 400; a malformed SDP is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_the_upper_may_not_make_are_refused_with_their_codes() {
    let listen = free_port();
    let gw = TestGateway::start(Db::Sqlite, &upstream(free_port(), listen)).await;
    let body =
        json!({"id": CAMERA, "name": "东门", "kind": "camera", "protocol": "rtsp", "rtsp_url": "rtsp://127.0.0.1:9/x"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    let checkpoint = "42010400001210000001";
    let body = json!({"id": checkpoint, "name": "卡口", "kind": "vehicle_checkpoint", "protocol": "gat1400"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    let sdp = "v=0\r\no=x 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 40000 RTP/AVP 96\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\ny=0100000001\r\n";
    // Out of scope (kinds camera, nvr): the checkpoint is not seen, so not found.
    assert_eq!(answer_code(listen, checkpoint, sdp).await, 404);
    assert_eq!(answer_code(listen, "42010400001320009999", sdp).await, 404);
    assert_eq!(answer_code(listen, CAMERA, &sdp.replace("y=0100000001\r\n", "")).await, 400);
    assert_eq!(answer_code(listen, CAMERA, "v=0\r\nnonsense\r\n").await, 400);
    // Each refusal counted for the operator.
    let m = gw.api.metrics().await;
    let refused = m
        .lines()
        .find(|l| l.starts_with("vigil_cascade_requests_total{answer=\"4xx\",method=\"INVITE\",target=\"city\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(refused, Some(4.0), "{m}");
    gw.shutdown().await;
}

/// SIP over TCP from the upper's host: a stream that cannot be framed (two Content-Lengths,
/// RFC 4475 §3.1.2.10) is closed by vigil and counted as unreadable; the next connection is
/// served as if nothing happened (an OPTIONS on it answered 200 on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_a_stream_that_cannot_be_framed_is_closed_and_counted_and_the_next_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listen = free_port();
    let gw = TestGateway::start(Db::Sqlite, &upstream_over(free_port(), listen, Sip::Tcp)).await;
    let options = |cl: &str| {
        format!(
            "OPTIONS sip:{LOWER}@127.0.0.1:{listen} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKo{}\r\n\
From: <sip:{UPPER}@4201000000>;tag=o1\r\nTo: <sip:{LOWER}@4201040000>\r\nCall-ID: options-{}@x\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\n{cl}\r\n",
            cl.len(),
            cl.len()
        )
    };
    let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await.expect("connect");
    bad.write_all(options("Content-Length: 0\r\nContent-Length: 4\r\n").as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), bad.read(&mut buf)).await.expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "no answer to an unframeable stream, the connection closed: {read:?}");
    let unreadable = "vigil_cascade_requests_total{answer=\"none\",method=\"unreadable\",target=\"city\"} 1";
    gw.api.wait_for_metrics(Duration::from_secs(10), |m| m.lines().any(|l| l == unreadable)).await;
    let mut good = tokio::net::TcpStream::connect(("127.0.0.1", listen)).await.expect("connect");
    good.write_all(options("Content-Length: 0\r\n").as_bytes()).await.expect("write");
    let n = tokio::time::timeout(Duration::from_secs(10), good.read(&mut buf)).await.expect("an answer").expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    gw.shutdown().await;
}

/// The gateway feature: an RTSP camera whose id is not a GB/T 28181 code is given one — its
/// org's division code, type 132, the first serial of `gb28181.id_serials` — which the upper
/// sees, which lasts across a restart, which plays, and which is never given to another
/// camera after this one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_camera_without_a_gb_id_is_given_one_that_lasts_plays_and_is_never_reused() {
    require_command("ffprobe");
    let cam = GstCamera::start("none", "h264");
    let (sip, http, listen) = (free_port(), free_port(), free_port());
    let _upper = SimUpper::start(sip, http);
    let mut gw = TestGateway::start(Db::Sqlite, &upstream(sip, listen)).await;
    let org = json!({"id": "qiaokou-east", "name": "东区", "kind": "street", "gb_prefix": "420104"});
    assert_eq!(gw.api.post("/orgs", org).await.0, 201);
    let body = json!({"id": "cam-east", "name": "东门", "kind": "camera", "protocol": "rtsp", "rtsp_url": cam.url, "org_id": "qiaokou-east"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    // 4201 04 00 | 00 (the gateway's industry code) | 132 | 0 | 900000.
    let given = "42010400001320900000";
    let seen = |want: bool| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = upper_view(http).await;
            if v.get(given) == Some(&want) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upper sees {v:?}, not {given} {}",
                if want { "ON" } else { "OFF" }
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    seen(true).await;
    gw.restart().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (codec, n) = play(dir.path(), listen, given, Carry::Udp, true).await;
    assert_eq!(codec, "h264");
    assert!(n >= 40, "{n} frames decoded at the upper, under the id given before the restart");
    // Deleted, and another camera in the same org: the next serial, never the first again.
    assert_eq!(gw.api.send(reqwest::Method::DELETE, "/devices/cam-east", json!({})).await.0, 204);
    let body = json!({"id": "cam-west", "name": "西门", "kind": "camera", "protocol": "rtsp", "rtsp_url": "rtsp://127.0.0.1:9/x", "org_id": "qiaokou-east"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !upper_view(http).await.contains_key("42010400001320900001") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cam-west was not given the next serial: {:?}",
            upper_view(http).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.shutdown().await;
}

/// A camera online whose picture fails the diagnosis (black) is told as `DEFECT`, not ON: the
/// city's inspection sees what vigil sees (vigil-sim rtsp-camera's black camera beside a
/// healthy one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_with_a_black_picture_is_told_as_defect() {
    let sim = crate::support::rtsp::SimCameras::start(&[]);
    let (sip, http, listen) = (free_port(), free_port(), free_port());
    let _upper = SimUpper::start(sip, http);
    let extra = format!(
        "[rtsp]\ndiagnosis_every = \"1s\"\ndiagnosis_alarm_after = 2\nbackoff_min = \"300ms\"\n\n{}",
        upstream(sip, listen)
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let (black, live) = ("42010400001320000081", "42010400001320000082");
    for (id, path) in [(black, "black/1"), (live, "live/1")] {
        let body = json!({"id": id, "name": path, "kind": "camera", "protocol": "rtsp", "rtsp_url": sim.url(path)});
        assert_eq!(gw.api.post("/devices", body).await.0, 201);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = upper_json(http).await;
        if v["events"][black] == "DEFECT" && v["events"][live] == "ON" {
            assert_eq!(v["status"][black], true, "online, with a defective picture: {v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the upper was not told DEFECT for the black camera: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.shutdown().await;
}
