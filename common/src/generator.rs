//! The synthetic traffic generator: realistic card-payment events with a share of fraud patterns
//! (card-testing bursts, one device across many cards, amount spikes, impossible travel).
//!
//! Deterministic: the same seed and start time give the same events, ids included. Events come
//! out in event-time order; each fraud event carries `attributes.synthetic_pattern`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::event::Event;

/// Shape of the generated population and traffic.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Event time of the first event, epoch ms.
    pub start_time_ms: i64,
    /// Average events per second of event time.
    pub events_per_sec: f64,
    pub accounts: u32,
    pub merchants: u32,
    /// Share of fraud-pattern starts among events, 0..=1.
    pub fraud_share: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            start_time_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            events_per_sec: 1000.0,
            accounts: 10_000,
            merchants: 1_000,
            fraud_share: 0.02,
        }
    }
}

/// The fraud patterns the generator plants.
pub mod pattern {
    pub const CARD_TESTING: &str = "card_testing";
    pub const DEVICE_FARM: &str = "device_farm";
    pub const AMOUNT_SPIKE: &str = "amount_spike";
    pub const IMPOSSIBLE_TRAVEL: &str = "impossible_travel";
}

const COUNTRIES: [(&str, &str, &str); 8] = [
    ("DE", "EUR", "81.2"),
    ("FR", "EUR", "90.3"),
    ("GB", "GBP", "86.4"),
    ("US", "USD", "23.5"),
    ("NL", "EUR", "145.6"),
    ("ES", "EUR", "88.7"),
    ("BR", "BRL", "177.8"),
    ("SG", "SGD", "103.9"),
];
const CHANNELS: [&str; 4] = ["web", "mobile", "pos", "api"];

/// An infinite, deterministic stream of events.
pub struct Generator {
    cfg: GeneratorConfig,
    rng: ChaCha8Rng,
    clock_ms: f64,
    seq: u64,
    /// Planted fraud events waiting for their time, ordered by (time, seq).
    pending: BTreeMap<(i64, u64), Event>,
}

struct Draft {
    account: u32,
    card: String,
    device: String,
    ip: String,
    country: usize,
    merchant: u32,
    amount: f64,
    channel: &'static str,
    pattern: Option<&'static str>,
}

