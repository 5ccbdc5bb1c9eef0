//! The OTLP receivers: OTLP/HTTP `POST /v1/traces` (protobuf and JSON, per the OTLP
//! specification's request/response rules) and OTLP/gRPC `TraceService/Export`, plus the
//! collector's `/metrics`, `/healthz` and `/readyz`.
//!
//! A request is answered 200 only once its spans are stored in ClickHouse; spans that cannot be
//! stored are reported as partial success (`rejected_spans`, `error_message`) and sent to the
//! dead-letter topic. A full queue answers 503 + `Retry-After` (gRPC `RESOURCE_EXHAUSTED`); a
//! request whose spans are not stored within `request_timeout` answers 503 (`UNAVAILABLE`), and
//! the client's retry may then store them twice (at-least-once).

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

use riskstream_auth::http::RequestView;
use riskstream_auth::{Access, Denial, Guard, Rule, Scope};

use crate::convert::{self, reason};
use crate::kafka::DeadLetters;
use crate::metrics::{Metrics, receiver};
use crate::sink::{Sink, SinkError};
use riskstream_store::schema::SpanRow;

/// `Content-Type` of OTLP/HTTP protobuf.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `Content-Type` of OTLP/HTTP JSON.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The OTLP/HTTP traces path.
pub const TRACES_PATH: &str = "/v1/traces";

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status code `INVALID_ARGUMENT`.
const RPC_INVALID_ARGUMENT: i32 = 3;
/// gRPC status code `UNAVAILABLE`.
const RPC_UNAVAILABLE: i32 = 14;
/// gRPC status code `RESOURCE_EXHAUSTED`.
const RPC_RESOURCE_EXHAUSTED: i32 = 8;

/// Why an export was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("the collector queue is full, retry later")]
    Full,
    #[error("spans not stored in time ({0}), retry later")]
    Unavailable(String),
}

/// The answer to an accepted export.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportOutcome {
    pub stored_spans: usize,
    pub rejected_spans: usize,
    pub error_message: String,
}

impl ExportOutcome {
    pub fn response(&self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (self.rejected_spans > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(self.rejected_spans).unwrap_or(i64::MAX),
                error_message: self.error_message.clone(),
            }),
        }
    }
}

/// What both OTLP receivers share.
#[derive(Clone)]
pub struct OtlpState {
    pub sink: Sink<SpanRow>,
    pub dead_letters: Option<DeadLetters>,
    pub metrics: Metrics,
    pub request_timeout: Duration,
    pub retry_after: Duration,
    pub store: std::sync::Arc<dyn riskstream_store::TraceStore>,
    /// Bearer tokens, scopes, rate and header limits, request timeout of both receivers
    /// ([`AUTH_RULES`]).
    pub guard: Guard,
}

/// The gRPC method of OTLP trace export, as the guard's rules name it.
pub const GRPC_EXPORT_ROUTE: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What each route needs (docs/security.md has the table of every service).
pub static AUTH_RULES: &[Rule] = &[
    Rule::new(TRACES_PATH, Access::Scope(Scope::TracesWrite)),
    Rule::new(GRPC_EXPORT_ROUTE, Access::Scope(Scope::TracesWrite)),
    Rule::new("/healthz", Access::Public),
    Rule::new("/readyz", Access::Public),
    Rule::new("/metrics", Access::Metrics),
];

/// Refusals of the access guard: on `POST /v1/traces` a `google.rpc.Status` in the request's
/// encoding (what OTLP/HTTP clients read), with the gRPC code of the same refusal; the JSON
/// error elsewhere. `WWW-Authenticate` / `Retry-After` either way.
pub fn render_denial(denial: &Denial, request: &RequestView) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(ct) = &request.content_type {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    match encoding_of(&headers).filter(|_| request.path == TRACES_PATH) {
        Some(encoding) => {
            let code = riskstream_auth::grpc::status_of(denial).code() as i32;
            let response = status_response(encoding, denial.status(), code, denial.to_string());
            riskstream_auth::http::with_headers(denial, response)
        }
        None => riskstream_auth::http::json_error(denial, request),
    }
}

