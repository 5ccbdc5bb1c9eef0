//! Builds a worker and wires its parts: loads the feature definitions and the scorer, creates
//! the metrics, the producer and (local mode) the `events` consumer, binds the admin port; then
//! runs the admin server, the state maintenance tick, the control plane and the stages until
//! shutdown, and flushes the producer. It only builds and wires: what a stage does is in
//! [`crate::local`] and [`crate::keyed`], how it reads and commits in [`crate::stage`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use riskstream_common::shutdown::CancellationToken;
use tokio::net::TcpListener;

use crate::config::{Config, WorkerMode};
use crate::control::{ControlConfig, ControlState};
use crate::features::{FeatureConfigError, FeatureEngine, FeatureSet};
use crate::keyed::KeyedError;
use crate::metrics::WorkerMetrics;
use crate::scoring::{Scorer, ScoringSetupError};
use crate::stage::KafkaInput;
use crate::worker::{WorkerState, catalog_of};

/// How often the window state's pending maintenance runs and its gauges are refreshed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on flushing the producer at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Start-up and run-time failures of the worker. A variant with a source does not repeat it in
/// its message: print the chain (`{:#}` through anyhow) to see it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("feature definitions: {}", path.display())]
    Features {
        path: PathBuf,
        #[source]
        source: FeatureConfigError,
    },
    #[error("scoring setup")]
    Scoring(#[from] ScoringSetupError),
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin http server: {0}")]
    Serve(std::io::Error),
    #[error("keyed mode: {0}")]
    Keyed(#[from] KeyedError),
    /// Local mode has no repartition topic to compute window outputs on.
    #[error(
        "{}: window outputs ({}) need worker.mode = \"keyed\"; in local mode set worker.window_outputs = false or remove the [[window_output]] tables",
        path.display(),
        names.join(", ")
    )]
    WindowOutputsInLocalMode { path: PathBuf, names: Vec<String> },
}

/// How the built worker reads `events`.
enum Reader {
    /// Local mode: the worker group's consumer, subscribed at build.
    Local(KafkaInput),
    /// Keyed mode: each stage subscribes its own group when it starts (crate::keyed).
    Keyed,
}

/// A built worker: engine and scorer loaded, consumer subscribed (local mode), admin port bound.
pub struct App {
    state: WorkerState,
    reader: Reader,
    producer: FutureProducer,
    listener: TcpListener,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, WorkerError> {
        let features_path = &config.worker.features_path;
        let set = FeatureSet::from_file(features_path).map_err(|source| WorkerError::Features {
            path: features_path.clone(),
            source,
        })?;
        if config.worker.mode == WorkerMode::Local
            && config.worker.window_outputs
            && !set.window_outputs().is_empty()
        {
            return Err(WorkerError::WindowOutputsInLocalMode {
                path: features_path.clone(),
                names: set
                    .window_outputs()
                    .iter()
                    .map(|o| o.name().to_string())
                    .collect(),
            });
        }
        let scorer = Scorer::from_config(&config.worker.scoring, catalog_of(&set))?;
        // The rules file as the scorer just loaded it: the watcher applies only later changes.
        let control = Arc::new(ControlState::with_rules_file(
            &config.worker.scoring.rules_path,
        ));
        let engine = FeatureEngine::new(set, config.worker.state.clone());
        let metrics = WorkerMetrics::new();
        let reader = match config.worker.mode {
            WorkerMode::Local => Reader::Local(KafkaInput::subscribe(
                &config.kafka,
                &config.worker.group_id,
                &config.kafka.topics.events,
                false,
                crate::local::STAGE,
                metrics.lag_reporter(crate::local::STAGE),
            )?),
            WorkerMode::Keyed => Reader::Keyed,
        };
        // The stages' outputs never time out in the client: librdkafka re-sends them, in order,
        // until acknowledged, however long the broker is away. A record failed on a timeout and
        // re-sent by the stage would land after later ones, and the state stage takes an
        // envelope older than the newest of its source for a duplicate: it would be dropped
        // (docs/kafka.md, "Broker outages").
        let producer = riskstream_common::kafka::KafkaConfig {
            message_timeout: Duration::ZERO,
            ..config.kafka.clone()
        }
        .producer()?;
        let listener = TcpListener::bind(&config.worker.listen)
            .await
            .map_err(|source| WorkerError::Bind {
                addr: config.worker.listen.clone(),
                source,
            })?;
        Ok(Self {
            state: WorkerState {
                engine: Arc::new(engine),
                scorer: Arc::new(scorer),
                metrics,
                config: Arc::new(config),
                control,
            },
            reader,
            producer,
            listener,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn state(&self) -> &WorkerState {
        &self.state
    }

    /// Runs the admin server, the control plane and the stages until shutdown, then drains.
    pub async fn run_until_stopped(self) -> Result<(), WorkerError> {
        let App {
            state,
            reader,
            producer,
            listener,
            shutdown,
        } = self;
        let admin = {
            let router = crate::admin::router(state.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            })
        };
        let maintenance = tokio::spawn(maintain(state.clone(), shutdown.clone()));
        let control = {
            let w = &state.config.worker;
            let cfg = ControlConfig {
                kafka: state.config.kafka.clone(),
                group_id: w.group_id.clone(),
                rules_path: w.scoring.rules_path.clone(),
                rules_poll_interval: w.rules_poll_interval,
            };
            tokio::spawn(crate::control::run(
                cfg,
                state.scorer.clone(),
                state.control.clone(),
                shutdown.clone(),
            ))
        };
        // Decide with the fleet's latest rule set from the first event on (bounded wait).
        state
            .control
            .wait_caught_up(state.config.worker.control_catch_up_timeout)
            .await;
        let result = match reader {
            Reader::Local(input) => {
                crate::local::run(state.clone(), input, producer.clone(), shutdown.clone()).await;
                Ok(())
            }
            Reader::Keyed => {
                let result = crate::keyed::run(state.clone(), producer.clone(), shutdown.clone())
                    .await
                    .map_err(WorkerError::from);
                // A failed stage stops the whole worker.
                shutdown.cancel();
                result
            }
        };
        let _ = maintenance.await;
        let _ = control.await;
        let _ = admin.await;
        let _ = tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await;
        tracing::info!("worker stopped");
        result
    }
}

/// Runs the window state's pending maintenance and refreshes its gauges every
/// [`MAINTENANCE_INTERVAL`] until shutdown.
async fn maintain(state: WorkerState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let engine = state.engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.run_pending_tasks()).await;
                state.metrics.observe_state(&state.engine);
            }
        }
    }
}
