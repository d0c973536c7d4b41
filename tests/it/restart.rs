//! kill -9 during activity, then restart: no committed transition is lost, the gap is in
//! the history, devices whose validity window is still open stay online, the rest are
//! unknown until fresh evidence arrives — never silently online.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::free_port;
use crate::support::gateway::{config_toml, Process};

fn steps(hist: &Value) -> Vec<(String, String, String, String)> {
    hist["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or("").to_owned();
            (s("at"), s("from"), s("to"), s("reason"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_committed_transition_and_restart_judges_by_open_windows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, config_toml(&dir.path().join("data"), None, port, "")).expect("write config");
    let log = dir.path().join("vigil.log");
    let mut gw = Process::start(&cfg, port, &log).await;
    let api = gw.api.clone();

    assert_eq!(api.post("/orgs", json!({"id": "d", "name": "District", "kind": "district"})).await.0, 201);
    let csv = "id,name,kind,protocol,org_id,rtsp_url,profile\nlong,L,camera,external,d,,\nshort,S,camera,external,d,,\ndead,D,sensor,external,d,,\n";
    assert_eq!(api.post_csv("/devices/import", csv).await.0, 200);
    api.post("/observations", json!({"device_id": "long", "kind": "alive", "ttl": "1h"})).await;
    api.post("/observations", json!({"device_id": "short", "kind": "alive", "ttl": "1s"})).await;
    api.post("/observations", json!({"device_id": "dead", "kind": "dead", "reason": "cable cut"})).await;
    api.wait_for("/devices/short", Duration::from_secs(5), |d| d["presence"]["state"] == "offline").await;

    // Activity while we kill: a stream of observations for `long` and `short` flapping.
    let before: Vec<(String, Vec<_>)> = {
        let mut v = Vec::new();
        // A checkpoint (every 1 s) that started after `long`'s observation carries its TTL
        // window to disk.
        let observed_s = chrono::Utc::now().timestamp();
        api.wait_for_metrics(Duration::from_secs(10), |m| {
            m.lines()
                .find_map(|l| l.strip_prefix("vigil_presence_checkpoint_timestamp_seconds "))
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|at| at > observed_s)
        })
        .await;
        for id in ["long", "short", "dead"] {
            let h = api
                .wait_for(&format!("/devices/{id}/presence/history"), Duration::from_secs(5), |h| {
                    !h["items"].as_array().is_some_and(Vec::is_empty)
                })
                .await;
            v.push((id.to_owned(), steps(&h)));
        }
        v
    };
    let posted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood = {
        let (api, posted) = (api.clone(), posted.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let kind = if i % 2 == 0 { "alive" } else { "dead" };
                let _ = api.post("/observations", json!({"device_id": "short", "kind": kind, "ttl": "1s"})).await;
                posted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // Kill in the middle of the flood: once a quarter of it has been taken.
    while posted.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill9();
    let _ = flood.await;
    let killed_at = chrono::Utc::now();
    // `short`'s windows (1 s) granted before the kill have closed by the restart: what the
    // restart judges below is then the gap, however quickly the process comes back.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let gw = Process::start(&cfg, port, &log).await;
    let api = gw.api.clone();
    for (id, old) in &before {
        // The gap rows are written by the presence writer right after start-up.
        let h = api
            .wait_for(&format!("/devices/{id}/presence/history?limit=1000"), Duration::from_secs(5), |h| {
                h["items"].as_array().is_some_and(|i| i.len() > old.len())
            })
            .await;
        let now = steps(&h);
        assert!(now.len() > old.len(), "{id}: no gap recorded: {now:?}");
        assert_eq!(&now[..old.len()], &old[..], "{id}: a committed transition was lost");
    }

    // `long`: its 1 h window is still open: the gap, then back online on the window.
    let (_, h) = api.get("/devices/long/presence/history").await;
    let tail: Vec<(String, String, String)> =
        steps(&h).into_iter().rev().take(2).rev().map(|(_, f, t, r)| (f, t, r)).collect();
    assert_eq!(
        tail,
        vec![
            ("online".into(), "unknown".into(), "gateway_down".into()),
            ("unknown".into(), "online".into(), "window_still_open".into())
        ]
    );
    let (_, long) = api.get("/devices/long").await;
    assert_eq!(long["presence"]["state"], "online");

    // `short` and `dead`: nothing vouches for them now: unknown, not online.
    for id in ["short", "dead"] {
        let (_, d) = api.get(&format!("/devices/{id}")).await;
        assert_eq!(d["presence"]["state"], "unknown", "{id}: {d}");
        assert_eq!(d["presence"]["reason"], "gateway_down", "{id}: {d}");
    }
    // The gap starts no later than the kill.
    let (_, h) = api.get("/devices/dead/presence/history").await;
    let gap = steps(&h).into_iter().find(|s| s.3 == "gateway_down").expect("gap row");
    let gap_at = chrono::DateTime::parse_from_rfc3339(&gap.0).expect("rfc3339");
    assert!(gap_at <= killed_at, "gap at {gap_at} after the kill at {killed_at}");
    let rate = api.wait_for("/online-rate", Duration::from_secs(5), |r| r["total"] == 3).await;
    assert_eq!(rate["online"], 1, "{rate}");
}
