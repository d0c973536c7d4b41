//! GB/T 28181 live video end to end: vigil INVITEs the channels of a simulated device
//! (`vigil-sim gb-device live`, PS over RTP from clips ffmpeg made), and an operator sees
//! frames, health and a snapshot that ffprobe reads at the stream's resolution; each fault the
//! device plays leaves the stream in the state a GB/T 28181 engineer would look for. The
//! simulator's PS over RTP is itself checked by GStreamer (`rtpmp1sdepay ! mpegpsdemux`), over
//! UDP and TCP, so it is not only our demuxer that vouches for it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::gateway::{Db, TestGateway};
use crate::support::rtsp::ffprobe;
use crate::support::{free_port, metric, require_command, sim_binary};

pub(crate) const DEVICE: &str = "42010400001320000000";

/// The simulator's channel `i` of `DEVICE` (how `vigil-sim` numbers them).
pub(crate) fn channel(i: u32) -> String {
    format!("42010400001310000{i:03}")
}

/// `vigil-sim gb-device live` with one device.
pub(crate) struct SimDevice(Child);

impl SimDevice {
    pub(crate) fn start(sip: std::net::SocketAddr, channels: u32, extra: &[&str]) -> Self {
        Self::spawn(sip, channels, extra, Stdio::null())
    }

    /// The simulator with its stdout readable (the RTCP receiver reports it prints).
    fn start_listened(
        sip: std::net::SocketAddr,
        channels: u32,
        extra: &[&str],
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let mut dev = Self::spawn(sip, channels, extra, Stdio::piped());
        let rx = crate::support::stdout_lines(&mut dev.0);
        (dev, rx)
    }

