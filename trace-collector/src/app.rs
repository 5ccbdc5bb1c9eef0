//! The collector service: builds everything from a [`Config`] and a trace store (ClickHouse,
//! migrated at start, or any other [`TraceStore`]: listeners, table writers, Kafka receivers) and runs it until the shutdown token is cancelled, then
//! drains within a bounded time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use riskstream_common::config::{ConfigError, Validate};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::{DeadLetters, KafkaReceiver, KafkaReceiverError, Stream};
use crate::metrics::Metrics;
use crate::otlp::{self, GrpcTraceService, OtlpState};
use crate::sink::{Sink, SinkConfig};
use riskstream_store::schema::{DecisionRow, SchemaError, ServerVersion, SpanRow};
use riskstream_store::{ClickHouseStore, TraceStore};

/// How often the partition-drop retention runs on servers without TTL.
const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Failures building or running the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("schema migration failed: {0}")]
    Schema(#[from] SchemaError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] KafkaReceiverError),
    #[error("server failed: {0}")]
    Serve(String),
    #[error("authentication: {0}")]
    Auth(#[from] riskstream_auth::AuthError),
}

/// A built collector, listening, not yet serving.
pub struct App {
    config: Config,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    http: TcpListener,
    grpc: Option<TcpListener>,
    state: OtlpState,
    decisions_sink: Option<Sink<DecisionRow>>,
    writers: Vec<JoinHandle<()>>,
    receivers: Vec<(KafkaReceiver, Stream)>,
    server_version: Option<ServerVersion>,
}

fn validate(config: &Config) -> Result<(), CollectorError> {
    let problems = config.validate();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::new(problems).into())
    }
}

async fn bind(addr: &str) -> Result<TcpListener, CollectorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CollectorError::Bind {
            addr: addr.to_string(),
            source,
        })
}

