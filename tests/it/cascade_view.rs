//! The upper platform's view of ON/OFF follows vigil's presence, end to end: `vigil-sim upper`
//! (our GB/T 28181 upper: digest registration, a catalog subscription and query, its own view
//! from the catalog and the NOTIFYs, served at `GET /view`) watches three cameras while they
//! come online, flap, and go offline; while vigil restarts (and is killed with -9 while a
//! camera's validity window runs out); and while the upper itself is
//! down and comes back knowing nothing (it refuses vigil's keepalive, vigil registers again
//! and the upper learns everything anew). After each, its view equals vigil's within 30 s;
//! `GET /relay/targets` shows what the upper sees; a camera added reaches it as ADD, one
//! deleted as DEL.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::cascade::{LOWER, UPPER};
use crate::support::gateway::{config_toml, Client, Db, Process, TestGateway};
use crate::support::{free_port, sim_binary};

const CAMERAS: [&str; 3] = ["42010400001320000101", "42010400001320000102", "42010400001320000103"];

/// `vigil-sim upper` on `sip`, its view on `http`.
pub(crate) struct SimUpper(Child);

impl SimUpper {
    pub(crate) fn start(sip: u16, http: u16) -> SimUpper {
        Self::spawn(sip, http, &[], Stdio::null())
    }

    /// The upper printing each NOTIFY item it is told (`notify <ms> <channel> <event>`).
    fn start_logged(sip: u16, http: u16) -> (SimUpper, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let mut upper = Self::spawn(sip, http, &["--log-notifies"], Stdio::piped());
        let rx = crate::support::stdout_lines(&mut upper.0);
        (upper, rx)
    }

    fn spawn(sip: u16, http: u16, extra: &[&str], stdout: Stdio) -> SimUpper {
        let child = Command::new(sim_binary())
            .args(["upper", "--listen", &format!("127.0.0.1:{sip}"), "--http", &format!("127.0.0.1:{http}")])
            .args(["--id", UPPER, "--password", "12345678", "--report-every", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("vigil-sim upper");
        SimUpper(child)
    }
}

impl Drop for SimUpper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The upper's `GET /view` (null while it does not answer).
pub(crate) async fn upper_json(http: u16) -> serde_json::Value {
    match reqwest::get(format!("http://127.0.0.1:{http}/view")).await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The upper's view: channel → ON.
pub(crate) async fn upper_view(http: u16) -> BTreeMap<String, bool> {
    upper_json(http).await["status"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false))).collect())
        .unwrap_or_default()
}

/// vigil's own view of the cameras: online or not.
async fn vigil_view(api: &Client) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for id in CAMERAS {
        let d = api.get(&format!("/devices/{id}")).await.1;
        out.insert(id.to_owned(), d["presence"]["state"] == "online");
    }
    out
}

/// The three cameras registered, the first two online, and the upper agreeing.
async fn two_of_three_online(api: &Client, http: u16, when: &str) {
    for id in CAMERAS {
        let body = json!({"id": id, "name": format!("东门 {id}"), "kind": "camera", "protocol": "gat1400"});
        assert_eq!(api.post("/devices", body).await.0, 201);
    }
    observe(api, CAMERAS[0], "alive").await;
    observe(api, CAMERAS[1], "alive").await;
    agree(api, http, [true, true, false], when).await;
}