    fn spawn(sip: std::net::SocketAddr, channels: u32, extra: &[&str], stdout: Stdio) -> Self {
        let sim = sim_binary();
        let clips = sim.parent().map(|d| d.join("sim-clips")).expect("target dir");
        let child = Command::new(sim)
            .args(["gb-device", "--server", &sip.to_string(), "--count", "1", "live", "--keepalive", "5"])
            .args(["--channels", &channels.to_string(), "--clips"])
            .arg(&clips)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("start vigil-sim gb-device");
        SimDevice(child)
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn gateway() -> TestGateway {
    gateway_and("").await
}

async fn gateway_and(extra: &str) -> TestGateway {
    gateway_over("udp", extra).await
}

async fn gateway_over(transport: &str, extra: &str) -> TestGateway {
    let first = free_port();
    let keys = format!(
        "media_ports = \"{first}-{}\"\nmedia_transport = \"{transport}\"\ninvite_timeout = \"4s\"\nmedia_timeout = \"3s\"\nstream_hold = \"60s\"\n",
        first.saturating_add(30)
    );
    TestGateway::start_with_sip_and(Db::Sqlite, &keys, extra).await
}

/// RTP over TCP both ways round (RFC 4571): the device connects to vigil (`tcp_passive`),
/// or vigil connects to the device (`tcp_active`); H.264 and H.265 play and are snapshotted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_play_over_tcp_passive_and_active() {
    for transport in ["tcp_passive", "tcp_active"] {
        let gw = gateway_over(transport, "").await;
        let _dev = SimDevice::start(gw.sip.expect("SIP"), 2, &["--media-faults", "1=h265"]);
        registered_with_channels(&gw, 2).await;
        for (i, codec) in [(0, "h264"), (1, "h265")] {
            let ch = channel(i);
            let (s, _, jpeg) = gw.api.get_bytes(&format!("/devices/{DEVICE}/channels/{ch}/snapshot")).await;
            assert_eq!(s, 200, "{transport} channel {i}: {}", String::from_utf8_lossy(&jpeg));
            assert_eq!(jpeg_size(&jpeg), "mjpeg,640,360", "{transport} channel {i}");
            let h = gw
                .api
                .wait_for(&format!("/devices/{DEVICE}/channels/{ch}/stream"), Duration::from_secs(10), |h| {
                    h["state"] == "playing" && h["gop_frames"].as_u64().is_some()
                })
                .await;
            assert_eq!((h["codec"].as_str(), h["transport"].as_str()), (Some(codec), Some(transport)), "{h}");
        }
        gw.shutdown().await;
    }
}

pub(crate) async fn registered_with_channels(gw: &TestGateway, n: usize) {
    let (s, _) =
        gw.api.post("/devices", json!({"id": DEVICE, "name": "模拟 NVR", "kind": "nvr", "protocol": "gb28181"})).await;
    assert_eq!(s, 201);
    gw.api
        .wait_for(&format!("/devices/{DEVICE}/channels"), Duration::from_secs(60), |v| {
            v["items"].as_array().is_some_and(|a| a.len() == n)
        })
        .await;
}

fn jpeg_size(bytes: &[u8]) -> String {
    let file = tempfile::Builder::new().suffix(".jpg").tempfile().expect("temp file");
    std::fs::write(file.path(), bytes).expect("write snapshot");
    ffprobe(file.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_play_h264_and_h265_and_each_fault_has_its_reason() {
    require_command("ffprobe");
    let gw = gateway().await;
    let faults = "1=h265,2=no-rtp,3=own-ssrc,4=bye,5=private,6=no-psm,7=stop";
    let _dev = SimDevice::start(gw.sip.expect("SIP"), 8, &["--media-faults", faults]);
    registered_with_channels(&gw, 8).await;
    let api = &gw.api;

    // A snapshot of a channel nobody pulled yet: vigil INVITEs it and answers with a JPEG
    // of its first keyframe.
    // 3: the device answers and sends its own y=; 5: Hikvision private packets with start codes
    // inside; 6: no program stream map at all (the codec is read from the stream).
    for (i, codec) in [(0, "h264"), (1, "h265"), (3, "h264"), (5, "h264"), (6, "h264")] {
        let ch = channel(i);
        let (s, ct, jpeg) = api.get_bytes(&format!("/devices/{DEVICE}/channels/{ch}/snapshot")).await;
        assert_eq!(
            (s, ct.as_str()),
            (200, "image/jpeg"),
            "channel {i}: {} (channels: {})",
            String::from_utf8_lossy(&jpeg),
            api.get(&format!("/devices/{DEVICE}/channels")).await.1
        );
        assert_eq!(jpeg_size(&jpeg), "mjpeg,640,360", "channel {i}: ffprobe reads the snapshot at the stream's size");
        let h = api
            .wait_for(&format!("/devices/{DEVICE}/channels/{ch}/stream"), Duration::from_secs(10), |h| {
                h["state"] == "playing" && h["width"] == 640 && h["gop_frames"].as_u64().is_some()
            })
            .await;
        assert_eq!((h["codec"].as_str(), h["channel_id"].as_str()), (Some(codec), Some(ch.as_str())), "{h}");
        assert_eq!(h["gop_frames"], 25, "the clip's GOP is one second at 25 fps: {h}");
        assert_eq!(h["rtp_loss"], 0, "{h}");
    }

    // 200 and then no RTP: no_media.
    let quiet = channel(2);
    let (s, v) = api.post(&format!("/devices/{DEVICE}/channels/{quiet}/stream"), json!({"hold": "1m"})).await;
    assert_eq!((s, v["hold_s"].as_u64()), (202, Some(60)), "{v}");
    let h = api
        .wait_for(&format!("/devices/{DEVICE}/channels/{quiet}/stream"), Duration::from_secs(15), |h| {
            h["state"] == "no_media"
        })
        .await;
    assert!(h["error"].as_str().is_some_and(|e| e.contains("no RTP")), "{h}");

    // The device hangs up after 3 s of media.
    let bye = channel(4);
    assert_eq!(api.post(&format!("/devices/{DEVICE}/channels/{bye}/stream"), json!({})).await.0, 202);
    let h = api
        .wait_for(&format!("/devices/{DEVICE}/channels/{bye}/stream"), Duration::from_secs(20), |h| {
            h["state"] == "bye_from_device"
        })
        .await;
    assert!(h["frames"].as_u64().is_some_and(|f| f > 0), "it played before it hung up: {h}");

    // The device stops sending after 3 s and keeps the dialog: stalled, and pulled again.
    let stop = channel(7);
    assert_eq!(api.post(&format!("/devices/{DEVICE}/channels/{stop}/stream"), json!({})).await.0, 202);
    let h = api
        .wait_for(&format!("/devices/{DEVICE}/channels/{stop}/stream"), Duration::from_secs(20), |h| {
            h["state"] == "stalled"
        })
        .await;
    assert!(h["error"].as_str().is_some_and(|e| e.contains("no picture")), "{h}");
    assert!(h["frames"].as_u64().is_some_and(|f| f > 0) && h["stalls"].as_u64() >= Some(1), "{h}");

    // What an operator can get wrong is named.
    let (s, v) = api.get(&format!("/devices/{DEVICE}/channels/42010400001310000999/snapshot")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v) =
        api.post(&format!("/devices/{DEVICE}/channels/{}/stream", channel(0)), json!({"hold": "forever"})).await;
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("hold")), "the field is named: {v}");

    let m = gw.api.metrics().await;
    assert!(metric(&m, "vigil_gb_time_to_first_frame_seconds_count") >= 4.0, "first frames are timed");
    assert!(metric(&m, "vigil_gb_plays_total{outcome=\"no_media\"}") >= 1.0);
    assert!(metric(&m, "vigil_gb_plays_total{outcome=\"bye_from_device\"}") >= 1.0);
    // Each answered play asked its channel for a keyframe (IFameCmd), and the device took it.
    assert!(
        metric(&m, "vigil_sip_client_transactions_total{outcome=\"ok\",request=\"IFameCmd\"}") >= 5.0,
        "keyframe requests: {}",
        m.lines().filter(|l| l.contains("sip_client_transactions")).collect::<Vec<_>>().join("\n")
    );
    gw.shutdown().await;
}

/// Black and frozen channels are flagged by diagnosis within seconds of a pull (vigil samples
/// each keyframe until it has a verdict), each raises a video-quality alarm naming its
/// channel, and the intact rate counts them as online but not intact; the healthy channel
/// passes. Default diagnosis settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_and_frozen_channels_are_flagged_and_the_intact_rate_counts_them() {
    let gw = gateway().await;
    let _dev = SimDevice::start(gw.sip.expect("SIP"), 3, &["--media-faults", "1=black,2=frozen"]);
    registered_with_channels(&gw, 3).await;
    let api = &gw.api;
    for i in 0..3 {
        assert_eq!(
            api.post(&format!("/devices/{DEVICE}/channels/{}/stream", channel(i)), json!({"hold": "2m"})).await.0,
            202
        );
    }
    let within = Duration::from_secs(40);
    for (i, fault) in [(1, "black"), (2, "frozen")] {
        let h = api
            .wait_for(&format!("/devices/{DEVICE}/channels/{}/stream", channel(i)), within, |h| {
                h["quality"]["alarmed"] == true
                    && h["quality"]["faults"].as_array().is_some_and(|f| f.iter().any(|x| x == fault))
            })
            .await;
        assert_eq!(h["state"], "playing", "{h}");
    }
    let good = api
        .wait_for(&format!("/devices/{DEVICE}/channels/{}/stream", channel(0)), within, |h| {
            h["quality"]["consecutive_bad"] == 0 && h["quality"].is_object()
        })
        .await;
    assert_eq!(
        (good["quality"]["faults"].clone(), good["quality"]["alarmed"].clone()),
        (json!([]), json!(false)),
        "{good}"
    );
    // The NVR's three channels are online; two are not intact.
    let r = api
        .wait_for("/online-rate", within, |r| r["online"].as_u64() == Some(3) && r["intact"].as_u64() == Some(1))
        .await;
    assert!(r["intact_rate"].as_f64() < r["rate"].as_f64(), "{r}");
    // The alarms are committed to the event log by its writer, a moment after the stream's
    // health shows them.
    let video_alarms = |v: &serde_json::Value| {
        v["items"].as_array().map_or(0, |a| a.iter().filter(|e| e["body"]["category"] == "video_quality").count())
    };
    let events = api.wait_for("/events?kind=alarm&limit=50", within, |v| video_alarms(v) >= 2).await;
    let flagged: Vec<&str> = events["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["body"]["category"] == "video_quality" && e["body"]["state"] == "start")
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["body"]["source_id"].as_str())
        .collect();
    let mut flagged = flagged;
    flagged.sort();
    assert_eq!(flagged, vec![channel(1), channel(2)], "one alarm per bad channel, by channel: {events}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nvr_at_its_preview_limit_is_refused_with_its_code() {
    let gw = gateway().await;
    let _dev = SimDevice::start(gw.sip.expect("SIP"), 2, &["--max-sessions", "1"]);
    registered_with_channels(&gw, 2).await;
    let api = &gw.api;
    assert_eq!(api.get_bytes(&format!("/devices/{DEVICE}/channels/{}/snapshot", channel(0))).await.0, 200);
    let (s, v) = api.get(&format!("/devices/{DEVICE}/channels/{}/snapshot", channel(1))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (502, Some("no_picture")), "{v}");
    let h = api.get(&format!("/devices/{DEVICE}/channels/{}/stream", channel(1))).await.1;
    assert_eq!(h["state"], "invite_refused", "{h}");
    assert!(h["error"].as_str().is_some_and(|e| e.contains("503") && e.contains("preview links")), "{h}");
    gw.shutdown().await;
}

/// GStreamer decodes what the simulator sends: `vigil-sim gb-device push` to a GStreamer
/// pipeline over UDP and over TCP (RFC 4571), and ffprobe counts the frames it wrote.
#[test]
fn gstreamer_reads_every_frame_of_the_simulators_ps_over_rtp() {
    let gst = require_command("gst-launch-1.0");
    require_command("ffprobe");
    let sim = sim_binary();
    let clips = sim.parent().map(|d| d.join("sim-clips")).expect("target dir");
    let dir = tempfile::tempdir().expect("temp dir");
    for transport in ["tcp", "udp"] {
        let port = free_port();
        let out = dir.path().join(format!("{transport}.h264"));
        let caps = "application/x-rtp,media=video,clock-rate=90000,encoding-name=MP1S,payload=96";
        let source = match transport {
            "tcp" => {
                format!("tcpserversrc host=127.0.0.1 port={port} ! application/x-rtp-stream ! rtpstreamdepay ! {caps}")
            }
            _ => format!("udpsrc address=127.0.0.1 port={port} caps={caps}"),
        };
        let pipeline = format!(
            "{source} ! rtpmp1sdepay ! capssetter caps=video/mpeg,mpegversion=2,systemstream=true ! mpegpsdemux ! h264parse ! video/x-h264,stream-format=byte-stream ! filesink location={}",
            out.display()
        );
        let g = Command::new(&gst)
            .arg("-e")
            .args(pipeline.split(' '))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0");
        // UDP: send once GStreamer holds the port (TCP: the sender retries its connect).
        let mut waited = 0;
        while transport == "udp" && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            waited += 1;
            assert!(waited < 400, "GStreamer did not bind port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = Command::new(&sim)
            .args(["gb-device", "push", "--to", &format!("127.0.0.1:{port}"), "--media-transport", transport])
            .args(["--frames", "50", "--clips"])
            .arg(&clips)
            .stdout(Stdio::null())
            .status()
            .expect("vigil-sim push");
        assert!(status.success());
        if transport == "udp" {
            // UDP has no end: ask the pipeline to finish (EOS) once everything was sent.
            let _ = Command::new("kill").args(["-INT", &g.id().to_string()]).status();
        }
        let mut g = g;
        let done = g.wait().expect("gst-launch ends");
        assert!(done.success(), "{transport}: gst-launch failed");
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "csv=p=0"])
            .arg(&out)
            .output()
            .expect("ffprobe");
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "h264,640,360,50", "{transport}");
    }
}

