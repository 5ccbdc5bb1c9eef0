//! The demo's terminal: live progress in place (events/s, decisions by outcome, decision
//! latency p50/p99, consumer lag, spans stored) read from the decisions topic, the services'
//! metrics and the trace store; and the ready-to-paste GET lines for a declined event whose
//! trace and decision are really stored (printed once they are, on Enter, and at the end).

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use riskstream_common::kafka::KafkaConfig;
use riskstream_common::shutdown::CancellationToken;
use riskstream_common::{Decision, Outcome};
use riskstream_store::TraceStore;
use tokio::io::AsyncBufReadExt as _;

use super::traffic::Sent;

/// How often the display is redrawn.
const REDRAW: Duration = Duration::from_millis(500);
/// How often a plain progress line is printed when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Flagged decisions kept as candidates for the GET lines.
const CANDIDATES: usize = 64;
/// Latency percentiles cover the last one to two of these.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);
/// The worker's consumer-lag gauge (summed over its stages).
const LAG_METRIC: &str = "riskstream_worker_consumer_lag";

/// Where the GET lines point.
#[derive(Debug, Clone)]
pub struct Urls {
    pub api: String,
    pub worker: String,
}

/// Everything the display reads.
pub struct Sources {
    pub kafka: KafkaConfig,
    pub sent: Arc<Sent>,
    pub store: Arc<dyn TraceStore>,
    pub collector: riskstream_trace_collector::metrics::Metrics,
    pub urls: Urls,
}

struct Stats {
    started: Instant,
    by_outcome: BTreeMap<Outcome, u64>,
    /// Posted to ingest to decision read back here, microseconds: this window and the last.
    end_to_end_us: [Histogram<u64>; 2],
    /// Inside the worker (read to produce), microseconds: this window and the last.
    worker_us: [Histogram<u64>; 2],
    window_started: Instant,
    lag: Option<i64>,
    last_accepted: u64,
    last_tick: Instant,
    events_per_sec: f64,
    /// Flagged decisions, newest last: declines, and the rest of review and above.
    declined: VecDeque<Decision>,
    flagged: VecDeque<Decision>,
}

impl Stats {
    fn new() -> Self {
        let hist = || Histogram::new_with_bounds(1, 600_000_000, 2).expect("histogram bounds");
        Self {
            started: Instant::now(),
            by_outcome: BTreeMap::new(),
            end_to_end_us: [hist(), hist()],
            worker_us: [hist(), hist()],
            window_started: Instant::now(),
            lag: None,
            last_accepted: 0,
            last_tick: Instant::now(),
            events_per_sec: 0.0,
            declined: VecDeque::new(),
            flagged: VecDeque::new(),
        }
    }

    fn record(&mut self, d: Decision, posted_at_ms: Option<i64>) {
        *self.by_outcome.entry(d.outcome).or_default() += 1;
        if let Some(posted) = posted_at_ms {
            let e2e_ms = (riskstream_common::now_ms() - posted).max(0);
            let _ = self.end_to_end_us[0].record(
                u64::try_from(e2e_ms)
                    .unwrap_or(0)
                    .saturating_mul(1000)
                    .max(1),
            );
        }
        let _ = self.worker_us[0].record(d.processing_latency_us.max(1));
        let keep = |q: &mut VecDeque<Decision>, d: Decision| {
            q.push_back(d);
            if q.len() > CANDIDATES {
                q.pop_front();
            }
        };
        match d.outcome {
            Outcome::Decline => keep(&mut self.declined, d),
            o if o >= Outcome::Review => keep(&mut self.flagged, d),
            _ => {}
        }
    }

    /// `decisions: approve=N review=N ...` (the line scripts read).
    fn outcomes_line(&self) -> String {
        let counts: Vec<String> = self
            .by_outcome
            .iter()
            .map(|(o, n)| format!("{o}={n}"))
            .collect();
        format!("decisions: {}", counts.join(" "))
    }

    fn decided(&self) -> u64 {
        self.by_outcome.values().sum()
    }

    fn status(&self, sent: &Sent, spans_stored: u64) -> String {
        // Percentiles of the last one to two windows, not of the whole run (start-up's
        // group join would dominate them for good).
        let ms = |h: &[Histogram<u64>; 2], q: f64| {
            let mut both = h[0].clone();
            let _ = both.add(&h[1]);
            both.value_at_quantile(q) as f64 / 1000.0
        };
        let lag = self.lag.map_or_else(|| "-".to_string(), |l| l.to_string());
        format!(
            "{:>4}s  events {} ({:.0}/s, {} refused)  decided {}  lag {}  spans stored {}\n\
             {}\n\
             decision latency (posted to decided, last {}-{} s) p50 {:.1} ms  p99 {:.1} ms  (in the worker p50 {:.2} ms  p99 {:.2} ms)",
            self.started.elapsed().as_secs(),
            sent.accepted.load(Ordering::Relaxed),
            self.events_per_sec,
            sent.refused.load(Ordering::Relaxed),
            self.decided(),
            lag,
            spans_stored,
            self.outcomes_line(),
            LATENCY_WINDOW.as_secs(),
            2 * LATENCY_WINDOW.as_secs(),
            ms(&self.end_to_end_us, 0.5),
            ms(&self.end_to_end_us, 0.99),
            ms(&self.worker_us, 0.5),
            ms(&self.worker_us, 0.99),
        )
    }

