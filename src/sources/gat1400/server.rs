//! The `/VIID/...` routes: digest registration, keepalive, unregister, time, and the object
//! collections. Every answer is a GA/T 1400 status object with the HTTP status that fits
//! (401 with a fresh challenge when a device must register, 400 for JSON that cannot be read,
//! 503 while the store cannot take records, 200 with per-object codes otherwise).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tracing::{info, warn};

use super::guard::{self, BodyError, Budget, Gate, Held, Refusal, Session};
use super::VALIDITY_MS;
use crate::clock::{now_ms, Millis};
use crate::event::{Evidence, Observation};
use crate::profiles::ProfileSet;
use crate::protocol::gat1400::codec::{self, Status};
use crate::registry::{Admission, AdmissionOutcome, Protocol, UnknownDevice};
use crate::sources::ingest::{Ingest, Verdict};

pub struct Ctx {
    ingest: Ingest,
    profiles: Arc<ProfileSet>,
    password: String,
    server_id: String,
    tz: chrono_tz::Tz,
    gate: Gate,
    budget: Arc<Budget>,
    max_body: usize,
    /// Subscription-mode upstreams.
    uppers: Vec<super::Upper>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &crate::config::Gat1400,
        max_body: usize,
        server_id: String,
        uppers: Vec<super::Upper>,
        tz: chrono_tz::Tz,
        profiles: Arc<ProfileSet>,
        ingest: Ingest,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            ingest,
            profiles,
            password: cfg.password.clone(),
            server_id,
            tz,
            gate: Gate::new(cfg.realm.clone(), cfg.digest_every_request),
            budget: Budget::for_max_body(max_body),
            max_body,
            uppers,
        })
    }

    fn answer(&self, http: StatusCode, url: &str, status: Status, id: &str, detail: &str) -> Response {
        viid(http, codec::response(url, status, id, detail, now_ms(), &self.tz))
    }

    fn challenge(&self, url: &str, id: &str, peer: SocketAddr, stale: bool, detail: &str) -> Response {
        let www = self.gate.challenge(now_ms(), stale, peer.ip());
        let mut r = self.answer(StatusCode::UNAUTHORIZED, url, Status::InvalidOperation, id, detail);
        if let Ok(v) = HeaderValue::from_str(&www) {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }

    /// The answer to a refusal, counted (`vigil_device_auth_refusals_total{port="gat1400"}`),
    /// kept in the rejections log and written to the log at most once per interval.
    fn refuse(&self, url: &str, id: &str, peer: SocketAddr, why: &Refusal) -> Response {
        let shared = self.ingest.shared();
        let now = now_ms();
        shared.metrics.auth_refusals.with_label_values(&["gat1400", why.reason()]).inc();
        shared.rejections.record(
            now,
            "gat1400",
            why.reason(),
            peer.to_string(),
            format!("{url} for {id:?}: {}", why.detail()),
            b"",
        );
        if let Some(held) = self.gate.hush.tick(now) {
            warn!(%peer, device = %id, %url, reason = why.reason(), held_back = held, "GA/T 1400 request refused before reading it.");
        }
        match why {
            Refusal::Limited => self.answer(StatusCode::FORBIDDEN, url, Status::InvalidOperation, id, &why.detail()),
            Refusal::NeedsDigest { stale } => self.challenge(url, id, peer, *stale, &why.detail()),
            _ => self.challenge(url, id, peer, false, &why.detail()),
        }
    }

    /// A 403 for a registration refused for what the device is (unknown under the admission
    /// policy, of another protocol, awaiting approval), kept with its body under `reason`.
    fn forbid(&self, url: &str, id: &str, peer: SocketAddr, reason: &'static str, why: &str, body: &[u8]) -> Response {
        let r = &self.ingest.shared().rejections;
        r.record(now_ms(), "gat1400", reason, peer.to_string(), format!("{id}: {why}"), body);
        self.answer(StatusCode::FORBIDDEN, url, Status::InvalidOperation, id, why)
    }

    /// The device's password (its own, else the port's default) and whether it wants a
    /// digest on every request (its `digest_every_request` attribute).
    fn credentials(&self, id: &str) -> (String, bool) {
        let known = self.ingest.shared().registry.read().device(id);
        let password = known.as_ref().and_then(|d| d.password.clone()).unwrap_or_else(|| self.password.clone());
        let wanted =
            known.as_ref().and_then(|d| d.attrs.get("digest_every_request")).and_then(Value::as_bool).unwrap_or(false);
        (password, wanted)
    }

    /// Whether a request after Register is the registered device's (checked from the headers).
    #[allow(clippy::result_large_err)] // the early answer
    fn caller(&self, url: &str, id: &str, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
        let (password, wanted) = self.credentials(id);
        self.gate
            .caller(id, peer, headers, "POST", &password, wanted, now_ms())
            .map_err(|why| self.refuse(url, id, peer, &why))
    }

    /// Reads a body under the port's budget, or the answer to send.
    async fn body(
        &self,
        url: &str,
        id: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<(Bytes, Held), Response> {
        guard::read(&self.budget, peer.ip(), headers, body, limit).await.map_err(|e| match e {
            BodyError::TooLarge { limit } => self.answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                url,
                Status::InvalidOperation,
                id,
                &format!("the body is larger than {limit} bytes"),
            ),
            BodyError::Busy => {
                self.ingest.shared().metrics.auth_refusals.with_label_values(&["gat1400", "busy"]).inc();
                self.answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    url,
                    Status::DeviceBusy,
                    id,
                    "too many bytes in flight (from this address or in total); send again later",
                )
            }
            BodyError::Slow => self.answer(
                StatusCode::REQUEST_TIMEOUT,
                url,
                Status::InvalidOperation,
                id,
                &format!("the body did not arrive within {} s", guard::BODY_DEADLINE.as_secs()),
            ),
            BodyError::Broken(e) => self.answer(StatusCode::BAD_REQUEST, url, Status::InvalidOperation, id, &e),
        })
    }

    /// Renews a registration and tells presence.
    async fn renew(&self, id: &str, now: Millis, register: bool) {
        self.gate.renew(id, now + VALIDITY_MS);
        let shared = self.ingest.shared();
        let key = shared.registry.read().device(id).map(|d| d.key);
        if let Some(device) = key {
            let evidence = Evidence::ViewLibrary { validity_ms: VALIDITY_MS, register };
            let _ = shared.presence.observe(Observation { device, at: now, evidence, detail: None }).await;
        }
    }
}

