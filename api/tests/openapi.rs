//! `/openapi.json` is generated from the handlers (utoipa, through the router that serves
//! them): it is a valid OpenAPI 3.1 document, and every path and method it names is served by
//! a handler (answered by something other than the router's "no such route" fallback), with
//! its documented parameters.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use riskstream_api::{AppState, Config as ApiConfig, OPENAPI_ROUTE, router};
use riskstream_store::ClickHouseConfig;
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::unique;
use serde_json::Value;
use tower::ServiceExt as _;

async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A value for a documented parameter.
fn sample(name: &str) -> &'static str {
    match name {
        "trace_id" => "000000000000000000000000000000aa",
        "event_id" => "01a23cb6-6090-7872-8ed1-8b57e58c9119",
        "service" => "riskstream-ingest",
        "account_id" => "acc-1",
        _ => "",
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_each_is_served() {
    let api = router(AppState::new(&ApiConfig {
        clickhouse: ClickHouseConfig {
            url: server().url().into(),
            database: unique("openapi"),
            ..Default::default()
        },
        ..Default::default()
    }));
    let (status, body) = call(&api, "GET", OPENAPI_ROUTE).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/traces/{trace_id}",
        "/api/traces",
        "/api/services",
        "/api/services/{service}/operations",
        "/api/operations",
        "/v1/traces/{trace_id}",
        "/v1/decisions/{event_id}",
        "/v1/decisions",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} is documented: {:?}",
            paths.keys()
        );
    }
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let mut uri = path.clone();
            let mut query = Vec::new();
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                match param["in"].as_str().unwrap() {
                    "path" => uri = uri.replace(&format!("{{{name}}}"), sample(name)),
                    "query" if param["required"] == true => {
                        query.push(format!("{name}={}", sample(name)));
                    }
                    _ => {}
                }
            }
            assert!(
                !uri.contains('{'),
                "every path parameter of {path} is documented"
            );
            if !query.is_empty() {
                uri = format!("{uri}?{}", query.join("&"));
            }
            let (status, body) = call(&api, &method.to_uppercase(), &uri).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(
                !body.contains("no such route"),
                "{method} {uri} is served by a handler: {status} {body}"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its responses"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, paths.len(), "one method per path here");
    // The fallback itself is what the check above tells apart.
    let (status, body) = call(&api, "GET", "/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no such route"), "{body}");
}
