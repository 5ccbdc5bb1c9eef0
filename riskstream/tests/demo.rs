//! `riskstream demo` as a newcomer runs it (the README's first command), on the embedded broker
//! and the in-memory store: it decides generated traffic with at least two outcomes, every GET
//! line it prints answers 200 with the trace, decision and features it names while the demo
//! runs, headless Chromium (Debian's `chromium`, installed by `scripts/test`) renders `/ui/` and
//! the trace's waterfall with every span of the trace, and the run ends cleanly at `--duration`
//! with its log in the file it names and nothing but progress on the terminal.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{BIN, Proc, repo};

/// Longer than the run: the demo must have ended by then.
const EXIT_WITHIN: Duration = Duration::from_secs(90);

/// The page `url` as headless Chromium renders it (its DOM after load).
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--timeout=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium (scripts/test installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every span id of a `/v1/traces/{id}` tree.
fn span_ids(nodes: &Value, out: &mut Vec<String>) {
    for n in nodes.as_array().into_iter().flatten() {
        out.push(n["span_id"].as_str().unwrap_or_default().to_string());
        span_ids(&n["children"], out);
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_decides_traffic_and_every_get_line_it_prints_answers() {
    let log = std::env::temp_dir().join(format!("{}.log", riskstream_testkit::unique("demo")));
    let mut child = Command::new(BIN)
        .current_dir(repo())
        .args(["demo", "--duration", "20s", "--listen", "127.0.0.1:0"])
        .args(["--seed", "7", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn riskstream demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut demo = Proc(child);

    // Wait for the first block of GET lines (printed once a flagged event is fully stored).
    let mut lines = Vec::new();
    let mut block: Vec<String> = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        lines.push(line.clone());
        if line.starts_with("explore a ") {
            block.clear();
        }
        if line.starts_with("  curl -s ") || line.starts_with("  browser: ") {
            block.push(line.clone());
        }
        if line.starts_with("  browser: ") {
            break;
        }
    }
    assert!(
        block.iter().any(|l| l.starts_with("  browser: ")),
        "the demo printed no GET lines: {}",
        lines.join("\n")
    );

    // Every curl line, while the demo runs.
    let http = reqwest::Client::new();
    let url_of = |l: &str| l.split_whitespace().last().unwrap_or_default().to_string();
    let curls: Vec<String> = block
        .iter()
        .filter(|l| l.starts_with("  curl -s "))
        .map(|l| url_of(l))
        .collect();
    assert!(curls.len() >= 5, "{block:?}");
    let mut trace_id = String::new();
    let mut spans = Vec::new();
    for url in &curls {
        let (status, body) = get_json(&http, url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let id = url.rsplit('/').next().unwrap_or_default();
        if url.contains("/v1/traces/") {
            let t: Value = serde_json::from_str(&body).expect("trace json");
            assert_eq!(t["trace_id"], id, "{body}");
            let services = t["services"].to_string();
            assert!(
                services.contains("riskstream-ingest") && services.contains("riskstream-worker"),
                "the trace crosses ingest and the worker: {services}"
            );
            span_ids(&t["roots"], &mut spans);
            trace_id = id.to_string();
        } else if url.contains("/api/traces/") {
            let t: Value = serde_json::from_str(&body).expect("jaeger json");
            assert_eq!(t["data"][0]["traceID"], id, "{body}");
        } else if url.contains("/v1/decisions/") {
            let d: Value = serde_json::from_str(&body).expect("decision json");
            assert_eq!(d["event_id"], id, "{body}");
            assert!(
                ["decline", "challenge", "review"].contains(&d["outcome"].as_str().unwrap_or("")),
                "the GET lines name a flagged decision: {body}"
            );
        } else if url.contains("/v1/features/card_id/") {
            let f: Value = serde_json::from_str(&body).expect("features json");
            assert_eq!(f["key"], id, "{body}");
            assert!(
                f["features"].as_object().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        } else if url.ends_with("/ui/") {
            assert!(body.contains("data-event-id="), "{body}");
        }
    }
    assert!(!trace_id.is_empty() && !spans.is_empty(), "{curls:?}");

    // Both pages in a real browser: every span of the trace is on its waterfall.
    let page = url_of(block.last().expect("browser line"));
    assert!(page.ends_with(&format!("/ui/traces/{trace_id}")), "{page}");
    let dom = chromium_dom(&page);
    for span in &spans {
        assert!(
            dom.contains(&format!("data-span-id=\"{span}\"")),
            "span {span} missing from the waterfall: {dom}"
        );
    }
    assert!(dom.contains("id=\"waterfall\"") && dom.contains(&trace_id));
    let index = chromium_dom(
        page.split("/ui/")
            .next()
            .map(|b| format!("{b}/ui/"))
            .as_deref()
            .unwrap_or_default(),
    );
    assert!(
        index.contains("id=\"decisions\"") && index.contains("data-event-id="),
        "{index}"
    );
    assert!(index.contains("/ui/traces/"), "{index}");

    // The run ends by itself, cleanly.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = demo.0.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < EXIT_WITHIN, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(200));
    };
    lines.extend(rx.try_iter());
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(l);
    }
    let stderr = err_reader.join().expect("stderr reader");
    let stdout = lines.join("\n");
    assert!(status.success(), "demo failed: {stdout}\n{stderr}");
    let outcomes: Vec<(String, u64)> = lines
        .iter()
        .rfind(|l| l.starts_with("decisions:"))
        .unwrap_or_else(|| panic!("no decisions summary in {stdout}"))
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        outcomes.len() >= 2,
        "decisions of at least two outcomes: {outcomes:?}"
    );
    assert!(
        outcomes.iter().map(|(_, n)| n).sum::<u64>() > 1000,
        "{outcomes:?}"
    );
    assert!(
        !stdout.contains("ERROR") && !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "a healthy demo prints no warning or error: {stderr}"
    );
    assert!(
        stdout.contains(&format!("log={}", log.display())),
        "{stdout}"
    );
    let logged = std::fs::read_to_string(&log).expect("the log file was written");
    assert!(
        logged.contains("riskstream_feature_worker"),
        "the services log to the file"
    );
    let _ = std::fs::remove_file(&log);
}
