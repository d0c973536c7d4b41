//! `/api/v1/orgs`: the org tree (district > street > community | unit).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{limit, parse_body, ApiError, ApiResult, AppState, Params};
use crate::registry::{Org, OrgKind, OrgPatch};

fn org_json(o: &Org) -> Value {
    json!({"id": o.id, "name": o.name, "kind": o.kind, "parent_id": o.parent_id, "gb_prefix": o.gb_prefix})
}

pub async fn list(State(state): State<AppState>, Query(params): Query<Params>) -> ApiResult<Json<Value>> {
    let limit = limit(&params)?;
    let cursor = params.get("cursor").cloned();
    let cache = state.registry.read();
    let mut items: Vec<Value> =
        cache.orgs().filter(|o| cursor.as_ref().is_none_or(|c| &o.id > c)).take(limit + 1).map(org_json).collect();
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().and_then(|v| v["id"].as_str()).map(str::to_owned)
    } else {
        None
    };
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

pub async fn get_one(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let cache = state.registry.read();
    let o = cache.org(&id).ok_or_else(|| ApiError::not_found(format!("no org {id:?}")))?;
    Ok(Json(org_json(o)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    id: String,
    name: String,
    kind: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    gb_prefix: Option<String>,
}

fn org_kind(s: &str) -> ApiResult<OrgKind> {
    OrgKind::parse(s).ok_or_else(|| ApiError::bad_body("kind", format!("{s:?} is not one of {}", OrgKind::names())))
}

pub async fn create(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let n: NewOrg = parse_body(&body)?;
    let org = Org { id: n.id, name: n.name, kind: org_kind(&n.kind)?, parent_id: n.parent_id, gb_prefix: n.gb_prefix };
    let org = state.registry.create_org(org).await?;
    Ok((StatusCode::CREATED, Json(org_json(&org))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    #[serde(default, with = "double_option")]
    parent_id: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    gb_prefix: Option<Option<String>>,
}

/// `null` clears a field, absence leaves it.
pub mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

pub async fn patch(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<Value>> {
    let p: PatchBody = parse_body(&body)?;
    let org = state
        .registry
        .update_org(&id, OrgPatch { name: p.name, parent_id: p.parent_id, gb_prefix: p.gb_prefix })
        .await?;
    Ok(Json(org_json(&org)))
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.registry.delete_org(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
