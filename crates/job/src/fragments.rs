//! A compact set of fragment indices.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;

/// A set of fragment indices stored as disjoint, non-adjacent ranges in a B-tree, with its
/// size cached.
///
/// Job reports use it so that a job of ten million fragments costs a few bytes to describe when
/// its fragments complete in runs, never one entry per fragment; the scheduler uses it for
/// assignments, where every insert, remove and lookup is O(log ranges) whatever the layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentSet {
    /// start → end of each range.
    ranges: BTreeMap<usize, usize>,
    len: usize,
}

fn overlap(a: &Range<usize>, s: usize, e: usize) -> usize {
    e.min(a.end).saturating_sub(s.max(a.start))
}

impl FragmentSet {
    /// An empty set.
    pub const fn new() -> Self {
        FragmentSet {
            ranges: BTreeMap::new(),
            len: 0,
        }
    }

    /// A set holding every index of `range`.
    pub fn from_range(range: Range<usize>) -> Self {
        let mut s = FragmentSet::new();
        s.insert_range(range);
        s
    }

    /// Adds one index; returns whether it was new.
    pub fn insert(&mut self, index: usize) -> bool {
        self.insert_range(index..index + 1) == 1
    }

    /// Adds every index of `range`, merging with neighbours; returns how many were new.
    pub fn insert_range(&mut self, range: Range<usize>) -> usize {
        if range.start >= range.end {
            return 0;
        }
        let (mut start, mut end) = (range.start, range.end);
        let mut covered = 0;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                covered += overlap(&range, s, e);
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            covered += overlap(&range, s, e);
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        let added = range.len() - covered;
        self.len += added;
        added
    }

    /// Adds every index of `other`; returns how many were new.
    pub fn extend_from(&mut self, other: &FragmentSet) -> usize {
        other.ranges().map(|r| self.insert_range(r)).sum()
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        self.run_end(index).is_some()
    }

    /// Number of indices in the set (O(1)).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The disjoint ranges, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.ranges.iter().map(|(s, e)| *s..*e)
    }

    /// The disjoint ranges, ascending, as a vector.
    pub fn to_ranges(&self) -> Vec<Range<usize>> {
        self.ranges().collect()
    }

    /// Every index, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranges().flatten()
    }

    /// The indices as a vector (allocates one entry per index: for tests and small sets).
    pub fn to_vec(&self) -> Vec<usize> {
        self.iter().collect()
    }

    /// If `index` is in the set, the end of the run of consecutive indices containing it.
    pub fn run_end(&self, index: usize) -> Option<usize> {
        match self.ranges.range(..=index).next_back() {
            Some((_, &e)) if e > index => Some(e),
            _ => None,
        }
    }

    /// The part of the set inside `range`.
    pub fn intersect_range(&self, range: Range<usize>) -> FragmentSet {
        let mut out = FragmentSet::new();
        if range.start >= range.end {
            return out;
        }
        for (&s, &e) in self.ranges.range(..range.end).rev() {
            if e <= range.start {
                break;
            }
            out.insert_range(s.max(range.start)..e.min(range.end));
        }
        out
    }

    /// Removes every index of `range`; returns how many were present.
    pub fn remove_range(&mut self, range: Range<usize>) -> usize {
        if range.start >= range.end {
            return 0;
        }
        let hit: Vec<(usize, usize)> = self
            .ranges
            .range(..range.end)
            .rev()
            .take_while(|(_, &e)| e > range.start)
            .map(|(s, e)| (*s, *e))
            .collect();
        let mut removed = 0;
        for (s, e) in hit {
            self.ranges.remove(&s);
            removed += overlap(&range, s, e);
            if s < range.start {
                self.ranges.insert(s, range.start);
            }
            if e > range.end {
                self.ranges.insert(range.end, e);
            }
        }
        self.len -= removed;
        removed
    }

    /// Removes one index; returns whether it was present.
    pub fn remove(&mut self, index: usize) -> bool {
        self.remove_range(index..index + 1) == 1
    }

    /// Removes and returns the lowest `n` indices (fewer if the set is smaller) as ranges.
    #[must_use = "the fragments taken are no longer in the set"]
    pub fn take_front(&mut self, mut n: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        while n > 0 {
            let Some((s, e)) = self.ranges.pop_first() else {
                break;
            };
            let len = e - s;
            if len <= n {
                n -= len;
                self.len -= len;
                out.push(s..e);
            } else {
                out.push(s..s + n);
                self.ranges.insert(s + n, e);
                self.len -= n;
                n = 0;
            }
        }
        out
    }

    /// The lowest index, if any.
    pub fn first(&self) -> Option<usize> {
        self.ranges.first_key_value().map(|(s, _)| *s)
    }
}

