//! The collector riding through broker trouble, on a private Apache Kafka broker and the shared
//! ClickHouse: span requests and decisions stream into its Kafka topics while the broker is
//! stopped (SIGTERM) and restarted as the same node with its data, or frozen (SIGSTOP) and
//! thawed. Afterwards every span and every decision is in ClickHouse, exactly once after the
//! engine's merge (`OPTIMIZE ... FINAL`), both receivers' groups have committed up to the end of
//! their topics (none stuck behind the outage), and the collector is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::{Decision, Outcome};
use riskstream_store::ClickHouseConfig;
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::kafka::{Halt, TestKafka, committed_offsets, end_offsets};
use riskstream_testkit::unique;
use riskstream_trace_collector::{App, CollectorSection, Config};
use tokio_util::sync::CancellationToken;

/// Span requests (one span each) and decisions produced, in chunks with a pause after each,
/// so the outage falls in the middle of the stream.
const SPANS: u64 = 600;
const DECISIONS: u64 = 300;
const CHUNK: u64 = 20;
const CHUNK_PAUSE: Duration = Duration::from_millis(50);
/// How long the broker stays down (frozen, or gone before its restart starts).
const DOWN: Duration = Duration::from_secs(5);
/// Bound on every wait (not a performance claim).
const EVENTUALLY: Duration = Duration::from_secs(90);
const SERVICE: &str = "broker-outage";
const ACCOUNT: &str = "acc-broker-outage";

