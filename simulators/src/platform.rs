//! `vigil-sim platform`: an upper GA/T 1400 view library (视图库) for vigil's relay to push to.
//! It requires digest registration (`/VIID/System/Register`, MD5, qop=auth), takes keepalives
//! and un-registrations, and answers pushed lists (`/VIID/Faces`, `/VIID/MotorVehicles`,
//! `/VIID/Persons`, `/VIID/NonMotorVehicles`) per object with `ResponseStatusListObject`. It
//! records what it received: objects in all, distinct object ids, duplicates seen (`GET
//! /stats`), and can be told to misbehave (`POST /control` with `{"mode": "ok" | "refuse" |
//! "error500" | "slow", "slow_ms": 2000, "reject": ["<object id>", ...]}`): refuse answers 503,
//! error500 a 500, slow waits before answering, and a rejected id gets StatusCode 8 (its
//! object is bad) every time. Bodies over 8 MiB are refused with 413, as a real platform's
//! limit would. Loopback only.
//!
//! `vigil-sim platform --listen 127.0.0.1:9101 --password secret` prints its base URL
//! (`http://127.0.0.1:9101/VIID`) first.
//!
//! Records GA/T 1400 has no standard object for arrive on the extension path
//! (`/VIID/<prefix>/AccessRecords`, `AlarmRecords`, `DeviceStatuses`, `OnlineRates`) and are
//! counted by `RecordID` under `extension` in `/stats`, with the latest 200 kept whole.
//!
//! As an upper view library in subscription mode: `POST /control {"subscribe": {"to":
//! "http://<lower>/VIID", "detail": "12,13,4"}}` makes it subscribe with the lower one
//! (`/VIID/Subscribes`, ReceiveAddr its own `/VIID/SubscribeNotifications`); notifications
//! are booked like pushed objects (faces, vehicles) and under `subscription` in `/stats`
//! (notifications, duplicates, the device statuses received).
#![allow(clippy::disallowed_methods)] // a simulator reads real time

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use vigil::clock::now_ms;
use vigil::protocol::digest::{parse_authorization, Nonces, Verdict};
use vigil::protocol::gat1400::codec::{self, Status};

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen (loopback only; port 0 for an ephemeral one).
    #[arg(long, default_value = "127.0.0.1:9101")]
    pub listen: SocketAddr,
    /// The password every lower platform registers with.
    #[arg(long, default_value = "secret")]
    pub password: String,
    /// This view library's own id (answers carry it).
    #[arg(long, default_value = "42010000005030000001")]
    pub id: String,
}

#[derive(Default)]
struct Books {
    registered: HashSet<String>,
    registrations: u64,
    keepalives: u64,
    received: u64,
    seen: HashMap<String, u32>,
    by_kind: HashMap<String, u64>,
    /// Object ids in the order first seen, per lower platform (for order checks).
    order: Vec<String>,
    mode: String,
    slow_ms: u64,
    reject: HashSet<String>,
    rejected: u64,
    /// Records of the extension path (`/VIID/<prefix>/AccessRecords`, ...): by RecordID,
    /// by collection, and the latest ones as received.
    ext_seen: HashMap<String, u32>,
    ext_by_kind: HashMap<String, u64>,
    ext_latest: std::collections::VecDeque<Value>,
    /// Subscription mode: notifications by NotificationID, and the device statuses received.
    notifications: HashMap<String, u32>,
    statuses: std::collections::VecDeque<Value>,
}

/// Extension records kept for `GET /stats` (`extension.latest`).
const EXT_KEEP: usize = 200;

struct Platform {
    password: String,
    id: String,
    /// Where it listens: subscriptions name `http://{addr}/VIID/SubscribeNotifications`.
    addr: SocketAddr,
    tz: chrono_tz::Tz,
    nonces: Mutex<Nonces>,
    books: Mutex<Books>,
}

impl Platform {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn viid(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/VIID+JSON;charset=UTF-8")], body.to_string()).into_response()
}

pub async fn run(args: Args) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("the platform simulator listens on loopback only");
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("http://{addr}/VIID");
    let p = Arc::new(Platform {
        password: args.password,
        id: args.id,
        addr,
        tz: chrono_tz::Asia::Shanghai,
        nonces: Mutex::default(),
        books: Mutex::new(Books { mode: "ok".into(), ..Books::default() }),
    });
    let app = Router::new()
        .route("/VIID/System/Register", post(register))
        .route("/VIID/System/Keepalive", post(keepalive))
        .route("/VIID/System/UnRegister", post(unregister))
        .route("/VIID/System/Time", get(time))
        .route("/VIID/{collection}", post(objects))
        .route("/VIID/SubscribeNotifications", post(notifications))
        .route("/VIID/{prefix}/{collection}", post(extension))
        .route("/stats", get(stats))
        .route("/control", post(control))
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
        .with_state(p);
    axum::serve(listener, app).await?;
    Ok(())
}

