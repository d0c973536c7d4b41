//! A GB/T 28181 device vigil did not write: the `gb28181-rs` crate's device server (register
//! with digest, keepalive, catalog, INVITE answered with PS over RTP), streaming access units
//! of a clip ffmpeg made. vigil admits it, reads its catalog, pulls its channel on a
//! snapshot request, and shows frames, health, diagnosis and a JPEG ffprobe reads at the
//! clip's size.

use std::sync::Arc;
use std::time::Duration;

use gb28181_rs::config::Gb28181Config;
use gb28181_rs::frame::{AccessUnit, Nalu};
use gb28181_rs::mock::MockFrameHub;
use gb28181_rs::server::Gb28181Server;
use serde_json::json;

use crate::support::gateway::{Db, TestGateway};
use crate::support::rtsp::ffprobe;
use crate::support::{free_port, require_command};

const DEVICE: &str = "42010400001320000077";
const CHANNEL: &str = "42010400001310000077";

/// The clip's access units as the crate wants them: NAL units without start codes.
fn clip() -> Vec<(bool, Vec<Nalu>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("clip.h264");
    let status = std::process::Command::new(require_command("ffmpeg"))
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-t", "4"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-x264-params", "repeat-headers=1", "-f", "h264"])
        .arg(&path)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    let data = std::fs::read(&path).expect("clip");
    let mut a = vigil::protocol::ps::es::Assembler::default();
    let mut units = Vec::new();
    a.push(None, &data, |u| units.push(u));
    a.flush(|u| units.push(u));
    units
        .into_iter()
        .map(|u| {
            let nalus = split_annex_b(&u.data)
                .into_iter()
                .map(|n| {
                    let t = n[0] & 0x1F;
                    Nalu {
                        nalu_type: t,
                        data: n.to_vec(),
                        is_idr: t == 5,
                        is_sps: t == 7,
                        is_pps: t == 8,
                        is_aud: t == 9,
                    }
                })
                .collect();
            (u.keyframe, nalus)
        })
        .collect()
}

fn split_annex_b(b: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= b.len() {
        if b[i] == 0 && b[i + 1] == 0 && b[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(b.len(), |n| n - 3);
        while end > s && b[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(&b[s..end]);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb28181_rs_device_is_played_and_snapshotted() {
    require_command("ffprobe");
    let first = free_port();
    let keys = format!(
        "media_ports = \"{first}-{}\"\ninvite_timeout = \"5s\"\nmedia_timeout = \"5s\"\n",
        first.saturating_add(10)
    );
    let gw = TestGateway::start_with_sip(Db::Sqlite, &keys).await;
    let sip = gw.sip.expect("SIP");
    let (s, _) = gw
        .api
        .post("/devices", json!({"id": DEVICE, "name": "gb28181-rs IPC", "kind": "camera", "protocol": "gb28181"}))
        .await;
    assert_eq!(s, 201);

    let hub = Arc::new(MockFrameHub::new());
    let units = clip();
    let feeder = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            for (key, nalus) in units.iter().cycle() {
                tick.tick().await;
                hub.write(AccessUnit {
                    nalus: nalus.clone(),
                    timestamp: tokio::time::Instant::now().into_std(),
                    is_key_frame: *key,
                });
            }
        })
    };
    let config = Gb28181Config {
        platform_sip_address: "127.0.0.1".into(),
        platform_sip_port: sip.port(),
        device_id: DEVICE.into(),
        channel_id: CHANNEL.into(),
        sip_domain: "4201040000".into(),
        password: "12345678".into(),
        local_sip_port: free_port(),
        heartbeat_interval_secs: 5,
        // The device lists itself and one channel (as a multi-sensor camera or small NVR does).
        extra_channels: vec![
            serde_json::from_value(json!({"device_id": CHANNEL, "name": "gb28181-rs 通道 1"})).expect("a channel")
        ],
        ..Gb28181Config::default()
    };
    let mut device = Gb28181Server::start(config, hub, None).await.expect("the gb28181-rs device starts");

    let d = gw
        .api
        .wait_for(&format!("/devices/{DEVICE}"), Duration::from_secs(30), |d| d["presence"]["state"] == "online")
        .await;
    assert_eq!(d["presence"]["state"], "online");
    let chs = gw
        .api
        .wait_for(&format!("/devices/{DEVICE}/channels"), Duration::from_secs(30), |v| {
            v["items"].as_array().is_some_and(|a| a.iter().any(|c| c["id"] == CHANNEL))
        })
        .await;
    assert!(chs["items"].as_array().is_some_and(|a| !a.is_empty()));

    let (s, ct, jpeg) = gw.api.get_bytes(&format!("/devices/{DEVICE}/channels/{CHANNEL}/snapshot")).await;
    assert_eq!((s, ct.as_str()), (200, "image/jpeg"), "{}", String::from_utf8_lossy(&jpeg));
    let file = tempfile::Builder::new().suffix(".jpg").tempfile().expect("temp file");
    std::fs::write(file.path(), &jpeg).expect("write");
    assert_eq!(ffprobe(file.path()), "mjpeg,640,360");
    let h = gw
        .api
        .wait_for(&format!("/devices/{DEVICE}/channels/{CHANNEL}/stream"), Duration::from_secs(15), |h| {
            h["state"] == "playing" && h["width"] == 640 && h["frames"].as_u64() > Some(25) && h["quality"].is_object()
        })
        .await;
    assert_eq!(h["codec"], "h264", "{h}");
    assert_eq!(h["quality"]["faults"], json!([]), "the test pattern passes diagnosis: {h}");
    device.shutdown().await.expect("the device stops");
    feeder.abort();
    gw.shutdown().await;
}
