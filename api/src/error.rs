//! The api's errors: one [`ApiError`] for every native 4xx/5xx (`{"code","message","data"}`),
//! and [`JaegerError`] for the Jaeger-compatible routes (Jaeger's `errors` envelope).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use riskstream_store::StoreError;
use serde_json::{Value, json};

/// A native api failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, data: Value },
    #[error("{0}")]
    NotFound(String),
    #[error("storage unavailable: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            data: Value::Null,
        }
    }

    /// A bad parameter, named in `data.parameter`.
    pub fn bad_param(parameter: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            data: json!({ "parameter": parameter }),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::Storage(_) => "storage_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "trace store query failed");
        match e {
            StoreError::Unavailable(m) => Self::Storage(m),
            StoreError::Rejected(m) => Self::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let data = match &self {
            Self::BadRequest { data, .. } => data.clone(),
            _ => Value::Null,
        };
        let body = json!({ "code": self.code(), "message": self.to_string(), "data": data });
        (self.status(), Json(body)).into_response()
    }
}

/// A failure on a Jaeger route, answered as Jaeger does:
/// `{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":404,"msg":"..."}]}`.
#[derive(Debug)]
pub struct JaegerError(pub ApiError);

impl From<ApiError> for JaegerError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for JaegerError {
    fn from(e: StoreError) -> Self {
        Self(e.into())
    }
}

/// Refusals of the access guard: Jaeger's envelope on the Jaeger routes (`/api/...`, so
/// Grafana shows the message), the native envelope elsewhere, with `WWW-Authenticate` /
/// `Retry-After`.
pub fn render_denial(
    denial: &riskstream_auth::Denial,
    request: &riskstream_auth::http::RequestView,
) -> Response {
    if !request.path.starts_with("/api/") {
        return riskstream_auth::http::json_error(denial, request);
    }
    let status = denial.status();
    let body = json!({
        "data": null,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": [{ "code": status.as_u16(), "msg": denial.to_string() }],
    });
    riskstream_auth::http::with_headers(denial, (status, Json(body)).into_response())
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = json!({
            "data": null,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{ "code": status.as_u16(), "msg": self.0.to_string() }],
        });
        (status, Json(body)).into_response()
    }
}