fn config(broker: &TestKafka, topics: &Topics) -> Config {
    Config {
        kafka: broker.kafka_config(topics),
        clickhouse: ClickHouseConfig {
            url: server().url().into(),
            database: unique("t"),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        collector: CollectorSection {
            listen: "127.0.0.1:0".into(),
            otlp_grpc_listen: "127.0.0.1:0".into(),
            group_id: unique("g"),
            batch_max_wait: Duration::from_millis(50),
            retry_backoff_min: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    }
}

/// An OTLP request with span `i` of its own trace.
fn span_request(i: u64) -> Vec<u8> {
    let base: u64 = 1_700_000_000_000_000_000;
    let span = Span {
        trace_id: (0x6000_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i))
            .to_be_bytes()
            .to_vec(),
        span_id: (i + 1).to_be_bytes().to_vec(),
        name: "op".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: base + i * 1_000_000,
        end_time_unix_nano: base + i * 1_000_000 + 500_000,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(SERVICE.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

fn decision(i: u64) -> Vec<u8> {
    let t = 1_700_000_000_000 + i64::try_from(i).unwrap_or_default();
    serde_json::to_vec(&Decision {
        event_id: uuid::Uuid::now_v7(),
        trace_id: format!("{:032x}", 0x7000u128 + u128::from(i)),
        account_id: Some(ACCOUNT.into()),
        event_time_ms: t,
        decided_at_ms: t + 5,
        outcome: Outcome::Approve,
        score: 0.1,
        reasons: Vec::new(),
        features: Default::default(),
        models: Vec::new(),
        rules_version: "r1".into(),
        late: false,
        lateness_ms: 0,
        processing_latency_us: 100,
    })
    .expect("json")
}

/// Produces every span request and decision, interleaved, each acknowledged before the next;
/// a send waits through an outage (the feeder's delivery timeout is longer than any here).
async fn feed(kafka: KafkaConfig, topics: Topics, produced: Arc<AtomicUsize>) {
    let mut kafka = kafka;
    kafka.message_timeout = Duration::from_secs(300);
    let producer: FutureProducer = kafka.producer().expect("producer");
    let send = |topic: String, payload: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), [u8]>::to(&topic).payload(&payload),
                    Timeout::Never,
                )
                .await
                .map_err(|(e, _)| e)
                .expect("the feeder's record is acknowledged");
        }
    };
    for first in (0..SPANS).step_by(CHUNK as usize) {
        for i in first..first + CHUNK {
            send(topics.otlp_spans.clone(), span_request(i)).await;
            if i % 2 == 0 {
                send(topics.decisions.clone(), decision(i / 2)).await;
            }
            produced.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(CHUNK_PAUSE).await;
    }
}

async fn count(client: &clickhouse::Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

async fn wait_count(client: &clickhouse::Client, sql: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let n = count(client, sql).await;
        if n >= at_least {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {EVENTUALLY:?}: `{sql}` is {n}, not {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `group` has committed the end of every partition of `topic`.
async fn wait_committed_to_end(kafka: &KafkaConfig, group: &str, topic: &str) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (k, g, t) = (kafka.clone(), group.to_string(), topic.to_string());
        let (committed, end) = tokio::task::spawn_blocking(move || {
            (committed_offsets(&k, &g, &t), end_offsets(&k, &t))
        })
        .await
        .expect("offsets thread");
        if committed == end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} is stuck on {topic}: committed {committed:?}, end {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

enum Outage {
    Freeze,
    Restart(Halt),
}

const SPANS_SQL: &str =
    "SELECT count(DISTINCT span_id) FROM spans WHERE service_name = 'broker-outage'";
const DECISIONS_SQL: &str =
    "SELECT count(DISTINCT event_id) FROM decisions WHERE account_id = 'acc-broker-outage'";

async fn collector_rides_through(outage: Outage) {
    let topics = Topics::with_suffix(&unique("co"));
    let broker = TestKafka::private_with_topics(2, &topics);
    let config = config(&broker, &topics);
    let stop = CancellationToken::new();
    let app = App::build(config.clone(), stop.clone())
        .await
        .expect("collector builds");
    let collector = tokio::spawn(async move { app.run_until_stopped().await });
    let client = config.clickhouse.client();

    let produced = Arc::new(AtomicUsize::new(0));
    let feeder = tokio::spawn(feed(config.kafka.clone(), topics.clone(), produced.clone()));
    // The outage strikes while records stream in and rows are being stored.
    wait_count(&client, SPANS_SQL, SPANS / 6).await;
    let stored_at_halt = count(&client, SPANS_SQL).await;
    let produced_at_halt = produced.load(Ordering::Relaxed);
    match outage {
        Outage::Freeze => broker.process().pause(),
        Outage::Restart(how) => broker.process().halt(how),
    }
    tokio::time::sleep(DOWN).await;
    match outage {
        Outage::Freeze => broker.process().resume(),
        Outage::Restart(_) => broker.process().restart(),
    }
    let up = Instant::now();
    let stored_at_up = count(&client, SPANS_SQL).await;
    wait_count(&client, SPANS_SQL, stored_at_up + 1).await;
    let first_after = up.elapsed();
    feeder.await.expect("feeder");
    assert_eq!(wait_count(&client, SPANS_SQL, SPANS).await, SPANS);
    assert_eq!(
        wait_count(&client, DECISIONS_SQL, DECISIONS).await,
        DECISIONS
    );
    // Figures for docs/kafka.md (measured, not asserted).
    eprintln!(
        "outage after {produced_at_halt} span records, {stored_at_halt} spans stored; the \
         first span read after it stored {:.1} s after the broker answered again, every span \
         and decision {:.1} s after",
        first_after.as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    for t in ["spans", "decisions"] {
        client
            .query(&format!("OPTIMIZE TABLE {t} FINAL"))
            .execute()
            .await
            .expect("optimize");
    }
    assert_eq!(
        count(
            &client,
            "SELECT count() FROM spans WHERE service_name = 'broker-outage'"
        )
        .await,
        SPANS,
        "each span once after the merge"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count() FROM decisions WHERE account_id = 'acc-broker-outage'"
        )
        .await,
        DECISIONS,
        "each decision once after the merge"
    );
    let group = &config.collector.group_id;
    wait_committed_to_end(&config.kafka, &format!("{group}.spans"), &topics.otlp_spans).await;
    wait_committed_to_end(
        &config.kafka,
        &format!("{group}.decisions"),
        &topics.decisions,
    )
    .await;
    assert!(
        !collector.is_finished(),
        "the collector is still running after the outage"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("the collector stops in time")
        .expect("collector task")
        .expect("the collector ran without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_rides_through_a_broker_stop_and_restart() {
    collector_rides_through(Outage::Restart(Halt::Term)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_rides_through_a_frozen_broker() {
    collector_rides_through(Outage::Freeze).await;
}
