//! Bearer-token auth: viewers read, admins also write. The dashboard page itself, and
//! (with `http.public_health`) `/api/v1/health` and `/metrics`, need no token. With no
//! tokens configured (allowed on loopback only, see config) everyone is admin.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::config::Role;

pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &state.config.http;
    let path = req.uri().path();
    let public = path == "/" || (cfg.public_health && (path == "/api/v1/health" || path == "/metrics"));
    if public || cfg.tokens.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let role =
        presented.and_then(|t| cfg.tokens.iter().find(|k| same(k.token.as_bytes(), t.as_bytes()))).map(|k| k.role);
    let Some(role) = role else {
        let msg = if presented.is_some() {
            "the bearer token is not valid"
        } else {
            "an Authorization: Bearer token is required"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
    };
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && role != Role::Admin {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "viewer tokens may only read").into_response();
    }
    next.run(req).await
}

/// Compares in time that depends only on the lengths, so a token cannot be guessed byte by
/// byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
