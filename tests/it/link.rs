//! The QUIC link between tiers: a community gateway relays what its checkpoint pushes to two
//! upstreams at once — the district's view library by GA/T 1400, and a district hub (another
//! vigil, as a child process) over QUIC with mutual TLS, which forwards to the city's view
//! library by GA/T 1400. The hub is killed with -9 mid-stream and restarted: the lower
//! gateway sends again, the hub drops what it already had by event id, and both platforms
//! end with every face once, under the same ids. The hub sees the lower gateway as a device
//! that is online while the link is up and offline when it closes.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use vigil::sinks::gat1400::client::{Client, Collection, Outcome};

use crate::support::free_port;
use crate::support::gateway::{config_toml_as, Db, Process, TestGateway};
use crate::support::platform::Platform;

const LOWER: &str = "42010400002000000101";
const HUB: &str = "42010400002000000100";
const CAM: &str = "42010200001190000009";

fn face(n: u32) -> Value {
    use base64::Engine;
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).format("%Y%m%d%H%M%S").to_string();
    let jpeg: Vec<u8> = [0xFF, 0xD8, 0xFF]
        .into_iter()
        .chain((0..3000u32).map(|i| (i as u8).wrapping_mul(13).wrapping_add(n as u8)))
        .collect();
    serde_json::json!({
        "FaceID": format!("{CAM}02{now}{n:05}06{n:05}"),
        "InfoKind": 1, "DeviceID": CAM, "FaceAppearTime": now,
        "SubImageList": {"SubImageInfoObject": [
            {"ImageID": "1", "Type": "11", "FileFormat": "Jpeg", "ShotTime": now, "Data": base64::engine::general_purpose::STANDARD.encode(&jpeg)}
        ]}
    })
}

async fn until(p: &Platform, what: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = p.stats().await;
        if check(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not reach the expected state: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(s: &Value) -> HashSet<String> {
    s["order"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upstreams_one_through_a_quic_hub_get_every_face_once_across_a_hub_kill() {
    const BATCHES: u32 = 15;
    const PER: u32 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    vigil::link::tls::issue(&certs, &[LOWER.into(), HUB.into()], &["127.0.0.1".into()]).expect("certificates");
    let quic = |id: &str, listen: &str| {
        format!(
            "[quic]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            certs.join(format!("{id}.pem")).display(),
            certs.join(format!("{id}.key")).display(),
            certs.join("ca.pem").display()
        )
    };
    let district = Platform::start(free_port(), "district-secret");
    let city = Platform::start(free_port(), "city-secret");

    // The district hub: a vigil process taking links on a fixed port, forwarding to the city.
    let (hub_http, hub_quic) = (free_port(), free_port());
    let hub_cfg = dir.path().join("hub.toml");
    let hub_extra = format!(
        "{}\n[[upstreams]]\nname = \"city\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{HUB}\"\npassword = \"city-secret\"\n\
         events = [\"face_capture\"]\n",
        quic(HUB, &format!("127.0.0.1:{hub_quic}")),
        city.base
    );
    std::fs::write(&hub_cfg, config_toml_as(Some(HUB), &dir.path().join("hub-data"), None, hub_http, &hub_extra))
        .expect("hub config");
    let hub_log = dir.path().join("hub.log");
    let mut hub = Process::start(&hub_cfg, hub_http, &hub_log).await;

    // The community gateway: a checkpoint pushes into it; it relays to both.
    let lower_extra = format!(
        "{}\n[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\n\
         [[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{LOWER}\"\npassword = \"district-secret\"\n\
         events = [\"face_capture\"]\n\n\
         [[upstreams]]\nname = \"hub\"\nprotocol = \"quic\"\nurl = \"quic://127.0.0.1:{hub_quic}\"\nevents = [\"face_capture\"]\n",
        quic(LOWER, ""),
        district.base
    );
    let lower = TestGateway::start_as(Db::Sqlite, LOWER, &lower_extra).await;
    let checkpoint =
        Client::new(&format!("http://{}/VIID", lower.gat1400.expect("ingress")), CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("the checkpoint registers");

    // The hub knows the lower gateway as a device, online while linked.
    let d = hub
        .api
        .wait_for(&format!("/devices/{LOWER}"), Duration::from_secs(15), |d| d["presence"]["state"] == "online")
        .await;
    assert_eq!((d["protocol"].as_str(), d["kind"].as_str()), (Some("quic"), Some("platform")), "{d}");

    let mut sent = HashSet::new();
    for b in 0..BATCHES {
        let faces: Vec<Value> = (b * PER + 1..=(b + 1) * PER).map(face).collect();
        let out = checkpoint.push(Collection::Faces, faces.clone()).await.expect("the lower gateway takes faces");
        assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
        sent.extend(faces.iter().filter_map(|f| f["FaceID"].as_str().map(str::to_owned)));
        if b == 4 {
            // Once the city has some, the hub dies mid-stream and comes back.
            until(&city, "the city", Duration::from_secs(30), |s| s["unique"].as_u64() >= Some(20)).await;
            hub.kill9();
            let t = lower
                .api
                .wait_for("/relay/targets", Duration::from_secs(45), |v| {
                    v["items"].as_array().into_iter().flatten().any(|t| t["name"] == "hub" && t["state"] == "failing")
                })
                .await;
            assert!(t.to_string().contains("hub"), "{t}");
            hub = Process::start(&hub_cfg, hub_http, &hub_log).await;
        }
    }
    let total = (BATCHES * PER) as u64;
    let d = until(&district, "the district", Duration::from_secs(60), |s| s["unique"].as_u64() == Some(total)).await;
    let c = until(&city, "the city", Duration::from_secs(90), |s| s["unique"].as_u64() == Some(total)).await;
    assert_eq!(ids(&d), sent, "the district has every face, under the checkpoint's ids");
    assert_eq!(ids(&c), sent, "the city has the same faces, under the same ids, through the hub");

    // Nothing doubled in the hub's outbox: each face is one event there.
    let events = hub.api.get(&format!("/events?kind=face_capture&device={CAM}&limit=1000")).await.1;
    let n = events["items"].as_array().map(Vec::len).unwrap_or_default();
    assert_eq!(n as u64, total, "one event per face at the hub");
    // Pictures crossed the link: the hub serves the image an event refers to.
    let hash = events["items"][0]["media"][0]["hash"].as_str().expect("a picture").to_owned();
    let (status, _, bytes) = hub.api.get_bytes(&format!("/images/{hash}")).await;
    assert_eq!((status, vigil::protocol::digest::sha256_hex(&bytes)), (200, hash));

    let t = lower.api.wait_for("/relay/targets", Duration::from_secs(10), |v| {
        v["items"].as_array().is_some_and(|a| a.iter().all(|t| t["backlog"] == 0 && t["state"] == "connected"))
    });
    let t = t.await;
    assert_eq!(t["items"].as_array().map(Vec::len), Some(2), "{t}");

    // The lower gateway stops: the hub marks it offline with the reason.
    lower.shutdown().await;
    let d = hub
        .api
        .wait_for(&format!("/devices/{LOWER}"), Duration::from_secs(40), |d| d["presence"]["state"] == "offline")
        .await;
    eprintln!("lower gateway on the hub after it stopped: {}", d["presence"]);
    drop(hub);
}
