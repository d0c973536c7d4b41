//! `/api/v1/patrol`: the last (or running) patrol round with its counts by outcome and its
//! channels, and starting a round now for everything, an org, a device or one channel.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, AppState, Params};
use crate::patrol::{Round, Scope, StartError};

/// A round as JSON: times in the district's zone, each snapshot with its URL.
pub(super) fn round_json(state: &AppState, r: &Round, with_items: bool, outcome: Option<&str>) -> Value {
    let items: Vec<Value> = if with_items {
        r.items
            .iter()
            .filter(|i| outcome.is_none_or(|o| i.outcome == o))
            .map(|i| {
                json!({
                    "device_id": i.device_id, "channel_id": i.channel_id, "name": i.name, "org_id": i.org_id,
                    "at": state.time(i.at), "outcome": i.outcome, "error": i.error, "faults": i.faults,
                    "image": i.image, "image_url": i.image.as_ref().map(|h| format!("/api/v1/images/{h}")),
                    "first_frame_ms": i.first_frame_ms,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "id": r.id, "trigger": r.trigger, "scope": r.scope,
        "started_at": state.time(r.started_at), "ended_at": r.ended_at.map(|t| state.time(t)),
        "total": r.total, "done": r.done, "counts": r.counts, "items": items,
    })
}

/// `GET /patrol?items=false&outcome=faults`.
pub async fn last(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let with_items = params.get("items").is_none_or(|v| v != "false");
    let outcome = params.get("outcome").map(String::as_str).filter(|o| !o.is_empty());
    let p = &state.patrol;
    let round = p.current().map(|r| round_json(&state, &r, with_items, outcome));
    Ok(Json(json!({
        "enabled": p.next_at().is_some(),
        "running": p.running(),
        "next_at": p.next_at().map(|t| state.time(t)),
        "round": round,
    })))
}

/// `POST /patrol` (admin) `{}` | `{"org_id"}` | `{"device_id"}` | `{"device_id","channel_id"}`:
/// a round now; 202, or 409 while one runs.
pub async fn start(State(state): State<AppState>, body: Option<Json<Value>>) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.map(|b| b.0).unwrap_or(Value::Null);
    let text = |k: &str| -> ApiResult<Option<String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_body(k, "must be a non-empty string")),
        }
    };
    let (org, device, channel) = (text("org_id")?, text("device_id")?, text("channel_id")?);
    let scope = match (org, device, channel) {
        (None, None, None) => Scope::All,
        (Some(o), None, None) => {
            if state.registry.read().org(&o).is_none() {
                return Err(ApiError::not_found(format!("no org {o:?}")));
            }
            Scope::Org(o)
        }
        (None, Some(d), ch) => {
            if state.registry.read().device(&d).is_none() {
                return Err(ApiError::not_found(format!("no device {d:?}")));
            }
            match ch {
                Some(c) => Scope::Channel { device: d, channel: c },
                None => Scope::Device(d),
            }
        }
        (_, None, Some(_)) => return Err(ApiError::bad_body("device_id", "is required with channel_id")),
        (Some(_), Some(_), _) => return Err(ApiError::bad_body("org_id", "give org_id or device_id, not both")),
    };
    let label = scope.label().unwrap_or_else(|| "all".into());
    match state.patrol.start(scope) {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(json!({"started": true, "scope": label})))),
        Err(e @ StartError::Running) => Err(ApiError::new(StatusCode::CONFLICT, "patrol_running", e.to_string())),
        Err(e @ StartError::Off) => Err(ApiError::new(StatusCode::CONFLICT, "patrol_off", e.to_string())),
    }
}
