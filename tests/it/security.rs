//! The HTTP API and the dashboard as an attacker on the operators' network, or a device with
//! a crafted name, would try them (issue #15, item 9, as far as it is built): each attack is
//! performed here and must fail. The device ports' findings of that issue are not built yet.

use serde_json::json;

use crate::support::gateway::{config_toml, Db, Process, TestGateway, ADMIN};

/// The page cannot be framed (the approve / reject buttons), sniffed into another type or
/// made to run a script it did not ship; every API answer carries the same headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_api_refuse_framing_sniffing_and_foreign_scripts() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let http = reqwest::Client::new();
    for url in [format!("{}/", gw.url), format!("{}/api/v1/health", gw.url), format!("{}/api/v1/nowhere", gw.url)] {
        let r = http.get(&url).send().await.expect("GET");
        let h = r.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(get("x-frame-options"), "DENY", "{url}");
        assert_eq!(get("x-content-type-options"), "nosniff", "{url}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{url}");
        let csp = get("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'sha256-"), "{url}: {csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'") && !csp.contains("'unsafe-eval'"), "{csp}");
    }
    gw.shutdown().await;
}

/// `Authorization: bearer` is the same scheme as `Bearer` (RFC 9110 §11.1); a wrong token in
/// any case is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_wrong_tokens_stay_refused() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/orgs", gw.url);
    for (auth, want) in [
        (format!("bearer {ADMIN}"), 200),
        (format!("BEARER {ADMIN}"), 200),
        (format!("Bearer  {ADMIN}"), 200),
        ("bearer not-a-token".to_owned(), 401),
        (format!("Basic {ADMIN}"), 401),
        (ADMIN.to_owned(), 401),
    ] {
        let r = http.get(&url).header("Authorization", &auth).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), want, "{auth:?}");
    }
    gw.shutdown().await;
}

/// A body over `http.max_body` is answered with API.md's JSON error, not plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_a_json_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = crate::support::free_port();
    let cfg = dir.path().join("vigil.toml");
    let text =
        config_toml(&dir.path().join("data"), None, port, "").replacen("[http]\n", "[http]\nmax_body = 1024\n", 1);
    assert!(text.contains("max_body = 1024"), "the harness's [http] table is where this test expects");
    std::fs::write(&cfg, text).expect("write config");
    let gw = Process::start(&cfg, port, &dir.path().join("vigil.log")).await;
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/devices/import"))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .header("Content-Type", "text/csv")
        .body(vec![b'a'; 64 * 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 413);
    assert!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        r.headers()
    );
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    drop(gw);
}

/// A NUL (or any control character) in a name is refused naming the field; a name a
/// spreadsheet would run as a formula comes out of the daily report's CSV as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_characters_are_refused_and_formulas_leave_the_csv_as_text() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let api = &gw.api;
    let (s, body) = api.post("/orgs", json!({"id": "d", "name": "District\u{0}", "kind": "district"})).await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("name")), "{body}");
    assert_eq!(api.post("/orgs", json!({"id": "d", "name": "District", "kind": "district"})).await.0, 201);
    let (s, body) = api
        .post(
            "/devices",
            json!({"id": "gate-1", "name": "Gate\u{1b}[31m", "kind": "barrier", "protocol": "external", "org_id": "d"}),
        )
        .await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("name")), "{body}");
    let formula = "=HYPERLINK(\"http://attacker.example/\",\"click\")";
    let (s, body) = api
        .post(
            "/devices",
            json!({"id": "gate-2", "name": formula, "kind": "barrier", "protocol": "external", "org_id": "d"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = api.send(reqwest::Method::PATCH, "/devices/gate-2", json!({"name": "x\u{0}y"})).await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("name")), "{body}");
    api.post("/observations", json!({"device_id": "gate-2", "kind": "dead", "reason": "test"})).await;
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/reports/online/daily?format=csv", gw.url))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .expect("GET");
    let csv = r.text().await.expect("text");
    assert!(csv.contains("\"'=HYPERLINK("), "the formula is not neutralised:\n{csv}");
    assert!(!csv.lines().any(|l| l.split(',').any(|c| c.trim_start_matches('"').starts_with('='))), "{csv}");
    gw.shutdown().await;
}

/// A keepalive for a registered GB/T 28181 camera sent from another address is refused and
/// counted: it does not keep the camera online (issue #15, item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_from_another_address_does_not_keep_a_camera_online() {
    use crate::gb28181::Device;
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let api = &gw.api;
    let id = "42010400001320000555";
    let (s, body) =
        api.post("/devices", json!({"id": id, "name": "gate cam", "kind": "camera", "protocol": "gb28181"})).await;
    assert_eq!(s, 201, "{body}");
    let sip = gw.sip.expect("SIP");
    let handled = |m: &str| crate::support::metric(m, "vigil_observations_total");
    let baseline = handled(&api.metrics().await);
    let mut camera = Device::new(id, sip).await;
    assert!(camera.register(3600, "12345678").await.starts_with("SIP/2.0 200"));
    assert!(camera.keepalive(1).await.starts_with("SIP/2.0 200"), "the camera's own keepalive is taken");
    let mut forger = Device::new_at(id, sip, "127.0.0.2:0").await;
    let answer = forger.keepalive(2).await;
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    let (_, rej) = api.get("/rejections?source=gb28181&reason=not_from_registered_address").await;
    assert!(rej["items"][0]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.2:")), "{rej}");
    // The camera's own next keepalive is still taken. The SIP server handles messages in
    // arrival order and presence its observations likewise, so once the camera's three
    // (REGISTER, two keepalives) are counted, a forged one taken as evidence would be too.
    assert!(camera.keepalive(3).await.starts_with("SIP/2.0 200"));
    let m = api.wait_for_metrics(std::time::Duration::from_secs(5), |m| handled(m) >= baseline + 3.0).await;
    assert_eq!(handled(&m), baseline + 3.0, "only the camera's own REGISTER and keepalives are evidence");
    gw.shutdown().await;
}

/// GA/T 1400 as an attacker on the device network would try it (issue #15, items 1, 2, 8).
pub mod gat1400 {
    use std::net::IpAddr;
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::gat1400::{face, image};
    use crate::support::gateway::{Db, TestGateway};

    pub const CAM: &str = "42010200001190000001";
    const CAM2: &str = "42010200001190000002";

    /// A client whose connections leave from `ip` (any 127.x address is the loopback).
    pub fn from(ip: [u8; 4]) -> reqwest::Client {
        reqwest::Client::builder().local_address(IpAddr::from(ip)).build().expect("client")
    }

    /// The `Authorization` answering `www` for `user` (MD5, qop=auth), as curl computes it.
    pub fn digest(www: &str, user: &str, password: &str, method: &str, uri: &str, nc: u32) -> String {
        vigil::protocol::digest::answer(www, user, password, method, uri, nc, "0a4f113b").expect("a digest challenge")
    }

