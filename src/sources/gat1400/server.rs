//! The `/VIID/...` routes: digest registration, keepalive, unregister, time, and the object
//! collections. Every answer is a GA/T 1400 status object with the HTTP status that fits
//! (401 with a fresh challenge when a device must register, 400 for JSON that cannot be read,
//! 503 while the store cannot take records, 200 with per-object codes otherwise).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tracing::{info, warn};

use super::codec::{self, Status};
use super::VALIDITY_MS;
use crate::clock::{now_ms, Millis};
use crate::digest::{parse_authorization, Nonces, Verdict as Digest};
use crate::event::{Evidence, Observation};
use crate::profiles::ProfileSet;
use crate::registry::{Admission, AdmissionOutcome, Protocol, UnknownDevice};
use crate::sources::ingest::{Ingest, Verdict};

pub struct Ctx {
    ingest: Ingest,
    profiles: Arc<ProfileSet>,
    realm: String,
    password: String,
    server_id: String,
    tz: chrono_tz::Tz,
    nonces: Mutex<Nonces>,
    /// Registered devices → registration valid until.
    sessions: Mutex<HashMap<String, Millis>>,
    /// Subscription-mode upstreams.
    uppers: Vec<crate::outbox::subscriptions::Upper>,
}

impl Ctx {
    pub fn new(
        cfg: &crate::config::Gat1400,
        server_id: String,
        uppers: Vec<crate::outbox::subscriptions::Upper>,
        tz: chrono_tz::Tz,
        profiles: Arc<ProfileSet>,
        ingest: Ingest,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            ingest,
            profiles,
            realm: cfg.realm.clone(),
            password: cfg.password.clone(),
            server_id,
            tz,
            nonces: Mutex::default(),
            sessions: Mutex::default(),
            uppers,
        })
    }

    fn answer(&self, http: StatusCode, url: &str, status: Status, id: &str, detail: &str) -> Response {
        viid(http, codec::response(url, status, id, detail, now_ms(), &self.tz))
    }

    fn challenge(&self, url: &str, id: &str, stale: bool, detail: &str) -> Response {
        let www = self.nonces.lock().unwrap_or_else(|p| p.into_inner()).challenge(&self.realm, now_ms(), stale);
        let mut r = self.answer(StatusCode::UNAUTHORIZED, url, Status::InvalidOperation, id, detail);
        if let Ok(v) = HeaderValue::from_str(&www) {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }

    fn registered(&self, id: &str, now: Millis) -> bool {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(id).is_some_and(|&until| until > now)
    }

    /// Renews a registration and tells presence.
    async fn renew(&self, id: &str, now: Millis, register: bool) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), now + VALIDITY_MS);
        let shared = self.ingest.shared();
        let key = shared.registry.read().device(id).map(|d| d.key);
        if let Some(device) = key {
            let evidence = Evidence::ViewLibrary { validity_ms: VALIDITY_MS, register };
            let _ = shared.presence.observe(Observation { device, at: now, evidence, detail: None }).await;
        }
    }
}

/// A JSON answer with the view library's content type.
fn viid(http: StatusCode, body: Value) -> Response {
    let mut r = (http, body.to_string()).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/VIID+JSON;charset=UTF-8"));
    r
}

pub fn router(ctx: Arc<Ctx>, max_body: usize) -> Router {
    Router::new()
        .route("/VIID/System/Register", post(register))
        .route("/VIID/System/Keepalive", post(keepalive))
        .route("/VIID/System/UnRegister", post(unregister))
        .route("/VIID/System/Time", get(time))
        .route("/VIID/Subscribes", post(subscribes).delete(unsubscribe))
        .route("/VIID/Faces", post(objects))
        .route("/VIID/MotorVehicles", post(objects))
        .route("/VIID/Persons", post(objects))
        .route("/VIID/NonMotorVehicles", post(objects))
        .route("/VIID/APEs", post(objects))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(ctx)
}

/// The body as JSON, or the 400 answer to send (returned at once, so its size is no cost).
#[allow(clippy::result_large_err)]
fn json(ctx: &Ctx, url: &str, body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        ctx.ingest.shared().rejections.record(
            now_ms(),
            "gat1400",
            "bad_json",
            String::new(),
            format!("{url}: {e}"),
            body,
        );
        ctx.answer(StatusCode::BAD_REQUEST, url, Status::InvalidJsonFormat, "", &e.to_string())
    })
}

