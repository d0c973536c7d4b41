//! GB/T 28181 cascade, vigil the lower platform: SIPp (Debian `sip-tester`) plays the upper
//! platform from the scenario files in `tests/fixtures/sipp/`. It challenges vigil's REGISTER
//! with digest and verifies the answer itself (`verifyauth`: SIPp computes the digest, not
//! vigil), grants the registration, and answers the keepalives that follow; the upstream's
//! state in `GET /api/v1/relay/targets` follows. A wrong password is refused by the upper and
//! shown with its code.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::gateway::{Db, TestGateway};
use crate::support::{free_port, require_command};

pub(crate) const LOWER: &str = "42010400002000000001";
pub(crate) const UPPER: &str = "42010000002000000001";

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sipp").join(name)
}

/// SIPp as the upper platform on `port`, for one registration and one keepalive.
struct Upper(Child);

impl Upper {
    fn start(port: u16) -> Upper {
        // Two calls: the registration, and the first keepalive.
        Self::play("upper_register.xml", port, &["-m", "2"])
    }

    fn play(scenario: &str, port: u16, extra: &[&str]) -> Upper {
        let sipp = require_command("sipp");
        let child = Command::new(sipp)
            .arg("-sf")
            .arg(fixture(scenario))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin", "-timeout", "60s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp");
        Upper(child)
    }

    /// SIPp's verdict on the call: true when every step of the scenario held.
    async fn passed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Upper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn upstream(port: u16, password: &str) -> String {
    upstream_over(port, password, "udp")
}

/// The upstream with its SIP over `transport` ("udp" or "tcp").
fn upstream_over(port: u16, password: &str, transport: &str) -> String {
    format!("{}transport = \"{transport}\"\n", upstream_keys(port, password))
}

fn upstream_keys(port: u16, password: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"127.0.0.1:{port}\"\n\
user_id = \"{LOWER}\"\npassword = \"{password}\"\nlisten = \"127.0.0.1:{}\"\nkeepalive_interval = \"5s\"\n",
        free_port()
    )
}

async fn city(gw: &TestGateway, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let v = gw
        .api
        .wait_for("/relay/targets", Duration::from_secs(20), |v| {
            v["items"].as_array().is_some_and(|a| a.iter().any(|t| t["name"] == "city" && check(t)))
        })
        .await;
    v["items"].as_array().and_then(|a| a.iter().find(|t| t["name"] == "city").cloned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_registers_to_an_upper_platform_with_digest_and_keeps_alive() {
    let port = free_port();
    let mut upper = Upper::start(port);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "12345678")).await;
    let t = city(&gw, |t| t["session"]["state"] == "registered" && !t["session"]["last_keepalive_at"].is_null()).await;
    assert_eq!((t["protocol"].as_str(), t["state"].as_str()), (Some("gb28181"), Some("registered")), "{t}");
    assert!(t["session"]["until"].is_string() && t["last_error"].is_null(), "{t}");
    let passed = upper.passed(Duration::from_secs(20)).await;
    assert!(passed, "SIPp, the upper platform, verified vigil's digest answer and its registration");
    gw.shutdown().await;
}

/// SIP over TCP: vigil connects to the upper and registers with digest on that connection
/// (SIPp verifies the answer) and keeps alive on it; when the upper goes away (SIPp ends after
/// those two calls) the connection's end is seen at once, not after Timer F, the state says
/// why, and vigil registers again, over a new connection, to the upper that comes back (one
/// that stays, so the state can be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_vigil_registers_keeps_alive_and_registers_again_after_the_connection_is_lost() {
    let port = free_port();
    let mut upper = Upper::play("upper_register.xml", port, &["-m", "2", "-t", "t1"]);
    let gw = TestGateway::start(Db::Sqlite, &upstream_over(port, "12345678", "tcp")).await;
    assert!(upper.passed(Duration::from_secs(30)).await, "SIPp verified the digest answer and the keepalive over TCP");
    let t = city(&gw, |t| t["session"]["state"] == "failing").await;
    assert!(!t["session"]["last_keepalive_at"].is_null(), "the keepalive's answer came back on the connection: {t}");
    let why = t["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.starts_with("TCP connection to the upper: "), "{t}");
    // An upper that stays (it grants the registration and queries the catalog until stopped).
    let _again = Upper::play("upper_catalog.xml", port, &["-t", "t1"]);
    let t = city(&gw, |t| t["session"]["state"] == "registered").await;
    assert!(t["session"]["failures"] == 0 && t["last_error"].is_null(), "{t}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_by_the_upper_and_shown_with_its_code() {
    let port = free_port();
    let _upper = Upper::start(port);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "wrong-password")).await;
    let t = city(&gw, |t| t["session"]["state"] == "failing").await;
    assert_eq!(t["state"], "failing", "{t}");
    assert!(t["last_error"].as_str().is_some_and(|e| e.contains("403")), "{t}");
    assert!(t["session"]["next_attempt_at"].is_string() && t["session"]["failures"] == 1, "{t}");
    gw.shutdown().await;
}

