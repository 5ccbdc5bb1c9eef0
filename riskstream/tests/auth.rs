//! `riskstream auth` and authentication in the service processes: tokens are printed once and
//! stored only as hashes; a service with a tokens file refuses strangers, accepts a token added
//! while it runs, and writes no token to its logs (debug level); one without says it is open;
//! a broken tokens file stops start-up; `riskstream config` hides passwords.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use riskstream_common::kafka::Topics;
use riskstream_testkit::kafka::TestKafka;
use support::{BIN, spawn_with_stderr, topics_env};

fn auth(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("auth").args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `auth add-token`'s one line of stdout.
fn add_token(file: &str, name: &str, scopes: &str) -> String {
    let out = auth(&[
        "add-token",
        "--file",
        file,
        "--scopes",
        scopes,
        "--name",
        name,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {stdout}");
    assert!(lines[0].starts_with("rst_"), "{stdout}");
    lines[0].to_string()
}

#[test]
fn add_list_and_revoke_tokens_storing_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let file = file.to_str().unwrap();
    let client = add_token(file, "client-1", "events:write,decide");
    let grafana = add_token(file, "grafana", "traces:read");
    assert_ne!(client, grafana);
    let stored = std::fs::read_to_string(file).unwrap();
    assert!(
        !stored.contains(&client) && !stored.contains(&grafana),
        "{stored}"
    );
    assert!(stored.contains(&riskstream_auth::token::hash_hex(&client)));

    let list = auth(&["list", "--file", file]);
    assert!(list.status.success());
    let listed = text(&list.stdout);
    assert!(
        listed.contains("client-1") && listed.contains("events:write,decide"),
        "{listed}"
    );
    assert!(
        listed.contains("grafana") && !listed.contains(&grafana),
        "{listed}"
    );

    for bad in [
        vec![
            "add-token",
            "--file",
            file,
            "--scopes",
            "decide",
            "--name",
            "grafana",
        ],
        vec![
            "add-token",
            "--file",
            file,
            "--scopes",
            "root",
            "--name",
            "x",
        ],
        vec!["add-token", "--file", file, "--scopes", "", "--name", "x"],
        vec!["revoke", "--file", file, "--name", "nobody"],
    ] {
        let out = auth(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
    let revoked = auth(&["revoke", "--file", file, "--name", "grafana"]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let listed = text(&auth(&["list", "--file", file]).stdout);
    assert!(
        !listed.contains("grafana") && listed.contains("client-1"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_a_tokens_file_keeps_strangers_out_reloads_and_logs_no_token() {
    let topics = Topics::with_suffix(&riskstream_testkit::unique("auth"));
    let broker = TestKafka::with_topics(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let file_s = file.to_str().unwrap().to_string();
    let client = add_token(&file_s, "client", "events:write");
    let reader = add_token(&file_s, "reader", "traces:read");
    let log = dir.path().join("ingest.log");
    let mut env = topics_env(&topics);
    env.extend([
        ("RISKSTREAM__AUTH__TOKENS_FILE".to_string(), file_s.clone()),
        (
            "RISKSTREAM__AUTH__RELOAD_INTERVAL".to_string(),
            "200ms".to_string(),
        ),
        (
            "RISKSTREAM__TELEMETRY__LOG_LEVEL".to_string(),
            "debug".to_string(),
        ),
        (
            "RISKSTREAM__TELEMETRY__TRACES_EXPORTER".to_string(),
            "none".to_string(),
        ),
    ]);
    let (mut ingest, addr) = spawn_with_stderr(
        &[
            "ingest",
            "--brokers",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
        "listening",
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let http = reqwest::Client::new();
    let event = format!(
        "{{\"event_time\": {}, \"account_id\": \"a\"}}",
        riskstream_common::now_ms()
    );
    // The status of one POST /v1/events with `Bearer <token>` (no header for `None`).
    let status = async |token: Option<&str>| {
        let r = http
            .post(format!("http://{addr}/v1/events"))
            .header("content-type", "application/json")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(event.clone());
        let bearer = token.map(|t| format!("Bearer {t}"));
        riskstream_testkit::auth::authorized(r, bearer.as_deref())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let stranger = format!("rst_{}", riskstream_testkit::unique("stranger"));
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some(&stranger)).await, 401);
    assert_eq!(status(Some(&reader)).await, 403);
    assert_eq!(status(Some(&client)).await, 202);

    // A token added while ingest runs works without a restart.
    let late = add_token(&file_s, "late", "events:write");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(Some(&late)).await;
        if s == 202 {
            break;
        }
        assert_eq!(s, 401);
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file keeps the tokens in force.
    std::fs::write(&file, "[[token]\nbroken").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(Some(&late)).await, 202);

    assert!(ingest.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("bearer-token authentication on"), "{logs}");
    assert!(logs.contains("tokens file reloaded"), "{logs}");
    assert!(logs.contains("tokens file not reloaded"), "{logs}");
    assert!(logs.contains("DEBUG"), "debug logs were on: {logs}");
    for secret in [&client, &reader, &late, &stranger] {
        assert!(!logs.contains(secret.as_str()), "a token is in the logs");
        // Not even a recognisable part of one.
        assert!(
            !logs.contains(&secret[..16]),
            "part of a token is in the logs"
        );
    }
}

#[test]
fn services_without_tokens_say_they_are_open_and_a_broken_file_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let run_api = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["api", "--listen", "127.0.0.1:0"])
            .env("RISKSTREAM__TELEMETRY__TRACES_EXPORTER", "none")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    // Open: a warning at start, then it serves (stopped once it said so).
    let mut open = run_api(&[]);
    let mut stdout = std::io::BufReader::new(open.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("listening="), "{line}");
    let _ = Command::new("kill")
        .args(["-TERM", &open.id().to_string()])
        .status();
    let out = open.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains("authentication is OFF"), "{stderr}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[token]]\nname = 1\n").unwrap();
    for file in [broken.to_str().unwrap(), "/nonexistent/tokens.toml"] {
        let out = run_api(&[("RISKSTREAM__AUTH__TOKENS_FILE", file)])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("auth.tokens_file"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn config_shows_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[clickhouse]\npassword = \"hunter2\"\n[kafka.extra]\n\"security.protocol\" = \"SASL_SSL\"\n\
         \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"s3cret\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(
        shown.contains("\"sasl.password\" = \"<redacted>\""),
        "{shown}"
    );
    assert!(
        shown.contains("SASL_SSL") && shown.contains("\"svc\""),
        "{shown}"
    );
}