/// Waits until the upper sees what vigil sees (and it is `expected`), within 30 s.
async fn agree(api: &Client, http: u16, expected: [bool; 3], when: &str) {
    let want: BTreeMap<String, bool> = CAMERAS.iter().map(|c| c.to_string()).zip(expected).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (theirs, ours) = (upper_view(http).await, vigil_view(api).await);
        if theirs == want && ours == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{when}: the upper sees {theirs:?}, vigil {ours:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `[[upstreams]]` of the upper on `sip`.
fn upstream(sip: u16) -> String {
    format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"127.0.0.1:{sip}\"\n\
user_id = \"{LOWER}\"\npassword = \"12345678\"\nlisten = \"127.0.0.1:{}\"\nkeepalive_interval = \"5s\"\nkeepalive_misses = 2\n",
        free_port()
    )
}

async fn observe(api: &Client, id: &str, kind: &str) {
    let body = json!([{"device_id": id, "kind": kind, "ttl": "1h", "reason": "test"}]);
    assert_eq!(api.post("/observations", body).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uppers_view_follows_presence_through_flaps_a_vigil_restart_and_an_upper_restart() {
    let (sip, http) = (free_port(), free_port());
    let mut upper = SimUpper::start(sip, http);
    let config = upstream(sip);
    let mut gw = TestGateway::start(Db::Sqlite, &config).await;
    two_of_three_online(&gw.api, http, "two cameras online").await;

    // A camera flapping: the last state wins at the upper.
    for kind in ["dead", "alive", "dead", "alive", "dead"] {
        observe(&gw.api, CAMERAS[0], kind).await;
    }
    agree(&gw.api, http, [false, true, false], "after a flap ending offline").await;

    // vigil restarts; meanwhile nothing changes; afterwards a camera comes online.
    gw.restart().await;
    agree(&gw.api, http, [false, true, false], "after vigil restarted").await;
    observe(&gw.api, CAMERAS[2], "alive").await;
    agree(&gw.api, http, [false, true, true], "a change after vigil restarted").await;

    // The upper goes down; a camera goes offline while it is; it comes back knowing nothing.
    let _ = upper.0.kill();
    let _ = upper.0.wait();
    observe(&gw.api, CAMERAS[1], "dead").await;
    upper = SimUpper::start(sip, http);
    agree(&gw.api, http, [false, false, true], "after the upper restarted").await;
    // What the upper sees, as the API (and the dashboard's upstream table) shows it.
    let t = gw
        .api
        .wait_for("/relay/targets", Duration::from_secs(10), |v| {
            v["items"][0]["session"]["view"]["told_on"] == 1 && v["items"][0]["session"]["view"]["on"] == 1
        })
        .await;
    let view = &t["items"][0]["session"]["view"];
    assert_eq!((view["channels"].as_u64(), view["plays"].as_u64()), (Some(3), Some(0)), "{t}");
    assert!(view["subscribed_until"].is_string(), "the upper subscribed to the catalog: {t}");
    let m = gw.api.metrics().await;
    assert!(m.contains("vigil_cascade_registered{target=\"city\"} 1"), "{m}");
    // NOTIFYs were answered since the restart (this process's counters): at least the one
    // that told the upper camera 1 went offline while it was down.
    assert!(m.contains("vigil_cascade_notifies_total{outcome=\"answered\",target=\"city\"}"), "{m}");

    // The registry changes: a camera added is told as ADD (with its item), one deleted as DEL.
    let added = "42010400001320000104";
    let body = json!({"id": added, "name": "新增摄像机", "kind": "camera", "protocol": "gat1400"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    observe(&gw.api, added, "alive").await;
    assert_eq!(gw.api.send(reqwest::Method::DELETE, &format!("/devices/{}", CAMERAS[2]), json!(null)).await.0, 204);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = upper_view(http).await;
        if v.get(added) == Some(&true) && !v.contains_key(CAMERAS[2]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upper sees {v:?}: {added} should be ON, {} gone",
            CAMERAS[2]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(upper);
    gw.shutdown().await;
}

/// vigil killed with -9 (no shutdown, no goodbye to the upper) and started again: it registers
/// anew, the upper learns the whole catalog again, and its view equals vigil's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_vigil_is_killed_with_9_the_upper_is_brought_back_to_the_true_state() {
    let (sip, http) = (free_port(), free_port());
    let _upper = SimUpper::start(sip, http);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, port, &upstream(sip))).expect("write config");
    let log = dir.path().join("vigil.log");
    let mut gw = Process::start(&cfg, port, &log).await;
    for id in CAMERAS {
        let body = json!({"id": id, "name": format!("东门 {id}"), "kind": "camera", "protocol": "external"});
        assert_eq!(gw.api.post("/devices", body).await.0, 201);
    }
    // Camera 0 is alive for 15 s only; camera 1 for an hour.
    let short = json!([{"device_id": CAMERAS[0], "kind": "alive", "ttl": "15s"}]);
    assert_eq!(gw.api.post("/observations", short).await.0, 202);
    let window_ends = tokio::time::Instant::now() + Duration::from_secs(15);
    observe(&gw.api, CAMERAS[1], "alive").await;
    agree(&gw.api, http, [true, true, false], "before the kill").await;
    gw.kill9();
    // Down past camera 0's window: the upper, told nothing since, still shows it ON.
    tokio::time::sleep_until(window_ends + Duration::from_secs(1)).await;
    assert_eq!(upper_view(http).await.get(CAMERAS[0]), Some(&true));
    let gw = Process::start(&cfg, port, &log).await;
    // vigil judges by the windows at restart (camera 1 still online, camera 0 not), and the
    // upper is brought to that without anyone pressing refresh.
    agree(&gw.api, http, [false, true, false], "after the kill and restart").await;
    observe(&gw.api, CAMERAS[1], "dead").await;
    observe(&gw.api, CAMERAS[2], "alive").await;
    agree(&gw.api, http, [false, false, true], "a change after the restart").await;
}

/// The network to the upper cut (the upper stopped with SIGSTOP: nothing it is sent is
/// answered) for longer than vigil's keepalives and backoff allow, while a camera goes
/// offline and another comes online: within 30 s of the network's return the upper sees what
/// vigil sees. (A 10-minute cut is the same path: the backoff is capped at 15 s ± 20 %.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_network_cut_the_upper_is_brought_back_within_30_s() {
    let (sip, http) = (free_port(), free_port());
    let upper = SimUpper::start(sip, http);
    let gw = TestGateway::start(Db::Sqlite, &upstream(sip)).await;
    two_of_three_online(&gw.api, http, "before the cut").await;
    let pid = upper.0.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    observe(&gw.api, CAMERAS[0], "dead").await;
    observe(&gw.api, CAMERAS[2], "alive").await;
    // Until two keepalives went unanswered (32 s each), the registration failed, and a
    // REGISTER after it went unanswered too (the second failure in a row).
    gw.api
        .wait_for("/relay/targets", Duration::from_secs(150), |v| {
            v["items"][0]["session"]["state"] == "failing" && v["items"][0]["session"]["failures"].as_u64() >= Some(2)
        })
        .await;
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    agree(&gw.api, http, [false, true, true], "within 30 s of the network's return").await;
    gw.shutdown().await;
}

/// Where the upper takes community devices (`catalog_community`), an access terminal over MQTT
/// is a channel under an id vigil gives it (type 139); renamed, it is told as UPDATE with its
/// whole item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_devices_appear_under_given_ids_and_a_rename_is_told_as_update() {
    let (sip, http) = (free_port(), free_port());
    let _upper = SimUpper::start(sip, http);
    let config = format!("{}catalog_community = true\n", upstream(sip));
    let gw = TestGateway::start(Db::Sqlite, &config).await;
    let body = json!({"id": "gate-01", "name": "东门门禁", "kind": "access_control", "protocol": "mqtt"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    observe(&gw.api, "gate-01", "alive").await;
    // The gateway's centre code and industry code, 139, network 0, the first serial.
    let given = "42010400001390900000";
    let event = |want: &'static str| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = upper_json(http).await;
            if v["events"][given] == want && v["status"][given] == true {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the upper was not told {want} for {given}: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    event("ON").await;
    let (s, _) = gw.api.send(reqwest::Method::PATCH, "/devices/gate-01", json!({"name": "东门门禁（新）"})).await;
    assert_eq!(s, 200);
    event("UPDATE").await;
    gw.shutdown().await;
}

/// A GB/T 28181 channel whose picture is lost while its device stays online (the simulated
/// device stops its RTP 3 s into each play and keeps the dialog and its keepalives): while
/// vigil pulls it (held from the API here; an upper's play holds it the same way) the upper is
/// told VLOST, and ON again when vigil's next INVITE brings the picture back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gb_channel_whose_video_is_lost_is_told_vlost_and_on_again_when_it_returns() {
    use crate::gb_play::{channel, registered_with_channels, SimDevice, DEVICE};
    let (sip, http) = (free_port(), free_port());
    let (_upper, mut notifies) = SimUpper::start_logged(sip, http);
    let first = free_port();
    let keys = format!(
        "media_ports = \"{first}-{}\"\ninvite_timeout = \"4s\"\nmedia_timeout = \"3s\"\n",
        first.saturating_add(30)
    );
    let config = format!("{}scope_kinds = [\"camera\", \"nvr\"]\n", upstream(sip));
    let gw = TestGateway::start_with_sip_and(Db::Sqlite, &keys, &config).await;
    let _dev = SimDevice::start(gw.sip.expect("SIP"), 1, &["--media-faults", "0=stop"]);
    registered_with_channels(&gw, 1).await;
    let ch = channel(0);
    let hold = gw.api.post(&format!("/devices/{DEVICE}/channels/{ch}/stream"), json!({"hold": "2m"})).await.0;
    assert_eq!(hold, 202);
    // What the upper is told of the channel, in order, until VLOST and then ON.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut told: Vec<String> = Vec::new();
    while !told.ends_with(&["VLOST".to_owned(), "ON".to_owned()]) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = tokio::time::timeout(left, notifies.recv()).await;
        let Ok(Some(line)) = line else { panic!("the upper was told {told:?} of {ch}, not VLOST then ON") };
        let f: Vec<&str> = line.split(' ').collect();
        if f.first() == Some(&"notify") && f.get(2) == Some(&ch.as_str()) {
            let event = f.get(3).unwrap_or(&"").to_ascii_uppercase();
            if told.last() != Some(&event) {
                told.push(event);
            }
        }
    }
    let d = gw.api.get(&format!("/devices/{DEVICE}")).await.1;
    assert_eq!(d["presence"]["state"], "online", "the device stayed online through it: {d}");
    gw.shutdown().await;
}