/// The `DeviceID` of a system object (`RegisterObject`, ...), or the 400 answer naming it.
#[allow(clippy::result_large_err)]
fn system_id(ctx: &Ctx, url: &str, body: &[u8], object: &str) -> Result<String, Response> {
    let v = json(ctx, url, body)?;
    codec::system_device_id(&v, object).ok_or_else(|| {
        let detail = format!("{object}.DeviceID is missing");
        ctx.answer(StatusCode::BAD_REQUEST, url, Status::InvalidJsonContent, "", &detail)
    })
}

async fn register(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const URL: &str = "/VIID/System/Register";
    // Challenge before reading the body: digest clients (curl among them) send the first
    // request with an empty body.
    let Some(auth) = headers.get("authorization").and_then(|h| h.to_str().ok()) else {
        return ctx.challenge(URL, "", false, "authenticate with HTTP digest");
    };
    let id = match system_id(&ctx, URL, &body, "RegisterObject") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let shared = ctx.ingest.shared();
    let Some(params) = parse_authorization(auth) else {
        return ctx.challenge(URL, &id, false, "Authorization is not a Digest header");
    };
    let known = shared.registry.read().device(&id);
    let password = known.as_ref().and_then(|d| d.password.clone()).unwrap_or_else(|| ctx.password.clone());
    let now = now_ms();
    let verdict = ctx.nonces.lock().unwrap_or_else(|p| p.into_inner()).check(now, &params, "POST", &password);
    match verdict {
        Digest::Ok => {}
        Digest::Stale => return ctx.challenge(URL, &id, true, "nonce expired"),
        other => {
            warn!(device = %id, %peer, verdict = ?other, "GA/T 1400 registration refused: wrong credentials.");
            shared.rejections.record(
                now,
                "gat1400",
                "wrong_password",
                peer.to_string(),
                format!("{id}: digest {other:?}"),
                &body,
            );
            return ctx.challenge(URL, &id, false, "wrong username or password");
        }
    }
    let mut attrs = serde_json::Map::new();
    attrs.insert("source".into(), Value::String("gat1400".into()));
    attrs.insert("ip".into(), Value::String(peer.ip().to_string()));
    let unknown = UnknownDevice {
        id: id.clone(),
        protocol: Protocol::Gat1400,
        kind: None,
        name: None,
        attrs,
        org_id: None,
        profile: None,
    };
    let device = match shared.registry.admit(unknown).await {
        Ok(AdmissionOutcome::Known(d)) => d,
        Ok(AdmissionOutcome::Added(d)) => {
            info!(device = %d.id, admission = %d.admission, "New GA/T 1400 device from its registration.");
            let _ = shared.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await;
            d
        }
        Ok(AdmissionOutcome::Refused) => {
            shared.rejections.record(
                now,
                "gat1400",
                "unknown_device",
                peer.to_string(),
                format!("{id}: admission is closed"),
                &body,
            );
            return ctx.answer(
                StatusCode::FORBIDDEN,
                URL,
                Status::InvalidOperation,
                &id,
                "unknown device (admission is closed)",
            );
        }
        Err(e) if e.kind() == crate::error::ErrorKind::InvalidInput => {
            return ctx.answer(
                StatusCode::BAD_REQUEST,
                URL,
                Status::InvalidJsonContent,
                &id,
                &format!("RegisterObject.DeviceID: {e}"),
            );
        }
        Err(e) => return ctx.answer(StatusCode::SERVICE_UNAVAILABLE, URL, Status::DeviceBusy, &id, &e.to_string()),
    };
    if device.admission != Admission::Approved || !device.enabled {
        shared.rejections.record(
            now,
            "gat1400",
            "quarantined",
            peer.to_string(),
            format!("{id}: waits for an operator's approval"),
            &body,
        );
        return ctx.answer(StatusCode::FORBIDDEN, URL, Status::InvalidOperation, &id, "device awaits approval");
    }
    ctx.renew(&id, now, true).await;
    info!(device = %id, %peer, "GA/T 1400 device registered.");
    ctx.answer(StatusCode::OK, URL, Status::Ok, &id, "")
}

/// The upstream an upper view library's request belongs to, by its `User-Identify`; a 403
/// for anyone else.
#[allow(clippy::result_large_err)] // the early answer, as json() and system_id() give it
fn upper_of<'a>(ctx: &'a Ctx, headers: &HeaderMap) -> Result<&'a crate::outbox::subscriptions::Upper, Response> {
    let who = headers.get("user-identify").and_then(|h| h.to_str().ok()).unwrap_or("").trim();
    ctx.uppers.iter().find(|u| u.server_id.is_empty() || u.server_id == who).ok_or_else(|| {
        ctx.answer(
            StatusCode::FORBIDDEN,
            "/VIID/Subscribes",
            Status::InvalidOperation,
            "",
            "not an upper view library of this gateway (User-Identify)",
        )
    })
}

