//! api integration tests against a real ClickHouse (testkit): spans sent by a real OpenTelemetry
//! SDK exporter and through Kafka come back from the Jaeger API; search filters; decisions;
//! error envelopes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as OtlpKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use riskstream_common::kafka::Topics;
use riskstream_common::{Decision, Outcome};
use riskstream_store::TraceStore;
use riskstream_store::schema::{DecisionRow, attr_type};
use riskstream_testkit::kafka::TestKafka;
use riskstream_testkit::unique;
use riskstream_trace_collector::{App as Collector, CollectorSection, Config as CollectorConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod support;
use support::*;

fn trace_ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|traces| {
            traces
                .iter()
                .map(|t| t["traceID"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn find_tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"] == key)
}

on_both_stores!(search_filters_each_change_the_result_as_documented: search_filters_each_change_the_result_as_documented_on_clickhouse, search_filters_each_change_the_result_as_documented_in_memory);

async fn search_filters_each_change_the_result_as_documented(store: Arc<dyn TraceStore>) {
    let s = 1_000_000_000;
    insert_spans(
        &store,
        &[
            row(
                A,
                "00000000000000a1",
                "",
                "search-svc",
                "GET /a",
                T0_NS + s,
                10_000_000,
                &[("http.status_code", "200", attr_type::INT)],
            ),
            row(
                A,
                "00000000000000a2",
                "00000000000000a1",
                "db",
                "SELECT",
                T0_NS + s + 1,
                5_000_000,
                &[],
            ),
            row(
                B,
                "00000000000000b1",
                "",
                "search-svc",
                "GET /b",
                T0_NS + 2 * s,
                500_000_000,
                &[
                    ("http.status_code", "500", attr_type::INT),
                    ("error", "true", attr_type::BOOL),
                ],
            ),
            row(
                C,
                "00000000000000c1",
                "",
                "search-svc",
                "GET /a",
                T0_NS + 3 * s,
                2_000_000_000,
                &[("http.status_code", "200", attr_type::INT)],
            ),
            row(
                D,
                "00000000000000d1",
                "",
                "other-svc",
                "GET /a",
                T0_NS + 4 * s,
                1_000_000,
                &[],
            ),
        ],
    )
    .await;
    let router = api_on(&store);
    let search = |q: &str| {
        let router = router.clone();
        let uri = format!("/api/traces?service=search-svc{q}");
        async move {
            let (status, body) = get(&router, &uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            trace_ids(&body)
        }
    };
    assert_eq!(
        search("").await,
        [C, B, A],
        "service only, most recent first"
    );
    assert_eq!(search("&operation=GET%20/a").await, [C, A]);
    assert_eq!(
        search("&tags=%7B%22http.status_code%22%3A%22500%22%7D").await,
        [B],
        "json tags"
    );
    assert_eq!(search("&tags=error%3Atrue").await, [B], "key:value tags");
    assert_eq!(
        search("&tags=http.status_code%3A200&operation=GET%20/a").await,
        [C, A]
    );
    assert_eq!(search("&minDuration=100ms").await, [C, B]);
    assert_eq!(search("&maxDuration=0.1s").await, [A]);
    assert_eq!(search("&minDuration=100ms&maxDuration=1s").await, [B]);
    let us = |ns: u64| ns / 1000;
    assert_eq!(
        search(&format!(
            "&start={}&end={}",
            us(T0_NS + 3 * s / 2),
            us(T0_NS + 5 * s / 2)
        ))
        .await,
        [B]
    );
    assert_eq!(search("&limit=1").await, [C]);
    // A found trace comes back whole (the db span of A is not from search-svc).
    let (_, body) = get(
        &router,
        "/api/traces?service=search-svc&operation=GET%20/a&limit=20",
    )
    .await;
    let a = body["data"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["traceID"] == A))
        .cloned();
    assert_eq!(
        a.map(|t| t["spans"].as_array().map_or(0, Vec::len)),
        Some(2)
    );

    let (status, body) = get(&router, "/api/traces?operation=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["code"], 400);
    let (status, _) = get(&router, "/api/traces?service=s&minDuration=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, body) = get(&router, "/api/services").await;
    assert_eq!(body["data"], json!(["db", "other-svc", "search-svc"]));
    assert_eq!(body["total"], 3);
    let (_, body) = get(&router, "/api/services/search-svc/operations").await;
    assert_eq!(body["data"], json!(["GET /a", "GET /b"]));
    let (_, body) = get(
        &router,
        "/api/operations?service=search-svc&spanKind=server",
    )
    .await;
    assert_eq!(
        body["data"],
        json!([{"name": "GET /a", "spanKind": "server"}, {"name": "GET /b", "spanKind": "server"}])
    );
    let (_, body) = get(
        &router,
        "/api/operations?service=search-svc&spanKind=client",
    )
    .await;
    assert_eq!(body["data"], json!([]));
}

on_both_stores!(trace_by_id_in_jaeger_and_native_forms_with_error_envelopes: trace_by_id_in_jaeger_and_native_forms_with_error_envelopes_on_clickhouse, trace_by_id_in_jaeger_and_native_forms_with_error_envelopes_in_memory);

async fn trace_by_id_in_jaeger_and_native_forms_with_error_envelopes(store: Arc<dyn TraceStore>) {
    insert_spans(
        &store,
        &[
            row(
                A,
                "00000000000000a1",
                "",
                "web",
                "GET /",
                T0_NS,
                30_000_000,
                &[("http.status_code", "200", attr_type::INT)],
            ),
            row(
                A,
                "00000000000000a2",
                "00000000000000a1",
                "db",
                "SELECT",
                T0_NS + 5_000_000,
                10_000_000,
                &[("ok", "true", attr_type::BOOL)],
            ),
            // At-least-once may store a span twice: the api shows it once.
            row(
                A,
                "00000000000000a2",
                "00000000000000a1",
                "db",
                "SELECT",
                T0_NS + 5_000_000,
                10_000_000,
                &[("ok", "true", attr_type::BOOL)],
            ),
        ],
    )
    .await;
    let router = api_on(&store);
    let (status, body) = get(&router, &format!("/api/traces/{}", A.to_uppercase())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let trace = &body["data"][0];
    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2);
    let child = &spans[1];
    assert_eq!(
        child["references"],
        json!([{"refType": "CHILD_OF", "traceID": A, "spanID": "00000000000000a1"}])
    );
    assert_eq!(child["startTime"], (T0_NS + 5_000_000) / 1000);
    assert_eq!(child["duration"], 10_000);
    assert_eq!(
        find_tag(child, "ok"),
        Some(&json!({"key": "ok", "type": "bool", "value": true}))
    );
    assert_eq!(
        find_tag(&spans[0], "http.status_code").map(|t| &t["value"]),
        Some(&json!(200))
    );
    assert_eq!(
        child["logs"][0]["fields"][1],
        json!({"key": "attempt", "type": "int64", "value": 2})
    );
    let pid = child["processID"].as_str().expect("process id");
    assert_eq!(trace["processes"][pid]["serviceName"], "db");

    let (status, body) = get(&router, &format!("/v1/traces/{A}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["span_count"], 2);
    assert_eq!(body["duration_ns"], 30_000_000);
    assert_eq!(body["roots"][0]["span_id"], "00000000000000a1");
    assert_eq!(
        body["roots"][0]["children"][0]["span_id"],
        "00000000000000a2"
    );
    assert_eq!(body["roots"][0]["children"][0]["offset_ns"], 5_000_000);

    let (status, body) = get(&router, &format!("/api/traces/{B}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["errors"][0]["code"], 404);
    let (status, body) = get(&router, "/api/traces/not-a-trace-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["code"], 400);
    let (status, body) = get(&router, "/v1/traces/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "bad_request");
    assert_eq!(body["data"]["parameter"], "trace_id");
    let (status, body) = get(&router, &format!("/v1/traces/{B}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    assert!(body.get("message").is_some() && body.get("data").is_some());

    assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
    let (_, metrics) = get(&router, "/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("api_requests_total"),
        "{metrics}"
    );
}

on_both_stores!(decisions_by_event_id_and_by_account_and_time_range: decisions_by_event_id_and_by_account_and_time_range_on_clickhouse, decisions_by_event_id_and_by_account_and_time_range_in_memory);

async fn decisions_by_event_id_and_by_account_and_time_range(store: Arc<dyn TraceStore>) {
    let t0: i64 = 1_700_000_000_000;
    let d1 = decision("acc-1", t0, Outcome::Approve);
    let d2 = decision("acc-1", t0 + 1000, Outcome::Review);
    let d3 = decision("acc-1", t0 + 2000, Outcome::Decline);
    let other = decision("acc-2", t0 + 500, Outcome::Approve);
    let rows: Vec<DecisionRow> = [&d1, &d2, &d3, &other]
        .into_iter()
        .map(DecisionRow::from)
        .collect();
    // d2 twice: at-least-once duplicates are listed once.
    insert_decisions(&store, &rows).await;
    insert_decisions(&store, &rows[1..2]).await;
    let router = api_on(&store);

    let (status, body) = get(&router, &format!("/v1/decisions/{}", d2.event_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_value::<Decision>(body).expect("decision"),
        d2
    );

    let list = |q: String| {
        let router = router.clone();
        async move {
            let (status, body) = get(&router, &format!("/v1/decisions?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body["decisions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| d["event_id"].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let id = |d: &Decision| d.event_id.to_string();
    assert_eq!(
        list("account_id=acc-1".into()).await,
        [id(&d3), id(&d2), id(&d1)]
    );
    assert_eq!(
        list(format!(
            "account_id=acc-1&from={}&to={}",
            t0 + 500,
            t0 + 2000
        ))
        .await,
        [id(&d2)]
    );
    assert_eq!(
        list("account_id=acc-1&from=2023-11-14T22:13:21Z".into()).await,
        [id(&d3), id(&d2)]
    );
    assert_eq!(list("account_id=acc-1&limit=1".into()).await, [id(&d3)]);
    // Empty bounds are no bounds (schemathesis sent `from=`, which was a 400).
    assert_eq!(
        list("account_id=acc-1&from=&to=".into()).await,
        [id(&d3), id(&d2), id(&d1)]
    );
    assert_eq!(list("account_id=acc-2".into()).await, [id(&other)]);

    let (status, body) = get(&router, "/v1/decisions?from=1").await;
    assert_eq!(
        (status, body["data"]["parameter"].clone()),
        (StatusCode::BAD_REQUEST, json!("account_id"))
    );
    let (status, _) = get(&router, "/v1/decisions?account_id=a&from=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&router, "/v1/decisions/not-a-uuid").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("bad_request"))
    );
    let (status, body) = get(&router, &format!("/v1/decisions/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

fn otlp_kv(key: &str, value: any_value::Value) -> OtlpKeyValue {
    OtlpKeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Polls the Jaeger API until the trace has `spans` spans.
async fn wait_trace(router: &Router, trace_id: &str, spans: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = get(router, &format!("/api/traces/{trace_id}")).await;
        let n = body["data"][0]["spans"].as_array().map_or(0, Vec::len);
        if (status == StatusCode::OK && n >= spans) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_a_real_sdk_exporter_and_from_kafka_come_back_from_the_jaeger_api() {
    let ch = clickhouse_config();
    let topics = Topics::with_suffix(&unique("s"));
    let broker = TestKafka::with_topics(2, &topics);
    let config = CollectorConfig {
        kafka: broker.kafka_config(&topics),
        clickhouse: ch.clone(),
        collector: CollectorSection {
            listen: "127.0.0.1:0".into(),
            otlp_grpc_listen: String::new(),
            group_id: unique("g"),
            batch_max_wait: Duration::from_millis(50),
            ..Default::default()
        },
    };
    let stop = CancellationToken::new();
    let collector = Collector::build(config.clone(), stop.clone())
        .await
        .expect("collector");
    let endpoint = format!("http://{}/v1/traces", collector.http_addr());
    let task = tokio::spawn(collector.run_until_stopped());

    // The SDK's simple processor blocks on the export: run it on a plain thread that can
    // reach this runtime's reactor.
    let handle = tokio::runtime::Handle::current();
    let (trace_id, parent_id, child_id) = std::thread::spawn(move || {
        let _guard = handle.enter();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .expect("exporter");
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("sdk-svc")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("riskstream-test");
        let ids = tracer.in_span("checkout", |cx| {
            cx.span().set_attribute(KeyValue::new("order.id", "o-1"));
            let parent = cx.span().span_context().clone();
            let mut child = tracer.start("charge");
            child.set_attribute(KeyValue::new("amount", 12.5));
            child.add_event("authorized", vec![KeyValue::new("code", 7_i64)]);
            std::thread::sleep(Duration::from_millis(20));
            let child_id = child.span_context().span_id();
            child.end();
            (parent.trace_id(), parent.span_id(), child_id)
        });
        provider.shutdown().expect("sdk shutdown");
        (ids.0.to_string(), ids.1.to_string(), ids.2.to_string())
    })
    .join()
    .expect("sdk thread");

    let router = api(&ch);
    // The exporter got 200s only after the spans were stored.
    let body = wait_trace(&router, &trace_id, 2).await;
    let spans = body["data"][0]["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(spans.len(), 2, "{body}");
    let parent = spans
        .iter()
        .find(|s| s["spanID"] == parent_id.as_str())
        .expect("parent");
    let child = spans
        .iter()
        .find(|s| s["spanID"] == child_id.as_str())
        .expect("child");
    assert_eq!(
        child["references"],
        json!([{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent_id}])
    );
    assert_eq!(parent["references"], json!([]));
    assert_eq!(parent["operationName"], "checkout");
    assert!(child["duration"].as_u64().unwrap_or(0) >= 20_000, "{child}");
    assert!(parent["duration"].as_u64() >= child["duration"].as_u64());
    assert!(parent["startTime"].as_u64() <= child["startTime"].as_u64());
    assert_eq!(
        find_tag(parent, "order.id").map(|t| &t["value"]),
        Some(&json!("o-1"))
    );
    assert_eq!(
        find_tag(child, "amount"),
        Some(&json!({"key": "amount", "type": "float64", "value": 12.5}))
    );
    assert_eq!(child["logs"][0]["fields"][0]["value"], "authorized");
    let pid = child["processID"].as_str().unwrap_or_default();
    assert_eq!(body["data"][0]["processes"][pid]["serviceName"], "sdk-svc");

    // The same path through Kafka (the OTel Collector's `otlp_proto` encoding).
    let kafka_trace: [u8; 16] = *b"kafka-trace-0001";
    let mk = |id: u8, parent: Option<u8>, start_ms: u64, dur_ms: u64| Span {
        trace_id: kafka_trace.to_vec(),
        span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent
            .map(|p| vec![0, 0, 0, 0, 0, 0, 0, p])
            .unwrap_or_default(),
        name: format!("op-{id}"),
        kind: 5,
        start_time_unix_nano: T0_NS + start_ms * 1_000_000,
        end_time_unix_nano: T0_NS + (start_ms + dur_ms) * 1_000_000,
        attributes: vec![otlp_kv("partition", any_value::Value::IntValue(3))],
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![otlp_kv(
                    "service.name",
                    any_value::Value::StringValue("worker".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![mk(1, None, 0, 30), mk(2, Some(1), 10, 15)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let producer: FutureProducer = config.kafka.producer().expect("producer");
    producer
        .send(
            FutureRecord::<(), [u8]>::to(&topics.otlp_spans).payload(&request.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    let kafka_hex: String = kafka_trace.iter().map(|b| format!("{b:02x}")).collect();
    let body = wait_trace(&router, &kafka_hex, 2).await;
    let spans = body["data"][0]["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(spans.len(), 2, "{body}");
    assert_eq!(spans[1]["references"][0]["spanID"], "0000000000000001");
    assert_eq!(spans[1]["references"][0]["refType"], "CHILD_OF");
    assert_eq!(spans[0]["duration"], 30_000);
    assert_eq!(spans[1]["duration"], 15_000);
    assert_eq!(
        find_tag(&spans[1], "span.kind").map(|t| &t["value"]),
        Some(&json!("consumer"))
    );
    assert_eq!(
        find_tag(&spans[1], "partition").map(|t| &t["value"]),
        Some(&json!(3))
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
}
