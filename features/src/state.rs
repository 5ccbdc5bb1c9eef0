//! Per-key window state: for each feature of a group, a deque of sparse time buckets sorted by
//! bucket start (or the sorted previous-event entries of `last` / `time_since_last`), updated
//! and read in one step.
//!
//! Events of one key may arrive in any order (on time, out of order, late): an event is added
//! to its own bucket wherever that bucket sits (appending at the back is the fast path), and
//! its values are read over the buckets of *its* window, `[lower_bound(t), bucket_start(t)]`,
//! so an event's features are the same whether it came on time or an hour late, given the
//! events processed before it. Every window's lower bound is a multiple of its granularity, so
//! a bucket is either wholly inside the window or wholly outside.
//!
//! Retention is per key: buckets are kept while they can still be inside the window of an
//! event no older than `newest event time of the key - retention_ms`, and expired from the
//! front as the key's newest event time advances. An event older than that is *beyond
//! retention*: it is still added to whatever buckets still exist and read over them.

use std::collections::VecDeque;
use std::hash::{BuildHasher, DefaultHasher};
use std::mem::size_of;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use super::applied::Applied;
use super::config::{Aggregation, EventField, Feature, WindowSpec};

/// The sketches' hasher: SipHash with zero keys (`DefaultHasher::new()`), a unit type so the
/// sketches serialize (`BuildHasherDefault` does not).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct SketchHasher;

impl BuildHasher for SketchHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

pub(crate) type Hll = HyperLogLogPlus<u64, SketchHasher>;

/// State of one (group, entity key): one [`FeatureState`] per feature of the group, and which
/// updates it reflects (for de-duplication after an export and import).
#[derive(Debug)]
pub(crate) struct KeyState {
    /// Newest event time seen for the key (`i64::MIN` before the first).
    pub(crate) max_time_ms: i64,
    pub(crate) features: Box<[FeatureState]>,
    pub(crate) applied: Applied,
}

#[derive(Debug)]
pub(crate) enum FeatureState {
    /// Events per bucket.
    Count(VecDeque<(i64, u32)>),
    /// `sum` and `avg`: (number of events with a value, sum) per bucket.
    Numeric(VecDeque<(i64, (u32, f64))>),
    /// `min` / `max`: the bucket's extreme value.
    Extreme(VecDeque<(i64, f64)>),
    Distinct(Box<DistinctState>),
    /// `last`: (event time, value) of every passing event with a value, sorted by time
    /// (equal times in processing order).
    Last {
        entries: VecDeque<(i64, LastValue)>,
        /// Bytes of the text values in `entries` (for the weigher, without a scan).
        text_bytes: usize,
    },
    /// `time_since_last`: times of the passing events, sorted.
    Since(VecDeque<i64>),
}

#[derive(Debug)]
pub(crate) struct DistinctState {
    /// Exact mode: distinct (value hash, bucket start) pairs, sorted.
    pub(crate) exact: Vec<(u64, i64)>,
    /// Number of distinct hashes in `exact`.
    pub(crate) exact_values: u32,
    /// The oldest bucket in `exact` (`i64::MAX`: none), so expiry needs no scan.
    pub(crate) exact_oldest_ms: i64,
    /// Sketch mode (non-empty): one HyperLogLog per non-empty bucket, sorted by start.
    pub(crate) sketch: VecDeque<(i64, Hll)>,
    /// HyperLogLog precision of the sketches.
    pub(crate) precision: u8,
}

#[derive(Debug, PartialEq)]
pub(crate) enum LastValue {
    Num(f64),
    Text(Box<str>),
}

impl LastValue {
    fn to_feature(&self) -> FeatureValue {
        match self {
            LastValue::Num(n) => FeatureValue::Number(*n),
            LastValue::Text(t) => FeatureValue::Text(t.to_string()),
        }
    }
}

/// Result of one update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// Older than the key's newest event (out of order or late for this key).
    pub out_of_order: bool,
    /// Older than the key's newest event by more than the retention: its windows may have
    /// lost buckets, its values are read from what is retained (its own event included).
    pub beyond_retention: bool,
}