    /// One POST: (status, WWW-Authenticate, body).
    pub async fn post(
        http: &reqwest::Client,
        base: &str,
        path: &str,
        user: Option<&str>,
        auth: Option<String>,
        body: &Value,
    ) -> (u16, Option<String>, Value) {
        let mut r =
            http.post(format!("{base}{path}")).header("content-type", "application/VIID+JSON").body(body.to_string());
        if let Some(u) = user {
            r = r.header("User-Identify", u);
        }
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let resp = r.send().await.expect("POST");
        let status = resp.status().as_u16();
        let www = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (status, www, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Registers `id` with `password` from `http`'s address: the challenge, then the answer.
    pub async fn register(http: &reqwest::Client, base: &str, id: &str, password: &str) -> u16 {
        let body = json!({"RegisterObject": {"DeviceID": id}});
        let (s, www, _) = post(http, base, "/VIID/System/Register", None, None, &body).await;
        let Some(www) = www else { return s };
        let auth = digest(&www, id, password, "POST", "/VIID/System/Register", 1);
        post(http, base, "/VIID/System/Register", None, Some(auth), &body).await.0
    }

    fn config(extra: &str) -> String {
        format!(
            "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n{extra}[admission]\npolicy = \"open\"\n"
        )
    }

    /// A view library (`config(extra)`) with the checkpoint `CAM` registered from
    /// 127.0.0.1: the gateway, the endpoint's base URL and the checkpoint's client.
    async fn registered(extra: &str) -> (TestGateway, String, reqwest::Client) {
        let gw = TestGateway::start(Db::Sqlite, &config(extra)).await;
        let base = format!("http://{}", gw.gat1400.expect("GA/T 1400"));
        let own = from([127, 0, 0, 1]);
        assert_eq!(register(&own, &base, CAM, "viid-secret").await, 200);
        (gw, base, own)
    }

    fn faces(items: Vec<Value>) -> Value {
        json!({"FaceListObject": {"FaceObject": items}})
    }

    /// From another address, with nothing but the checkpoint's id, an attacker can neither
    /// unregister it, keep it alive nor file its records: each is a 401 with a challenge,
    /// counted and kept, and the checkpoint's state does not move.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registration_is_bound_to_its_address_and_strangers_change_nothing() {
        let (gw, base, own) = registered("").await;
        gw.api
            .wait_for(&format!("/devices/{CAM}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online")
            .await;
        let transitions = |d: &Value| d["presence"]["since"].clone();
        let before = transitions(&gw.api.get(&format!("/devices/{CAM}")).await.1);

        let stranger = from([127, 0, 0, 2]);
        for (path, user, body) in [
            ("/VIID/System/UnRegister", None, json!({"UnRegisterObject": {"DeviceID": CAM}})),
            ("/VIID/System/UnRegister", Some(CAM), json!({"UnRegisterObject": {"DeviceID": CAM}})),
            ("/VIID/System/Keepalive", None, json!({"KeepaliveObject": {"DeviceID": CAM}})),
            ("/VIID/System/Keepalive", Some(CAM), json!({"KeepaliveObject": {"DeviceID": CAM}})),
            ("/VIID/Faces", Some(CAM), faces(vec![face(1, Some(CAM), &image(1, 2048), &image(2, 512))])),
        ] {
            let (s, www, v) = post(&stranger, &base, path, user, None, &body).await;
            assert_eq!(s, 401, "{path} {user:?}: {v}");
            assert!(www.is_some_and(|w| w.starts_with("Digest")), "{path}: a challenge comes with the 401");
            assert_eq!(v["ResponseStatusObject"]["StatusCode"], 4, "{v}");
        }
        let (_, d) = gw.api.get(&format!("/devices/{CAM}")).await;
        assert_eq!(d["presence"]["state"], "online", "{d}");
        assert_eq!(transitions(&d), before, "no transition: {d}");
        let (_, events) = gw.api.get(&format!("/events?device={CAM}")).await;
        assert_eq!(events["items"].as_array().map(Vec::len), Some(0), "{events}");
        let (_, rej) = gw.api.get("/rejections?source=gat1400&reason=not_from_registered_address").await;
        assert_eq!(rej["items"].as_array().map(Vec::len), Some(5), "{rej}");
        let m = gw.api.metrics().await;
        assert!(
            m.contains("vigil_device_auth_refusals_total{port=\"gat1400\",reason=\"not_from_registered_address\"} 5"),
            "{m}"
        );

        // The checkpoint itself, from its address, is served; its UnRegister takes effect.
        let (s, _, _) =
            post(&own, &base, "/VIID/System/Keepalive", None, None, &json!({"KeepaliveObject": {"DeviceID": CAM}}))
                .await;
        assert_eq!(s, 200);
        let body = json!({"UnRegisterObject": {"DeviceID": CAM}});
        assert_eq!(post(&own, &base, "/VIID/System/UnRegister", Some(CAM), None, &body).await.0, 200);
        gw.api
            .wait_for(&format!("/devices/{CAM}"), Duration::from_secs(5), |d| d["presence"]["state"] == "offline")
            .await;
        gw.shutdown().await;
    }

    /// Guessing passwords: after five wrong digests in a minute an address is refused unheard
    /// (403), the right password included; other addresses are not affected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_guessing_is_limited_per_address() {
        let gw = TestGateway::start(Db::Sqlite, &config("")).await;
        let base = format!("http://{}", gw.gat1400.expect("GA/T 1400"));
        let guesser = from([127, 0, 0, 3]);
        let mut answers = Vec::new();
        for i in 0..20 {
            answers.push(register(&guesser, &base, CAM, &format!("guess-{i}")).await);
        }
        assert_eq!(&answers[..5], &[401; 5], "{answers:?}");
        assert!(answers[5..].iter().all(|&s| s == 403), "{answers:?}");
        assert_eq!(register(&guesser, &base, CAM, "viid-secret").await, 403, "refused unheard, even when right");
        assert_eq!(register(&from([127, 0, 0, 4]), &base, CAM, "viid-secret").await, 200);
        let m = gw.api.metrics().await;
        assert!(
            m.contains("vigil_device_auth_refusals_total{port=\"gat1400\",reason=\"too_many_failures\"} 16"),
            "{m}"
        );
        gw.shutdown().await;
    }

    /// Rotating a device's password through the API (docs/security.md): the old one stops
    /// working at the next registration, the new one works; `null` goes back to the default.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_password_is_rotated_through_the_api() {
        let (gw, base, own) = registered("").await;
        let (s, b) =
            gw.api.send(reqwest::Method::PATCH, &format!("/devices/{CAM}"), json!({"password": "short"})).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("password")), "{b}");
        let (s, b) =
            gw.api.send(reqwest::Method::PATCH, &format!("/devices/{CAM}"), json!({"password": "rotated-2026"})).await;
        assert_eq!(s, 200, "{b}");
        assert!(b.get("password").is_none() && !b.to_string().contains("rotated-2026"), "never shown: {b}");
        assert_eq!(register(&own, &base, CAM, "viid-secret").await, 401);
        assert_eq!(register(&own, &base, CAM, "rotated-2026").await, 200);
        let (s, _) = gw.api.send(reqwest::Method::PATCH, &format!("/devices/{CAM}"), json!({"password": null})).await;
        assert_eq!(s, 200);
        assert_eq!(register(&own, &base, CAM, "viid-secret").await, 200);
        gw.shutdown().await;
    }

    /// With `digest_every_request`, a request from the registered address without a digest is
    /// challenged; answering the challenge (with the registration's username) is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digest_on_every_request_when_the_view_library_asks_for_it() {
        let (gw, base, own) = registered("digest_every_request = true\n").await;
        let body = json!({"KeepaliveObject": {"DeviceID": CAM}});
        let (s, www, _) = post(&own, &base, "/VIID/System/Keepalive", Some(CAM), None, &body).await;
        assert_eq!(s, 401);
        let www = www.expect("challenge");
        let wrong = digest(&www, CAM, "not-it", "POST", "/VIID/System/Keepalive", 1);
        assert_eq!(post(&own, &base, "/VIID/System/Keepalive", Some(CAM), Some(wrong), &body).await.0, 401);
        let right = digest(&www, CAM, "viid-secret", "POST", "/VIID/System/Keepalive", 2);
        let (s, _, v) = post(&own, &base, "/VIID/System/Keepalive", Some(CAM), Some(right.clone()), &body).await;
        assert_eq!(s, 200, "{v}");
        // The same nonce count again is a replay.
        assert_eq!(post(&own, &base, "/VIID/System/Keepalive", Some(CAM), Some(right), &body).await.0, 401);
        gw.shutdown().await;
    }

    /// A checkpoint files records for itself and the devices it carries, never for another
    /// checkpoint or a device of another protocol; a device it names first is placed under it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_speaks_only_for_itself_and_what_it_carries() {
        let gw = TestGateway::start(Db::Sqlite, &config("")).await;
        let base = format!("http://{}", gw.gat1400.expect("GA/T 1400"));
        let (s, b) = gw
            .api
            .post(
                "/devices",
                json!({"id": "gate-09", "name": "9号门", "kind": "access_control", "protocol": "external"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let own = from([127, 0, 0, 1]);
        assert_eq!(register(&own, &base, CAM, "viid-secret").await, 200);
        assert_eq!(register(&own, &base, CAM2, "viid-secret").await, 200);
        let carried = "42010200001190000777";
        let (scene, crop) = (image(3, 4096), image(4, 1024));
        let body = faces(vec![
            face(1, Some("gate-09"), &scene, &crop),
            face(2, Some(CAM2), &scene, &crop),
            face(3, Some(CAM), &scene, &crop),
            face(4, Some(carried), &scene, &crop),
        ]);
        let (s, _, v) = post(&own, &base, "/VIID/Faces", Some(CAM), None, &body).await;
        assert_eq!(s, 200, "{v}");
        let answers = v["ResponseStatusListObject"]["ResponseStatusObject"].as_array().expect("answers").clone();
        let codes: Vec<_> = answers.iter().map(|a| a["StatusCode"].as_u64().unwrap_or(99)).collect();
        assert_eq!(codes, [4, 4, 0, 0], "{v}");
        for a in &answers[..2] {
            assert!(a["StatusString"].as_str().is_some_and(|t| t.contains("DeviceID")), "{a}");
        }
        for (device, n) in [("gate-09", 0), (CAM2, 0), (CAM, 1), (carried, 1)] {
            let (_, e) = gw.api.get(&format!("/events?device={device}")).await;
            assert_eq!(e["items"].as_array().map(Vec::len), Some(n), "{device}: {e}");
        }
        let (_, gate) = gw.api.get("/devices/gate-09").await;
        assert_ne!(gate["presence"]["state"], "online", "the external gate's presence is not touched: {gate}");
        let (_, c) = gw.api.get(&format!("/devices/{carried}")).await;
        assert_eq!(c["attrs"]["via"], CAM, "{c}");
        // The other checkpoint may not file for the device the first one carries.
        let (s, _, v) =
            post(&own, &base, "/VIID/Faces", Some(CAM2), None, &faces(vec![face(5, Some(carried), &scene, &crop)]))
                .await;
        assert_eq!(
            (s, &v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"]),
            (200, &json!(4)),
            "{v}"
        );
        // Nor register in the external gate's name.
        assert_eq!(register(&own, &base, "gate-09", "viid-secret").await, 403);
        gw.shutdown().await;
    }

    /// One request naming 200 unknown devices (item 6: 10,000 in the field) adds only the
    /// address's share of new devices a minute; the rest are refused per object, counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_device_ids_in_one_request_are_bounded() {
        let gw = TestGateway::start(
            Db::Sqlite,
            "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\npassword = \"viid-secret\"\n\
             [admission]\npolicy = \"quarantine\"\nnew_per_origin_per_minute = 50\n",
        )
        .await;
        let base = format!("http://{}", gw.gat1400.expect("GA/T 1400"));
        let own = from([127, 0, 0, 1]);
        let (s, b) = gw
            .api
            .post("/devices", json!({"id": CAM, "name": "卡口", "kind": "face_checkpoint", "protocol": "gat1400"}))
            .await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(register(&own, &base, CAM, "viid-secret").await, 200);
        let (scene, crop) = (image(5, 512), image(6, 256));
        let items: Vec<Value> =
            (0..200).map(|n| face(100 + n, Some(&format!("42010200001199{n:06}")), &scene, &crop)).collect();
        let (s, _, v) = post(&own, &base, "/VIID/Faces", Some(CAM), None, &faces(items)).await;
        assert_eq!(s, 200);
        let answers = v["ResponseStatusListObject"]["ResponseStatusObject"].as_array().expect("answers").clone();
        assert_eq!(answers.len(), 200);
        assert!(answers.iter().all(|a| a["StatusCode"] == 4), "none is stored: {v}");
        let (_, q) = gw.api.get("/devices?admission=quarantined&limit=500").await;
        assert_eq!(q["items"].as_array().map(Vec::len), Some(50), "{q}");
        let m = gw.api.metrics().await;
        assert_eq!(
            crate::support::metric(&m, "vigil_admission_refusals_total{reason=\"origin_rate\",source=\"gat1400\"}"),
            150.0,
            "{m}"
        );
        gw.shutdown().await;
    }

    /// A record whose "pictures" are a web page and random bytes is kept; the pictures are
    /// refused (counted, with the reason), so no image URL can ever serve a page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pictures_that_are_not_pictures_are_refused_and_the_record_kept() {
        let (gw, base, own) = registered("").await;
        let html = b"<html><body><script>fetch('/api/v1/devices')</script></body></html>".to_vec();
        let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (s, _, v) =
            post(&own, &base, "/VIID/Faces", Some(CAM), None, &faces(vec![face(9, Some(CAM), &html, &random)])).await;
        assert_eq!(
            (s, &v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"]),
            (200, &json!(0)),
            "{v}"
        );
        let (_, e) = gw.api.get(&format!("/events?device={CAM}")).await;
        assert_eq!(e["items"].as_array().map(Vec::len), Some(1), "the record is kept: {e}");
        assert_eq!(e["items"][0]["media"].as_array().map(Vec::len), Some(0), "no picture kept: {e}");
        let (_, rej) = gw.api.get("/rejections?source=gat1400&reason=not_an_image").await;
        assert_eq!(rej["items"].as_array().map(Vec::len), Some(2), "{rej}");
        gw.shutdown().await;
    }
}

/// The descriptor budget, deadlines and body budget on the device ports (issue #15, items 3
/// and 4): exhausting one port leaves the rest of the process answering.
mod exhaustion {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use crate::support::gateway::{config_toml, Db, Process, TestGateway};
    use crate::support::{free_port, metric};

    /// A TCP connection to `to` leaving from `ip`.
    async fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(IpAddr::from(ip), 0))?;
        s.connect(to).await
    }

    /// Whether the peer closes `s` within `within` (bytes it sends meanwhile are read and
    /// dropped).
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// A SIP message dribbled a byte at a time, and HTTP headers likewise on the GA/T 1400
    /// port, are closed at their deadlines, counted; a connection that sends whole messages
    /// slowly is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_senders_are_closed_at_their_deadlines() {
        let gw = TestGateway::start_with_sip(Db::Sqlite, "message_deadline = \"1s\"\n").await;
        let sip = gw.sip.expect("SIP");
        let mut slow = TcpStream::connect(sip).await.expect("connect");
        let mut dribble = tokio::spawn(async move {
            for b in b"REGISTER sip:4201040000 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999\r\n".iter().cycle().take(120)
            {
                if slow.write_all(&[*b]).await.is_err() {
                    return slow;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slow
        });
        let mut slow = tokio::select! {
            s = &mut dribble => s.expect("dribbler"),
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("a dribbling SIP sender was not closed"),
        };
        assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
        let m = gw.api.wait_for_metrics(Duration::from_secs(5), |m| m.contains("reason=\"deadline\"")).await;
        assert!(m.contains("vigil_connections_refused_total{listener=\"sip_tcp\",reason=\"deadline\"} 1"), "{m}");
        // CRLF keep-alives (RFC 5626) between messages are no message: the connection stays.
        let mut idle = TcpStream::connect(sip).await.expect("connect");
        for _ in 0..3 {
            idle.write_all(b"\r\n\r\n").await.expect("keep-alive");
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        assert!(!closed_within(&mut idle, Duration::from_millis(300)).await, "CRLF keep-alives are not a late message");
        gw.shutdown().await;

        let gw = TestGateway::start(
            Db::Sqlite,
            "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:0\"\nheader_deadline = \"1s\"\n",
        )
        .await;
        let mut slow = TcpStream::connect(gw.gat1400.expect("GA/T 1400")).await.expect("connect");
        slow.write_all(b"POST /VIID/Faces HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        let started = tokio::time::Instant::now();
        let mut closed = false;
        for _ in 0..100 {
            if slow.write_all(b"X").await.is_err() {
                closed = true;
                break;
            }
            if closed_within(&mut slow, Duration::from_millis(100)).await {
                closed = true;
                break;
            }
        }
        assert!(closed, "headers dribbled for {:?} were not cut off", started.elapsed());
        gw.shutdown().await;
    }

    /// A SIP peer that sends requests over TCP and never reads the answers (its receive
    /// window shut) has its connection closed within the deadline and counted as `unread`;
    /// its slot is given back, so such peers cannot hold the port's connections for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_never_reads_is_closed_at_the_deadline() {
        let gw = TestGateway::start_with_sip(Db::Sqlite, "message_deadline = \"1s\"\n").await;
        let sip = gw.sip.expect("SIP");
        let s = TcpSocket::new_v4().expect("socket");
        // The smallest receive buffer the kernel grants: the window shuts after a few answers.
        s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = s.connect(sip).await.expect("connect");
        let (_unread, mut wr) = stream.into_split();
        // OPTIONS is answered 200 to anyone; 20,000 answers are several MB, more than the
        // gateway's send buffer and the shut window hold together.
        let mut sent = 0;
        for n in 0..20_000u32 {
            let req = format!(
                "OPTIONS sip:4201040000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-unread-{n}\r\n\
                 From: <sip:42010400001110000001@4201040000>;tag=u{n}\r\nTo: <sip:4201040000@4201040000>\r\n\
                 Call-ID: unread-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            match tokio::time::timeout(Duration::from_secs(5), wr.write_all(req.as_bytes())).await {
                Ok(Ok(())) => sent += 1,
                // Closed by the gateway while still sending: what the test waits for below.
                Ok(Err(_)) => break,
                Err(_) => panic!("the gateway stopped reading requests after {sent}"),
            }
        }
        assert!(sent > 1000, "only {sent} requests went out");
        gw.api
            .wait_for_metrics(Duration::from_secs(10), |m| {
                metric(m, "vigil_connections_refused_total{listener=\"sip_tcp\",reason=\"unread\"}") == 1.0
                    && metric(m, "vigil_connections{listener=\"sip_tcp\"}") == 0.0
            })
            .await;
        // A peer that reads what it is sent keeps its connection past the deadline.
        let mut reader = TcpStream::connect(sip).await.expect("connect");
        reader
            .write_all(
                b"OPTIONS sip:4201040000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-read-1\r\n\
                  From: <sip:42010400001110000001@4201040000>;tag=r1\r\nTo: <sip:4201040000@4201040000>\r\n\
                  Call-ID: read-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            )
            .await
            .expect("write");
        let mut buf = [0u8; 2048];
        let n =
            tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await.expect("answer").expect("read");
        assert!(buf[..n].starts_with(b"SIP/2.0 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        assert!(!closed_within(&mut reader, Duration::from_millis(1500)).await, "a reading peer was closed");
        gw.shutdown().await;
    }

    /// 40 unauthenticated 15 MB posts in parallel to the view library are refused from their
    /// headers: the gateway's memory grows by no more than 64 MB.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unauthenticated_bodies_are_refused_unread() {
        const BODY: usize = 15_000_000;
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, viid) = (free_port(), free_port());
        let cfg = dir.path().join("vigil.toml");
        let extra = format!("[gat1400]\nenabled = true\nlisten = \"127.0.0.1:{viid}\"\n");
        std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, port, &extra)).expect("config");
        let gw = Process::start(&cfg, port, &dir.path().join("vigil.log")).await;
        let base = gw.rss();
        let to = SocketAddr::from(([127, 0, 0, 1], viid));
        let senders: Vec<_> = (0..40)
            .map(|i| {
                tokio::spawn(async move {
                    let s = TcpStream::connect(to).await.expect("connect");
                    let (mut rd, mut wr) = s.into_split();
                    let user = if i % 2 == 0 { "User-Identify: 42010200001190000001\r\n" } else { "" };
                    let head = format!(
                        "POST /VIID/Faces HTTP/1.1\r\nHost: x\r\nContent-Type: application/VIID+JSON\r\n{user}Content-Length: {BODY}\r\n\r\n"
                    );
                    let writer = tokio::spawn(async move {
                        if wr.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'7'; 64 * 1024];
                        let mut sent = 0;
                        while sent < BODY {
                            let n = chunk.len().min(BODY - sent);
                            if wr.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            sent += n;
                        }
                    });
                    let mut answer = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                    }
                    writer.abort();
                    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned()
                })
            })
            .collect();
        let mut peak = base;
        let all = futures_util::future::join_all(senders);
        tokio::pin!(all);
        let answers: Vec<String> = loop {
            tokio::select! {
                done = &mut all => {
                    peak = peak.max(gw.rss());
                    break done.into_iter().map(|r| r.expect("sender")).collect();
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => peak = peak.max(gw.rss()),
            }
        };
        assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 401")), "{answers:?}");
        let grew = peak.saturating_sub(base);
        eprintln!("vigil RSS {} MB before, peak {} MB during 40 × 15 MB unauthenticated posts", base >> 20, peak >> 20);
        assert!(grew <= 64 << 20, "RSS grew by {} MB (from {} MB)", grew >> 20, base >> 20);
    }

    /// With the open-file limit lowered to 512, SIP over TCP, the view library and the MQTT
    /// gate are filled from many addresses (and past one address's share): each port refuses
    /// what is beyond its share, counted, and the API and `/health` keep answering.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saturated_device_port_leaves_the_api_answering() {
        const NOFILE: u64 = 512;
        let caps = vigil::net::Budget::split(NOFILE);
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, sip, viid, mqtt) = (free_port(), free_port(), free_port(), free_port());
        let cfg = dir.path().join("vigil.toml");
        let extra = format!(
            "[gat1400]\nenabled = true\nlisten = \"127.0.0.1:{viid}\"\n[mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt}\"\n"
        );
        let text = config_toml(&dir.path().join("data"), None, port, &extra)
            .replace("[gb28181]\nlisten = \"127.0.0.1:0\"\n", &format!("[gb28181]\nlisten = \"127.0.0.1:{sip}\"\n"));
        assert!(text.contains(&format!("127.0.0.1:{sip}")), "the harness's [gb28181] table is where this test expects");
        std::fs::write(&cfg, text).expect("config");
        let gw = Process::start_with_nofile(&cfg, port, &dir.path().join("vigil.log"), NOFILE).await;

        let mut held = Vec::new();
        let per_address = vigil::net::Budget::per_address(caps.sip_tcp, 16, 1024);
        // One address past its share, then many addresses past the listener's.
        for _ in 0..per_address + 5 {
            held.push(connect_from([127, 0, 1, 1], SocketAddr::from(([127, 0, 0, 1], sip))).await.expect("connect"));
        }
        for a in 0..(caps.sip_tcp / 10 + 2) as u8 {
            for _ in 0..12 {
                held.push(
                    connect_from([127, 0, 2, a], SocketAddr::from(([127, 0, 0, 1], sip))).await.expect("connect"),
                );
            }
        }
        for a in 0..(caps.gat1400 / 4 + 2) as u8 {
            for _ in 0..6 {
                held.push(
                    connect_from([127, 0, 3, a], SocketAddr::from(([127, 0, 0, 1], viid))).await.expect("connect"),
                );
            }
        }
        // The embedded broker's gate: a device there holds three descriptors, so a third of
        // its share. Each connection logs in (a CONNECT with an hour of keep-alive, as an unknown
        // device under the quarantine policy may) and so stays until the test ends; one past
        // the share is closed unanswered.
        let mqtt_cap = caps.mqtt / 3;
        for a in 0..(mqtt_cap / 4 + 2) as u8 {
            for i in 0..6 {
                let mut s =
                    connect_from([127, 0, 4, a], SocketAddr::from(([127, 0, 0, 1], mqtt))).await.expect("connect");
                let login = vigil::protocol::mqtt::Connect {
                    clean_session: true,
                    keep_alive: 3600,
                    client_id: format!("hold-{a}-{i}"),
                    will: None,
                    username: Some(format!("SENSOR-{a}-{i}")),
                    password: Some(b"12345678".to_vec()),
                };
                s.write_all(&login.encode()).await.expect("CONNECT");
                let mut ack = [0u8; 4];
                if s.read_exact(&mut ack).await.is_ok() {
                    assert_eq!(ack, vigil::protocol::mqtt::connack(0), "a login within the share is accepted");
                    held.push(s);
                }
            }
        }
        let m = gw
            .api
            .wait_for_metrics(Duration::from_secs(20), |m| {
                metric(m, "vigil_connections{listener=\"sip_tcp\"}") as usize == caps.sip_tcp
                    && metric(m, "vigil_connections{listener=\"gat1400\"}") as usize == caps.gat1400
                    && metric(m, "vigil_connections{listener=\"mqtt\"}") as usize == mqtt_cap
            })
            .await;
        for (listener, reason) in [
            ("sip_tcp", "address_full"),
            ("sip_tcp", "listener_full"),
            ("gat1400", "listener_full"),
            ("mqtt", "listener_full"),
        ] {
            let name = format!("vigil_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}");
            assert!(metric(&m, &name) >= 1.0, "{name}:\n{m}");
        }
        for _ in 0..20 {
            let r = reqwest::get(format!("{}/api/v1/health", gw.url)).await.expect("health answers");
            assert!(r.status().is_success());
            let (s, _) = gw.api.get("/devices").await;
            assert_eq!(s, 200);
        }
        let log = std::fs::read_to_string(dir.path().join("vigil.log")).unwrap_or_default();
        assert!(!log.contains("Too many open files"), "{log}");
        drop(held);
    }
}