impl OtlpState {
    /// Stores the spans of one request; answers once they are stored.
    pub async fn export(
        &self,
        request: &ExportTraceServiceRequest,
        receiver_name: &'static str,
    ) -> Result<ExportOutcome, ExportError> {
        let converted = convert::convert(request);
        let rows = converted.rows.len();
        self.metrics
            .received(receiver_name, rows + converted.rejected.len());
        let mut outcome = ExportOutcome {
            stored_spans: 0,
            rejected_spans: converted.rejected.len(),
            error_message: converted.error_message(),
        };
        for rejected in &converted.rejected {
            self.metrics.rejected(receiver_name, rejected.code, 1);
        }
        if let Some(dl) = &self.dead_letters
            && !converted.rejected.is_empty()
        {
            let dl = dl.clone();
            let rejected = converted.rejected.clone();
            // Best effort and off the request path: the client already learns of the
            // rejection from the partial-success answer.
            tokio::spawn(async move {
                for r in rejected {
                    dl.send(&r.encoded(), r.code, &r.message, receiver_name, None, None)
                        .await;
                }
            });
        }
        if rows == 0 {
            return Ok(outcome);
        }
        let ack = match self.sink.try_submit(converted.rows, receiver_name) {
            Ok(ack) => ack,
            Err(SinkError::Full { .. }) => {
                self.metrics.rejected(receiver_name, "queue_full", rows);
                return Err(ExportError::Full);
            }
            Err(e) => return Err(ExportError::Unavailable(e.to_string())),
        };
        match tokio::time::timeout(self.request_timeout, ack).await {
            Ok(Ok(Ok(()))) => {
                outcome.stored_spans = rows;
                Ok(outcome)
            }
            Ok(Ok(Err(SinkError::Rejected(why)))) => {
                self.metrics
                    .rejected(receiver_name, reason::INSERT_REJECTED, rows);
                outcome.rejected_spans += rows;
                outcome.error_message = format!("{rows} span(s) rejected by the store: {why}");
                Ok(outcome)
            }
            Ok(Ok(Err(e))) => Err(ExportError::Unavailable(e.to_string())),
            Ok(Err(_)) => Err(ExportError::Unavailable("the writer stopped".into())),
            Err(_) => Err(ExportError::Unavailable(format!(
                "not stored within {:?}",
                self.request_timeout
            ))),
        }
    }
}

/// The collector's HTTP routes, behind the state's guard.
pub fn router(state: OtlpState, max_request_bytes: usize) -> Router {
    let routes = Router::new()
        .route(TRACES_PATH, post(post_traces))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(tower_http::decompression::RequestDecompressionLayer::new());
    state.guard.clone().protect(routes).with_state(state)
}

async fn metrics(State(state): State<OtlpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<OtlpState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} unreachable: {e}", state.store.kind()),
        )
            .into_response(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn encoding_of(headers: &HeaderMap) -> Option<Encoding> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        CONTENT_TYPE_PROTOBUF | "application/protobuf" => Some(Encoding::Protobuf),
        CONTENT_TYPE_JSON => Some(Encoding::Json),
        _ => None,
    }
}

fn encoded(encoding: Encoding, status: StatusCode, protobuf: Vec<u8>, json: String) -> Response {
    match encoding {
        Encoding::Protobuf => (
            status,
            [(header::CONTENT_TYPE, CONTENT_TYPE_PROTOBUF)],
            protobuf,
        )
            .into_response(),
        Encoding::Json => {
            (status, [(header::CONTENT_TYPE, CONTENT_TYPE_JSON)], json).into_response()
        }
    }
}

fn status_response(encoding: Encoding, status: StatusCode, code: i32, message: String) -> Response {
    let body = RpcStatus { code, message };
    let json = serde_json::to_string(&body).unwrap_or_default();
    encoded(encoding, status, body.encode_to_vec(), json)
}

fn retry_after_secs(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}

async fn post_traces(State(state): State<OtlpState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(encoding) = encoding_of(&headers) else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be {CONTENT_TYPE_PROTOBUF} or {CONTENT_TYPE_JSON}"),
        )
            .into_response();
    };
    let decoded = match encoding {
        Encoding::Protobuf => convert::decode_protobuf(&body).map_err(|e| e.to_string()),
        Encoding::Json => convert::decode_json(&body).map_err(|e| e.to_string()),
    };
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .rejected(receiver::OTLP_HTTP, reason::UNDECODABLE, 1);
            return status_response(
                encoding,
                StatusCode::BAD_REQUEST,
                RPC_INVALID_ARGUMENT,
                format!("undecodable request: {e}"),
            );
        }
    };
    match state.export(&request, receiver::OTLP_HTTP).await {
        Ok(outcome) => {
            let response = outcome.response();
            // A full success is `{}` (absent fields are omitted in OTLP/JSON).
            let json = match response.partial_success {
                None => "{}".to_string(),
                Some(_) => serde_json::to_string(&response).unwrap_or_else(|_| "{}".into()),
            };
            encoded(encoding, StatusCode::OK, response.encode_to_vec(), json)
        }
        Err(e) => {
            let (status, code) = match e {
                ExportError::Full => (StatusCode::SERVICE_UNAVAILABLE, RPC_RESOURCE_EXHAUSTED),
                ExportError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, RPC_UNAVAILABLE),
            };
            let mut response = status_response(encoding, status, code, e.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(state.retry_after));
            response
        }
    }
}

/// The OTLP/gRPC `TraceService`.
pub struct GrpcTraceService {
    pub state: OtlpState,
}

#[tonic::async_trait]
impl TraceService for GrpcTraceService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        match self.state.export(&request, receiver::OTLP_GRPC).await {
            Ok(outcome) => Ok(tonic::Response::new(outcome.response())),
            Err(e) => {
                let mut status = match e {
                    ExportError::Full => tonic::Status::resource_exhausted(e.to_string()),
                    ExportError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
                };
                let secs = self.state.retry_after.as_secs().max(1).to_string();
                if let Ok(v) = secs.parse() {
                    status.metadata_mut().insert("retry-after", v);
                }
                Err(status)
            }
        }
    }
}
