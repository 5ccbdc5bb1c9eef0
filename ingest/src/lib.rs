//! ingest: the HTTP front door. Validates transaction events and lands them on the Kafka
//! `events` topic (idempotent producer, `acks=all`) with a W3C `traceparent` header, answering
//! only after the broker acknowledged.
//!
//! `App::build(config, shutdown)` binds and connects; `App::run_until_stopped()` serves until
//! the shutdown token is cancelled, then drains in-flight requests within `shutdown_timeout`.

pub mod config;
pub mod decide;
pub mod error;
pub mod events;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{DecodeLimits, EventDecoder};
use tokio::net::TcpListener;

pub use config::{Config, IngestConfig};
pub use error::{ApiError, IngestError};
pub use routes::router;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub producer: FutureProducer,
    pub decoder: EventDecoder,
    pub metrics: metrics::IngestMetrics,
    /// Set once shutdown starts: `/readyz` answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Request-reply over the decisions topic (`POST /v1/decisions`).
    pub decisions: Arc<decide::DecisionHub>,
    /// Bearer tokens, scopes, rate and header limits, request timeout ([`routes::AUTH_RULES`]).
    pub guard: riskstream_auth::Guard,
}

impl AppState {
    /// Builds the state: connects the producer (lazily; librdkafka connects in the background)
    /// and loads the tokens file, if one is configured.
    pub fn new(config: Config) -> Result<Self, IngestError> {
        let guard =
            riskstream_auth::Guard::new("ingest", &config.ingest.access, routes::AUTH_RULES)?;
        let mut kafka = config.kafka.clone();
        // A record that cannot be delivered within the produce timeout is reported as failed,
        // so the caller gets 503 and nothing is reported as accepted that was not acknowledged.
        kafka.message_timeout = config.ingest.produce_timeout;
        let producer: FutureProducer = kafka.producer().map_err(IngestError::Kafka)?;
        let decisions =
            decide::DecisionHub::new(&config.kafka, &config.ingest).map_err(IngestError::Kafka)?;
        let decoder = EventDecoder::new(DecodeLimits {
            max_event_size_bytes: config.ingest.max_event_size_bytes,
            max_future_skew_ms: i64::try_from(config.ingest.max_future_skew.as_millis())
                .unwrap_or(i64::MAX),
            required_key: Some(config.ingest.partition_key.clone()),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                decoder,
                metrics: metrics::IngestMetrics::new(),
                draining: AtomicBool::new(false),
                decisions: Arc::new(decisions),
                guard,
            }),
        })
    }
}

/// A built, bound ingest service.
pub struct App {
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, IngestError> {
        let listener = TcpListener::bind(&config.ingest.listen)
            .await
            .map_err(|e| IngestError::Bind(config.ingest.listen.clone(), e))?;
        let state = AppState::new(config)?;
        // Every decision produced from here on is seen by this replica.
        state.inner.decisions.start(Duration::from_secs(2)).await;
        Ok(Self {
            listener,
            state,
            shutdown,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown token is cancelled, then stops accepting, waits for in-flight
    /// requests (and so their Kafka acknowledgements) and flushes the producer, all within
    /// `shutdown_timeout`.
    pub async fn run_until_stopped(self) -> Result<(), IngestError> {
        let App {
            listener,
            state,
            shutdown,
        } = self;
        let drain_timeout = state.inner.config.ingest.shutdown_timeout;
        let app = router(state.clone());
        let signal = {
            let shutdown = shutdown.clone();
            let state = state.clone();
            async move {
                shutdown.cancelled().await;
                state.inner.draining.store(true, Ordering::SeqCst);
                tracing::info!("ingest stops accepting requests and drains in-flight ones");
            }
        };
        let serve = axum::serve(listener, app).with_graceful_shutdown(signal);
        let serve = tokio::spawn(async move { serve.await });
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            r = serve => {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(IngestError::Serve(e)),
                    Err(e) => return Err(IngestError::Serve(std::io::Error::other(e))),
                }
            }
            _ = deadline => {
                tracing::warn!(timeout = ?drain_timeout, "drain timed out, closing remaining connections");
            }
        }
        let producer = state.inner.producer.clone();
        let flush_timeout = Duration::from_secs(5).min(drain_timeout);
        let _ = tokio::task::spawn_blocking(move || producer.flush(flush_timeout)).await;
        state.inner.decisions.stop();
        tracing::info!("ingest stopped");
        Ok(())
    }
}
