//! `riskstream bench collector`: spans/s from Kafka into ClickHouse through a real collector,
//! compared in the same run with ClickHouse's own insert of the same rows from a file
//! (`clickhouse-client ... INSERT ... FORMAT RowBinary < file`), and trace-by-id lookup
//! latency (p50/p99), optionally with filler spans stored first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::kafka::KafkaConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ClickHouseConfig, CollectorSection, Config};
use crate::{App, CollectorError};
use riskstream_store::schema::{self, SpanRow, table};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub kafka: KafkaConfig,
    /// The server; `database` is used as a prefix for the two fresh databases of the run.
    pub clickhouse: ClickHouseConfig,
    /// Spans generated and sent through Kafka.
    pub spans: usize,
    /// Spans per trace (a root and its children).
    pub spans_per_trace: usize,
    /// Spans per Kafka record (an OTel Collector batch).
    pub spans_per_record: usize,
    /// Collector batching (`collector.batch_max_rows`).
    pub batch_max_rows: usize,
    /// Collector `insert_concurrency`.
    pub insert_concurrency: usize,
    /// Trace-by-id lookups timed at the end.
    pub lookups: usize,
    /// Extra spans generated inside ClickHouse before the lookups (e.g. 9M for a 10M table).
    pub filler_spans: u64,
    /// `clickhouse-client` binary and native port for the baseline; `None` posts the file over
    /// HTTP instead.
    pub clickhouse_client: Option<(PathBuf, u16)>,
    pub seed: u64,
    /// Topic to use (the caller created it, e.g. with many partitions: librdkafka's mock broker
    /// keeps only about 5 MB per partition). `None`: a fresh topic name, which only a broker
    /// that auto-creates topics accepts (the mock; real clusters usually refuse).
    pub topic: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            spans: 1_000_000,
            spans_per_trace: 10,
            spans_per_record: 100,
            batch_max_rows: 100_000,
            insert_concurrency: 2,
            lookups: 1000,
            filler_spans: 0,
            clickhouse_client: Some((PathBuf::from("clickhouse-client"), 9000)),
            seed: 42,
            topic: None,
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub spans: usize,
    pub kafka_records: usize,
    pub produce_seconds: f64,
    pub collector_seconds: f64,
    pub collector_spans_per_second: f64,
    pub baseline_seconds: f64,
    pub baseline_spans_per_second: f64,
    /// collector rate / ClickHouse's own file insert rate.
    pub ratio_to_clickhouse: f64,
    pub stored_spans_at_lookup: u64,
    pub lookup_p50_ms: f64,
    pub lookup_p99_ms: f64,
}

/// Bench failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Collector(#[from] CollectorError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("baseline insert failed: {0}")]
    Baseline(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the collector stored {stored} of {expected} spans before giving up")]
    Incomplete { stored: u64, expected: u64 },
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Generates the Kafka records and the trace ids used (deterministic for a seed).
pub fn generate(options: &BenchOptions) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
    let now_ns = u64::try_from(riskstream_common::now_ms()).unwrap_or(0) * 1_000_000;
    let per_trace = options.spans_per_trace.max(1);
    let per_record = options.spans_per_record.max(1);
    let services = ["ingest", "feature-worker", "scoring", "api"];
    let mut records = Vec::new();
    let mut trace_ids = Vec::new();
    let mut spans: Vec<Span> = Vec::with_capacity(per_record);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    let mut trace_start = now_ns;
    for i in 0..options.spans {
        if i % per_trace == 0 {
            rng.fill(&mut trace_id);
            rng.fill(&mut root);
            trace_ids.push(const_hex::encode(trace_id));
            trace_start = now_ns - rng.random_range(0..3_600_000_000_000u64);
        }
        let index = i % per_trace;
        let mut span_id: [u8; 8] = rng.random();
        if index == 0 {
            span_id = root;
        }
        let start = trace_start + index as u64 * 1_000_000;
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: if index == 0 {
                Vec::new()
            } else {
                root.to_vec()
            },
            name: format!("op-{}", index % 7),
            kind: 1 + (index % 5) as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + rng.random_range(10_000..50_000_000),
            attributes: vec![
                kv(
                    "account.id",
                    any_value::Value::StringValue(format!("acc-{}", rng.random_range(0..10_000))),
                ),
                kv(
                    "amount",
                    any_value::Value::DoubleValue(rng.random_range(1.0..500.0)),
                ),
                kv("http.status_code", any_value::Value::IntValue(200)),
                kv(
                    "messaging.kafka.partition",
                    any_value::Value::IntValue(rng.random_range(0..8)),
                ),
            ],
            status: Some(Status {
                code: 1,
                message: String::new(),
            }),
            ..Default::default()
        });
        if spans.len() == per_record || i + 1 == options.spans {
            let service = services[records.len() % services.len()];
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv(
                                "service.name",
                                any_value::Value::StringValue(service.into()),
                            ),
                            kv(
                                "host.name",
                                any_value::Value::StringValue("bench-host".into()),
                            ),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "riskstream-bench".into(),
                            ..Default::default()
                        }),
                        spans: std::mem::take(&mut spans),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            records.push(request.encode_to_vec());
        }
    }
    (records, trace_ids)
}