impl UpdateOutcome {
    /// Both outcomes of two groups of one event.
    pub fn merge(self, other: UpdateOutcome) -> UpdateOutcome {
        UpdateOutcome {
            out_of_order: self.out_of_order || other.out_of_order,
            beyond_retention: self.beyond_retention || other.beyond_retention,
        }
    }
}

/// The index of bucket `b` in a sorted deque, inserting it (with `new()`) if missing.
#[inline]
fn bucket_index<T>(dq: &mut VecDeque<(i64, T)>, b: i64, new: impl FnOnce() -> T) -> usize {
    match dq.back() {
        Some((s, _)) if *s == b => return dq.len() - 1,
        Some((s, _)) if *s < b => {
            dq.push_back((b, new()));
            return dq.len() - 1;
        }
        None => {
            dq.push_back((b, new()));
            return 0;
        }
        _ => {}
    }
    let i = dq.partition_point(|x| x.0 < b);
    if dq.get(i).is_none_or(|x| x.0 != b) {
        dq.insert(i, (b, new()));
    }
    i
}

/// The buckets with start in `[lo, hi]`. The end is found from the back (the newest bucket, in
/// order; a binary search for a late event), the start by walking back from it over the
/// window's buckets only: the retained history before the window is never touched.
#[inline]
fn in_range<T>(dq: &VecDeque<(i64, T)>, lo: i64, hi: i64) -> impl Iterator<Item = &T> {
    let end = if dq.back().is_none_or(|x| x.0 <= hi) {
        dq.len()
    } else {
        dq.partition_point(|x| x.0 <= hi)
    };
    let mut start = end;
    while start > 0 && dq[start - 1].0 >= lo {
        start -= 1;
    }
    dq.range(start..end).map(|x| &x.1)
}

#[inline]
fn expire<T>(dq: &mut VecDeque<(i64, T)>, bound: i64) {
    while dq.front().is_some_and(|x| x.0 < bound) {
        dq.pop_front();
    }
}

impl KeyState {
    pub(crate) fn new(features: &[Feature]) -> Self {
        let features = features
            .iter()
            .map(|f| match f.aggregation() {
                Aggregation::Count => FeatureState::Count(VecDeque::new()),
                Aggregation::Sum | Aggregation::Avg => FeatureState::Numeric(VecDeque::new()),
                Aggregation::Min | Aggregation::Max => FeatureState::Extreme(VecDeque::new()),
                Aggregation::DistinctCount => FeatureState::Distinct(Box::new(DistinctState {
                    exact: Vec::new(),
                    exact_values: 0,
                    exact_oldest_ms: i64::MAX,
                    sketch: VecDeque::new(),
                    precision: f.hll_precision,
                })),
                Aggregation::Last => FeatureState::Last {
                    entries: VecDeque::new(),
                    text_bytes: 0,
                },
                Aggregation::TimeSinceLast => FeatureState::Since(VecDeque::new()),
            })
            .collect();
        Self {
            max_time_ms: i64::MIN,
            features,
            applied: Applied::default(),
        }
    }

    /// Adds the event to every feature (those whose filter it passes) and appends each
    /// feature's value for the window ending at the event's own time, in group order, to
    /// `out`; then expires what the key's retention no longer needs.
    pub(crate) fn update_and_read(
        &mut self,
        features: &[Feature],
        e: &Event,
        retention_ms: i64,
        out: &mut Vec<FeatureValue>,
    ) -> UpdateOutcome {
        let t_ms = e.event_time_ms;
        let had_events = self.max_time_ms != i64::MIN;
        let outcome = UpdateOutcome {
            out_of_order: t_ms < self.max_time_ms,
            beyond_retention: had_events && t_ms < self.max_time_ms.saturating_sub(retention_ms),
        };
        self.max_time_ms = self.max_time_ms.max(t_ms);
        let horizon_ms = self.max_time_ms.saturating_sub(retention_ms);
        for (f, s) in features.iter().zip(self.features.iter_mut()) {
            out.push(s.update(f, e, t_ms, horizon_ms));
        }
        outcome
    }

