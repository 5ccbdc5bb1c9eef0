//! Window outputs, Flink-style, as a synchronous I/O-free core: per (key, window) count and sum
//! of a tumbling or hopping window, emitted once when the watermark passes the window's end,
//! re-emitted (an *update*) for each late event that arrives within the allowed lateness, and
//! purged after it: a later event is counted and handed back for the side output.
//!
//! [`config`] owns the `[[window_output]]` definitions of the feature file. The keyed worker's
//! windows stage drives one [`WindowOutputs`] per definition and repartition partition
//! (docs/features.md, "Window outputs"). Every event is added with its *position* (its record's
//! offset): [`WindowOutputs::oldest_position`] is the oldest record still contributing to a
//! window not yet purged, the bound below which the stage may commit, and
//! [`WindowOutputs::restore`] rebuilds the windows from those records after a restart.

pub mod config;

use std::collections::BTreeMap;

pub use config::{WindowOutput, WindowOutputDef};

/// One window-output definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOutputSpec {
    /// Window size; a multiple of `slide_ms` (tumbling: `slide_ms == size_ms`).
    pub size_ms: i64,
    pub slide_ms: i64,
    /// How long after its end (on the watermark) a window still takes late events.
    pub allowed_lateness_ms: i64,
}

/// One emitted window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub key: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub count: u64,
    pub sum: f64,
    /// A re-emission after a late event (the window had already been emitted).
    pub update: bool,
}

/// What [`WindowOutputs::add`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Counted in at least one window still kept.
    Counted,
    /// Every window of the event was already purged: counted as too late, for the side output.
    TooLate,
}

#[derive(Debug, Clone, Copy)]
struct Agg {
    count: u64,
    sum: f64,
    emitted: bool,
    /// Position of the first event added (events come in position order: the oldest).
    first_position: i64,
}

/// The open windows of one window output, keyed by (end, key, start) so firing walks in end
/// order.
#[derive(Debug)]
pub struct WindowOutputs {
    spec: WindowOutputSpec,
    windows: BTreeMap<(i64, String, i64), Agg>,
    /// How many kept windows have each first position (a multiset: its first key is the oldest
    /// position still contributing).
    first_positions: BTreeMap<i64, usize>,
    watermark_ms: i64,
    too_late: u64,
}

impl WindowOutputs {
    pub fn new(spec: WindowOutputSpec) -> Self {
        Self {
            spec,
            windows: BTreeMap::new(),
            first_positions: BTreeMap::new(),
            watermark_ms: i64::MIN,
            too_late: 0,
        }
    }

    pub fn spec(&self) -> WindowOutputSpec {
        self.spec
    }

    /// The highest watermark seen (`i64::MIN` before the first).
    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// Events that found every window purged.
    pub fn too_late(&self) -> u64 {
        self.too_late
    }

    /// Windows kept (emitted or not, not yet purged).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// The oldest position of an event still counted in a kept window (`None`: no window
    /// kept). Every event at an earlier position only counts in purged windows.
    pub fn oldest_position(&self) -> Option<i64> {
        self.first_positions.keys().next().copied()
    }

    /// Whether the event at `position` is the first of some kept window (it holds the commit
    /// back until that window is purged; any other event only counts in windows an older event
    /// holds, or in none).
    pub fn holds(&self, position: i64) -> bool {
        self.first_positions.contains_key(&position)
    }

    fn purged(&self, end_ms: i64) -> bool {
        end_ms.saturating_add(self.spec.allowed_lateness_ms) <= self.watermark_ms
    }

    /// The windows holding `t_ms`, as (start, end).
    fn windows_of(&self, t_ms: i64) -> impl Iterator<Item = (i64, i64)> + use<> {
        let WindowOutputSpec {
            size_ms, slide_ms, ..
        } = self.spec;
        let first = t_ms.div_euclid(slide_ms) * slide_ms;
        (0..size_ms / slide_ms)
            .map(move |i| first.saturating_sub(i.saturating_mul(slide_ms)))
            .map(move |start| (start, start.saturating_add(size_ms)))
            .filter(move |&(_, end)| end > t_ms)
    }

