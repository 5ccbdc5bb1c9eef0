//! The collector under hostile input, on a real Kafka broker and ClickHouse: 2 000 malformed
//! records (random bytes, truncated protobuf, wrong wire types, lengths claiming terabytes,
//! invalid UTF-8, spans with impossible ids or no start time, records over a megabyte; on the
//! decisions topic random bytes, truncated JSON, wrong types, unknown outcomes) mixed with valid
//! ones into both topics it consumes. No crash, no stall: every valid span and decision,
//! before and after the garbage, is stored. Every malformed record (every unstorable span) is in
//! the dead-letter topic exactly once, found by its source topic, partition and offset, with its
//! code and reason; nothing else is.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use riskstream_common::kafka::Topics;
use riskstream_common::{Decision, Outcome};
use riskstream_store::ClickHouseConfig;
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::hostile::{
    self, KeyedPayload, Malformed, hostile_producer, invalid_utf8, random_bytes, send_mixed,
    truncated, with_value,
};
use riskstream_testkit::kafka::TestKafka;
use riskstream_testkit::unique;
use riskstream_trace_collector::convert::decode_protobuf;
use riskstream_trace_collector::{App, CollectorSection, Config};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Generous bound for what happens asynchronously; never a performance assertion.
const WAIT: Duration = Duration::from_secs(90);
const SPAN_NAME: &str = "hostile-span-name";

