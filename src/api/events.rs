//! `GET /api/v1/events` and `/events/{id}`: normalized events from the event log, newest
//! first, filtered by kind, device, org (with its subtree) and time.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{limit, time_param, ApiError, ApiResult, AppState, Params};
use crate::event::{Event, EventKind};
use crate::events::Filter;

/// An event as the API shows it: the stored event with times in the gateway's zone.
fn event_json(state: &AppState, e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), json!(e.kind().as_str()));
        o.insert("occurred_at".into(), json!(state.time(e.occurred_at)));
        o.insert("received_at".into(), json!(state.time(e.received_at)));
        // The body's own `kind` tag repeats the envelope's.
        if let Some(body) = o.get_mut("body").and_then(Value::as_object_mut) {
            body.remove("kind");
        }
    }
    v
}

pub async fn list(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let limit = limit(&params)?;
    let kind = match params.get("kind").filter(|v| !v.is_empty()) {
        None => None,
        Some(k) => match EventKind::parse(k) {
            Some(k) => Some(k.as_str().to_owned()),
            None => {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(ApiError::bad_query("kind", format!("{k:?} is not one of {}", names.join(", "))));
            }
        },
    };
    let orgs = match params.get("org").filter(|v| !v.is_empty()) {
        None => None,
        Some(o) => {
            let cache = state.registry.read();
            if cache.org(o).is_none() {
                return Err(ApiError::bad_query("org", format!("no org {o:?}")));
            }
            Some(cache.subtree(o).into_iter().collect())
        }
    };
    let before = match params.get("cursor").filter(|v| !v.is_empty()) {
        None => None,
        Some(c) => {
            let parsed = c.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            Some(parsed.ok_or_else(|| ApiError::bad_query("cursor", "not a cursor this API gave"))?)
        }
    };
    let filter = Filter {
        kind,
        device: params.get("device").filter(|v| !v.is_empty()).cloned(),
        orgs,
        since: time_param(&params, "since")?,
        until: time_param(&params, "until")?,
        before,
        limit: limit + 1,
    };
    let mut rows = state.events.list(&filter).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(|(seq, e)| format!("{}:{seq}", e.occurred_at)) } else { None };
    let items: Vec<Value> = rows.iter().map(|(_, e)| event_json(&state, e)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    match state.events.get(&id).await? {
        Some(e) => Ok(Json(event_json(&state, &e))),
        None => Err(ApiError::not_found(format!("no event {id:?}"))),
    }
}

/// `GET /api/v1/images/{hash}`: the stored bytes of an image an event refers to. Content
/// addressed, so it never changes: cacheable for a year.
pub async fn image(State(state): State<AppState>, Path(hash): Path<String>) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if !crate::images::valid_hash(&hash) {
        return Err(ApiError::bad_query("hash", "an image name is 64 lowercase hex digits (SHA-256)"));
    }
    match state.media.get(&hash).await.map_err(|e| ApiError::from_kind(e.kind(), e.to_string()))? {
        Some(bytes) => {
            let mime = crate::images::sniff(&bytes);
            Ok((
                [
                    (axum::http::header::CONTENT_TYPE, mime),
                    (axum::http::header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                ],
                bytes,
            )
                .into_response())
        }
        None => Err(ApiError::not_found(format!("no image {hash}"))),
    }
}

/// `GET /api/v1/profiles`: the device profiles in use, for operators choosing or approving.
pub async fn profiles(State(state): State<AppState>) -> Json<Value> {
    let items: Vec<Value> = state
        .profiles
        .profiles()
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "id": p.id,
                "version": p.version,
                "vendor": p.vendor,
                "description": p.description,
                "kind": p.kind.as_str(),
                "models": p.models,
                "routes": p.routes.iter().map(|r| json!({
                    "ingress": match r.ingress { crate::profiles::Ingress::Mqtt => "mqtt", crate::profiles::Ingress::Http => "http" },
                    "pattern": r.pattern.text(),
                })).collect::<Vec<_>>(),
                "liveness_timeout_s": p.liveness.timeout_ms / 1000,
                "tests": p.tests.len(),
            })
        })
        .collect();
    Json(json!({ "items": items }))
}