/// Quarantine under an id flood (issue #15, item 6): new devices are capped per source
/// address and in total, rate-limited per address, and those nobody approves expire.
mod quarantine {
    use std::time::Duration;

    use serde_json::json;

    use crate::gb28181::Device;
    use crate::support::gateway::{Db, TestGateway};
    use crate::support::metric;

    fn id(origin: u8, n: u32) -> String {
        format!("420104000013200{origin:02}{n:03}")
    }

    async fn register_from(origin: u8, n: u32, sip: std::net::SocketAddr) -> String {
        let mut d = Device::new_at(&id(origin, n), sip, &format!("127.0.0.{origin}:0")).await;
        let answer = d.register(3600, "12345678").await;
        answer.lines().next().unwrap_or("").to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_flood_fills_only_its_share_of_the_quarantine() {
        let gw = TestGateway::start(
            Db::Sqlite,
            "[admission]\npolicy = \"quarantine\"\nmax_quarantined = 30\nmax_quarantined_per_origin = 20\nnew_per_origin_per_minute = 25\n",
        )
        .await;
        let sip = gw.sip.expect("SIP");
        // Address A: twenty wait in quarantine, then its share is full.
        let mut a = Vec::new();
        for n in 0..25 {
            a.push(register_from(5, n, sip).await);
        }
        // A quarantined device is told 403 (it waits for approval) like one refused outright;
        // what differs is whether it is in the registry.
        assert!(a.iter().all(|s| s.starts_with("SIP/2.0 403")), "{a:?}");
        // Address B: ten more fill the quarantine (30), five are refused.
        for n in 0..15 {
            register_from(6, n, sip).await;
        }
        let (_, q) = gw.api.get("/devices?admission=quarantined&limit=500").await;
        let waiting = q["items"].as_array().map(Vec::len);
        assert_eq!(waiting, Some(30), "{q}");
        // An operator approves ten of A's: room again, but A has announced 20 new devices this
        // minute and may announce 5 more.
        for n in 0..10 {
            let (s, b) = gw
                .api
                .send(reqwest::Method::PATCH, &format!("/devices/{}", id(5, n)), json!({"admission": "approved"}))
                .await;
            assert_eq!(s, 200, "{b}");
        }
        let mut more = Vec::new();
        for n in 100..110 {
            more.push(register_from(5, n, sip).await);
        }
        assert!(more[5..].iter().all(|s| s.starts_with("SIP/2.0 503")), "{more:?}");
        let (_, q) = gw.api.get("/devices?admission=quarantined&limit=500").await;
        assert_eq!(q["items"].as_array().map(Vec::len), Some(25), "{q}");
        let m = gw.api.metrics().await;
        for reason in ["origin_quarantine_full", "quarantine_full", "origin_rate"] {
            let name = format!("vigil_admission_refusals_total{{reason=\"{reason}\",source=\"gb28181\"}}");
            assert_eq!(metric(&m, &name), 5.0, "{name}\n{m}");
        }
        gw.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quarantined_devices_nobody_approves_expire() {
        let gw =
            TestGateway::start(Db::Sqlite, "[admission]\npolicy = \"quarantine\"\nquarantine_ttl = \"2s\"\n").await;
        let sip = gw.sip.expect("SIP");
        for n in 0..3 {
            register_from(7, n, sip).await;
        }
        let (s, b) = gw
            .api
            .send(reqwest::Method::PATCH, &format!("/devices/{}", id(7, 0)), json!({"admission": "approved"}))
            .await;
        assert_eq!(s, 200, "{b}");
        gw.api
            .wait_for("/devices?admission=quarantined", Duration::from_secs(15), |q| {
                q["items"].as_array().is_some_and(Vec::is_empty)
            })
            .await;
        for n in 1..3 {
            assert_eq!(gw.api.get(&format!("/devices/{}", id(7, n))).await.0, 404);
        }
        assert_eq!(gw.api.get(&format!("/devices/{}", id(7, 0))).await.0, 200, "the approved one stays");
        let m = gw.api.metrics().await;
        assert_eq!(metric(&m, "vigil_quarantine_expired_total"), 2.0, "{m}");
        gw.shutdown().await;
    }
}

/// The embedded MQTT broker as an attacker on the community network would try it (issue #15,
/// item 5), with Mosquitto's own clients: no anonymous access, no reading device topics, no
/// publishing, willing or retaining as another device, no taking vigil's session.
mod mqtt {
    use std::process::{Command, Output, Stdio};
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::support::gateway::{config_toml, Process};
    use crate::support::{free_port, require_command};

    struct Broker {
        port: u16,
        vigil: Process,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Broker {
        start_with("").await
    }

    /// The embedded broker with `mqtt_extra` added to its `[mqtt]` table.
    async fn start_with(mqtt_extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, port) = (free_port(), free_port());
        let cfg = dir.path().join("vigil.toml");
        let extra = format!(
            "[mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\nclient_id = \"vigil-embedded\"\n{mqtt_extra}[admission]\npolicy = \"open\"\n"
        );
        std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, http, &extra)).expect("config");
        let vigil = Process::start(&cfg, http, &dir.path().join("vigil.log")).await;
        Broker { port, vigil, _dir: dir }
    }

