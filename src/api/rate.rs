//! `/api/v1/online-rate`, its history and the daily report. The live figures come from the
//! rate task's latest snapshot (at most `tuning.rate_refresh` old), so this endpoint costs
//! a lookup, not a rollup.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{time_param, ApiError, ApiResult, AppState, Params};
use crate::clock::now_ms;
use crate::rate::sampling::{self, RateSnapshot, ALL_KEY};
use crate::rate::Counts;
use crate::registry::DeviceKind;

fn rate_of(c: Counts) -> Value {
    c.rate().map(Value::from).unwrap_or(Value::Null)
}

fn kind_param(params: &Params) -> ApiResult<Option<DeviceKind>> {
    match params.get("kind").filter(|v| !v.is_empty() && v.as_str() != "all") {
        None => Ok(None),
        Some(v) => DeviceKind::parse(v)
            .map(Some)
            .ok_or_else(|| ApiError::bad_query("kind", format!("{v:?} is not one of {}", DeviceKind::names()))),
    }
}

/// Rendered answers of `current` for the snapshot they were rendered from. The snapshot
/// changes at most every `tuning.rate_refresh`, so under load each distinct query is
/// rendered once per refresh and otherwise served as the bytes it already is.
#[derive(Default)]
pub struct RenderCache {
    snapshot: usize,
    entries: std::collections::HashMap<(String, String, String), Bytes>,
}

/// Most distinct queries kept per snapshot.
const RENDER_CACHE_MAX: usize = 512;

/// How long a reader waits for the rate task to include a registry write it just made.
const FRESH_SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn current(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Response> {
    // Read-your-writes: an org created or a device moved, disabled or put in maintenance a
    // moment ago is counted as it is now, not as the last periodic refresh saw it.
    let generation = state.registry.read().counting_generation();
    let snap = state.rate.at_least(generation, FRESH_SNAPSHOT_WAIT).await.ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the online rate is being computed; ask again in a moment",
        )
    })?;
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let key = (get("org"), get("kind"), get("group_by"));
    let id = Arc::as_ptr(&snap) as usize;
    {
        let cache = state.rate_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.snapshot == id {
            if let Some(b) = cache.entries.get(&key) {
                return Ok(([(header::CONTENT_TYPE, "application/json")], b.clone()).into_response());
            }
        }
    }
    let body = Bytes::from(serde_json::to_vec(&render_current(&state, &snap, &params)?).unwrap_or_default());
    let mut cache = state.rate_cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.snapshot != id || cache.entries.len() >= RENDER_CACHE_MAX {
        cache.snapshot = id;
        cache.entries.clear();
    }
    cache.entries.insert(key, body.clone());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn render_current(state: &AppState, snap: &RateSnapshot, params: &Params) -> ApiResult<Value> {
    let kind = kind_param(params)?;
    let org = match params.get("org").filter(|v| !v.is_empty()) {
        None => None,
        Some(o) => Some(*snap.index.org_idx.get(o).ok_or_else(|| ApiError::bad_query("org", format!("no org {o:?}")))?),
    };
    let c = snap.rollup.counts(org, kind);
    let groups: Vec<Value> = match params.get("group_by").map(String::as_str) {
        None | Some("") => Vec::new(),
        Some("org") => snap
            .index
            .subtree(org)
            .into_iter()
            .filter(|i| Some(*i) != org)
            .map(|i| {
                let o = &snap.index.orgs[i];
                let c = snap.rollup.counts(Some(i), kind);
                json!({
                    "key": o.id, "name": o.name, "kind": o.kind,
                    "parent_id": o.parent.map(|p| snap.index.orgs[p].id.clone()),
                    "online": c.online, "total": c.total, "rate": rate_of(c),
                    "intact": c.intact, "intact_rate": c.intact_rate(),
                })
            })
            .collect(),
        Some("kind") => DeviceKind::ALL
            .iter()
            .map(|k| (k, snap.rollup.counts(org, Some(*k))))
            .filter(|(_, c)| c.total > 0)
            .map(|(k, c)| {
                json!({"key": k.as_str(), "online": c.online, "total": c.total, "rate": rate_of(c), "intact": c.intact, "intact_rate": c.intact_rate()})
            })
            .collect(),
        Some(other) => return Err(ApiError::bad_query("group_by", format!("{other:?} is not org or kind"))),
    };
    Ok(json!({
        "at": state.time(if snap.rollup.at > 0 { snap.rollup.at } else { now_ms() }),
        "online": c.online,
        "total": c.total,
        "rate": rate_of(c),
        "intact": c.intact,
        "intact_rate": c.intact_rate(),
        "target": state.config.assessment.online_target,
        "excluded": snap.index.excluded,
        "groups": groups,
    }))
}

