//! Criterion benchmark of the feature core: state update + feature read per event for the
//! shipped feature set (`config/features.toml`) on generated traffic (100k accounts, realistic
//! key cardinalities), on one thread. Also prints the approximate bytes per key state.
//!
//! Run: `cargo bench -p riskstream-features --bench features`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use riskstream_common::{Event, FeatureValue};
use riskstream_features::{FeatureEngine, FeatureSet, StateConfig};
use uuid::Uuid;

/// Accounts (override with `FEATURES_BENCH_ACCOUNTS`); devices, ips and merchants scale along.
const DEFAULT_ACCOUNTS: u32 = 100_000;

fn accounts() -> u32 {
    std::env::var("FEATURES_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_ACCOUNTS)
}
/// Generated events, replayed in a loop with times shifted forward on every pass.
const EVENTS: usize = 200_000;
/// Events per measured iteration.
const BATCH: usize = 10_000;

fn feature_set() -> FeatureSet {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/features.toml");
    match FeatureSet::from_file(path) {
        Ok(set) => set,
        Err(e) => panic!("{e}"),
    }
}

/// Deterministic traffic: ~1000 events per second of event time; 1-2 cards per account,
/// 0.8 devices, 0.5 ips and 0.05 merchants per account (merchants skewed: a few large ones),
/// devices and ips shared between some accounts.
fn generate(n: usize) -> Vec<Event> {
    let accounts = accounts();
    let devices = (accounts / 5 * 4).max(1);
    let ips = (accounts / 2).max(1);
    let merchants = (accounts / 20).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut t_ms = 1_790_000_000_000_i64;
    (0..n)
        .map(|_| {
            t_ms += rng.random_range(0..=2);
            let account = rng.random_range(0..accounts);
            let skew: f64 = rng.random();
            let merchant = (skew * skew * f64::from(merchants)) as u32;
            let amount = if rng.random_bool(0.1) {
                f64::from(rng.random_range(1..200u32)) / 100.0
            } else {
                f64::from(rng.random_range(100..100_000u32)) / 100.0
            };
            Event {
                event_id: Uuid::from_u128(rng.random()),
                event_time_ms: t_ms,
                account_id: Some(format!("acc-{account:06}")),
                card_id: Some(format!("card-{account:06}-{}", rng.random_range(0..2))),
                device_id: Some(format!(
                    "dev-{:06}",
                    if rng.random_bool(0.9) {
                        account % devices
                    } else {
                        rng.random_range(0..devices)
                    }
                )),
                ip: Some(format!(
                    "10.{}.{}.{}",
                    (account % ips) >> 16,
                    ((account % ips) >> 8) & 0xff,
                    account % 256
                )),
                merchant_id: Some(format!("m-{merchant:05}")),
                email: Some(format!("u{account}@example.com")),
                amount: Some(amount),
                currency: Some("EUR".into()),
                country: Some(["DE", "FR", "NL", "US"][rng.random_range(0..4)].into()),
                channel: Some("web".into()),
                event_type: Some(
                    if rng.random_bool(0.9) {
                        "payment"
                    } else {
                        "refund"
                    }
                    .into(),
                ),
                attributes: Default::default(),
            }
        })
        .collect()
}

/// Replays `events` forever, shifting all times forward by the span on each pass.
struct Replay {
    events: Vec<Event>,
    pos: usize,
    span_ms: i64,
}

impl Replay {
    fn new(events: Vec<Event>) -> Self {
        let span_ms = events.last().map_or(0, |e| e.event_time_ms)
            - events.first().map_or(0, |e| e.event_time_ms)
            + 1;
        Self {
            events,
            pos: 0,
            span_ms,
        }
    }

    /// The next batch (shifting times outside of any measurement when wrapping).
    fn next_batch(&mut self) -> &[Event] {
        if self.pos + BATCH > self.events.len() {
            for e in &mut self.events {
                e.event_time_ms += self.span_ms;
            }
            self.pos = 0;
        }
        let b = &self.events[self.pos..self.pos + BATCH];
        self.pos += BATCH;
        b
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn bench_features(c: &mut Criterion) {
    let mut replay = Replay::new(generate(EVENTS));
    let engine = FeatureEngine::new(feature_set(), StateConfig::default());
    let features = engine.feature_set().len();

    // Warm up: two passes, so steady-state keys exist and windows hold history.
    let rss_before = rss_bytes();
    let mut out: Vec<FeatureValue> = Vec::with_capacity(features);
    let warm_start = Instant::now();
    for _ in 0..(2 * EVENTS / BATCH) {
        for e in replay.next_batch() {
            out.clear();
            engine.process_event_into(e, &mut out);
        }
    }
    let warm = warm_start.elapsed();
    engine.run_pending_tasks();
    let keys = engine.entry_count().max(1);
    let rss_after = rss_bytes();
    eprintln!(
        "feature core: {} accounts, {features} features in {} groups; warm-up {} events in {warm:?} ({:.0} events/s)",
        accounts(),
        engine.feature_set().groups().len(),
        2 * EVENTS,
        (2 * EVENTS) as f64 / warm.as_secs_f64()
    );
    eprintln!(
        "state: {keys} keys, weigher estimate {} bytes ({} bytes/key)",
        engine.weighted_size_bytes(),
        engine.weighted_size_bytes() / keys
    );
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        eprintln!(
            "state: rss grew {} bytes ({} bytes/key)",
            b.saturating_sub(a),
            b.saturating_sub(a) / keys
        );
    }

    let mut group = c.benchmark_group("feature_core");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("process_event_into/shipped_set", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = replay.next_batch();
                let start = Instant::now();
                for e in batch {
                    out.clear();
                    engine.process_event_into(black_box(e), &mut out);
                    black_box(&out);
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.bench_function("process_all/shipped_set", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = replay.next_batch();
                let start = Instant::now();
                for e in batch {
                    black_box(engine.process_all(black_box(e)));
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
    engine.run_pending_tasks();
    eprintln!("stats after run: {:?}", engine.stats().snapshot());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = bench_features
}
criterion_main!(benches);