/// `POST /VIID/Subscribes`: an upper view library subscribes (or cancels, `OperateType` 1);
/// answered per `SubscribeID`.
async fn subscribes(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    use crate::outbox::subscriptions::{self, Request};
    const URL: &str = "/VIID/Subscribes";
    let upper = match upper_of(&ctx, &headers) {
        Ok(u) => u.clone(),
        Err(r) => return r,
    };
    let target = upper.target.clone();
    let items = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match codec::list_items(&v, "SubscribeListObject", "SubscribeObject") {
            Some(items) => items,
            None => {
                return ctx.answer(
                    StatusCode::BAD_REQUEST,
                    URL,
                    Status::InvalidJsonContent,
                    "",
                    "SubscribeListObject.SubscribeObject is missing",
                )
            }
        },
        Err(e) => {
            return ctx.answer(StatusCode::BAD_REQUEST, URL, Status::InvalidJsonFormat, "", &format!("not JSON: {e}"))
        }
    };
    let db = ctx.ingest.shared().registry.db().clone();
    let now = now_ms();
    let mut answers = Vec::with_capacity(items.len());
    for o in &items {
        let id = o.get("SubscribeID").and_then(Value::as_str).unwrap_or("").to_owned();
        let (status, detail) = match subscriptions::parse(o, &target, &upper.host, &ctx.tz) {
            Ok(Request::Subscribe(s)) => match subscriptions::save(&db, &s, now).await {
                Ok(()) => {
                    info!(upstream = %target, subscription = %s.id, categories = ?s.categories, receive = %s.receive_addr, "Upper view library subscribed.");
                    (Status::Ok, String::new())
                }
                Err(e) => (Status::DeviceBusy, e.to_string()),
            },
            Ok(Request::Cancel(id)) => match subscriptions::cancel(&db, &target, &id).await {
                Ok(true) => {
                    info!(upstream = %target, subscription = %id, "Upper view library cancelled a subscription.");
                    (Status::Ok, String::new())
                }
                Ok(false) => (Status::InvalidOperation, "no such subscription".into()),
                Err(e) => (Status::DeviceBusy, e.to_string()),
            },
            Err((field, why)) => (Status::InvalidJsonContent, format!("SubscribeObject.{field}: {why}")),
        };
        answers.push(codec::status_object(URL, status, &id, &detail, now, &ctx.tz));
    }
    viid(StatusCode::OK, codec::response_list(answers))
}

/// `DELETE /VIID/Subscribes?IDList=a,b`: cancels subscriptions.
async fn unsubscribe(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, uri: Uri) -> Response {
    const URL: &str = "/VIID/Subscribes";
    let target = match upper_of(&ctx, &headers) {
        Ok(u) => u.target.clone(),
        Err(r) => return r,
    };
    let list: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("IDList="))
        .flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let db = ctx.ingest.shared().registry.db().clone();
    let now = now_ms();
    let mut answers = Vec::new();
    for id in list {
        let status = match crate::outbox::subscriptions::cancel(&db, &target, &id).await {
            Ok(true) => Status::Ok,
            Ok(false) => Status::InvalidOperation,
            Err(_) => Status::DeviceBusy,
        };
        answers.push(codec::status_object(URL, status, &id, "", now, &ctx.tz));
    }
    viid(StatusCode::OK, codec::response_list(answers))
}

async fn keepalive(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    const URL: &str = "/VIID/System/Keepalive";
    let id = match system_id(&ctx, URL, &body, "KeepaliveObject") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let now = now_ms();
    if !ctx.registered(&id, now) {
        return ctx.challenge(URL, &id, false, "not registered: register first");
    }
    ctx.renew(&id, now, false).await;
    ctx.answer(StatusCode::OK, URL, Status::Ok, &id, "")
}

