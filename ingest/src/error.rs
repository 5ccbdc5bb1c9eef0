//! ingest's errors: `IngestError` for start-up and serving, `ApiError` for HTTP answers
//! (one JSON envelope `{"code","message","data"}` for every 4xx/5xx).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdkafka::error::KafkaError;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("kafka client: {0}")]
    Kafka(KafkaError),
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error("authentication: {0}")]
    Auth(#[from] riskstream_auth::AuthError),
}

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub data: Value,
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            data: Value::Null,
            retry_after_secs: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message, "data": self.data});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
