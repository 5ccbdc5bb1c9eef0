//! `riskstream demo`: the whole pipeline in one process on the embedded broker, no servers to
//! install: the mock Kafka cluster, ingest, a feature worker, and generated traffic posted to
//! ingest over HTTP, with a running summary of the decisions. Runs until Ctrl-C or `--duration`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use riskstream_common::broker::EmbeddedBroker;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};
use riskstream_common::{Decision, Outcome};

use crate::cli::{Failure, ServiceArgs, load_config};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where ingest listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub ingest_listen: String,
    /// Where the worker's admin HTTP listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub worker_listen: String,
    /// Generated events per second posted to ingest (0: none, send your own).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Where the services' log goes (only warnings reach the terminal); default:
    /// `riskstream-demo.log` in the system's temporary directory.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let cfg = load_config(
        &ServiceArgs {
            config: args.config.clone(),
            ..ServiceArgs::default()
        },
        None,
    )?;
    let log_path = args
        .log_file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("riskstream-demo.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the demo's log file {}", log_path.display()))?;
    let _telemetry = riskstream_common::telemetry::init_with_log_file(
        &riskstream_common::telemetry::TelemetryConfig {
            traces_exporter: riskstream_common::telemetry::exporter::NONE.into(),
            ..cfg.telemetry.clone()
        },
        "riskstream",
        None,
        log_file,
    );
    println!("log={}", log_path.display());
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }

    let broker = EmbeddedBroker::with_topics(args.partitions, cfg.kafka.topics.all())
        .context("starting the embedded broker")?;
    let kafka = KafkaConfig {
        brokers: broker.bootstrap().to_string(),
        fetch_wait_max: Duration::from_millis(5),
        session_timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(500),
        ..cfg.kafka.clone()
    };
    println!("bootstrap={}", kafka.brokers);

    let ingest = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: kafka.clone(),
            ingest: riskstream_ingest::IngestConfig {
                listen: args.ingest_listen.clone(),
                ..cfg.ingest.clone()
            },
        },
        shutdown.clone(),
    )
    .await
    .context("starting ingest")?;
    let ingest_addr = ingest.local_addr();
    let worker = riskstream_feature_worker::App::build(
        riskstream_feature_worker::Config {
            kafka: kafka.clone(),
            worker: riskstream_feature_worker::WorkerConfig {
                listen: args.worker_listen.clone(),
                ..cfg.worker.clone()
            },
        },
        shutdown.clone(),
    )
    .await
    .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("starting the worker")))?;
    let worker_addr = worker.local_addr();
    println!("listening={ingest_addr}");
    println!("worker_admin={worker_addr}");
    println!(
        "\nriskstream demo: broker {}, ingest http://{ingest_addr}, worker admin http://{worker_addr}\n\
         try:  curl -s -XPOST http://{ingest_addr}/v1/events -H 'content-type: application/json' \\\n\
         \x20       -d '{{\"event_time\": \"{}\", \"account_id\": \"acc-1\", \"card_id\": \"card-1\", \"amount\": 1.5, \"currency\": \"EUR\", \"type\": \"payment\"}}'\n\
         \x20     curl -s http://{worker_addr}/v1/features/card_id/card-1\n",
        kafka.brokers,
        riskstream_common::event::format_rfc3339_ms(riskstream_common::now_ms()),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { ingest.run_until_stopped().await.map_err(anyhow::Error::new) });
    tasks.spawn(async move { worker.run_until_stopped().await.map_err(anyhow::Error::new) });
    if args.rate > 0.0 {
        tasks.spawn(traffic(
            format!("http://{ingest_addr}/v1/events"),
            args.rate,
            shutdown.clone(),
        ));
    }
    tasks.spawn(summary(kafka.clone(), shutdown.clone()));
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(Failure::Runtime(e));
            }
            Err(e) => {
                shutdown.cancel();
                return Err(Failure::Runtime(anyhow::Error::new(e)));
            }
        }
    }
    // Consumers commit and close on threads of their own (bounded); the broker goes last, so
    // no client still closing reports it gone.
    tokio::time::sleep(BROKER_STOP_GRACE).await;
    broker.stop();
    Ok(())
}

/// How long the demo's broker outlives the services it served.
const BROKER_STOP_GRACE: Duration = Duration::from_secs(1);

/// Posts generated traffic to ingest in small batches at `rate` events per second.
async fn traffic(url: String, rate: f64, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut generator = Generator::new(GeneratorConfig {
        seed: riskstream_common::now_ms() as u64,
        start_time_ms: riskstream_common::now_ms(),
        events_per_sec: rate,
        fraud_share: 0.03,
        ..GeneratorConfig::default()
    });
    let tick = Duration::from_millis(100);
    let per_tick = (rate * tick.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        owed += per_tick;
        let n = owed.floor() as usize;
        owed -= n as f64;
        // Real time: the generator's event times are pinned to now.
        let now = riskstream_common::now_ms();
        let batch: Vec<serde_json::Value> = (0..n)
            .map(|_| {
                let mut e = generator.next_event();
                e.event_time_ms = e.event_time_ms.min(now);
                serde_json::to_value(&e).unwrap_or_default()
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        match http.post(&url).json(&batch).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "demo traffic refused"),
            Err(e) => tracing::warn!(error = %e, "demo traffic failed"),
        }
    }
}

/// Reads the decisions topic and prints a summary every few seconds.
async fn summary(kafka: KafkaConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer =
        kafka.consumer(&format!("demo-summary-{}", riskstream_common::now_ms()))?;
    consumer.subscribe(&[kafka.topics.decisions.as_str()])?;
    let mut by_outcome: BTreeMap<Outcome, u64> = BTreeMap::new();
    let mut last_print = Instant::now();
    let mut last_flagged: Option<Decision> = None;
    let mut latencies_us: Vec<u64> = Vec::new();
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => m,
        };
        if let Ok(Ok(m)) = m
            && let Some(d) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Decision>(p).ok())
        {
            *by_outcome.entry(d.outcome).or_default() += 1;
            latencies_us.push(d.processing_latency_us);
            if d.outcome >= Outcome::Challenge {
                last_flagged = Some(d);
            }
        }
        if last_print.elapsed() >= Duration::from_secs(3) {
            last_print = Instant::now();
            latencies_us.sort_unstable();
            let p99 = latencies_us
                .get(latencies_us.len().saturating_sub(1) * 99 / 100)
                .copied()
                .unwrap_or(0);
            let counts: Vec<String> = by_outcome.iter().map(|(o, n)| format!("{o}={n}")).collect();
            println!(
                "decisions: {}  worker p99 {:.2} ms",
                counts.join(" "),
                p99 as f64 / 1000.0
            );
            if let Some(d) = last_flagged.take() {
                let reasons: Vec<String> = d
                    .reasons
                    .iter()
                    .map(|r| format!("{}:{}", r.kind, r.code))
                    .collect();
                println!(
                    "  latest {}: event {} account {} score {:.3} reasons [{}] trace {}",
                    d.outcome,
                    d.event_id,
                    d.account_id.as_deref().unwrap_or("-"),
                    d.score,
                    reasons.join(", "),
                    d.trace_id
                );
            }
            latencies_us.clear();
        }
    }
}