/// The upper queries the catalog: vigil answers 200 and sends the channels in its scope (here
/// cameras, not the checkpoint) in MESSAGEs of 8 items, each saying the whole (`SumNum`), with
/// ON for what presence says is online. Read from SIPp's own log of what came over the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upper_queries_the_catalog_and_gets_every_channel_in_paced_batches() {
    catalog_in_paced_batches("udp").await;
}

/// The same with SIP over TCP: vigil connects to the upper, registers on that connection, and
/// the upper's query comes back on it and is answered there, batch after batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_upper_queries_the_catalog_on_vigils_connection_and_gets_every_channel() {
    catalog_in_paced_batches("tcp").await;
}

async fn catalog_in_paced_batches(transport: &str) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("sipp-messages.log");
    let log_arg = log.to_string_lossy().to_string();
    let mut args = vec!["-trace_msg", "-message_file", &log_arg];
    if transport == "tcp" {
        args.extend(["-t", "t1"]);
    }
    let _upper = Upper::play("upper_catalog.xml", port, &args);
    let config = format!("{}scope_kinds = [\"camera\"]\n", upstream_over(port, "12345678", transport));
    let gw = TestGateway::start(Db::Sqlite, &config).await;
    let checkpoint = serde_json::json!({"id": "42010400001210000001", "name": "卡口", "kind": "vehicle_checkpoint", "protocol": "gat1400"});
    assert_eq!(gw.api.post("/devices", checkpoint).await.0, 201);
    // 19 cameras with GB/T 28181 ids; 5 of them alive.
    let ids: Vec<String> = (0..19).map(|n| format!("420104000013200{n:05}")).collect();
    for id in &ids {
        let (s, _) = gw
            .api
            .post("/devices", serde_json::json!({"id": id, "name": format!("东门 {id}"), "kind": "camera", "protocol": "rtsp", "rtsp_url": "rtsp://127.0.0.1:9/x"}))
            .await;
        assert_eq!(s, 201);
    }
    let alive: Vec<serde_json::Value> =
        ids.iter().take(5).map(|id| serde_json::json!({"device_id": id, "kind": "alive", "ttl": "120s"})).collect();
    assert_eq!(gw.api.post("/observations", serde_json::Value::Array(alive)).await.0, 202);
    city(&gw, |t| t["session"]["state"] == "registered").await;
    // The upper queries once a second (SN = its CSeq): the catalog may be answered before the
    // cameras above are all in. Wait for an answer given after they are (19 items, 5 ON);
    // then the whole of it: 3 MESSAGEs (8 + 8 + 3) answering its SN, each saying SumNum 19.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut items, mut sums, mut on) = (Vec::new(), Vec::new(), 0);
    loop {
        let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
        let field =
            |s: &str, open: &str| s.split(open).nth(1).and_then(|r| r.split('<').next()).unwrap_or("").to_owned();
        // Per query (SN): its MESSAGEs' SumNum, its items, its ON count.
        let mut answers: std::collections::BTreeMap<u64, (Vec<String>, Vec<String>, usize)> = Default::default();
        for body in text.split("<Response>").skip(1) {
            if !body.contains("<CmdType>Catalog</CmdType>") {
                continue;
            }
            let a = answers.entry(field(body, "<SN>").parse().unwrap_or(0)).or_default();
            a.0.push(field(body, "<SumNum>"));
            for item in body.split("<Item>").skip(1) {
                a.1.push(field(item, "<DeviceID>"));
                a.2 += usize::from(item.contains("<Status>ON</Status>"));
            }
        }
        let whole = answers.into_values().rev().find(|a| a.0.first().is_some_and(|n| n.parse() == Ok(a.1.len())));
        if let Some(a) = whole {
            (sums, items, on) = a;
        }
        if (items.len() == ids.len() && on == 5) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    items.sort();
    assert_eq!(items, ids, "every camera once");
    assert_eq!(sums, vec!["19".to_owned(); 3], "three MESSAGEs answering the query, each saying 19");
    assert_eq!(on, 5, "ON as presence says");
    gw.shutdown().await;
}

