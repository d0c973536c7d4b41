//! Community devices over MQTT, against real Mosquitto: a device's messages become events
//! (mapped by the generic JSON profile), duplicates are stored once, malformed payloads are
//! refused and kept, a 2 MiB image passes, last wills make devices offline, unknown devices
//! wait in quarantine with the profile suggested; vigil killed mid-burst loses nothing and
//! doubles nothing; a broker restart is ridden out; the embedded broker takes mosquitto_pub.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::gateway::{config_toml, Client, Db, Process, TestGateway};
use crate::support::mqtt::{prefix, profile_with_prefix, Mosquitto, Publisher, BROKER_PORT};
use crate::support::{free_port, require_command};

fn mqtt_section(port: u16, client_id: &str, profiles: &std::path::Path) -> String {
    format!(
        "[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\nprofiles_dir = {:?}\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n",
        profiles.display().to_string()
    )
}

/// Device time a minute ago, one millisecond per sequence number.
fn ts(seq: i64) -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| chrono::Utc::now().timestamp_millis() - 60_000) + seq
}

fn access(seq: i64) -> Value {
    json!({"ts": ts(seq), "seq": seq, "credential": "card", "card": "0695915616", "person": "R7", "door": "east", "direction": "in"})
}

/// The metrics once vigil has counted at least two failed connections to the broker (one
/// refusal and the retry after it), within 20 s.
async fn refused_twice(api: &Client) -> String {
    api.wait_for_metrics(Duration::from_secs(20), |m| {
        m.lines().any(|l| {
            l.starts_with("vigil_mqtt_connection_errors_total")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 2.0)
        })
    })
    .await
}

