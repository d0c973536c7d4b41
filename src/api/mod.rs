//! The HTTP API of shared/API.md (axum), the dashboard at `/` and `/metrics`.
//!
//! Handlers read the registry cache, ask presence through its handle and read the latest
//! rate snapshot; writes go through the `Registry`. Of the sources, the API reads only what
//! they publish for it (the GB/T 28181 session board); it never calls into one.
//! Auth (bearer tokens, viewer/admin), body limits and request timeouts are layers here.

mod auth;
mod channels;
mod devices;
mod error;
mod events;
mod orgs;
mod patrol;
mod rate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutLayer;

pub use error::{ApiError, ApiResult};

use crate::clock::{now_ms, Millis};
use crate::config::Config;
use crate::presence::runner::{PresenceHandle, WriterHealth};
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub presence: PresenceHandle,
    pub rate: crate::rate::sampling::RateView,
    pub metrics: Metrics,
    pub config: Arc<Config>,
    pub tz: chrono_tz::Tz,
    pub started_at: Millis,
    pub writer: Arc<WriterHealth>,
    /// One CSV import at a time: imports are all-or-nothing and can be large.
    pub import_lock: Arc<tokio::sync::Mutex<()>>,
    /// Rendered online-rate answers for the current snapshot.
    pub rate_cache: Arc<std::sync::Mutex<rate::RenderCache>>,
    /// Messages sources refused, with their raw bytes.
    pub rejections: crate::rejections::Rejections,
    /// Normalized events (alarms, status changes, ...).
    pub events: crate::events::EventLog,
    /// GB/T 28181 sessions as the SIP source publishes them (read only).
    pub gb_sessions: crate::sessions::SessionBoard,
    /// Images events refer to.
    pub media: crate::images::ImageStore,
    /// The device profiles in use (read only).
    pub profiles: Arc<crate::profiles::ProfileSet>,
    /// RTSP stream health and snapshots (read only).
    pub streams: crate::media::StreamBoard,
    /// Patrol rounds: start one, read the last.
    pub patrol: crate::patrol::Patrol,
    /// How each upstream's runner is doing (read only).
    pub relay_targets: Arc<Vec<Arc<std::sync::Mutex<crate::outbox::runner::TargetStatus>>>>,
    /// Whether the outbox takes records (backlog and free disk).
    pub outbox_gate: crate::outbox::gate::Gate,
}

impl AppState {
    pub fn time(&self, at: Millis) -> String {
        crate::clock::rfc3339(at, &self.tz)
    }
}

const DASHBOARD: &str = include_str!("assets/index.html");

/// `GET /relay/targets`: per upstream, whether it is reachable, its backlog and the age of
/// the oldest undelivered record, what was delivered and parked as dead, the last error.
async fn relay_targets(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let now = now_ms();
    let mut items = Vec::new();
    for t in state.relay_targets.iter() {
        let s = t.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let c = crate::outbox::store::counts(state.registry.db(), &s.name).await?;
        let dead = crate::outbox::store::dead_detail(state.registry.db(), &s.name, 20).await?;
        let st = match &s.session {
            Some(session) => session.state,
            None if s.connected => "connected",
            None if s.last_error.is_some() => "failing",
            None => "starting",
        };
        items.push(serde_json::json!({
            "name": s.name,
            "protocol": s.protocol,
            "state": st,
            "backlog": c.pending,
            "oldest_undelivered_age_s": c.oldest_pending_at.map(|t| (now - t).max(0) / 1000),
            "delivered": c.delivered,
            "dead": c.dead,
            "failed": s.retried,
            "last_error": s.last_error,
            "alarm": s.alarm,
            "last_error_at": s.last_error_at.map(|t| state.time(t)),
            "last_delivery_at": s.last_delivery_at.map(|t| state.time(t)),
            "session": s.session.as_ref().map(|x| serde_json::json!({
                "state": x.state,
                "until": x.until.map(|t| state.time(t)),
                "last_keepalive_at": x.last_keepalive_at.map(|t| state.time(t)),
                "next_attempt_at": x.next_attempt_at.map(|t| state.time(t)),
                "failures": x.failures,
                "view": x.view.as_ref().map(|v| serde_json::json!({
                    "channels": v.channels,
                    "on": v.on,
                    "told_on": v.told_on,
                    "subscribed_until": v.subscribed_until.map(|t| state.time(t)),
                    "plays": v.plays,
                })),
            })),
            "recent_dead": dead.into_iter().map(|d| serde_json::json!({"seq": d.seq, "object_id": d.object_id, "reason": d.reason})).collect::<Vec<_>>(),
        }));
    }
    let g = &state.outbox_gate;
    Ok(Json(serde_json::json!({
        "items": items,
        "outbox": {"accepting": g.is_open(), "reason": g.reason(), "warning": g.warning()},
    })))
}