impl Generator {
    pub fn new(cfg: GeneratorConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            clock_ms: cfg.start_time_ms as f64,
            cfg,
            seq: 0,
            pending: BTreeMap::new(),
        }
    }

    fn home_country(&self, account: u32) -> usize {
        (account as usize * 7 + 3) % COUNTRIES.len()
    }

    fn normal_draft(&mut self) -> Draft {
        // Zipf-like skew: a few accounts are much more active than most.
        let u: f64 = self.rng.random();
        let account = (u.powf(1.3) * self.cfg.accounts as f64) as u32 % self.cfg.accounts.max(1);
        let card_ix = if self.rng.random_bool(0.8) { 0 } else { 1 };
        let country = self.home_country(account);
        // Log-normal-ish amount around 40 in the home currency.
        let z: f64 = (0..6).map(|_| self.rng.random::<f64>()).sum::<f64>() - 3.0;
        let amount = (40.0 * (0.9 * z).exp()).clamp(1.0, 5_000.0);
        let merchant = self.rng.random_range(0..self.cfg.merchants.max(1));
        let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
        Draft {
            account,
            card: format!("card-{account:06}-{card_ix}"),
            device: format!("dev-{account:06}-{}", account % 2),
            ip: format!(
                "{}.{}.{}",
                COUNTRIES[country].2,
                account % 250 + 1,
                (account / 250) % 250 + 1
            ),
            country,
            merchant,
            amount: (amount * 100.0).round() / 100.0,
            channel,
            pattern: None,
        }
    }

    fn make_event(&mut self, d: Draft, time_ms: i64) -> Event {
        let mut id = [0u8; 10];
        self.rng.fill(&mut id);
        let event_id = uuid::Builder::from_unix_timestamp_millis(time_ms as u64, &id).into_uuid();
        let (country, currency, _) = COUNTRIES[d.country];
        let mut attributes = Map::new();
        attributes.insert(
            "mcc".into(),
            Value::String(format!("{}", 5000 + d.merchant % 900)),
        );
        if let Some(p) = d.pattern {
            attributes.insert("synthetic_pattern".into(), Value::String(p.into()));
        }
        Event {
            event_id,
            event_time_ms: time_ms,
            account_id: Some(format!("acc-{:06}", d.account)),
            card_id: Some(d.card),
            device_id: Some(d.device),
            ip: Some(d.ip),
            merchant_id: Some(format!("m-{:05}", d.merchant)),
            email: Some(format!("user{:06}@example.com", d.account)),
            amount: Some(d.amount),
            currency: Some(currency.to_string()),
            country: Some(country.to_string()),
            channel: Some(d.channel.to_string()),
            event_type: Some("payment".to_string()),
            attributes,
        }
    }

    fn plant(&mut self, d: Draft, time_ms: i64) {
        let e = self.make_event(d, time_ms);
        self.seq += 1;
        self.pending.insert((time_ms, self.seq), e);
    }

    /// Starts a fraud pattern at `now`: the first event is returned, the rest are planted.
    fn start_pattern(&mut self, now: i64) -> Draft {
        let base = self.normal_draft();
        match self.rng.random_range(0..4) {
            0 => {
                // Card testing: a stolen card tried with many tiny amounts within a minute or two.
                let n = self.rng.random_range(8..20);
                let card = format!("card-stolen-{:08x}", self.rng.random::<u32>());
                for i in 1..n {
                    let mut d = self.normal_draft();
                    d.card = card.clone();
                    d.amount = (self.rng.random_range(0.5..2.0_f64) * 100.0).round() / 100.0;
                    d.pattern = Some(pattern::CARD_TESTING);
                    d.channel = "web";
                    let t = now + i * self.rng.random_range(2_000..8_000);
                    self.plant(d, t);
                }
                Draft {
                    card,
                    amount: 1.0,
                    channel: "web",
                    pattern: Some(pattern::CARD_TESTING),
                    ..base
                }
            }
            1 => {
                // Device farm: one device used with many different cards within minutes.
                let n = self.rng.random_range(6..15);
                let device = format!("dev-farm-{:08x}", self.rng.random::<u32>());
                for i in 1..n {
                    let mut d = self.normal_draft();
                    d.device = device.clone();
                    d.pattern = Some(pattern::DEVICE_FARM);
                    let t = now + i * self.rng.random_range(10_000..40_000);
                    self.plant(d, t);
                }
                Draft {
                    device,
                    pattern: Some(pattern::DEVICE_FARM),
                    ..base
                }
            }
            2 => Draft {
                // Amount spike: far above this account's usual spend.
                amount: (base.amount * self.rng.random_range(20.0..60.0_f64)).round(),
                pattern: Some(pattern::AMOUNT_SPIKE),
                ..base
            },
            _ => {
                // Impossible travel: the same card in a far country minutes later.
                let far = (base.country + 3 + self.rng.random_range(0..3)) % COUNTRIES.len();
                let mut d = self.normal_draft();
                d.account = base.account;
                d.card = base.card.clone();
                d.device = format!("dev-travel-{:08x}", self.rng.random::<u32>());
                d.country = far;
                d.ip = format!("{}.9.9", COUNTRIES[far].2);
                d.pattern = Some(pattern::IMPOSSIBLE_TRAVEL);
                let t = now + self.rng.random_range(60_000..300_000);
                self.plant(d, t);
                Draft {
                    pattern: Some(pattern::IMPOSSIBLE_TRAVEL),
                    ..base
                }
            }
        }
    }

    /// The next event in event-time order.
    pub fn next_event(&mut self) -> Event {
        let gap_ms = {
            // Exponential inter-arrival times (Poisson traffic).
            let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
            -u.ln() * 1000.0 / self.cfg.events_per_sec.max(0.001)
        };
        let next_time = (self.clock_ms + gap_ms) as i64;
        if let Some(entry) = self.pending.first_entry()
            && entry.key().0 <= next_time
        {
            let ((time_ms, _), e) = entry.remove_entry();
            self.clock_ms = self.clock_ms.max(time_ms as f64);
            return e;
        }
        self.clock_ms += gap_ms;
        let now = self.clock_ms as i64;
        let draft = if self.rng.random_bool(self.cfg.fraud_share.clamp(0.0, 1.0)) {
            self.start_pattern(now)
        } else {
            self.normal_draft()
        };
        self.make_event(draft, now)
    }
}

impl Iterator for Generator {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventDecoder;

    #[test]
    fn same_seed_same_events() {
        let a: Vec<Event> = Generator::new(GeneratorConfig::default())
            .take(500)
            .collect();
        let b: Vec<Event> = Generator::new(GeneratorConfig::default())
            .take(500)
            .collect();
        assert_eq!(a, b);
        let c: Vec<Event> = Generator::new(GeneratorConfig {
            seed: 7,
            ..Default::default()
        })
        .take(500)
        .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn events_are_valid_ordered_and_contain_every_pattern() {
        let cfg = GeneratorConfig {
            fraud_share: 0.05,
            ..Default::default()
        };
        let start = cfg.start_time_ms;
        let events: Vec<Event> = Generator::new(cfg).take(20_000).collect();
        let dec = EventDecoder::default();
        let mut last = start;
        let mut ids = std::collections::HashSet::new();
        for e in &events {
            assert!(e.event_time_ms >= last, "out of order");
            last = e.event_time_ms;
            assert!(ids.insert(e.event_id), "duplicate id");
            dec.decode_slice(&e.to_json_bytes(), e.event_time_ms)
                .unwrap();
        }
        for p in [
            pattern::CARD_TESTING,
            pattern::DEVICE_FARM,
            pattern::AMOUNT_SPIKE,
            pattern::IMPOSSIBLE_TRAVEL,
        ] {
            let n = events
                .iter()
                .filter(|e| {
                    e.attributes
                        .get("synthetic_pattern")
                        .and_then(Value::as_str)
                        == Some(p)
                })
                .count();
            assert!(n > 10, "{p}: {n}");
        }
        // A card-testing burst really is many small amounts on one card.
        let tests: Vec<&Event> = events
            .iter()
            .filter(|e| {
                e.attributes
                    .get("synthetic_pattern")
                    .and_then(Value::as_str)
                    == Some(pattern::CARD_TESTING)
            })
            .collect();
        assert!(tests.iter().all(|e| e.amount.unwrap() <= 2.0));
    }
}
