//! The feature engine: the state of every (feature group, entity key) in one `moka` cache
//! (bounded by approximate bytes, expired after the key retention plus a grace of wall-clock
//! idleness, evictions counted by cause) and the update-and-read step the worker calls per
//! event, in whatever order events arrive (see [`super::state`] and docs/features.md); one
//! key's state exported as bytes and imported back ([`super::export`]), with the positions of
//! the updates it reflects ([`crate::Applied`]), and a log of the keys the cache dropped on its own
//! (expired, evicted for size) for whoever mirrors the state elsewhere.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_128;

use super::config::{FeatureGroup, FeatureSet};
use super::error::FeatureEngineError;
use super::export::fingerprint;
use super::state::{KeyState, UpdateOutcome};

/// Estimated bytes moka itself spends per entry (hash table slot, key and entry metadata,
/// access-order node), added to every key's weight.
pub const CACHE_ENTRY_OVERHEAD_BYTES: usize = 160;

/// A size eviction is logged at warn for the 1st, 2nd, 4th, 8th... and every this many.
const SIZE_EVICTION_LOG_EVERY: u64 = 10_000;

/// Sizing and expiry of the feature state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Upper bound of the (approximate) bytes of all key state; beyond it the least useful
    /// keys are evicted (state loss, counted and logged).
    pub max_memory_bytes: u64,
    /// How far behind its partition's watermark an event may be and still update window
    /// outputs; later events are still scored (and counted in per-key state) but are copied to
    /// the late topic. Also part of the default key retention.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Per-key state retention, measured against the key's own newest event time: buckets are
    /// kept for events up to this far behind it. The effective retention of a key is the
    /// larger of this and its feature group's (entity's) longest window plus
    /// `allowed_lateness`. An event older than its key's newest by more is decided
    /// `beyond_retention` from what is retained.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Extra idle time before a key expires, on top of the retention (idle time is
    /// wall-clock: the slack covers a slow replay).
    #[serde(with = "humantime_serde")]
    pub idle_grace: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 512 * 1024 * 1024,
            allowed_lateness: Duration::from_secs(5 * 60),
            retention: Duration::from_secs(3600),
            idle_grace: Duration::from_secs(60),
        }
    }
}

/// Counters of the state cache, readable at any time (plain atomics, relaxed).
#[derive(Debug, Default)]
pub struct StateStats {
    /// Keys removed because they were idle longer than their time-to-idle.
    pub evicted_expired: AtomicU64,
    /// Keys evicted to stay under `max_memory_bytes`: window state lost.
    pub evicted_size: AtomicU64,
    /// Keys removed by `drop_keys` / `clear`.
    pub evicted_explicit: AtomicU64,
    /// Keys whose state was created.
    pub keys_created: AtomicU64,
    /// Events older than their key's newest event (out of order or late for that key): added
    /// to their own buckets, read over their own windows.
    pub out_of_order_events: AtomicU64,
    /// Events older than their key's newest by more than the retention.
    pub beyond_retention_events: AtomicU64,
    /// Snapshots that found another key under the same 128-bit state hash (expected never).
    pub key_hash_collisions: AtomicU64,
}

/// A copy of [`StateStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateStatsSnapshot {
    pub evicted_expired: u64,
    pub evicted_size: u64,
    pub evicted_explicit: u64,
    pub keys_created: u64,
    pub out_of_order_events: u64,
    pub beyond_retention_events: u64,
    pub key_hash_collisions: u64,
}

impl StateStats {
    pub fn snapshot(&self) -> StateStatsSnapshot {
        StateStatsSnapshot {
            evicted_expired: self.evicted_expired.load(Ordering::Relaxed),
            evicted_size: self.evicted_size.load(Ordering::Relaxed),
            evicted_explicit: self.evicted_explicit.load(Ordering::Relaxed),
            keys_created: self.keys_created.load(Ordering::Relaxed),
            out_of_order_events: self.out_of_order_events.load(Ordering::Relaxed),
            beyond_retention_events: self.beyond_retention_events.load(Ordering::Relaxed),
            key_hash_collisions: self.key_hash_collisions.load(Ordering::Relaxed),
        }
    }
}

/// The effective retention of a group's keys: the larger of the configured one and the
/// group's longest window plus the allowed lateness.
pub fn retention_ms_of(group: &FeatureGroup, config: &StateConfig) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    group
        .longest_window_ms()
        .saturating_add(ms(config.allowed_lateness))
        .max(ms(config.retention))
}

/// Cache key: a 128-bit xxh3 hash of (group index, entity key). Compact and pointer-free, so
/// a lookup touches no key allocation (comparing the stored key on every hit cost a cache miss
/// per group). Two keys sharing state needs a 128-bit collision: for 10^9 keys the odds are
/// ~10^-21. The slot keeps the real key for `drop_keys`, `snapshot` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StateKey(u128);