async fn unregister(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    const URL: &str = "/VIID/System/UnRegister";
    let id = match system_id(&ctx, URL, &body, "UnRegisterObject") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let was = ctx.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id).is_some();
    let shared = ctx.ingest.shared();
    let key = shared.registry.read().device(&id).map(|d| d.key);
    if let (true, Some(device)) = (was, key) {
        let _ = shared
            .presence
            .observe(Observation { device, at: now_ms(), evidence: Evidence::SipUnregister, detail: None })
            .await;
        info!(device = %id, "GA/T 1400 device unregistered.");
    }
    ctx.answer(StatusCode::OK, URL, Status::Ok, &id, "")
}

async fn time(State(ctx): State<Arc<Ctx>>) -> Response {
    viid(StatusCode::OK, codec::system_time(&ctx.server_id, now_ms(), &ctx.tz))
}

async fn not_found(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    ctx.answer(StatusCode::NOT_FOUND, uri.path(), Status::InvalidOperation, "", "no such resource on this view library")
}

/// The reason words of refusals that concern the device, not the object's content.
fn device_refusal(reason: &str) -> bool {
    matches!(reason, "quarantined" | "device_rejected" | "device_disabled" | "unknown_device")
}

async fn objects(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = uri.path().to_owned();
    let now = now_ms();
    let Some(user) =
        headers.get("user-identify").and_then(|h| h.to_str().ok()).map(str::trim).filter(|u| !u.is_empty())
    else {
        return ctx.challenge(&url, "", false, "User-Identify is missing: register, then send it on every request");
    };
    let user = user.to_owned();
    if !ctx.registered(&user, now) {
        return ctx.challenge(&url, &user, false, "not registered: register first");
    }
    ctx.renew(&user, now, false).await;
    let Some(sel) = ctx.profiles.select_http(&url) else {
        // No profile maps this collection: every object is answered, none is kept.
        let ids = match json(&ctx, &url, &body) {
            Ok(v) => object_ids(&v, &url),
            Err(r) => return r,
        };
        let detail = format!("no device profile maps {url} on this gateway");
        ctx.ingest.shared().rejections.record(
            now,
            "gat1400",
            "no_profile",
            format!("{peer}/{user}"),
            detail.clone(),
            &body,
        );
        let items = ids
            .iter()
            .map(|id| codec::status_object(&url, Status::InvalidOperation, id, &detail, now, &ctx.tz))
            .collect();
        return viid(StatusCode::OK, codec::response_list(items));
    };
    let verdicts = match ctx.ingest.message(&sel, &body, &format!("{peer}/{user}"), now).await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, %url, "Cannot commit GA/T 1400 objects; the device will send them again.");
            return ctx.answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &url,
                Status::DeviceBusy,
                "",
                "store unavailable, send again later",
            );
        }
    };
    // A message that could not be read at all is a 400 with the reason.
    if let [Verdict::Rejected { reason, detail, object_id: None, device: None }] = verdicts.as_slice() {
        if matches!(*reason, "bad_json" | "bad_charset" | "bad_envelope" | "too_many_records") {
            let status = if *reason == "bad_json" { Status::InvalidJsonFormat } else { Status::InvalidJsonContent };
            return ctx.answer(StatusCode::BAD_REQUEST, &url, status, "", detail);
        }
    }
    let items = verdicts
        .iter()
        .map(|v| match v {
            Verdict::Stored { object_id, .. } => {
                codec::status_object(&url, Status::Ok, object_id.as_deref().unwrap_or(""), "", now, &ctx.tz)
            }
            Verdict::Heartbeat | Verdict::Dropped => codec::status_object(&url, Status::Ok, "", "", now, &ctx.tz),
            Verdict::Rejected { reason, detail, object_id, .. } => {
                let status = if device_refusal(reason) { Status::InvalidOperation } else { Status::InvalidJsonContent };
                codec::status_object(
                    &url,
                    status,
                    object_id.as_deref().unwrap_or(""),
                    &format!("{reason}: {detail}"),
                    now,
                    &ctx.tz,
                )
            }
        })
        .collect();
    viid(StatusCode::OK, codec::response_list(items))
}

/// The ids of the objects in a collection body, for answering what no profile maps.
fn object_ids(v: &Value, url: &str) -> Vec<String> {
    let Some((list, obj, id)) = codec::list_keys(url) else { return vec![String::new()] };
    match v.get(list).and_then(|l| l.get(obj)) {
        Some(Value::Array(a)) => a.iter().map(|o| o.get(id).and_then(Value::as_str).unwrap_or("").to_owned()).collect(),
        Some(o @ Value::Object(_)) => vec![o.get(id).and_then(Value::as_str).unwrap_or("").to_owned()],
        _ => vec![String::new()],
    }
}
