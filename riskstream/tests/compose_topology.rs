//! What docker-compose.yml runs, as processes, on the run's Apache Kafka broker and ClickHouse
//! server: every riskstream service of the compose file with the compose file's own command,
//! environment and replica count (hosts and ports mapped to this machine, topics, groups and
//! the database made unique to this test). Generated traffic goes through ingest over HTTP;
//! every event is decided exactly once in ClickHouse's decisions table, both worker replicas
//! share the work in one consumer group, and a trace read from the api holds spans from
//! ingest, the worker and the decision. Every metric the Grafana dashboard
//! (deploy/grafana/dashboards/pipeline.json) queries is in some service's `/metrics`. The
//! compose file's traffic generator (`produce`) is not run: the test sends its own traffic.
//! Authentication is on as in compose (deploy/auth/tokens.toml): requests carry the documented
//! demo tokens, the api is read with the token Grafana's data source sends, and a request
//! without a token is refused.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::Topics;
use riskstream_testkit::kafka::shared_bootstrap;
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;
use support::{Proc, command, repo, spawn, topics_env};

const EVENTS: usize = 1500;
const BATCH: usize = 100;
/// The commands this test runs, in the compose file's roles.
const RUN: [&str; 5] = ["topics", "ingest", "worker", "collector", "api"];
/// Commands of the compose file this test knows and does not run: the traffic generator.
const SKIP: [&str; 1] = ["produce"];
/// The commands whose `--listen` serves `GET /metrics` (Prometheus scrapes them).
const SERVES_METRICS: [&str; 4] = ["ingest", "worker", "collector", "api"];
/// The compose stack's public demo tokens (docs/security.md, deploy/auth/tokens.toml).
const DEMO_CLIENT: &str = "Bearer rst_demo-client-public-not-a-secret-do-not-use-in-production";
const DEMO_OTLP: &str = "Bearer rst_demo-otlp-public-not-a-secret-do-not-use-in-production";