    /// `mosquitto_pub` (QoS 1) as `user` (`None`: anonymous) with extra arguments.
    fn publish(b: &Broker, user: Option<(&str, &str)>, topic: &str, payload: &str, extra: &[&str]) -> Output {
        let mut c = Command::new(require_command("mosquitto_pub"));
        c.args(["-h", "127.0.0.1", "-p", &b.port.to_string(), "-q", "1", "-t", topic, "-m", payload]);
        if let Some((u, p)) = user {
            c.args(["-u", u, "-P", p]);
        }
        c.args(extra).output().expect("mosquitto_pub")
    }

    fn access(seq: u32, card: &str) -> String {
        json!({"ts": chrono::Utc::now().timestamp_millis(), "seq": seq, "credential": "card", "card": card,
               "person": "R1", "door": "east-gate", "direction": "in"})
        .to_string()
    }

    async fn events(b: &Broker, device: &str) -> Vec<Value> {
        b.vigil.api.get(&format!("/events?device={device}")).await.1["items"].as_array().cloned().unwrap_or_default()
    }

    async fn refusals(b: &Broker, reason: &str) -> Vec<Value> {
        b.vigil.api.get(&format!("/rejections?source=mqtt&reason={reason}")).await.1["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    const A: &str = "AC-0001";
    const B: &str = "AC-0002";
    const PW: &str = "12345678";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nobody_connects_unnamed_and_guessing_a_password_is_limited() {
        let b = start().await;
        let out = publish(&b, None, &format!("vigil/XQ001/{A}/access"), &access(1, "1"), &[]);
        assert!(!out.status.success(), "anonymous: {}", String::from_utf8_lossy(&out.stderr));
        // An id too long to stay whole under the device's name is refused at CONNECT.
        let long = "x".repeat(300);
        let out = publish(&b, Some((A, PW)), &format!("vigil/XQ001/{A}/access"), &access(1, "1"), &["-i", &long]);
        assert!(!out.status.success(), "a 300-byte client id");
        let mut answers = Vec::new();
        for i in 0..8 {
            let guess = format!("guess-{i}");
            let out = publish(
                &b,
                Some((A, &guess)),
                &format!("vigil/XQ001/{A}/access"),
                &access(1, "1"),
                &["-A", "127.0.0.9"],
            );
            answers.push(out.status.success());
        }
        assert!(answers.iter().all(|ok| !ok), "{answers:?}");
        let out = publish(&b, Some((A, PW)), &format!("vigil/XQ001/{A}/access"), &access(1, "1"), &["-A", "127.0.0.9"]);
        assert!(!out.status.success(), "the guessing address is refused unheard, even with the password");
        let out = publish(&b, Some((A, PW)), &format!("vigil/XQ001/{A}/access"), &access(2, "2"), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(refusals(&b, "wrong_password").await.len(), 5);
        assert!(!refusals(&b, "too_many_failures").await.is_empty());
        assert!(!refusals(&b, "anonymous").await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_speaks_and_reads_only_as_itself() {
        let b = start().await;
        // B listens to everything, then to A's topic: both refused, nothing read.
        let mut listeners = Vec::new();
        for filter in ["#".to_owned(), format!("vigil/XQ001/{A}/access")] {
            let child = Command::new(require_command("mosquitto_sub"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &b.port.to_string(),
                    "-u",
                    B,
                    "-P",
                    PW,
                    "-t",
                    &filter,
                    "-W",
                    "4",
                    "-C",
                    "1",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub");
            listeners.push(child);
        }
        b.vigil
            .api
            .wait_for("/rejections?source=mqtt&reason=acl_subscribe", Duration::from_secs(10), |r| {
                r["items"].as_array().is_some_and(|i| i.len() >= 2)
            })
            .await;
        let out = publish(&b, Some((A, PW)), &format!("vigil/XQ001/{A}/access"), &access(1, "6222020000001234"), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        b.vigil
            .api
            .wait_for(&format!("/events?device={A}"), Duration::from_secs(10), |e| e["items"][0].is_object())
            .await;
        for l in listeners {
            let out = l.wait_with_output().expect("mosquitto_sub ends");
            assert!(out.stdout.is_empty(), "a device read another's record: {}", String::from_utf8_lossy(&out.stdout));
        }
        // B's own downlink (an exact topic carrying its id, not a device uplink) is allowed.
        let out = Command::new(require_command("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &b.port.to_string(),
                "-u",
                B,
                "-P",
                PW,
                "-t",
                &format!("cmd/{B}"),
                "-W",
                "1",
            ])
            .output()
            .expect("mosquitto_sub");
        assert_eq!(
            out.status.code(),
            Some(27),
            "subscribed, then timed out waiting: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // B files a record on A's topic: dropped with the connection, counted, kept.
        publish(&b, Some((B, PW)), &format!("vigil/XQ001/{A}/access"), &access(2, "999"), &[]);
        let kept = refusals(&b, "not_own_topic").await;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(events(&b, A).await.len(), 1, "only A's own record");
        // B's last will on A's status topic, retained: refused at CONNECT.
        let out = publish(
            &b,
            Some((B, PW)),
            &format!("vigil/XQ001/{B}/heartbeat"),
            "{}",
            &["--will-topic", &format!("vigil/XQ001/{A}/status"), "--will-payload", "offline", "--will-retain"],
        );
        assert!(!out.status.success(), "a will in A's name");
        assert_eq!(refusals(&b, "acl_will").await.len(), 1);
        // A retained message too large for the cap, on B's own topic: refused.
        let big = "x".repeat(10_000);
        publish(&b, Some((B, PW)), &format!("vigil/XQ001/{B}/status"), &big, &["-r"]);
        assert_eq!(refusals(&b, "retained_too_large").await.len(), 1);
        // An RTSP or GB/T 28181 device's id is no MQTT login.
        b.vigil
            .api
            .post(
                "/devices",
                json!({"id": "gate-09", "name": "9号门", "kind": "access_control", "protocol": "external"}),
            )
            .await;
        let out = publish(&b, Some(("gate-09", PW)), "vigil/XQ001/gate-09/access", &access(1, "1"), &[]);
        assert!(!out.status.success());
        assert!(events(&b, "gate-09").await.is_empty());
    }

    /// A client that takes vigil's own client id connects as itself (its id is put under its
    /// name): vigil's session stays, and records keep arriving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vigils_own_session_cannot_be_taken_over() {
        let b = start().await;
        let out =
            publish(&b, Some((B, PW)), &format!("vigil/XQ001/{B}/access"), &access(1, "1"), &["-i", "vigil-embedded"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = publish(&b, Some((A, PW)), &format!("vigil/XQ001/{A}/access"), &access(1, "1"), &[]);
        assert!(out.status.success());
        b.vigil
            .api
            .wait_for(&format!("/events?device={A}"), Duration::from_secs(10), |e| e["items"][0].is_object())
            .await;
        b.vigil
            .api
            .wait_for(&format!("/events?device={B}"), Duration::from_secs(10), |e| e["items"][0].is_object())
            .await;
        let m = b.vigil.api.metrics().await;
        assert_eq!(crate::support::metric(&m, "vigil_mqtt_connected"), 1.0, "{m}");
        assert_eq!(
            crate::support::metric(&m, "vigil_mqtt_connection_errors_total"),
            0.0,
            "vigil was never kicked: {m}"
        );
    }

    /// MQTT 3.1.1 packets written by hand: what a client that never reads its socket sends.
    mod raw {
        fn remaining(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let b = (n % 128) as u8;
                n /= 128;
                out.push(if n > 0 { b | 0x80 } else { b });
                if n == 0 {
                    break;
                }
            }
        }

        fn string(s: &str, out: &mut Vec<u8>) {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }

        fn packet(first: u8, body: &[u8]) -> Vec<u8> {
            let mut p = vec![first];
            remaining(body.len(), &mut p);
            p.extend_from_slice(body);
            p
        }

        /// An anonymous CONNECT (clean session, keep-alive 60 s).
        pub fn connect(client_id: &str) -> Vec<u8> {
            let mut b = Vec::new();
            string("MQTT", &mut b);
            b.extend_from_slice(&[4, 0x02, 0, 60]);
            string(client_id, &mut b);
            packet(0x10, &b)
        }

        pub fn subscribe(filter: &str) -> Vec<u8> {
            let mut b = vec![0, 1];
            string(filter, &mut b);
            b.push(0);
            packet(0x82, &b)
        }

        /// A QoS 0 PUBLISH.
        pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
            let mut b = Vec::new();
            string(topic, &mut b);
            b.extend_from_slice(payload);
            packet(0x30, &b)
        }
    }

    /// Through the gate, a client that stops reading what the broker sends it (its receive
    /// window shut) is closed at `mqtt.message_deadline` and counted as `unread`, and one that
    /// sends half a packet is closed at the same deadline and counted as `deadline`; both give
    /// their slot back, and a client that reads keeps its connection. (Anonymous clients of a
    /// lab broker are the ones that may subscribe to anything, which makes the broker send a
    /// lot; a device's connection is relayed by the same code.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_or_never_finishes_a_packet_is_closed_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpSocket, TcpStream};

        use crate::support::metric;

        let b = start_with("allow_anonymous = true\nmessage_deadline = \"1s\"\n").await;
        let gate = std::net::SocketAddr::from(([127, 0, 0, 1], b.port));
        // CONNACK (4 bytes) and SUBACK (5 bytes): the subscription is in place.
        async fn subscribed(s: &mut TcpStream) {
            let mut acks = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut acks))
                .await
                .expect("CONNACK and SUBACK in time")
                .expect("read");
            assert_eq!((acks[0], acks[3], acks[4]), (0x20, 0, 0x90), "{acks:?}");
        }
        let s = TcpSocket::new_v4().expect("socket");
        // The smallest receive buffer the kernel grants: the window shuts after a few packets.
        s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut sleeper = s.connect(gate).await.expect("connect");
        sleeper.write_all(&[raw::connect("sleeper"), raw::subscribe("lab/#")].concat()).await.expect("write");
        subscribed(&mut sleeper).await;
        // The reader reads all it is sent.
        let mut reader = TcpStream::connect(gate).await.expect("connect");
        reader.write_all(&[raw::connect("reader"), raw::subscribe("lab/#")].concat()).await.expect("write");
        subscribed(&mut reader).await;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    _ = &mut stopped => return true,
                    n = reader.read(&mut buf) => if !matches!(n, Ok(n) if n > 0) { return false },
                }
            }
        });
        // 32 MB published: far more than the sleeper's window and the gate's send buffer hold.
        let mut publisher = TcpStream::connect(gate).await.expect("connect");
        publisher.write_all(&raw::connect("publisher")).await.expect("write");
        let chunk = raw::publish("lab/flood", &[b'x'; 64 * 1024]);
        let counted = |m: &str, reason: &str| {
            metric(m, &format!("vigil_connections_refused_total{{listener=\"mqtt\",reason=\"{reason}\"}}"))
        };
        let mut sent = 0;
        while sent < 512 && counted(&b.vigil.api.metrics().await, "unread") == 0.0 {
            for _ in 0..32 {
                tokio::time::timeout(Duration::from_secs(20), publisher.write_all(&chunk))
                    .await
                    .expect("the gate keeps reading the publisher")
                    .expect("publish");
                sent += 1;
            }
        }
        b.vigil.api.wait_for_metrics(Duration::from_secs(10), |m| counted(m, "unread") == 1.0).await;
        let mut rest = Vec::new();
        let gone = tokio::time::timeout(Duration::from_secs(10), sleeper.read_to_end(&mut rest)).await;
        assert!(gone.is_ok(), "the sleeper's connection is closed once the gate gave up on it");

        // Half a PUBLISH, never finished.
        let mut half = TcpStream::connect(gate).await.expect("connect");
        half.write_all(&raw::connect("half")).await.expect("write");
        let whole = raw::publish("lab/half", b"0123456789");
        half.write_all(&whole[..whole.len() / 2]).await.expect("write");
        let m = b.vigil.api.wait_for_metrics(Duration::from_secs(10), |m| counted(m, "deadline") == 1.0).await;
        assert_eq!(counted(&m, "unread"), 1.0, "{m}");
        let mut rest = Vec::new();
        let gone = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut rest)).await;
        assert!(gone.is_ok(), "the half packet's connection is closed");
        // The reader read through the flood and is still connected: the half packet was cut
        // only after a whole deadline, so the reader has outlived one.
        let _ = stop.send(());
        assert!(reading.await.expect("reader"), "a client that reads was closed");
        // The slots came back: the sleeper, the half packet and the reader hold none; the
        // publisher is what is left (vigil's own client is not through the gate).
        b.vigil
            .api
            .wait_for_metrics(Duration::from_secs(10), |m| metric(m, "vigil_connections{listener=\"mqtt\"}") == 1.0)
            .await;
        drop(publisher);
    }

    /// `vigil mqtt-acl` writes Mosquitto's files from the registry, and a real Mosquitto
    /// holds devices to the gate's rules with them: logins by id and password, each device
    /// writes only its own topics, no device reads, vigil's user reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vigil_mqtt_acl_holds_a_real_mosquitto_to_the_same_rules() {
        use crate::support::mqtt::Mosquitto;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("vigil.toml");
        let extra = format!(
            "[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{port}\"\nusername = \"vigil-sub\"\npassword = \"sub-secret\"\n"
        );
        std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, free_port(), &extra)).expect("config");
        let csv = dir.path().join("devices.csv");
        std::fs::write(&csv, format!("id,name,kind,protocol,org_id,rtsp_url,profile\n{A},A,access_control,mqtt,,,\n{B},B,access_control,mqtt,,,\ncam-1,C,camera,rtsp,,rtsp://127.0.0.1/x,\n"))
            .expect("csv");
        let vigil = env!("CARGO_BIN_EXE_vigil");
        let out = Command::new(vigil).args(["import"]).arg(&csv).arg("--config").arg(&cfg).output().expect("import");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let files = dir.path().join("mosquitto");
        let out = Command::new(vigil)
            .args(["mqtt-acl", "--out"])
            .arg(&files)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("mqtt-acl");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("(2 devices)"), "only the MQTT devices: {said}");
        let acl = std::fs::read_to_string(files.join("vigil.acl")).expect("acl");
        assert!(acl.contains("pattern write vigil/+/%u/+") && acl.contains("user vigil-sub"), "{acl}");
        {
            use std::os::unix::fs::PermissionsExt as _;
            // Mosquitto may drop to its own user when started as root: let it read the files.
            std::fs::set_permissions(files.join("vigil.passwd"), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let broker = Mosquitto::start_with(
            port,
            &format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                files.join("vigil.passwd").display(),
                files.join("vigil.acl").display()
            ),
        )
        .await;
        let p = broker.port.to_string();
        // A persistent session for vigil's user (QoS 1): what arrives while it is away is
        // queued, so no timing decides what it reads.
        let sub = |user: &str, pw: &str, filter: &str, extra: &[&str]| {
            Command::new(require_command("mosquitto_sub"))
                .args(["-h", "127.0.0.1", "-p", &p, "-u", user, "-P", pw, "-t", filter, "-q", "1", "-v"])
                .args(extra)
                .output()
                .expect("mosquitto_sub")
        };
        let first = sub("vigil-sub", "sub-secret", "vigil/#", &["-c", "-i", "vigil-reader", "-W", "1"]);
        assert_eq!(
            first.status.code(),
            Some(27),
            "subscribed, then timed out: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        // B subscribes to everything with a session of its own (Mosquitto grants the
        // subscription and filters each message by the ACL when it delivers it).
        sub(B, PW, "#", &["-c", "-i", "snoop", "-W", "1"]);
        let pubs = |user: Option<(&str, &str)>, topic: &str, payload: &str| {
            let mut c = Command::new(require_command("mosquitto_pub"));
            c.args(["-h", "127.0.0.1", "-p", &p, "-q", "1", "-t", topic, "-m", payload]);
            if let Some((u, pw)) = user {
                c.args(["-u", u, "-P", pw]);
            }
            c.output().expect("mosquitto_pub")
        };
        assert!(
            pubs(Some((B, PW)), &format!("vigil/XQ001/{A}/access"), "forged-by-B").status.success(),
            "Mosquitto acks and drops"
        );
        assert!(!pubs(None, &format!("vigil/XQ001/{A}/access"), "anonymous").status.success());
        assert!(!pubs(Some((A, "wrong")), &format!("vigil/XQ001/{A}/access"), "guess").status.success());
        assert!(
            !pubs(Some(("cam-1", PW)), "vigil/XQ001/cam-1/access", "rtsp").status.success(),
            "no login for an RTSP camera"
        );
        assert!(pubs(Some((A, PW)), &format!("vigil/XQ001/{A}/access"), "from-A").status.success());
        let read = sub("vigil-sub", "sub-secret", "vigil/#", &["-c", "-i", "vigil-reader", "-C", "1", "-W", "5"]);
        let read = String::from_utf8_lossy(&read.stdout).into_owned();
        assert_eq!(
            read.lines().collect::<Vec<_>>(),
            [format!("vigil/XQ001/{A}/access from-A")],
            "only A's own record: {read}"
        );
        let snooped = sub(B, PW, "#", &["-c", "-i", "snoop", "-C", "1", "-W", "2"]);
        assert!(snooped.stdout.is_empty(), "a device read: {}", String::from_utf8_lossy(&snooped.stdout));
    }
}

