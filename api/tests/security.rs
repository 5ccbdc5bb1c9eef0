//! The api's HTTP surface against strangers and hostile parameters, on a real listener and a
//! real ClickHouse: bearer tokens with scopes (Jaeger routes answer in Jaeger's envelope, the
//! native ones in the native one), and injection attempts in trace ids, service names,
//! operations, tags and account ids answered 400 naming the parameter, while the tables stay
//! intact and ordinary values still work.

use std::net::SocketAddr;
use std::time::Duration;

use riskstream_api::{ApiSection, App, Config};
use riskstream_auth::{AccessConfig, Scope};
use riskstream_store::ClickHouseConfig;
use riskstream_testkit::auth::{GuardedRoute, TestTokens, exercise_guard, send};
use riskstream_testkit::clickhouse::server;
use riskstream_testkit::unique;
use tokio_util::sync::CancellationToken;

/// An api on port 0 over a migrated database; stopped when the token is cancelled.
async fn spawn_api(access: AccessConfig) -> (SocketAddr, ClickHouseConfig, CancellationToken) {
    let ch = ClickHouseConfig {
        url: server().url().into(),
        database: unique("sec"),
        ..Default::default()
    };
    riskstream_store::schema::migrate(&ch.client(), &ch.database, Duration::ZERO)
        .await
        .expect("migrate");
    let stop = CancellationToken::new();
    let app = App::build(
        Config {
            clickhouse: ch.clone(),
            api: ApiSection {
                listen: "127.0.0.1:0".into(),
                access,
                ..ApiSection::default()
            },
        },
        stop.clone(),
    )
    .await
    .expect("api builds");
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped());
    (addr, ch, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_decisions_need_their_scopes() {
    let mut tokens = TestTokens::new(&[("grafana", &[Scope::TracesRead])]);
    let access = tokens.access();
    let max_header_bytes = access.http.max_header_bytes;
    let (addr, _ch, stop) = spawn_api(access).await;
    let http = reqwest::Client::new();
    let get = |path: &str, a: Option<&str>| {
        let r = http.get(format!("http://{addr}{path}"));
        riskstream_testkit::auth::authorized(r, a)
    };
    let make = |a: Option<&str>| get("/api/services", a);
    let refusals = exercise_guard(
        &mut tokens,
        GuardedRoute {
            make: &make,
            scope: Scope::TracesRead,
            other_scope: Scope::DecisionsRead,
            ok_status: 200,
            max_header_bytes,
        },
    )
    .await;
    // Jaeger's envelope on Jaeger routes, so Grafana shows the reason.
    assert_eq!(refusals.missing.body["errors"][0]["code"], 401);
    assert_eq!(refusals.forbidden.body["errors"][0]["code"], 403);
    assert!(
        refusals.forbidden.body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("traces:read")
    );
    // The native envelope on native routes; traces:read does not read decisions.
    let grafana = tokens.bearer("grafana");
    let d = send(get("/v1/decisions?account_id=acc-1", Some(&grafana))).await;
    assert_eq!(d.status, 403, "{d:?}");
    assert_eq!(d.body["code"], "forbidden");
    assert_eq!(d.body["data"]["required_scope"], "decisions:read");
    let t = send(get(
        "/v1/traces/5b8efff798038103d269b633813fc60c",
        Some(&grafana),
    ))
    .await;
    assert_eq!(t.status, 404, "allowed, and no such trace: {t:?}");
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(send(get(open, None)).await.status, 200, "{open}");
    }
    stop.cancel();
}

/// Every byte but letters and digits as `%XX`, for a path segment.
fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const PAYLOADS: [&str; 8] = [
    "x' OR '1'='1",
    "x'; DROP TABLE spans; --",
    "x\\' OR 1=1 --",
    "\"); DROP DATABASE default; --",
    "x/**/OR/**/1=1",
    "x\nUNION SELECT 1",
    "1' UNION SELECT name FROM system.tables --",
    "a`b",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_attempts_are_400s_naming_the_parameter_and_change_nothing() {
    let (addr, ch, stop) = spawn_api(AccessConfig::default()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let query = |path: &str, pairs: &[(&str, &str)]| {
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        url(&format!("{path}?{}", q.join("&")))
    };
    let mut checked = 0;
    for p in PAYLOADS {
        let tags_key = serde_json::json!({ p: "v" }).to_string();
        let tags_value = serde_json::json!({ "k": p }).to_string();
        let tag_pair = format!("k:{p}");
        let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
            (
                http.get(url(&format!("/api/traces/{}", encode(p)))),
                "trace_id",
            ),
            (
                http.get(url(&format!("/v1/traces/{}", encode(p)))),
                "trace_id",
            ),
            (http.get(query("/api/traces", &[("service", p)])), "service"),
            (
                http.get(query("/api/traces", &[("service", "s"), ("operation", p)])),
                "operation",
            ),
            (
                http.get(query(
                    "/api/traces",
                    &[("service", "s"), ("tags", tags_key.as_str())],
                )),
                "tags",
            ),
            (
                http.get(query(
                    "/api/traces",
                    &[("service", "s"), ("tags", tags_value.as_str())],
                )),
                "tags",
            ),
            (
                http.get(query(
                    "/api/traces",
                    &[("service", "s"), ("tag", tag_pair.as_str())],
                )),
                "tags",
            ),
            (
                http.get(url(&format!("/api/services/{}/operations", encode(p)))),
                "service",
            ),
            (
                http.get(query("/api/operations", &[("service", p)])),
                "service",
            ),
            (
                http.get(query("/v1/decisions", &[("account_id", p)])),
                "account_id",
            ),
            (
                http.get(url(&format!("/v1/decisions/{}", encode(p)))),
                "event_id",
            ),
        ];
        for (request, parameter) in cases {
            let a = send(request).await;
            assert_eq!(a.status, 400, "{p:?} as {parameter}: {a:?}");
            // The native envelope names it in data; Jaeger's in its message.
            let named = a.body["data"]["parameter"] == parameter
                || a.body["errors"][0]["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains(parameter.replace('_', " ").trim_end_matches('s')));
            assert!(named, "{p:?}: the error names {parameter}: {a:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, PAYLOADS.len() * 11);
    // Ordinary values still work, and every table is still there.
    for ok in [
        "/api/traces?service=riskstream-ingest&operation=POST%20/v1/events&tags=%7B%22http.status_code%22%3A%22200%22%7D",
        "/api/services",
        "/api/services/riskstream-ingest/operations",
        "/api/operations?service=riskstream-ingest&spanKind=server",
        "/v1/decisions?account_id=acc-000001",
    ] {
        let a = send(http.get(url(ok))).await;
        assert_eq!(a.status, 200, "{ok}: {a:?}");
    }
    let tables: Vec<String> = ch
        .client()
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(ch.database.as_str())
        .fetch_all()
        .await
        .expect("tables");
    for t in ["decisions", "spans"] {
        assert!(
            tables.iter().any(|n| n == t),
            "{t} still exists: {tables:?}"
        );
    }
    stop.cancel();
}