/// `POST /api/v1/relay/targets/{name}/requeue` (admin): dead deliveries back in the queue,
/// those named by `seqs` or, with no body or an empty list, all of the target's.
async fn relay_requeue(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    if !state.relay_targets.iter().any(|t| t.lock().unwrap_or_else(|p| p.into_inner()).name == name) {
        return Err(ApiError::not_found(format!("no upstream named {name:?}")));
    }
    let seqs: Vec<i64> = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_body("body", format!("not JSON: {e}")))?;
        match v.get("seqs") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64().ok_or_else(|| ApiError::bad_body("seqs", "must be a list of integers")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ApiError::bad_body("seqs", "must be a list of integers")),
        }
    };
    let n = crate::outbox::store::requeue(state.registry.db(), &name, &seqs, now_ms()).await?;
    tracing::info!(target = %name, requeued = n, "Dead deliveries put back in the queue by an operator.");
    Ok(Json(serde_json::json!({ "target": name, "requeued": n })))
}

/// `GET /api/v1/relay/targets/{name}/dead?limit=N`: the records an upstream refused for good,
/// newest first, each with the reason, the request sent for it (long strings such as inline
/// pictures elided) and the upstream's answer to it, when the sink had them.
async fn relay_dead(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(params): axum::extract::Query<Params>,
) -> ApiResult<Json<serde_json::Value>> {
    if !state.relay_targets.iter().any(|t| t.lock().unwrap_or_else(|p| p.into_inner()).name == name) {
        return Err(ApiError::not_found(format!("no upstream named {name:?}")));
    }
    let limit = limit(&params)?;
    let dead = crate::outbox::store::dead_detail(state.registry.db(), &name, limit as i64).await?;
    let items: Vec<serde_json::Value> = dead
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "seq": d.seq, "event_id": d.event_id, "object_id": d.object_id, "reason": d.reason,
                "request": d.request, "response": d.response, "parked_at": d.parked_at.map(|t| state.time(t)),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "target": name, "items": items })))
}

pub fn router(state: AppState) -> Router {
    let cfg = &state.config.http;
    let api = Router::new()
        .route("/health", get(health))
        .route("/orgs", get(orgs::list).post(orgs::create))
        .route("/orgs/{id}", get(orgs::get_one).patch(orgs::patch).delete(orgs::delete))
        .route("/devices", get(devices::list).post(devices::create))
        .route("/devices/import", post(devices::import))
        .route("/devices/{id}", get(devices::get_one).patch(devices::patch).delete(devices::delete))
        .route("/devices/{id}/channels", get(devices::channels))
        .route("/devices/{id}/stream", get(devices::stream))
        .route("/devices/{id}/snapshot", get(devices::snapshot))
        .route("/devices/{id}/channels/{cid}/stream", get(channels::stream).post(channels::pull))
        .route("/devices/{id}/channels/{cid}/snapshot", get(channels::snapshot))
        .route("/patrol", get(patrol::last).post(patrol::start))
        .route("/devices/{id}/presence/history", get(devices::history))
        .route("/presence/not-online", get(devices::not_online))
        .route("/observations", post(devices::observations))
        .route("/rejections", get(rejections))
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::get_one))
        .route("/images/{hash}", get(events::image))
        .route("/profiles", get(events::profiles))
        .route("/relay/targets", get(relay_targets))
        .route("/relay/targets/{name}/requeue", post(relay_requeue))
        .route("/relay/targets/{name}/dead", get(relay_dead))
        .route("/online-rate", get(rate::current))
        .route("/online-rate/history", get(rate::history))
        .route("/reports/online/daily", get(rate::daily));
    // The dashboard shows every time in the district's zone, which it is given here.
    let zone = serde_json::to_string(&state.config.assessment.timezone).unwrap_or_else(|_| "\"UTC\"".into());
    let page = axum::body::Bytes::from(DASHBOARD.replace("\"__VIGIL_TIMEZONE__\"", &zone));
    let policy = content_security_policy(&page);
    let page = Html(page);
    Router::new()
        .route("/", get(move || std::future::ready(page.clone())))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such path; see API.md") })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(cfg.max_body))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, cfg.request_timeout))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let policy = policy.clone();
            async move { harden(req, next, policy).await }
        }))
        .with_state(state)
}

