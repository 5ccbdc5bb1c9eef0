//! Criterion benchmark of the scoring core: one `Scorer::decide` per event with the shipped
//! configuration (6 CEL rules, the logistic champion, the 20-tree XGBoost challenger, the
//! logistic shadow, the allow/block lists), on one thread; and its parts alone.
//!
//! Run: `cargo bench -p riskstream-scoring --bench scoring`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use riskstream_common::{Event, FeatureValue};
use riskstream_scoring::rules::RuleInput;
use riskstream_scoring::{
    DecideContext, FeatureCatalog, FeatureKind, ModelInput, Scorer, ScoringConfig,
};
use uuid::Uuid;

/// Distinct (event, features) inputs, replayed round-robin.
const INPUTS: usize = 4_096;
const COUNTRIES: [&str; 4] = ["DE", "FR", "NL", "ES"];

type Input = (Event, BTreeMap<String, FeatureValue>);

fn scorer() -> Scorer {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let config = ScoringConfig {
        rules_path: root.join("config/rules.toml"),
        models_dir: root.join("config/models"),
        lists_path: Some(root.join("config/lists/lists.csv")),
        ..ScoringConfig::default()
    };
    let mut catalog = FeatureCatalog::numeric([
        "card_small_count_10m",
        "account_avg_amount_24h",
        "device_distinct_cards_1h",
        "account_time_since_last",
        "card_time_since_last_ms",
        "ip_count_5m",
    ]);
    catalog.insert("card_last_country", FeatureKind::Text);
    match Scorer::from_config(&config, catalog) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn inputs() -> Vec<Input> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..INPUTS)
        .map(|i| {
            let country = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
            let event = Event {
                event_id: Uuid::from_u128(i as u128 + 1),
                event_time_ms: 1_790_000_000_000 + i as i64 * 10,
                account_id: Some(format!("acc-{}", rng.random_range(0..100_000))),
                card_id: Some(format!("card-{}", rng.random_range(0..150_000))),
                device_id: Some(format!("dev-{}", rng.random_range(0..80_000))),
                ip: Some(format!(
                    "10.{}.{}.{}",
                    rng.random_range(0..255),
                    rng.random_range(0..255),
                    rng.random_range(1..255)
                )),
                merchant_id: Some(format!("m-{}", rng.random_range(0..5_000))),
                email: Some(format!("user{}@example.com", rng.random_range(0..100_000))),
                amount: Some(if rng.random_bool(0.05) {
                    rng.random_range(0.1..2.0)
                } else {
                    rng.random_range(2.0..400.0)
                }),
                currency: Some("EUR".into()),
                country: Some(country.into()),
                channel: Some("web".into()),
                event_type: Some("payment".into()),
                attributes: serde_json::Map::new(),
            };
            let maybe = |v: f64, missing: bool| {
                if missing {
                    FeatureValue::Null
                } else {
                    FeatureValue::Number(v)
                }
            };
            let small = f64::from(rng.random_range(0..8_u32));
            let avg = maybe(rng.random_range(5.0..200.0), rng.random_bool(0.1));
            let cards = f64::from(rng.random_range(1..6_u32));
            let account_gap = maybe(
                rng.random_range(1_000.0..86_400_000.0),
                rng.random_bool(0.1),
            );
            let card_gap = maybe(
                rng.random_range(1_000.0..86_400_000.0),
                rng.random_bool(0.1),
            );
            let ip = f64::from(rng.random_range(0..30_u32));
            let last_country = if rng.random_bool(0.1) {
                FeatureValue::Null
            } else {
                FeatureValue::Text(COUNTRIES[rng.random_range(0..COUNTRIES.len())].into())
            };
            let features = BTreeMap::from([
                (
                    "card_small_count_10m".to_string(),
                    FeatureValue::Number(small),
                ),
                ("account_avg_amount_24h".to_string(), avg),
                (
                    "device_distinct_cards_1h".to_string(),
                    FeatureValue::Number(cards),
                ),
                ("account_time_since_last".to_string(), account_gap),
                ("card_time_since_last_ms".to_string(), card_gap),
                ("ip_count_5m".to_string(), FeatureValue::Number(ip)),
                ("card_last_country".to_string(), last_country),
            ]);
            (event, features)
        })
        .collect()
}

fn bench_scoring(c: &mut Criterion) {
    let scorer = scorer();
    let inputs = inputs();
    let ctx = DecideContext::new("4bf92f3577b34da6a3ce929d0e0e4736");
    let mut g = c.benchmark_group("scoring");
    g.throughput(Throughput::Elements(1));

    let mut i = 0usize;
    g.bench_function(
        "decide (rules + champion + challenger + shadow + lists)",
        |b| {
            b.iter(|| {
                let (e, f) = &inputs[i % INPUTS];
                i += 1;
                black_box(scorer.decide(e, f, &ctx))
            })
        },
    );

    let rules = scorer.rules().current();
    let mut i = 0usize;
    g.bench_function(
        "rules only (6 cel rules, incl. building the cel input)",
        |b| {
            b.iter(|| {
                let (e, f) = &inputs[i % INPUTS];
                i += 1;
                black_box(rules.evaluate(&RuleInput::new(e, f)).fired.len())
            })
        },
    );

    let models = scorer.models();
    for active in models.all() {
        let name = format!(
            "model {} v{} ({})",
            active.model.name, active.model.version, active.role
        );
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let (event, features) = &inputs[i % INPUTS];
                i += 1;
                black_box(
                    active
                        .model
                        .score(&ModelInput { event, features })
                        .map(|o| o.score),
                )
            })
        });
    }

    let mut i = 0usize;
    g.bench_function("lists check (6 entities x 2 lists)", |b| {
        b.iter(|| {
            let (e, _) = &inputs[i % INPUTS];
            i += 1;
            black_box(scorer.lists().check(e))
        })
    });
    g.finish();

    let stats = scorer.stats();
    eprintln!("decisions by outcome over the run: {:?}", stats.decisions);
}

criterion_group!(benches, bench_scoring);
criterion_main!(benches);