/// What vigil told the upper in NOTIFYs so far, from SIPp's message log: per NOTIFY, its
/// Call-ID and its (channel, event) items.
fn notifies(log: &std::path::Path) -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
    let field = |s: &str, open: &str| s.split(open).nth(1).and_then(|r| r.split('<').next()).unwrap_or("").to_owned();
    text.split("NOTIFY sip:")
        .skip(1)
        .filter_map(|m| {
            let end = m.find("</Notify>")?;
            let m = &m[..end];
            let call = m.split("Call-ID: ").nth(1)?.lines().next()?.trim().to_owned();
            let items = m.split("<Item>").skip(1).map(|i| (field(i, "<DeviceID>"), field(i, "<Event>"))).collect();
            Some((call, items))
        })
        .collect()
}

/// The upper subscribes to the catalog: vigil tells it every channel's status at once, then
/// each change as presence sees it — a camera coming online, going offline — in NOTIFYs in the
/// subscription's dialog, the last state of a flapping camera winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_upper_is_told_every_status_change_in_the_subscription_dialog() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("sipp-messages.log");
    let log_arg = log.to_string_lossy().to_string();
    let _upper = Upper::play("upper_subscribe.xml", port, &["-trace_msg", "-message_file", &log_arg]);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "12345678")).await;
    let ids: Vec<String> = (0..3).map(|n| format!("420104000013200{n:05}")).collect();
    for id in &ids {
        let body = serde_json::json!({"id": id, "name": id, "kind": "camera", "protocol": "rtsp", "rtsp_url": "rtsp://127.0.0.1:9/x"});
        assert_eq!(gw.api.post("/devices", body).await.0, 201);
    }
    city(&gw, |t| t["session"]["state"] == "registered").await;
    // Waits until the upper's view (the last event per channel, in order) is `want`.
    let view_is = |want: Vec<(&'static str, &'static str)>| {
        let log = log.clone();
        let ids = ids.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let mut view = std::collections::BTreeMap::new();
                let all = notifies(&log);
                for (_, items) in &all {
                    for (id, ev) in items {
                        view.insert(id.clone(), ev.clone());
                    }
                }
                let expected: std::collections::BTreeMap<String, String> =
                    ids.iter().zip(&want).map(|(id, (_, ev))| (id.clone(), (*ev).to_owned())).collect();
                if view == expected {
                    return all;
                }
                assert!(tokio::time::Instant::now() < deadline, "the upper's view {view:?}, wanted {expected:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // At once: all three OFF (nothing has said they are alive).
    let first = view_is(vec![("0", "OFF"), ("1", "OFF"), ("2", "OFF")]).await;
    let dialog = first[0].0.clone();
    // Camera 0 alive, camera 1 flaps alive then dead: the upper ends at ON, OFF, OFF.
    let obs = serde_json::json!([
        {"device_id": ids[0], "kind": "alive", "ttl": "120s"},
        {"device_id": ids[1], "kind": "alive", "ttl": "120s"},
    ]);
    assert_eq!(gw.api.post("/observations", obs).await.0, 202);
    view_is(vec![("0", "ON"), ("1", "ON"), ("2", "OFF")]).await;
    let obs = serde_json::json!([{"device_id": ids[1], "kind": "dead", "reason": "power cut"}]);
    assert_eq!(gw.api.post("/observations", obs).await.0, 202);
    let all = view_is(vec![("0", "ON"), ("1", "OFF"), ("2", "OFF")]).await;
    assert!(all.iter().all(|(call, _)| *call == dialog), "every NOTIFY in the subscription's dialog: {all:?}");
    gw.shutdown().await;
}

/// A device's alarm goes up: a GB/T 28181 camera registers with vigil and raises an alarm;
/// vigil stores it, and the outbox hands it to the upper as a `Notify/Alarm` MESSAGE under the
/// camera's id, in the district's local time; the upper's 200 marks it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_alarm_reaches_the_upper_as_notify_alarm_through_the_outbox() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("sipp-messages.log");
    let log_arg = log.to_string_lossy().to_string();
    let _upper = Upper::play("upper_catalog.xml", port, &["-trace_msg", "-message_file", &log_arg]);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "12345678")).await;
    let id = "42010400001320000077";
    let body = serde_json::json!({"id": id, "name": "韩家墩 IPC", "kind": "camera", "protocol": "gb28181"});
    assert_eq!(gw.api.post("/devices", body).await.0, 201);
    let mut dev = crate::gb28181::Device::new(id, gw.sip.expect("SIP")).await;
    assert!(dev.register(3600, "12345678").await.starts_with("SIP/2.0 200"));
    city(&gw, |t| t["session"]["state"] == "registered").await;
    let alarm_time = crate::support::device_local_time(Duration::from_secs(60));
    let alarm = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Alarm</CmdType>\r\n<SN>88</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<AlarmPriority>1</AlarmPriority>\r\n<AlarmMethod>5</AlarmMethod>\r\n<AlarmTime>{alarm_time}</AlarmTime>\r\n<AlarmDescription>区域入侵</AlarmDescription>\r\n<Info>\r\n<AlarmType>6</AlarmType>\r\n</Info>\r\n</Notify>\r\n");
    assert!(dev.send_manscdp("MESSAGE", "alarm-1", &alarm).await.starts_with("SIP/2.0 200"));
    let t = city(&gw, |t| t["delivered"].as_u64() == Some(1)).await;
    assert_eq!((t["backlog"].as_u64(), t["dead"].as_u64()), (Some(0), Some(0)), "{t}");
    let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
    let up = text.split("<Notify>").find(|n| n.contains("<CmdType>Alarm</CmdType>")).unwrap_or_default();
    assert!(up.contains(&format!("<DeviceID>{id}</DeviceID>")), "{up}");
    assert!(up.contains(&format!("<AlarmTime>{alarm_time}</AlarmTime>")), "the device's own time, as it said it: {up}");
    assert!(up.contains("<AlarmPriority>1</AlarmPriority>") && up.contains("<AlarmType>6</AlarmType>"), "{up}");
    gw.shutdown().await;
}