/// An operator's patrol round over an NVR whose preview links allow two streams: every
/// channel is looked at (the NVR's 503s lower vigil's share for it and the refused channels
/// are tried again, not reported refused), the black one is reported with its fault, the
/// silent one as `no_media`, and each channel that played keeps a snapshot ffprobe reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patrol_round_looks_at_every_channel_within_the_nvrs_limit() {
    let gw = gateway_and("[patrol]\nfirst_after = \"1h\"\nhold = \"6s\"\nper_device = 4\n").await;
    let _dev =
        SimDevice::start(gw.sip.expect("SIP"), 4, &["--media-faults", "1=black,2=no-rtp", "--max-sessions", "2"]);
    registered_with_channels(&gw, 4).await;
    let api = &gw.api;
    let (s, v) = api.get("/patrol").await;
    assert_eq!((s, v["running"].as_bool(), v["round"].is_null()), (200, Some(false), true), "{v}");
    assert!(v["next_at"].is_string(), "the next scheduled round is shown: {v}");
    let (s, v) = api.post("/patrol", json!({"device_id": DEVICE})).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = api.post("/patrol", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("patrol_running")), "one round at a time: {v}");
    let p = api.wait_for("/patrol", Duration::from_secs(90), |p| p["round"]["ended_at"].is_string()).await;
    let round = &p["round"];
    assert_eq!((round["total"].as_u64(), round["done"].as_u64()), (Some(4), Some(4)), "{p}");
    assert_eq!(round["counts"], json!({"faults": 1, "no_media": 1, "ok": 2}), "{p}");
    let items = round["items"].as_array().expect("items");
    let by_channel = |i: u32| items.iter().find(|x| x["channel_id"] == channel(i)).expect("an item per channel");
    assert_eq!(by_channel(1)["faults"], json!(["black"]), "{p}");
    for i in [0, 1, 3] {
        let url =
            by_channel(i)["image_url"].as_str().expect("a snapshot kept").trim_start_matches("/api/v1").to_owned();
        let (s, ct, jpeg) = api.get_bytes(&url).await;
        assert_eq!((s, ct.as_str()), (200, "image/jpeg"));
        assert_eq!(jpeg_size(&jpeg), "mjpeg,640,360");
    }
    assert!(by_channel(2)["image"].is_null(), "no picture, no snapshot: {p}");
    // The dashboard's patrol card shows the round: counts by outcome in Chinese, the black
    // channel with its fault, the silent one with its reason; and the NVR's device view shows
    // its channels' pictures.
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("{}/?token={}&lang=zh&device={DEVICE}", gw.url, crate::support::gateway::VIEWER);
    let out = crate::dashboard::chromium(&["--dump-dom"], &url, profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    for shown in ["视频巡检（轮巡）", "正常 2", "画面异常 1", "无码流 1", "黑屏"] {
        assert!(dom.contains(shown), "the dashboard does not show {shown:?}:\n{dom}");
    }
    let pictures = dom.matches("class=\"thumb\"").count();
    assert!(pictures >= 4, "the patrol's bad channel and the device view's 3 channels with pictures: {pictures}");
    // The daily report carries the round: JSON and CSV.
    let (s, report) = api.get("/reports/online/daily").await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["patrol"]["rounds"][0]["counts"], json!({"faults": 1, "no_media": 1, "ok": 2}), "{report}");
    let not_ok: Vec<&str> =
        report["patrol"]["not_ok"].as_array().expect("not_ok").iter().filter_map(|i| i["outcome"].as_str()).collect();
    assert_eq!(not_ok, vec!["faults", "no_media"], "{report}");
    let (s, csv) = api.get_text("/reports/online/daily?format=csv", "text/csv").await;
    assert_eq!(s, 200);
    assert!(csv.contains("# patrol rounds") && csv.contains("faults=1 no_media=1 ok=2"), "{csv}");
    assert!(csv.contains(&format!("{DEVICE},{},", channel(1))) && csv.contains(",faults,black,"), "{csv}");
    // Filtered by outcome, and after a restart the last round is still there.
    let (_, only) = api.get("/patrol?outcome=faults").await;
    assert_eq!(only["round"]["items"].as_array().map(Vec::len), Some(1), "{only}");
    let mut gw = gw;
    gw.restart().await;
    let (_, again) = gw.api.get("/patrol").await;
    assert_eq!(again["round"]["counts"], json!({"faults": 1, "no_media": 1, "ok": 2}), "{again}");
    assert_eq!(again["round"]["items"].as_array().map(Vec::len), Some(4), "{again}");
    gw.shutdown().await;
}

