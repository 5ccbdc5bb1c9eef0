//! The `riskstream` binary as a user runs it, against the run's Apache Kafka broker: `topics
//! create` provisioning, `produce` and `ingest` as processes, the printed addresses and the exit
//! codes; and `broker` (the embedded mock) on a chosen port.

mod support;

use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use riskstream_common::Event;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::topics::partition_counts;
use riskstream_testkit::kafka::{TestKafka, read_records, shared_bootstrap};
use support::{BIN, create_topics, spawn, topics_env};

fn test_topics() -> Topics {
    Topics::with_suffix(&riskstream_testkit::unique("cli"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_provisions_every_topic_idempotently_and_services_refuse_missing_ones() {
    let bootstrap = shared_bootstrap();
    let topics = test_topics();
    let first = create_topics(bootstrap, &topics, 3);
    assert_eq!(
        first.lines().filter(|l| l.starts_with("created ")).count(),
        topics.all().len(),
        "{first}"
    );
    // Idempotent: a second run creates nothing and reports what exists.
    let second = create_topics(bootstrap, &topics, 3);
    assert_eq!(
        second.lines().filter(|l| l.starts_with("exists ")).count(),
        topics.all().len(),
        "{second}"
    );
    let kafka = KafkaConfig {
        brokers: bootstrap.to_string(),
        ..KafkaConfig::default()
    };
    let parts = partition_counts(&kafka, Duration::from_secs(10)).unwrap();
    assert_eq!(parts[&topics.events], 3);
    assert_eq!(parts[&topics.repartition], 3);
    assert_eq!(
        parts[&topics.events_dlq], 1,
        "side outputs have one partition"
    );
    assert_eq!(
        parts[&topics.rules], 1,
        "control topics have one total order"
    );
    // Retention and cleanup policy as configured, read back from the broker.
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create().unwrap();
    let configs = admin
        .describe_configs(
            [
                &ResourceSpecifier::Topic(&topics.events),
                &ResourceSpecifier::Topic(&topics.rules),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let value = |i: usize, key: &str| -> String {
        let r = configs[i].as_ref().expect("describe configs");
        r.get(key)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("no {key}"))
    };
    assert_eq!(
        value(0, "retention.ms"),
        (7u64 * 24 * 3600 * 1000).to_string()
    );
    assert_eq!(value(0, "cleanup.policy"), "delete");
    assert_eq!(value(1, "retention.ms"), "-1", "rules are kept forever");

    // A service whose topics do not exist refuses to start, naming them (exit code 2).
    let missing = Topics::with_suffix(&riskstream_testkit::unique("missing"));
    let out = Command::new(BIN)
        .args(["ingest", "--brokers", bootstrap, "--listen", "127.0.0.1:0"])
        .envs(topics_env(&missing))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("topic `{}` does not exist", missing.events))
            && stderr.contains("riskstream topics create"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_round_trip_through_kafka_is_exact_and_deterministic() {
    let bootstrap = shared_bootstrap().to_string();
    let topics = test_topics();
    create_topics(&bootstrap, &topics, 3);
    let start = "2026-03-01T12:00:00Z";
    let n = 3000;
    let out = Command::new(BIN)
        .args([
            "produce",
            "--brokers",
            &bootstrap,
            "--count",
            &n.to_string(),
            "--seed",
            "7",
            "--topic",
            &topics.events,
        ])
        .args(["--start-time", start, "--event-time-rate", "50", "--quiet"])
        .output()
        .expect("run produce");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "produce failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("acked={n} errors=0")), "{stdout}");

    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        ..KafkaConfig::default()
    };
    // Ask for one more than was sent: exactly n come back.
    let records = read_records(&kafka, &topics.events, n + 1, Duration::from_secs(15)).await;
    assert_eq!(records.len(), n);
    let mut got: Vec<Event> = records
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    got.sort_by_key(|e| e.event_id);
    for r in &records {
        let e: Event = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(r.key_str(), e.account_id.as_deref(), "keyed by account_id");
        assert!(r.headers.contains_key("traceparent"));
    }
    // 3,000 events at 50 per second of event time span about a minute (the default, 1,000 a
    // second, would be 3 s).
    let times: Vec<i64> = got.iter().map(|e| e.event_time_ms).collect();
    let span_ms = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!(
        (45_000..=75_000).contains(&span_ms),
        "event time spans {span_ms} ms"
    );
    // The same seed, start time and event-time rate give exactly the same events, ids included.
    let start_ms = riskstream_common::event::parse_event_time(&serde_json::json!(start)).unwrap();
    let mut expected: Vec<Event> = Generator::new(GeneratorConfig {
        seed: 7,
        start_time_ms: start_ms,
        events_per_sec: 50.0,
        ..Default::default()
    })
    .take(n)
    .collect();
    expected.sort_by_key(|e| e.event_id);
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_from_a_file_reports_invalid_lines_and_sends_the_rest() {
    let filetopic = riskstream_testkit::unique("filetopic");
    let broker = TestKafka::start(2, &[&filetopic]);
    let bootstrap = broker.bootstrap.clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let now = riskstream_common::now_ms();
    std::fs::write(
        &path,
        format!(
            "{{\"event_time\": {now}, \"account_id\": \"a1\", \"amount\": 5, \"currency\": \"EUR\"}}\n\n{{\"event_time\": \"bad\", \"account_id\": \"a2\"}}\n{{\"event_time\": {now}, \"account_id\": \"a3\"}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "produce",
            "--brokers",
            &bootstrap,
            "--topic",
            &filetopic,
            "--quiet",
            "--file",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid lines make the run fail: {stdout}"
    );
    assert!(
        stdout.contains("sent=2 acked=2 errors=0 invalid=1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 3") && stderr.contains("event_time"),
        "{stderr}"
    );
    let kafka = KafkaConfig {
        brokers: bootstrap,
        ..KafkaConfig::default()
    };
    let records = read_records(&kafka, &filetopic, 3, Duration::from_secs(8)).await;
    let keys: Vec<&str> = records.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(records.len(), 2);
    assert!(keys.contains(&"a1") && keys.contains(&"a3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_process_prints_its_address_and_serves() {
    let topics = test_topics();
    let broker = TestKafka::with_topics(2, &topics);
    let (_ingest, addr) = spawn(
        &[
            "ingest",
            "--brokers",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ],
        &topics_env(&topics),
        "listening",
    );
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{addr}/v1/events"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"event_time\": {}, \"account_id\": \"a\"}}",
            riskstream_common::now_ms()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[test]
fn bad_usage_and_bad_config_exit_with_2_and_print_every_error() {
    let out = Command::new(BIN)
        .args(["ingest", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[ingest]\npartition_key = \"colour\"\n[telemetry]\nlog_format = \"xml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["ingest", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("partition_key") && stderr.contains("log_format"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["ingest"])
        .env("RISKSTREAM__INGEST__LISTN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

/// `riskstream check-args -- ARGS...` parsed by the binary's own parser.
fn check_args(args: &[String]) -> std::process::Output {
    Command::new(BIN)
        .arg("check-args")
        .arg("--")
        .args(args)
        .output()
        .unwrap()
}

/// Every command of a riskstream service in docker-compose.yml (the services built from this
/// repository's image, profiles included, merge keys applied) is one the binary's parser
/// accepts as it stands: subcommand, flags, values and conflicts, not only `--help`.
#[test]
fn compose_commands_are_accepted_by_the_binary() {
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&compose).unwrap();
    doc.apply_merge().unwrap();
    let mut checked = 0;
    for (name, s) in doc["services"].as_mapping().expect("services") {
        let ours = s.get("build").is_some()
            || s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("riskstream"));
        if !ours {
            continue;
        }
        let args: Vec<String> = match &s["command"] {
            serde_yaml_ng::Value::Sequence(seq) => seq
                .iter()
                .map(|a| match a {
                    serde_yaml_ng::Value::String(a) => a.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                })
                .collect(),
            other => panic!("service {name:?}: command is not a list: {other:?}"),
        };
        let out = check_args(&args);
        assert!(
            out.status.success(),
            "compose service {name:?}: command {args:?} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} compose commands found");
    // The check refuses what the parser refuses, and a bare help request.
    for bad in [
        &["worker", "--listne", "0.0.0.0:8081"][..],
        &["produce", "--count", "many"],
        &["produce", "--count", "1", "--event-time-rate", "0"],
        &["produce", "--file", "x.ndjson", "--count", "1"],
        &["ingest", "--help"],
        &["nosuchcommand"],
    ] {
        let bad: Vec<String> = bad.iter().map(|a| a.to_string()).collect();
        let out = check_args(&bad);
        assert_eq!(out.status.code(), Some(2), "check-args accepted {bad:?}");
    }
}

/// The shipped example configuration is valid and documents exactly the defaults.
#[test]
fn example_config_is_valid_and_shows_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/riskstream.toml");
    let from_file = Command::new(BIN)
        .args(["config", "--config", example])
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let defaults = Command::new(BIN).arg("config").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&from_file.stdout),
        String::from_utf8_lossy(&defaults.stdout)
    );
}

/// docs/configuration.md is what `scripts/config_reference.py` makes of `riskstream config`
/// today: every key, its default, its environment variable and its doc comment.
#[test]
fn the_configuration_reference_lists_every_key_with_its_default_and_env_name() {
    let defaults = Command::new(BIN).arg("config").output().unwrap();
    assert!(defaults.status.success());
    let mut script = Command::new("python3")
        .arg(support::repo().join("scripts/config_reference.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the generator");
    use std::io::Write as _;
    script
        .stdin
        .take()
        .unwrap()
        .write_all(&defaults.stdout)
        .unwrap();
    let generated = script.wait_with_output().unwrap();
    assert!(generated.status.success());
    let committed = std::fs::read_to_string(support::repo().join("docs/configuration.md")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&generated.stdout),
        "docs/configuration.md is stale: run `target/debug/riskstream config | scripts/config_reference.py > docs/configuration.md`"
    );
    // And it is a reference: one row per key, each with its env name.
    let text = String::from_utf8_lossy(&defaults.stdout);
    let keys = text
        .lines()
        .filter(|l| l.contains(" = ") && !l.starts_with('#'))
        .count();
    let rows = committed.matches("| `RISKSTREAM__").count();
    assert_eq!(rows, keys, "one documented row per configuration key");
}

/// `broker --port P` answers on P (forwarding to the mock cluster's own listener): the
/// embedded mock broker (the demo's and `riskstream broker`'s) still serves the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_broker_on_a_chosen_port_serves_produce_and_fetch() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_broker, bootstrap) = spawn(
        &["broker", "--partitions", "1", "--port", &port.to_string()],
        &[],
        "bootstrap",
    );
    assert_eq!(bootstrap, format!("127.0.0.1:{port}"));
    let out = Command::new(BIN)
        .args([
            "produce",
            "--brokers",
            &bootstrap,
            "--count",
            "50",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kafka = KafkaConfig {
        brokers: bootstrap,
        ..KafkaConfig::default()
    };
    let records = read_records(&kafka, "events", 51, Duration::from_secs(8)).await;
    assert_eq!(records.len(), 50);
}
