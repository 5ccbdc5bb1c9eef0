//! Collector integration tests against a real ClickHouse (testkit) and a real Kafka-protocol
//! broker (librdkafka's mock cluster): schema round trips, the three receivers, dead letters,
//! decisions, and ClickHouse stopped mid-stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::kafka::{Topics, header};
use riskstream_common::{Decision, Outcome};
use riskstream_store::ClickHouseConfig;
use riskstream_store::schema::{self, DecisionRow, SpanRow, table};
use riskstream_testkit::clickhouse::{ClickHouseServer, server};
use riskstream_testkit::kafka::{TestKafka, read_records};
use riskstream_testkit::unique;
use riskstream_trace_collector::{App, CollectorSection, Config};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A span of `trace`, `id`, child of `parent` (0 = root), starting `start_ms` after a fixed
/// epoch and lasting `dur_ms`.
fn span(trace: u128, id: u64, parent: u64, name: &str, start_ms: u64, dur_ms: u64) -> Span {
    let base: u64 = 1_700_000_000_000_000_000;
    Span {
        trace_id: trace.to_be_bytes().to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: if parent == 0 {
            Vec::new()
        } else {
            parent.to_be_bytes().to_vec()
        },
        name: name.into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: base + start_ms * 1_000_000,
        end_time_unix_nano: base + (start_ms + dur_ms) * 1_000_000,
        attributes: vec![
            kv("test.span", s(name)),
            kv("retries", any_value::Value::IntValue(2)),
        ],
        status: Some(Status {
            code: 1,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(service))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

struct Harness {
    broker: TestKafka,
    topics: Topics,
    config: Config,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn config(broker: &TestKafka, topics: &Topics, url: &str) -> Config {
    Config {
        kafka: broker.kafka_config(topics),
        clickhouse: ClickHouseConfig {
            url: url.into(),
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

impl Harness {
    async fn start_with(url: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
        let topics = Topics::with_suffix(&unique("s"));
        let broker = TestKafka::with_topics(2, &topics);
        let mut config = config(&broker, &topics, url);
        tweak(&mut config);
        let stop = CancellationToken::new();
        let app = App::build(config.clone(), stop.clone())
            .await
            .expect("collector builds");
        let (http, grpc) = (app.http_addr(), app.grpc_addr());
        let task = tokio::spawn(async move {
            app.run_until_stopped().await.expect("collector runs");
        });
        Harness {
            broker,
            topics,
            config,
            http,
            grpc,
            stop,
            task,
        }
    }

    async fn start() -> Harness {
        Self::start_with(server().url(), |_| {}).await
    }

    fn client(&self) -> clickhouse::Client {
        self.config.clickhouse.client()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn produce(&self, topic: &str, payloads: Vec<Vec<u8>>) {
        let producer: FutureProducer = self.config.kafka.producer().expect("producer");
        for p in payloads {
            producer
                .send(
                    FutureRecord::<(), [u8]>::to(topic).payload(&p),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produced");
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.task).await;
        drop(self.broker);
    }
}

async fn count(client: &clickhouse::Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

/// Polls until `sql` counts `expected`, returning the last count.
async fn wait_count(client: &clickhouse::Client, sql: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = count(client, sql).await;
        if n >= expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct IdRow {
    span_id: String,
    parent_span_id: String,
    duration_ns: u64,
}

async fn spans_of(client: &clickhouse::Client, trace_id: &str) -> Vec<IdRow> {
    client
        .query("SELECT span_id, parent_span_id, duration_ns FROM spans WHERE trace_id = ? ORDER BY span_id")
        .bind(trace_id)
        .fetch_all()
        .await
        .expect("query spans")
}

fn full_span_row() -> SpanRow {
    SpanRow {
        trace_id: "5b8efff798038103d269b633813fc60c".into(),
        span_id: "eee19b7ec3c1b174".into(),
        parent_span_id: "eee19b7ec3c1b173".into(),
        trace_state: "k=v".into(),
        service_name: "svc".into(),
        span_name: "op".into(),
        span_kind: 3,
        start_time_unix_nano: 1_700_000_000_123_456_789,
        duration_ns: 987_654_321,
        status_code: 2,
        status_message: "boom ' \" \\ é".into(),
        scope_name: "scope".into(),
        scope_version: "1.2".into(),
        resource_attr_keys: vec!["service.name".into(), "host".into()],
        resource_attr_values: vec!["svc".into(), "h1".into()],
        resource_attr_types: vec![0, 0],
        span_attr_keys: vec!["a".into(), "n".into()],
        span_attr_values: vec!["x".into(), "42".into()],
        span_attr_types: vec![0, 2],
        event_times_unix_nano: vec![1_700_000_000_200_000_000, 1_700_000_000_300_000_000],
        event_names: vec!["e1".into(), "e2".into()],
        event_attributes: vec![r#"{"k":1}"#.into(), "{}".into()],
        link_trace_ids: vec!["0102030405060708090a0b0c0d0e0f10".into()],
        link_span_ids: vec!["0102030405060708".into()],
        link_trace_states: vec![String::new()],
        link_attributes: vec![r#"{"l":true}"#.into()],
    }
}

fn decision(account: &str, event_time_ms: i64) -> Decision {
    Decision {
        event_id: uuid::Uuid::now_v7(),
        trace_id: "5b8efff798038103d269b633813fc60c".into(),
        account_id: Some(account.into()),
        event_time_ms,
        decided_at_ms: event_time_ms + 5,
        outcome: Outcome::Review,
        score: 0.625,
        reasons: vec![riskstream_common::decision::Reason {
            kind: "rule".into(),
            code: "velocity".into(),
            detail: "5 in 1m".into(),
            contribution: Some(0.25),
        }],
        features: [
            (
                "count_1m".to_string(),
                riskstream_common::FeatureValue::Number(5.0),
            ),
            (
                "last_country".to_string(),
                riskstream_common::FeatureValue::Text("FR".into()),
            ),
            (
                "min_amount".to_string(),
                riskstream_common::FeatureValue::Null,
            ),
        ]
        .into_iter()
        .collect(),
        models: vec![riskstream_common::decision::ModelScore {
            model: "gbm".into(),
            version: "3".into(),
            role: "champion".into(),
            score: 0.6,
            acted_on: true,
        }],
        rules_version: "r7".into(),
        late: true,
        lateness_ms: 1200,
        processing_latency_us: 850,
    }
}

#[tokio::test]
async fn every_row_type_round_trips_and_migrations_are_idempotent() {
    let ch = ClickHouseConfig {
        url: server().url().into(),
        database: unique("t"),
        ..Default::default()
    };
    let client = ch.client();
    schema::migrate(&client, &ch.database, Duration::ZERO)
        .await
        .expect("migrate");
    schema::migrate(&client, &ch.database, Duration::ZERO)
        .await
        .expect("migrate again");

    let row = full_span_row();
    let mut insert = client
        .insert::<SpanRow>(table::SPANS)
        .await
        .expect("insert");
    insert.write(&row).await.expect("write");
    insert.end().await.expect("end");
    let back: Vec<SpanRow> = client
        .query("SELECT ?fields FROM spans WHERE trace_id = ?")
        .bind(row.trace_id.as_str())
        .fetch_all()
        .await
        .expect("read spans");
    assert_eq!(back, vec![row.clone()]);
    // The materialized views saw it.
    assert_eq!(
        count(
            &client,
            "SELECT count() FROM span_search WHERE service_name = 'svc'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "SELECT count() FROM span_operations WHERE span_name = 'op'"
        )
        .await,
        1
    );

    let d = decision("acc-1", 1_700_000_000_000);
    let drow = DecisionRow::from(&d);
    let mut insert = client
        .insert::<DecisionRow>(table::DECISIONS)
        .await
        .expect("insert");
    insert.write(&drow).await.expect("write");
    insert.end().await.expect("end");
    for t in [table::DECISIONS, table::DECISIONS_BY_EVENT] {
        let back: DecisionRow = client
            .query(&format!("SELECT ?fields FROM {t} WHERE event_id = ?"))
            .bind(drow.event_id.as_str())
            .fetch_one()
            .await
            .expect("read decision");
        assert_eq!(back, drow);
        assert_eq!(Decision::try_from(back).expect("decodes"), d);
    }
}

#[tokio::test]
async fn retention_drops_only_expired_daily_partitions() {
    let ch = ClickHouseConfig {
        url: server().url().into(),
        database: unique("t"),
        ..Default::default()
    };
    let client = ch.client();
    schema::migrate(&client, &ch.database, Duration::ZERO)
        .await
        .expect("migrate");
    let day = schema::NANOS_PER_DAY;
    let now = 20_000 * day + 5;
    let mut insert = client
        .insert::<SpanRow>(table::SPANS)
        .await
        .expect("insert");
    for (i, d) in [19_990u64, 19_999, 20_000].into_iter().enumerate() {
        let mut row = full_span_row();
        row.span_id = format!("{:016x}", i + 1);
        row.start_time_unix_nano = d * day + 1;
        insert.write(&row).await.expect("write");
    }
    insert.end().await.expect("end");
    let dropped =
        schema::drop_expired_partitions(&client, &ch.database, Duration::from_secs(86_400), now)
            .await
            .expect("sweep");
    // Days 19990 (spans and span_search) ended more than a day ago; 19999 did not.
    assert_eq!(dropped, 2);
    assert_eq!(count(&client, "SELECT count() FROM spans").await, 2);
    assert_eq!(count(&client, "SELECT count() FROM span_search").await, 2);
}

#[tokio::test]
async fn otlp_http_protobuf_and_json_store_spans_and_reject_bad_ones_with_partial_success() {
    let h = Harness::start().await;
    let http = reqwest::Client::new();
    let trace: u128 = 0x0af7651916cd43dd8448eb211c80319c;
    let mut bad = span(trace, 9, 0, "bad", 0, 1);
    bad.trace_id = vec![7; 8];
    let req = request(
        "checkout",
        vec![
            span(trace, 1, 0, "root", 0, 100),
            span(trace, 2, 1, "child", 10, 50),
            bad,
        ],
    );
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let body =
        ExportTraceServiceResponse::decode(resp.bytes().await.expect("body")).expect("response");
    let partial = body.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("invalid_trace_id"),
        "{}",
        partial.error_message
    );

    // Answered 200 only once stored: no waiting needed.
    let client = h.client();
    let rows = spans_of(&client, "0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].parent_span_id, rows[0].span_id);
    assert_eq!(rows[0].duration_ns, 100_000_000);

    // The bad span is in the dead-letter topic with its reason.
    let dead = read_records(&h.config.kafka, &h.topics.spans_dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers[header::DLQ_ERROR_CODE], "invalid_trace_id");
    assert!(dead[0].headers[header::DLQ_REASON].contains("16 bytes"));
    let dead_req = ExportTraceServiceRequest::decode(dead[0].value.as_deref().unwrap_or_default())
        .expect("dlq payload");
    assert_eq!(
        dead_req.resource_spans[0].scope_spans[0].spans[0].name,
        "bad"
    );

    // OTLP/JSON: hex ids, string ints, JSON answer.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
      "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
      "attributes":[{"key":"http.status_code","value":{"intValue":"200"}}]}]}]}]}"#;
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .expect("post json");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert!(body.get("partialSuccess").is_none(), "{body}");
    let rows = spans_of(&client, "5b8efff798038103d269b633813fc60c").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].duration_ns, 1_000_000_000);

    // Errors: wrong media type, undecodable body.
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 415);
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "application/json")
        .body("{\"resourceSpans\":")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let status: serde_json::Value = resp.json().await.expect("status json");
    assert_eq!(status["code"], 3);

    let metrics = http
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"collector_stored_rows_total{receiver="otlp_http"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"collector_rejected_rows_total{receiver="otlp_http",reason="invalid_trace_id"} 1"#
        ),
        "{metrics}"
    );
    assert_eq!(
        http.get(h.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    h.shutdown().await;
}

#[tokio::test]
async fn otlp_grpc_stores_spans() {
    let h = Harness::start().await;
    let grpc = h.grpc.expect("grpc enabled");
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let trace: u128 = 0x11112222333344445555666677778888;
    let mut bad = span(trace, 3, 0, "bad", 0, 1);
    bad.span_id = vec![1, 2];
    let resp = client
        .export(request(
            "grpc-svc",
            vec![
                span(trace, 1, 0, "a", 0, 10),
                span(trace, 2, 1, "b", 1, 5),
                bad,
            ],
        ))
        .await
        .expect("export")
        .into_inner();
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));
    let rows = spans_of(&h.client(), "11112222333344445555666677778888").await;
    assert_eq!(rows.len(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn kafka_spans_and_decisions_are_stored_and_invalid_spans_dead_lettered() {
    let h = Harness::start().await;
    let trace: u128 = 0xabcdef00000000000000000000000001;
    let mut bad = span(trace, 5, 0, "bad", 0, 1);
    bad.trace_id = vec![1; 20];
    let good = request(
        "kafka-svc",
        vec![
            span(trace, 1, 0, "root", 0, 30),
            span(trace, 2, 1, "child", 5, 10),
        ],
    );
    let with_bad = request("kafka-svc", vec![span(trace, 3, 1, "child2", 6, 4), bad]);
    h.produce(
        &h.topics.otlp_spans,
        vec![
            good.encode_to_vec(),
            with_bad.encode_to_vec(),
            b"not protobuf \xff\xff".to_vec(),
        ],
    )
    .await;
    let decisions: Vec<Decision> = (0..3)
        .map(|i| decision("acc-k", 1_700_000_000_000 + i))
        .collect();
    h.produce(
        &h.topics.decisions,
        decisions
            .iter()
            .map(|d| serde_json::to_vec(d).expect("json"))
            .collect(),
    )
    .await;

    let client = h.client();
    let n = wait_count(
        &client,
        "SELECT count() FROM spans WHERE trace_id = 'abcdef00000000000000000000000001'",
        3,
    )
    .await;
    assert_eq!(n, 3);
    let n = wait_count(
        &client,
        "SELECT count() FROM decisions WHERE account_id = 'acc-k'",
        3,
    )
    .await;
    assert_eq!(n, 3);
    // The view's copy lands after the source table's block: wait for it as well.
    let n = wait_count(
        &client,
        &format!(
            "SELECT count() FROM decisions_by_event WHERE event_id = '{}'",
            decisions[1].event_id
        ),
        1,
    )
    .await;
    assert_eq!(n, 1);
    let stored: DecisionRow = client
        .query("SELECT ?fields FROM decisions_by_event WHERE event_id = ?")
        .bind(decisions[1].event_id.to_string())
        .fetch_one()
        .await
        .expect("decision by event");
    assert_eq!(Decision::try_from(stored).expect("decodes"), decisions[1]);

    let mut dead = read_records(&h.config.kafka, &h.topics.spans_dlq, 2, WAIT).await;
    dead.sort_by_key(|r| r.headers.get(header::DLQ_ERROR_CODE).cloned());
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].headers[header::DLQ_ERROR_CODE], "invalid_trace_id");
    assert_eq!(
        dead[0].headers[header::DLQ_SOURCE_TOPIC],
        h.topics.otlp_spans
    );
    assert!(dead[0].headers.contains_key(header::DLQ_SOURCE_OFFSET));
    assert_eq!(dead[1].headers[header::DLQ_ERROR_CODE], "undecodable");
    assert_eq!(
        dead[1].value.as_deref(),
        Some(&b"not protobuf \xff\xff"[..])
    );
    h.shutdown().await;
}

/// How long the outage test keeps ClickHouse down (issue: a minute under load).
const OUTAGE: Duration = Duration::from_secs(60);

/// The value of the first sample of `metric` whose labels contain `label` on `/metrics`.
async fn metric(http: &reqwest::Client, url: &str, metric: &str, label: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of the collector group's committed offsets on `topic` (2 partitions), read from
/// the group coordinator by a consumer of the same group that does not join it.
fn committed_sum(h: &Harness, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = h
        .config
        .kafka
        .consumer_config(&h.config.collector.group_id)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .filter(|o| *o >= 0)
        .sum()
}

/// ClickHouse stopped for a minute under span and decision load: OTLP requests get 503 with
/// `Retry-After` (never 2xx), the queue stays within its bound, the Kafka receivers stop
/// committing (the group's committed offsets stay put) instead of buffering more while the lag
/// gauge shows the backlog, and once the server is back
/// everything produced is stored, exactly once after the engine's merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_mid_stream_loses_nothing_acknowledged() {
    let private = ClickHouseServer::start_private();
    let h = Harness::start_with(private.url(), |c| {
        c.collector.batch_max_rows = 50;
        c.collector.queue_max_spans = 200;
        c.collector.request_timeout = Duration::from_secs(2);
        c.clickhouse.request_timeout = Duration::from_secs(2);
    })
    .await;
    let client = h.client();
    let batch = |first: u64, n: u64| -> Vec<Vec<u8>> {
        (first..first + n)
            .map(|i| {
                let trace = 0x5000_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i);
                request("outage", vec![span(trace, i + 1, 0, "op", i, 1)]).encode_to_vec()
            })
            .collect()
    };
    let decisions = |first: i64, n: i64| -> Vec<Vec<u8>> {
        (first..first + n)
            .map(|i| {
                serde_json::to_vec(&decision("acc-outage", 1_700_000_000_000 + i)).expect("json")
            })
            .collect()
    };
    h.produce(&h.topics.otlp_spans, batch(0, 100)).await;
    h.produce(&h.topics.decisions, decisions(0, 50)).await;
    assert_eq!(
        wait_count(&client, "SELECT count(DISTINCT span_id) FROM spans", 100).await,
        100
    );

    private.stop();
    let outage_started = Instant::now();
    h.produce(&h.topics.otlp_spans, batch(100, 900)).await;
    h.produce(&h.topics.decisions, decisions(50, 450)).await;
    // During the outage an OTLP request is never answered 2xx: the queue is full (Kafka
    // filled it) or its spans cannot be stored in time.
    let http = reqwest::Client::new();
    let outage_req = request(
        "outage-http",
        vec![span(0x77u128 << 64, 1, 0, "during", 0, 1)],
    );
    let resp = http
        .post(h.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(outage_req.encode_to_vec())
        .send()
        .await
        .expect("post during outage");
    assert!(
        resp.status() == 503 || resp.status() == 429,
        "got {} during the outage",
        resp.status()
    );
    assert!(resp.headers().contains_key("retry-after"));
    // Bounded memory, and backpressure by not committing: sampled through the outage.
    let metrics_url = h.url("/metrics");
    let (mut max_queued, mut max_lag) = (0.0f64, 0.0f64);
    while outage_started.elapsed() < OUTAGE {
        for table in ["spans", "decisions"] {
            if let Some(q) = metric(&http, &metrics_url, "collector_queue_rows", table).await {
                max_queued = max_queued.max(q);
            }
        }
        let lag = "stage=\"spans\"";
        if let Some(l) = metric(&http, &metrics_url, "collector_consumer_lag", lag).await {
            max_lag = max_lag.max(l);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The receivers are blocked on the full queue all along: the lag gauge still follows the
    // backlog (900 spans produced, at most 100 committed), not its value when they stopped.
    assert!(
        max_lag >= 800.0,
        "the spans lag gauge showed at most {max_lag} during the outage"
    );
    assert!(max_queued <= 200.0, "queue over its bound: {max_queued}");
    assert!(
        max_queued > 0.0,
        "the queue held the rows waiting for the server"
    );
    let committed = committed_sum(&h, &h.topics.otlp_spans);
    assert!(
        committed <= 100,
        "the spans receiver committed {committed} offsets while nothing could be stored"
    );

    private.start();
    // Everything produced is stored after the server returns, and once merged, once.
    let n = wait_count(
        &client,
        "SELECT count(DISTINCT span_id) FROM spans WHERE service_name = 'outage'",
        1000,
    )
    .await;
    assert_eq!(n, 1000);
    let n = wait_count(
        &client,
        "SELECT count(DISTINCT event_id) FROM decisions WHERE account_id = 'acc-outage'",
        500,
    )
    .await;
    assert_eq!(n, 500);
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
            "SELECT count() FROM spans WHERE service_name = 'outage'"
        )
        .await,
        1000,
        "retried inserts left no duplicate span"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count() FROM decisions WHERE account_id = 'acc-outage'"
        )
        .await,
        500,
        "retried inserts left no duplicate decision"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_bench_stores_every_generated_span_and_measures_lookups() {
    let topics = Topics::with_suffix(&unique("b"));
    let broker = TestKafka::with_topics(2, &topics);
    let options = riskstream_trace_collector::bench::BenchOptions {
        kafka: broker.kafka_config(&topics),
        clickhouse: ClickHouseConfig {
            url: server().url().into(),
            database: unique("b"),
            ..Default::default()
        },
        spans: 2000,
        spans_per_record: 50,
        batch_max_rows: 500,
        lookups: 20,
        filler_spans: 1000,
        clickhouse_client: Some(("clickhouse-client".into(), server().tcp_port())),
        // Created above by the admin API: real Kafka does not auto-create topics.
        topic: Some(topics.otlp_spans.clone()),
        ..Default::default()
    };
    let report = riskstream_trace_collector::bench::bench(options)
        .await
        .expect("bench runs");
    assert_eq!(report.spans, 2000);
    assert_eq!(report.kafka_records, 40);
    assert_eq!(report.stored_spans_at_lookup, 3000);
    assert!(report.collector_spans_per_second > 0.0 && report.baseline_spans_per_second > 0.0);
    assert!(report.lookup_p50_ms <= report.lookup_p99_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_both_otlp_receivers() {
    use riskstream_auth::Scope;
    use riskstream_testkit::auth::{GuardedRoute, TestTokens, exercise_guard, send};
    let mut tokens = TestTokens::new(&[("reader", &[Scope::TracesRead])]);
    let access = tokens.access();
    let max_header_bytes = access.http.max_header_bytes;
    let h = Harness::start_with(server().url(), |c| {
        c.collector.access = access;
        c.collector.max_request_bytes = 4096;
    })
    .await;
    let http = reqwest::Client::new();
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"auth-svc"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"op","kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000"}]}]}]}"#;
    let post = |authorization: Option<&str>, body: String| {
        let r = http
            .post(h.url("/v1/traces"))
            .header("content-type", "application/json")
            .body(body);
        riskstream_testkit::auth::authorized(r, authorization)
    };
    let make = |a: Option<&str>| post(a, body.to_string());
    let refusals = exercise_guard(
        &mut tokens,
        GuardedRoute {
            make: &make,
            scope: Scope::TracesWrite,
            other_scope: Scope::TracesRead,
            ok_status: 200,
            max_header_bytes,
        },
    )
    .await;
    // OTLP/HTTP's error body: a google.rpc.Status with the gRPC code (JSON here).
    assert_eq!(refusals.missing.body["code"], 16, "{:?}", refusals.missing);
    assert_eq!(refusals.forbidden.body["code"], 7);
    assert_eq!(refusals.limited.body["code"], 8);
    let writer = tokens.add("writer", &[Scope::TracesWrite]);
    let writer = format!("Bearer {writer}");
    riskstream_testkit::auth::until_status(&make, Some(&writer), 200, Duration::from_secs(30))
        .await;
    let big = send(post(Some(&writer), format!("{body}{}", " ".repeat(5000)))).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(send(http.get(h.url("/healthz"))).await.status, 200);
    assert_eq!(send(http.get(h.url("/metrics"))).await.status, 200);

    // gRPC: the same tokens through the interceptor.
    let grpc = h.grpc.expect("grpc enabled");
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let export = |authorization: Option<String>| {
        let mut r = tonic::Request::new(request(
            "grpc-auth",
            vec![span(0x99990000000000000000000000000001, 1, 0, "a", 0, 10)],
        ));
        if let Some(a) = authorization {
            r.metadata_mut()
                .insert("authorization", a.parse().expect("metadata"));
        }
        r
    };
    let code = |r: Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>| {
        r.map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code())
    };
    assert_eq!(
        code(client.export(export(None)).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(client.export(export(Some(tokens.bearer("reader")))).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(client.export(export(Some(writer.clone()))).await),
        tonic::Code::Ok
    );
    h.shutdown().await;
}
