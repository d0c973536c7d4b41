//! The API's error body (`{"error": {"code", "message", "field"?, "rows"?}}`) and the one
//! mapping from `ErrorKind` to an HTTP status. Handlers return `ApiError`; it is logged
//! here once when it is a server-side failure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::ErrorKind;
use crate::registry::import::RowProblem;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub rows: Option<Vec<RowProblem>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<&'a [RowProblem]>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, rows: None }
    }
    /// A bad value in a named field (400 for queries, 422 for bodies).
    pub fn field(status: StatusCode, field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        Self { status, code: "invalid_field", message: format!("{field}: {message}"), field: Some(field), rows: None }
    }
    pub fn bad_query(field: &str, message: impl std::fmt::Display) -> Self {
        Self::field(StatusCode::BAD_REQUEST, field, message)
    }
    pub fn bad_body(field: &str, message: impl std::fmt::Display) -> Self {
        Self::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// From a module error's kind, once for the whole API.
    pub fn from_kind(kind: ErrorKind, message: String) -> Self {
        let (status, code) = match kind {
            ErrorKind::InvalidInput => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

impl From<crate::registry::Error> for ApiError {
    fn from(e: crate::registry::Error) -> Self {
        let field = e.field().map(str::to_owned);
        let mut err = ApiError::from_kind(e.kind(), e.to_string());
        if field.is_some() {
            err.code = "invalid_field";
            err.field = field;
        }
        err
    }
}

impl From<crate::rate::report::Error> for ApiError {
    fn from(e: crate::rate::report::Error) -> Self {
        match &e {
            crate::rate::report::Error::BadDate(_) => ApiError::bad_query("date", "expected YYYY-MM-DD"),
            crate::rate::report::Error::NoOrg(o) => ApiError::bad_query("org", format!("no org {o:?}")),
            _ => ApiError::from_kind(e.kind(), e.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from_kind(crate::db::sqlx_kind(&e), format!("database: {e}"))
    }
}

impl From<crate::events::Error> for ApiError {
    fn from(e: crate::events::Error) -> Self {
        ApiError::from_kind(e.kind(), e.to_string())
    }
}

impl From<crate::presence::runner::Closed> for ApiError {
    fn from(_: crate::presence::runner::Closed) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the gateway is shutting down")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, error = %self.message, "API request failed.");
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                rows: self.rows.as_deref(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