impl StateKey {
    #[inline]
    fn of(group: u32, key: &str) -> Self {
        Self(XxHash3_128::oneshot_with_seed(
            u64::from(group),
            key.as_bytes(),
        ))
    }
}

/// Moka's hasher for [`StateKey`]s, which are already uniformly distributed hashes.
#[derive(Debug, Clone, Copy, Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u128 keys; a simple fold keeps the hasher total.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

type StateHasher = BuildHasherDefault<PassThroughHasher>;

/// One key's state, its identity and its last recorded weight.
#[derive(Debug)]
struct Slot {
    group: u32,
    key: Box<str>,
    weight_bytes: AtomicU32,
    state: Mutex<KeyState>,
}

impl Slot {
    fn is(&self, group: u32, key: &str) -> bool {
        self.group == group && *self.key == *key
    }
}

fn weight_of(bytes: usize, key: &str) -> u32 {
    u32::try_from(
        bytes
            .saturating_add(key.len())
            .saturating_add(CACHE_ENTRY_OVERHEAD_BYTES),
    )
    .unwrap_or(u32::MAX)
}

/// Computes feature values: update the state of an event's keys and read every window.
///
/// Thread-safe (`&self` everywhere); an event's values depend on the events of its keys
/// processed before it, so the worker serialises the events of one key (any event-time order).
pub struct FeatureEngine {
    set: Arc<FeatureSet>,
    cache: Cache<StateKey, Arc<Slot>, StateHasher>,
    stats: Arc<StateStats>,
    config: StateConfig,
    /// Per group: the effective key retention.
    retention_ms: Vec<i64>,
    /// Per group: the fingerprint of its definitions (exported state is valid for it only).
    fingerprints: Vec<u64>,
    /// Keys the cache removed on its own (expired, evicted for size), once
    /// [`FeatureEngine::log_removals`] turned the log on.
    removed: Arc<RemovalLog>,
}

/// The keys the cache removed on its own, for [`FeatureEngine::take_removed`].
#[derive(Debug, Default)]
struct RemovalLog {
    on: AtomicBool,
    keys: Mutex<Vec<(u32, Box<str>)>>,
}

impl std::fmt::Debug for FeatureEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureEngine")
            .field("groups", &self.set.groups().len())
            .field("features", &self.set.len())
            .field("config", &self.config)
            .field("entry_count", &self.cache.entry_count())
            .finish()
    }
}

impl FeatureEngine {
    pub fn new(set: FeatureSet, config: StateConfig) -> Self {
        let set = Arc::new(set);
        let stats = Arc::new(StateStats::default());
        // One time-to-idle for all keys: the longest retention + grace. (Per-group expiry
        // through moka's timer wheel cost ~15% of the per-event time in the benchmark; size
        // eviction still bounds memory.)
        let retention_ms: Vec<i64> = set
            .groups()
            .iter()
            .map(|g| retention_ms_of(g, &config))
            .collect();
        let longest_retention_ms = retention_ms.iter().copied().max().unwrap_or(0);
        let time_to_idle = Duration::from_millis(longest_retention_ms.unsigned_abs())
            .saturating_add(config.idle_grace);
        let group_names: Vec<String> = set.groups().iter().map(|g| g.key_spec().name()).collect();
        let listener_stats = Arc::clone(&stats);
        let removed = Arc::new(RemovalLog::default());
        let log = Arc::clone(&removed);
        let note = move |slot: &Slot| {
            if log.on.load(Ordering::Relaxed) {
                log.keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((slot.group, slot.key.clone()));
            }
        };
        let cache = Cache::builder()
            .max_capacity(config.max_memory_bytes)
            // Plain LRU: a brand-new entity (a new card) must get state even when the cache is
            // full; TinyLFU admission would refuse it in favour of frequent old keys.
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &StateKey, v: &Arc<Slot>| v.weight_bytes.load(Ordering::Relaxed))
            .time_to_idle(time_to_idle)
            .eviction_listener(move |_: Arc<StateKey>, slot: Arc<Slot>, cause| match cause {
                RemovalCause::Expired => {
                    listener_stats.evicted_expired.fetch_add(1, Ordering::Relaxed);
                    note(&slot);
                }
                RemovalCause::Explicit => {
                    listener_stats.evicted_explicit.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Size => {
                    note(&slot);
                    let n = listener_stats.evicted_size.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() || n % SIZE_EVICTION_LOG_EVERY == 0 {
                        let group = group_names
                            .get(slot.group as usize)
                            .map_or("?", String::as_str);
                        tracing::warn!(
                            group,
                            key = &*slot.key,
                            evicted_size_total = n,
                            "feature state evicted for size: window values of this key restart empty (raise max_memory_bytes)"
                        );
                    }
                }
                RemovalCause::Replaced => {}
            })
            .build_with_hasher(StateHasher::default());
        let fingerprints = set.groups().iter().map(fingerprint).collect();
        Self {
            set,
            cache,
            stats,
            config,
            retention_ms,
            fingerprints,
            removed,
        }
    }

