//! Shared by the process-level tests: run `riskstream` subcommands as child processes (killed
//! on drop), read the `key=value` lines they print, and point them at a test's own topics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use riskstream_common::kafka::Topics;

pub const BIN: &str = env!("CARGO_BIN_EXE_riskstream");

/// A child process killed on drop.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        self.0.wait().expect("wait for child")
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `RISKSTREAM__KAFKA__TOPICS__*` for every topic of `topics`.
pub fn topics_env(topics: &Topics) -> Vec<(String, String)> {
    let t = topics;
    [
        ("EVENTS", &t.events),
        ("EVENTS_DLQ", &t.events_dlq),
        ("EVENTS_LATE", &t.events_late),
        ("DECISIONS", &t.decisions),
        ("OTLP_SPANS", &t.otlp_spans),
        ("SPANS_DLQ", &t.spans_dlq),
        ("RULES", &t.rules),
        ("LISTS", &t.lists),
        ("REPARTITION", &t.repartition),
        ("FEATURE_RESULTS", &t.feature_results),
        ("CHANGELOG", &t.changelog),
        ("WINDOW_OUTPUTS", &t.window_outputs),
        ("WINDOW_OUTPUTS_LATE", &t.window_outputs_late),
    ]
    .into_iter()
    .map(|(k, v)| (format!("RISKSTREAM__KAFKA__TOPICS__{k}"), v.clone()))
    .collect()
}

/// `riskstream <args>` in the repo root with `env`.
pub fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `riskstream <args>` in the repo root with `env`, waits for `<key>=VALUE` on stdout
/// and returns VALUE; stdout is drained afterwards so the child never blocks on it.
pub fn spawn(args: &[&str], env: &[(String, String)], key: &str) -> (Proc, String) {
    spawn_with_stderr(args, env, key, Stdio::inherit())
}

/// [`spawn`] with the child's stderr (its logs) going to `stderr`, e.g. a file to read later.
pub fn spawn_with_stderr(
    args: &[&str],
    env: &[(String, String)],
    key: &str,
    stderr: Stdio,
) -> (Proc, String) {
    let mut child = command(args, env)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn riskstream");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let prefix = format!("{key}=");
    let value = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("riskstream {args:?} exited before printing {key}="))
            .expect("stdout");
        if let Some(v) = line.strip_prefix(&prefix) {
            break v.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), value)
}

/// Runs `riskstream topics create` for `topics` on `bootstrap` and checks it succeeded.
pub fn create_topics(bootstrap: &str, topics: &Topics, partitions: u32) -> String {
    let out = command(
        &[
            "topics",
            "create",
            "--brokers",
            bootstrap,
            "--partitions",
            &partitions.to_string(),
        ],
        &topics_env(topics),
    )
    .output()
    .expect("run riskstream topics create");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "topics create failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls the api's Jaeger endpoint until trace `trace_id` holds spans of ingest and the worker
/// and the decision's produce span, and returns it (`data[0]` of the answer); panics with what
/// it had at `timeout`.
pub async fn wait_for_pipeline_trace(
    http: &reqwest::Client,
    api: &str,
    trace_id: &str,
    timeout: std::time::Duration,
) -> serde_json::Value {
    use std::collections::BTreeSet;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let r = http
            .get(format!("http://{api}/api/traces/{trace_id}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let (mut services, mut ops) = (BTreeSet::new(), BTreeSet::new());
        if status == 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            let trace = v["data"][0].clone();
            let names = |list: &serde_json::Value, field: &str| -> BTreeSet<String> {
                let items: Vec<&serde_json::Value> = match list {
                    serde_json::Value::Object(m) => m.values().collect(),
                    serde_json::Value::Array(a) => a.iter().collect(),
                    _ => Vec::new(),
                };
                items
                    .iter()
                    .filter_map(|x| x[field].as_str().map(String::from))
                    .collect()
            };
            services = names(&trace["processes"], "serviceName");
            ops = names(&trace["spans"], "operationName");
            if services.contains("riskstream-ingest")
                && services.contains("riskstream-worker")
                && ops.contains("riskstream.decision.produce")
            {
                return trace;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trace {trace_id} incomplete (HTTP {status}): services {services:?}, operations {ops:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