fn device_id(body: &[u8], object: &str) -> String {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| codec::system_device_id(&v, object)).unwrap_or_default()
}

async fn register(State(p): State<Arc<Platform>>, headers: HeaderMap, body: Bytes) -> Response {
    const URL: &str = "/VIID/System/Register";
    let now = now_ms();
    let params = headers.get("authorization").and_then(|h| h.to_str().ok()).and_then(parse_authorization);
    let verdict = params
        .map(|params| p.nonces.lock().unwrap_or_else(|e| e.into_inner()).check(now, &params, "POST", &p.password));
    if verdict != Some(Verdict::Ok) {
        let stale = verdict == Some(Verdict::Stale);
        let challenge = p.nonces.lock().unwrap_or_else(|e| e.into_inner()).challenge("VIID", now, stale);
        let body = codec::response(URL, Status::InvalidOperation, "", "authenticate with HTTP digest", now, &p.tz);
        let mut r = viid(StatusCode::UNAUTHORIZED, body);
        if let Ok(v) = challenge.parse() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    }
    let id = device_id(&body, "RegisterObject");
    if id.is_empty() {
        return viid(
            StatusCode::BAD_REQUEST,
            codec::response(URL, Status::InvalidJsonContent, "", "RegisterObject.DeviceID", now, &p.tz),
        );
    }
    let mut b = p.books();
    b.registered.insert(id.clone());
    b.registrations += 1;
    viid(StatusCode::OK, codec::response(URL, Status::Ok, &id, "", now, &p.tz))
}

async fn keepalive(State(p): State<Arc<Platform>>, body: Bytes) -> Response {
    const URL: &str = "/VIID/System/Keepalive";
    let now = now_ms();
    let id = device_id(&body, "KeepaliveObject");
    let mut b = p.books();
    if !b.registered.contains(&id) {
        return viid(
            StatusCode::UNAUTHORIZED,
            codec::response(URL, Status::InvalidOperation, &id, "not registered", now, &p.tz),
        );
    }
    b.keepalives += 1;
    viid(StatusCode::OK, codec::response(URL, Status::Ok, &id, "", now, &p.tz))
}

async fn unregister(State(p): State<Arc<Platform>>, body: Bytes) -> Response {
    let now = now_ms();
    let id = device_id(&body, "UnRegisterObject");
    p.books().registered.remove(&id);
    viid(StatusCode::OK, codec::response("/VIID/System/UnRegister", Status::Ok, &id, "", now, &p.tz))
}

async fn time(State(p): State<Arc<Platform>>) -> Response {
    viid(StatusCode::OK, codec::system_time(&p.id, now_ms(), &p.tz))
}

async fn objects(
    State(p): State<Arc<Platform>>,
    Path(collection): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("/VIID/{collection}");
    let now = now_ms();
    if let Some(r) = precheck(&p, &url, &headers).await {
        return r;
    }
    let Some((list, object, id_key)) = codec::list_keys(&url) else {
        return viid(
            StatusCode::NOT_FOUND,
            codec::response(&url, Status::InvalidOperation, "", "no such collection", now, &p.tz),
        );
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return viid(
            StatusCode::BAD_REQUEST,
            codec::response(&url, Status::InvalidJsonFormat, "", "not JSON", now, &p.tz),
        );
    };
    let items = match codec::list_items(&v, list, object) {
        Some(items) => items,
        None => {
            let detail = format!("{list}.{object} is missing");
            return viid(
                StatusCode::BAD_REQUEST,
                codec::response(&url, Status::InvalidJsonContent, "", &detail, now, &p.tz),
            );
        }
    };
    let mut b = p.books();
    let answers: Vec<Value> = items
        .iter()
        .map(|o| {
            let id = o.get(id_key).and_then(Value::as_str).unwrap_or("").to_owned();
            if id.len() != 48 || !id.bytes().all(|c| c.is_ascii_digit()) {
                return codec::status_object(
                    &url,
                    Status::InvalidJsonContent,
                    &id,
                    &format!("{id_key} is not 48 digits"),
                    now,
                    &p.tz,
                );
            }
            if b.reject.contains(&id) {
                b.rejected += 1;
                return codec::status_object(
                    &url,
                    Status::InvalidJsonContent,
                    &id,
                    "rejected by the simulator",
                    now,
                    &p.tz,
                );
            }
            b.received += 1;
            *b.by_kind.entry(collection.clone()).or_default() += 1;
            let n = b.seen.entry(id.clone()).or_default();
            *n += 1;
            if *n == 1 {
                b.order.push(id.clone());
            }
            codec::status_object(&url, Status::Ok, &id, "", now, &p.tz)
        })
        .collect();
    drop(b);
    viid(StatusCode::OK, codec::response_list(answers))
}

