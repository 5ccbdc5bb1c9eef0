//! `riskstream bench`: end-to-end benchmarks that print throughput, latency percentiles and the
//! ratio to a ceiling measured in the same run. Figures go to `docs/benchmarks.md`; nothing
//! here is asserted in a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use riskstream_common::broker::EmbeddedBroker;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;

use crate::setup::Failure;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, Subcommand)]
pub enum Which {
    /// POST /v1/events (batches of 100 and of 1) and `produce`, against a raw rdkafka producer.
    Ingest(IngestBench),
    /// Spans from Kafka into ClickHouse against ClickHouse's own insert of the same rows, and
    /// trace-by-id latency.
    Collector(CollectorBench),
    /// POST /v1/decisions open loop at fixed rates through the broker and a worker, beside a
    /// raw two-hop Kafka round trip.
    Decide(crate::bench_decide::DecideBench),
    /// The feature worker end to end (events -> decisions) in local and keyed mode, beside a
    /// raw consume -> produce passthrough.
    Worker(crate::bench_worker::WorkerBench),
}

#[derive(Debug, Args)]
pub struct IngestBench {
    /// Kafka bootstrap servers (default: an embedded mock broker in this process).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Events per phase.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
}

#[derive(Debug, Args)]
pub struct CollectorBench {
    /// ClickHouse HTTP URL (the run creates and uses its own databases).
    #[arg(long)]
    pub clickhouse_url: String,
    /// ClickHouse native port for the `clickhouse-client` baseline (default: the baseline posts
    /// the file over HTTP).
    #[arg(long)]
    pub clickhouse_native_port: Option<u16>,
    /// Kafka bootstrap servers (default: an embedded mock broker in this process).
    #[arg(long)]
    pub brokers: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    pub spans: usize,
    /// Extra spans generated inside ClickHouse before the lookups (9000000 for a 10M table).
    #[arg(long, default_value_t = 0)]
    pub filler: u64,
    #[arg(long, default_value_t = 1000)]
    pub lookups: usize,
}

async fn collector(a: CollectorBench) -> anyhow::Result<()> {
    use riskstream_trace_collector::bench::{BenchOptions, bench};
    let topics = Topics::default();
    let topic = format!("bench.otlp_spans.{}", std::process::id());
    // The mock keeps ~5 MB per partition: enough partitions to hold the whole run.
    let partitions = if a.brokers.is_some() { 6 } else { 128 };
    let broker = BenchBroker::new(a.brokers.as_deref(), partitions, &[topic.as_str()]).await?;
    println!("bench collector on {}", broker.describe());
    let options = BenchOptions {
        kafka: broker.kafka(&topics, None),
        clickhouse: riskstream_store::ClickHouseConfig {
            url: a.clickhouse_url.clone(),
            database: "bench".into(),
            ..Default::default()
        },
        spans: a.spans,
        lookups: a.lookups,
        filler_spans: a.filler,
        clickhouse_client: a
            .clickhouse_native_port
            .map(|p| ("clickhouse-client".into(), p)),
        topic: Some(topic),
        ..Default::default()
    };
    let report = bench(options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    match args.which {
        Which::Collector(a) => collector(a).await.map_err(Failure::Runtime),
        Which::Ingest(a) => ingest(a).await.map_err(Failure::Runtime),
        Which::Decide(a) => crate::bench_decide::run(a).await.map_err(Failure::Runtime),
        Which::Worker(a) => crate::bench_worker::run(a).await.map_err(Failure::Runtime),
    }
}

/// The broker a benchmark runs on: Apache Kafka at `--brokers` (the run's topics created through
/// the admin API), or an embedded mock broker in this process. The raw ceiling and the measured
/// paths always share it.
pub(crate) struct BenchBroker {
    pub(crate) bootstrap: String,
    mock: Option<EmbeddedBroker>,
}

impl BenchBroker {
    pub(crate) async fn new(
        brokers: Option<&str>,
        partitions: i32,
        topics: &[&str],
    ) -> anyhow::Result<Self> {
        match brokers {
            Some(b) => {
                let kafka = KafkaConfig {
                    brokers: b.to_string(),
                    ..KafkaConfig::default()
                };
                let provision = riskstream_common::topics::Provision {
                    partitions,
                    ..Default::default()
                };
                let specs: Vec<_> = topics
                    .iter()
                    .map(|t| {
                        use riskstream_common::topics::TopicRole;
                        // The keyed changelog as provisioned (compacted).
                        let role = if t.starts_with(riskstream_common::kafka::topic::CHANGELOG) {
                            TopicRole::Changelog
                        } else {
                            TopicRole::Internal
                        };
                        riskstream_common::topics::TopicSpec::for_role(t, role, &provision)
                    })
                    .collect();
                riskstream_common::topics::create_topics(&kafka, &specs, Duration::from_secs(30))
                    .await
                    .with_context(|| format!("creating the bench topics on {b}"))?;
                Ok(Self {
                    bootstrap: b.to_string(),
                    mock: None,
                })
            }
            None => {
                let mock = EmbeddedBroker::with_topics(partitions, topics.iter().copied())
                    .context("embedded broker")?;
                Ok(Self {
                    bootstrap: mock.bootstrap().to_string(),
                    mock: Some(mock),
                })
            }
        }
    }

    pub(crate) fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    /// `kafka at HOST:PORT` or `embedded mock at HOST:PORT`.
    pub(crate) fn describe(&self) -> String {
        if self.is_mock() {
            format!("embedded mock broker at {}", self.bootstrap)
        } else {
            format!("kafka at {}", self.bootstrap)
        }
    }

    /// Client settings for this broker: the shipped defaults, with the mock's workarounds
    /// ([`EmbeddedBroker::client_settings`]) on the mock; `fetch_wait_ms` overrides either.
    pub(crate) fn kafka(&self, topics: &Topics, fetch_wait_ms: Option<u64>) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: self.bootstrap.clone(),
            topics: topics.clone(),
            ..KafkaConfig::default()
        };
        if self.is_mock() {
            k = EmbeddedBroker::client_settings(k);
        }
        if let Some(ms) = fetch_wait_ms {
            k.fetch_wait_max = Duration::from_millis(ms.max(1));
        }
        k
    }
}