pub async fn history(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let kind = kind_param(&params)?;
    let org = params.get("org").filter(|v| !v.is_empty()).cloned();
    if let Some(o) = &org {
        if state.registry.read().org(o).is_none() {
            return Err(ApiError::bad_query("org", format!("no org {o:?}")));
        }
    }
    let now = now_ms();
    let to = time_param(&params, "to")?.unwrap_or(now + 1);
    let from = time_param(&params, "from")?.unwrap_or(to - 86_400_000);
    if from >= to {
        return Err(ApiError::bad_query("from", "must be before to"));
    }
    let step = match params.get("step").filter(|v| !v.is_empty()) {
        None => state.config.assessment.sample_every,
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| ApiError::bad_query("step", format!("{s:?} is not a duration such as \"1h\": {e}")))?,
    };
    let step_ms = step.as_millis() as i64;
    if step_ms < 1000 || (to - from) / step_ms > 10_000 {
        return Err(ApiError::bad_query("step", "too small for the range: at most 10000 points, at least 1s"));
    }
    let samples = sampling::samples(
        &state.registry.db().pool,
        org.as_deref().unwrap_or(ALL_KEY),
        kind.map(DeviceKind::as_str).unwrap_or(ALL_KEY),
        from,
        to,
    )
    .await?;
    let points: Vec<Value> = sampling::bucket(&samples, from, step_ms)
        .into_iter()
        .map(|(at, c, n)| {
            json!({
                "at": state.time(at),
                "online": c.online / n as u64,
                "total": c.total / n as u64,
                "rate": rate_of(c),
                "intact": c.intact / n as u64,
                "intact_rate": c.intact_rate(),
                "samples": n,
            })
        })
        .collect();
    Ok(Json(json!({"from": state.time(from), "to": state.time(to), "step_s": step.as_secs(), "points": points})))
}

pub async fn daily(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    let date = match params.get("date").filter(|v| !v.is_empty()) {
        Some(d) => d.clone(),
        None => crate::clock::to_datetime(now_ms(), &state.tz).format("%Y-%m-%d").to_string(),
    };
    let org = params.get("org").filter(|v| !v.is_empty()).map(String::as_str);
    let a = &state.config.assessment;
    let report = crate::rate::report::daily(
        &state.registry,
        &date,
        org,
        &state.tz,
        a.online_target,
        a.count_maintenance,
        now_ms(),
    )
    .await?;
    // The day's patrol rounds, from the same day window.
    let window = (crate::clock::parse_rfc3339(&report.from), crate::clock::parse_rfc3339(&report.to));
    let patrol = match window {
        (Some(from), Some(to)) => crate::patrol::report::day(&state.registry, from, to, org, &state.tz)
            .await
            .map_err(|e| ApiError::from_kind(crate::db::sqlx_kind(&e), format!("patrol rounds: {e}")))?,
        _ => crate::patrol::report::DayPatrol { rounds: Vec::new(), not_ok: Vec::new() },
    };
    let wants_csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/csv"))
        || params.get("format").is_some_and(|f| f == "csv");
    if wants_csv {
        let name = format!("attachment; filename=\"vigil-online-{date}.csv\"");
        let mut csv = report.to_csv();
        csv.push_str(&patrol.to_csv());
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)], csv)
            .into_response())
    } else {
        let mut v = serde_json::to_value(&report).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("patrol".into(), serde_json::to_value(&patrol).unwrap_or(Value::Null));
        }
        Ok(Json(v).into_response())
    }
}
