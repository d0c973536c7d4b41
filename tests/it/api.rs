//! The operator's day, end to end, against the real binary: orgs and a device CSV go in
//! over the API, observations drive presence, devices go online and — with no further
//! evidence — offline at the right time with the right reason; the rate by org and kind,
//! the sampled history, the daily report (JSON and CSV) and /metrics all agree.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::free_port;
use crate::support::gateway::{config_toml, Process, VIEWER};

const CSV: &str = "id,name,kind,protocol,org_id,rtsp_url,profile
42010400001320000001,古田一路口 1,camera,gb28181,,,
42010400001320000002,古田一路口 2,camera,gb28181,gutian-1,,
gate-01,一号门门禁,access_control,external,gutian-1,,
gate-02,二号门门禁,access_control,external,hanjiadun,,
bar-01,北门道闸,barrier,external,hanjiadun,,
";

fn find<'a>(items: &'a Value, key: &str, value: &str) -> &'a Value {
    items
        .as_array()
        .and_then(|a| a.iter().find(|i| i[key] == value))
        .unwrap_or_else(|| panic!("no item with {key}={value} in {items}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_go_online_and_offline_with_reasons_and_the_rate_report_and_metrics_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, port, "[assessment]\nsample_every = \"10s\"\n"))
        .expect("write config");
    let gw = Process::start(&cfg, port, &dir.path().join("vigil.log")).await;
    let api = &gw.api;

    // Auth: no token 401, a viewer cannot write.
    assert_eq!(api.with_token(None).get("/orgs").await.0, 401);
    assert_eq!(api.with_token(Some("wrong-token")).get("/orgs").await.0, 401);
    let (s, body) =
        api.with_token(Some(VIEWER)).post("/orgs", json!({"id": "x", "name": "x", "kind": "district"})).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(api.with_token(None).get("/health").await.0, 200, "health is public by default");

    // The org tree.
    for (id, name, kind, parent, prefix) in [
        ("qiaokou", "硚口区", "district", None, Some("420104")),
        ("gutian", "古田街道", "street", Some("qiaokou"), None),
        ("hanjiadun", "韩家墩街道", "street", Some("qiaokou"), None),
        ("gutian-1", "古田一路社区", "community", Some("gutian"), None),
    ] {
        let (s, body) = api
            .post("/orgs", json!({"id": id, "name": name, "kind": kind, "parent_id": parent, "gb_prefix": prefix}))
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) = api.post("/orgs", json!({"id": "bad", "name": "x", "kind": "province"})).await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("kind")), "{body}");
    let (s, body) =
        api.post("/orgs", json!({"id": "orphan", "name": "x", "kind": "street", "parent_id": "nowhere"})).await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("parent_id")), "{body}");

    // A bad CSV changes nothing and names every bad line and field.
    let bad = "id,name,kind,protocol,org_id,rtsp_url,profile\ngood-1,ok,camera,external,gutian,,\nbad 2,x,robot,external,gutian,,\ncam-3,x,camera,rtsp,gutian,,\n42010400001320000009,x,camera,gb28181,nowhere,,\n";
    let (s, body) = api.post_csv("/devices/import", bad).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_csv");
    let rows: Vec<(u64, String)> = body["error"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["line"].as_u64().expect("line"), r["field"].as_str().expect("field").to_owned()))
        .collect();
    assert_eq!(rows, vec![(3, "kind".into()), (4, "rtsp_url".into()), (5, "org_id".into())], "{body}");
    assert_eq!(api.get("/devices").await.1["items"].as_array().map(Vec::len), Some(0), "nothing half-written");

    // The good CSV; the GB/T 28181 camera without an org is placed by its 420104 prefix.
    let (s, body) = api.post_csv("/devices/import", CSV).await;
    assert_eq!((s, body["created"].as_u64()), (200, Some(5)), "{body}");
    let (_, cam1) = api.get("/devices/42010400001320000001").await;
    assert_eq!(cam1["org_id"], "qiaokou");
    assert_eq!(cam1["presence"]["state"], "unknown");
    let (s, body) = api.post_csv("/devices/import", CSV).await;
    assert_eq!((s, body["created"].as_u64(), body["updated"].as_u64()), (200, Some(0), Some(5)), "re-import updates");

    // Evidence: gate-01 and both cameras alive for 2 s, gate-02 dead, bar-01 nothing.
    let (s, body) = api
        .post(
            "/observations",
            json!([
                {"device_id": "gate-01", "kind": "alive", "ttl": "2s"},
                {"device_id": "42010400001320000001", "kind": "alive", "ttl": "60s"},
                {"device_id": "42010400001320000002", "kind": "alive", "ttl": "60s"},
                {"device_id": "gate-02", "kind": "dead", "reason": "power cut in building 3"},
            ]),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let alive_at = tokio::time::Instant::now();
    let (s, body) = api.post("/observations", json!({"device_id": "gate-01", "kind": "alive", "ttl": "soon"})).await;
    assert_eq!((s, body["error"]["field"].as_str()), (422, Some("ttl")), "{body}");
    assert_eq!(api.post("/observations", json!({"device_id": "nope", "kind": "alive"})).await.0, 404);

    let gate = api.wait_for("/devices/gate-01", Duration::from_secs(5), |d| d["presence"]["state"] == "online").await;
    assert_eq!(gate["presence"]["reason"], "alive");
    let (_, g2) = api.get("/devices/gate-02").await;
    assert_eq!((g2["presence"]["state"].as_str(), g2["presence"]["reason"].as_str()), (Some("offline"), Some("dead")));
    assert_eq!(g2["presence"]["detail"], "power cut in building 3");

    // Live rate: 3 of 5 online; by org subtree and by kind.
    let rate = api.wait_for("/online-rate?group_by=org", Duration::from_secs(5), |r| r["online"] == 3).await;
    assert_eq!(rate["total"], 5);
    assert_eq!(find(&rate["groups"], "key", "gutian-1")["online"], 2);
    assert_eq!(find(&rate["groups"], "key", "gutian-1")["total"], 2);
    assert_eq!(find(&rate["groups"], "key", "hanjiadun")["online"], 0);
    assert_eq!(find(&rate["groups"], "key", "hanjiadun")["total"], 2);
    let (_, by_kind) = api.get("/online-rate?group_by=kind&org=qiaokou").await;
    assert_eq!(find(&by_kind["groups"], "key", "camera")["rate"], 1.0);
    assert_eq!(find(&by_kind["groups"], "key", "access_control")["rate"], 0.5);
    assert_eq!(api.get("/online-rate?org=nowhere").await.0, 400);

    // With no further evidence, gate-01 goes offline when its 2 s TTL passes, not before.
    let gate = api.wait_for("/devices/gate-01", Duration::from_secs(6), |d| d["presence"]["state"] == "offline").await;
    let waited = alive_at.elapsed();
    assert!(waited >= Duration::from_millis(1900), "offline after only {waited:?}");
    assert!(waited < Duration::from_secs(4), "offline late: {waited:?}");
    assert_eq!(gate["presence"]["reason"], "ttl_expired");
    // Transitions reach the history table through presence's writer, a moment after the live
    // state shows them.
    let hist = api
        .wait_for("/devices/gate-01/presence/history", Duration::from_secs(5), |h| {
            h["items"].as_array().is_some_and(|i| i.len() >= 2)
        })
        .await;
    let steps: Vec<(String, String, String)> = hist["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["from"].as_str().unwrap_or("").into(),
                i["to"].as_str().unwrap_or("").into(),
                i["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("unknown".into(), "online".into(), "alive".into()),
            ("online".into(), "offline".into(), "ttl_expired".into())
        ]
    );

    // Maintenance leaves the denominator.
    let (s, _) = api.send(reqwest::Method::PATCH, "/devices/bar-01", json!({"maintenance": true})).await;
    assert_eq!(s, 200);
    let rate = api.wait_for("/online-rate", Duration::from_secs(5), |r| r["total"] == 4).await;
    assert_eq!((rate["online"].as_u64(), rate["excluded"].as_u64()), (Some(2), Some(1)));

    // The not-online list the dashboard shows: gate-01 and gate-02, with place and reason.
    let (_, off) = api.get("/presence/not-online?q=门禁").await;
    assert_eq!(off["total"], 2, "{off}");
    assert_eq!(find(&off["items"], "id", "gate-02")["place"], "硚口区 / 韩家墩街道");

    // The sampled history: samples are taken every 10 s, on the 10 s. A sample taken before
    // the devices above were added (a 10 s boundary can fall in between) counts none of them;
    // the next one counts them all.
    let hist = api
        .wait_for("/online-rate/history?step=10s", Duration::from_secs(25), |h| {
            h["points"].as_array().and_then(|p| p.last()).is_some_and(|p| p["total"].as_u64() >= Some(4))
        })
        .await;
    let p = hist["points"].as_array().and_then(|p| p.last()).expect("a point");
    assert!(p["total"].as_u64().is_some_and(|t| t >= 4), "{hist}");
    let (_, hist_org) = api.get("/online-rate/history?step=10s&org=gutian-1&kind=camera").await;
    let last = hist_org["points"].as_array().and_then(|p| p.last()).cloned().unwrap_or_default();
    assert_eq!(last["total"], 1, "{hist_org}");

    // The daily report, JSON and CSV.
    let (s, report) = api.get("/reports/online/daily").await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["excluded"]["maintenance"], 1);
    let gw_row = report["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["org_id"].is_null() && r["kind"] == "all"))
        .expect("gateway row");
    assert_eq!(gw_row["devices"], 4);
    assert!(gw_row["sampled_rate"].as_f64().is_some(), "{gw_row}");
    let avail = gw_row["availability"].as_f64().expect("availability");
    assert!(avail > 0.0 && avail < 1.0, "{avail}");
    assert_eq!(gw_row["never_online"], 1, "gate-02 was never online");
    let off = find(&report["offline"], "device_id", "gate-02");
    assert_eq!((off["last_reason"].as_str(), off["offline_at_end"].as_bool()), (Some("dead"), Some(true)));
    let (s, csv) = api.get_text("/reports/online/daily", "text/csv").await;
    assert_eq!(s, 200);
    assert!(
        csv.contains("org_id,org_name,org_kind,kind,devices,samples,sampled_rate_pct,availability_pct,never_online"),
        "{csv}"
    );
    assert!(csv.lines().any(|l| l.starts_with("gate-02,二号门门禁,hanjiadun,韩家墩街道,access_control,")), "{csv}");
    assert_eq!(api.get("/reports/online/daily?date=2026-13-01").await.0, 400);

    // The metrics text.
    let m = api.with_token(None).metrics().await;
    for line in [
        "vigil_presence_transitions_total{protocol=\"external\",to=\"online\"} 1",
        "vigil_presence_transitions_total{protocol=\"gb28181\",to=\"online\"} 2",
        "vigil_presence_transitions_total{protocol=\"external\",to=\"offline\"} 2",
        "vigil_devices{kind=\"access_control\",protocol=\"external\",state=\"offline\"} 2",
        "vigil_online_rate{kind=\"all\",org=\"gutian-1\"} 0.5",
        "vigil_online_target 0.95",
    ] {
        assert!(m.lines().any(|l| l == line), "missing `{line}` in\n{m}");
    }

    // Delete and 404.
    assert_eq!(api.send(reqwest::Method::DELETE, "/orgs/gutian", json!(null)).await.0, 409, "org with children");
    assert_eq!(api.send(reqwest::Method::DELETE, "/devices/bar-01", json!(null)).await.0, 204);
    assert_eq!(api.get("/devices/bar-01").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_every_bad_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[http]\nlisten = \"0.0.0.0:8080\"\n[assessment]\ntimezone = \"Nowhere/Land\"\n[[orgs]]\nid = \"a\"\nname = \"A\"\nkind = \"planet\"\n").expect("write");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil")).args(["check-config"]).arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["http.tokens", "assessment.timezone", "orgs[0].kind"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/district.toml")])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A device profile whose own test vector fails is refused, with the test named.
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).expect("mkdir");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/device-profiles/vzenith-plate.toml"))
        .expect("shipped profile");
    std::fs::write(
        profiles.join("vzenith-plate.toml"),
        shipped.replace(r#"plate_color = "5", confidence"#, r#"plate_color = "6", confidence"#),
    )
    .expect("write");
    let cfg = dir.path().join("profiles.toml");
    std::fs::write(&cfg, format!("[mqtt]\nprofiles_dir = {:?}\n", profiles.display().to_string())).expect("write");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil")).arg("check-config").arg(&cfg).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plate pass, base64 plate decoded") && err.contains("plate_color"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_is_all_or_nothing_and_the_report_runs_from_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("vigil.toml");
    let text = format!(
        "{}\n[[orgs]]\nid = \"qiaokou\"\nname = \"硚口区\"\nkind = \"district\"\ngb_prefix = \"420104\"\n",
        config_toml(&dir.path().join("data"), None, free_port(), "")
    );
    std::fs::write(&cfg, text).expect("write config");
    let csv = dir.path().join("devices.csv");
    std::fs::write(&csv, "id,name,kind,protocol,org_id,rtsp_url,profile\na-1,A,camera,external,qiaokou,,\na-2,B,toaster,external,qiaokou,,\n").expect("csv");
    let vigil = env!("CARGO_BIN_EXE_vigil");
    let out =
        std::process::Command::new(vigil).arg("import").arg(&csv).arg("--config").arg(&cfg).output().expect("import");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3: kind"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&csv, "id,name,kind,protocol,org_id,rtsp_url,profile\na-1,A,camera,external,qiaokou,,\n42010400001320000007,B,camera,gb28181,,,\n").expect("csv");
    let out =
        std::process::Command::new(vigil).arg("import").arg(&csv).arg("--config").arg(&cfg).output().expect("import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 devices imported: 2 created"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new(vigil)
        .args(["report", "online", "--csv", "--config"])
        .arg(&cfg)
        .output()
        .expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("qiaokou,硚口区,district,all,2,"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_exit_code_3_naming_it_and_env_overrides_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("vigil.toml");
    let text = config_toml(&dir.path().join("data"), Some("postgres://vigil:secret@127.0.0.1:1/none"), free_port(), "");
    std::fs::write(&cfg, text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("127.0.0.1:1"), "the database is not named: {all}");
    assert!(!all.contains("secret"), "the password leaked into the log: {all}");

    // VIGIL_<SECTION>__<KEY> overrides the file and is validated like it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("check-config")
        .arg(&cfg)
        .env("VIGIL_HTTP__LISTEN", "not-an-address")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"), "{}", String::from_utf8_lossy(&out.stderr));

    // The values most set in the field are digits: a device password, a GB/T 28181 domain,
    // a 20-digit id. They are text, not numbers.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("check-config")
        .arg(&cfg)
        .env("VIGIL_GB28181__PASSWORD", "12345678")
        .env("VIGIL_GB28181__REALM", "4201040000")
        .env("VIGIL_GATEWAY__ID", "42010400002000000009")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An operator who changes the registry and looks again sees the change at once: the rate,
/// the daily report and the org filters of /devices and /events all follow an org just
/// created and a device just moved, disabled, put in maintenance or imported. The periodic
/// refresh is set to an hour here, so nothing but read-your-writes can make this pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registry_write_is_seen_by_the_next_read_of_the_rate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = dir.path().join("vigil.toml");
    let text = config_toml(&dir.path().join("data"), None, port, "")
        .replace(r#"rate_refresh = "200ms""#, r#"rate_refresh = "1h""#);
    assert!(text.contains(r#"rate_refresh = "1h""#), "the harness's refresh is set where this test expects");
    std::fs::write(&cfg, text).expect("write config");
    let gw = Process::start(&cfg, port, &dir.path().join("vigil.log")).await;
    let api = &gw.api;
    let total = |org: &'static str| async move {
        let (s, body) = api.get(&format!("/online-rate?org={org}")).await;
        assert_eq!(s, 200, "{body}");
        body["total"].as_u64().expect("total")
    };

    for (id, kind, parent) in
        [("dist", "district", None), ("east", "street", Some("dist")), ("west", "street", Some("dist"))]
    {
        let (s, body) = api.post("/orgs", json!({"id": id, "name": id, "kind": kind, "parent_id": parent})).await;
        assert_eq!(s, 201, "{body}");
    }
    assert_eq!(total("east").await, 0, "an org just created has a rate (of nothing yet), not a 400");
    assert_eq!(api.get("/reports/online/daily?org=east").await.0, 200);
    assert_eq!(api.get("/events?org=east").await.0, 200);

    let (s, body) =
        api.post("/devices", json!({"id": "gate-1", "name": "门禁 1", "kind": "access_control", "protocol": "external", "org_id": "east"})).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(total("east").await, 1, "a device just created is counted");

    let patch = |body: Value| async move {
        let (s, b) = api.send(reqwest::Method::PATCH, "/devices/gate-1", body).await;
        assert_eq!(s, 200, "{b}");
    };
    patch(json!({"maintenance": true})).await;
    assert_eq!(total("east").await, 0, "a device in maintenance is not counted");
    patch(json!({"maintenance": false})).await;
    assert_eq!(total("east").await, 1);
    patch(json!({"enabled": false})).await;
    assert_eq!(total("east").await, 0, "a disabled device is not counted");
    patch(json!({"enabled": true, "org_id": "west"})).await;
    assert_eq!((total("east").await, total("west").await, total("dist").await), (0, 1, 1), "moved to west");
    let listed = api.get("/devices?org=west").await.1;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");

    let (s, body) = api.post_csv("/devices/import", "id,name,kind,protocol,org_id,rtsp_url,profile\nbar-1,道闸,barrier,external,east,,\nbar-2,道闸,barrier,external,east,,\n").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(total("east").await, 2, "imported devices are counted");
    let (s, _) = api.send(reqwest::Method::DELETE, "/devices/bar-2", json!(null)).await;
    assert_eq!(s, 204);
    assert_eq!(total("east").await, 1, "a deleted device is gone from the rate");
    let report = api.get("/reports/online/daily?org=east").await.1;
    let east_all = report["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["org_id"] == "east" && r["kind"] == "all"))
        .unwrap_or_else(|| panic!("no east/all row: {report}"));
    assert_eq!(east_all["devices"], 1, "the daily report counts what the registry holds now: {report}");
}
