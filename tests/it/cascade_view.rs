//! The upper platform's view of ON/OFF follows vigil's presence, end to end: `vigil-sim upper`
//! (our GB/T 28181 upper: digest registration, a catalog subscription and query, its own view
//! from the catalog and the NOTIFYs, served at `GET /view`) watches three cameras while they
//! come online, flap, and go offline; while vigil restarts; and while the upper itself is
//! down and comes back knowing nothing (it refuses vigil's keepalive, vigil registers again
//! and the upper learns everything anew). After each, its view equals vigil's within 30 s;
//! `GET /relay/targets` shows what the upper sees.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::cascade::{LOWER, UPPER};
use crate::support::gateway::{Db, TestGateway};
use crate::support::{free_port, sim_binary};

const CAMERAS: [&str; 3] = ["42010400001320000101", "42010400001320000102", "42010400001320000103"];

/// `vigil-sim upper` on `sip`, its view on `http`.
pub(crate) struct SimUpper(Child);

impl SimUpper {
    pub(crate) fn start(sip: u16, http: u16) -> SimUpper {
        let child = Command::new(sim_binary())
            .args(["upper", "--listen", &format!("127.0.0.1:{sip}"), "--http", &format!("127.0.0.1:{http}")])
            .args(["--id", UPPER, "--password", "12345678", "--report-every", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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

/// The upper's view: channel → ON.
pub(crate) async fn upper_view(http: u16) -> BTreeMap<String, bool> {
    let v: serde_json::Value = match reqwest::get(format!("http://127.0.0.1:{http}/view")).await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return BTreeMap::new(),
    };
    v["status"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false))).collect())
        .unwrap_or_default()
}

/// vigil's own view of the cameras: online or not.
async fn vigil_view(gw: &TestGateway) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for id in CAMERAS {
        let d = gw.api.get(&format!("/devices/{id}")).await.1;
        out.insert(id.to_owned(), d["presence"]["state"] == "online");
    }
    out
}

/// Waits until the upper sees what vigil sees (and it is `expected`), within 30 s.
async fn agree(gw: &TestGateway, http: u16, expected: [bool; 3], when: &str) {
    let want: BTreeMap<String, bool> = CAMERAS.iter().map(|c| c.to_string()).zip(expected).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (theirs, ours) = (upper_view(http).await, vigil_view(gw).await);
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

async fn observe(gw: &TestGateway, id: &str, kind: &str) {
    let body = json!([{"device_id": id, "kind": kind, "ttl": "1h", "reason": "test"}]);
    assert_eq!(gw.api.post("/observations", body).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uppers_view_follows_presence_through_flaps_a_vigil_restart_and_an_upper_restart() {
    let (sip, http) = (free_port(), free_port());
    let mut upper = SimUpper::start(sip, http);
    let config = format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"127.0.0.1:{sip}\"\n\
user_id = \"{LOWER}\"\npassword = \"12345678\"\nlisten = \"127.0.0.1:{}\"\nkeepalive_interval = \"5s\"\nkeepalive_misses = 2\n",
        free_port()
    );
    let mut gw = TestGateway::start(Db::Sqlite, &config).await;
    for id in CAMERAS {
        let body = json!({"id": id, "name": format!("东门 {id}"), "kind": "camera", "protocol": "gat1400"});
        assert_eq!(gw.api.post("/devices", body).await.0, 201);
    }
    observe(&gw, CAMERAS[0], "alive").await;
    observe(&gw, CAMERAS[1], "alive").await;
    agree(&gw, http, [true, true, false], "two cameras online").await;

    // A camera flapping: the last state wins at the upper.
    for kind in ["dead", "alive", "dead", "alive", "dead"] {
        observe(&gw, CAMERAS[0], kind).await;
    }
    agree(&gw, http, [false, true, false], "after a flap ending offline").await;

    // vigil restarts; meanwhile nothing changes; afterwards a camera comes online.
    gw.restart().await;
    agree(&gw, http, [false, true, false], "after vigil restarted").await;
    observe(&gw, CAMERAS[2], "alive").await;
    agree(&gw, http, [false, true, true], "a change after vigil restarted").await;

    // The upper goes down; a camera goes offline while it is; it comes back knowing nothing.
    let _ = upper.0.kill();
    let _ = upper.0.wait();
    observe(&gw, CAMERAS[1], "dead").await;
    upper = SimUpper::start(sip, http);
    agree(&gw, http, [false, false, true], "after the upper restarted").await;
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
    drop(upper);
    gw.shutdown().await;
}
