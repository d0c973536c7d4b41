//! A GA/T 1400 checkpoint camera against vigil's view library: it registers with real HTTP
//! digest (curl --digest), pushes faces and vehicles with images, and they appear as events
//! with the images retrievable; each object is answered on its own, bad ones named, good ones
//! kept; a resend is one event; keepalive, time and unregister behave.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::gateway::{Db, TestGateway};
use crate::support::require_command;

const CAM: &str = "42010200001190000001";

/// `curl --digest`: the register dance done by a real client. Answers (HTTP status, body).
fn curl_register(base: &str, user: &str, password: &str, device: &str) -> (u16, Value) {
    let curl = require_command("curl");
    let out = std::process::Command::new(curl)
        .args(["-s", "--digest", "-u", &format!("{user}:{password}"), "-X", "POST"])
        .args(["-H", "Content-Type: application/VIID+JSON;charset=UTF-8"])
        .args(["-d", &json!({"RegisterObject": {"DeviceID": device}}).to_string()])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{base}/VIID/System/Register"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

pub fn image(seed: u8, len: usize) -> Vec<u8> {
    [0xFF, 0xD8, 0xFF].into_iter().chain((0..len - 3).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))).collect()
}

pub fn face(id_tail: u32, device: Option<&str>, scene: &[u8], crop: &[u8]) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).format("%Y%m%d%H%M%S").to_string();
    let mut f = json!({
        "FaceID": format!("4201020000119000000102{now}0000106{id_tail:05}"),
        "InfoKind": "1",
        "SourceID": format!("4201020000119000000102{now}00001"),
        "LeftTopX": 163, "LeftTopY": "726", "RightBtmX": 334, "RightBtmY": 897,
        "FaceAppearTime": now, "GenderCode": "1",
        "SubImageList": {"SubImageInfoObject": [
            {"ImageID": "1", "Type": "14", "FileFormat": "Jpeg", "ShotTime": now, "Data": b64(scene)},
            {"ImageID": "2", "Type": "11", "FileFormat": "Jpeg", "ShotTime": now, "Data": b64(crop)}
        ]}
    });
    if let Some(d) = device {
        f["DeviceID"] = json!(d);
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_registers_with_digest_and_its_faces_and_vehicles_become_events() {
    let gw = TestGateway::start(
        Db::Sqlite,
        "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n[admission]\npolicy = \"open\"\n",
    )
    .await;
    let base = format!("http://{}", gw.gat1400.expect("GA/T 1400 endpoint"));
    let http = reqwest::Client::new();
    let post = |path: &str, user: Option<&str>, body: String| {
        let mut r = http.post(format!("{base}{path}")).header("content-type", "application/VIID+JSON").body(body);
        if let Some(u) = user {
            r = r.header("User-Identify", u);
        }
        async move {
            let resp = r.send().await.expect("POST");
            let status = resp.status().as_u16();
            let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or("").to_owned());
            (status, www, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Data before registering: 401 with a digest challenge.
    let (s, www, v) = post("/VIID/Faces", Some(CAM), json!({"FaceListObject": {"FaceObject": []}}).to_string()).await;
    assert_eq!(s, 401, "{v}");
    assert!(www.is_some_and(|w| w.contains("Digest") && w.contains("qop=\"auth\"")));
    assert_eq!(v["ResponseStatusObject"]["StatusCode"], 4);

    // Wrong password, then the right one, through curl's own digest.
    let (s, _) = curl_register(&base, CAM, "wrong", CAM);
    assert_eq!(s, 401);
    let (s, v) = curl_register(&base, CAM, "viid-secret", CAM);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ResponseStatusObject"]["StatusCode"], 0);
    assert_eq!(v["ResponseStatusObject"]["Id"], CAM);
    assert_eq!(v["ResponseStatusObject"]["LocalTime"].as_str().map(str::len), Some(14));
    let d = gw
        .api
        .wait_for(&format!("/devices/{CAM}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online")
        .await;
    assert_eq!(d["protocol"], "gat1400");
    assert_eq!(d["presence"]["reason"], "register");

    // Two faces with 100 KB scenes: the first is good, the second names no device.
    let (scene, crop) = (image(1, 100 * 1024), image(2, 8 * 1024));
    let good = face(1, Some(CAM), &scene, &crop);
    let bad = face(2, None, &scene, &crop);
    let body = json!({"FaceListObject": {"FaceObject": [good.clone(), bad.clone()]}}).to_string();
    let (s, _, v) = post("/VIID/Faces", Some(CAM), body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let answers =
        v["ResponseStatusListObject"]["ResponseStatusObject"].as_array().expect("one answer per object").clone();
    assert_eq!(answers.len(), 2, "{v}");
    assert_eq!(answers[0]["StatusCode"], 0);
    assert_eq!(answers[0]["Id"], good["FaceID"]);
    assert_eq!(answers[1]["StatusCode"], 8);
    assert_eq!(answers[1]["Id"], bad["FaceID"]);
    assert!(answers[1]["StatusString"].as_str().is_some_and(|t| t.contains("no_identity")), "{v}");

    let events = gw.api.get(&format!("/events?device={CAM}&kind=face_capture")).await.1;
    let items = events["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{events}");
    let e = &items[0];
    assert_eq!(e["source"], "gat1400");
    assert_eq!(e["profile"], "gat1400.face@1");
    assert_eq!(e["body"]["capture_id"], good["FaceID"], "the checkpoint's FaceID is kept");
    assert_eq!(e["body"]["bbox"]["top"], 726);
    assert_eq!(e["time_source"], "device");
    let media = e["media"].as_array().expect("media");
    assert_eq!(media.iter().map(|m| m["role"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["scene", "face"]);
    let (s, ct, bytes) = gw.api.get_bytes(&format!("/images/{}", media[0]["hash"].as_str().expect("hash"))).await;
    assert_eq!((s, ct.as_str()), (200, "image/jpeg"));
    assert!(bytes == scene, "the scene comes back byte for byte");

    // The same request again (a retry after a lost answer): answered OK, stored once.
    let (s, _, v) = post("/VIID/Faces", Some(CAM), body).await;
    assert_eq!((s, &v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"]), (200, &json!(0)));
    let events = gw.api.get(&format!("/events?device={CAM}&kind=face_capture")).await.1;
    assert_eq!(events["items"].as_array().map(Vec::len), Some(1));

    // A vehicle with numbers as strings.
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Shanghai).format("%Y%m%d%H%M%S").to_string();
    let vehicle = json!({"MotorVehicleListObject": {"MotorVehicleObject": [{
        "MotorVehicleID": format!("4201020000119000000102{now}0000102{:05}", 7), "DeviceID": CAM,
        "HasPlate": "1", "PlateNo": "鄂A12345", "PlateColor": "5", "LaneNo": "2", "Speed": "", "PassTime": now,
        "SubImageList": {"SubImageInfoObject": [{"Type": "01", "Data": base64::engine::general_purpose::STANDARD.encode(image(3, 4096))}]}
    }]}});
    let (s, _, v) = post("/VIID/MotorVehicles", Some(CAM), vehicle.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"], 0);
    let events = gw.api.get(&format!("/events?device={CAM}&kind=vehicle_pass")).await.1;
    assert_eq!(events["items"][0]["body"]["plate"], "鄂A12345");
    assert_eq!(events["items"][0]["body"]["lane"], 2);
    assert_eq!(events["items"][0]["media"][0]["role"], "vehicle");

    // Unreadable JSON (a trailing comma, seen in the field): 400 and StatusCode 7.
    let (s, _, v) =
        post("/VIID/Faces", Some(CAM), r#"{"FaceListObject": {"FaceObject": [{"DeviceID": "x",}]}}"#.into()).await;
    assert_eq!((s, &v["ResponseStatusObject"]["StatusCode"]), (400, &json!(7)), "{v}");
    // A collection no profile maps: every object answered, none kept.
    let (s, _, v) = post(
        "/VIID/Persons",
        Some(CAM),
        json!({"PersonListObject": {"PersonObject": [{"PersonID": "p1"}]}}).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["ResponseStatusListObject"]["ResponseStatusObject"][0]["Id"], "p1");
    assert_eq!(v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"], 4);

    // Keepalive, time, unregister.
    let (s, _, v) =
        post("/VIID/System/Keepalive", None, json!({"KeepaliveObject": {"DeviceID": CAM}}).to_string()).await;
    assert_eq!((s, &v["ResponseStatusObject"]["StatusCode"]), (200, &json!(0)));
    let t: Value = http.get(format!("{base}/VIID/System/Time")).send().await.expect("time").json().await.expect("json");
    assert_eq!(t["SystemTimeObject"]["TimeZone"], "Asia/Shanghai");
    let (s, _, _) =
        post("/VIID/System/UnRegister", None, json!({"UnRegisterObject": {"DeviceID": CAM}}).to_string()).await;
    assert_eq!(s, 200);
    let d = gw
        .api
        .wait_for(&format!("/devices/{CAM}"), Duration::from_secs(5), |d| d["presence"]["state"] == "offline")
        .await;
    assert_eq!(d["presence"]["reason"], "unregister");
    let (s, _, _) =
        post("/VIID/System/Keepalive", None, json!({"KeepaliveObject": {"DeviceID": CAM}}).to_string()).await;
    assert_eq!(s, 401, "after unregistering a keepalive is told to register");
    gw.shutdown().await;
}