/// Publishes heartbeats until vigil has subscribed and knows the device.
async fn until_device(api: &Client, publisher: &Publisher, topic_base: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        publisher
            .publish(
                &format!("{topic_base}/heartbeat"),
                json!({"ts": 0, "model": "vigil-sim-acs", "fw": "1.0"}).to_string(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (s, d) = api.get(&format!("/devices/{id}")).await;
        if s == 200 {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "vigil never saw {id} through the broker");
    }
}

async fn events_of(api: &Client, device: &str) -> Vec<Value> {
    let (s, v) = api.get(&format!("/events?device={device}&limit=1000")).await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_messages_become_events_once_with_images_rejections_and_last_wills() {
    let p = prefix();
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let extra = format!(
        "{}\n[admission]\npolicy = \"open\"\n",
        mqtt_section(BROKER_PORT, &format!("vigil-{p}"), profiles.path())
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let publisher = Publisher::connect(BROKER_PORT, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/XQ001/AC-1");

    let dev = until_device(&gw.api, &publisher, &base, "AC-1").await;
    assert_eq!(dev["protocol"], "mqtt");
    assert_eq!(dev["profile"], "generic.json", "{dev}");
    assert_eq!(dev["admission"], "approved");
    assert_eq!(dev["attrs"]["model"], "vigil-sim-acs");

    // An access record with an inline image.
    let mut first = access(1);
    first["image"] = json!("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJ");
    publisher.publish(&format!("{base}/access"), first.to_string()).await;
    let v = gw
        .api
        .wait_for("/events?device=AC-1", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let e = &v["items"][0];
    assert_eq!(e["kind"], "access");
    assert_eq!(e["source"], "mqtt");
    assert_eq!(e["profile"], "generic.json@1");
    assert_eq!(e["seq"], 1);
    assert_eq!(e["time_source"], "device");
    assert_eq!(e["body"]["result"], "granted");
    assert_eq!(e["body"]["door"]["id"], "east");
    assert!(
        e["body"]["credential"]["value"].as_str().is_some_and(|s| s.starts_with("sha256:")),
        "card numbers leave only hashed: {e}"
    );
    let hash = e["media"][0]["hash"].as_str().expect("image stored").to_owned();
    let (s, ct, bytes) = gw.api.get_bytes(&format!("/images/{hash}")).await;
    assert_eq!((s, ct.as_str(), bytes.len()), (200, "image/jpeg", 36));

    // The same record again (a redelivery), a malformed payload, then the next record: the
    // duplicate is stored once, the malformed one is refused and kept, vigil goes on.
    publisher.publish(&format!("{base}/access"), first.to_string()).await;
    publisher.publish(&format!("{base}/access"), r#"{"ts": 1716001203000, "seq": "#).await;
    publisher.publish(&format!("{base}/access"), access(2).to_string()).await;
    gw.api
        .wait_for("/events?device=AC-1", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    // The redelivery has been judged a duplicate (counted) before the events are read.
    gw.api
        .wait_for_metrics(Duration::from_secs(10), |m| {
            m.lines().any(|l| {
                l.starts_with("vigil_profile_records_total{")
                    && l.contains("outcome=\"duplicate\"")
                    && l.ends_with(" 1")
            })
        })
        .await;
    let seqs: Vec<i64> = events_of(&gw.api, "AC-1").await.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, vec![2, 1], "newest first, the duplicate stored once");
    let (_, rej) = gw.api.get("/rejections?source=mqtt&reason=bad_json").await;
    let r = &rej["items"][0];
    assert!(r["raw"].as_str().is_some_and(|s| s.contains("\"seq\": ")), "raw payload kept: {rej}");
    assert!(r["detail"].as_str().is_some_and(|s| s.contains("generic.json@1")), "{rej}");

    // A 2 MiB image passes (vigil's packet limit is 8 MiB by default).
    let big: Vec<u8> =
        [0xFF, 0xD8, 0xFF].into_iter().chain((0..2 * 1024 * 1024 - 3).map(|i| (i % 251) as u8)).collect();
    use base64::Engine;
    let vehicle = json!({"ts": ts(3), "seq": 3, "plate": "鄂A12345", "image": base64::engine::general_purpose::STANDARD.encode(&big)});
    publisher.publish(&format!("{base}/vehicle"), vehicle.to_string()).await;
    let v = gw
        .api
        .wait_for("/events?device=AC-1&kind=vehicle_pass", Duration::from_secs(15), |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let m = &v["items"][0]["media"][0];
    assert_eq!(m["bytes"], 2 * 1024 * 1024);
    let (s, _, bytes) = gw.api.get_bytes(&format!("/images/{}", m["hash"].as_str().expect("hash"))).await;
    assert_eq!(s, 200);
    assert!(bytes == big, "the 2 MiB image comes back byte for byte");

    // Seq 3 → 10: six records missing, counted for the device and its profile.
    publisher.publish(&format!("{base}/access"), access(10).to_string()).await;
    gw.api.wait_for("/devices/AC-1", Duration::from_secs(10), |d| d["attrs"]["seq_gaps"] == 6).await;
    assert!(gw.api.metrics().await.contains(r#"vigil_event_sequence_gaps{profile="generic.json@1"} 6"#));

    // Online from its messages; the last will makes it offline with that reason.
    let d = gw.api.get("/devices/AC-1").await.1;
    assert_eq!(d["presence"]["state"], "online", "{d}");
    publisher.publish(&format!("{base}/status"), "offline").await;
    let d = gw.api.wait_for("/devices/AC-1", Duration::from_secs(10), |d| d["presence"]["state"] == "offline").await;
    assert_eq!(d["presence"]["reason"], "last_will");
    // Its "online" announcement brings it back.
    publisher.publish(&format!("{base}/status"), "online").await;
    let d = gw.api.wait_for("/devices/AC-1", Duration::from_secs(10), |d| d["presence"]["state"] == "online").await;
    assert_eq!(d["presence"]["reason"], "heartbeat");
    let metrics = gw.api.metrics().await;
    assert!(metrics.contains("vigil_mqtt_connected 1"), "{metrics}");
    assert!(
        metrics.contains(r#"vigil_profile_records_total{outcome="duplicate",profile="generic.json@1"} 1"#),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_waits_in_quarantine_with_its_profile_suggested_until_approved() {
    let p = prefix();
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let extra = format!(
        "{}\n[[orgs]]\nid = \"xq009\"\nname = \"幸福小区\"\nkind = \"community\"\n",
        mqtt_section(BROKER_PORT, &format!("vigil-{p}"), profiles.path())
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let publisher = Publisher::connect(BROKER_PORT, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/xq009/BR-9");

    let dev = until_device(&gw.api, &publisher, &base, "BR-9").await;
    assert_eq!(dev["admission"], "quarantined");
    assert_eq!(dev["profile"], "generic.json", "the matched profile is the suggestion");
    assert_eq!(dev["org_id"], "xq009", "placed by the site in its topic");
    assert_eq!(dev["kind"], "other");
    publisher.publish(&format!("{base}/vehicle"), json!({"ts": ts(1), "seq": 1, "plate": "鄂A1"}).to_string()).await;
    gw.api
        .wait_for("/rejections?source=mqtt&reason=quarantined", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert!(events_of(&gw.api, "BR-9").await.is_empty(), "nothing stored from a quarantined device");
    // Dead letters are kept in the database: still listed after a restart.
    let mut gw = gw;
    gw.restart().await;
    let (_, rej) = gw.api.get("/rejections?source=mqtt&reason=quarantined").await;
    assert!(
        rej["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["raw"].as_str().is_some_and(|t| t.contains("鄂A1")))),
        "{rej}"
    );
    // The rate snapshot is rebuilt within `tuning.rate_refresh` of the restart.
    let before = gw.api.wait_for("/online-rate?org=xq009", Duration::from_secs(5), |v| v["total"].is_u64()).await;
    assert_eq!(before["total"], 0, "{before}");

    let (s, d) = gw.api.send(reqwest::Method::PATCH, "/devices/BR-9", json!({"admission": "approved"})).await;
    assert_eq!(s, 200, "{d}");
    publisher.publish(&format!("{base}/vehicle"), json!({"ts": ts(2), "seq": 2, "plate": "鄂A2"}).to_string()).await;
    let v = gw
        .api
        .wait_for("/events?device=BR-9", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(v["items"][0]["body"]["plate"], "鄂A2");
    assert_eq!(v["items"][0]["org_id"], "xq009");
    gw.api.wait_for("/online-rate?org=xq009", Duration::from_secs(10), |r| r["total"] == 1 && r["online"] == 1).await;
    gw.shutdown().await;
}

/// The whole binary, killed with -9 twice in the middle of a burst: every record the broker
/// took is committed exactly once in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing_and_doubles_nothing() {
    const N: i64 = 3000;
    let p = prefix();
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).expect("mkdir");
    profile_with_prefix(&profiles, "generic-json.toml", &p);
    // A private broker: the CI one may keep only Mosquitto's default 1,000 queued messages per
    // session while vigil is down (and drop the rest silently, mosquitto #1593).
    let broker = Mosquitto::start(free_port()).await;
    let port = free_port();
    let cfg = dir.path().join("vigil.toml");
    let extra =
        format!("{}\n[admission]\npolicy = \"open\"\n", mqtt_section(broker.port, &format!("vigil-{p}"), &profiles));
    std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, port, &extra)).expect("config");
    let log = dir.path().join("vigil.log");
    let mut vigil = Process::start(&cfg, port, &log).await;
    let publisher = Publisher::connect(broker.port, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/XQ001/KL-1");
    until_device(&vigil.api, &publisher, &base, "KL-1").await;
    // Every heartbeat sent so far is acknowledged by the broker: the count below is the burst's.
    publisher.wait_acked(publisher.published(), Duration::from_secs(10)).await;
    let acked_before = publisher.acked();

    let stored = |text: &str| -> i64 {
        text.lines()
            .find(|l| l.starts_with("vigil_events_total{kind=\"access\",source=\"mqtt\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let publishing = {
        let client = publisher.client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            for seq in 1..=N {
                client
                    .publish(format!("{base}/access"), rumqttc::QoS::AtLeastOnce, false, access(seq).to_string())
                    .await
                    .expect("publish");
            }
        })
    };
    // Kill once some records of the burst are committed (the counter restarts with each
    // process, so the second kill waits for this process's own commits; if the burst is over
    // by then, the kill still comes, just after the last record).
    for kill_at in [300, 200] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stored(&vigil.api.metrics().await) < kill_at && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vigil.kill9();
        vigil = Process::start(&cfg, port, &log).await;
    }
    publishing.await.expect("publisher");
    publisher.wait_acked(acked_before + N as usize, Duration::from_secs(60)).await;

    // Everything the broker took arrives, each record once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let seqs = loop {
        let mut seqs = BTreeSet::new();
        let mut total = 0;
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/events?device=KL-1&kind=access&limit=1000&cursor={c}"),
                None => "/events?device=KL-1&kind=access&limit=1000".to_owned(),
            };
            let (s, v) = vigil.api.get(&path).await;
            assert_eq!(s, 200, "{v}");
            for e in v["items"].as_array().into_iter().flatten() {
                total += 1;
                seqs.insert(e["seq"].as_i64().expect("seq"));
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(total, seqs.len(), "a record was stored twice");
        if seqs.len() as i64 == N || tokio::time::Instant::now() > deadline {
            break seqs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let missing: Vec<i64> = (1..=N).filter(|s| !seqs.contains(s)).take(10).collect();
    assert!(missing.is_empty(), "{} of {N} records stored; first missing: {missing:?}", seqs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_ridden_out_with_backoff() {
    let p = prefix();
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let port = free_port();
    let mut broker = Mosquitto::start(port).await;
    let extra =
        format!("{}\n[admission]\npolicy = \"open\"\n", mqtt_section(port, &format!("vigil-{p}"), profiles.path()));
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let publisher = Publisher::connect(port, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/XQ001/RS-1");
    until_device(&gw.api, &publisher, &base, "RS-1").await;
    publisher
        .publish(
            &format!("{base}/alarm"),
            json!({"ts": ts(1), "seq": 1, "category": "smoke", "state": "start"}).to_string(),
        )
        .await;
    gw.api
        .wait_for("/events?device=RS-1", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;

    broker.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gw.api.metrics().await.contains("vigil_mqtt_connected 0") {
        assert!(tokio::time::Instant::now() < deadline, "vigil did not notice the broker going away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // vigil keeps trying while the broker is away: two failed reconnects, then it comes back.
    let errors = |m: &str| crate::support::metric(m, "vigil_mqtt_connection_errors_total");
    let lost = errors(&gw.api.metrics().await);
    gw.api.wait_for_metrics(Duration::from_secs(10), |m| errors(m) >= lost + 2.0).await;
    let _broker = Mosquitto::start(port).await;
    // The restarted broker kept nothing: vigil subscribes again on its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        publisher
            .publish(
                &format!("{base}/alarm"),
                json!({"ts": ts(2), "seq": 2, "category": "smoke", "state": "stop"}).to_string(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if events_of(&gw.api, "RS-1").await.len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no event after the broker came back");
    }
    assert!(gw.api.metrics().await.contains("vigil_mqtt_connected 1"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_takes_mosquitto_pub() {
    let mosquitto_pub = require_command("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, mqtt) = (free_port(), free_port());
    let cfg = dir.path().join("vigil.toml");
    let extra = format!("[mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\nclient_id = \"vigil-embedded\"\n[admission]\npolicy = \"open\"\n");
    std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, http, &extra)).expect("config");
    let vigil = Process::start(&cfg, http, &dir.path().join("vigil.log")).await;
    let at = crate::support::device_local_time(Duration::from_secs(60));
    let alarm = json!({"dateTime": format!("{at}+08:00"), "eventType": "cidEvent", "uuid": "u-1",
                       "CIDEvent": {"code": 1111, "zone": 4, "name": "烟感报警"}})
    .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The panel logs in as itself (its id, the default device password).
        let out = std::process::Command::new(&mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-q", "1", "-t", "alarm/XQ001/AXPRO-0099/event"])
            .args(["-i", "panel-99", "-u", "AXPRO-0099", "-P", "12345678", "-m"])
            .arg(&alarm)
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let items = events_of(&vigil.api, "AXPRO-0099").await;
        if let Some(e) = items.first() {
            assert_eq!(items.len(), 1, "the same uuid is one alarm: {items:?}");
            assert_eq!(e["body"]["category"], "smoke");
            assert_eq!(e["profile"], "hikvision.alarm-panel@1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no event through the embedded broker");
    }
}

/// A burst far larger than vigil's pipeline (16 in flight): vigil keeps acknowledging while
/// its channel is full and takes everything (a poll task that waited on the worker stopped
/// the acks and deadlocked here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pipeline_flows_through() {
    const N: i64 = 5000;
    let p = prefix();
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let broker = Mosquitto::start(free_port()).await;
    let extra = format!(
        "{}inflight = 16\n[admission]\npolicy = \"open\"\n",
        mqtt_section(broker.port, &format!("vigil-{p}"), profiles.path())
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let publisher = Publisher::connect(broker.port, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/XQ001/BB-1");
    until_device(&gw.api, &publisher, &base, "BB-1").await;
    for seq in 1..=N {
        publisher.publish(&format!("{base}/access"), access(seq).to_string()).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = gw.api.metrics().await;
        if m.contains(&format!("vigil_events_total{{kind=\"access\",source=\"mqtt\"}} {N}")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all {N} committed: {}",
            m.lines()
                .filter(|l| l.starts_with("vigil_events_total") || l.starts_with("vigil_mqtt_inflight"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
}

/// `mqtt.shared_group`: vigil subscribes as `$share/<group>/...` (how instances split the
/// load) and Mosquitto delivers to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_receives_the_devices_messages() {
    let p = prefix();
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let extra = format!(
        "{}shared_group = \"vigil-{p}\"\n[admission]\npolicy = \"open\"\n",
        mqtt_section(BROKER_PORT, &format!("vigil-{p}"), profiles.path())
    );
    let gw = TestGateway::start(Db::Sqlite, &extra).await;
    let publisher = Publisher::connect(BROKER_PORT, &format!("dev-{p}")).await;
    let base = format!("{p}/vigil/XQ001/SH-1");
    until_device(&gw.api, &publisher, &base, "SH-1").await;
    publisher.publish(&format!("{base}/access"), access(1).to_string()).await;
    gw.api
        .wait_for("/events?device=SH-1", Duration::from_secs(10), |v| {
            v["items"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    gw.shutdown().await;
}

/// `mqtts://` to an external broker: the TLS handshake is made with the process's one TLS
/// provider. (Until 2026-12-06 two providers were linked, rumqttc's default and vigil's ring,
/// and rustls would not pick one: the gateway panicked at start.) A broker whose certificate
/// the system's roots do not vouch for (here a self-signed one, served by rustls in the test) is
/// refused with the reason, counted, and tried again; the gateway runs on and stays
/// disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_broker_whose_certificate_is_not_trusted_is_refused_counted_and_retried() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (hellos, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, r) = (hellos.clone(), refused.clone());
    let broker = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            if acceptor.accept(stream).await.is_err() {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let config = format!(
        "[mqtt]\nmode = \"external\"\nurl = \"mqtts://127.0.0.1:{port}\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n"
    );
    let gw = TestGateway::start(Db::Sqlite, &config).await;
    let m = refused_twice(&gw.api).await;
    assert!(m.lines().any(|l| l == "vigil_mqtt_connected 0"), "{m}");
    assert!(hellos.load(Ordering::SeqCst) >= 2, "vigil came back to the broker");
    assert!(refused.load(Ordering::SeqCst) >= 2, "each handshake refused (by vigil: the certificate)");
    assert_eq!(gw.api.get("/health").await.0, 200, "the gateway runs on");
    broker.abort();
    gw.shutdown().await;
}

/// `mqtts://` to a broker of the district's own CA that requires a client certificate, a real
/// Mosquitto (`require_certificate true`): vigil checks the broker against `mqtt.ca`, shows
/// its own certificate (`mqtt.cert`, `mqtt.key`), subscribes, and commits a record a device
/// sent over TLS. Without its certificate the same broker refuses vigil: counted, tried again,
/// never connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_broker_of_the_districts_ca_that_requires_a_client_certificate_delivers_records() {
    let mosquitto_pub = require_command("mosquitto_pub");
    let p = prefix();
    let certs = tempfile::tempdir().expect("tempdir");
    let ids = ["broker".to_owned(), "vigil-1".to_owned(), "device".to_owned()];
    vigil::link::tls::issue(certs.path(), &ids, &["127.0.0.1".to_owned()]).expect("certificates");
    let file = |n: &str| certs.path().join(n).display().to_string();
    // Mosquitto started as root reads its key as the `mosquitto` user it becomes.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(file("broker.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let broker = Mosquitto::start_with(
        free_port(),
        &format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            file("ca.pem"),
            file("broker.pem"),
            file("broker.key")
        ),
    )
    .await;
    let profiles = tempfile::tempdir().expect("tempdir");
    profile_with_prefix(profiles.path(), "generic-json.toml", &p);
    let mqtt = mqtt_section(broker.port, &format!("vigil-{p}"), profiles.path()).replace("mqtt://", "mqtts://");
    let with_cert = format!(
        "{mqtt}ca = {:?}\ncert = {:?}\nkey = {:?}\n[admission]\npolicy = \"open\"\n",
        file("ca.pem"),
        file("vigil-1.pem"),
        file("vigil-1.key")
    );
    let gw = TestGateway::start(Db::Sqlite, &with_cert).await;
    gw.api.wait_for_metrics(Duration::from_secs(20), |m| m.lines().any(|l| l == "vigil_mqtt_connected 1")).await;
    let topic = format!("{p}/vigil/XQ001/TLS-1/access");
    let record = access(1).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The device shows a certificate of the same CA. `--insecure` only skips its check of
        // the broker's host name: the device is the load here, vigil is under test.
        let out = std::process::Command::new(&mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-t", &topic, "-m", &record])
            .args(["--cafile", &file("ca.pem"), "--cert", &file("device.pem"), "--key", &file("device.key")])
            .arg("--insecure")
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let items = events_of(&gw.api, "TLS-1").await;
        if !items.is_empty() {
            assert_eq!(items.len(), 1, "the same record sent again is one event: {items:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no event through the TLS broker");
    }
    gw.shutdown().await;

    // The same broker, vigil without its certificate: the handshake is refused.
    let without_cert = format!("{mqtt}ca = {:?}\n", file("ca.pem"));
    let gw = TestGateway::start(Db::Sqlite, &without_cert).await;
    let m = refused_twice(&gw.api).await;
    assert!(m.lines().any(|l| l == "vigil_mqtt_connected 0"), "{m}");
    gw.shutdown().await;
}