    /// The value of every feature for a window ending at `now_ms` (no event added). A `now_ms`
    /// before the key's newest event is read as that event's time.
    pub(crate) fn read_at(&self, features: &[Feature], now_ms: i64, out: &mut Vec<FeatureValue>) {
        let t_ms = now_ms.max(self.max_time_ms);
        for (f, s) in features.iter().zip(self.features.iter()) {
            out.push(s.read(f, t_ms));
        }
    }

    /// Approximate heap + inline bytes of this state (for the cache weigher).
    pub(crate) fn approx_bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .features
                .iter()
                .map(|s| size_of::<FeatureState>() + s.heap_bytes())
                .sum::<usize>()
            + self.applied.heap_bytes()
    }
}

/// 64-bit hash of the field's value (text and numbers hash apart by construction: numbers are
/// hashed as their 8 bytes with a different seed). Collisions among the values of one key's
/// window are negligible (~n^2 / 2^65).
fn value_hash(field: EventField, e: &Event) -> Option<u64> {
    match field.num_of(e) {
        // -0.0 and 0.0 are the same value.
        Some(n) => Some(XxHash3_64::oneshot_with_seed(
            1,
            &(n + 0.0).to_bits().to_le_bytes(),
        )),
        None => Some(XxHash3_64::oneshot(field.str_of(e)?.as_bytes())),
    }
}

/// Bounds of one event's window: `[lo, hi]` in bucket starts, and the first bucket start the
/// key's retention still needs.
#[derive(Clone, Copy)]
struct Bounds {
    lo: i64,
    hi: i64,
    keep: i64,
}

impl Bounds {
    fn of(w: WindowSpec, t_ms: i64, horizon_ms: i64) -> Self {
        Self {
            lo: w.lower_bound(t_ms),
            hi: w.bucket_start(t_ms),
            keep: w.lower_bound(horizon_ms),
        }
    }
}

/// The index after every entry with time `<= t_ms` (a new entry at `t_ms` goes there).
#[inline]
fn after<T>(dq: &VecDeque<T>, t_ms: i64, time: impl Fn(&T) -> i64) -> usize {
    if dq.back().is_none_or(|x| time(x) <= t_ms) {
        dq.len()
    } else {
        dq.partition_point(|x| time(x) <= t_ms)
    }
}

impl FeatureState {
    fn update(&mut self, f: &Feature, e: &Event, t_ms: i64, horizon_ms: i64) -> FeatureValue {
        let bd = Bounds::of(f.window(), t_ms, horizon_ms);
        let passes = f.passes_filter(e);
        let num = || f.field().and_then(|fl| fl.num_of(e));
        let v = match self {
            FeatureState::Count(buckets) => {
                if passes {
                    let i = bucket_index(buckets, bd.hi, || 0);
                    buckets[i].1 = buckets[i].1.saturating_add(1);
                }
                count_value(buckets, bd)
            }
            FeatureState::Numeric(buckets) => {
                if let Some(v) = num()
                    && passes
                {
                    let i = bucket_index(buckets, bd.hi, || (0, 0.0));
                    let x = &mut buckets[i].1;
                    x.0 = x.0.saturating_add(1);
                    x.1 += v;
                }
                numeric_value(f.aggregation(), in_range(buckets, bd.lo, bd.hi))
            }
            FeatureState::Extreme(buckets) => {
                let is_min = f.aggregation() == Aggregation::Min;
                if let Some(v) = num()
                    && passes
                {
                    let i = bucket_index(buckets, bd.hi, || v);
                    let x = &mut buckets[i].1;
                    *x = if is_min { x.min(v) } else { x.max(v) };
                }
                extreme_value(is_min, in_range(buckets, bd.lo, bd.hi).copied())
            }
            FeatureState::Distinct(d) => {
                if let Some(h) = f.field().and_then(|fl| value_hash(fl, e))
                    && passes
                {
                    d.insert(h, bd.hi, f.distinct_exact_limit());
                }
                d.read(bd.lo, bd.hi)
            }
            FeatureState::Last {
                entries,
                text_bytes,
            } => {
                let i = after(entries, t_ms, |x| x.0);
                let prev = last_before(entries, i, bd.lo);
                if passes {
                    let field = f.field();
                    let value = match field.and_then(|fl| fl.num_of(e)) {
                        Some(n) => Some(LastValue::Num(n)),
                        None => field
                            .and_then(|fl| fl.str_of(e))
                            .map(|s| LastValue::Text(s.into())),
                    };
                    if let Some(value) = value {
                        *text_bytes += text_len(&value);
                        entries.insert(i, (t_ms, value));
                    }
                }
                prev
            }
            FeatureState::Since(times) => {
                let i = after(times, t_ms, |x| *x);
                let prev = since_value(times, i, bd.lo, t_ms);
                if passes {
                    times.insert(i, t_ms);
                }
                prev
            }
        };
        self.expire(bd.keep);
        v
    }