    fn tick(&mut self, sent: &Sent) {
        let accepted = sent.accepted.load(Ordering::Relaxed);
        let secs = self.last_tick.elapsed().as_secs_f64().max(1e-3);
        self.events_per_sec = (accepted - self.last_accepted.min(accepted)) as f64 / secs;
        self.last_accepted = accepted;
        self.last_tick = Instant::now();
        if self.window_started.elapsed() >= LATENCY_WINDOW {
            self.window_started = Instant::now();
            for h in [&mut self.end_to_end_us, &mut self.worker_us] {
                h.swap(0, 1);
                h[0].reset();
            }
        }
    }
}

/// Sums the worker's consumer-lag gauges from its `/metrics`.
async fn worker_lag(http: &reqwest::Client, worker: &str) -> Option<i64> {
    let text = http
        .get(format!("{worker}/metrics"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let lags: Vec<i64> = text
        .lines()
        .filter(|l| l.starts_with(LAG_METRIC))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

/// The GET lines for `d`, if its trace (with ingest and worker spans) and its decision are
/// stored and its card is known.
async fn explore_lines(src: &Sources, d: &Decision) -> Option<Vec<String>> {
    let spans = src.store.trace(&d.trace_id).await.ok()?;
    let has = |service: &str| spans.iter().any(|s| s.service_name == service);
    if !(has("riskstream-ingest") && has("riskstream-worker")) {
        return None;
    }
    src.store
        .decision(&d.event_id.to_string())
        .await
        .ok()
        .flatten()?;
    let card = src.sent.card_of(&d.event_id)?;
    let reasons: Vec<String> = d
        .reasons
        .iter()
        .map(|r| format!("{}:{}", r.kind, r.code))
        .collect();
    let Urls { api, worker } = &src.urls;
    Some(vec![
        format!(
            "explore a {} event (score {:.3}, reasons [{}]): its trace ({} spans), its decision, its card's features, the pages",
            d.outcome,
            d.score,
            reasons.join(", "),
            spans.len()
        ),
        format!("  curl -s {api}/v1/traces/{}", d.trace_id),
        format!("  curl -s {api}/api/traces/{}", d.trace_id),
        format!("  curl -s {api}/v1/decisions/{}", d.event_id),
        format!("  curl -s {worker}/v1/features/card_id/{card}"),
        format!("  curl -s {api}/ui/"),
        format!("  browser: {api}/ui/traces/{}", d.trace_id),
    ])
}

/// The GET lines for the newest flagged decision that is fully stored (declines first).
async fn best_explore_lines(src: &Sources, stats: &Stats) -> Option<Vec<String>> {
    let newest = |q: &VecDeque<Decision>| q.iter().rev().take(8).cloned().collect::<Vec<_>>();
    for d in newest(&stats.declined)
        .iter()
        .chain(&newest(&stats.flagged))
    {
        if let Some(lines) = explore_lines(src, d).await {
            return Some(lines);
        }
    }
    None
}

/// Prints above the live display (or plainly when stdout is no terminal).
fn print_lines(bar: &ProgressBar, tty: bool, lines: &[String]) {
    for l in lines {
        if tty {
            bar.println(l);
        } else {
            println!("{l}");
        }
    }
}

/// Runs the display until `shutdown`, then prints the final summary and GET lines.
pub async fn run(src: Sources, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer = src
        .kafka
        .consumer(&format!("demo-progress-{}", riskstream_common::now_ms()))?;
    consumer.subscribe(&[src.kafka.topics.decisions.as_str()])?;
    let tty = std::io::stdout().is_terminal();
    let bar = if tty {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    let http = reqwest::Client::new();
    let mut stats = Stats::new();
    let mut redraw = tokio::time::interval(REDRAW);
    let mut last_plain = Instant::now();
    let mut explored = false;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = tty;
    if tty {
        bar.println("press Enter for GET lines of a declined event; Ctrl-C stops");
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => {
                if let Ok(m) = m
                    && let Some(d) = m.payload().and_then(|p| serde_json::from_slice::<Decision>(p).ok())
                {
                    let posted = src.sent.posted_at_ms(&d.event_id);
                    stats.record(d, posted);
                }
            }
            line = stdin.next_line(), if stdin_open => {
                match line {
                    Ok(Some(_)) => match best_explore_lines(&src, &stats).await {
                        Some(lines) => print_lines(&bar, tty, &lines),
                        None => print_lines(&bar, tty, &["no flagged event is fully stored yet".into()]),
                    },
                    _ => stdin_open = false,
                }
            }
            _ = redraw.tick() => {
                stats.tick(&src.sent);
                stats.lag = worker_lag(&http, &src.urls.worker).await.or(stats.lag);
                let status = stats.status(&src.sent, src.collector.spans_stored());
                bar.set_message(status.clone());
                bar.tick();
                if !tty && last_plain.elapsed() >= PLAIN_EVERY {
                    last_plain = Instant::now();
                    println!("{}", status.replace('\n', "  |  "));
                }
                if !explored && let Some(lines) = best_explore_lines(&src, &stats).await {
                    explored = true;
                    print_lines(&bar, tty, &lines);
                }
            }
        }
    }
    bar.finish_and_clear();
    println!("{}", stats.status(&src.sent, src.collector.spans_stored()));
    println!("{}", stats.outcomes_line());
    if let Some(lines) = best_explore_lines(&src, &stats).await {
        println!("(stopped; while a demo runs these answer)");
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}
