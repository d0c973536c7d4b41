//! `/api/v1/devices/{id}/channels/{cid}/stream` and `/snapshot`: GB/T 28181 live video of one
//! channel. A channel is pulled while something needs it: `POST .../stream` (admin) pulls it
//! for `hold` (default `gb28181.stream_hold`), a snapshot pulls it when no picture is there yet
//! and waits for the first keyframe. The API asks through the media board; it never calls the
//! GB/T 28181 source.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::devices::{find, health_json};
use super::{ApiError, ApiResult, AppState};
use crate::media::{channel_key, Demand, DemandError, Holder, SnapshotError};
use crate::registry::Protocol;

/// The longest hold an operator may ask for.
const HOLD_MAX: Duration = Duration::from_secs(24 * 3600);

/// The device and channel, checked: a GB/T 28181 device, and a channel of its catalog (or the
/// device's own id: an IPC is its own channel).
fn channel_of(state: &AppState, id: &str, cid: &str) -> ApiResult<()> {
    let d = find(state, id)?;
    if d.protocol != Protocol::Gb28181 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_gb28181",
            format!("device {id:?} is not a GB/T 28181 device"),
        ));
    }
    let listed = state.registry.read().channels(id).is_some_and(|chs| chs.iter().any(|c| c.id == cid));
    if !listed && cid != id {
        return Err(ApiError::not_found(format!("device {id:?} has no channel {cid:?} in its catalog")));
    }
    Ok(())
}

fn demand(state: &AppState, id: &str, cid: &str, hold: Duration) -> ApiResult<()> {
    let d = Demand { device: id.to_owned(), channel: cid.to_owned(), hold, holder: Holder::Operator };
    state.streams.demand(d).map_err(|e| match e {
        DemandError::NoPuller => ApiError::new(StatusCode::NOT_FOUND, "no_stream", e.to_string()),
        DemandError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
    })
}

/// `GET .../channels/{cid}/stream`: the channel's stream health (the fields of RTSP's).
pub async fn stream(State(state): State<AppState>, Path((id, cid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    channel_of(&state, &id, &cid)?;
    let Some(h) = state.streams.health(&channel_key(&id, &cid)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_pulled",
            "the channel is not being pulled: POST to this URL (or ask for its snapshot) to pull it",
        ));
    };
    let mut v = health_json(&state, &h, &id);
    if let Some(o) = v.as_object_mut() {
        o.insert("channel_id".into(), json!(cid));
    }
    Ok(Json(v))
}

/// `POST .../channels/{cid}/stream` `{"hold": "5m"}` (optional): pulls the channel for
/// `hold`; 202 with the stream as it is now.
pub async fn pull(
    State(state): State<AppState>,
    Path((id, cid)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    channel_of(&state, &id, &cid)?;
    let hold = match body.as_ref().and_then(|b| b.get("hold")) {
        None | Some(Value::Null) => state.config.gb28181.stream_hold,
        Some(Value::String(s)) => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) && d <= HOLD_MAX => d,
            _ => return Err(ApiError::bad_body("hold", format!("{s:?} is not a duration between 1s and 24h"))),
        },
        Some(other) => return Err(ApiError::bad_body("hold", format!("{other} is not a duration such as \"5m\""))),
    };
    demand(&state, &id, &cid, hold)?;
    let state_now = state.streams.health(&channel_key(&id, &cid)).map(|h| h.state.as_str()).unwrap_or("connecting");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"device_id": id, "channel_id": cid, "hold_s": hold.as_secs(), "state": state_now})),
    ))
}

/// `GET .../channels/{cid}/snapshot`: a JPEG of the channel's latest keyframe; the channel is
/// pulled (for `gb28181.stream_hold`) when it is not, and the answer waits for its first
/// keyframe up to the INVITE and media timeouts.
pub async fn snapshot(State(state): State<AppState>, Path((id, cid)): Path<(String, String)>) -> ApiResult<Response> {
    channel_of(&state, &id, &cid)?;
    let key = channel_key(&id, &cid);
    let g = &state.config.gb28181;
    let wait = g.invite_timeout + g.media_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    let mut asked: Option<tokio::time::Instant> = None;
    loop {
        match state.streams.snapshot(&key).await {
            Ok(jpeg) => {
                return Ok((
                    [(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")],
                    jpeg.as_ref().clone(),
                )
                    .into_response())
            }
            Err(e @ SnapshotError::Decode(_)) => {
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "undecodable", e.to_string()))
            }
            Err(e) => {
                let asked_at = match asked {
                    Some(t) => t,
                    None => {
                        demand(&state, &id, &cid, g.stream_hold)?;
                        *asked.insert(tokio::time::Instant::now())
                    }
                };
                // A failure left from an earlier pull is not this one's: the player takes a
                // demand within milliseconds and starts the stream afresh.
                let settled = asked_at.elapsed() >= Duration::from_millis(500);
                let failed = state.streams.health(&key).filter(|h| settled && h.state.is_failure());
                if let Some(h) = failed {
                    let why = format!("{}: {}", h.state.as_str(), h.error.unwrap_or_default());
                    return Err(ApiError::new(StatusCode::BAD_GATEWAY, "no_picture", why));
                }
                if tokio::time::Instant::now() >= deadline {
                    let why = format!("no keyframe within {} s ({e})", wait.as_secs());
                    return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "no_keyframe", why));
                }
                // Woken by the stream's next keyframe or state change (a missed wake-up costs
                // at most 250 ms).
                state.streams.changed(&key, Duration::from_millis(250)).await;
            }
        }
    }
}