    /// The effective retention of the keys of group `group_idx` (see
    /// [`StateConfig::retention`]); 0 for an unknown group.
    pub fn retention_ms(&self, group_idx: usize) -> i64 {
        self.retention_ms.get(group_idx).copied().unwrap_or(0)
    }

    pub fn feature_set(&self) -> &FeatureSet {
        &self.set
    }

    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// The eviction and ordering counters.
    pub fn stats(&self) -> &Arc<StateStats> {
        &self.stats
    }

    /// Number of (group, key) states held (after the last maintenance run).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Approximate bytes of all key state (after the last maintenance run).
    pub fn weighted_size_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs the cache's maintenance (expiry, size eviction, listener calls). Call it
    /// periodically (e.g. every second) from the worker's loop.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    fn group(&self, group_idx: usize) -> Result<&FeatureGroup, FeatureEngineError> {
        self.set
            .groups()
            .get(group_idx)
            .ok_or(FeatureEngineError::UnknownGroup {
                group_idx,
                group_count: self.set.groups().len(),
            })
    }

    fn new_slot(&self, group: u32, key: &str, g: &FeatureGroup) -> Arc<Slot> {
        self.stats.keys_created.fetch_add(1, Ordering::Relaxed);
        let state = KeyState::new(g.features());
        Arc::new(Slot {
            group,
            key: key.into(),
            weight_bytes: AtomicU32::new(weight_of(state.approx_bytes(), key)),
            state: Mutex::new(state),
        })
    }

    fn slot(&self, group: u32, key: &str, g: &FeatureGroup) -> Arc<Slot> {
        let id = StateKey::of(group, key);
        match self.cache.get(&id) {
            Some(s) => s,
            None => self.cache.get_with(id, || self.new_slot(group, key, g)),
        }
    }

    /// Adds the event to the state of `key` in group `group_idx` and appends the value of each
    /// of the group's features (in group order) to `out`. Allocates only for a new key and for
    /// text values.
    pub fn process_into(
        &self,
        group_idx: usize,
        key: &str,
        event: &Event,
        out: &mut Vec<FeatureValue>,
    ) -> Result<UpdateOutcome, FeatureEngineError> {
        self.process_at_into(group_idx, key, event, None, out)
    }

    /// [`FeatureEngine::process_into`], recording `at` (source, offset) as applied to the key
    /// (see [`FeatureEngine::admit`]).
    pub fn process_at_into(
        &self,
        group_idx: usize,
        key: &str,
        event: &Event,
        at: Option<(i32, i64)>,
        out: &mut Vec<FeatureValue>,
    ) -> Result<UpdateOutcome, FeatureEngineError> {
        let g = self.group(group_idx)?;
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        let slot = self.slot(group, key, g);
        let (outcome, bytes) = {
            let mut st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            let outcome =
                st.update_and_read(g.features(), event, self.retention_ms(group_idx), out);
            if let Some((source, offset)) = at {
                st.applied.record(source, offset);
            }
            (outcome, st.approx_bytes())
        };
        if outcome.out_of_order {
            self.stats
                .out_of_order_events
                .fetch_add(1, Ordering::Relaxed);
        }
        if outcome.beyond_retention {
            self.stats
                .beyond_retention_events
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                group = group_idx,
                key,
                event_time_ms = event.event_time_ms,
                "event beyond its key's retention: read from the retained buckets"
            );
        }
        // Re-insert (so moka re-weighs) when the state grew or shrank by half.
        let new_weight = weight_of(bytes, key);
        let old_weight = slot.weight_bytes.load(Ordering::Relaxed);
        if new_weight > old_weight.saturating_add(old_weight / 2) || new_weight < old_weight / 2 {
            slot.weight_bytes.store(new_weight, Ordering::Relaxed);
            self.cache.insert(StateKey::of(group, key), slot);
        }
        Ok(outcome)
    }

    /// [`FeatureEngine::process_into`] returning `(feature name, value)` pairs.
    pub fn process(
        &self,
        group_idx: usize,
        key: &str,
        event: &Event,
    ) -> Result<Vec<(String, FeatureValue)>, FeatureEngineError> {
        let mut values = Vec::new();
        self.process_into(group_idx, key, event, &mut values)?;
        Ok(self.named(group_idx, values))
    }

    fn named(&self, group_idx: usize, values: Vec<FeatureValue>) -> Vec<(String, FeatureValue)> {
        self.set.groups()[group_idx]
            .features()
            .iter()
            .map(|f| f.name().to_string())
            .zip(values)
            .collect()
    }

    /// The values of the group's features for an event without a key (a key field missing):
    /// `0` for count/sum/distinct_count, `Null` for the rest.
    pub fn empty_values_into(
        &self,
        group_idx: usize,
        out: &mut Vec<FeatureValue>,
    ) -> Result<(), FeatureEngineError> {
        out.extend(
            self.group(group_idx)?
                .features()
                .iter()
                .map(|f| f.empty_value()),
        );
        Ok(())
    }

    /// Single-process path: every group of the event, values of every feature appended in
    /// [`FeatureSet::features`] order; the outcomes of all groups merged.
    pub fn process_event_into(&self, event: &Event, out: &mut Vec<FeatureValue>) -> UpdateOutcome {
        let mut outcome = UpdateOutcome::default();
        for (gi, g) in self.set.groups().iter().enumerate() {
            match g.key_ref(event) {
                Some(key) => {
                    // The index comes from the set itself, so it is always known.
                    if let Ok(o) = self.process_into(gi, &key, event, out) {
                        outcome = outcome.merge(o);
                    }
                }
                None => out.extend(g.features().iter().map(|f| f.empty_value())),
            }
        }
        outcome
    }

    /// Single-process path returning every feature by name.
    pub fn process_all(&self, event: &Event) -> BTreeMap<String, FeatureValue> {
        let mut values = Vec::with_capacity(self.set.len());
        self.process_event_into(event, &mut values);
        self.set
            .features()
            .map(|f| f.name().to_string())
            .zip(values)
            .collect()
    }

    /// The live window values of one key for windows ending at `now_ms` (no event added;
    /// `now_ms` before the key's newest event reads at that event's time). `None`: no state.
    pub fn snapshot(
        &self,
        group_idx: usize,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<(String, FeatureValue)>>, FeatureEngineError> {
        let g = self.group(group_idx)?;
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        let Some(slot) = self.cache.get(&StateKey::of(group, key)) else {
            return Ok(None);
        };
        if !slot.is(group, key) {
            self.stats
                .key_hash_collisions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                group,
                key,
                other_key = &*slot.key,
                "feature state key hash collision"
            );
            return Ok(None);
        }
        let mut values = Vec::with_capacity(g.features().len());
        slot.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_at(g.features(), now_ms, &mut values);
        Ok(Some(self.named(group_idx, values)))
    }

    /// An update of `key` from (`source`, `offset`) arrived: `false` if the key's state already
    /// reflects it (recorded by [`FeatureEngine::process_at_into`], here or before an export),
    /// `true` if it is to be applied (see [`crate::Applied::admit`]). No state is created.
    pub fn admit(&self, group_idx: usize, key: &str, source: i32, offset: i64) -> bool {
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        match self.cache.get(&StateKey::of(group, key)) {
            Some(slot) if slot.is(group, key) => slot
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .applied
                .admit(source, offset),
            _ => true,
        }
    }

    /// The state of `key` in group `group_idx` as bytes (`None`: no state), with `waiting`
    /// (positions the caller admitted but has not applied yet) marked as not applied. Import it
    /// with [`FeatureEngine::import_key`] into an engine of the same definitions.
    pub fn export_key(
        &self,
        group_idx: usize,
        key: &str,
        waiting: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<Option<Vec<u8>>, FeatureEngineError> {
        self.group(group_idx)?;
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        let Some(slot) = self.cache.get(&StateKey::of(group, key)) else {
            return Ok(None);
        };
        if !slot.is(group, key) {
            return Ok(None);
        }
        let st = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        let applied = st.applied.exported(waiting);
        Ok(Some(st.export(self.fingerprints[group_idx], &applied)))
    }

    /// Sets the state of `key` in group `group_idx` to what [`FeatureEngine::export_key`]
    /// exported (replacing any state it has). Refused for state of other definitions of the
    /// group or bytes that are not an export.
    pub fn import_key(
        &self,
        group_idx: usize,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), FeatureEngineError> {
        let g = self.group(group_idx)?;
        let state = KeyState::import(bytes, self.fingerprints[group_idx], g.features())
            .map_err(|source| FeatureEngineError::Import { group_idx, source })?;
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        let slot = Arc::new(Slot {
            group,
            key: key.into(),
            weight_bytes: AtomicU32::new(weight_of(state.approx_bytes(), key)),
            state: Mutex::new(state),
        });
        self.cache.insert(StateKey::of(group, key), slot);
        Ok(())
    }

    /// Removes the state of one key (an explicit removal, not logged).
    pub fn remove_key(&self, group_idx: usize, key: &str) {
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        self.cache.invalidate(&StateKey::of(group, key));
    }

    /// Whether `key` of group `group_idx` has state.
    pub fn contains_key(&self, group_idx: usize, key: &str) -> bool {
        let group = u32::try_from(group_idx).unwrap_or(u32::MAX);
        self.cache
            .get(&StateKey::of(group, key))
            .is_some_and(|slot| slot.is(group, key))
    }

    /// From now on, remember the keys the cache removes on its own (expired, evicted for size)
    /// until [`FeatureEngine::take_removed`] takes them.
    pub fn log_removals(&self) {
        self.removed.on.store(true, Ordering::Relaxed);
    }

    /// The (group index, key) pairs the cache removed on its own since the last call (after
    /// [`FeatureEngine::log_removals`]; removals surface when the cache runs its maintenance).
    pub fn take_removed(&self) -> Vec<(u32, Box<str>)> {
        std::mem::take(
            &mut *self
                .removed
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Removes the state of every key for which `predicate(group index, key)` holds (e.g. the
    /// keys of revoked partitions); returns how many were removed.
    pub fn drop_keys(&self, predicate: impl Fn(usize, &str) -> bool) -> u64 {
        let doomed: Vec<Arc<StateKey>> = self
            .cache
            .iter()
            .filter(|(_, slot)| predicate(slot.group as usize, &slot.key))
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            self.cache.invalidate(&**k);
        }
        self.cache.run_pending_tasks();
        doomed.len() as u64
    }

    /// Removes all state.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskstream_common::FeatureValue::{Null, Number, Text};
    use uuid::Uuid;

    fn ev(t_ms: i64, card: &str, amount: Option<f64>) -> Event {
        Event {
            event_id: Uuid::from_u128(t_ms as u128 * 1000 + amount.map_or(0, |a| a as u128)),
            event_time_ms: t_ms,
            account_id: Some("acc-1".into()),
            card_id: Some(card.into()),
            device_id: None,
            ip: None,
            merchant_id: None,
            email: None,
            amount,
            currency: amount.map(|_| "EUR".into()),
            country: None,
            channel: None,
            event_type: Some("payment".into()),
            attributes: Default::default(),
        }
    }

    fn engine(toml: &str) -> FeatureEngine {
        FeatureEngine::new(
            FeatureSet::from_toml_str(toml).unwrap(),
            StateConfig::default(),
        )
    }

    fn feature(name: &str, agg: &str, window: &str, extra: &str) -> String {
        format!(
            "[[feature]]\nname = \"{name}\"\nentity = \"card_id\"\naggregation = \"{agg}\"\nwindow = {window}\n{extra}\n"
        )
    }

    /// Runs events through `process` for group 0 and returns each event's values.
    fn run(engine: &FeatureEngine, events: &[Event]) -> Vec<Vec<FeatureValue>> {
        events
            .iter()
            .map(|e| {
                let key = engine.feature_set().groups()[0].key_of(e).unwrap();
                engine
                    .process(0, &key, e)
                    .unwrap()
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect()
    }

    fn nums(rows: &[Vec<FeatureValue>], col: usize) -> Vec<FeatureValue> {
        rows.iter().map(|r| r[col].clone()).collect()
    }

    fn stream() -> Vec<Event> {
        vec![
            ev(1_000, "c1", Some(10.0)),
            ev(5_500, "c1", Some(20.0)),
            ev(10_999, "c1", Some(5.0)),
            ev(11_000, "c1", Some(1.0)),
            ev(16_000, "c1", Some(3.0)),
        ]
    }

    #[test]
    fn sliding_window_aggregations_by_hand() {
        let w = r#"{ kind = "sliding", size = "10s", granularity = "1s" }"#;
        let toml = ["count", "sum", "avg", "min", "max"]
            .iter()
            .map(|a| feature(a, a, w, ""))
            .collect::<String>();
        let rows = run(&engine(&toml), &stream());
        // Windows: [t/1s*1s + 1s - 10s, t] = [-8000,1000], [-4000,5500], [1000,10999],
        // [2000,11000], [7000,16000].
        let n = |v: &[f64]| v.iter().map(|x| Number(*x)).collect::<Vec<_>>();
        assert_eq!(nums(&rows, 0), n(&[1.0, 2.0, 3.0, 3.0, 3.0]));
        assert_eq!(nums(&rows, 1), n(&[10.0, 30.0, 35.0, 26.0, 9.0]));
        assert_eq!(
            nums(&rows, 2),
            n(&[10.0, 15.0, 35.0 / 3.0, 26.0 / 3.0, 3.0])
        );
        assert_eq!(nums(&rows, 3), n(&[10.0, 10.0, 5.0, 1.0, 1.0]));
        assert_eq!(nums(&rows, 4), n(&[10.0, 20.0, 20.0, 20.0, 5.0]));
    }

    #[test]
    fn tumbling_and_hopping_windows_by_hand() {
        let toml = feature(
            "tumbling",
            "count",
            r#"{ kind = "tumbling", size = "10s" }"#,
            "",
        ) + &feature(
            "hopping",
            "count",
            r#"{ kind = "hopping", size = "10s", slide = "5s" }"#,
            "",
        );
        let rows = run(&engine(&toml), &stream());
        let n = |v: &[f64]| v.iter().map(|x| Number(*x)).collect::<Vec<_>>();
        // Tumbling: [0,10000) then [10000,20000).
        assert_eq!(nums(&rows, 0), n(&[1.0, 2.0, 1.0, 2.0, 3.0]));
        // Hopping, earliest window containing t: [-5000,..], [0,..], [5000,..], [5000,..], [10000,..].
        assert_eq!(nums(&rows, 1), n(&[1.0, 2.0, 2.0, 3.0, 3.0]));
    }

    #[test]
    fn filters_exclude_events_from_state_but_still_give_values() {
        let w = r#"{ kind = "sliding", size = "1m" }"#;
        let toml = feature(
            "small",
            "count",
            w,
            r#"filter = [{ field = "type", equals = "payment" }, { field = "amount", lt = 2.0 }]"#,
        ) + &feature(
            "refund_sum",
            "sum",
            w,
            r#"filter = { field = "type", in = ["refund", "chargeback"] }"#,
        );
        let mut events = vec![
            ev(1_000, "c1", Some(1.0)),
            ev(2_000, "c1", Some(5.0)),
            ev(3_000, "c1", Some(0.5)),
            ev(4_000, "c1", Some(7.0)),
        ];
        events[3].event_type = Some("refund".into());
        let rows = run(&engine(&toml), &events);
        assert_eq!(
            nums(&rows, 0),
            vec![Number(1.0), Number(1.0), Number(2.0), Number(2.0)]
        );
        assert_eq!(
            nums(&rows, 1),
            vec![Number(0.0), Number(0.0), Number(0.0), Number(7.0)]
        );
    }

    #[test]
    fn last_and_time_since_last_exclude_the_current_event() {
        let w = r#"{ kind = "sliding", size = "1h", granularity = "1m" }"#;
        let toml = feature("last_country", "last", w, r#"field = "country""#)
            + &feature("since", "time_since_last", w, "")
            + &feature("last_amount", "last", w, r#"field = "amount""#);
        let mut events = vec![
            ev(60_000, "c1", Some(1.0)),
            ev(90_000, "c1", Some(2.0)),
            ev(90_000, "c1", Some(3.0)),
            ev(150_000, "c1", None),
            ev(150_000 + 3_600_000, "c1", Some(4.0)),
        ];
        let countries = [Some("DE"), Some("FR"), None, Some("US"), Some("PL")];
        for (e, c) in events.iter_mut().zip(countries) {
            e.country = c.map(Into::into);
        }
        let rows = run(&engine(&toml), &events);
        assert_eq!(
            nums(&rows, 0),
            vec![
                Null,
                Text("DE".into()),
                Text("FR".into()),
                Text("FR".into()),
                // The window of the last event starts at 3,660,000 - 3,600,000 + 60,000 - ...:
                // [floor(t/1m)*1m + 1m - 1h, t] = [180000, ...]: the US event (150000) is out.
                Null,
            ]
        );
        assert_eq!(
            nums(&rows, 1),
            vec![Null, Number(30_000.0), Number(0.0), Number(60_000.0), Null]
        );
        assert_eq!(
            nums(&rows, 2),
            vec![Null, Number(1.0), Number(2.0), Number(3.0), Null]
        );
    }

    #[test]
    fn distinct_count_is_exact_then_approximate_beyond_the_bound() {
        let w = r#"{ kind = "sliding", size = "10s" }"#;
        let toml = format!(
            "[[feature]]\nname = \"cards\"\nentity = \"account_id\"\naggregation = \"distinct_count\"\nfield = \"card_id\"\nwindow = {w}\ndistinct_exact_limit = 3\n"
        );
        let e = engine(&toml);
        let seq = [
            (0, "a"),
            (1_000, "b"),
            (2_000, "a"),
            (3_000, "c"),
            (10_500, "d"),
        ];
        let got: Vec<FeatureValue> = seq
            .iter()
            .map(|(t, c)| {
                e.process(0, "acc-1", &ev(*t, c, None)).unwrap()[0]
                    .1
                    .clone()
            })
            .collect();
        // At 10500 the window is [1000, 10500]: b, a (at 2000), c, d.
        assert_eq!(
            got,
            vec![
                Number(1.0),
                Number(2.0),
                Number(2.0),
                Number(3.0),
                Number(4.0)
            ]
        );
        // Far beyond the bound: within HyperLogLog error (precision 12: ~1.6% standard error).
        let e = engine(&toml.replace("size = \"10s\"", "size = \"1h\""));
        let mut last = Null;
        for i in 0..5_000 {
            last = e
                .process(0, "acc-1", &ev(100_000 + i, &format!("card-{i}"), None))
                .unwrap()[0]
                .1
                .clone();
        }
        let n = last.as_f64().unwrap();
        assert!((n - 5_000.0).abs() < 5_000.0 * 0.06, "estimate {n}");
        // Once the window has moved past every sketch bucket the feature is exact again.
        let v = e
            .process(0, "acc-1", &ev(100_000 + 7_200_000, "z", None))
            .unwrap();
        assert_eq!(v[0].1, Number(1.0));
    }

    #[test]
    fn old_state_does_not_leak_into_values() {
        let toml = feature("c", "count", r#"{ kind = "sliding", size = "10m" }"#, "")
            + &feature("m", "max", r#"{ kind = "sliding", size = "10m" }"#, "");
        let e = engine(&toml);
        let rows = run(
            &e,
            &[
                ev(0, "c1", Some(100.0)),
                ev(599_999, "c1", Some(1.0)),
                ev(600_000 + 600_000, "c1", Some(2.0)),
            ],
        );
        assert_eq!(rows[1], vec![Number(2.0), Number(100.0)]);
        assert_eq!(rows[2], vec![Number(1.0), Number(2.0)]);
        // A snapshot long after the last event shows empty windows.
        let snap = e.snapshot(0, "c1", 10_000_000).unwrap().unwrap();
        assert_eq!(snap, vec![("c".into(), Number(0.0)), ("m".into(), Null)]);
        let snap = e.snapshot(0, "c1", 1_200_500).unwrap().unwrap();
        assert_eq!(
            snap,
            vec![("c".into(), Number(1.0)), ("m".into(), Number(2.0))]
        );
        assert_eq!(e.snapshot(0, "nobody", 0).unwrap(), None);
        assert!(matches!(
            e.snapshot(7, "c1", 0),
            Err(FeatureEngineError::UnknownGroup { group_idx: 7, .. })
        ));
    }

    #[test]
    fn events_without_a_key_get_empty_values_and_touch_no_state() {
        let toml = feature("c", "count", r#"{ kind = "sliding", size = "10m" }"#, "")
            + "[[feature]]\nname = \"dev_max\"\nentity = \"device_id\"\naggregation = \"max\"\nwindow = { kind = \"tumbling\", size = \"1h\" }\n";
        let e = engine(&toml);
        let mut event = ev(1_000, "c1", Some(3.0));
        event.card_id = None;
        let all = e.process_all(&event);
        assert_eq!(all["c"], Number(0.0));
        assert_eq!(all["dev_max"], Null);
        e.run_pending_tasks();
        assert_eq!(e.entry_count(), 0);
        event.device_id = Some("d1".into());
        assert_eq!(e.process_all(&event)["dev_max"], Number(3.0));
    }

    #[test]
    fn out_of_order_events_are_read_over_their_own_window_and_counted_later() {
        let e = engine(&feature(
            "c",
            "count",
            r#"{ kind = "sliding", size = "10s" }"#,
            "",
        ));
        // 1000's window is [-8000, 1000]: the earlier-processed 5000 is not in it; 6000's
        // window [-3000, 6000] holds all three.
        let rows = run(
            &e,
            &[
                ev(5_000, "c1", None),
                ev(1_000, "c1", None),
                ev(6_000, "c1", None),
            ],
        );
        assert_eq!(
            rows,
            vec![vec![Number(1.0)], vec![Number(1.0)], vec![Number(3.0)]]
        );
        assert_eq!(e.stats().snapshot().out_of_order_events, 1);
        assert_eq!(e.stats().snapshot().beyond_retention_events, 0);
    }

    #[test]
    fn an_event_beyond_its_key_retention_counts_itself_and_what_is_retained() {
        let toml = feature(
            "c",
            "count",
            r#"{ kind = "sliding", size = "10m", granularity = "1m" }"#,
            "",
        ) + &feature(
            "last_amount",
            "last",
            r#"{ kind = "sliding", size = "10m", granularity = "1m" }"#,
            r#"field = "amount""#,
        );
        let e = FeatureEngine::new(
            FeatureSet::from_toml_str(&toml).unwrap(),
            StateConfig {
                allowed_lateness: Duration::from_secs(60),
                retention: Duration::from_secs(3600),
                ..StateConfig::default()
            },
        );
        assert_eq!(e.retention_ms(0), 3_600_000);
        let h = 3_600_000;
        let key = "c1";
        let rows = run(
            &e,
            &[
                ev(0, key, Some(1.0)),
                ev(60_000, key, Some(2.0)),
                // Newest 3h: retention goes back to 2h, buckets before 1h50m are gone.
                ev(3 * h, key, Some(3.0)),
                // 2h late, within retention: its window [1h51m, 2h] is empty but itself.
                ev(2 * h, key, Some(4.0)),
                // 3h late: beyond retention; the buckets of 0 and 60000 were expired.
                ev(90_000, key, Some(5.0)),
            ],
        );
        assert_eq!(rows[1], vec![Number(2.0), Number(1.0)]);
        assert_eq!(rows[3], vec![Number(1.0), Null]);
        assert_eq!(rows[4], vec![Number(1.0), Null]);
        let s = e.stats().snapshot();
        assert_eq!((s.out_of_order_events, s.beyond_retention_events), (2, 1));
        let mut out = Vec::new();
        let outcome = e.process_event_into(&ev(100, key, None), &mut out);
        assert!(outcome.beyond_retention && outcome.out_of_order);
    }

    #[test]
    fn size_evictions_are_counted_and_memory_stays_bounded() {
        let set = FeatureSet::from_toml_str(&feature(
            "c",
            "count",
            r#"{ kind = "sliding", size = "10m" }"#,
            "",
        ))
        .unwrap();
        let max_memory_bytes = 64 * 1024;
        let e = FeatureEngine::new(
            set,
            StateConfig {
                max_memory_bytes,
                ..StateConfig::default()
            },
        );
        for i in 0..5_000 {
            e.process_all(&ev(1_000 + i, &format!("card-{i}"), None));
            if i % 500 == 0 {
                e.run_pending_tasks();
            }
        }
        e.run_pending_tasks();
        let stats = e.stats().snapshot();
        assert_eq!(stats.keys_created, 5_000);
        assert!(stats.evicted_size > 0, "{stats:?}");
        assert!(e.weighted_size_bytes() <= max_memory_bytes);
        assert!(e.entry_count() < 5_000);
        assert_eq!(stats.evicted_expired, 0);
    }

    #[test]
    fn drop_keys_and_clear_remove_state_explicitly() {
        let e = engine(&feature(
            "c",
            "count",
            r#"{ kind = "sliding", size = "10m" }"#,
            "",
        ));
        for c in ["a1", "a2", "b1"] {
            e.process_all(&ev(1_000, c, None));
        }
        assert_eq!(e.drop_keys(|_, k| k.starts_with('a')), 2);
        assert_eq!(e.snapshot(0, "a1", 1_000).unwrap(), None);
        assert!(e.snapshot(0, "b1", 1_000).unwrap().is_some());
        // Dropped state restarts from empty.
        assert_eq!(e.process_all(&ev(2_000, "a1", None))["c"], Number(1.0));
        e.clear();
        e.run_pending_tasks();
        assert_eq!(e.entry_count(), 0);
        assert_eq!(e.stats().snapshot().evicted_explicit, 4);
    }

    #[test]
    fn state_weight_follows_growth() {
        let e = engine(&feature(
            "c",
            "count",
            r#"{ kind = "sliding", size = "1h" }"#,
            "",
        ));
        e.process_all(&ev(0, "c1", None));
        e.run_pending_tasks();
        let small = e.weighted_size_bytes();
        for i in 1..1_000 {
            e.process_all(&ev(i * 1_000, "c1", None));
        }
        e.run_pending_tasks();
        // 1000 one-second buckets of 16 bytes.
        assert!(
            e.weighted_size_bytes() > small + 10_000,
            "{small} -> {}",
            e.weighted_size_bytes()
        );
    }

    #[test]
    fn state_config_reads_humantime_durations_and_rejects_unknown_keys() {
        let c: StateConfig =
            toml::from_str("max_memory_bytes = 1024\nallowed_lateness = \"250ms\"\n").unwrap();
        assert_eq!(c.allowed_lateness, Duration::from_millis(250));
        assert_eq!(c.idle_grace, StateConfig::default().idle_grace);
        assert_eq!(c.retention, Duration::from_secs(3600));
        assert!(toml::from_str::<StateConfig>("max_memory = 1").is_err());
    }
}