async fn count(client: &clickhouse::Client, t: &str) -> Result<u64, clickhouse::error::Error> {
    client
        .query(&format!("SELECT count() FROM {t}"))
        .fetch_one::<u64>()
        .await
}

/// Runs the benchmark.
pub async fn bench(options: BenchOptions) -> Result<BenchReport, BenchError> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let db = format!("{}_bench_{}", options.clickhouse.database, &run[..8]);
    let baseline_db = format!("{db}_baseline");
    let mut kafka = options.kafka.clone();
    kafka.topics.otlp_spans = options
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench.otlp_spans.{}", &run[..8]));
    kafka.topics.spans_dlq = format!("bench.otlp_spans.dlq.{}", &run[..8]);

    let (records, trace_ids) = generate(&options);
    let bytes: usize = records.iter().map(Vec::len).sum();
    tracing::info!(
        spans = options.spans,
        records = records.len(),
        bytes,
        "producing bench spans"
    );
    let produced_at = Instant::now();
    let producer: FutureProducer = kafka.producer()?;
    // Keyed, so records spread evenly over the partitions (null keys stick to one partition
    // for a while, and the mock broker keeps only ~5 MB per partition).
    let keys: Vec<String> = (0..records.len()).map(|i| i.to_string()).collect();
    for (chunk, chunk_keys) in records.chunks(5000).zip(keys.chunks(5000)) {
        let sends = chunk.iter().zip(chunk_keys).map(|(r, k)| {
            producer.send(
                FutureRecord::to(&kafka.topics.otlp_spans)
                    .key(k.as_str())
                    .payload(r.as_slice()),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
    }
    let produce_seconds = produced_at.elapsed().as_secs_f64();
    let kafka_records = records.len();
    drop(records);

    let config = Config {
        kafka: kafka.clone(),
        clickhouse: ClickHouseConfig {
            database: db.clone(),
            ..options.clickhouse.clone()
        },
        collector: CollectorSection {
            listen: "127.0.0.1:0".into(),
            otlp_grpc_listen: String::new(),
            kafka_decisions: false,
            group_id: format!("bench-{run}"),
            batch_max_rows: options.batch_max_rows,
            queue_max_spans: options.batch_max_rows * 4,
            insert_concurrency: options.insert_concurrency,
            ..CollectorSection::default()
        },
    };
    let client = config.clickhouse.client();
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await?;
    let started = Instant::now();
    let task = tokio::spawn(app.run_until_stopped());
    let expected = options.spans as u64;
    let mut last = (0u64, Instant::now());
    loop {
        let stored = count(&client, table::SPANS).await.unwrap_or(0);
        if stored >= expected {
            break;
        }
        if stored > last.0 {
            last = (stored, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            stop.cancel();
            return Err(BenchError::Incomplete { stored, expected });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let collector_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;

    // Baseline: the same rows, dumped to a file, inserted by ClickHouse itself.
    let dir = tempfile_dir()?;
    let file = dir.join("spans.rowbinary");
    let columns = SPAN_COLUMN_LIST.join(", ");
    let bytes = client
        .query(&format!("SELECT {columns} FROM {}", table::SPANS))
        .fetch_bytes("RowBinary")?
        .collect()
        .await?;
    std::fs::write(&file, &bytes)?;
    drop(bytes);
    let root = options.clickhouse.client().with_database("default");
    schema::migrate(&root, &baseline_db, Duration::ZERO).await?;
    let insert_sql = format!(
        "INSERT INTO {baseline_db}.{} ({columns}) FORMAT RowBinary",
        table::SPANS
    );
    let baseline_started = Instant::now();
    match &options.clickhouse_client {
        Some((binary, port)) => {
            let input = std::fs::File::open(&file)?;
            let out = tokio::process::Command::new(binary)
                .arg("--port")
                .arg(port.to_string())
                .arg("--query")
                .arg(&insert_sql)
                .stdin(input)
                .output()
                .await?;
            if !out.status.success() {
                return Err(BenchError::Baseline(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        None => {
            let data = std::fs::read(&file)?;
            let mut insert = root.insert_formatted_with(insert_sql.clone());
            insert.send(data.into()).await?;
            insert.end().await?;
        }
    }
    let baseline_seconds = baseline_started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    root.query(&format!("DROP DATABASE IF EXISTS {baseline_db}"))
        .execute()
        .await?;

    if options.filler_spans > 0 {
        tracing::info!(filler = options.filler_spans, "storing filler spans");
        client
            .query(&format!(
                "INSERT INTO {t} (trace_id, span_id, service_name, span_name, start_time_unix_nano, duration_ns) \
                 SELECT lower(hex(MD5(toString(intDiv(number, 10))))), lower(hex(substring(MD5(toString(number)), 1, 8))), \
                 'filler', 'op', toUInt64(?) + number * 1000, 1000 FROM numbers(?)",
                t = table::SPANS
            ))
            .bind(u64::try_from(riskstream_common::now_ms()).unwrap_or(0) * 1_000_000 - 3_600_000_000_000)
            .bind(options.filler_spans)
            .execute()
            .await?;
    }
    let stored_spans_at_lookup = count(&client, table::SPANS).await?;
    let mut histogram =
        hdrhistogram::Histogram::<u64>::new(3).map_err(|e| BenchError::Baseline(e.to_string()))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed);
    for _ in 0..options.lookups {
        let id = &trace_ids[rng.random_range(0..trace_ids.len().max(1))];
        let t = Instant::now();
        let spans: Vec<SpanRow> = client
            .query(&format!(
                "SELECT ?fields FROM {} WHERE trace_id = ? ORDER BY start_time_unix_nano",
                table::SPANS
            ))
            .bind(id.as_str())
            .fetch_all()
            .await?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        if spans.is_empty() {
            return Err(BenchError::Baseline(format!("trace {id} not found")));
        }
        let _ = histogram.record(us.max(1));
    }
    let root = options.clickhouse.client().with_database("default");
    root.query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await?;

    let collector_rate = options.spans as f64 / collector_seconds;
    let baseline_rate = options.spans as f64 / baseline_seconds;
    Ok(BenchReport {
        spans: options.spans,
        kafka_records,
        produce_seconds,
        collector_seconds,
        collector_spans_per_second: collector_rate,
        baseline_seconds,
        baseline_spans_per_second: baseline_rate,
        ratio_to_clickhouse: collector_rate / baseline_rate,
        stored_spans_at_lookup,
        lookup_p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        lookup_p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// The `spans` columns in [`SpanRow`] order.
const SPAN_COLUMN_LIST: [&str; 26] = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "service_name",
    "span_name",
    "span_kind",
    "start_time_unix_nano",
    "duration_ns",
    "status_code",
    "status_message",
    "scope_name",
    "scope_version",
    "resource_attr_keys",
    "resource_attr_values",
    "resource_attr_types",
    "span_attr_keys",
    "span_attr_values",
    "span_attr_types",
    "event_times_unix_nano",
    "event_names",
    "event_attributes",
    "link_trace_ids",
    "link_span_ids",
    "link_trace_states",
    "link_attributes",
];

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "riskstream-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
