//! The dashboard in headless Chromium (Debian's `chromium`): the page loads with a token in
//! its URL, fetches the API and renders the district's rate, the streets worst first, the
//! kinds and the offline list. The DOM is checked for the real figures, and a screenshot is
//! saved to target/dashboard.png for a person to look at.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::gateway::{Db, TestGateway, VIEWER};
use crate::support::require_command;

pub(crate) fn chromium(args: &[&str], url: &str, profile: &std::path::Path) -> std::process::Output {
    let bin = require_command("chromium");
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1500,1100",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        // The browser sits in another zone than the district: the page must not care.
        .env("TZ", "America/New_York")
        .output()
        .expect("run chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_live_rate_streets_kinds_and_offline_devices() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let api = &gw.api;
    for (id, name, kind, parent) in [
        ("qiaokou", "硚口区", "district", None),
        ("gutian", "古田街道", "street", Some("qiaokou")),
        ("zongguan", "宗关街道", "street", Some("qiaokou")),
    ] {
        assert_eq!(api.post("/orgs", json!({"id": id, "name": name, "kind": kind, "parent_id": parent})).await.0, 201);
    }
    let mut csv = String::from("id,name,kind,protocol,org_id,rtsp_url,profile\n");
    for i in 0..20 {
        let (org, kind) = if i < 12 { ("gutian", "camera") } else { ("zongguan", "access_control") };
        csv.push_str(&format!("dev-{i:02},设备{i:02},{kind},external,{org},,\n"));
    }
    assert_eq!(api.post_csv("/devices/import", &csv).await.0, 200);
    // 17 of 20 online: gutian 12/12, zongguan 5/8; dev-19 reported dead.
    let alive: Vec<_> =
        (0..17).map(|i| json!({"device_id": format!("dev-{i:02}"), "kind": "alive", "ttl": "10m"})).collect();
    assert_eq!(api.post("/observations", json!(alive)).await.0, 202);
    api.post("/observations", json!({"device_id": "dev-19", "kind": "dead", "reason": "光纤中断"})).await;
    api.wait_for("/online-rate", Duration::from_secs(5), |r| r["online"] == 17).await;
    // A GB/T 28181 camera nobody announced registers itself: it waits for approval.
    let mut stranger = crate::gb28181::Device::new("42010400001320000777", gw.sip.expect("SIP")).await;
    assert!(stranger.register(3600, "12345678").await.starts_with("SIP/2.0 403"));
    // A listed GB/T 28181 NVR registers, answers its catalog (GB2312) and raises an alarm.
    let nvr_id = "42010400001180000888";
    let (s, body) =
        api.post("/devices", json!({"id": nvr_id, "name": "古田 NVR", "kind": "nvr", "protocol": "gb28181"})).await;
    assert_eq!(s, 201, "{body}");
    let mut nvr = crate::gb28181::Device::new(nvr_id, gw.sip.expect("SIP")).await;
    assert!(nvr.register(3600, "12345678").await.starts_with("SIP/2.0 200"));
    let (_, q) = nvr.next_query("Catalog").await;
    let catalog = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>Catalog</CmdType><SN>{}</SN><DeviceID>{nvr_id}</DeviceID><SumNum>2</SumNum><DeviceList Num=\"2\"><Item><DeviceID>42010400001310000881</DeviceID><Name>古田一路东口</Name><Status>ON</Status></Item><Item><DeviceID>42010400001310000882</DeviceID><Name>古田二路西口</Name><Status>OFF</Status></Item></DeviceList></Response>", q.sn.expect("SN"));
    assert!(nvr.send_manscdp("MESSAGE", "dash-cat", &catalog).await.starts_with("SIP/2.0 200"));
    let alarm_time = crate::support::device_local_time(Duration::from_secs(600));
    let alarm = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Alarm</CmdType><SN>7</SN><DeviceID>{nvr_id}</DeviceID><AlarmPriority>1</AlarmPriority><AlarmMethod>5</AlarmMethod><AlarmTime>{alarm_time}</AlarmTime><AlarmDescription>周界入侵告警</AlarmDescription></Notify>");
    assert!(nvr.send_manscdp("MESSAGE", "dash-alarm", &alarm).await.starts_with("SIP/2.0 200"));
    api.wait_for(&format!("/devices/{nvr_id}/channels"), Duration::from_secs(5), |c| {
        c["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("{}/?token={VIEWER}&lang=zh", gw.url);
    let out = chromium(&["--dump-dom"], &url, profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    // 17 of the 20 devices, and the NVR as its 2 channels, 1 ON: 18 of 22.
    assert!(dom.contains("81.82%"), "rate 18/22 not shown:\n{dom}");
    assert!(dom.contains("18 / 22"), "counts not shown");
    assert!(dom.contains("宗关街道") && dom.contains("62.50%"), "worst street not shown");
    let zong = dom.find("宗关街道").expect("zongguan");
    let gut = dom.find("古田街道").expect("gutian");
    assert!(zong < gut, "streets are not worst first");
    assert!(dom.contains("门禁"), "kinds are not translated");
    assert!(
        dom.contains("设备19") && dom.contains("光纤中断") && dom.contains("上报离线"),
        "offline list lacks dev-19 and its reason"
    );
    assert!(dom.contains("低于考核目标"), "the 95% verdict is missing");
    assert!(
        dom.contains("待审核设备") && dom.contains("42010400001320000777") && dom.contains("批准"),
        "the quarantined camera is not offered for approval"
    );

    assert!(dom.contains("最近告警") && dom.contains("周界入侵告警"), "the alarm is not listed");
    // Times are the district's (assessment.timezone), labelled, not the browser's zone.
    assert!(dom.contains("时区 Asia/Shanghai"), "the zone is not labelled");
    let dev19 = gw.api.get("/devices/dev-19").await.1;
    let since = dev19["presence"]["since"].as_str().expect("since").to_owned();
    assert!(since.ends_with("+08:00"), "{since}");
    let shanghai_clock = &since[11..19];
    assert!(dom.contains(shanghai_clock), "dev-19 went offline at {since}; {shanghai_clock} is not shown:\n{dom}");

    // The device view (opened from a link, as from a click on a row): GB info and channels.
    let dev_url = format!("{}/?token={VIEWER}&lang=zh&device={nvr_id}", gw.url);
    let out = chromium(&["--dump-dom"], &dev_url, profile.path());
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("设备详情") && dom.contains("古田 NVR"), "device view not shown:\n{dom}");
    assert!(dom.contains("古田一路东口") && dom.contains("古田二路西口"), "channels not listed");
    assert!(
        dom.contains("注册有效期至") && dom.contains("心跳判定窗口") && dom.contains("udp"),
        "GB session not shown"
    );

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    // target/ is elsewhere when CARGO_TARGET_DIR is set: make the folder the picture goes in.
    std::fs::create_dir_all(shot.parent().expect("a parent folder")).expect("target folder");
    let out = chromium(&[&format!("--screenshot={}", shot.display())], &url, profile.path());
    assert!(out.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta = std::fs::metadata(&shot).expect("screenshot written");
    assert!(meta.len() > 20_000, "screenshot suspiciously small: {} bytes", meta.len());
    gw.shutdown().await;
}