/// The `Authorization` value Grafana's Jaeger data source sends to the api.
fn grafana_authorization() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/datasources.yml")).unwrap();
    let doc: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    let jaeger = doc["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|d| d["type"].as_str() == Some("jaeger"))
        .expect("a jaeger data source");
    assert_eq!(
        jaeger["jsonData"]["httpHeaderName1"].as_str(),
        Some("Authorization")
    );
    jaeger["secureJsonData"]["httpHeaderValue1"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One riskstream service of the compose file.
#[derive(Debug)]
struct Service {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    replicas: usize,
}

fn yaml_str(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("unexpected compose value {other:?}"),
    }
}

/// The services built from this repository's image (the compose file's `x-riskstream`
/// anchor), profiles excluded, with merge keys applied.
fn compose_services() -> Vec<Service> {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut doc: Yaml = serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys");
    let services = doc["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, s) in services {
        let ours = s.get("build").is_some()
            || s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("riskstream"));
        if !ours || s.get("profiles").is_some() {
            continue;
        }
        let command: Vec<String> = match &s["command"] {
            Yaml::Sequence(seq) => seq.iter().map(yaml_str).collect(),
            Yaml::String(line) => line.split_whitespace().map(String::from).collect(),
            other => panic!("service {name:?}: no command ({other:?})"),
        };
        let env = match s.get("environment") {
            Some(Yaml::Mapping(m)) => m.iter().map(|(k, v)| (yaml_str(k), yaml_str(v))).collect(),
            Some(Yaml::Sequence(seq)) => seq
                .iter()
                .map(|kv| {
                    let kv = yaml_str(kv);
                    let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            _ => Vec::new(),
        };
        let replicas = s["deploy"]["replicas"].as_u64().unwrap_or(1) as usize;
        out.push(Service {
            name: yaml_str(name),
            command,
            env,
            replicas,
        });
    }
    out
}

/// Rewrites compose addresses to this machine's: `0.0.0.0:P` listeners become `127.0.0.1:0`,
/// and `host:port` of a compose service becomes the address that service printed.
fn localize(value: &str, hosts: &HashMap<String, String>) -> String {
    if let Some(port) = value.strip_prefix("0.0.0.0:") {
        assert!(port.parse::<u16>().is_ok(), "listener {value}");
        return "127.0.0.1:0".into();
    }
    let mut v = value.to_string();
    for (from, to) in hosts {
        v = v.replace(from.as_str(), to);
    }
    v
}

/// A service's `/metrics` text (asserting it answers 200).
async fn metrics_text(http: &reqwest::Client, addr: &str) -> String {
    let r = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET http://{addr}/metrics");
    r.text().await.unwrap()
}

/// The decisions counter of a worker's `/metrics`, summed over outcomes.
async fn decided(http: &reqwest::Client, admin: &str) -> f64 {
    metrics_text(http, admin)
        .await
        .lines()
        .filter(|l| l.starts_with("riskstream_worker_decisions_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Metric names of a PromQL expression: identifiers that are not functions, keywords, label
/// names (in `{...}` or `by (...)`-style groupings), durations, numbers or Grafana variables.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const WORDS: [&str; 7] = ["bool", "offset", "and", "or", "unless", "inf", "nan"];
    let c: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < c.len() && c[j] != close {
            if c[j] == '"' || c[j] == '\'' {
                let q = c[j];
                j += 1;
                while j < c.len() && c[j] != q {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_to(i, ch);
        } else if ch == '{' {
            i = skip_to(i, '}');
        } else if ch == '[' {
            i = skip_to(i, ']');
        } else if ch.is_ascii_digit() || ch == '.' || ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let call = j < c.len() && c[j] == '(';
            // `sum by (le) (...)`: an aggregation with its grouping first.
            let next: String = c[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let aggregation = next == "by" || next == "without";
            if aggregation {
                continue;
            }
            if call && GROUPING.contains(&word.as_str()) {
                i = skip_to(j, ')');
            } else if !call && !GROUPING.contains(&word.as_str()) && !WORDS.contains(&word.as_str())
            {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every PromQL expression (`expr`) of a Grafana dashboard.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The series names Prometheus stores from one `/metrics` text, each with whether the text
/// holds a sample of it: every sample's name, and for every `# TYPE` family the names its type
/// exposes: `_total` for a counter, `_bucket`/`_sum`/`_count` for a histogram, the family name
/// otherwise. (prometheus_client prints a labelled family only once it has a series.)
fn exported_series(text: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.entry(format!("{name}{s}")).or_insert(false);
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string(), true);
        }
    }
    out
}

/// Waits until every consumer group named `prefix*` is Stable with `members` members.
fn wait_for_stable_groups(prefix: &str, members: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = riskstream_common::kafka::KafkaConfig {
        brokers: shared_bootstrap().to_string(),
        ..Default::default()
    };
    let client: BaseConsumer = kafka.client_config().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let groups = client
            .fetch_group_list(None, Duration::from_secs(5))
            .map(|l| {
                l.groups()
                    .iter()
                    .filter(|g| g.name().starts_with(prefix))
                    .map(|g| {
                        (
                            g.name().to_string(),
                            g.state().to_string(),
                            g.members().len(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !groups.is_empty()
            && groups
                .iter()
                .all(|(_, state, n)| state == "Stable" && *n == members)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker groups not stable with {members} members: {groups:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_as_processes_decides_every_event_exactly_once_with_its_trace() {
    let services = compose_services();
    let by_cmd = |c: &str| -> Vec<&Service> {
        services
            .iter()
            .filter(|s| s.command.first().map(String::as_str) == Some(c))
            .collect()
    };
    for needed in RUN {
        assert_eq!(
            by_cmd(needed).len(),
            1,
            "docker-compose.yml has one `{needed}` service: {services:?}"
        );
    }
    assert!(
        by_cmd("worker")[0].replicas >= 2,
        "the compose file runs at least 2 workers"
    );
    for s in &services {
        let c = s.command[0].as_str();
        assert!(
            RUN.contains(&c) || SKIP.contains(&c),
            "service {} runs `{c}`, which this test does not know how to run",
            s.name
        );
    }

    let ch = riskstream_testkit::clickhouse::server();
    let db = riskstream_testkit::unique("compose");
    let topics = Topics::with_suffix(&riskstream_testkit::unique("compose"));
    let mut hosts: HashMap<String, String> = HashMap::new();
    hosts.insert("kafka:9092".into(), shared_bootstrap().to_string());
    let ch_hostport = ch.url().trim_start_matches("http://").to_string();
    hosts.insert("clickhouse:8123".into(), ch_hostport);
    let isolation: Vec<(String, String)> = topics_env(&topics)
        .into_iter()
        .chain([
            ("RISKSTREAM__CLICKHOUSE__DATABASE".into(), db.clone()),
            (
                "RISKSTREAM__WORKER__GROUP_ID".into(),
                riskstream_testkit::unique("workers"),
            ),
            (
                "RISKSTREAM__COLLECTOR__GROUP_ID".into(),
                riskstream_testkit::unique("collector"),
            ),
            // Text logs on the test's stderr; the rest as the compose file says.
            ("RISKSTREAM__TELEMETRY__LOG_FORMAT".into(), "text".into()),
            (
                "RISKSTREAM__TELEMETRY__LOG_LEVEL".into(),
                std::env::var("COMPOSE_TEST_LOG").unwrap_or("warn".into()),
            ),
        ])
        .collect();
    let env_of = |s: &Service, hosts: &HashMap<String, String>| -> Vec<(String, String)> {
        s.env
            .iter()
            .map(|(k, v)| (k.clone(), localize(v, hosts)))
            .chain(isolation.iter().cloned())
            .collect()
    };
    let args_of = |s: &Service, hosts: &HashMap<String, String>| -> Vec<String> {
        s.command.iter().map(|a| localize(a, hosts)).collect()
    };

    // The init step, as compose runs it before every service.
    let init = by_cmd("topics")[0];
    let args = args_of(init, &hosts);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = command(&args, &env_of(init, &hosts)).output().unwrap();
    assert!(
        out.status.success(),
        "init `{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );

    // Services in dependency order; each one's printed address replaces its compose address.
    let mut procs: Vec<Proc> = Vec::new();
    let mut worker_admins = Vec::new();
    // (service, address) of every process whose listener serves /metrics.
    let mut metrics_at: Vec<(String, String)> = Vec::new();
    let mut listen_of: BTreeMap<&str, String> = BTreeMap::new();
    for cmd in ["collector", "api", "worker", "ingest"] {
        let s = by_cmd(cmd)[0];
        for _ in 0..s.replicas {
            let args = args_of(s, &hosts);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (p, addr) = spawn(&args, &env_of(s, &hosts), "listening");
            // `--listen 0.0.0.0:P` in compose: `service:P` now means the printed address.
            if let Some(i) = s.command.iter().position(|a| a == "--listen")
                && let Some(port) = s.command[i + 1].strip_prefix("0.0.0.0:")
            {
                hosts.insert(format!("{}:{port}", s.name), addr.clone());
            }
            if cmd == "worker" {
                worker_admins.push(addr.clone());
            }
            if SERVES_METRICS.contains(&cmd) {
                metrics_at.push((s.name.clone(), addr.clone()));
            }
            listen_of.insert(cmd, addr);
            procs.push(p);
        }
    }
    // As in compose, traffic starts once the workers' consumer groups are stable (every
    // replica a member of every stage's group), so no rebalance replays work mid-test.
    let worker_group = isolation
        .iter()
        .find(|(k, _)| k == "RISKSTREAM__WORKER__GROUP_ID")
        .map(|(_, v)| v.clone())
        .unwrap();
    wait_for_stable_groups(&worker_group, by_cmd("worker")[0].replicas);
    let ingest = &listen_of["ingest"];
    let api = &listen_of["api"];
    let http = reqwest::Client::new();
    // The api as Grafana reads it.
    let grafana = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                grafana_authorization().parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let stranger = http
        .post(format!("http://{ingest}/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(String::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.status().as_u16(),
        401,
        "compose ships with auth on"
    );

    // Generated traffic (fraud patterns included) through the HTTP front door.
    let events: Vec<String> = Generator::new(GeneratorConfig {
        seed: 11,
        start_time_ms: riskstream_common::now_ms() - 600_000,
        ..GeneratorConfig::default()
    })
    .take(EVENTS)
    .map(|e| String::from_utf8(e.to_json_bytes()).unwrap())
    .collect();
    let mut ids = BTreeSet::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (i, chunk) in events.chunks(BATCH).enumerate() {
        let mut req = http
            .post(format!("http://{ingest}/v1/events"))
            .header("authorization", DEMO_CLIENT)
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"));
        if i == 0 {
            req = req.header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let body: Value = r.json().await.unwrap();
        for res in body["results"].as_array().unwrap() {
            assert_eq!(res["status"], "accepted", "{res}");
            ids.insert(res["event_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), EVENTS);

    // Every event decided, in ClickHouse, exactly once.
    let table = format!("{db}.decisions");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n: usize = ch
            .query(&format!("SELECT count() FROM {table}"))
            .trim()
            .parse()
            .unwrap_or(0);
        if n >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {EVENTS} decisions stored"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let anything duplicated arrive before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored: Vec<String> = ch
        .query(&format!("SELECT event_id FROM {table}"))
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(stored.len(), EVENTS, "no duplicate decision rows");
    let stored: BTreeSet<String> = stored.into_iter().collect();
    assert_eq!(stored, ids, "every accepted event, and only those, decided");

    // Both replicas of one group did part of the work.
    for admin in &worker_admins {
        let n = decided(&http, admin).await;
        assert!(n > 0.0, "worker {admin} decided nothing");
    }

    // The first batch's trace: ingest, the worker and the decision, from the api.
    support::wait_for_pipeline_trace(&grafana, api, trace_id, Duration::from_secs(60)).await;

    // A span the collector cannot store (an all-zero trace id): rejected and dead-lettered,
    // as the dashboard's DLQ panels count. The collector prints a labelled family only
    // once it has a series, so this is what makes those families appear.
    let collector = &listen_of["collector"];
    let bad_span = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"compose-test"}}]},
      "scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174",
      "name":"bad","kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000"}]}]}]}"#;
    let r = http
        .post(format!("http://{collector}/v1/traces"))
        .header("authorization", DEMO_OTLP)
        .header("content-type", "application/json")
        .body(bad_span)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "partial success: {:?}",
        r.text().await
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_text(&http, collector).await;
        if text
            .lines()
            .any(|l| l.starts_with("collector_dead_lettered_records_total{"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rejected span was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every metric the dashboard queries is exported by some running service.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/pipeline.json")).unwrap(),
    )
    .expect("pipeline.json is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| promql_metrics(e)).collect();
    assert!(queried.len() >= 5, "the dashboard queries only {queried:?}");
    assert_eq!(
        metrics_at.len(),
        services
            .iter()
            .filter(|s| SERVES_METRICS.contains(&s.command[0].as_str()))
            .map(|s| s.replicas)
            .sum::<usize>(),
        "every replica of every service with /metrics was started"
    );
    // Series name -> (services exporting it, whether one of them has a sample).
    let mut exported: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    for (service, addr) in &metrics_at {
        for (name, sampled) in exported_series(&metrics_text(&http, addr).await) {
            let e = exported.entry(name).or_default();
            e.0.push(service.clone());
            e.1 |= sampled;
        }
    }
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|m| !exported.contains_key(*m))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries {unknown:?}, which no service exports (exported: {:?})",
        exported.keys().collect::<Vec<_>>()
    );
    // The panels this traffic feeds have data: events, decisions by outcome, decision
    // latency, spans.
    for m in [
        "riskstream_ingest_events_accepted_total",
        "riskstream_worker_events_total",
        "riskstream_worker_decisions_total",
        "riskstream_worker_processing_latency_seconds_bucket",
        "collector_stored_rows_total",
    ] {
        assert!(queried.contains(m), "the dashboard no longer queries {m}");
        assert!(
            exported[m].1,
            "no service has a sample of {m} after the traffic"
        );
    }
    drop(procs);
}

/// The dashboard's metric names are read from PromQL as Prometheus reads them.
#[test]
fn promql_metric_names_exclude_functions_labels_and_durations() {
    let names = promql_metrics(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{result="late", x=~"b|c"}[$__rate_interval])))
           / on (job) group_left (instance) b_total offset 5m > bool 3 or vector(0) and c unless d:rule"#,
    );
    let want: BTreeSet<String> = ["a_seconds_bucket", "b_total", "c", "d:rule"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
    let series = exported_series(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n# TYPE c counter\n# TYPE g gauge\ng 2\n# EOF\n",
    );
    let names: Vec<(&str, bool)> = series.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        names,
        [
            ("c_total", false),
            ("g", true),
            ("h_bucket", true),
            ("h_count", true),
            ("h_sum", true)
        ]
    );
}
