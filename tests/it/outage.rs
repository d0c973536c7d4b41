//! The database goes away while vigil runs (PostgreSQL behind a proxy that the test cuts):
//! the API keeps reading from memory, writes answer 503, health says degraded, presence
//! keeps deciding and queues its transitions; when the database is back they are written
//! and nothing is lost.

use std::time::Duration;

use serde_json::json;

use crate::support::gateway::{Db, TestGateway};
use crate::support::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_loses_no_transition() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let gw = TestGateway::start_via(Db::Postgres, "", Some(proxy.port)).await;
    let api = &gw.api;
    assert_eq!(api.post("/orgs", json!({"id": "d", "name": "District", "kind": "district"})).await.0, 201);
    let csv = "id,name,kind,protocol,org_id,rtsp_url,profile\na,A,camera,external,d,,\nb,B,camera,external,d,,\n";
    assert_eq!(api.post_csv("/devices/import", csv).await.0, 200);

    proxy.cut();
    // Evidence keeps flowing while the database is away.
    assert_eq!(api.post("/observations", json!({"device_id": "a", "kind": "alive", "ttl": "1s"})).await.0, 202);
    assert_eq!(
        api.post("/observations", json!({"device_id": "b", "kind": "dead", "reason": "outage test"})).await.0,
        202
    );
    // Reads come from memory: presence and the live rate still answer.
    api.wait_for("/devices/a", Duration::from_secs(5), |d| d["presence"]["state"] == "online").await;
    api.wait_for("/devices/a", Duration::from_secs(5), |d| d["presence"]["state"] == "offline").await;
    assert_eq!(api.get("/online-rate").await.0, 200);
    // Writes cannot be done: 503 with a code, nothing half-written.
    let (s, body) = api.post("/orgs", json!({"id": "s", "name": "Street", "kind": "street", "parent_id": "d"})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    api.wait_for("/health", Duration::from_secs(10), |h| h["status"] == "degraded").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !api.metrics().await.lines().any(|l| l == "vigil_database_up 0") {
        assert!(tokio::time::Instant::now() < deadline, "vigil_database_up never went to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    proxy.restore();
    api.wait_for("/health", Duration::from_secs(20), |h| h["status"] == "ok").await;
    // The three transitions decided during the outage are all in the history now.
    let h = api
        .wait_for("/devices/a/presence/history", Duration::from_secs(10), |h| {
            h["items"].as_array().is_some_and(|i| i.len() == 2)
        })
        .await;
    assert_eq!(h["items"][1]["reason"], "ttl_expired");
    let h = api.get("/devices/b/presence/history").await.1;
    assert_eq!(h["items"][0]["detail"], "outage test");
    assert_eq!(
        api.post("/orgs", json!({"id": "s", "name": "Street", "kind": "street", "parent_id": "d"})).await.0,
        201
    );
    gw.shutdown().await;
}