/// The dashboard's Content-Security-Policy: scripts only the page's own (by hash, so an
/// injected script does not run), everything else from this origin, never framed.
fn content_security_policy(page: &[u8]) -> header::HeaderValue {
    use base64::Engine as _;
    use sha2::Digest as _;
    let text = String::from_utf8_lossy(page);
    let scripts: Vec<String> = text
        .split("<script>")
        .skip(1)
        .filter_map(|s| s.split_once("</script>").map(|(body, _)| body))
        .map(|body| {
            let digest = sha2::Sha256::digest(body.as_bytes());
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        })
        .collect();
    let policy = format!(
        "default-src 'self'; script-src {}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        scripts.join(" ")
    );
    header::HeaderValue::from_str(&policy).unwrap_or_else(|_| header::HeaderValue::from_static("default-src 'self'"))
}

/// Every answer: headers that stop framing, type sniffing and referrer leaks, and the CSP; an
/// error a layer below produced as plain text (a body over `http.max_body`, a request over
/// `http.request_timeout`) rewritten as API.md's JSON error.
async fn harden(req: Request, next: Next, policy: header::HeaderValue) -> Response {
    let mut resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        let status = resp.status();
        let rewritten = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Some(ApiError::new(status, "payload_too_large", "the body is larger than http.max_body allows"))
            }
            StatusCode::REQUEST_TIMEOUT => {
                Some(ApiError::new(status, "request_timeout", "the request took longer than http.request_timeout"))
            }
            _ => None,
        };
        if let Some(e) = rewritten {
            resp = e.into_response();
        }
    }
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, policy);
    resp
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.metrics.http_requests.with_label_values(&[class]).inc();
    resp
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let db_ok =
        tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.registry.db().pool))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
    let writer_ok = state.writer.db_ok.load(std::sync::atomic::Ordering::Relaxed);
    let accepting = state.outbox_gate.is_open();
    Json(serde_json::json!({
        "status": if db_ok && writer_ok && accepting { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": (now_ms() - state.started_at) / 1000,
        "database": if db_ok { "ok" } else { "unavailable" },
        "outbox": if accepting { "accepting" } else { "full" },
        "outbox_reason": state.outbox_gate.reason().or_else(|| state.outbox_gate.warning()),
        "gateway_id": state.config.gateway.id,
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let ok = state.writer.db_ok.load(std::sync::atomic::Ordering::Relaxed);
    state.metrics.db_up.set(i64::from(ok));
    // Streams by state and kind (RTSP cameras and GB/T 28181 channels), as the board has
    // them at the scrape.
    let g = &state.metrics.rtsp_streams;
    g.reset();
    for ((stream_state, kind), n) in state.streams.count_states() {
        g.with_label_values(&[stream_state.as_str(), kind]).set(n);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

/// `GET /api/v1/rejections?source=&reason=&limit=`: refused messages, newest first, each with
/// its raw bytes (truncated) and why.
async fn rejections(
    State(state): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<Params>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = limit(&params)?;
    let items: Vec<serde_json::Value> = state
        .rejections
        .list_stored(params.get("source").map(String::as_str), params.get("reason").map(String::as_str), limit)
        .await
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "at": state.time(r.at), "source": r.source, "reason": r.reason, "peer": r.peer,
                "detail": r.detail, "raw": r.raw, "raw_len": r.raw_len,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({"items": items, "next_cursor": null})))
}

/// Query parameters as a map: handlers parse each one and name it in errors.
pub type Params = HashMap<String, String>;

/// Parses a JSON body, naming the offending field in the error.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { "body".to_owned() } else { path };
        ApiError::bad_body(&field, e.inner())
    })
}

/// `?limit=` (default 100, at most 1000).
pub fn limit(params: &Params) -> ApiResult<usize> {
    match params.get("limit") {
        None => Ok(100),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_query("limit", format!("{v:?} is not a number from 1 to 1000"))),
        },
    }
}

/// An RFC 3339 time in the query.
pub fn time_param(params: &Params, name: &str) -> ApiResult<Option<Millis>> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => crate::clock::parse_rfc3339(v).map(Some).ok_or_else(|| {
            ApiError::bad_query(name, format!("{v:?} is not an RFC 3339 time such as 2026-11-26T08:00:00+08:00"))
        }),
    }
}
