//! The query api (axum) over the trace store (ClickHouse, or memory in the demo): the Jaeger-compatible query API (for the Jaeger UI and
//! Grafana's Jaeger data source), native traces as trees, decisions, and `/healthz`,
//! `/readyz`, `/metrics`. See `docs/tracing.md`.
//!
//! Entry points: [`Config`], [`AppState::new`], [`router`], [`App::build`],
//! [`App::run_until_stopped`].

pub mod config;
pub mod error;
pub mod jaeger;
pub mod native;
pub mod params;
pub mod ui;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use riskstream_auth::{Access, Guard, Rule, Scope};
use riskstream_common::config::{ConfigError, Validate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiSection, Config};
pub use error::{ApiError, JaegerError};
pub use riskstream_store::{ClickHouseStore, MemoryStore, TraceStore};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: u16,
}

/// The api's Prometheus metrics (one registry per state).
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("api");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request latency by route and status",
            latency.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
        }
    }
}

impl ApiMetrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// What each route needs (docs/security.md has the table of every service).
pub static AUTH_RULES: &[Rule] = &[
    Rule::new("/api/traces/{trace_id}", Access::Scope(Scope::TracesRead)),
    Rule::new("/api/traces", Access::Scope(Scope::TracesRead)),
    Rule::new("/api/services", Access::Scope(Scope::TracesRead)),
    Rule::new(
        "/api/services/{service}/operations",
        Access::Scope(Scope::TracesRead),
    ),
    Rule::new("/api/operations", Access::Scope(Scope::TracesRead)),
    Rule::new("/v1/traces/{trace_id}", Access::Scope(Scope::TracesRead)),
    Rule::new(
        "/v1/decisions/{event_id}",
        Access::Scope(Scope::DecisionsRead),
    ),
    Rule::new("/v1/decisions", Access::Scope(Scope::DecisionsRead)),
    // The pages show decisions (the list) and traces (the waterfall with its decisions).
    Rule::new(ui::UI_ROUTE, Access::Scope(Scope::DecisionsRead)),
    Rule::new(ui::UI_TRACE_ROUTE, Access::Scope(Scope::TracesRead)),
    Rule::new("/ui", Access::Public),
    Rule::new("/healthz", Access::Public),
    Rule::new("/readyz", Access::Public),
    Rule::new("/metrics", Access::Metrics),
    Rule::new(OPENAPI_ROUTE, Access::Public),
];

/// What every handler reads.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn TraceStore>,
    pub metrics: ApiMetrics,
    pub default_search_limit: u32,
    pub max_limit: u32,
    /// Bearer tokens, scopes, rate and header limits, request timeout ([`AUTH_RULES`]).
    pub guard: Guard,
}

impl AppState {
    /// State reading the configured ClickHouse, with the configured guard; a tokens file that
    /// cannot be read refuses every protected route (see [`App::build`], which fails instead).
    pub fn new(config: &Config) -> Self {
        Self::with_store(config, Arc::new(ClickHouseStore::new(&config.clickhouse)))
    }

    /// As [`AppState::new`], reading `store` (the configured ClickHouse is then not contacted).
    pub fn with_store(config: &Config, store: Arc<dyn TraceStore>) -> Self {
        let guard = Guard::new_or_closed("api", &config.api.access, AUTH_RULES);
        Self::with_parts(config, store, guard)
    }

    pub fn with_parts(config: &Config, store: Arc<dyn TraceStore>, guard: Guard) -> Self {
        Self {
            store,
            metrics: ApiMetrics::default(),
            default_search_limit: config.api.default_search_limit,
            max_limit: config.api.max_limit,
            guard: guard.with_renderer(error::render_denial),
        }
    }
}

async fn track(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    // A server span per request, continuing the caller's trace (Grafana sends none: new trace).
    let caller = request
        .headers()
        .get(riskstream_common::kafka::header::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(riskstream_common::trace_context::TraceParent::parse);
    let span = tracing::info_span!(
        "api request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    riskstream_common::telemetry::link_span(&span, caller.as_ref());
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let labels = RouteLabels {
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)")))]
async fn metrics_route(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok")
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The trace store answers"), (status = 503, description = "It does not")))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ready")
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The OpenAPI document's frame; every path comes from a handler's `#[utoipa::path]`, through
/// the same router that serves it, so the document cannot miss a route.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "riskstream api",
        description = "Traces by Trace ID (Jaeger-compatible under /api, so Grafana's Jaeger data source reads it) and decisions."
    ),
    tags(
        (name = "jaeger", description = "Jaeger query API (the subset Grafana and the Jaeger UI use)"),
        (name = "riskstream", description = "Traces as trees and decisions"),
        (name = "ui", description = "Browser pages: recent decisions and traces, a trace's waterfall"),
        (name = "operations", description = "Health and metrics")
    )
)]
pub struct ApiDoc;

/// Path of the generated OpenAPI document.
pub const OPENAPI_ROUTE: &str = "/openapi.json";

/// Every route of the api, and `/openapi.json` describing them.
pub fn router(state: AppState) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let metrics = state.metrics.clone();
    let guard = state.guard.clone();
    let (router, doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(jaeger::get_trace))
        .routes(routes!(jaeger::search))
        .routes(routes!(jaeger::services))
        .routes(routes!(jaeger::service_operations))
        .routes(routes!(jaeger::operations))
        .routes(routes!(native::get_trace))
        .routes(routes!(native::get_decision))
        .routes(routes!(native::list_decisions))
        .routes(routes!(ui::index))
        .routes(routes!(ui::trace_page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_route))
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
        .route(
            "/ui",
            get(|| std::future::ready(axum::response::Redirect::permanent(ui::UI_ROUTE))),
        )
        .fallback(not_found);
    // Inside the request tracking, so refusals are counted by status too.
    guard
        .protect(router)
        .with_state(state)
        .layer(middleware::from_fn_with_state(metrics, track))
}

/// Failures building or running the api.
#[derive(Debug, thiserror::Error)]
pub enum ApiAppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("authentication: {0}")]
    Auth(#[from] riskstream_auth::AuthError),
}

/// A built api, listening, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
}

impl App {
    /// Validates the configuration and binds the listener. ClickHouse need not be up yet
    /// (`/readyz` tells).
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<App, ApiAppError> {
        let store = Arc::new(ClickHouseStore::new(&config.clickhouse));
        Self::build_with_store(config, store, shutdown).await
    }

    /// As [`App::build`], reading `store` instead of the configured ClickHouse.
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn TraceStore>,
        shutdown: CancellationToken,
    ) -> Result<App, ApiAppError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::new(problems).into());
        }
        let listener = TcpListener::bind(&config.api.listen)
            .await
            .map_err(|source| ApiAppError::Bind {
                addr: config.api.listen.clone(),
                source,
            })?;
        let guard = Guard::new("api", &config.api.access, AUTH_RULES)?;
        Ok(App {
            listener,
            router: router(AppState::with_parts(&config, store, guard)),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the shutdown token is cancelled, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> Result<(), ApiAppError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(self.shutdown.cancelled_owned())
            .await
            .map_err(ApiAppError::Serve)
    }
}