/// A `rtcp-rr` line of the simulator: its fields by name.
fn rr_fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace().filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Devices that answer `98 H264` / `99 H265` (the offer names PS, H264 and H265, as WVP's does)
/// send the elementary stream over RTP: both play and snapshot. While a UDP stream plays, vigil
/// sends RTCP receiver reports to the device's RTP port + 1, or to where its sender reports
/// come from: the device sees its own SSRC, its 1 % loss, and its sender report's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_answers_play_and_udp_senders_get_receiver_reports() {
    require_command("ffprobe");
    let first = free_port();
    let keys = format!(
        "media_ports = \"{first}-{}\"\nrtcp_interval = \"1s\"\ninvite_timeout = \"4s\"\nmedia_timeout = \"3s\"\n",
        first.saturating_add(30)
    );
    let gw = TestGateway::start_with_sip_and(Db::Sqlite, &keys, "").await;
    let (_dev, lines) = SimDevice::start_listened(
        gw.sip.expect("SIP"),
        3,
        &["--media-faults", "1=es,2=es-h265", "--drop-permille", "10"],
    );
    registered_with_channels(&gw, 3).await;
    let api = &gw.api;
    for (i, codec) in [(1, "h264"), (2, "h265"), (0, "h264")] {
        let ch = channel(i);
        let (s, _, jpeg) = api.get_bytes(&format!("/devices/{DEVICE}/channels/{ch}/snapshot")).await;
        assert_eq!(s, 200, "channel {i}: {}", String::from_utf8_lossy(&jpeg));
        assert_eq!(jpeg_size(&jpeg), "mjpeg,640,360", "channel {i}");
        let h = api.get(&format!("/devices/{DEVICE}/channels/{ch}/stream")).await.1;
        assert_eq!((h["state"].as_str(), h["codec"].as_str()), (Some("playing"), Some(codec)), "channel {i}: {h}");
    }
    // Receiver reports about channel 1's stream, lossy by the simulator's 1 %, carrying the
    // time of the device's sender report (its RTCP socket is where reports then go).
    let mut lines = lines;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let good = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "no receiver report with loss and LSR within 30 s: {seen:?}");
        let Ok(Some(line)) = tokio::time::timeout(left, lines.recv()).await else { continue };
        if !line.starts_with("rtcp-rr ") {
            continue;
        }
        let f = rr_fields(&line);
        seen.push(line.clone());
        let lost: u64 = f.get("lost").and_then(|v| v.parse().ok()).unwrap_or(0);
        if lost > 0 && f.get("lsr").is_some_and(|l| l != "00000000") {
            break f;
        }
    };
    let ssrc: u64 = good["source"].parse().expect("source SSRC");
    assert!(ssrc > 0, "the report names the device's SSRC: {good:?}");
    let m = gw.api.metrics().await;
    assert!(metric(&m, "vigil_gb_rtcp_reports_total") >= 1.0, "{m}");
    gw.shutdown().await;
}

