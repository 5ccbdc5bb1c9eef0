//! The long-running services: build from configuration, print the bound address, run until
//! SIGTERM/Ctrl-C, drain.

use anyhow::Context;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};

use crate::setup::{
    ClickHouseArgs, CollectorArgs, Failure, RootConfig, ServiceArgs, WorkerArgs, load_config,
    load_config_with, telemetry,
};
use riskstream_common::config::Value;
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::topics::{Requirement, TopicError, check_topics, require_compacted};

/// Fails start-up (exit 2) when `[auth] tokens_file` is set but cannot be read or parsed: a
/// service never starts open by mistake, nor closed without saying why.
fn require_tokens_file(cfg: &RootConfig) -> Result<(), Failure> {
    if !cfg.auth.enabled() {
        return Ok(());
    }
    riskstream_auth::TokenFile::load(&cfg.auth.tokens_file)
        .map(|_| ())
        .map_err(|e| Failure::Usage(vec![format!("auth.tokens_file: {e}")]))
}

/// How long the start-up topic check waits for the cluster's metadata.
const TOPIC_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Fails start-up, with every problem listed, when a topic the service uses is missing
/// (`riskstream topics create` provisions them), as Kafka Streams refuses missing sources.
async fn require_topics(kafka: &KafkaConfig, topics: &[&str]) -> Result<(), Failure> {
    let kafka = kafka.clone();
    let required: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let checked = tokio::task::spawn_blocking(move || {
        let reqs: Vec<Requirement<'_>> = required.iter().map(|t| Requirement::exists(t)).collect();
        check_topics(&kafka, &reqs, TOPIC_CHECK_TIMEOUT)
    })
    .await
    .context("topic check task")?;
    match checked {
        Ok(()) => Ok(()),
        Err(e @ TopicError::Check { .. }) => Err(Failure::Usage(vec![e.to_string()])),
        Err(e) => Err(Failure::Runtime(anyhow::Error::new(e))),
    }
}

/// Fails start-up (exit 2) unless the keyed state changelog is co-partitioned with the
/// repartition topic and compacted; a cluster that cannot describe the topic's configuration
/// (missing DescribeConfigs permission) gets a warning instead.
async fn require_changelog(kafka: &KafkaConfig) -> Result<(), Failure> {
    let t = &kafka.topics;
    let k = kafka.clone();
    let co_partitioned = tokio::task::spawn_blocking(move || {
        let t = &k.topics;
        check_topics(
            &k,
            &[Requirement::co_partitioned(&t.changelog, &t.repartition)],
            TOPIC_CHECK_TIMEOUT,
        )
    })
    .await
    .context("topic check task")?;
    let compacted = match co_partitioned {
        Ok(()) => require_compacted(kafka, &t.changelog, TOPIC_CHECK_TIMEOUT).await,
        Err(e) => Err(e),
    };
    match compacted {
        Ok(()) => Ok(()),
        Err(e @ TopicError::Check { .. }) => Err(Failure::Usage(vec![e.to_string()])),
        Err(e) => {
            tracing::warn!(topic = %t.changelog, error = %e, "the changelog topic's cleanup policy cannot be read: compaction not verified");
            Ok(())
        }
    }
}

