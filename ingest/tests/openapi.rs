//! ingest's `/openapi.json` is generated from the handlers (utoipa, through the router that
//! serves them): a valid OpenAPI 3 document naming every route, each served by a handler
//! (answered by something other than the "no such route" fallback and never 405).

use std::time::Duration;

use riskstream_common::kafka::Topics;
use riskstream_common::shutdown::CancellationToken;
use riskstream_ingest::{App, Config, IngestConfig};
use riskstream_testkit::kafka::TestKafka;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_each_is_served() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("openapi"));
    let broker = TestKafka::with_topics(1, &topics);
    let shutdown = CancellationToken::new();
    let app = App::build(
        Config {
            kafka: broker.kafka_config(&topics),
            ingest: IngestConfig {
                listen: "127.0.0.1:0".into(),
                decision_timeout: Duration::from_millis(50),
                ..IngestConfig::default()
            },
        },
        shutdown.clone(),
    )
    .await
    .expect("build ingest");
    let base = format!("http://{}", app.local_addr());
    let handle = tokio::spawn(async move { app.run_until_stopped().await.expect("ingest runs") });
    let http = reqwest::Client::new();

    let doc: Value = http
        .get(format!(
            "{base}{}",
            riskstream_ingest::routes::OPENAPI_ROUTE
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its responses"
            );
            let uri = path.replace("{event_id}", "01a23cb6-6090-7872-8ed1-8b57e58c9119");
            let req = match method.as_str() {
                "post" => http
                    .post(format!("{base}{uri}"))
                    .header("content-type", "application/json")
                    .body("{}"),
                "get" => http.get(format!("{base}{uri}")),
                other => panic!("unexpected method {other}"),
            };
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_ne!(status, 405, "{method} {uri}");
            assert!(
                !body.contains("no such route"),
                "{method} {uri} is served by a handler: {status} {body}"
            );
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "GET /healthz",
            "GET /metrics",
            "GET /readyz",
            "GET /v1/decisions/{event_id}",
            "POST /v1/decisions",
            "POST /v1/events",
        ]
    );
    // What the check above tells apart.
    let r = http
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("no such route"));
    shutdown.cancel();
    handle.await.unwrap();
}