/// `media_single_port`: every stream on one port, told apart by SSRC — the per-stream range
/// is held by someone else, so nothing plays unless the single port serves them all, over UDP
/// and over TCP (passive); the device's own `y=` is followed there too; a datagram with an
/// SSRC nobody leased is counted and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_media_port_serves_every_stream_by_its_ssrc() {
    for transport in ["udp", "tcp_passive"] {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("a port to occupy");
        let taken_tcp = std::net::TcpListener::bind(taken.local_addr().expect("addr")).ok();
        let range = taken.local_addr().expect("addr").port();
        let single = free_port();
        let keys = format!(
            "media_ports = \"{range}-{range}\"\nmedia_single_port = {single}\nmedia_transport = \"{transport}\"\ninvite_timeout = \"4s\"\nmedia_timeout = \"3s\"\n"
        );
        let gw = TestGateway::start_with_sip_and(Db::Sqlite, &keys, "").await;
        let _dev = SimDevice::start(gw.sip.expect("SIP"), 3, &["--media-faults", "2=own-ssrc,1=h265"]);
        registered_with_channels(&gw, 3).await;
        let api = &gw.api;
        for i in 0..3 {
            api.post(&format!("/devices/{DEVICE}/channels/{}/stream", channel(i)), json!({"hold": "60s"})).await;
        }
        for (i, codec) in [(0, "h264"), (1, "h265"), (2, "h264")] {
            let h = api
                .wait_for(&format!("/devices/{DEVICE}/channels/{}/stream", channel(i)), Duration::from_secs(20), |h| {
                    h["state"] == "playing" && h["frames"].as_u64().is_some_and(|f| f > 10)
                })
                .await;
            assert_eq!(
                (h["codec"].as_str(), h["transport"].as_str()),
                (Some(codec), Some(transport)),
                "{transport} {i}: {h}"
            );
        }
        if transport == "udp" {
            let stray = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0x01];
            rtp.extend([0u8; 100]);
            stray.send_to(&rtp, ("127.0.0.1", single)).expect("send");
            gw.api
                .wait_for_metrics(Duration::from_secs(10), |m| {
                    m.contains("vigil_gb_media_dropped_total{reason=\"unknown_ssrc\"}")
                })
                .await;
        }
        drop((taken, taken_tcp));
        gw.shutdown().await;
    }
}