    fn expire(&mut self, keep: i64) {
        match self {
            FeatureState::Count(b) => expire(b, keep),
            FeatureState::Numeric(b) => expire(b, keep),
            FeatureState::Extreme(b) => expire(b, keep),
            FeatureState::Distinct(d) => d.expire(keep),
            FeatureState::Last {
                entries,
                text_bytes,
            } => {
                while entries.front().is_some_and(|x| x.0 < keep) {
                    if let Some((_, v)) = entries.pop_front() {
                        *text_bytes = text_bytes.saturating_sub(text_len(&v));
                    }
                }
            }
            FeatureState::Since(times) => {
                while times.front().is_some_and(|x| *x < keep) {
                    times.pop_front();
                }
            }
        }
    }

    fn read(&self, f: &Feature, t_ms: i64) -> FeatureValue {
        let bd = Bounds::of(f.window(), t_ms, t_ms);
        match self {
            FeatureState::Count(buckets) => count_value(buckets, bd),
            FeatureState::Numeric(buckets) => {
                numeric_value(f.aggregation(), in_range(buckets, bd.lo, bd.hi))
            }
            FeatureState::Extreme(buckets) => extreme_value(
                f.aggregation() == Aggregation::Min,
                in_range(buckets, bd.lo, bd.hi).copied(),
            ),
            FeatureState::Distinct(d) => d.read(bd.lo, bd.hi),
            FeatureState::Last { entries, .. } => {
                last_before(entries, after(entries, t_ms, |x| x.0), bd.lo)
            }
            FeatureState::Since(times) => {
                since_value(times, after(times, t_ms, |x| *x), bd.lo, t_ms)
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            FeatureState::Count(c) => c.capacity() * size_of::<(i64, u32)>(),
            FeatureState::Numeric(b) => b.capacity() * size_of::<(i64, (u32, f64))>(),
            FeatureState::Extreme(b) => b.capacity() * size_of::<(i64, f64)>(),
            FeatureState::Distinct(d) => {
                size_of::<DistinctState>()
                    + d.exact.capacity() * size_of::<(u64, i64)>()
                    + d.sketch.capacity() * size_of::<(i64, Hll)>()
                    // Dense registers: 6 bits each; a sparse sketch is smaller.
                    + d.sketch.len() * ((1usize << d.precision) * 3 / 4)
            }
            FeatureState::Last {
                entries,
                text_bytes,
            } => entries.capacity() * size_of::<(i64, LastValue)>() + text_bytes,
            FeatureState::Since(times) => times.capacity() * size_of::<i64>(),
        }
    }
}

fn count_value(buckets: &VecDeque<(i64, u32)>, bd: Bounds) -> FeatureValue {
    FeatureValue::Number(
        in_range(buckets, bd.lo, bd.hi)
            .map(|n| u64::from(*n))
            .sum::<u64>() as f64,
    )
}

pub(crate) fn text_len(v: &LastValue) -> usize {
    match v {
        LastValue::Text(t) => t.len(),
        LastValue::Num(_) => 0,
    }
}

/// The entry before index `i` (the previous event), if inside the window.
fn last_before(entries: &VecDeque<(i64, LastValue)>, i: usize, lo: i64) -> FeatureValue {
    match i.checked_sub(1).and_then(|j| entries.get(j)) {
        Some((t, v)) if *t >= lo => v.to_feature(),
        _ => FeatureValue::Null,
    }
}

fn since_value(times: &VecDeque<i64>, i: usize, lo: i64, t_ms: i64) -> FeatureValue {
    match i.checked_sub(1).and_then(|j| times.get(j)) {
        Some(prev) if *prev >= lo => FeatureValue::Number(t_ms.saturating_sub(*prev) as f64),
        _ => FeatureValue::Null,
    }
}

fn numeric_value<'a>(
    agg: Aggregation,
    buckets: impl Iterator<Item = &'a (u32, f64)>,
) -> FeatureValue {
    let (n, sum) = buckets.fold((0u64, 0.0f64), |(n, s), x| (n + u64::from(x.0), s + x.1));
    match agg {
        Aggregation::Avg if n == 0 => FeatureValue::Null,
        Aggregation::Avg => FeatureValue::Number(sum / n as f64),
        _ => FeatureValue::Number(sum),
    }
}

