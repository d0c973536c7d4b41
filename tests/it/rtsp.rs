//! RTSP cameras against a real peer (gst-rtsp-server): vigil pulls over TCP with digest
//! auth and over UDP with basic auth, shows the stream's codec and resolution, serves a JPEG
//! snapshot that ffprobe reads, takes a camera that stalls with TCP open offline within 3 s
//! and back without help, and does not hammer a camera with a wrong password.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::{json, Value};

use crate::support::gateway::{Db, TestGateway};
use crate::support::rtsp::{ffprobe, GstCamera, SimCameras};

fn presence(v: &Value) -> (&str, &str) {
    (v["presence"]["state"].as_str().unwrap_or(""), v["presence"]["reason"].as_str().unwrap_or(""))
}

async fn snapshot_is(gw: &TestGateway, id: &str, expect: &str) {
    let (status, ct, body) = gw.api.get_bytes(&format!("/devices/{id}/snapshot")).await;
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"), "{}", String::from_utf8_lossy(&body));
    let file = tempfile::Builder::new().suffix(".jpg").tempfile().expect("temp file");
    std::fs::write(file.path(), &body).expect("write the snapshot");
    assert_eq!(ffprobe(file.path()), expect, "ffprobe reads the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gst_camera_over_tcp_with_digest_plays_snapshots_stalls_and_recovers() {
    let cam = GstCamera::start("digest", "h264");
    let extra = format!(
        "[rtsp]\ndiagnosis_every = \"1s\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\n[[rtsp.cameras]]\nid = \"cam-gutian-001\"\nname = \"古田一路口\"\nurl = \"{}\"\n",
        cam.url_with("admin", "secret")
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;

    let v = gw
        .api
        .wait_for("/devices/cam-gutian-001/stream", Duration::from_secs(20), |v| {
            v["state"] == "playing" && v["received_fps"].as_f64().is_some()
        })
        .await;
    assert_eq!(
        (v["codec"].as_str(), v["width"].as_u64(), v["height"].as_u64()),
        (Some("h264"), Some(640), Some(360)),
        "{v}"
    );
    assert_eq!(v["transport"], "tcp");
    let fps = v["received_fps"].as_f64().unwrap_or(0.0);
    assert!((20.0..=30.0).contains(&fps), "received fps {fps}: {v}");
    assert!(v["time_to_first_frame_ms"].as_u64().is_some_and(|t| t < 5000), "{v}");
    // The URL the API shows has no password in it.
    let (_, d) = gw.api.get("/devices/cam-gutian-001").await;
    assert!(!d.to_string().contains("secret"), "{d}");
    let d = gw.api.wait_for("/devices/cam-gutian-001", Duration::from_secs(5), |d| presence(d).0 == "online").await;
    assert_eq!(presence(&d).1, "frame");

    snapshot_is(&gw, "cam-gutian-001", "mjpeg,640,360").await;
    // Diagnosis runs on keyframes: the moving test pattern is a usable picture.
    let v = gw
        .api
        .wait_for("/devices/cam-gutian-001/stream", Duration::from_secs(10), |v| v["quality"]["scores"].is_object())
        .await;
    assert_eq!(v["quality"]["faults"], json!([]), "{v}");
    let gop = v["gop_frames"].as_u64().unwrap_or(0);
    assert!((20..=30).contains(&gop), "GOP {gop} (the camera sends a keyframe every 25 frames): {v}");

    // Stall with TCP open: offline, reason stream_stalled, within 3 s.
    cam.stall();
    let stalled_at = Instant::now();
    gw.api
        .wait_for("/devices/cam-gutian-001", Duration::from_secs(6), |d| presence(d) == ("offline", "stream_stalled"))
        .await;
    let latency = stalled_at.elapsed();
    assert!(latency <= Duration::from_secs(3), "offline {latency:?} after the stall");
    let v = gw.api.get("/devices/cam-gutian-001/stream").await.1;
    assert!(matches!(v["state"].as_str(), Some("stalled" | "backoff" | "connecting")), "{v}");
    assert!(v["stalls"].as_u64() >= Some(1), "{v}");

    // The camera comes back: vigil reconnects by itself.
    cam.resume();
    gw.api.wait_for("/devices/cam-gutian-001", Duration::from_secs(30), |d| presence(d).0 == "online").await;
    let v =
        gw.api.wait_for("/devices/cam-gutian-001/stream", Duration::from_secs(5), |v| v["state"] == "playing").await;
    assert!(v["reconnects"].as_u64() >= Some(1), "{v}");

    // The stream gauges are refreshed every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = gw.api.metrics().await;
        if text.contains("vigil_rtsp_streams{kind=\"camera\",state=\"playing\"} 1") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.contains("vigil_rtsp_streams{kind=\"camera\",state=\"playing\"} 1"), "{text}");
    assert!(text.contains("vigil_rtsp_time_to_first_frame_seconds_count"), "{text}");
    assert!(text.contains("vigil_rtsp_session_failures_total{state=\"stalled\"}"), "{text}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_over_udp_with_basic_auth_added_through_the_api() {
    let cam = GstCamera::start("basic", "h265");
    let gw = TestGateway::start(Db::Sqlite, "[rtsp]\ntransport = \"udp\"\ndiagnosis_every = \"1s\"\n").await;
    let (s, v) = gw
        .api
        .post(
            "/devices",
            json!({"id": "cam-h265", "name": "H.265 UDP", "kind": "camera", "protocol": "rtsp", "rtsp_url": cam.url_with("admin", "secret")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let v = gw.api.wait_for("/devices/cam-h265/stream", Duration::from_secs(20), |v| v["state"] == "playing").await;
    // Diagnosis decodes H.265 keyframes too.
    let q = gw
        .api
        .wait_for("/devices/cam-h265/stream", Duration::from_secs(15), |v| {
            v["quality"]["scores"]["sharpness"].as_f64() > Some(0.0)
        })
        .await;
    assert_eq!(q["quality"]["faults"], json!([]), "{q}");
    assert_eq!(
        (v["codec"].as_str(), v["transport"].as_str(), v["width"].as_u64()),
        (Some("h265"), Some("udp"), Some(640)),
        "{v}"
    );
    gw.api.wait_for("/devices/cam-h265/stream", Duration::from_secs(10), |v| v["last_keyframe_age_ms"].is_u64()).await;
    snapshot_is(&gw, "cam-h265", "mjpeg,640,360").await;

    // Removing the device stops its pull.
    let (s, _) = gw.api.send(reqwest::Method::DELETE, "/devices/cam-h265", json!({})).await;
    assert_eq!(s, 204);
    let (s, v) = gw.api.get("/devices/cam-h265/stream").await;
    assert_eq!(s, 404, "{v}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_auth_failed_and_not_hammered_and_a_fixed_url_plays() {
    let cam = GstCamera::start("digest", "h264");
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let csv = format!(
        "id,name,kind,protocol,org_id,rtsp_url,profile\ncam-pw,Gate,camera,rtsp,,{},\n",
        cam.url_with("admin", "wrong")
    );
    let (s, v) = gw.api.post_csv("/devices/import", &csv).await;
    assert_eq!(s, 200, "{v}");
    let v = gw.api.wait_for("/devices/cam-pw/stream", Duration::from_secs(15), |v| v["state"] == "auth_failed").await;
    assert!(v["error"].as_str().is_some_and(|e| e.contains("401")), "{v}");
    let d = gw.api.get("/devices/cam-pw").await.1;
    assert_eq!(presence(&d).0, "offline", "{d}");
    assert!(
        presence(&d).1 == "auth_failed" && d["presence"]["detail"].as_str().is_some_and(|t| t.contains("401")),
        "the presence reason is the classified cause: {d}"
    );
    // The next try is at least 30 s away, and no try happens meanwhile.
    let next = v["next_attempt_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("next_attempt_at");
    let since = chrono::DateTime::parse_from_rfc3339(v["since"].as_str().unwrap_or("")).expect("since");
    assert!((next - since).num_seconds() >= 29, "{v}");
    // Not a synchronisation: the property is that nothing happens in this window (a wrong
    // password is not retried for 30 s), so the test watches a few seconds of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = gw.api.get("/devices/cam-pw/stream").await.1;
    assert_eq!(v["attempts"], 1, "{v}");

    // The operator fixes the URL (CSV import updates the device): the pull restarts at once.
    let csv = format!(
        "id,name,kind,protocol,org_id,rtsp_url,profile\ncam-pw,Gate,camera,rtsp,,{},\n",
        cam.url_with("admin", "secret")
    );
    let (s, v) = gw.api.post_csv("/devices/import", &csv).await;
    assert_eq!((s, v["updated"].as_u64()), (200, Some(1)), "{v}");
    gw.api.wait_for("/devices/cam-pw/stream", Duration::from_secs(15), |v| v["state"] == "playing").await;
    gw.shutdown().await;
}

/// Every fault mode of the camera simulator, one camera each, through one gateway: the state
/// each ends in, the counters that say why, and diagnosis flagging the black and the frozen
/// picture (an alarm event each, and the intact rate below the online rate) while the healthy
/// stream passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_cameras_show_each_fault_as_its_own_state() {
    let sim = SimCameras::start(&["--stall-after", "2", "--slow", "8"]);
    let extra = "[assessment]\nsample_every = \"10s\"\n\n[rtsp]\ndiagnosis_every = \"1s\"\ndiagnosis_alarm_after = 2\nconnect_timeout = \"2s\"\nbackoff_min = \"300ms\"\nbackoff_max = \"2s\"\n";
    let gw = TestGateway::start(Db::Sqlite, extra).await;
    let closed = format!("rtsp://127.0.0.1:{}/live/1", crate::support::free_port());
    let cams = [
        ("sim-live", sim.url("live/1")),
        ("sim-black", sim.url("black/1")),
        ("sim-frozen", sim.url("frozen/1")),
        ("sim-stall", sim.url("stall/1")),
        ("sim-jump", sim.url("jump/1")),
        ("sim-ssrc", sim.url("ssrc/1")),
        ("sim-limit", sim.url("limit/1")),
        ("sim-badsdp", sim.url("badsdp/1")),
        ("sim-slow", sim.url("slow/1")),
        ("sim-404", sim.url("nothing/1")),
        ("sim-refused", closed),
    ];
    let mut csv = String::from("id,name,kind,protocol,org_id,rtsp_url,profile\n");
    for (id, url) in &cams {
        csv.push_str(&format!("{id},{id},camera,rtsp,,{url},\n"));
    }
    let (s, v) = gw.api.post_csv("/devices/import", &csv).await;
    assert_eq!(s, 200, "{v}");

    let within = Duration::from_secs(20);
    let state_is = |want: &'static str| move |v: &Value| v["state"] == want;
    gw.api.wait_for("/devices/sim-limit/stream", within, state_is("session_limit")).await;
    gw.api.wait_for("/devices/sim-badsdp/stream", within, state_is("bad_media")).await;
    gw.api.wait_for("/devices/sim-404/stream", within, state_is("not_found")).await;
    gw.api.wait_for("/devices/sim-refused/stream", within, state_is("refused")).await;
    let v = gw.api.wait_for("/devices/sim-slow/stream", within, state_is("backoff")).await;
    assert!(v["error"].as_str().is_some_and(|e| e.contains("connect+DESCRIBE")), "{v}");
    // Presence (the dashboard's offline list, the device view, the daily report) says the
    // same cause, so the operator knows whom to call.
    for (id, reason) in [
        ("sim-limit", "session_limit"),
        ("sim-badsdp", "bad_media"),
        ("sim-404", "not_found"),
        ("sim-refused", "refused"),
        ("sim-slow", "unreachable"),
    ] {
        let d = gw.api.wait_for(&format!("/devices/{id}"), within, |d| presence(d) == ("offline", reason)).await;
        assert!(d["presence"]["detail"].is_string(), "{d}");
    }
    // The stalling camera plays 2 s, stalls, and is reconnected, again and again.
    let v = gw.api.wait_for("/devices/sim-stall/stream", within, |v| v["stalls"].as_u64() >= Some(2)).await;
    assert!(v["reconnects"].as_u64() >= Some(1), "{v}");
    // An hour's jump in RTP time restarts the session at once, counted; it plays again.
    gw.api
        .wait_for("/devices/sim-jump/stream", within, |v| {
            v["timestamp_jumps"].as_u64() >= Some(1) && v["state"] == "playing"
        })
        .await;
    // A new SSRC mid-stream: retina takes it or vigil restarts; either way it keeps playing.
    gw.api
        .wait_for("/devices/sim-ssrc/stream", within, |v| v["state"] == "playing" && v["frames"].as_u64() > Some(150))
        .await;

    // Diagnosis: black and frozen are flagged and alarmed; the healthy stream passes.
    let alarmed = |fault: &'static str| {
        move |v: &Value| {
            v["quality"]["alarmed"] == true
                && v["quality"]["faults"].as_array().is_some_and(|f| f.iter().any(|x| x == fault))
        }
    };
    gw.api.wait_for("/devices/sim-black/stream", within, alarmed("black")).await;
    gw.api.wait_for("/devices/sim-frozen/stream", within, alarmed("frozen")).await;
    let v = gw.api.wait_for("/devices/sim-live/stream", within, |v| v["quality"]["baseline_ready"] == true).await;
    assert_eq!(v["quality"]["faults"], json!([]), "{v}");
    assert_eq!(v["quality"]["alarmed"], false, "{v}");
    // The alarms reach the event log through its writer, a moment after the health shows them.
    let events = gw
        .api
        .wait_for("/events?kind=alarm&limit=50", within, |v| {
            v["items"].as_array().map_or(0, |a| a.iter().filter(|e| e["body"]["category"] == "video_quality").count())
                >= 2
        })
        .await;
    let vq: Vec<&Value> = events["items"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["body"]["category"] == "video_quality").collect())
        .unwrap_or_default();
    let devices: Vec<&str> = vq.iter().filter_map(|e| e["device_id"].as_str()).collect();
    assert!(
        devices.contains(&"sim-black") && devices.contains(&"sim-frozen") && !devices.contains(&"sim-live"),
        "{events}"
    );
    assert!(vq.iter().all(|e| e["body"]["details"]["scores"].is_object()), "{events}");

    // The intact rate counts the black and the frozen camera as online but not intact.
    let r = gw
        .api
        .wait_for("/online-rate", within, |r| {
            r["online"].as_u64() >= Some(3) && r["intact"].as_u64() < r["online"].as_u64()
        })
        .await;
    assert!(r["intact_rate"].as_f64() < r["rate"].as_f64(), "{r}");
    // ... and so does the daily report, from the samples (one every 10 s here).
    let report = gw
        .api
        .wait_for("/reports/online/daily", Duration::from_secs(25), |r| {
            r["rows"].as_array().and_then(|rows| rows.first()).is_some_and(|row| row["samples"].as_u64() >= Some(1))
        })
        .await;
    let row = &report["rows"][0];
    assert!(row["sampled_intact_rate"].as_f64() < row["sampled_rate"].as_f64(), "{row}");
    gw.shutdown().await;
}