pub async fn ingest(args: ServiceArgs) -> Result<(), Failure> {
    let cfg = load_config(&args, Some("ingest.listen"))?;
    let _telemetry = telemetry(&cfg, "riskstream-ingest");
    require_tokens_file(&cfg)?;
    let t = &cfg.kafka.topics;
    require_topics(&cfg.kafka, &[&t.events, &t.decisions, &t.otlp_spans]).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: cfg.kafka,
            ingest: cfg.ingest,
        },
        shutdown,
    )
    .await
    .context("starting ingest")?;
    println!("listening={}", app.local_addr());
    app.run_until_stopped().await.context("running ingest")?;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&args.service, Some("worker.listen"))?;
    let _telemetry = telemetry(&cfg, "riskstream-worker");
    require_tokens_file(&cfg)?;
    if let Some(p) = args.features {
        cfg.worker.features_path = p;
    }
    if let Some(p) = args.rules {
        cfg.worker.scoring.rules_path = p;
    }
    if let Some(p) = args.models {
        cfg.worker.scoring.models_dir = p;
    }
    let t = &cfg.kafka.topics;
    let mut needed = vec![
        t.events.as_str(),
        &t.decisions,
        &t.events_dlq,
        &t.events_late,
        &t.rules,
        &t.lists,
        &t.otlp_spans,
    ];
    let keyed = cfg.worker.mode == riskstream_feature_worker::WorkerMode::Keyed;
    if keyed {
        needed.extend([t.repartition.as_str(), &t.feature_results, &t.changelog]);
        if cfg.worker.window_outputs {
            needed.extend([t.window_outputs.as_str(), &t.window_outputs_late]);
        }
    }
    require_topics(&cfg.kafka, &needed).await?;
    if keyed {
        require_changelog(&cfg.kafka).await?;
    }
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_feature_worker::App::build(
        riskstream_feature_worker::Config {
            kafka: cfg.kafka,
            worker: cfg.worker,
        },
        shutdown,
    )
    .await
    .map_err(|e| match e {
        riskstream_feature_worker::WorkerError::Features { path, source } => {
            Failure::Usage(vec![format!("{}: {source}", path.display())])
        }
        riskstream_feature_worker::WorkerError::Scoring(e) => Failure::Usage(vec![e.to_string()]),
        e @ riskstream_feature_worker::WorkerError::WindowOutputsInLocalMode { .. } => {
            Failure::Usage(vec![e.to_string()])
        }
        other => Failure::Runtime(anyhow::Error::new(other).context("starting the worker")),
    })?;
    println!("listening={}", app.local_addr());
    app.run_until_stopped()
        .await
        .context("running the worker")?;
    Ok(())
}

fn clickhouse_overrides(a: &ClickHouseArgs) -> Vec<(&'static str, Value)> {
    a.clickhouse_url
        .iter()
        .map(|u| ("clickhouse.url", Value::from(u.clone())))
        .collect()
}

pub async fn collector(args: CollectorArgs) -> Result<(), Failure> {
    let mut extra = clickhouse_overrides(&args.ch);
    if let Some(g) = &args.otlp_grpc_listen {
        extra.push(("collector.otlp_grpc_listen", Value::from(g.clone())));
    }
    let cfg = load_config_with(&args.ch.service, Some("collector.listen"), extra)?;
    // The collector does not trace its own writes: logging only.
    let _telemetry = crate::setup::logging_only(&cfg);
    require_tokens_file(&cfg)?;
    let t = &cfg.kafka.topics;
    let mut needed = vec![t.spans_dlq.as_str()];
    if cfg.collector.kafka_spans {
        needed.push(&t.otlp_spans);
    }
    if cfg.collector.kafka_decisions {
        needed.push(&t.decisions);
    }
    require_topics(&cfg.kafka, &needed).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_trace_collector::App::build(
        riskstream_trace_collector::Config {
            kafka: cfg.kafka,
            clickhouse: cfg.clickhouse,
            collector: cfg.collector,
        },
        shutdown,
    )
    .await
    .context("starting the collector")?;
    println!("listening={}", app.http_addr());
    if let Some(g) = app.grpc_addr() {
        println!("otlp_grpc_listening={g}");
    }
    app.run_until_stopped()
        .await
        .context("running the collector")?;
    Ok(())
}

pub async fn api(args: ClickHouseArgs) -> Result<(), Failure> {
    let extra = clickhouse_overrides(&args);
    let cfg = load_config_with(&args.service, Some("api.listen"), extra)?;
    let _telemetry = telemetry(&cfg, "riskstream-api");
    require_tokens_file(&cfg)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let app = riskstream_api::App::build(
        riskstream_api::Config {
            clickhouse: cfg.clickhouse,
            api: cfg.api,
        },
        shutdown,
    )
    .await
    .context("starting the api")?;
    println!("listening={}", app.local_addr());
    app.run_until_stopped().await.context("running the api")?;
    Ok(())
}
