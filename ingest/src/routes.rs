//! ingest's router: it mounts `POST /v1/events` ([`crate::events`]), the synchronous
//! `POST /v1/decisions` and `GET /v1/decisions/{event_id}` ([`crate::decide`]), and serves
//! `GET /healthz`, `GET /readyz`, `GET /metrics` and the OpenAPI document itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rdkafka::producer::Producer;
use riskstream_auth::{Access, Rule, Scope};
use riskstream_common::metrics::HttpLabels;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// The OpenAPI document's frame; every path comes from a handler's `#[utoipa::path]`, through
/// the same router that serves it, so the document cannot miss a route.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "riskstream ingest",
        description = "The HTTP front door: events to Kafka (202 only after Kafka acknowledged), synchronous decisions."
    ),
    tags(
        (name = "events", description = "Events to Kafka"),
        (name = "decisions", description = "Synchronous decisions"),
        (name = "operations", description = "Health and metrics")
    )
)]
pub struct IngestDoc;

/// Path of the generated OpenAPI document.
pub const OPENAPI_ROUTE: &str = "/openapi.json";

/// What each route needs (docs/security.md has the table of every service).
pub static AUTH_RULES: &[Rule] = &[
    Rule::new("/v1/events", Access::Scope(Scope::EventsWrite)),
    Rule::new(crate::decide::DECISIONS_ROUTE, Access::Scope(Scope::Decide)),
    Rule::new(crate::decide::DECISION_ROUTE, Access::Scope(Scope::Decide)),
    Rule::new("/healthz", Access::Public),
    Rule::new("/readyz", Access::Public),
    Rule::new("/metrics", Access::Metrics),
    Rule::new(OPENAPI_ROUTE, Access::Public),
];

/// The ingest router. Tests call it with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let limit = state.inner.config.ingest.max_body_bytes;
    let (router, doc) = OpenApiRouter::<AppState>::with_openapi(IngestDoc::openapi())
        .routes(routes!(crate::events::post_events))
        .routes(routes!(crate::decide::post_decision))
        .routes(routes!(crate::decide::get_decision))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    // Rendered once; every request gets the same bytes.
    let doc = doc.to_json().unwrap_or_default();
    let router = router
        .route(
            OPENAPI_ROUTE,
            get(move || {
                std::future::ready(([(header::CONTENT_TYPE, "application/json")], doc.clone()))
            }),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit));
    // Inside the request counter, so refusals are counted by status too.
    state
        .inner
        .guard
        .protect(router)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let m = &state.inner.metrics;
    m.in_flight_requests.inc();
    let resp = next.run(req).await;
    m.in_flight_requests.dec();
    m.http_requests
        .get_or_create(&HttpLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only when Kafka metadata for the events topic is reachable and we are not draining.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Kafka metadata reachable, not draining"), (status = 503, description = "Kafka unreachable or draining")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.inner.draining.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "shutting down",
        ));
    }
    let producer = state.inner.producer.clone();
    let topic = state.inner.config.kafka.topics.events.clone();
    let res = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .map(|md| {
                md.topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0)
            })
    })
    .await;
    match res {
        Ok(Ok(partitions)) => Ok(Json(
            json!({"status": "ready", "events_partitions": partitions}),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unreachable",
            format!("kafka metadata unavailable: {e}"),
        )
        .retry_after(1)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus metrics (OpenMetrics text)")))]
async fn metrics(State(state): State<AppState>) -> Response {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = encode_registry(&mut out, &state.inner.metrics.registry);
    let _ = encode_registry(&mut out, &state.inner.decisions.metrics.registry);
    let _ = encode_eof(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            riskstream_common::metrics::CONTENT_TYPE,
        )],
        out,
    )
        .into_response()
}
