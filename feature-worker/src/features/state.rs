//! Per-key window state: for each feature of a group, a deque of sparse time buckets (or the
//! previous-event memo for `last` / `time_since_last`), updated and read in one step.
//!
//! Events of one key arrive in `(event_time_ms, event_id)` order, so buckets are only ever
//! appended at the back and expired from the front; every window's lower bound is a multiple of
//! its granularity, so a bucket is either wholly inside the window or wholly outside.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::mem::size_of;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use riskstream_common::{Event, FeatureValue};
use twox_hash::XxHash3_64;

use super::config::{Aggregation, EventField, Feature};

type Hll = HyperLogLogPlus<u64, BuildHasherDefault<DefaultHasher>>;

/// Marks "no previous event" in `last` / `time_since_last` state.
const NO_TIME_MS: i64 = i64::MIN;

/// State of one (group, entity key): one [`FeatureState`] per feature of the group.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// Newest event time seen for the key.
    max_time_ms: i64,
    features: Box<[FeatureState]>,
}

#[derive(Debug)]
enum FeatureState {
    Count(CountState),
    /// `sum` and `avg`.
    Numeric(VecDeque<NumBucket>),
    /// `min` / `max`: the bucket's extreme value.
    Extreme(VecDeque<(i64, f64)>),
    Distinct(Box<DistinctState>),
    Last(LastState),
    /// `time_since_last`: time of the previous passing event.
    Since(i64),
}

#[derive(Debug, Default)]
struct CountState {
    buckets: VecDeque<(i64, u32)>,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct NumBucket {
    start_ms: i64,
    /// Number of events with a value.
    n: u32,
    sum: f64,
}

#[derive(Debug)]
struct DistinctState {
    /// Exact mode: (value hash, start of the bucket the value was last seen in).
    exact: Vec<(u64, i64)>,
    /// Lower bound on the oldest bucket start in `exact`.
    oldest_ms: i64,
    /// Sketch mode (non-empty): one HyperLogLog per non-empty bucket.
    sketch: VecDeque<(i64, Hll)>,
    /// HyperLogLog precision of the sketches.
    precision: u8,
}

#[derive(Debug)]
struct LastState {
    time_ms: i64,
    value: LastValue,
}

#[derive(Debug, PartialEq)]
enum LastValue {
    None,
    Num(f64),
    Text(Box<str>),
}

impl LastValue {
    fn to_feature(&self) -> FeatureValue {
        match self {
            LastValue::None => FeatureValue::Null,
            LastValue::Num(n) => FeatureValue::Number(*n),
            LastValue::Text(t) => FeatureValue::Text(t.to_string()),
        }
    }
}

/// Result of one update: whether the event was older than the key's newest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpdateOutcome {
    pub out_of_order: bool,
}

impl KeyState {
    pub(crate) fn new(features: &[Feature]) -> Self {
        let features = features
            .iter()
            .map(|f| match f.aggregation() {
                Aggregation::Count => FeatureState::Count(CountState::default()),
                Aggregation::Sum | Aggregation::Avg => FeatureState::Numeric(VecDeque::new()),
                Aggregation::Min | Aggregation::Max => FeatureState::Extreme(VecDeque::new()),
                Aggregation::DistinctCount => FeatureState::Distinct(Box::new(DistinctState {
                    exact: Vec::new(),
                    oldest_ms: i64::MAX,
                    sketch: VecDeque::new(),
                    precision: f.hll_precision,
                })),
                Aggregation::Last => FeatureState::Last(LastState {
                    time_ms: NO_TIME_MS,
                    value: LastValue::None,
                }),
                Aggregation::TimeSinceLast => FeatureState::Since(NO_TIME_MS),
            })
            .collect();
        Self {
            max_time_ms: i64::MIN,
            features,
        }
    }