    /// Counts one event in the window (`key`, `start`, `end`), created if new.
    fn count_in(&mut self, key: &str, start: i64, end: i64, value: Option<f64>, position: i64) {
        let agg = self
            .windows
            .entry((end, key.to_string(), start))
            .or_insert_with(|| {
                *self.first_positions.entry(position).or_default() += 1;
                Agg {
                    count: 0,
                    sum: 0.0,
                    emitted: false,
                    first_position: position,
                }
            });
        agg.count += 1;
        agg.sum += value.unwrap_or(0.0);
    }

    /// Adds one event (`value`: the summed field, if present; `position`: its record's offset,
    /// never lower than an earlier event's) to every window holding `t_ms` that is not purged.
    /// A window the watermark already passed is emitted at once: an update if it was emitted
    /// before, else its first emission (a late event opened it).
    pub fn add(
        &mut self,
        key: &str,
        t_ms: i64,
        value: Option<f64>,
        position: i64,
    ) -> (Added, Vec<WindowResult>) {
        let mut emitted = Vec::new();
        let mut counted = false;
        let watermark_ms = self.watermark_ms;
        for (start, end) in self.windows_of(t_ms) {
            if self.purged(end) {
                continue;
            }
            counted = true;
            self.count_in(key, start, end, value, position);
            if end > watermark_ms {
                continue;
            }
            // The watermark passed the window's end: the late event fires it (again).
            if let Some(agg) = self.windows.get_mut(&(end, key.to_string(), start)) {
                let update = agg.emitted;
                agg.emitted = true;
                emitted.push(result(key, start, end, agg, update));
            }
        }
        if counted {
            (Added::Counted, emitted)
        } else {
            self.too_late += 1;
            (Added::TooLate, emitted)
        }
    }

    /// Rebuilds the windows after a restart: counts an event already handled before it, as
    /// [`WindowOutputs::add`] did, against the watermark the windows had then (set first with
    /// [`WindowOutputs::advance`], whose output is empty on no windows). Nothing is emitted: a
    /// window that ended at or before the watermark was emitted then and is marked so; the
    /// event's purged windows are skipped (they were final then).
    pub fn restore(&mut self, key: &str, t_ms: i64, value: Option<f64>, position: i64) {
        let watermark_ms = self.watermark_ms;
        for (start, end) in self.windows_of(t_ms) {
            if self.purged(end) {
                continue;
            }
            self.count_in(key, start, end, value, position);
            if end <= watermark_ms
                && let Some(agg) = self.windows.get_mut(&(end, key.to_string(), start))
            {
                agg.emitted = true;
            }
        }
    }

    /// Advances the watermark: emits every window that ended at or before it, once, and purges
    /// those past their allowed lateness.
    pub fn advance(&mut self, watermark_ms: i64) -> Vec<WindowResult> {
        if watermark_ms <= self.watermark_ms {
            return Vec::new();
        }
        self.watermark_ms = watermark_ms;
        let mut out = Vec::new();
        for ((end, key, start), agg) in self.windows.iter_mut() {
            if *end > self.watermark_ms {
                break;
            }
            if !agg.emitted {
                agg.emitted = true;
                out.push(result(key, *start, *end, agg, false));
            }
        }
        let lateness = self.spec.allowed_lateness_ms;
        let w = self.watermark_ms;
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().0.saturating_add(lateness) > w {
                break;
            }
            let agg = entry.remove();
            if let Some(n) = self.first_positions.get_mut(&agg.first_position) {
                *n -= 1;
                if *n == 0 {
                    self.first_positions.remove(&agg.first_position);
                }
            }
        }
        out
    }
}

