//! Runs the collector benchmark on a private ClickHouse server and an embedded Kafka broker,
//! printing the report as JSON (until `riskstream bench collector` wires it):
//! `BENCH_SPANS=1000000 BENCH_FILLER=9000000 cargo run --release -p riskstream-trace-collector --example bench_collector`

use riskstream_common::kafka::Topics;
use riskstream_store::ClickHouseConfig;
use riskstream_testkit::clickhouse::ClickHouseServer;
use riskstream_testkit::kafka::TestKafka;
use riskstream_trace_collector::bench::{BenchOptions, bench};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,clickhouse=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = ClickHouseServer::start_private();
    let topics = Topics::default();
    let broker = TestKafka::start(4, &[]);
    // The mock broker keeps ~5 MB per partition: enough partitions to hold the whole run.
    let topic = format!("bench.otlp_spans.{}", std::process::id());
    broker.create_topic(&topic, i32::try_from(env_or("BENCH_PARTITIONS", 128))?);
    let options = BenchOptions {
        kafka: broker.kafka_config(&topics),
        clickhouse: ClickHouseConfig {
            url: server.url().into(),
            database: "bench".into(),
            compression: std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".into()),
            ..Default::default()
        },
        spans: usize::try_from(env_or("BENCH_SPANS", 1_000_000))?,
        spans_per_record: usize::try_from(env_or("BENCH_SPANS_PER_RECORD", 100))?,
        batch_max_rows: usize::try_from(env_or("BENCH_BATCH_ROWS", 100_000))?,
        insert_concurrency: usize::try_from(env_or("BENCH_INSERT_CONCURRENCY", 2))?,
        lookups: usize::try_from(env_or("BENCH_LOOKUPS", 1000))?,
        filler_spans: env_or("BENCH_FILLER", 0),
        clickhouse_client: Some(("clickhouse-client".into(), server.tcp_port())),
        topic: Some(topic),
        ..Default::default()
    };
    let report = bench(options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