/// One measured phase.
pub(crate) struct Phase {
    pub(crate) name: String,
    pub(crate) events: usize,
    pub(crate) elapsed: Duration,
    /// Latency per request (or per record), microseconds.
    pub(crate) latency: Histogram<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

pub(crate) fn print_phases(title: &str, ceiling: &Phase, phases: &[Phase]) {
    println!("\n{title}");
    println!(
        "{:<34} {:>9} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "phase", "events", "events/s", "p50 ms", "p99 ms", "p999 ms", "ratio"
    );
    for p in std::iter::once(ceiling).chain(phases) {
        println!(
            "{:<34} {:>9} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8.2}",
            p.name,
            p.events,
            p.rate(),
            p.latency.value_at_quantile(0.50) as f64 / 1000.0,
            p.latency.value_at_quantile(0.99) as f64 / 1000.0,
            p.latency.value_at_quantile(0.999) as f64 / 1000.0,
            p.rate() / ceiling.rate()
        );
    }
}

async fn ingest(a: IngestBench) -> anyhow::Result<()> {
    let suffix = uuid_suffix();
    let topics = Topics::with_suffix(&suffix);
    let broker = BenchBroker::new(a.brokers.as_deref(), a.partitions, &topics.all()).await?;
    let kafka = broker.kafka(&topics, None);
    println!(
        "bench ingest: {} events per phase, {} http clients, {} partitions, {}",
        a.events,
        a.concurrency,
        a.partitions,
        broker.describe()
    );
    let events: Vec<Vec<u8>> = Generator::new(GeneratorConfig {
        start_time_ms: riskstream_common::now_ms() - 3_600_000,
        ..GeneratorConfig::default()
    })
    .take(a.events)
    .map(|e| e.to_json_bytes())
    .collect();
    let keys: Vec<String> = events
        .iter()
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .and_then(|v| v["account_id"].as_str().map(String::from))
                .unwrap_or_default()
        })
        .collect();

    // Ceiling: a raw rdkafka producer sending the same bytes with the same settings.
    let producer: FutureProducer = kafka.producer()?;
    let raw = raw_produce(&producer, &topics.events, &keys, &events).await;
    let _ = producer.flush(Duration::from_secs(10));

    // `produce`: the generator path with validation and trace context.
    let args = crate::produce::ProduceArgs {
        config: None,
        brokers: None,
        topic: Some(topics.events.clone()),
        file: None,
        count: Some(a.events as u64),
        rate: None,
        seed: 42,
        event_time_rate: 1000.0,
        start_time: None,
        fraud_share: 0.02,
        accounts: 10_000,
        partition_key: "account_id".into(),
        max_in_flight: 20_000,
        quiet: true,
    };
    let s = crate::produce::produce(
        &producer,
        &topics.events,
        &args,
        riskstream_common::now_ms() - 3_600_000,
    )
    .await
    .map_err(|_| anyhow::anyhow!("produce phase failed"))?;
    let mut lat = histogram();
    for l in &s.latencies_us {
        let _ = lat.record((*l).max(1));
    }
    let produce_phase = Phase {
        name: "produce (generator -> kafka)".into(),
        events: s.acked as usize,
        elapsed: s.elapsed,
        latency: lat,
    };

    // ingest over loopback HTTP.
    let shutdown = CancellationToken::new();
    let app = riskstream_ingest::App::build(
        riskstream_ingest::Config {
            kafka: kafka.clone(),
            ingest: riskstream_ingest::IngestConfig {
                listen: "127.0.0.1:0".into(),
                max_future_skew: Duration::from_secs(86_400),
                ..Default::default()
            },
        },
        shutdown.clone(),
    )
    .await?;
    let url = format!("http://{}/v1/events", app.local_addr());
    let server = tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()?;
    let b100 = http_phase(
        &http,
        &url,
        &events,
        100,
        a.concurrency,
        "ingest POST batch=100",
    )
    .await?;
    let n1 = (a.events / 10).max(1000).min(events.len());
    let b1 = http_phase(
        &http,
        &url,
        &events[..n1],
        1,
        a.concurrency,
        "ingest POST batch=1",
    )
    .await?;
    shutdown.cancel();
    let _ = server.await;

    print_phases(
        "ingest (latency per request for HTTP, per record for kafka)",
        &raw,
        &[produce_phase, b100, b1],
    );
    Ok(())
}