fn result(key: &str, start_ms: i64, end_ms: i64, agg: &Agg, update: bool) -> WindowResult {
    WindowResult {
        key: key.to_string(),
        start_ms,
        end_ms,
        count: agg.count,
        sum: agg.sum,
        update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tumbling(size_ms: i64, lateness_ms: i64) -> WindowOutputs {
        WindowOutputs::new(WindowOutputSpec {
            size_ms,
            slide_ms: size_ms,
            allowed_lateness_ms: lateness_ms,
        })
    }

    fn counts(v: &[WindowResult]) -> Vec<(i64, u64, bool)> {
        v.iter().map(|r| (r.start_ms, r.count, r.update)).collect()
    }

    #[test]
    fn a_window_is_emitted_once_when_the_watermark_passes_its_end() {
        let mut w = tumbling(1_000, 5_000);
        w.add("c1", 100, Some(1.0), 0);
        w.add("c1", 900, Some(2.0), 1);
        w.add("c1", 1_100, None, 2);
        assert!(w.advance(999).is_empty());
        let out = w.advance(1_000);
        assert_eq!(counts(&out), vec![(0, 2, false)]);
        assert_eq!(out[0].sum, 3.0);
        assert!(w.advance(1_500).is_empty(), "emitted once");
        assert_eq!(counts(&w.advance(2_000)), vec![(1_000, 1, false)]);
    }

    #[test]
    fn a_late_event_within_the_allowed_lateness_gives_an_updated_emission() {
        let mut w = tumbling(1_000, 5_000);
        w.add("c1", 100, Some(1.0), 0);
        w.advance(3_000);
        let (added, updates) = w.add("c1", 500, Some(4.0), 1);
        assert_eq!(added, Added::Counted);
        assert_eq!(counts(&updates), vec![(0, 2, true)]);
        assert_eq!(updates[0].sum, 5.0);
        // A window not emitted yet just counts it.
        let (_, updates) = w.add("c1", 3_500, None, 2);
        assert!(updates.is_empty());
        // A late event that opens a window the watermark passed fires it at once (its first
        // emission, not an update).
        let (added, fired) = w.add("c2", 1_200, Some(7.0), 3);
        assert_eq!(added, Added::Counted);
        assert_eq!(counts(&fired), vec![(1_000, 1, false)]);
        assert_eq!(fired[0].key, "c2");
        let (_, fired) = w.add("c2", 1_300, Some(1.0), 4);
        assert_eq!(counts(&fired), vec![(1_000, 2, true)]);
        assert!(w.advance(3_000).is_empty(), "nothing fires twice");
    }

    #[test]
    fn after_the_allowed_lateness_an_event_is_too_late_and_counted() {
        let mut w = tumbling(1_000, 5_000);
        w.add("c1", 100, None, 0);
        w.advance(6_000);
        assert_eq!(w.add("c1", 200, None, 1), (Added::TooLate, Vec::new()));
        assert_eq!(w.too_late(), 1);
        // Nothing of the purged window comes back.
        assert!(w.advance(10_000).is_empty());
    }

    #[test]
    fn hopping_windows_count_an_event_in_every_window_holding_it() {
        let mut w = WindowOutputs::new(WindowOutputSpec {
            size_ms: 3_000,
            slide_ms: 1_000,
            allowed_lateness_ms: 1_000,
        });
        w.add("k", 2_500, None, 0);
        let out = w.advance(10_000);
        assert_eq!(
            counts(&out),
            vec![(0, 1, false), (1_000, 1, false), (2_000, 1, false)]
        );
        // Late by 8 s: the windows ending at 3000..5000 are purged (end + 1000 <= 10000).
        assert_eq!(w.add("k", 2_600, None, 1).0, Added::TooLate);
        // Partly purged: an event at 4_500 at watermark 5_500 is in [2000, 5000) (purged at
        // 6000), [3000, 6000) and [4000, 7000); only the first one was emitted.
        let mut w = WindowOutputs::new(WindowOutputSpec {
            size_ms: 3_000,
            slide_ms: 1_000,
            allowed_lateness_ms: 1_000,
        });
        w.add("k", 4_000, None, 0);
        assert_eq!(counts(&w.advance(5_500)), vec![(2_000, 1, false)]);
        let (added, out) = w.add("k", 4_500, None, 1);
        assert_eq!(added, Added::Counted);
        assert_eq!(counts(&out), vec![(2_000, 2, true)]);
    }

    #[test]
    fn the_oldest_position_is_the_first_event_of_the_oldest_kept_window() {
        let mut w = tumbling(1_000, 2_000);
        assert_eq!(w.oldest_position(), None);
        w.add("a", 100, None, 10);
        w.add("b", 1_100, None, 11);
        w.add("a", 200, None, 12);
        assert_eq!(w.oldest_position(), Some(10));
        assert!(w.holds(10) && w.holds(11));
        assert!(!w.holds(12), "counted in the window 10 opened");
        // Window [0, 1000) is emitted at 1000 but kept (late events) until 3000.
        w.advance(2_999);
        assert_eq!(w.oldest_position(), Some(10));
        w.advance(3_000);
        assert_eq!(w.oldest_position(), Some(11), "[0, 1000) purged");
        assert_eq!(w.open_windows(), 1);
        w.advance(4_000);
        assert_eq!(w.oldest_position(), None);
        // A too-late event holds nothing.
        w.add("a", 100, None, 13);
        assert_eq!(w.oldest_position(), None);
    }

    /// One add or watermark step of a scripted stream.
    #[derive(Clone, Copy)]
    enum Step {
        Event(&'static str, i64, f64),
        Watermark(i64),
    }

    /// Runs `steps` from index `from` on `w`, every output in order.
    fn run(w: &mut WindowOutputs, steps: &[Step], from: usize) -> Vec<WindowResult> {
        let mut out = Vec::new();
        for (i, step) in steps.iter().enumerate().skip(from) {
            match *step {
                Step::Event(k, t, v) => out.extend(w.add(k, t, Some(v), i as i64).1),
                Step::Watermark(m) => out.extend(w.advance(m)),
            }
        }
        out
    }

    #[test]
    fn restoring_from_the_oldest_position_continues_exactly_as_the_original() {
        use Step::*;
        let steps = [
            Event("a", 100, 1.0),
            Event("b", 900, 2.0),
            Watermark(500),
            Event("a", 1_500, 3.0),
            Watermark(1_200),
            Event("a", 300, 4.0), // late, updates [0, 1000)
            Event("b", 2_100, 5.0),
            Watermark(3_100),       // [0, 1000) purged (end + 2000 <= 3100)
            Event("a", 1_700, 6.0), // late into [1000, 2000)
            Event("a", 3_300, 7.0),
            Watermark(3_400),
            Event("b", 2_500, 8.0),
            Watermark(6_000),
            Event("a", 3_900, 9.0),
            Watermark(20_000),
        ];
        let spec = WindowOutputSpec {
            size_ms: 1_000,
            slide_ms: 1_000,
            allowed_lateness_ms: 2_000,
        };
        let mut whole = WindowOutputs::new(spec);
        let all = run(&mut whole, &steps, 0);
        // Checkpoint after every step: the bound, the watermark and what came out so far.
        for x in 0..steps.len() {
            let mut original = WindowOutputs::new(spec);
            let before = run(&mut original, &steps[..=x], 0);
            let bound = original.oldest_position().unwrap_or(x as i64 + 1);
            let mut restored = WindowOutputs::new(spec);
            assert!(restored.advance(original.watermark_ms()).is_empty());
            for (i, step) in steps.iter().enumerate().take(x + 1) {
                if let Event(k, t, v) = *step
                    && i as i64 >= bound
                {
                    restored.restore(k, t, Some(v), i as i64);
                }
            }
            assert_eq!(restored.oldest_position(), original.oldest_position());
            assert_eq!(restored.open_windows(), original.open_windows());
            let after = run(&mut restored, &steps, x + 1);
            let mut again = before.clone();
            again.extend(after);
            assert_eq!(again, all, "restored after step {x} (bound {bound})");
        }
    }
}