impl App {
    /// Validates the configuration, migrates the ClickHouse schema, binds the listeners and
    /// creates the writers and Kafka receivers.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<App, CollectorError> {
        validate(&config)?;
        let store = ClickHouseStore::new(&config.clickhouse);
        let version = store.migrate(config.collector.retention).await?;
        let mut app = Self::assemble(config, Arc::new(store), shutdown).await?;
        app.server_version = Some(version);
        Ok(app)
    }

    /// As [`App::build`], writing to `store` instead of the configured ClickHouse (which is
    /// then not contacted): the demo's in-memory store.
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn TraceStore>,
        shutdown: CancellationToken,
    ) -> Result<App, CollectorError> {
        validate(&config)?;
        Self::assemble(config, store, shutdown).await
    }

    /// Listeners, writers and receivers of a validated configuration over `store`.
    async fn assemble(
        config: Config,
        store: Arc<dyn TraceStore>,
        shutdown: CancellationToken,
    ) -> Result<App, CollectorError> {
        let c = &config.collector;
        let metrics = Metrics::new();
        let hard_stop = CancellationToken::new();
        let sink_config = SinkConfig {
            batch_max_rows: c.batch_max_rows,
            batch_max_wait: c.batch_max_wait,
            queue_max_rows: c.queue_max_spans,
            retry_backoff_min: c.retry_backoff_min,
            retry_backoff_max: c.retry_backoff_max,
            insert_timeout: config.clickhouse.request_timeout,
            insert_concurrency: c.insert_concurrency,
        };
        let mut writers = Vec::new();
        let (spans_sink, h) = Sink::<SpanRow>::spawn(
            store.clone(),
            sink_config.clone(),
            metrics.clone(),
            hard_stop.clone(),
        );
        writers.push(h);
        let any_kafka = c.kafka_spans || c.kafka_decisions;
        let dead_letters = if any_kafka {
            Some(DeadLetters::new(&config.kafka, metrics.clone())?)
        } else {
            None
        };
        let mut receivers = Vec::new();
        if c.kafka_spans {
            let r = KafkaReceiver::new(
                &config.kafka,
                &c.group_id,
                Stream::Spans,
                dead_letters.clone(),
                metrics.clone(),
            )?;
            receivers.push((r, Stream::Spans));
        }
        let decisions_sink = if c.kafka_decisions {
            let (sink, h) = Sink::<DecisionRow>::spawn(
                store.clone(),
                sink_config,
                metrics.clone(),
                hard_stop.clone(),
            );
            writers.push(h);
            // Undecodable decisions go to the collector's dead-letter topic too (the source
            // topic header tells them from spans).
            let r = KafkaReceiver::new(
                &config.kafka,
                &c.group_id,
                Stream::Decisions,
                dead_letters.clone(),
                metrics.clone(),
            )?;
            receivers.push((r, Stream::Decisions));
            Some(sink)
        } else {
            None
        };
        let http = bind(&c.listen).await?;
        let grpc = if c.otlp_grpc_listen.is_empty() {
            None
        } else {
            Some(bind(&c.otlp_grpc_listen).await?)
        };
        let guard = riskstream_auth::Guard::new("collector", &c.access, otlp::AUTH_RULES)?
            .with_renderer(otlp::render_denial);
        let state = OtlpState {
            sink: spans_sink,
            dead_letters,
            metrics,
            request_timeout: c.request_timeout,
            retry_after: c.retry_after,
            store,
            guard,
        };
        Ok(App {
            config,
            shutdown,
            hard_stop,
            http,
            grpc,
            state,
            decisions_sink,
            writers,
            receivers,
            server_version: None,
        })
    }

    /// The bound OTLP/HTTP (and metrics) address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound OTLP/gRPC address, if enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The collector's metrics (the same registry `/metrics` shows).
    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    /// The ClickHouse server's version (`None` on another store).
    pub fn server_version(&self) -> Option<ServerVersion> {
        self.server_version
    }

    /// Serves until the shutdown token is cancelled, then stops reading, drains the queues
    /// (giving up after `collector.request_timeout`) and returns.
    pub async fn run_until_stopped(self) -> Result<(), CollectorError> {
        let App {
            config,
            shutdown,
            hard_stop,
            http,
            grpc,
            state,
            decisions_sink,
            writers,
            receivers,
            server_version: _,
        } = self;
        let mut tasks: Vec<JoinHandle<Result<(), CollectorError>>> = Vec::new();

        let router = otlp::router(state.clone(), config.collector.max_request_bytes);
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(http, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .map_err(|e| CollectorError::Serve(e.to_string()))
        }));

        if let Some(listener) = grpc {
            let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
                GrpcTraceService { state: state.clone() },
            )
            .max_decoding_message_size(config.collector.max_request_bytes);
            let service = tonic::service::interceptor::InterceptedService::new(
                service,
                riskstream_auth::grpc::GrpcGuard::new(state.guard.clone(), otlp::GRPC_EXPORT_ROUTE),
            );
            let http = &config.collector.access.http;
            let server = tonic::transport::Server::builder()
                .timeout(http.request_timeout)
                .http2_max_header_list_size(
                    u32::try_from(http.max_header_bytes).unwrap_or(u32::MAX),
                );
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let mut server = server;
                server
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                    .map_err(|e| CollectorError::Serve(e.to_string()))
            }));
        }

        for (receiver, stream) in receivers {
            let stop = shutdown.clone();
            match stream {
                Stream::Spans => {
                    let sink = state.sink.clone();
                    tasks.push(tokio::spawn(async move {
                        receiver.run_spans(sink, stop).await;
                        Ok(())
                    }));
                }
                Stream::Decisions => {
                    if let Some(sink) = decisions_sink.clone() {
                        tasks.push(tokio::spawn(async move {
                            receiver.run_decisions(sink, stop).await;
                            Ok(())
                        }));
                    }
                }
            }
        }
        drop(decisions_sink);

        let retention = config.collector.retention;
        // ClickHouse before 19.6 has no TTL: the store drops expired partitions (a no-op on
        // newer servers and in memory).
        if !retention.is_zero() {
            let store = state.store.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RETENTION_SWEEP_INTERVAL);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let now = u64::try_from(riskstream_common::now_ms()).unwrap_or(0) * 1_000_000;
                    match store.expire(retention, now).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(partitions = n, "expired partitions dropped"),
                        Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                    }
                }
            });
        }
        drop(state);

        shutdown.cancelled().await;
        tracing::info!("collector draining");
        let deadline = config.collector.request_timeout;
        let stopper = hard_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            stopper.cancel();
        });
        let mut first_error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "collector task failed");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(CollectorError::Serve(e.to_string()));
                }
            }
        }
        for w in writers {
            let _ = w.await;
        }
        hard_stop.cancel();
        tracing::info!("collector stopped");
        first_error.map_or(Ok(()), Err)
    }
}
