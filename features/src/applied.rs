//! Which updates one key's state reflects, by where they came from: per source (for the
//! worker, a Kafka partition of `events`), the highest offset applied, and the offsets below it
//! that were not applied yet when the state was exported. It travels with the key's exported
//! state, so whoever imports the state recognises a re-delivered update as already applied.
//!
//! The caller's contract: the updates of one key from one source arrive in offset order
//! (re-deliveries aside), so everything at or below the highest applied offset is applied,
//! except what the caller still held back (a reorder wait) when it exported the state: those it
//! names at export ([`Applied::exported`]) and they are listed as skipped.

/// Per-source positions of one key's applied updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Per source, sorted by source: the highest offset applied.
    highest: Vec<(i32, i64)>,
    /// Offsets at or below their source's highest that are not applied, sorted.
    skipped: Vec<(i32, i64)>,
}

impl Applied {
    pub(crate) fn from_parts(mut highest: Vec<(i32, i64)>, mut skipped: Vec<(i32, i64)>) -> Self {
        highest.sort_unstable();
        highest.dedup_by_key(|x| x.0);
        skipped.sort_unstable();
        skipped.dedup();
        Self { highest, skipped }
    }

    pub(crate) fn highest(&self) -> &[(i32, i64)] {
        &self.highest
    }

    pub(crate) fn skipped(&self) -> &[(i32, i64)] {
        &self.skipped
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.highest.capacity() + self.skipped.capacity()) * std::mem::size_of::<(i32, i64)>()
    }

    fn highest_of(&self, source: i32) -> Option<i64> {
        self.highest
            .binary_search_by_key(&source, |x| x.0)
            .ok()
            .map(|i| self.highest[i].1)
    }

    /// Whether the update at (`source`, `offset`) is reflected in the state.
    pub fn contains(&self, source: i32, offset: i64) -> bool {
        self.highest_of(source).is_some_and(|h| offset <= h)
            && self.skipped.binary_search(&(source, offset)).is_err()
    }

    /// The update at (`source`, `offset`) was applied.
    pub fn record(&mut self, source: i32, offset: i64) {
        match self.highest.binary_search_by_key(&source, |x| x.0) {
            Ok(i) => self.highest[i].1 = self.highest[i].1.max(offset),
            Err(i) => self.highest.insert(i, (source, offset)),
        }
        if let Ok(i) = self.skipped.binary_search(&(source, offset)) {
            self.skipped.remove(i);
        }
    }

    /// An update at (`source`, `offset`) arrived: `false` if the state already reflects it (a
    /// re-delivery), else `true`; a skipped offset stops being skipped (it is on its way to be
    /// applied now, and the caller names it again at export while it waits).
    pub fn admit(&mut self, source: i32, offset: i64) -> bool {
        if let Ok(i) = self.skipped.binary_search(&(source, offset)) {
            self.skipped.remove(i);
            return true;
        }
        !self.contains(source, offset)
    }

    /// What to export: these positions, with `waiting` (updates the caller admitted and holds
    /// but has not applied) listed as skipped where they are at or below their source's highest.
    pub fn exported(&self, waiting: impl IntoIterator<Item = (i32, i64)>) -> Applied {
        let mut skipped = self.skipped.clone();
        skipped.extend(
            waiting
                .into_iter()
                .filter(|&(s, o)| self.highest_of(s).is_some_and(|h| o <= h)),
        );
        Applied::from_parts(self.highest.clone(), skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_up_to_the_highest_are_applied_except_the_skipped() {
        let mut a = Applied::default();
        assert!(!a.contains(0, 0));
        a.record(0, 10);
        a.record(2, 3);
        a.record(0, 7);
        assert!(a.contains(0, 10) && a.contains(0, 0) && a.contains(2, 3));
        assert!(!a.contains(0, 11) && !a.contains(1, 0) && !a.contains(2, 4));
        // Exported while (0, 8) waits (an inversion within a reorder wait) and (0, 12) waits.
        let mut back = a.exported([(0, 8), (0, 12)]);
        assert!(!back.contains(0, 8), "held back at export: not applied");
        assert!(back.contains(0, 9) && !back.contains(0, 12));
        assert_eq!(back.skipped(), &[(0, 8)]);
        // After an import: the re-delivered 9 is a duplicate, the skipped 8 and 12 are fresh.
        assert!(!back.admit(0, 9));
        assert!(back.admit(0, 8));
        assert!(back.admit(0, 12));
        back.record(0, 8);
        back.record(0, 12);
        assert!(back.contains(0, 8) && back.contains(0, 12) && back.skipped().is_empty());
    }

    #[test]
    fn parts_are_normalised() {
        let a = Applied::from_parts(vec![(3, 1), (1, 5)], vec![(1, 2), (1, 2)]);
        assert_eq!(a.highest(), &[(1, 5), (3, 1)]);
        assert_eq!(a.skipped(), &[(1, 2)]);
        assert!(!a.contains(1, 2) && a.contains(1, 3) && a.contains(3, 1));
    }
}