/// The `User-Identify` header, trimmed, when present and not empty.
fn user_identify(headers: &HeaderMap) -> Option<String> {
    headers
        .get("user-identify")
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

/// A JSON answer with the view library's content type.
fn viid(http: StatusCode, body: Value) -> Response {
    let mut r = (http, body.to_string()).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/VIID+JSON;charset=UTF-8"));
    r
}

pub fn router(ctx: Arc<Ctx>) -> Router {
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

async fn register(State(ctx): State<Arc<Ctx>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    const URL: &str = "/VIID/System/Register";
    let (parts, body) = req.into_parts();
    let now = now_ms();
    if ctx.gate.limited(peer.ip(), now) {
        return ctx.refuse(URL, "", peer, &Refusal::Limited);
    }
    // Challenge before reading the body: digest clients (curl among them) send the first
    // request with an empty body.
    if !parts.headers.contains_key("authorization") {
        return ctx.challenge(URL, "", peer, false, "authenticate with HTTP digest");
    }
    let (body, _held) = match ctx.body(URL, "", peer, &parts.headers, body, guard::SYSTEM_BODY_MAX).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let id = match system_id(&ctx, URL, &body, "RegisterObject") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let shared = ctx.ingest.shared();
    let (password, _) = ctx.credentials(&id);
    let username = match ctx.gate.verify(&parts.headers, "POST", &password, peer.ip(), now) {
        Ok(u) => u,
        Err(why) => return ctx.refuse(URL, &id, peer, &why),
    };
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
        origin: Some(peer.ip().to_string()),
    };
    let device = match shared.registry.admit(unknown).await {
        Ok(AdmissionOutcome::Known(d)) => d,
        Ok(AdmissionOutcome::Added(d)) => {
            info!(device = %d.id, admission = %d.admission, "New GA/T 1400 device from its registration.");
            let _ = shared.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await;
            d
        }
        Ok(AdmissionOutcome::Refused(r)) => {
            shared.metrics.admission_refusals.with_label_values(&["gat1400", r.reason()]).inc();
            return ctx.forbid(URL, &id, peer, "unknown_device", &format!("unknown device ({})", r.detail()), &body);
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
    if device.protocol != Protocol::Gat1400 {
        // A device of another protocol (an RTSP camera, an `external` gate) has its presence
        // from that protocol: a view-library registration may not speak for it.
        shared.metrics.auth_refusals.with_label_values(&["gat1400", "other_protocol"]).inc();
        let why = format!("RegisterObject.DeviceID: {id} is a {} device on this gateway", device.protocol.as_str());
        return ctx.forbid(URL, &id, peer, "other_protocol", &why, &body);
    }
    if device.admission != Admission::Approved || !device.enabled {
        return ctx.forbid(URL, &id, peer, "quarantined", "device awaits approval", &body);
    }
    ctx.gate.bind(&id, Session { until: now + VALIDITY_MS, ip: peer.ip(), username });
    ctx.renew(&id, now, true).await;
    info!(device = %id, %peer, "GA/T 1400 device registered.");
    ctx.answer(StatusCode::OK, URL, Status::Ok, &id, "")
}

/// The upstream an upper view library's request belongs to: its `User-Identify` names a
/// subscription-mode upstream, the request comes from that upstream's configured host, and
/// it carries a digest of the upstream's password (401 with a challenge without one).
#[allow(clippy::result_large_err)] // the early answer, as json() and system_id() give it
fn upper_of<'a>(
    ctx: &'a Ctx,
    peer: SocketAddr,
    headers: &HeaderMap,
    method: &str,
) -> Result<&'a super::Upper, Response> {
    const URL: &str = "/VIID/Subscribes";
    let now = now_ms();
    if ctx.gate.limited(peer.ip(), now) {
        return Err(ctx.refuse(URL, "", peer, &Refusal::Limited));
    }
    let who = user_identify(headers).unwrap_or_default();
    let Some(upper) = ctx.uppers.iter().find(|u| u.server_id == who) else {
        ctx.ingest.shared().metrics.auth_refusals.with_label_values(&["gat1400", "not_an_upper"]).inc();
        return Err(ctx.answer(
            StatusCode::FORBIDDEN,
            URL,
            Status::InvalidOperation,
            &who,
            "not an upper view library of this gateway (User-Identify)",
        ));
    };
    if !upper.addresses.contains(&peer.ip()) {
        ctx.ingest.shared().metrics.auth_refusals.with_label_values(&["gat1400", "not_from_upper_host"]).inc();
        if let Some(held) = ctx.gate.hush.tick(now) {
            warn!(%peer, upstream = %upper.target, held_back = held, "A subscription request in an upper's name from another host; refused.");
        }
        return Err(ctx.answer(
            StatusCode::FORBIDDEN,
            URL,
            Status::InvalidOperation,
            &who,
            "not from the upper view library's configured host",
        ));
    }
    match ctx.gate.verify(headers, method, &upper.password, peer.ip(), now) {
        Ok(_) => Ok(upper),
        Err(why) => Err(ctx.refuse(URL, &who, peer, &why)),
    }
}

/// `POST /VIID/Subscribes`: an upper view library subscribes (or cancels, `OperateType` 1);
/// answered per `SubscribeID`.
async fn subscribes(State(ctx): State<Arc<Ctx>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    use crate::outbox::subscriptions;
    use crate::protocol::gat1400::subscriptions::{parse, Request};
    const URL: &str = "/VIID/Subscribes";
    let (parts, body) = req.into_parts();
    let upper = match upper_of(&ctx, peer, &parts.headers, "POST") {
        Ok(u) => u.clone(),
        Err(r) => return r,
    };
    let (body, _held) = match ctx.body(URL, "", peer, &parts.headers, body, guard::SYSTEM_BODY_MAX).await {
        Ok(b) => b,
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
        let (status, detail) = match parse(o, &target, &upper.host, &ctx.tz) {
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
async fn unsubscribe(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    const URL: &str = "/VIID/Subscribes";
    let target = match upper_of(&ctx, peer, &headers, "DELETE") {
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

/// The device a system request (Keepalive, UnRegister) is for, checked as the registered
/// device: from `User-Identify` before the body is read where the header is sent, else from
/// the (small, bounded) body; the body's `DeviceID` must be the header's.
async fn system_caller(ctx: &Ctx, url: &str, object: &str, peer: SocketAddr, req: Request) -> Result<String, Response> {
    let (parts, body) = req.into_parts();
    let header = user_identify(&parts.headers);
    if let Some(id) = &header {
        ctx.caller(url, id, peer, &parts.headers)?;
    } else if ctx.gate.limited(peer.ip(), now_ms()) {
        return Err(ctx.refuse(url, "", peer, &Refusal::Limited));
    }
    let (body, _held) = ctx.body(url, "", peer, &parts.headers, body, guard::SYSTEM_BODY_MAX).await?;
    let id = system_id(ctx, url, &body, object)?;
    match header {
        Some(h) if h != id => Err(ctx.answer(
            StatusCode::BAD_REQUEST,
            url,
            Status::InvalidJsonContent,
            &id,
            &format!("{object}.DeviceID {id} is not the User-Identify {h}"),
        )),
        Some(_) => Ok(id),
        None => ctx.caller(url, &id, peer, &parts.headers).map(|()| id),
    }
}

async fn keepalive(State(ctx): State<Arc<Ctx>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    const URL: &str = "/VIID/System/Keepalive";
    let id = match system_caller(&ctx, URL, "KeepaliveObject", peer, req).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    ctx.renew(&id, now_ms(), false).await;
    ctx.answer(StatusCode::OK, URL, Status::Ok, &id, "")
}

async fn unregister(State(ctx): State<Arc<Ctx>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    const URL: &str = "/VIID/System/UnRegister";
    let id = match system_caller(&ctx, URL, "UnRegisterObject", peer, req).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let was = ctx.gate.unbind(&id);
    let shared = ctx.ingest.shared();
    let key = shared.registry.read().device(&id).map(|d| d.key);
    if let (true, Some(device)) = (was, key) {
        let _ = shared
            .presence
            .observe(Observation { device, at: now_ms(), evidence: Evidence::SipUnregister, detail: None })
            .await;
        info!(device = %id, %peer, "GA/T 1400 device unregistered.");
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
    matches!(reason, "quarantined" | "device_rejected" | "device_disabled" | "unknown_device" | "not_carried")
}

async fn objects(State(ctx): State<Arc<Ctx>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let url = parts.uri.path().to_owned();
    // Who sends it is settled from the headers alone: nothing is read for a stranger.
    let Some(user) = user_identify(&parts.headers) else {
        if ctx.gate.limited(peer.ip(), now_ms()) {
            return ctx.refuse(&url, "", peer, &Refusal::Limited);
        }
        return ctx.challenge(
            &url,
            "",
            peer,
            false,
            "User-Identify is missing: register, then send it on every request",
        );
    };
    if let Err(r) = ctx.caller(&url, &user, peer, &parts.headers) {
        return r;
    }
    let (body, _held) = match ctx.body(&url, &user, peer, &parts.headers, body, ctx.max_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = now_ms();
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
    let verdicts = match ctx
        .ingest
        .message_from(&sel, &body, (&format!("{peer}/{user}"), Some(&peer.ip().to_string())), Some(&user), now)
        .await
    {
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
