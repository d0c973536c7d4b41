//! `/api/v1/devices` (registry CRUD, CSV import, channels, presence history), the
//! not-online list the dashboard shows, and `/api/v1/observations`, the integration hook
//! through which other systems (and tests) hand presence evidence in.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{limit, parse_body, time_param, ApiError, ApiResult, AppState, Params};
use crate::clock::{now_ms, Millis};
use crate::event::{Evidence, Observation};
use crate::presence::{State as PState, View};
use crate::registry::{import, Admission, Device, DeviceKind, DevicePatch, NewDevice, Protocol};

/// Longest TTL an `alive` observation may grant.
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Most observations in one request.
const MAX_OBSERVATIONS: usize = 10_000;

fn presence_json(state: &AppState, v: Option<&View>) -> Value {
    match v {
        Some(v) => json!({
            "state": v.state,
            "since": state.time(v.since),
            "last_seen": v.last_seen.map(|t| state.time(t)),
            "reason": v.reason.as_str(),
            "detail": v.detail.as_deref(),
        }),
        None => json!({"state": "unknown", "since": null, "last_seen": null, "reason": "added", "detail": null}),
    }
}

fn device_json(state: &AppState, d: &Device, v: Option<&View>) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "kind": d.kind,
        "protocol": d.protocol,
        "org_id": d.org_id,
        "profile": d.profile,
        "rtsp_url": d.rtsp_url.as_deref().map(redact_url),
        "enabled": d.enabled,
        "maintenance": d.maintenance,
        "admission": d.admission,
        "presence": presence_json(state, v),
        "attrs": d.attrs,
        "created_at": state.time(d.created_at),
        "gb28181": (d.protocol == Protocol::Gb28181).then(|| gb_json(state, d)),
    })
}

/// A GB/T 28181 device's SIP session (from the source's board) and what it said of itself.
fn gb_json(state: &AppState, d: &Device) -> Value {
    let attr = |k: &str| d.attrs.get(k).cloned().unwrap_or(Value::Null);
    let mut v = json!({
        "registered": false,
        "manufacturer": attr("manufacturer"),
        "model": attr("model"),
        "firmware": attr("firmware"),
        "channel_count": attr("channel_count"),
    });
    if let (Some(s), Some(o)) = (state.gb_sessions.get(&d.id), v.as_object_mut()) {
        let t = |at: Option<Millis>| at.map(|a| state.time(a));
        o.insert("registered".into(), json!(s.expires_at > now_ms()));
        o.insert("source".into(), json!(s.source.to_string()));
        o.insert("transport".into(), json!(s.transport));
        o.insert("contact".into(), json!(s.contact));
        o.insert("registered_at".into(), json!(state.time(s.registered_at)));
        o.insert("expires_at".into(), json!(state.time(s.expires_at)));
        o.insert("last_keepalive".into(), json!(t(s.last_keepalive)));
        o.insert("keepalive_window_s".into(), json!(s.keepalive_window_ms / 1000));
        o.insert("keepalive_from".into(), json!(s.keepalive_from));
        o.insert("charset".into(), json!(s.charset));
        o.insert("user_agent".into(), json!(s.user_agent));
        o.insert("gb_version".into(), json!(s.gb_version));
        o.insert("catalog_subscription_until".into(), json!(t(s.catalog_subscription_until)));
    }
    v
}

/// Credentials never leave the gateway in a URL.
fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut p) if p.password().is_some() => {
            let _ = p.set_password(Some("***"));
            p.to_string()
        }
        _ => u.to_owned(),
    }
}

fn parse_enum<T>(params: &Params, name: &str, parse: fn(&str) -> Option<T>, names: String) -> ApiResult<Option<T>> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse(v).map(Some).ok_or_else(|| ApiError::bad_query(name, format!("{v:?} is not one of {names}"))),
    }
}

