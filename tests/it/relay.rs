//! The relay's upstream protocol against an upper view library (`vigil-sim platform`): the
//! GA/T 1400 client registers with digest, keeps alive, pushes lists and reads the answer per
//! object, tells a refusal of the object from a failure worth retrying, and registers again
//! when the platform has forgotten it (restarted).

use serde_json::{json, Value};
use vigil::sinks::gat1400::client::{Client, Collection, Error, Outcome};

use crate::support::free_port;
use crate::support::platform::Platform;

const GATEWAY: &str = "42010400005030000001";

fn face(n: u32) -> Value {
    // 48 digits: device (20) + "02" + time (14) + serial (5) + "06" (face) + serial (5).
    json!({"FaceID": format!("{GATEWAY}0220261127100000{n:05}06{n:05}"), "InfoKind": 1, "DeviceID": "42010400001190000001"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gat1400_client_registers_pushes_and_reads_each_object() {
    let port = free_port();
    let platform = Platform::start(port, "s3cret");
    let wrong = Client::new(&platform.base, GATEWAY, "wrong").expect("client");
    assert!(matches!(wrong.register().await, Err(Error::Unauthorized(_))), "a wrong password is a 401");
    let client = Client::new(&platform.base, GATEWAY, "s3cret").expect("client");
    // Not registered yet: the platform says so, and that is worth registering for.
    let e = client.push(Collection::Faces, vec![face(1)]).await.expect_err("not registered");
    assert!(matches!(e, Error::Unauthorized(_)) && e.retryable(), "{e}");
    client.register().await.expect("digest registration");
    client.keepalive().await.expect("keepalive");

    // Three faces, one of which the platform refuses: answered per object, in order.
    let bad = face(2);
    platform.control(json!({"reject": [bad["FaceID"]]})).await;
    let outcomes = client.push(Collection::Faces, vec![face(1), bad, face(3)]).await.expect("push");
    assert_eq!(outcomes[0], Outcome::Delivered);
    assert!(matches!(&outcomes[1], Outcome::Rejected(t) if t.contains("StatusCode 8")), "{outcomes:?}");
    assert_eq!(outcomes[2], Outcome::Delivered);
    // The same face again is accepted, and the platform can tell it is a duplicate.
    assert_eq!(client.push(Collection::Faces, vec![face(1)]).await.expect("push"), vec![Outcome::Delivered]);
    let s = platform.stats().await;
    assert_eq!(
        (s["unique"].as_u64(), s["duplicates"].as_u64(), s["rejected"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{s}"
    );

    // A platform that refuses (503) or fails (500) is worth trying again.
    platform.control(json!({"mode": "refuse"})).await;
    let e = client.push(Collection::Faces, vec![face(4)]).await.expect_err("refused");
    assert!(matches!(e, Error::Status { status: 503, .. }) && e.retryable(), "{e}");
    platform.control(json!({"mode": "error500"})).await;
    assert!(client.push(Collection::Faces, vec![face(4)]).await.expect_err("500").retryable());
    platform.control(json!({"mode": "ok"})).await;

    // Restarted, it has forgotten us: keepalive is a 401, and registering again mends it.
    drop(platform);
    let e = client.keepalive().await.expect_err("platform down");
    assert!(matches!(e, Error::Transport(_)) && e.retryable(), "{e}");
    let platform = Platform::start(port, "s3cret");
    assert!(matches!(client.keepalive().await, Err(Error::Unauthorized(_))));
    client.register().await.expect("registers again");
    assert_eq!(client.push(Collection::Faces, vec![face(5)]).await.expect("push"), vec![Outcome::Delivered]);
    assert_eq!(platform.stats().await["unique"], 1);
}

/// A checkpoint face: our GA/T 1400 client plays the checkpoint pushing into vigil.
fn checkpoint_face(n: u32) -> Value {
    use base64::Engine;
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).format("%Y%m%d%H%M%S").to_string();
    let jpeg: Vec<u8> = [0xFF, 0xD8, 0xFF]
        .into_iter()
        .chain((0..2000u32).map(|i| (i as u8).wrapping_mul(7).wrapping_add(n as u8)))
        .collect();
    json!({
        "FaceID": format!("{CAM}02{now}{:05}06{:05}", n % 100_000, n / 100_000 % 100_000),
        "InfoKind": 1, "DeviceID": CAM, "FaceAppearTime": now,
        "SubImageList": {"SubImageInfoObject": [
            {"ImageID": "1", "Type": "11", "FileFormat": "Jpeg", "ShotTime": now, "Data": base64::engine::general_purpose::STANDARD.encode(&jpeg)}
        ]}
    })
}

const CAM: &str = "42010200001190000001";

/// The binary's config for the kill -9 tests: checkpoints in on `ingress`, faces out to
/// `platform`; the files live as long as this.
struct RelayingProcess {
    cfg: std::path::PathBuf,
    log: std::path::PathBuf,
    http: u16,
    ingress: u16,
    _dir: tempfile::TempDir,
}

impl RelayingProcess {
    fn start(platform: &Platform) -> RelayingProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, ingress) = (free_port(), free_port());
        let extra = format!(
            "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:{ingress}\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\n\
             [[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
             events = [\"face_capture\"]\n",
            platform.base
        );
        let cfg = dir.path().join("vigil.toml");
        let text = crate::support::gateway::config_toml(&dir.path().join("data"), None, http, &extra);
        std::fs::write(&cfg, text).expect("config");
        RelayingProcess { cfg, log: dir.path().join("vigil.log"), http, ingress, _dir: dir }
    }
}

/// Pushes `faces` until vigil answers every one delivered, as a checkpoint does: resending
/// what was not answered, registering again when vigil restarted and forgot its session.
async fn push_until_taken(c: &Client, faces: &[Value]) {
    loop {
        match c.push(Collection::Faces, faces.to_vec()).await {
            Ok(out) if out.iter().all(|o| *o == Outcome::Delivered) => return,
            Ok(out) => panic!("vigil refused faces: {out:?}"),
            Err(Error::Unauthorized(_)) => {
                let _ = c.register().await;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

async fn target(
    gw: &crate::support::gateway::TestGateway,
    within: std::time::Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    gw.api.wait_for("/relay/targets", within, |v| v["items"].get(0).is_some_and(&check)).await["items"][0].clone()
}

async fn platform_until(p: &Platform, within: std::time::Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = p.stats().await;
        if check(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the platform did not reach the expected state: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Faces a checkpoint pushes into vigil reach the district's view library once each, under
/// the checkpoint's own ids: through an outage (backlog and its age in the API, delivered
/// when the platform answers again), with one face the platform refuses parked as dead while
/// the rest flows, and after the platform restarts (vigil registers again by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faces_reach_the_upstream_once_through_outages_and_refusals() {
    faces_reach_the_upstream(crate::support::gateway::Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faces_reach_the_upstream_once_through_outages_and_refusals_on_postgres() {
    faces_reach_the_upstream(crate::support::gateway::Db::Postgres).await;
}

async fn faces_reach_the_upstream(db: crate::support::gateway::Db) {
    use std::time::Duration;
    let port = free_port();
    let platform = Platform::start(port, "up-secret");
    let extra = format!(
        "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\n\
         [[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
         events = [\"face_capture\", \"vehicle_pass\", \"access\"]\n",
        platform.base
    );
    let gw = crate::support::gateway::TestGateway::start(db, &extra).await;
    let checkpoint =
        Client::new(&format!("http://{}/VIID", gw.gat1400.expect("ingress")), CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("the checkpoint registers with vigil");
    let push = |faces: Vec<Value>| {
        let c = checkpoint.clone();
        async move {
            let out = c.push(Collection::Faces, faces).await.expect("vigil takes the faces");
            assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
        }
    };

    push((1..11).map(checkpoint_face).collect()).await;
    let s = platform_until(&platform, Duration::from_secs(15), |s| s["unique"] == 10).await;
    assert!(
        s["order"].as_array().is_some_and(|o| o.iter().all(|id| id.as_str().is_some_and(|id| id.starts_with(CAM)))),
        "the checkpoint's ids are kept: {s}"
    );
    let t = target(&gw, Duration::from_secs(5), |t| t["delivered"] == 10 && t["backlog"] == 0).await;
    assert_eq!(t["state"], "connected", "{t}");

    // The platform refuses for a while: records wait, the API says how many and how old.
    platform.control(json!({"mode": "refuse"})).await;
    // Made once: a face's id holds the second it was made in.
    let second: Vec<Value> = (11..21).map(checkpoint_face).collect();
    push(second.clone()).await;
    let t = target(&gw, Duration::from_secs(15), |t| t["backlog"] == 10 && t["state"] == "failing").await;
    assert!(
        t["oldest_undelivered_age_s"].is_u64() && t["last_error"].as_str().is_some_and(|e| e.contains("503")),
        "{t}"
    );
    // Back, but refusing one face for good: it is parked, the other nine arrive.
    let refused = second[4]["FaceID"].clone();
    platform.control(json!({"mode": "ok", "reject": [refused]})).await;
    let t = target(&gw, Duration::from_secs(30), |t| t["backlog"] == 0 && t["dead"] == 1).await;
    assert_eq!(t["recent_dead"][0]["object_id"], refused, "{t}");
    assert_eq!(t["delivered"], 19, "{t}");
    // Kept with it: what was sent for it (the picture elided) and what the platform answered.
    let (status, dead) = gw.api.get("/relay/targets/district/dead?limit=10").await;
    assert_eq!(status, 200, "{dead}");
    let d = &dead["items"][0];
    assert!(d["object_id"] == refused && d["reason"].as_str().is_some_and(|r| r.contains("StatusCode 8")), "{dead}");
    let request = d["request"].as_str().unwrap_or_default();
    assert!(
        request.contains("Faces")
            && request.contains(refused.as_str().unwrap_or("?"))
            && request.contains("bytes elided"),
        "{dead}"
    );
    let response: Value = serde_json::from_str(d["response"].as_str().unwrap_or("null")).expect("the answer is JSON");
    assert!(response["Id"] == refused && response["StatusCode"].to_string().contains('8'), "{dead}");
    assert_eq!(gw.api.get("/relay/targets/nowhere/dead").await.0, 404);
    assert_eq!(gw.api.get("/relay/targets/district/dead?limit=0").await.0, 400);
    // The platform's operators fix their side; ours puts the dead record back in the queue.
    platform.control(json!({"reject": []})).await;
    let seq = t["recent_dead"][0]["seq"].clone();
    let (status, body) = gw.api.post("/relay/targets/district/requeue", json!({"seqs": [seq]})).await;
    assert_eq!((status, body["requeued"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(gw.api.post("/relay/targets/nowhere/requeue", json!({})).await.0, 404);
    let t = target(&gw, Duration::from_secs(15), |t| t["dead"] == 0 && t["delivered"] == 20).await;
    assert_eq!(t["backlog"], 0, "{t}");

    // The platform restarts and forgets us: vigil registers again and delivers.
    drop(platform);
    push((21..26).map(checkpoint_face).collect()).await;
    let platform = Platform::start(port, "up-secret");
    let s = platform_until(&platform, Duration::from_secs(40), |s| s["unique"] == 5).await;
    assert_eq!(s["duplicates"], 0, "{s}");
    assert!(s["registrations"].as_u64() >= Some(1), "{s}");
    target(&gw, Duration::from_secs(5), |t| t["delivered"] == 25 && t["backlog"] == 0).await;
    let text = gw.api.metrics().await;
    assert!(text.contains("vigil_relay_records_total{outcome=\"delivered\",target=\"district\"} 25"), "{text}");
    assert!(text.contains("vigil_relay_records_total{outcome=\"dead\",target=\"district\"} 1"), "{text}");
    assert!(text.contains("vigil_relay_backlog{target=\"district\"}"), "{text}");
    gw.shutdown().await;
}

/// The whole binary killed with -9 twice while a checkpoint pushes 1,000 faces (resending a
/// batch vigil did not answer, as devices do): every face vigil acknowledged reaches the
/// platform, and the platform sees no id the checkpoint did not send (duplicates, which it can
/// drop by id, are allowed and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_mid_burst_loses_no_acknowledged_face() {
    use std::collections::HashSet;
    use std::time::Duration;

    use crate::support::gateway::Process;
    const BATCHES: u32 = 50;
    const PER: u32 = 20;
    let platform = Platform::start(free_port(), "up-secret");
    let g = RelayingProcess::start(&platform);
    let mut vigil = Process::start(&g.cfg, g.http, &g.log).await;
    let checkpoint = Client::new(&format!("http://127.0.0.1:{}/VIID", g.ingress), CAM, "viid-secret").expect("client");

    let pusher = {
        let c = checkpoint.clone();
        tokio::spawn(async move {
            let mut acked: HashSet<String> = HashSet::new();
            for b in 0..BATCHES {
                let faces: Vec<Value> = (b * PER + 1..=(b + 1) * PER).map(checkpoint_face).collect();
                push_until_taken(&c, &faces).await;
                acked.extend(faces.iter().filter_map(|f| f["FaceID"].as_str().map(str::to_owned)));
            }
            acked
        })
    };
    for kill_at in [200, 500] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while platform.stats().await["unique"].as_u64() < Some(kill_at) {
            assert!(tokio::time::Instant::now() < deadline, "the relay did not get going: {}", platform.stats().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vigil.kill9();
        vigil = Process::start(&g.cfg, g.http, &g.log).await;
    }
    let acked =
        tokio::time::timeout(Duration::from_secs(120), pusher).await.expect("the checkpoint finishes").expect("pusher");
    assert_eq!(acked.len(), (BATCHES * PER) as usize);
    let s =
        platform_until(&platform, Duration::from_secs(60), |s| s["unique"].as_u64() == Some(u64::from(BATCHES * PER)))
            .await;
    let got: HashSet<String> =
        s["order"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    assert!(got.is_subset(&acked) && acked.is_subset(&got), "every acknowledged face arrived, and nothing else");
    eprintln!("kill -9 twice: {} faces delivered, {} duplicates dropped by the platform", got.len(), s["duplicates"]);
    drop(vigil);
}

/// Records GA/T 1400 has no standard object for go by the upstream's extension path: a
/// device going online and offline arrives as two device-status records with the reason
/// presence gave, and the sampled online rate as an online-rate report with a row for the
/// gateway; kinds the upstream did not ask for stay home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_and_online_rate_reports_reach_the_extension_path() {
    use std::time::Duration;
    let platform = Platform::start(free_port(), "up-secret");
    let extra = format!(
        "[assessment]\nsample_every = \"10s\"\n\n\
         [[upstreams]]\nname = \"city\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
         extension = \"/Community\"\nevents = [\"status\", \"online_rate\"]\n",
        platform.base
    );
    let gw = crate::support::gateway::TestGateway::start(crate::support::gateway::Db::Sqlite, &extra).await;
    let (s, body) = gw
        .api
        .post(
            "/devices",
            json!({"id": "gate-07", "name": "7号门门禁", "kind": "access_control", "protocol": "external"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    gw.api.post("/observations", json!({"device_id": "gate-07", "kind": "alive", "ttl": "60s"})).await;
    gw.api.wait_for("/devices/gate-07", Duration::from_secs(5), |d| d["presence"]["state"] == "online").await;
    gw.api.post("/observations", json!({"device_id": "gate-07", "kind": "dead", "reason": "power cut"})).await;

    // The whole gateway's row of a rate report; a sample taken before gate-07 was added counts
    // no device, so wait for one that counts it.
    fn whole(r: &Value) -> Option<Value> {
        r["Data"]["rows"].as_array()?.iter().find(|x| x["org_id"] == "" && x["kind"] == "all").cloned()
    }
    let counted =
        |r: &Value| r["RecordType"] == "online_rate" && whole(r).is_some_and(|w| w["total"].as_u64() >= Some(1));
    let s = platform_until(&platform, Duration::from_secs(45), |s| {
        s["extension"]["by_kind"]["DeviceStatuses"].as_u64() >= Some(2)
            && s["extension"]["latest"].as_array().is_some_and(|a| a.iter().any(counted))
    })
    .await;
    let latest = s["extension"]["latest"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<&Value> =
        latest.iter().filter(|r| r["RecordType"] == "status" && r["SourceDeviceID"] == "gate-07").collect();
    assert_eq!(statuses.len(), 2, "{latest:?}");
    assert_eq!(
        (statuses[0]["Data"]["online"].as_bool(), statuses[0]["Data"]["reason"].as_str()),
        (Some(true), Some("alive"))
    );
    assert_eq!(
        (statuses[1]["Data"]["online"].as_bool(), statuses[1]["Data"]["detail"].as_str()),
        (Some(false), Some("power cut")),
        "{:?}",
        statuses[1]
    );
    assert_eq!(statuses[1]["GatewayID"], GATEWAY);
    assert!(statuses[1]["EventTime"].as_str().is_some_and(|t| t.len() == 14), "{:?}", statuses[1]);
    let rate = latest.iter().find(|r| counted(r)).expect("an online-rate report counting the device");
    assert!(whole(rate).is_some_and(|w| w["rate"].is_number()), "{rate}");
    assert_eq!(rate["Data"]["target"], 0.95);
    assert_eq!(s["unique"], 0, "no standard objects were asked for: {s}");
    gw.shutdown().await;
}

/// Two instances on one PostgreSQL database share one upstream's outbox: claims lease rows
/// with `FOR UPDATE SKIP LOCKED`, so each face is sent by one instance, once, and together
/// they deliver everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_share_the_outbox_without_sending_twice() {
    use std::time::Duration;
    let platform = Platform::start(free_port(), "up-secret");
    let pg = crate::support::postgres::TestDb::create().await;
    let upstream = format!(
        "[[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
         events = [\"face_capture\"]\n",
        platform.base
    );
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let start = |dir: &std::path::Path, extra: String| {
        let text = crate::support::gateway::config_toml(dir, Some(&pg.url), 0, &extra);
        async move { vigil::start(vigil::Config::from_toml_with_env(&text, false).expect("config")).await.expect("starts") }
    };
    let a = start(
        dir_a.path(),
        format!("[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n{upstream}"),
    )
    .await;
    let b = start(dir_b.path(), upstream.clone()).await;
    let checkpoint =
        Client::new(&format!("http://{}/VIID", a.gat1400_addr.expect("ingress")), CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("register");
    // A's pictures are under A's data directory; B has none of them and sends the records
    // without, which the platform takes. What counts here is who sends what. The platform
    // answers each list after a second, so a batch stays in flight long enough for the other
    // instance (which polls every second; A is woken by its own commits) to claim the next.
    platform.control(json!({"mode": "slow", "slow_ms": 1000})).await;
    for batch in 0..20u32 {
        let faces: Vec<Value> = (batch * 20 + 1..=(batch + 1) * 20).map(checkpoint_face).collect();
        let out = checkpoint.push(Collection::Faces, faces).await.expect("push");
        assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
    }
    let s = platform_until(&platform, Duration::from_secs(60), |s| s["unique"] == 400).await;
    assert_eq!(s["duplicates"], 0, "no face was sent by both instances: {s}");
    let sent = |r: &vigil::Running| {
        let text = r.metrics.render();
        text.lines()
            .find(|l| l.starts_with("vigil_relay_records_total{outcome=\"delivered\",target=\"district\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (na, nb) = (sent(&a), sent(&b));
    eprintln!("instance A delivered {na}, instance B {nb}");
    assert_eq!(na + nb, 400, "together, every face once");
    assert!(na > 0 && nb > 0, "both instances took part: A {na}, B {nb}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Subscription mode (视图库级联): the city's view library subscribes with vigil
/// (`/VIID/Subscribes`) to faces and device status; records that arrived before wait, then go
/// as `SubscribeNotificationObject`s to its `ReceiveAddr`, status changes in `DeviceList`; a
/// stranger cannot subscribe; after a cancellation records wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_mode_notifies_what_the_upper_view_library_subscribed_to() {
    use std::time::Duration;
    let platform = Platform::start(free_port(), "up-secret");
    let extra = format!(
        "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\n\
         [[upstreams]]\nname = \"city\"\nprotocol = \"gat1400\"\nmode = \"subscription\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\n\
         password = \"up-secret\"\nserver_id = \"42010000005030000001\"\nevents = [\"face_capture\", \"status\"]\n",
        platform.base
    );
    let gw = crate::support::gateway::TestGateway::start(crate::support::gateway::Db::Sqlite, &extra).await;
    let viid = format!("http://{}/VIID", gw.gat1400.expect("ingress"));
    let checkpoint = Client::new(&viid, CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("register");
    let push = |from: u32, to: u32| {
        let c = checkpoint.clone();
        async move {
            let out = c.push(Collection::Faces, (from..to).map(checkpoint_face).collect()).await.expect("push");
            assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
        }
    };
    push(1, 6).await;
    // The five faces wait (with the checkpoint's own status change, once that is reported).
    let t = target(&gw, Duration::from_secs(10), |t| t["backlog"].as_u64() >= Some(5) && t["state"] == "failing").await;
    assert!(t["last_error"].as_str().is_some_and(|e| e.contains("no subscription")), "{t}");

    // A stranger may not subscribe.
    let r = reqwest::Client::new()
        .post(format!("{viid}/Subscribes"))
        .header("User-Identify", "31000000005030000009")
        .body(r#"{"SubscribeListObject":{"SubscribeObject":[{"SubscribeID":"x","SubscribeDetail":"12","ReceiveAddr":"http://127.0.0.1:9/"}]}}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    // Nor may anyone with the upper's id alone: a digest of the upstream's password is asked.
    use crate::security::gat1400::{digest, from, post};
    let body: Value = serde_json::from_str(
        r#"{"SubscribeListObject":{"SubscribeObject":[{"SubscribeID":"y","SubscribeDetail":"12","ReceiveAddr":"http://10.9.9.9/collect"}]}}"#,
    )
    .expect("json");
    let upper = from([127, 0, 0, 1]);
    let base = viid.trim_end_matches("/VIID");
    let (s, www, _) = post(&upper, base, "/VIID/Subscribes", Some("42010000005030000001"), None, &body).await;
    assert_eq!(s, 401);
    let www = www.expect("a challenge");
    let wrong = digest(&www, "42010000005030000001", "guess", "POST", "/VIID/Subscribes", 1);
    let (s, _, _) = post(&upper, base, "/VIID/Subscribes", Some("42010000005030000001"), Some(wrong), &body).await;
    assert_eq!(s, 401);
    // From another host, even with the password: refused.
    let (s, _, _) =
        post(&from([127, 0, 0, 2]), base, "/VIID/Subscribes", Some("42010000005030000001"), None, &body).await;
    assert_eq!(s, 403);
    // The upper platform itself may not send our records anywhere but its own host.
    let (_, www, _) = post(&upper, base, "/VIID/Subscribes", Some("42010000005030000001"), None, &body).await;
    let right = digest(&www.expect("challenge"), "42010000005030000001", "up-secret", "POST", "/VIID/Subscribes", 1);
    let (_, _, v) = post(&upper, base, "/VIID/Subscribes", Some("42010000005030000001"), Some(right), &body).await;
    let st = &v["ResponseStatusListObject"]["ResponseStatusObject"][0];
    assert!(st["StatusCode"] != 0 && st["StatusString"].as_str().is_some_and(|t| t.contains("ReceiveAddr")), "{v}");

    let answer = reqwest::Client::new()
        .post(format!("{}/control", platform.base.trim_end_matches("/VIID")))
        .json(&json!({"subscribe": {"to": viid, "detail": "12,4"}}))
        .send()
        .await
        .expect("control")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["answer"]["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"], 0, "{answer}");
    let s = platform_until(&platform, Duration::from_secs(30), |s| s["unique"] == 5).await;
    assert!(s["subscription"]["notifications"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");

    // A status change goes as a device status (category 4).
    gw.api
        .post("/devices", json!({"id": "gate-09", "name": "9号门", "kind": "access_control", "protocol": "external"}))
        .await;
    gw.api.post("/observations", json!({"device_id": "gate-09", "kind": "alive", "ttl": "60s"})).await;
    let s = platform_until(&platform, Duration::from_secs(15), |s| {
        s["subscription"]["statuses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["SourceDeviceID"] == "gate-09" && x["IsOnline"] == "1"))
    })
    .await;
    let status = s["subscription"]["statuses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["SourceDeviceID"] == "gate-09").cloned())
        .expect("status");
    assert_eq!(status["ApeID"], GATEWAY, "a device without a 20-digit id is named by the gateway: {status}");

    // A cancel forged in the upper's name, from another host or without its password, changes
    // nothing (issue #15, item 10).
    let cancel_body: Value = serde_json::from_str(
        r#"{"SubscribeListObject":{"SubscribeObject":[{"SubscribeID":"420100000050300000012026112700001","OperateType":1}]}}"#,
    )
    .expect("json");
    let (s, _, _) =
        post(&from([127, 0, 0, 2]), base, "/VIID/Subscribes", Some("42010000005030000001"), None, &cancel_body).await;
    assert_eq!(s, 403);
    let (s, _, _) = post(&upper, base, "/VIID/Subscribes", Some("42010000005030000001"), None, &cancel_body).await;
    assert_eq!(s, 401);
    let r = from([127, 0, 0, 2])
        .delete(format!("{viid}/Subscribes?IDList=420100000050300000012026112700001"))
        .header("User-Identify", "42010000005030000001")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 403);
    push(8, 9).await;
    platform_until(&platform, Duration::from_secs(30), |s| s["unique"] == 6).await;

    // Cancelled: new faces wait again.
    let answer = reqwest::Client::new()
        .post(format!("{}/control", platform.base.trim_end_matches("/VIID")))
        .json(&json!({"subscribe": {"to": viid, "cancel": true}}))
        .send()
        .await
        .expect("control")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(answer["status"], 200, "{answer}");
    push(6, 8).await;
    target(&gw, Duration::from_secs(10), |t| t["backlog"] == 2).await;
    assert_eq!(platform.stats().await["unique"], 6);
    // A subscription that ended with records waiting is an alarm, on the API, the metrics
    // and the dashboard's relay card.
    let t = target(&gw, Duration::from_secs(10), |t| t["alarm"].is_string()).await;
    assert!(
        t["alarm"].as_str().is_some_and(|a| a.starts_with("subscription lapsed") && a.contains("cancelled")),
        "{t}"
    );
    let m =
        gw.api.wait_for_metrics(Duration::from_secs(5), |m| m.contains("vigil_relay_alarm{target=\"city\"} 1")).await;
    assert!(
        crate::support::metric(&m, "vigil_relay_failures_total{reason=\"subscription_lapsed\",target=\"city\"}") >= 1.0,
        "{m}"
    );
    gw.shutdown().await;
}

/// A bounded outbox: with the upstream away and the backlog at `relay.max_backlog`, vigil
/// stops taking records (a checkpoint's push is held, not refused and not dropped), says so
/// in the API, `/health` and the metrics, and takes them again once the upstream drains the
/// backlog; every face arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_slows_sources_and_resumes_when_drained() {
    use std::time::Duration;
    let platform = Platform::start(free_port(), "up-secret");
    platform.control(json!({"mode": "refuse"})).await;
    let extra = format!(
        "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\
         [relay]\nmax_backlog = 20\n\n\
         [[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
         events = [\"face_capture\"]\n",
        platform.base
    );
    let gw = crate::support::gateway::TestGateway::start(crate::support::gateway::Db::Sqlite, &extra).await;
    let checkpoint =
        Client::new(&format!("http://{}/VIID", gw.gat1400.expect("ingress")), CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("register");
    for b in 0..2u32 {
        let out = checkpoint
            .push(Collection::Faces, (b * 10 + 1..=(b + 1) * 10).map(checkpoint_face).collect())
            .await
            .expect("push");
        assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
    }
    let v = gw.api.wait_for("/relay/targets", Duration::from_secs(10), |v| v["outbox"]["accepting"] == false).await;
    assert!(v["outbox"]["reason"].as_str().is_some_and(|r| r.contains("max_backlog")), "{v}");
    assert_eq!(gw.api.get("/health").await.1["outbox"], "full");
    assert!(gw.api.metrics().await.contains("vigil_outbox_accepting 0"));
    // The next push is held: not answered while the outbox is full.
    let held = {
        let c = checkpoint.clone();
        tokio::spawn(async move { c.push(Collection::Faces, (21..=30).map(checkpoint_face).collect()).await })
    };
    gw.api
        .wait_for_metrics(Duration::from_secs(10), |m| m.lines().any(|l| l == "vigil_outbox_held_submissions 1"))
        .await;
    assert!(!held.is_finished(), "a push into a full outbox is held back");
    // The upstream answers again: the backlog drains, the held push is taken.
    platform.control(json!({"mode": "ok"})).await;
    let out =
        tokio::time::timeout(Duration::from_secs(60), held).await.expect("taken again").expect("task").expect("push");
    assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
    let s = platform_until(&platform, Duration::from_secs(60), |s| s["unique"] == 30).await;
    assert_eq!(s["duplicates"], 0, "{s}");
    gw.api.wait_for("/relay/targets", Duration::from_secs(10), |v| v["outbox"]["accepting"] == true).await;
    gw.shutdown().await;
}

/// A disk that really fills (a 96 MiB tmpfs as the data directory, `relay.min_free_disk` 32
/// MiB): under twice the minimum the operator is warned while records still flow; under the
/// minimum the outbox stops taking records (a checkpoint's push is held, not refused, not
/// dropped); filled to the last byte the gateway keeps running and a new push is held too
/// (nothing is written for it, so nothing can fail on the full disk), never falsely
/// acknowledged; once space is freed both held pushes are answered, every face reaches the
/// platform once, and the database passes SQLite's integrity check.
///
/// Mounting needs root: `make test` runs it (with `--include-ignored`) where it runs as root,
/// as CI does; elsewhere `cargo test -- --ignored` as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; make test runs it when it is root"]
async fn a_nearly_full_disk_slows_sources_raises_an_alarm_and_resumes_when_freed() {
    use std::time::Duration;
    const MIB: u64 = 1 << 20;
    let disk = crate::support::tmpfs::Tmpfs::mount(96).unwrap_or_else(|e| panic!("{e}"));
    let platform = Platform::start(free_port(), "up-secret");
    let extra = format!(
        "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n\
         [relay]\nmin_free_disk = \"32MiB\"\n\n\
         [[upstreams]]\nname = \"district\"\nprotocol = \"gat1400\"\nurl = \"{}\"\nuser_id = \"{GATEWAY}\"\npassword = \"up-secret\"\n\
         events = [\"face_capture\"]\n",
        platform.base
    );
    let gw =
        crate::support::gateway::TestGateway::start_in(crate::support::gateway::Db::Sqlite, disk.path(), &extra).await;
    let checkpoint =
        Client::new(&format!("http://{}/VIID", gw.gat1400.expect("ingress")), CAM, "viid-secret").expect("client");
    checkpoint.register().await.expect("register");
    push_until_taken(&checkpoint, &(1..=10).map(checkpoint_face).collect::<Vec<_>>()).await;
    let v = gw.api.get("/relay/targets").await.1;
    assert!(v["outbox"]["accepting"] == true && v["outbox"]["warning"].is_null(), "{v}");

    // Under twice the minimum: a warning, records still taken.
    let warn_fill = disk.fill_to("filler-1", 48 * MIB);
    let v = gw.api.wait_for("/relay/targets", Duration::from_secs(10), |v| v["outbox"]["warning"].is_string()).await;
    assert!(v["outbox"]["accepting"] == true, "{v}");
    assert!(v["outbox"]["warning"].as_str().is_some_and(|w| w.contains("MiB free")), "{v}");
    push_until_taken(&checkpoint, &(11..=20).map(checkpoint_face).collect::<Vec<_>>()).await;

    // Under the minimum: closed, said in the API, /health and the metrics; a push is held.
    let close_fill = disk.fill_to("filler-2", 20 * MIB);
    let v = gw.api.wait_for("/relay/targets", Duration::from_secs(10), |v| v["outbox"]["accepting"] == false).await;
    assert!(v["outbox"]["reason"].as_str().is_some_and(|r| r.contains("min_free_disk")), "{v}");
    let health = gw.api.get("/health").await.1;
    assert!(health["outbox"] == "full" && health["status"] == "degraded", "{health}");
    let metrics = gw.api.metrics().await;
    assert!(metrics.contains("vigil_outbox_accepting 0"), "the metric says the outbox is closed");
    assert!(metrics.contains("vigil_outbox_free_disk_bytes "), "free disk is a metric");
    let held_faces: Vec<Value> = (21..=30).map(checkpoint_face).collect();
    let held = {
        let (c, faces) = (checkpoint.clone(), held_faces.clone());
        tokio::spawn(async move { c.push(Collection::Faces, faces).await })
    };
    // Held: the gateway says so once the push has arrived and waits at the closed outbox.
    let holding = |n: u32| move |m: &str| m.lines().any(|l| l == format!("vigil_outbox_held_submissions {n}"));
    gw.api.wait_for_metrics(Duration::from_secs(10), holding(1)).await;
    assert!(!held.is_finished(), "a push is held while the disk is under the minimum");

    // Full to the last byte: the gateway keeps answering, and acknowledges nothing it could
    // not keep (the images of a new push have nowhere to go).
    let full_fill = disk.fill_to("filler-3", 0);
    assert!(disk.free() < MIB, "the tmpfs is full: {} bytes free", disk.free());
    let late_faces: Vec<Value> = (31..=40).map(checkpoint_face).collect();
    let late = {
        let (c, faces) = (checkpoint.clone(), late_faces.clone());
        tokio::spawn(async move { c.push(Collection::Faces, faces).await })
    };
    gw.api.wait_for_metrics(Duration::from_secs(10), holding(2)).await;
    assert_eq!(gw.api.get("/health").await.0, 200, "the API answers on a full disk");
    assert!(!late.is_finished(), "a push onto the full disk is held, not answered");
    assert!(!held.is_finished(), "the held push is still held, not failed or dropped");

    // Space freed: records are taken again, the held push is answered, the rest goes through.
    for f in [full_fill, close_fill, warn_fill] {
        std::fs::remove_file(f).expect("remove filler");
    }
    for (push, what) in [(held, "the push held under the minimum"), (late, "the push held on the full disk")] {
        let out = tokio::time::timeout(Duration::from_secs(60), push).await.expect("taken again").expect("task");
        assert!(
            matches!(&out, Ok(o) if o.iter().all(|o| *o == Outcome::Delivered)),
            "{what} is answered once there is room: {out:?}"
        );
    }
    gw.api.wait_for("/relay/targets", Duration::from_secs(10), |v| v["outbox"]["accepting"] == true).await;
    let s = platform_until(&platform, Duration::from_secs(60), |s| s["unique"] == 40).await;
    assert_eq!(s["duplicates"], 0, "{s}");
    gw.api.wait_for("/health", Duration::from_secs(10), |v| v["status"] == "ok").await;
    gw.shutdown().await;

    let db = disk.path().join("vigil.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.expect("open the database");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.expect("integrity_check");
    assert_eq!(check, "ok", "the database is intact after the disk filled");
    let faces: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'face_capture'")
        .fetch_one(&pool)
        .await
        .expect("count faces");
    assert_eq!(faces, 40, "each face stored once");
    pool.close().await;
}

/// The relay soak: N faces (3,000 here; `VIGILTEST_SOAK_EVENTS=100000` for the figure in
/// BENCHMARKS.md) pushed by a checkpoint that resends what vigil did not answer, through three
/// upstream outages and two `kill -9`s of vigil: every acknowledged face reaches the
/// platform, nothing else does, and the duplicates it dropped by id are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_outages_and_kills_lose_nothing() {
    use std::collections::HashSet;
    use std::time::Duration;

    use crate::support::gateway::Process;
    let total: u32 = std::env::var("VIGILTEST_SOAK_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    const PER: u32 = 50;
    let started = tokio::time::Instant::now();
    let platform = Platform::start(free_port(), "up-secret");
    let g = RelayingProcess::start(&platform);
    let mut vigil = Process::start(&g.cfg, g.http, &g.log).await;
    let checkpoint = Client::new(&format!("http://127.0.0.1:{}/VIID", g.ingress), CAM, "viid-secret").expect("client");
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let pusher = {
        let (c, count) = (checkpoint.clone(), acked_count.clone());
        tokio::spawn(async move {
            let mut acked: HashSet<String> = HashSet::new();
            for b in 0..total.div_ceil(PER) {
                let faces: Vec<Value> = (b * PER + 1..=((b + 1) * PER).min(total)).map(checkpoint_face).collect();
                push_until_taken(&c, &faces).await;
                acked.extend(faces.iter().filter_map(|f| f["FaceID"].as_str().map(str::to_owned)));
                count.store(acked.len() as u32, std::sync::atomic::Ordering::Relaxed);
            }
            acked
        })
    };
    // Chaos by progress: outages at 15%, 45% and 75%, kill -9 at 30% and 60%.
    let at = |pct: u32| total * pct / 100;
    for (pct, what) in [(15, "outage"), (30, "kill"), (45, "outage"), (60, "kill"), (75, "outage")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while acked_count.load(std::sync::atomic::Ordering::Relaxed) < at(pct) {
            assert!(tokio::time::Instant::now() < deadline, "the checkpoint stalled before {pct}%");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if what == "kill" {
            vigil.kill9();
            vigil = Process::start(&g.cfg, g.http, &g.log).await;
        } else {
            // An outage the relay has met (a refused delivery counted), then the platform is back.
            let retried = |m: &str| {
                m.lines()
                    .filter(|l| {
                        l.starts_with("vigil_relay_failures_total{")
                            || (l.starts_with("vigil_relay_records_total{") && l.contains("outcome=\"retry\""))
                    })
                    .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
                    .sum::<u64>()
            };
            let before = retried(&vigil.api.metrics().await);
            platform.control(json!({"mode": "refuse"})).await;
            vigil.api.wait_for_metrics(Duration::from_secs(60), |m| retried(m) > before).await;
            platform.control(json!({"mode": "ok"})).await;
        }
    }
    let acked =
        tokio::time::timeout(Duration::from_secs(900), pusher).await.expect("the checkpoint finishes").expect("pusher");
    assert_eq!(acked.len(), total as usize);
    let s =
        platform_until(&platform, Duration::from_secs(300), |s| s["unique"].as_u64() == Some(u64::from(total))).await;
    let got: HashSet<String> =
        s["order"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    assert!(got == acked, "every acknowledged face arrived, and nothing else");
    eprintln!(
        "soak: {} faces delivered through 3 outages and 2 kill -9s in {:.1} s; the platform dropped {} duplicates by id",
        got.len(),
        started.elapsed().as_secs_f64(),
        s["duplicates"]
    );
    drop(vigil);
}
