//! `riskstream produce`: sends events straight to Kafka (no HTTP) from an NDJSON file, stdin, or
//! the synthetic generator, at a target rate or as fast as possible, with a progress bar and a
//! final summary. Invalid lines are reported with their line number and not sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::kafka::{header, headers};
use riskstream_common::trace_context::TraceParent;
use riskstream_common::{DecodeLimits, Event, EventDecoder, now_ms};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::setup::{Failure, ServiceArgs, load_config, logging_only};

#[derive(Debug, Args, Clone)]
pub struct ProduceArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to send to (default: the configured events topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// NDJSON file of events; `-` reads stdin.
    #[arg(long, conflicts_with = "count")]
    pub file: Option<PathBuf>,
    /// Number of synthetic events to generate.
    #[arg(long)]
    pub count: Option<u64>,
    /// Target events per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Generator seed: the same seed and start time give the same events.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Generated events per second of event time, independent of `--rate` (a lower value
    /// compresses time: at 10 and `--rate 7000`, a day of event time passes in about two
    /// minutes, so a soak reaches the longest windows' steady state).
    #[arg(long, default_value_t = 1000.0, value_parser = positive_rate)]
    pub event_time_rate: f64,
    /// Event time of the first generated event (RFC 3339 or epoch ms; default: now).
    #[arg(long)]
    pub start_time: Option<String>,
    /// Share of generated events that start a fraud pattern (0..1).
    #[arg(long, default_value_t = 0.02)]
    pub fraud_share: f64,
    /// Number of distinct generated accounts.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u32,
    /// Event field used as the record key.
    #[arg(long, default_value = "account_id")]
    pub partition_key: String,
    /// Most records awaiting acknowledgement at once.
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub invalid: u64,
    pub elapsed: Duration,
    /// Send-to-ack latencies, microseconds.
    pub latencies_us: Vec<u64>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let cfg = load_config(
        &ServiceArgs {
            config: args.config.clone(),
            brokers: args.brokers.clone(),
            listen: None,
        },
        None,
    )?;
    let _telemetry = logging_only(&cfg);
    if args.file.is_none() && args.count.is_none() {
        return Err(Failure::Usage(vec![
            "give --file FILE (or - for stdin) or --count N".into(),
        ]));
    }
    if !riskstream_common::event::fields::ENTITY_FIELDS.contains(&args.partition_key.as_str()) {
        return Err(Failure::Usage(vec![format!(
            "--partition-key {:?} is not an entity field",
            args.partition_key
        )]));
    }
    let start_time_ms = match &args.start_time {
        None => now_ms(),
        Some(s) => {
            let v = s
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::String(s.clone()));
            riskstream_common::event::parse_event_time(&v)
                .map_err(|e| Failure::Usage(vec![format!("--start-time: {}", e.reason)]))?
        }
    };
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| cfg.kafka.topics.events.clone());
    let producer: FutureProducer = cfg
        .kafka
        .producer()
        .context("creating the kafka producer")?;
    let summary = produce(&producer, &topic, &args, start_time_ms).await?;
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    println!(
        "summary: sent={} acked={} errors={} invalid={} elapsed={:.2}s rate={:.0} events/s",
        summary.sent,
        summary.acked,
        summary.errors,
        summary.invalid,
        summary.elapsed.as_secs_f64(),
        summary.rate()
    );
    if summary.errors > 0 || summary.invalid > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} event(s) not acknowledged, {} invalid",
            summary.errors,
            summary.invalid
        )));
    }
    Ok(())
}

enum Source {
    Generator(Box<Generator>, u64),
    Lines(Box<dyn tokio::io::AsyncBufRead + Unpin + Send>, u64),
}

impl Source {
    /// The next event, or a numbered invalid line, or the end.
    async fn next(&mut self, decoder: &EventDecoder) -> Option<Result<Event, String>> {
        match self {
            Source::Generator(g, left) => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                Some(Ok(g.next_event()))
            }
            Source::Lines(r, line_no) => loop {
                let mut line = String::new();
                match r.read_line(&mut line).await {
                    Ok(0) => return None,
                    Ok(_) => {
                        *line_no += 1;
                        if line.trim().is_empty() {
                            continue;
                        }
                        return Some(
                            decoder
                                .decode_slice(line.trim().as_bytes(), now_ms())
                                .map_err(|e| format!("line {line_no}: {e}")),
                        );
                    }
                    Err(e) => return Some(Err(format!("line {}: {e}", *line_no + 1))),
                }
            },
        }
    }
}

