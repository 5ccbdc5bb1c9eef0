//! Window outputs, Flink-style, as a synchronous I/O-free core: per (key, window) count and sum
//! of a tumbling or hopping window, emitted once when the watermark passes the window's end,
//! re-emitted (an *update*) for each late event that arrives within the allowed lateness, and
//! purged after it: a later event is counted and handed back for the side output.
//!
//! riskstream's features are read per event and need none of this; the core defines and tests
//! the semantics for window outputs. It is not wired to a topic yet (docs/features.md, "Window
//! outputs").

use std::collections::BTreeMap;

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

#[derive(Debug, Default, Clone, Copy)]
struct Agg {
    count: u64,
    sum: f64,
    emitted: bool,
}

/// The open windows of one window output, keyed by (end, key, start) so firing walks in end
/// order.
#[derive(Debug)]
pub struct WindowOutputs {
    spec: WindowOutputSpec,
    windows: BTreeMap<(i64, String, i64), Agg>,
    watermark_ms: i64,
    too_late: u64,
}

impl WindowOutputs {
    pub fn new(spec: WindowOutputSpec) -> Self {
        Self {
            spec,
            windows: BTreeMap::new(),
            watermark_ms: i64::MIN,
            too_late: 0,
        }
    }

    /// Events that found every window purged.
    pub fn too_late(&self) -> u64 {
        self.too_late
    }

    fn purged(&self, end_ms: i64) -> bool {
        end_ms.saturating_add(self.spec.allowed_lateness_ms) <= self.watermark_ms
    }

    /// Adds one event (`value`: the summed field, if present) to every window holding `t_ms`.
    /// Windows already emitted give an update.
    pub fn add(&mut self, key: &str, t_ms: i64, value: Option<f64>) -> (Added, Vec<WindowResult>) {
        let WindowOutputSpec {
            size_ms, slide_ms, ..
        } = self.spec;
        let mut updates = Vec::new();
        let mut counted = false;
        let mut start = t_ms.div_euclid(slide_ms) * slide_ms;
        while start.saturating_add(size_ms) > t_ms {
            let end = start.saturating_add(size_ms);
            if !self.purged(end) {
                counted = true;
                let agg = self
                    .windows
                    .entry((end, key.to_string(), start))
                    .or_default();
                agg.count += 1;
                agg.sum += value.unwrap_or(0.0);
                if agg.emitted {
                    updates.push(result(key, start, end, agg, true));
                }
            }
            start = start.saturating_sub(slide_ms);
        }
        if counted {
            (Added::Counted, updates)
        } else {
            self.too_late += 1;
            (Added::TooLate, updates)
        }
    }

    /// Advances the watermark: emits every window that ended at or before it, once, and purges
    /// those past their allowed lateness.
    pub fn advance(&mut self, watermark_ms: i64) -> Vec<WindowResult> {
        self.watermark_ms = self.watermark_ms.max(watermark_ms);
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
        self.windows
            .retain(|(end, _, _), _| end.saturating_add(lateness) > w);
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
        w.add("c1", 100, Some(1.0));
        w.add("c1", 900, Some(2.0));
        w.add("c1", 1_100, None);
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
        w.add("c1", 100, Some(1.0));
        w.advance(3_000);
        let (added, updates) = w.add("c1", 500, Some(4.0));
        assert_eq!(added, Added::Counted);
        assert_eq!(counts(&updates), vec![(0, 2, true)]);
        assert_eq!(updates[0].sum, 5.0);
        // A window not emitted yet just counts it.
        let (_, updates) = w.add("c1", 3_500, None);
        assert!(updates.is_empty());
    }

    #[test]
    fn after_the_allowed_lateness_an_event_is_too_late_and_counted() {
        let mut w = tumbling(1_000, 5_000);
        w.add("c1", 100, None);
        w.advance(6_000);
        assert_eq!(w.add("c1", 200, None), (Added::TooLate, Vec::new()));
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
        w.add("k", 2_500, None);
        let out = w.advance(10_000);
        assert_eq!(
            counts(&out),
            vec![(0, 1, false), (1_000, 1, false), (2_000, 1, false)]
        );
        // Late by 8 s: the windows ending at 3000..5000 are purged (end + 1000 <= 10000).
        assert_eq!(w.add("k", 2_600, None).0, Added::TooLate);
    }
}