    /// Adds the event to every feature (those whose filter it passes) and appends each
    /// feature's value, in group order, to `out`.
    ///
    /// An event older than the key's newest (a broken ordering upstream) is processed as if at
    /// the newest time, so state stays consistent; the caller counts it.
    pub(crate) fn update_and_read(
        &mut self,
        features: &[Feature],
        e: &Event,
        out: &mut Vec<FeatureValue>,
    ) -> UpdateOutcome {
        let out_of_order = e.event_time_ms < self.max_time_ms;
        let t_ms = if out_of_order {
            self.max_time_ms
        } else {
            self.max_time_ms = e.event_time_ms;
            e.event_time_ms
        };
        for (f, s) in features.iter().zip(self.features.iter_mut()) {
            out.push(s.update(f, e, t_ms));
        }
        UpdateOutcome { out_of_order }
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

#[inline]
fn push_count(buckets: &mut VecDeque<(i64, u32)>, b: i64) {
    match buckets.back_mut() {
        Some((s, n)) if *s == b => *n = n.saturating_add(1),
        _ => buckets.push_back((b, 1)),
    }
}

impl FeatureState {
    fn update(&mut self, f: &Feature, e: &Event, t_ms: i64) -> FeatureValue {
        let w = f.window();
        let lo = w.lower_bound(t_ms);
        let b = w.bucket_start(t_ms);
        match self {
            FeatureState::Count(c) => {
                while let Some(&(s, n)) = c.buckets.front() {
                    if s >= lo {
                        break;
                    }
                    c.total = c.total.saturating_sub(u64::from(n));
                    c.buckets.pop_front();
                }
                if f.passes_filter(e) {
                    push_count(&mut c.buckets, b);
                    c.total += 1;
                }
                FeatureValue::Number(c.total as f64)
            }
            FeatureState::Numeric(buckets) => {
                while buckets.front().is_some_and(|x| x.start_ms < lo) {
                    buckets.pop_front();
                }
                if let Some(v) = f.field().and_then(|fl| fl.num_of(e))
                    && f.passes_filter(e)
                {
                    match buckets.back_mut() {
                        Some(x) if x.start_ms == b => {
                            x.n = x.n.saturating_add(1);
                            x.sum += v;
                        }
                        _ => buckets.push_back(NumBucket {
                            start_ms: b,
                            n: 1,
                            sum: v,
                        }),
                    }
                }
                numeric_value(f.aggregation(), buckets.iter())
            }
            FeatureState::Extreme(buckets) => {
                while buckets.front().is_some_and(|x| x.0 < lo) {
                    buckets.pop_front();
                }
                let is_min = f.aggregation() == Aggregation::Min;
                if let Some(v) = f.field().and_then(|fl| fl.num_of(e))
                    && f.passes_filter(e)
                {
                    match buckets.back_mut() {
                        Some((s, x)) if *s == b => *x = if is_min { x.min(v) } else { x.max(v) },
                        _ => buckets.push_back((b, v)),
                    }
                }
                extreme_value(is_min, buckets.iter().map(|x| x.1))
            }
            FeatureState::Distinct(d) => d.update(f, e, lo, b),
            FeatureState::Last(l) => {
                let prev = if l.time_ms >= lo {
                    l.value.to_feature()
                } else {
                    FeatureValue::Null
                };
                if f.passes_filter(e) {
                    let field = f.field();
                    if let Some(n) = field.and_then(|fl| fl.num_of(e)) {
                        l.value = LastValue::Num(n);
                        l.time_ms = t_ms;
                    } else if let Some(s) = field.and_then(|fl| fl.str_of(e)) {
                        if !matches!(&l.value, LastValue::Text(old) if **old == *s) {
                            l.value = LastValue::Text(s.into());
                        }
                        l.time_ms = t_ms;
                    }
                }
                prev
            }
            FeatureState::Since(prev_ms) => {
                let v = if *prev_ms != NO_TIME_MS && *prev_ms >= lo {
                    FeatureValue::Number(t_ms.saturating_sub(*prev_ms) as f64)
                } else {
                    FeatureValue::Null
                };
                if f.passes_filter(e) {
                    *prev_ms = t_ms;
                }
                v
            }
        }
    }

    fn read(&self, f: &Feature, t_ms: i64) -> FeatureValue {
        let lo = f.window().lower_bound(t_ms);
        match self {
            FeatureState::Count(c) => FeatureValue::Number(
                c.buckets
                    .iter()
                    .filter(|x| x.0 >= lo)
                    .map(|x| u64::from(x.1))
                    .sum::<u64>() as f64,
            ),
            FeatureState::Numeric(buckets) => {
                numeric_value(f.aggregation(), buckets.iter().filter(|x| x.start_ms >= lo))
            }
            FeatureState::Extreme(buckets) => extreme_value(
                f.aggregation() == Aggregation::Min,
                buckets.iter().filter(|x| x.0 >= lo).map(|x| x.1),
            ),
            FeatureState::Distinct(d) => d.read(lo),
            FeatureState::Last(l) => {
                if l.time_ms >= lo {
                    l.value.to_feature()
                } else {
                    FeatureValue::Null
                }
            }
            FeatureState::Since(prev_ms) => {
                if *prev_ms != NO_TIME_MS && *prev_ms >= lo {
                    FeatureValue::Number(t_ms.saturating_sub(*prev_ms) as f64)
                } else {
                    FeatureValue::Null
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            FeatureState::Count(c) => c.buckets.capacity() * size_of::<(i64, u32)>(),
            FeatureState::Numeric(b) => b.capacity() * size_of::<NumBucket>(),
            FeatureState::Extreme(b) => b.capacity() * size_of::<(i64, f64)>(),
            FeatureState::Distinct(d) => {
                size_of::<DistinctState>()
                    + d.exact.capacity() * size_of::<(u64, i64)>()
                    + d.sketch.capacity() * size_of::<(i64, Hll)>()
                    // Dense registers: 6 bits each; a sparse sketch is smaller.
                    + d.sketch.len() * ((1usize << d.precision) * 3 / 4)
            }
            FeatureState::Last(l) => match &l.value {
                LastValue::Text(t) => t.len(),
                _ => 0,
            },
            FeatureState::Since(_) => 0,
        }
    }
}

fn numeric_value<'a>(
    agg: Aggregation,
    buckets: impl Iterator<Item = &'a NumBucket>,
) -> FeatureValue {
    let (n, sum) = buckets.fold((0u64, 0.0f64), |(n, s), x| (n + u64::from(x.n), s + x.sum));
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
    fn update(&mut self, f: &Feature, e: &Event, lo: i64, b: i64) -> FeatureValue {
        if !self.sketch.is_empty() {
            while self.sketch.front().is_some_and(|x| x.0 < lo) {
                self.sketch.pop_front();
            }
        }
        if self.sketch.is_empty() && self.oldest_ms < lo {
            self.exact.retain(|x| x.1 >= lo);
            self.oldest_ms = self.exact.iter().map(|x| x.1).min().unwrap_or(i64::MAX);
        }
        if let Some(h) = f.field().and_then(|fl| value_hash(fl, e))
            && f.passes_filter(e)
        {
            if self.sketch.is_empty() {
                if let Some(x) = self.exact.iter_mut().find(|x| x.0 == h) {
                    x.1 = b;
                } else {
                    self.exact.push((h, b));
                    self.oldest_ms = self.oldest_ms.min(b);
                    if self.exact.len() > f.distinct_exact_limit() as usize {
                        self.promote();
                    }
                }
            } else {
                match self.sketch.back_mut() {
                    Some((s, hll)) if *s == b => hll.insert(&h),
                    _ => {
                        if let Ok(mut hll) = Hll::new(self.precision, BuildHasherDefault::default())
                        {
                            hll.insert(&h);
                            self.sketch.push_back((b, hll));
                        }
                    }
                }
            }
        }
        self.read(lo)
    }

    /// Moves from exact to sketch mode: one HyperLogLog per bucket of the exact entries.
    fn promote(&mut self) {
        let precision = self.precision;
        let mut entries = std::mem::take(&mut self.exact);
        entries.sort_unstable_by_key(|x| x.1);
        let mut sketch: VecDeque<(i64, Hll)> = VecDeque::new();
        for (h, s) in &entries {
            match sketch.back_mut() {
                Some((bs, hll)) if bs == s => hll.insert(h),
                _ => match Hll::new(precision, BuildHasherDefault::default()) {
                    Ok(mut hll) => {
                        hll.insert(h);
                        sketch.push_back((*s, hll));
                    }
                    // An invalid precision cannot pass validation; stay exact if it did.
                    Err(_) => {
                        self.exact = entries;
                        return;
                    }
                },
            }
        }
        self.sketch = sketch;
        self.exact = Vec::new();
        self.oldest_ms = i64::MAX;
    }

    fn read(&self, lo: i64) -> FeatureValue {
        if self.sketch.is_empty() {
            let n = if self.oldest_ms >= lo {
                self.exact.len()
            } else {
                self.exact.iter().filter(|x| x.1 >= lo).count()
            };
            return FeatureValue::Number(n as f64);
        }
        let mut in_window = self.sketch.iter().filter(|x| x.0 >= lo);
        let Some((_, first)) = in_window.next() else {
            return FeatureValue::Number(0.0);
        };
        let mut merged = first.clone();
        for (_, hll) in in_window {
            // Same precision by construction; a mismatch would only skip a bucket.
            let _ = merged.merge(hll);
        }
        FeatureValue::Number(merged.count().round())
    }
}
