//! The demo's traffic: generated card payments (with the generator's fraud patterns) posted to
//! ingest over HTTP in small batches at a steady rate, counting what ingest accepted and
//! remembering each recent event's card, so the demo can point at a declined card's features.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use riskstream_common::generator::{Generator, GeneratorConfig};
use riskstream_common::shutdown::CancellationToken;

/// Events whose card and posting time are remembered.
const CARDS_REMEMBERED: usize = 200_000;
/// How often a batch is posted.
const TICK: Duration = Duration::from_millis(100);

/// What the traffic task shares with the progress display.
#[derive(Default)]
pub struct Sent {
    /// Events ingest answered 2xx for.
    pub accepted: AtomicU64,
    /// Events ingest refused or could not be reached for.
    pub refused: AtomicU64,
    /// Recent events: their card and when they were posted (epoch ms).
    recent: Mutex<Recent>,
}

/// Card and posting time (epoch ms) by event id, and the ids in posting order for eviction.
type Recent = (HashMap<uuid::Uuid, (String, i64)>, VecDeque<uuid::Uuid>);

impl Sent {
    /// The card of a recently sent event.
    pub fn card_of(&self, event_id: &uuid::Uuid) -> Option<String> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.0.get(event_id).map(|(card, _)| card.clone())
    }

    /// When a recent event was posted to ingest (epoch ms).
    pub fn posted_at_ms(&self, event_id: &uuid::Uuid) -> Option<i64> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.0.get(event_id).map(|(_, at)| *at)
    }

    fn remember(&self, event_id: uuid::Uuid, card: String, posted_at_ms: i64) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (by_id, order) = &mut *recent;
        by_id.insert(event_id, (card, posted_at_ms));
        order.push_back(event_id);
        while order.len() > CARDS_REMEMBERED {
            if let Some(old) = order.pop_front() {
                by_id.remove(&old);
            }
        }
    }
}

/// Posts generated traffic to `url` at `rate` events per second until `shutdown`.
pub async fn run(
    url: String,
    rate: f64,
    seed: u64,
    sent: Arc<Sent>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        start_time_ms: riskstream_common::now_ms(),
        events_per_sec: rate,
        fraud_share: 0.03,
        ..GeneratorConfig::default()
    });
    let per_tick = (rate * TICK.as_secs_f64()).max(1.0);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        owed += per_tick;
        let n = owed.floor() as usize;
        owed -= n as f64;
        // Real time: the generator's event times are pinned to now at the latest.
        let now = riskstream_common::now_ms();
        let batch: Vec<riskstream_common::Event> = (0..n)
            .map(|_| {
                let mut e = generator.next_event();
                e.event_time_ms = e.event_time_ms.min(now);
                e
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        for e in &batch {
            let card = e.card_id.clone().unwrap_or_default();
            sent.remember(e.event_id, card, now);
        }
        let count = batch.len() as u64;
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = http.post(&url).json(&batch).send() => a,
        };
        match answer {
            Ok(r) if r.status().is_success() => {
                sent.accepted.fetch_add(count, Ordering::Relaxed);
            }
            Ok(r) => {
                sent.refused.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(status = %r.status(), "demo traffic refused");
            }
            Err(e) => {
                sent.refused.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(error = %e, "demo traffic failed");
            }
        }
    }
}