impl FromIterator<usize> for FragmentSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut s = FragmentSet::new();
        for i in iter {
            s.insert(i);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_adjacent_and_overlapping_ranges() {
        let mut s = FragmentSet::new();
        s.insert_range(10..20);
        s.insert_range(0..5);
        s.insert_range(5..10);
        assert_eq!(s.to_ranges(), vec![0..20]);
        s.insert_range(30..40);
        s.insert_range(25..32);
        assert_eq!(s.to_ranges(), vec![0..20, 25..40]);
        s.insert(20);
        s.insert(22);
        assert_eq!(s.to_ranges(), vec![0..21, 22..23, 25..40]);
        s.insert_range(0..100);
        assert_eq!(s.to_ranges(), vec![0..100]);
        assert_eq!(s.len(), 100);
    }

    #[test]
    fn contains_and_iter_agree() {
        let s: FragmentSet = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(s.to_ranges(), vec![1..4, 7..8, 9..11]);
        for i in 0..12 {
            assert_eq!(s.contains(i), [1, 2, 3, 7, 9, 10].contains(&i), "index {i}");
        }
        assert_eq!(s.to_vec(), vec![1, 2, 3, 7, 9, 10]);
    }
}

#[cfg(test)]
mod remove_tests {
    use super::*;

    #[test]
    fn remove_splits_ranges_and_take_front_takes_lowest() {
        let mut s = FragmentSet::from_range(0..10);
        assert_eq!(s.remove_range(3..5), 2);
        assert_eq!(s.to_ranges(), vec![0..3, 5..10]);
        assert!(!s.remove(4));
        assert!(s.remove(0));
        assert_eq!(s.to_ranges(), vec![1..3, 5..10]);
        assert_eq!(s.take_front(4), vec![1..3, 5..7]);
        assert_eq!(s.to_ranges(), vec![7..10]);
        assert_eq!(s.remove_range(0..100), 3);
        assert!(s.is_empty());
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Random inserts and removes agree with a plain set, and the cached length stays exact.
    #[test]
    fn matches_a_plain_set() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m) as usize
        };
        let mut set = FragmentSet::new();
        let mut model = BTreeSet::new();
        for _ in 0..5000 {
            let a = next(200);
            let b = a + next(20);
            if next(3) == 0 {
                let removed = set.remove_range(a..b);
                let before = model.len();
                model.retain(|i| !(a..b).contains(i));
                assert_eq!(removed, before - model.len());
            } else {
                let added = set.insert_range(a..b);
                let before = model.len();
                model.extend(a..b);
                assert_eq!(added, model.len() - before);
            }
            assert_eq!(set.len(), model.len());
            let probe = next(220);
            assert_eq!(set.contains(probe), model.contains(&probe));
            let r = next(200)..next(200) + 30;
            let inter: Vec<usize> = model.iter().copied().filter(|i| r.contains(i)).collect();
            assert_eq!(set.intersect_range(r).to_vec(), inter);
        }
        assert_eq!(set.to_vec(), model.into_iter().collect::<Vec<_>>());
        let ranges = set.to_ranges();
        assert!(
            ranges.windows(2).all(|w| w[0].end < w[1].start),
            "disjoint, non-adjacent"
        );
    }
}
