//! A compact set of fragment indices.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// A set of fragment indices stored as sorted, disjoint, non-adjacent ranges.
///
/// Job reports use it so that a job of ten million fragments costs a few bytes to describe when
/// its fragments complete in runs, never one entry per fragment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentSet {
    ranges: Vec<Range<usize>>,
}

impl FragmentSet {
    /// An empty set.
    pub const fn new() -> Self {
        FragmentSet { ranges: Vec::new() }
    }

    /// A set holding every index of `range`.
    pub fn from_range(range: Range<usize>) -> Self {
        let mut s = FragmentSet::new();
        s.insert_range(range);
        s
    }

    /// Adds one index.
    pub fn insert(&mut self, index: usize) {
        self.insert_range(index..index + 1);
    }

    /// Adds every index of `range`, merging with neighbours.
    pub fn insert_range(&mut self, range: Range<usize>) {
        if range.start >= range.end {
            return;
        }
        // Fast path: appending at the end (the common case for in-order completion).
        if let Some(last) = self.ranges.last_mut() {
            if range.start >= last.start && range.start <= last.end {
                last.end = last.end.max(range.end);
                return;
            }
            if range.start > last.end {
                self.ranges.push(range);
                return;
            }
        } else {
            self.ranges.push(range);
            return;
        }
        // General case: find the first range that ends at or after range.start.
        let i = self.ranges.partition_point(|r| r.end < range.start);
        let mut j = i;
        let mut start = range.start;
        let mut end = range.end;
        while j < self.ranges.len() && self.ranges[j].start <= end {
            start = start.min(self.ranges[j].start);
            end = end.max(self.ranges[j].end);
            j += 1;
        }
        self.ranges.splice(i..j, std::iter::once(start..end));
    }

    /// Adds every index of `other`.
    pub fn extend_from(&mut self, other: &FragmentSet) {
        for r in &other.ranges {
            self.insert_range(r.clone());
        }
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= index);
        i < self.ranges.len() && self.ranges[i].start <= index
    }

    /// Number of indices in the set.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The disjoint ranges, ascending.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Every index, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }

    /// The indices as a vector (allocates one entry per index: for tests and small sets).
    pub fn to_vec(&self) -> Vec<usize> {
        self.iter().collect()
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
        assert_eq!(s.ranges(), &[0..20]);
        s.insert_range(30..40);
        s.insert_range(25..32);
        assert_eq!(s.ranges(), &[0..20, 25..40]);
        s.insert(20);
        s.insert(22);
        assert_eq!(s.ranges(), &[0..21, 22..23, 25..40]);
        s.insert_range(0..100);
        assert_eq!(s.ranges(), &[0..100]);
        assert_eq!(s.len(), 100);
    }

    #[test]
    fn contains_and_iter_agree() {
        let s: FragmentSet = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(s.ranges(), &[1..4, 7..8, 9..11]);
        for i in 0..12 {
            assert_eq!(s.contains(i), [1, 2, 3, 7, 9, 10].contains(&i), "index {i}");
        }
        assert_eq!(s.to_vec(), vec![1, 2, 3, 7, 9, 10]);
    }
}

impl FragmentSet {
    /// Removes every index of `range`; returns how many were present.
    pub fn remove_range(&mut self, range: Range<usize>) -> usize {
        if range.start >= range.end || self.ranges.is_empty() {
            return 0;
        }
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        let mut j = i;
        let mut removed = 0;
        let mut keep: [Option<Range<usize>>; 2] = [None, None];
        while j < self.ranges.len() && self.ranges[j].start < range.end {
            let r = &self.ranges[j];
            let lo = r.start.max(range.start);
            let hi = r.end.min(range.end);
            removed += hi - lo;
            if r.start < range.start {
                keep[0] = Some(r.start..range.start);
            }
            if r.end > range.end {
                keep[1] = Some(range.end..r.end);
            }
            j += 1;
        }
        if removed > 0 {
            self.ranges.splice(i..j, keep.into_iter().flatten());
        }
        removed
    }

    /// Removes one index; returns whether it was present.
    pub fn remove(&mut self, index: usize) -> bool {
        self.remove_range(index..index + 1) == 1
    }

    /// Removes and returns the lowest `n` indices (fewer if the set is smaller) as ranges.
    pub fn take_front(&mut self, mut n: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(first) = self.ranges.first_mut() else {
                break;
            };
            let len = first.end - first.start;
            if len <= n {
                n -= len;
                out.push(self.ranges.remove(0));
            } else {
                out.push(first.start..first.start + n);
                first.start += n;
                n = 0;
            }
        }
        out
    }

    /// The lowest index, if any.
    pub fn first(&self) -> Option<usize> {
        self.ranges.first().map(|r| r.start)
    }
}

#[cfg(test)]
mod remove_tests {
    use super::*;

    #[test]
    fn remove_splits_ranges_and_take_front_takes_lowest() {
        let mut s = FragmentSet::from_range(0..10);
        assert_eq!(s.remove_range(3..5), 2);
        assert_eq!(s.ranges(), &[0..3, 5..10]);
        assert!(!s.remove(4));
        assert!(s.remove(0));
        assert_eq!(s.ranges(), &[1..3, 5..10]);
        assert_eq!(s.take_front(4), vec![1..3, 5..7]);
        assert_eq!(s.ranges(), &[7..10]);
        assert_eq!(s.remove_range(0..100), 3);
        assert!(s.is_empty());
    }
}

impl FragmentSet {
    /// If `index` is in the set, the end of the run of consecutive indices containing it.
    pub fn run_end(&self, index: usize) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.end <= index);
        (i < self.ranges.len() && self.ranges[i].start <= index).then(|| self.ranges[i].end)
    }
}