fn uuid_suffix() -> String {
    format!("bench{}", riskstream_common::now_ms())
}

async fn raw_produce(
    producer: &FutureProducer,
    topic: &str,
    keys: &[String],
    events: &[Vec<u8>],
) -> Phase {
    let started = Instant::now();
    let mut lat = histogram();
    let mut in_flight = FuturesUnordered::new();
    for (key, payload) in keys.iter().zip(events) {
        if in_flight.len() >= 20_000
            && let Some(Ok(us)) = in_flight.next().await
        {
            let _ = lat.record(us);
        }
        in_flight.push(async move {
            let t0 = Instant::now();
            producer
                .send(
                    FutureRecord::to(topic).key(key).payload(payload),
                    Timeout::Never,
                )
                .await
                .map(|_| (t0.elapsed().as_micros() as u64).max(1))
        });
    }
    while let Some(r) = in_flight.next().await {
        if let Ok(us) = r {
            let _ = lat.record(us);
        }
    }
    Phase {
        name: "raw rdkafka producer (ceiling)".into(),
        events: events.len(),
        elapsed: started.elapsed(),
        latency: lat,
    }
}

async fn http_phase(
    http: &reqwest::Client,
    url: &str,
    events: &[Vec<u8>],
    batch: usize,
    concurrency: usize,
    name: &str,
) -> anyhow::Result<Phase> {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        events
            .chunks(batch)
            .map(|c| {
                let mut b = Vec::with_capacity(c.iter().map(Vec::len).sum::<usize>() + c.len() + 2);
                b.push(b'[');
                for (i, e) in c.iter().enumerate() {
                    if i > 0 {
                        b.push(b',');
                    }
                    b.extend_from_slice(e);
                }
                b.push(b']');
                b
            })
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, bodies, next) =
            (http.clone(), url.to_string(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = histogram();
            let mut failures = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t0 = Instant::now();
                let ok = match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    // Read the answer whole, as a client does (and so the connection is reused).
                    Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    let _ = lat.record((t0.elapsed().as_micros() as u64).max(1));
                } else {
                    failures += 1;
                }
            }
            (lat, failures)
        }));
    }
    let mut lat = histogram();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        let _ = lat.add(&l);
        failures += f;
    }
    if failures > 0 {
        anyhow::bail!("{name}: {failures} requests failed");
    }
    Ok(Phase {
        name: name.into(),
        events: events.len(),
        elapsed: started.elapsed(),
        latency: lat,
    })
}