pub async fn list(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let limit = limit(&params)?;
    let kind = parse_enum(&params, "kind", DeviceKind::parse, DeviceKind::names())?;
    let protocol = parse_enum(&params, "protocol", Protocol::parse, Protocol::names())?;
    let admission = parse_enum(&params, "admission", Admission::parse, Admission::names())?;
    let want_state = parse_enum(&params, "state", PState::parse, "online, offline, unknown".into())?;
    let q = params.get("q").map(|s| s.to_lowercase()).filter(|s| !s.is_empty());
    let states = match want_state {
        Some(_) => Some(state.presence.states().await?),
        None => None,
    };
    let page: Vec<Arc<Device>> = {
        let cache = state.registry.read();
        let subtree = match params.get("org").filter(|v| !v.is_empty()) {
            Some(o) if cache.org(o).is_none() => return Err(ApiError::bad_query("org", format!("no org {o:?}"))),
            Some(o) => Some(cache.subtree(o)),
            None => None,
        };
        cache
            .devices_after(params.get("cursor").map(String::as_str))
            .filter(|d| kind.is_none_or(|k| d.kind == k))
            .filter(|d| protocol.is_none_or(|p| d.protocol == p))
            .filter(|d| admission.is_none_or(|a| d.admission == a))
            .filter(|d| subtree.as_ref().is_none_or(|s| d.org_id.as_ref().is_some_and(|o| s.contains(o))))
            .filter(|d| q.as_ref().is_none_or(|q| d.id.to_lowercase().contains(q) || d.name.to_lowercase().contains(q)))
            .filter(|d| match (&states, want_state) {
                (Some(s), Some(w)) => PState::from_u8(s.get(d.key as usize).copied().unwrap_or(0)) == w,
                _ => true,
            })
            .take(limit + 1)
            .cloned()
            .collect()
    };
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    let views = state.presence.views(page.iter().map(|d| d.key).collect()).await?;
    let items: Vec<Value> = page.iter().zip(views.iter()).map(|(d, v)| device_json(&state, d, v.as_ref())).collect();
    let next = if more { page.last().map(|d| d.id.clone()) } else { None };
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

pub(super) fn find(state: &AppState, id: &str) -> ApiResult<Arc<Device>> {
    state.registry.read().device(id).ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))
}

pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let d = find(&state, &id)?;
    let v = state.presence.views(vec![d.key]).await?;
    Ok(Json(device_json(&state, &d, v.first().and_then(Option::as_ref))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeviceBody {
    id: String,
    #[serde(default)]
    name: String,
    kind: String,
    protocol: String,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    rtsp_url: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    attrs: serde_json::Map<String, Value>,
}

pub async fn create(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: NewDeviceBody = parse_body(&body)?;
    let kind = DeviceKind::parse(&b.kind)
        .ok_or_else(|| ApiError::bad_body("kind", format!("{:?} is not one of {}", b.kind, DeviceKind::names())))?;
    let protocol = Protocol::parse(&b.protocol).ok_or_else(|| {
        ApiError::bad_body("protocol", format!("{:?} is not one of {}", b.protocol, Protocol::names()))
    })?;
    let d = state
        .registry
        .create_device(NewDevice {
            id: b.id,
            name: b.name,
            kind,
            protocol,
            org_id: b.org_id,
            profile: b.profile,
            rtsp_url: b.rtsp_url,
            password: b.password,
            admission: Admission::Approved,
            attrs: b.attrs,
        })
        .await?;
    state.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await?;
    Ok((StatusCode::CREATED, Json(device_json(&state, &d, None))))
}

pub async fn import(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("text/csv") && !ct.starts_with("application/csv") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the CSV with Content-Type: text/csv",
        ));
    }
    let _guard = state.import_lock.lock().await;
    let devices = import::parse(&state.registry, &body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_csv",
        message: e.message,
        field: None,
        rows: Some(e.rows),
    })?;
    let total = devices.len();
    let (written, updated) = state.registry.upsert_devices(devices, |_| {}).await?;
    state
        .presence
        .track(written.iter().map(|d| (d.key, Arc::from(d.id.as_str()), d.protocol.as_str())).collect())
        .await?;
    tracing::info!(created = total - updated, updated, "Devices imported from CSV.");
    Ok(Json(json!({"created": total - updated, "updated": updated})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    #[serde(default, with = "super::orgs::double_option")]
    org_id: Option<Option<String>>,
    enabled: Option<bool>,
    maintenance: Option<bool>,
    admission: Option<String>,
    /// A new password; `null` goes back to the port's default.
    #[serde(default, with = "super::orgs::double_option")]
    password: Option<Option<String>>,
}

pub async fn patch(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<Value>> {
    let p: PatchBody = parse_body(&body)?;
    let admission = match p.admission.as_deref() {
        None => None,
        Some("approved") => Some(Admission::Approved),
        Some("rejected") => Some(Admission::Rejected),
        Some(other) => return Err(ApiError::bad_body("admission", format!("{other:?} is not approved or rejected"))),
    };
    let d = state
        .registry
        .update_device(
            &id,
            DevicePatch {
                name: p.name,
                org_id: p.org_id,
                enabled: p.enabled,
                maintenance: p.maintenance,
                admission,
                password: p.password,
            },
        )
        .await?;
    let v = state.presence.views(vec![d.key]).await?;
    Ok(Json(device_json(&state, &d, v.first().and_then(Option::as_ref))))
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let key = state.registry.delete_device(&id).await?;
    state.presence.forget(key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn channels(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    find(&state, &id)?;
    let chs = state.registry.read().channels(&id);
    let items: Vec<Value> = chs
        .iter()
        .flat_map(|c| c.iter())
        .map(
            |c| json!({"id": c.id, "name": c.name, "status": if c.status_on { "ON" } else { "OFF" }, "attrs": c.attrs}),
        )
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult<Json<Value>> {
    find(&state, &id)?;
    let now = now_ms();
    let to = time_param(&params, "to")?.unwrap_or(now + 1);
    let from = time_param(&params, "from")?.unwrap_or(to - 7 * 86_400_000);
    if from > to {
        return Err(ApiError::bad_query("from", "is after to"));
    }
    let limit = limit(&params)?;
    let rows = crate::presence::store::history(&state.registry.db().pool, &id, from, to, limit as i64).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({"at": state.time(r.at), "from": r.from, "to": r.to, "reason": r.reason, "detail": r.detail}))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// Devices not online, longest first, with their place: what the watch floor works from.
pub async fn not_online(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let limit = limit(&params)?;
    let q = params.get("q").map(|s| s.to_lowercase()).filter(|s| !s.is_empty());
    let kind = parse_enum(&params, "kind", DeviceKind::parse, DeviceKind::names())?;
    let list = state.presence.not_online().await?;
    let count_maintenance = state.config.assessment.count_maintenance;
    let mut items: Vec<(i64, Value)> = Vec::new();
    let mut total = 0usize;
    {
        let cache = state.registry.read();
        let subtree = match params.get("org").filter(|v| !v.is_empty()) {
            Some(o) if cache.org(o).is_none() => return Err(ApiError::bad_query("org", format!("no org {o:?}"))),
            Some(o) => Some(cache.subtree(o)),
            None => None,
        };
        for (key, v) in &list {
            let Some(d) = cache.device_by_key(*key) else { continue };
            if !d.counted(count_maintenance) || kind.is_some_and(|k| d.kind != k) {
                continue;
            }
            if subtree.as_ref().is_some_and(|s| !d.org_id.as_ref().is_some_and(|o| s.contains(o))) {
                continue;
            }
            let place: Vec<String> = d
                .org_id
                .as_deref()
                .map(|o| cache.ancestors(o).iter().rev().map(|a| a.name.clone()).collect())
                .unwrap_or_default();
            let place = place.join(" / ");
            if let Some(q) = &q {
                if !(d.id.to_lowercase().contains(q)
                    || d.name.to_lowercase().contains(q)
                    || place.to_lowercase().contains(q))
                {
                    continue;
                }
            }
            total += 1;
            items.push((
                v.since,
                json!({
                    "id": d.id, "name": d.name, "kind": d.kind, "protocol": d.protocol, "org_id": d.org_id,
                    "place": place, "state": v.state, "since": state.time(v.since),
                    "last_seen": v.last_seen.map(|t| state.time(t)), "reason": v.reason.as_str(), "detail": v.detail.as_deref(),
                }),
            ));
        }
    }
    items.sort_by_key(|(since, _)| *since);
    let items: Vec<Value> = items.into_iter().take(limit).map(|(_, v)| v).collect();
    Ok(Json(json!({"items": items, "total": total, "next_cursor": null})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationBody {
    device_id: String,
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ObservationBody>),
    One(ObservationBody),
}

pub async fn observations(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let list = match parse_body::<OneOrMany>(&body) {
        Ok(OneOrMany::One(o)) => vec![o],
        Ok(OneOrMany::Many(v)) => v,
        // Untagged enums lose the field name: parse again as one object to name it.
        Err(_) => vec![parse_body::<ObservationBody>(&body)?],
    };
    if list.len() > MAX_OBSERVATIONS {
        return Err(ApiError::bad_body("body", format!("at most {MAX_OBSERVATIONS} observations in one request")));
    }
    let now = now_ms();
    let mut out = Vec::with_capacity(list.len());
    for (i, o) in list.iter().enumerate() {
        let at = |f: &str| if list.len() > 1 { format!("[{i}].{f}") } else { f.to_owned() };
        let key = state.registry.read().device(&o.device_id).map(|d| d.key);
        let Some(key) = key else {
            return Err(ApiError::not_found(format!("no device {:?}", o.device_id)));
        };
        let reason = o.reason.as_deref().map(|r| r.chars().take(200).collect::<String>());
        let evidence = match o.kind.as_str() {
            "alive" => {
                let ttl = match &o.ttl {
                    None => Duration::from_secs(90),
                    Some(t) => humantime::parse_duration(t).map_err(|e| {
                        ApiError::bad_body(&at("ttl"), format!("{t:?} is not a duration such as \"90s\": {e}"))
                    })?,
                };
                if ttl.is_zero() || ttl > MAX_TTL {
                    return Err(ApiError::bad_body(&at("ttl"), "must be between 1ms and 30 days"));
                }
                Evidence::Alive { ttl_ms: ttl.as_millis() as i64 }
            }
            "dead" => Evidence::Dead,
            other => return Err(ApiError::bad_body(&at("kind"), format!("{other:?} is not alive or dead"))),
        };
        out.push(Observation { device: key, at: now, evidence, detail: reason.map(Arc::from) });
    }
    let n = out.len();
    for o in out {
        state.presence.observe(o).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": n}))))
}

/// `GET /devices/{id}/stream`: the RTSP stream's health (state with reason and since, codec,
/// resolution, fps, bitrate, GOP, ages, loss, jumps, reconnects, first-frame time, quality).
pub async fn stream(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let d = find(&state, &id)?;
    let Some(h) = state.streams.health(&id) else {
        let why = if d.protocol == Protocol::Rtsp {
            "no stream is pulled for this device (RTSP disabled, the device is disabled or not approved, or its URL was refused)"
        } else {
            "stream health is kept for RTSP cameras; this device is not one"
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_stream", why));
    };
    Ok(Json(health_json(&state, &h, &d.id)))
}

/// A stream's health as the API shows it (times in the district's zone).
pub(super) fn health_json(state: &AppState, h: &crate::media::health::HealthView, device_id: &str) -> Value {
    let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("since".into(), json!(state.time(h.since)));
        o.insert("next_attempt_at".into(), json!(h.next_attempt_at.map(|t| state.time(t))));
        o.insert("device_id".into(), json!(device_id));
        if let Some(q) = o.get_mut("quality").and_then(Value::as_object_mut) {
            if let Some(at) = q.get("at").and_then(Value::as_i64) {
                q.insert("at".into(), json!(state.time(at)));
            }
        }
    }
    v
}

/// `GET /devices/{id}/snapshot`: a JPEG decoded in-process from the latest keyframe.
pub async fn snapshot(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::response::Response> {
    use crate::media::SnapshotError;
    use axum::response::IntoResponse;
    find(&state, &id)?;
    match state.streams.snapshot(&id).await {
        Ok(jpeg) => {
            Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg.as_ref().clone())
                .into_response())
        }
        Err(e @ SnapshotError::NotPulled) => Err(ApiError::new(StatusCode::NOT_FOUND, "no_stream", e.to_string())),
        Err(e @ SnapshotError::NoKeyframe(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_keyframe", e.to_string()))
        }
        Err(e @ SnapshotError::Decode(_)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, "undecodable", e.to_string())),
    }
}