/// Sends every event of the source, keeping at most `max_in_flight` unacknowledged.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    args: &ProduceArgs,
    start_time_ms: i64,
) -> Result<Summary, Failure> {
    let mut source = match (&args.file, args.count) {
        (Some(path), _) if path.as_os_str() == "-" => {
            Source::Lines(Box::new(BufReader::new(tokio::io::stdin())), 0)
        }
        (Some(path), _) => {
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| Failure::Usage(vec![format!("--file {}: {e}", path.display())]))?;
            Source::Lines(Box::new(BufReader::new(f)), 0)
        }
        (None, Some(n)) => Source::Generator(
            Box::new(Generator::new(GeneratorConfig {
                seed: args.seed,
                start_time_ms,
                fraud_share: args.fraud_share,
                accounts: args.accounts.max(1),
                events_per_sec: args.event_time_rate,
                ..GeneratorConfig::default()
            })),
            n,
        ),
        (None, None) => return Err(Failure::Usage(vec!["nothing to produce".into()])),
    };
    let decoder = EventDecoder::new(DecodeLimits {
        required_key: Some(args.partition_key.clone()),
        ..DecodeLimits::default()
    });
    let bar = progress_bar(args);
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut summary = Summary::default();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut latencies = Vec::new();
    loop {
        while in_flight.len() >= args.max_in_flight.max(1) {
            if let Some(lat) = in_flight.next().await {
                record(lat, &acked, &errors, &mut latencies, &bar);
            }
        }
        let Some(item) = source.next(&decoder).await else {
            break;
        };
        let event = match item {
            Ok(e) => e,
            Err(msg) => {
                summary.invalid += 1;
                say(&bar, format!("invalid: {msg}"));
                continue;
            }
        };
        if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(summary.sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                // Drain acknowledgements while waiting for the next send slot.
                let sleep = tokio::time::sleep(due - now);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        Some(lat) = in_flight.next(), if !in_flight.is_empty() => {
                            record(lat, &acked, &errors, &mut latencies, &bar);
                        }
                    }
                }
            }
        }
        let key = event
            .field_str(&args.partition_key)
            .unwrap_or_default()
            .to_string();
        let payload = event.to_json_bytes();
        let traceparent = TraceParent::new_root().to_string();
        let ts = event.event_time_ms;
        let producer = producer.clone();
        let topic = topic.to_string();
        in_flight.push(async move {
            let t0 = Instant::now();
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .timestamp(ts)
                .headers(headers([(header::TRACEPARENT, traceparent.as_str())]));
            producer
                .send(record, Timeout::Never)
                .await
                .map(|_| t0.elapsed().as_micros() as u64)
                .map_err(|(e, _)| e.to_string())
        });
        summary.sent += 1;
        if summary.sent % 1024 == 0 {
            update_bar(&bar, started, summary.sent, &acked, &errors);
        }
    }
    while let Some(lat) = in_flight.next().await {
        record(lat, &acked, &errors, &mut latencies, &bar);
    }
    update_bar(&bar, started, summary.sent, &acked, &errors);
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    summary.acked = acked.load(Ordering::Relaxed);
    summary.errors = errors.load(Ordering::Relaxed);
    summary.latencies_us = latencies;
    Ok(summary)
}

fn record(
    lat: Result<u64, String>,
    acked: &AtomicU64,
    errors: &AtomicU64,
    latencies: &mut Vec<u64>,
    bar: &ProgressBar,
) {
    match lat {
        Ok(us) => {
            acked.fetch_add(1, Ordering::Relaxed);
            latencies.push(us);
        }
        Err(e) => {
            if errors.fetch_add(1, Ordering::Relaxed) < 10 {
                say(bar, format!("not acknowledged: {e}"));
            }
        }
    }
}

/// Prints above the progress bar, or to stderr when there is none.
fn say(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

fn progress_bar(args: &ProduceArgs) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(args.count, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

fn update_bar(
    bar: &ProgressBar,
    started: Instant,
    sent: u64,
    acked: &AtomicU64,
    errors: &AtomicU64,
) {
    let a = acked.load(Ordering::Relaxed);
    bar.set_position(sent);
    bar.set_message(format!(
        "{:.0} events/s, acked {a}, errors {}",
        a as f64 / started.elapsed().as_secs_f64().max(1e-9),
        errors.load(Ordering::Relaxed)
    ));
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive number of events per second"
        )),
    }
}