/// The extension path: records GA/T 1400 has no standard object for, under any prefix,
/// answered per `RecordID` like the standard lists.
async fn extension(
    State(p): State<Arc<Platform>>,
    Path((prefix, collection)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("/VIID/{prefix}/{collection}");
    let now = now_ms();
    if let Some(r) = precheck(&p, &url, &headers).await {
        return r;
    }
    let Some(coll) = vigil::sinks::gat1400::client::Collection::extension_named(&collection) else {
        return viid(
            StatusCode::NOT_FOUND,
            codec::response(&url, Status::InvalidOperation, "", "no such collection", now, &p.tz),
        );
    };
    let (list, object, id_key) = coll.keys();
    let items = match serde_json::from_slice::<Value>(&body).ok().and_then(|v| codec::list_items(&v, list, object)) {
        Some(items) => items,
        None => {
            let detail = format!("{list}.{object} is missing");
            return viid(
                StatusCode::BAD_REQUEST,
                codec::response(&url, Status::InvalidJsonContent, "", &detail, now, &p.tz),
            );
        }
    };
    let mut b = p.books();
    let answers: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let id = o.get(id_key).and_then(Value::as_str).unwrap_or("").to_owned();
            if id.is_empty() {
                return codec::status_object(&url, Status::InvalidJsonContent, "", "RecordID is missing", now, &p.tz);
            }
            *b.ext_by_kind.entry(collection.clone()).or_default() += 1;
            *b.ext_seen.entry(id.clone()).or_default() += 1;
            if b.ext_latest.len() == EXT_KEEP {
                b.ext_latest.pop_front();
            }
            b.ext_latest.push_back(o);
            codec::status_object(&url, Status::Ok, &id, "", now, &p.tz)
        })
        .collect();
    drop(b);
    viid(StatusCode::OK, codec::response_list(answers))
}

/// What every list request meets first: the misbehaviour it was told to show, then the
/// registration of the lower platform (`User-Identify`). `None`: go on.
async fn precheck(p: &Platform, url: &str, headers: &HeaderMap) -> Option<Response> {
    let now = now_ms();
    let (mode, slow_ms) = {
        let b = p.books();
        (b.mode.clone(), b.slow_ms)
    };
    match mode.as_str() {
        "refuse" => {
            return Some(viid(
                StatusCode::SERVICE_UNAVAILABLE,
                codec::response(url, Status::DeviceBusy, "", "refusing", now, &p.tz),
            ))
        }
        "error500" => return Some((StatusCode::INTERNAL_SERVER_ERROR, "simulated failure").into_response()),
        "slow" => tokio::time::sleep(Duration::from_millis(slow_ms)).await,
        _ => {}
    }
    let user = headers.get("user-identify").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    if !p.books().registered.contains(&user) {
        return Some(viid(
            StatusCode::UNAUTHORIZED,
            codec::response(url, Status::InvalidOperation, "", "not registered", now, &p.tz),
        ));
    }
    None
}

/// Subscription mode: a lower view library's notifications for our subscriptions. Faces and
/// vehicles inside are booked like pushed objects; device statuses are kept as received.
async fn notifications(State(p): State<Arc<Platform>>, headers: HeaderMap, body: Bytes) -> Response {
    let url = "/VIID/SubscribeNotifications";
    let now = now_ms();
    if let Some(r) = precheck(&p, url, &headers).await {
        return r;
    }
    let items = match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| codec::list_items(&v, "SubscribeNotificationListObject", "SubscribeNotificationObject"))
    {
        Some(items) => items,
        None => {
            return viid(
                StatusCode::BAD_REQUEST,
                codec::response(
                    url,
                    Status::InvalidJsonContent,
                    "",
                    "SubscribeNotificationListObject is missing",
                    now,
                    &p.tz,
                ),
            )
        }
    };
    let mut b = p.books();
    let mut answers = Vec::new();
    for n in items {
        let nid = n.get("NotificationID").and_then(Value::as_str).unwrap_or("").to_owned();
        *b.notifications.entry(nid.clone()).or_default() += 1;
        for (list, object, id_key, kind) in [
            ("FaceObjectList", "FaceObject", "FaceID", "Faces"),
            ("MotorVehicleObjectList", "MotorVehicleObject", "MotorVehicleID", "MotorVehicles"),
        ] {
            for o in n.get(list).and_then(|l| l.get(object)).and_then(Value::as_array).into_iter().flatten() {
                let id = o.get(id_key).and_then(Value::as_str).unwrap_or("").to_owned();
                b.received += 1;
                *b.by_kind.entry(kind.to_owned()).or_default() += 1;
                let seen = b.seen.entry(id.clone()).or_default();
                *seen += 1;
                if *seen == 1 {
                    b.order.push(id);
                }
            }
        }
        for s in n.pointer("/DeviceList/APEStatusObject").and_then(Value::as_array).into_iter().flatten() {
            if b.statuses.len() == EXT_KEEP {
                b.statuses.pop_front();
            }
            b.statuses.push_back(s.clone());
        }
        answers.push(codec::status_object(url, Status::Ok, &nid, "", now, &p.tz));
    }
    drop(b);
    viid(StatusCode::OK, codec::response_list(answers))
}