/// The API over the built-in TLS (`[http] tls_cert` / `tls_key`): curl verifies the
/// certificate and gets the API; plain HTTP on that port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_its_own_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]))];
    let cert = params.self_signed(&key).expect("self-signed");
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.pem()).expect("cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("key");
    let text = config_toml(&dir.path().join("data"), None, 0, "").replacen(
        "[http]\n",
        &format!("[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert_path.display(), key_path.display()),
        1,
    );
    assert!(text.contains("tls_cert"), "the harness's [http] table is where this test expects");
    let config = vigil::Config::from_toml_with_env(&text, false).expect("config");
    let running = vigil::start(config).await.expect("starts");
    let addr = running.http_addr;
    let curl = crate::support::require_command("curl");
    let out = std::process::Command::new(&curl)
        .args(["-s", "--cacert"])
        .arg(&cert_path)
        .args(["-H", &format!("Authorization: Bearer {ADMIN}"), "-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/api/v1/orgs", addr.port()))
        .output()
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.ends_with("\n200"), "{said} {}", String::from_utf8_lossy(&out.stderr));
    let plain = std::process::Command::new(&curl)
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/api/v1/health", addr.port()))
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "plain HTTP on the TLS port");
    running.shutdown().await;
}

/// A flood of unparseable SIP datagrams is counted one by one but written to the log as one
/// line per interval with the count held back (issue #15, item 8): 3,000 datagrams, a handful
/// of lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_is_counted_not_logged_line_by_line() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, sip) = (crate::support::free_port(), crate::support::free_port());
    let cfg = dir.path().join("vigil.toml");
    let text = config_toml(&dir.path().join("data"), None, port, "")
        .replace("[gb28181]\nlisten = \"127.0.0.1:0\"\n", &format!("[gb28181]\nlisten = \"127.0.0.1:{sip}\"\n"));
    std::fs::write(&cfg, text).expect("config");
    let log = dir.path().join("vigil.log");
    let gw = Process::start(&cfg, port, &log).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..N {
        let garbage = format!("NOT SIP {i}\r\n\r\n");
        sock.send_to(garbage.as_bytes(), ("127.0.0.1", sip)).await.expect("send");
        if i % 200 == 199 {
            // Let the server keep up (the kernel drops what overflows its buffer).
            let want = (i + 1) as f64;
            gw.api
                .wait_for_metrics(std::time::Duration::from_secs(10), |m| {
                    crate::support::metric(m, "vigil_sip_messages_total{direction=\"in\",method=\"invalid\"}") >= want
                })
                .await;
        }
    }
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    let written = lines.lines().filter(|l| l.contains("Malformed SIP message refused")).count();
    assert!((1..=5).contains(&written), "{written} log lines for {N} datagrams");
    drop(gw);
}
