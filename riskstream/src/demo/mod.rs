//! `riskstream demo`: the whole pipeline in one process, no servers to install: the embedded
//! broker (librdkafka's mock cluster), ingest, a feature worker, the trace-collector and the
//! api over an in-memory trace and decision store (or ClickHouse with `--clickhouse-url`),
//! generated traffic with fraud patterns posted to ingest over HTTP, and live progress in the
//! terminal ([`progress`]). Runs until Ctrl-C or `--duration`; every service drains on the
//! same cancellation token.

mod progress;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use riskstream_common::broker::EmbeddedBroker;
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::shutdown::{CancellationToken, cancel_on_signal};
use riskstream_store::{ClickHouseStore, MemoryLimits, MemoryStore, TraceStore};

use crate::setup::{Failure, ServiceArgs, load_config};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where ingest listens; the api takes the next port, the worker's admin HTTP the one
    /// after, the collector's OTLP/HTTP receiver the next (port 0: free ports for all).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Generated events per second posted to ingest (0: none, send your own).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seed of the generated traffic (default: the clock), for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Store traces and decisions in this ClickHouse (HTTP URL) instead of memory.
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Where the services' log goes (only warnings reach the terminal); default:
    /// `riskstream-demo.log` in the system's temporary directory.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

/// The address `offset` ports after `base` (every one 0 when `base`'s is).
fn port_after(base: SocketAddr, offset: u16) -> String {
    let port = match base.port() {
        0 => 0,
        p => p.saturating_add(offset),
    };
    SocketAddr::new(base.ip(), port).to_string()
}

/// How long the demo's broker outlives the services it served.
const BROKER_STOP_GRACE: Duration = Duration::from_secs(1);
/// Spans are exported this often in the demo (the SDK's default is 5 s), so a trace can be
/// looked up right after its decision.
const DEMO_SPAN_EXPORT_DELAY: Duration = Duration::from_millis(300);

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let mut cfg = load_config(
        &ServiceArgs {
            config: args.config.clone(),
            ..ServiceArgs::default()
        },
        None,
    )?;
    if let Some(url) = &args.clickhouse_url {
        cfg.clickhouse.url = url.clone();
    }
    // A local demo runs open unless a tokens file is configured: said once below, not as a
    // warning from each service.
    for access in [
        &mut cfg.ingest.access,
        &mut cfg.worker.access,
        &mut cfg.collector.access,
        &mut cfg.api.access,
    ] {
        access.open_by_choice = true;
    }
    let auth_line = if cfg.ingest.access.auth.enabled() {
        format!(
            "auth: bearer tokens from {}",
            cfg.ingest.access.auth.tokens_file.display()
        )
    } else {
        "auth: off (a local demo; docs/security.md turns it on)".to_string()
    };
    let log_path = args
        .log_file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("riskstream-demo.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the demo's log file {}", log_path.display()))?;
    println!("log={}", log_path.display());
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

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
    // Spans go to the embedded broker's otlp_spans topic, named by the service that opened them.
    let telemetry = riskstream_common::telemetry::init_for_demo(
        &cfg.telemetry,
        "riskstream-demo",
        Some(&kafka),
        log_file,
        DEMO_SPAN_EXPORT_DELAY,
    );

    let store: Arc<dyn TraceStore> = match &args.clickhouse_url {
        None => Arc::new(MemoryStore::new(MemoryLimits::default())),
        Some(_) => Arc::new(ClickHouseStore::new(&cfg.clickhouse)),
    };
    let collector_config = riskstream_trace_collector::Config {
        kafka: kafka.clone(),
        clickhouse: cfg.clickhouse.clone(),
        collector: riskstream_trace_collector::CollectorSection {
            listen: port_after(args.listen, 3),
            otlp_grpc_listen: String::new(),
            kafka_spans: true,
            kafka_decisions: true,
            ..cfg.collector.clone()
        },
    };
    let collector = match &args.clickhouse_url {
        None => {
            riskstream_trace_collector::App::build_with_store(
                collector_config,
                store.clone(),
                shutdown.clone(),
            )
            .await
        }
        Some(_) => riskstream_trace_collector::App::build(collector_config, shutdown.clone()).await,
    }
    .context("starting the trace-collector")?;
    let collector_addr = collector.http_addr();
    let collector_metrics = collector.metrics();
    let api = riskstream_api::App::build_with_store(
        riskstream_api::Config {
            clickhouse: cfg.clickhouse.clone(),
            api: riskstream_api::ApiSection {
                listen: port_after(args.listen, 1),
                ..cfg.api.clone()
            },
        },
        store.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the api")?;
    let api_addr = api.local_addr();
    let ingest = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: kafka.clone(),
            ingest: riskstream_ingest::IngestConfig {
                listen: args.listen.to_string(),
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
                listen: port_after(args.listen, 2),
                ..cfg.worker.clone()
            },
        },
        shutdown.clone(),
    )
    .await
    .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("starting the worker")))?;
    let worker_addr = worker.local_addr();
    println!("listening={ingest_addr}");
    println!("api={api_addr}");
    println!("worker_admin={worker_addr}");
    println!("collector={collector_addr}");
    println!("{auth_line}");
    println!(
        "\nriskstream demo: ingest http://{ingest_addr}, api and pages http://{api_addr}/ui/, \
         worker admin http://{worker_addr}, OTLP/HTTP http://{collector_addr}/v1/traces, \
         traces and decisions in {}\n\
         send your own:  curl -s -XPOST http://{ingest_addr}/v1/events -H 'content-type: application/json' \\\n\
         \x20       -d '{{\"event_time\": \"{}\", \"account_id\": \"acc-1\", \"card_id\": \"card-1\", \"amount\": 1.5, \"currency\": \"EUR\", \"type\": \"payment\"}}'\n",
        store.kind(),
        riskstream_common::event::format_rfc3339_ms(riskstream_common::now_ms()),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { ingest.run_until_stopped().await.map_err(anyhow::Error::new) });
    tasks.spawn(async move { worker.run_until_stopped().await.map_err(anyhow::Error::new) });
    tasks.spawn(async move {
        collector
            .run_until_stopped()
            .await
            .map_err(anyhow::Error::new)
    });
    tasks.spawn(async move { api.run_until_stopped().await.map_err(anyhow::Error::new) });
    let sent = Arc::new(traffic::Sent::default());
    if args.rate > 0.0 {
        let seed = args
            .seed
            .unwrap_or_else(|| u64::try_from(riskstream_common::now_ms()).unwrap_or(0));
        tasks.spawn(traffic::run(
            format!("http://{ingest_addr}/v1/events"),
            args.rate,
            seed,
            sent.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(progress::run(
        progress::Sources {
            kafka: kafka.clone(),
            sent,
            store,
            collector: collector_metrics,
            urls: progress::Urls {
                api: format!("http://{api_addr}"),
                worker: format!("http://{worker_addr}"),
            },
        },
        shutdown.clone(),
    ));
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }
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
    // Consumers commit and close on threads of their own (bounded); the last spans are
    // flushed; the broker goes last, so no client still closing reports it gone.
    tokio::time::sleep(BROKER_STOP_GRACE).await;
    drop(telemetry);
    broker.stop();
    Ok(())
}