/// The org tree as business groups: the upper's catalog query is answered with the district as
/// a business group (type 215), the street under it as a virtual organisation (216), and each
/// camera under the street's node with the group named — ids vigil gave the orgs; read from
/// SIPp's message log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upper_sees_the_orgs_as_a_business_group_and_virtual_organisations() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("sipp-messages.log");
    let log_arg = log.to_string_lossy().to_string();
    let _upper = Upper::play("upper_catalog.xml", port, &["-trace_msg", "-message_file", &log_arg]);
    let config = format!("{}catalog_tree = \"groups\"\n", upstream(port, "12345678"));
    let gw = TestGateway::start(Db::Sqlite, &config).await;
    let orgs = [
        serde_json::json!({"id": "qk", "name": "硚口区", "kind": "district", "gb_prefix": "420104"}),
        serde_json::json!({"id": "qk-east", "name": "东街道", "kind": "street", "parent_id": "qk"}),
    ];
    for o in orgs {
        assert_eq!(gw.api.post("/orgs", o).await.0, 201);
    }
    let cams = ["42010400001320000201", "42010400001320000202"];
    for id in cams {
        let body = serde_json::json!({"id": id, "name": "东门", "kind": "camera", "protocol": "external", "org_id": "qk-east"});
        assert_eq!(gw.api.post("/devices", body).await.0, 201);
    }
    // The last whole answer naming both cameras: its items in order.
    let field = |s: &str, open: &str| s.split(open).nth(1).and_then(|r| r.split('<').next()).unwrap_or("").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let items: Vec<String> = loop {
        let text = std::fs::read(&log).map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
        let last = text
            .split("<Response>")
            .filter(|b| b.contains("<CmdType>Catalog</CmdType>") && b.contains("<SumNum>4</SumNum>"))
            .last()
            .map(str::to_owned);
        if let Some(body) = last.filter(|b| cams.iter().all(|c| b.contains(c))) {
            break body.split("<Item>").skip(1).map(str::to_owned).collect();
        }
        assert!(tokio::time::Instant::now() < deadline, "no catalog answer with the tree and both cameras");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(items.len(), 4, "{items:?}");
    let (group, org) = (field(&items[0], "<DeviceID>"), field(&items[1], "<DeviceID>"));
    assert_eq!((&group[..8], &group[10..13]), ("42010400", "215"), "the district as a business group: {group}");
    assert_eq!((&org[..8], &org[10..13]), ("42010400", "216"), "the street as a virtual organisation: {org}");
    assert_eq!(field(&items[0], "<ParentID>"), LOWER, "the group under vigil");
    assert_eq!((field(&items[1], "<ParentID>"), field(&items[1], "<BusinessGroupID>")), (group.clone(), group.clone()));
    for item in &items[2..] {
        assert!(cams.contains(&field(item, "<DeviceID>").as_str()), "{item}");
        assert_eq!(
            (field(item, "<ParentID>"), field(item, "<BusinessGroupID>")),
            (org.clone(), group.clone()),
            "{item}"
        );
    }
    gw.shutdown().await;
}