/// `POST /control {"subscribe": {"to": "http://lower/VIID", "id": "...", "detail": "12,4"}}`:
/// subscribe with a lower view library (`"cancel": true` cancels), as an upper one does.
async fn subscribe(p: &Platform, v: &Value) -> Value {
    let to = v.get("to").and_then(Value::as_str).unwrap_or("").trim_end_matches('/').to_owned();
    let id = v.get("id").and_then(Value::as_str).unwrap_or("420100000050300000012026112700001").to_owned();
    let detail = v.get("detail").and_then(Value::as_str).unwrap_or("12,13,4").to_owned();
    let cancel = v.get("cancel").and_then(Value::as_bool).unwrap_or(false);
    let body = json!({"SubscribeListObject": {"SubscribeObject": [{
        "SubscribeID": id, "Title": "vigil-sim subscription", "SubscribeDetail": detail,
        "ResourceURI": v.get("resource").and_then(Value::as_str).unwrap_or(""),
        "ApplicantName": "vigil-sim", "ApplicantOrg": "city",
        "BeginTime": codec::local_time(now_ms() - 60_000, &p.tz),
        "EndTime": codec::local_time(now_ms() + 86_400_000, &p.tz),
        "ReceiveAddr": format!("http://{}/VIID/SubscribeNotifications", p.addr),
        "OperateType": if cancel { 1 } else { 0 },
    }]}});
    // As an upper view library does: the lower one challenges, the request goes again with
    // a digest of the password both sides share.
    let http = reqwest::Client::new();
    let url = format!("{to}/Subscribes");
    let send = |auth: Option<String>| {
        let mut r = http
            .post(&url)
            .header("User-Identify", &p.id)
            .header("Content-Type", "application/VIID+JSON;charset=UTF-8")
            .body(body.to_string());
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    let mut sent = send(None).await;
    if let Ok(r) = &sent {
        let www = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let (401, Some(www)) = (r.status().as_u16(), www) {
            let uri = reqwest::Url::parse(&url).map(|u| u.path().to_owned()).unwrap_or_default();
            let cnonce = format!("{:016x}", now_ms() as u64 ^ 0x5eed_cafe);
            sent = send(vigil::protocol::digest::answer(&www, &p.id, &p.password, "POST", &uri, 1, &cnonce)).await;
        }
    }
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            let answer = r.text().await.unwrap_or_default();
            json!({"status": status, "answer": serde_json::from_str::<Value>(&answer).unwrap_or(Value::String(answer))})
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

async fn stats(State(p): State<Arc<Platform>>) -> Json<Value> {
    let b = p.books();
    let duplicates: u64 = b.seen.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    Json(json!({
        "registrations": b.registrations,
        "registered": b.registered.iter().collect::<Vec<_>>(),
        "keepalives": b.keepalives,
        "received": b.received,
        "unique": b.seen.len(),
        "duplicates": duplicates,
        "rejected": b.rejected,
        "by_kind": b.by_kind,
        "order": b.order,
        "mode": b.mode,
        "extension": {
            "unique": b.ext_seen.len(),
            "duplicates": b.ext_seen.values().map(|n| u64::from(n.saturating_sub(1))).sum::<u64>(),
            "by_kind": b.ext_by_kind,
            "latest": b.ext_latest,
        },
        "subscription": {
            "notifications": b.notifications.len(),
            "duplicate_notifications": b.notifications.values().map(|n| u64::from(n.saturating_sub(1))).sum::<u64>(),
            "statuses": b.statuses,
        },
    }))
}

async fn control(State(p): State<Arc<Platform>>, Json(v): Json<Value>) -> Json<Value> {
    if let Some(sub) = v.get("subscribe") {
        return Json(subscribe(&p, sub).await);
    }
    let mut b = p.books();
    if let Some(m) = v.get("mode").and_then(Value::as_str) {
        b.mode = m.to_owned();
    }
    if let Some(ms) = v.get("slow_ms").and_then(Value::as_u64) {
        b.slow_ms = ms;
    }
    if let Some(ids) = v.get("reject").and_then(Value::as_array) {
        b.reject = ids.iter().filter_map(Value::as_str).map(str::to_owned).collect();
    }
    Json(json!({"mode": b.mode, "slow_ms": b.slow_ms, "reject": b.reject.len()}))
}