fn span(trace: u128, id: u64) -> Span {
    let start: u64 = 1_700_000_000_000_000_000 + id * 1_000;
    Span {
        trace_id: trace.to_be_bytes().to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        name: SPAN_NAME.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 5_000,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let service = KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("hostile-svc".into())),
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![service],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

/// The trace id of the valid spans: one per valid record.
const GOOD_TRACE: u128 = 0x0bad_c0de_0000_0000_0000_0000_0000_0000;

const UNDECODABLE: &[&str] = &["undecodable"];

/// Malformed records of the spans topic; `i` numbers them (span ids stay distinct).
fn bad_spans(rng: &mut ChaCha8Rng, n: usize) -> Vec<Malformed> {
    let one = |s: Span| request(vec![s]).encode_to_vec();
    (0..n)
        .map(|i| {
            let id = 1_000_000 + i as u64;
            let valid = one(span(GOOD_TRACE + 1, id));
            match i % 10 {
                // A tag of wire type 7, which does not exist.
                0 => Malformed::new("random bytes", random_bytes(rng, 0x0f, 300), UNDECODABLE),
                // Every strict prefix of a one-field message cuts that field short.
                1 => Malformed::new("truncated protobuf", truncated(rng, &valid), UNDECODABLE),
                2 => Malformed::new("wrong wire type", vec![0x08, 0x96, 0x01], UNDECODABLE),
                3 => {
                    let mut claim = vec![0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
                    claim.extend_from_slice(b"tiny");
                    Malformed::new("length of 2^42 bytes", claim, UNDECODABLE)
                }
                4 => {
                    let mut bytes = valid.clone();
                    let at = bytes
                        .windows(SPAN_NAME.len())
                        .position(|w| w == SPAN_NAME.as_bytes())
                        .expect("name in the encoding");
                    bytes[at] = 0xff;
                    bytes[at + 1] = 0xfe;
                    Malformed::new("invalid utf-8 name", bytes, UNDECODABLE)
                }
                5 => {
                    let mut s = span(GOOD_TRACE + 1, id);
                    s.trace_id = vec![7; 8];
                    Malformed::new("short trace id", one(s), &["invalid_trace_id"])
                        .naming("trace id")
                }
                6 => {
                    let mut s = span(GOOD_TRACE + 1, id);
                    s.span_id = vec![0; 8];
                    Malformed::new("zero span id", one(s), &["invalid_span_id"]).naming("span id")
                }
                7 => {
                    let mut s = span(GOOD_TRACE + 1, id);
                    s.parent_span_id = vec![1, 2, 3];
                    Malformed::new("3-byte parent", one(s), &["invalid_parent_span_id"])
                        .naming("parent")
                }
                8 => {
                    let mut s = span(GOOD_TRACE + 1, id);
                    s.start_time_unix_nano = 0;
                    Malformed::new("no start time", one(s), &["missing_start_time"])
                        .naming("start time")
                }
                _ if i % 500 == 9 => {
                    let mut huge = random_bytes(rng, 0x0f, 1);
                    huge.resize(1_200_000, 0x0f);
                    Malformed::new("1.2 MB of garbage", huge, UNDECODABLE)
                }
                _ => Malformed::new("json, not protobuf", b"[1, 2, 3]".to_vec(), UNDECODABLE),
            }
        })
        .collect()
}

fn decision(account: &str, i: i64) -> Decision {
    Decision {
        event_id: uuid::Uuid::now_v7(),
        trace_id: "5b8efff798038103d269b633813fc60c".into(),
        account_id: Some(account.into()),
        event_time_ms: 1_700_000_000_000 + i,
        decided_at_ms: 1_700_000_000_005 + i,
        outcome: Outcome::Review,
        score: 0.5,
        reasons: Vec::new(),
        features: Default::default(),
        models: Vec::new(),
        rules_version: "r1".into(),
        late: false,
        lateness_ms: 0,
        processing_latency_us: 10,
    }
}

/// Malformed records of the decisions topic.
fn bad_decisions(rng: &mut ChaCha8Rng, n: usize) -> Vec<Malformed> {
    let valid = serde_json::to_value(decision("acc-bad", 0)).expect("json");
    (0..n)
        .map(|i| match i % 6 {
            0 => Malformed::new("random bytes", random_bytes(rng, 0xff, 300), UNDECODABLE),
            1 => Malformed::new(
                "truncated json",
                truncated(rng, valid.to_string().as_bytes()),
                UNDECODABLE,
            ),
            2 => Malformed::new(
                "wrong type",
                with_value(&valid, "/score", json!("high"))
                    .to_string()
                    .into_bytes(),
                UNDECODABLE,
            ),
            3 => Malformed::new(
                "unknown outcome",
                with_value(&valid, "/outcome", json!("maybe"))
                    .to_string()
                    .into_bytes(),
                UNDECODABLE,
            )
            .naming("maybe"),
            4 => Malformed::new(
                "invalid utf-8",
                invalid_utf8(&valid, "/trace_id"),
                UNDECODABLE,
            ),
            _ => Malformed::new(
                "huge number",
                with_value(&valid, "/event_time_ms", json!(1e300))
                    .to_string()
                    .into_bytes(),
                UNDECODABLE,
            ),
        })
        .collect()
}

async fn count(client: &clickhouse::Client, sql: &str) -> u64 {
    client.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_span_and_decision_records_are_dead_lettered_and_the_rest_stored() {
    let topics = Topics::with_suffix(&unique("hostile"));
    let broker = TestKafka::with_topics(2, &topics);
    let config = Config {
        kafka: broker.kafka_config(&topics),
        clickhouse: ClickHouseConfig {
            url: server().url().into(),
            database: unique("t"),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        collector: CollectorSection {
            listen: "127.0.0.1:0".into(),
            otlp_grpc_listen: String::new(),
            group_id: unique("g"),
            batch_max_wait: Duration::from_millis(50),
            ..Default::default()
        },
    };
    let stop = CancellationToken::new();
    let app = App::build(config.clone(), stop.clone())
        .await
        .expect("collector builds");
    let task = tokio::spawn(async move { app.run_until_stopped().await.expect("collector runs") });
    let kafka = &config.kafka;
    let producer = hostile_producer(kafka);
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    let good_spans = |from: u64, n: u64| -> Vec<KeyedPayload> {
        (from..from + n)
            .map(|id| (None, request(vec![span(GOOD_TRACE, id)]).encode_to_vec()))
            .collect()
    };
    let good_decisions = |account: &str, n: i64| -> Vec<KeyedPayload> {
        (0..n)
            .map(|i| {
                let d = decision(account, i);
                (
                    Some(d.event_id.to_string()),
                    serde_json::to_vec(&d).expect("json"),
                )
            })
            .collect()
    };
    let (spans, decisions) = (bad_spans(&mut rng, 1_500), bad_decisions(&mut rng, 500));
    let mut expected = send_mixed(
        &producer,
        &mut rng,
        &topics.otlp_spans,
        good_spans(1, 200),
        spans,
    )
    .await;
    let good = good_decisions("acc-hostile", 100);
    expected.extend(send_mixed(&producer, &mut rng, &topics.decisions, good, decisions).await);
    assert_eq!(expected.len(), 2_000);
    // After the garbage.
    hostile::send_all(&producer, &topics.otlp_spans, &good_spans(201, 20)).await;
    hostile::send_all(
        &producer,
        &topics.decisions,
        &good_decisions("acc-hostile-after", 10),
    )
    .await;

    let client = config.clickhouse.client();
    let spans_sql = format!("SELECT count() FROM spans WHERE trace_id = '{GOOD_TRACE:032x}'");
    assert_eq!(
        wait_count(&client, &spans_sql, 220).await,
        220,
        "every valid span is stored"
    );
    let decisions_sql =
        "SELECT count() FROM decisions WHERE account_id IN ('acc-hostile', 'acc-hostile-after')";
    assert_eq!(
        wait_count(&client, decisions_sql, 110).await,
        110,
        "every valid decision is stored"
    );
    let bad_trace = format!(
        "SELECT count() FROM spans WHERE trace_id = '{:032x}'",
        GOOD_TRACE + 1
    );
    assert_eq!(
        count(&client, &bad_trace).await,
        0,
        "no malformed span is stored"
    );

    hostile::check_dead_letters(kafka, &topics.spans_dlq, expected, WAIT, |m, payload| {
        if m.codes == UNDECODABLE {
            // The record as read.
            payload == m.payload.as_slice()
        } else {
            // The unstorable span in a request of its own: here the record's only span.
            decode_protobuf(payload).ok() == decode_protobuf(&m.payload).ok()
        }
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}