fn extreme_value(is_min: bool, values: impl Iterator<Item = f64>) -> FeatureValue {
    let v = values.reduce(|a, b| if is_min { a.min(b) } else { a.max(b) });
    v.map_or(FeatureValue::Null, FeatureValue::Number)
}

impl DistinctState {
    fn new_hll(&self) -> Option<Hll> {
        // An invalid precision cannot pass validation.
        Hll::new(self.precision, SketchHasher).ok()
    }

    fn insert_sketch(&mut self, h: u64, b: i64) {
        let i = self.sketch.partition_point(|x| x.0 < b);
        if self.sketch.get(i).is_none_or(|x| x.0 != b) {
            let Some(hll) = self.new_hll() else {
                return;
            };
            self.sketch.insert(i, (b, hll));
        }
        self.sketch[i].1.insert(&h);
    }

    fn insert(&mut self, h: u64, b: i64, exact_limit: u32) {
        if !self.sketch.is_empty() {
            self.insert_sketch(h, b);
            return;
        }
        let Err(i) = self.exact.binary_search(&(h, b)) else {
            return;
        };
        let seen =
            (i > 0 && self.exact[i - 1].0 == h) || self.exact.get(i).is_some_and(|x| x.0 == h);
        self.exact.insert(i, (h, b));
        self.exact_oldest_ms = self.exact_oldest_ms.min(b);
        if !seen {
            self.exact_values += 1;
            if self.exact_values > exact_limit {
                self.promote();
            }
        }
    }

    /// Moves from exact to sketch mode: one HyperLogLog per bucket of the exact entries.
    fn promote(&mut self) {
        if self.new_hll().is_none() {
            return;
        }
        for (h, b) in std::mem::take(&mut self.exact) {
            self.insert_sketch(h, b);
        }
        self.exact_values = 0;
        self.exact_oldest_ms = i64::MAX;
    }

    fn expire(&mut self, keep: i64) {
        if !self.sketch.is_empty() {
            expire(&mut self.sketch, keep);
            // Once every sketch bucket expired the feature is exact again.
            return;
        }
        if self.exact_oldest_ms < keep {
            self.exact.retain(|x| x.1 >= keep);
            self.exact_values = distinct_hashes(self.exact.iter().map(|x| x.0));
            self.exact_oldest_ms = self.exact.iter().map(|x| x.1).min().unwrap_or(i64::MAX);
        }
    }

    fn read(&self, lo: i64, hi: i64) -> FeatureValue {
        if self.sketch.is_empty() {
            let n = distinct_hashes(
                self.exact
                    .iter()
                    .filter(|x| x.1 >= lo && x.1 <= hi)
                    .map(|x| x.0),
            );
            return FeatureValue::Number(f64::from(n));
        }
        let mut in_window = in_range(&self.sketch, lo, hi);
        let Some(first) = in_window.next() else {
            return FeatureValue::Number(0.0);
        };
        let mut merged = first.clone();
        for hll in in_window {
            // Same precision by construction; a mismatch would only skip a bucket.
            let _ = merged.merge(hll);
        }
        FeatureValue::Number(merged.count().round())
    }
}

/// Distinct values of a sorted sequence of hashes.
pub(crate) fn distinct_hashes(sorted: impl Iterator<Item = u64>) -> u32 {
    let mut n = 0u32;
    let mut last = None;
    for h in sorted {
        if last != Some(h) {
            n += 1;
            last = Some(h);
        }
    }
    n
}
