//! The recent tail of committed records, kept in memory so subscribers that
//! follow the head do not read the WAL. Bounded by bytes and by count; older
//! records are read back from the WAL.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::Version;

pub struct Tail {
    records: VecDeque<(Version, Bytes)>,
    bytes: usize,
    max_bytes: usize,
    max_records: usize,
}

impl Tail {
    pub fn new(max_bytes: usize, max_records: usize) -> Tail {
        Tail {
            records: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_records,
        }
    }

    /// Appends the record of `version`, which must follow the last one (a
    /// gap empties the cache first, so it always holds consecutive versions).
    pub fn push(&mut self, version: Version, record: Bytes) {
        if self.records.back().is_some_and(|(v, _)| *v + 1 != version) {
            self.records.clear();
            self.bytes = 0;
        }
        self.bytes += record.len();
        self.records.push_back((version, record));
        while self.bytes > self.max_bytes || self.records.len() > self.max_records {
            match self.records.pop_front() {
                Some((_, r)) => self.bytes -= r.len(),
                None => break,
            }
        }
    }

    /// Up to `max` consecutive records from `from` to `to`, if `from` is in
    /// the cache.
    pub fn get(&self, from: Version, to: Version, max: usize) -> Vec<(Version, Bytes)> {
        let Some(&(first, _)) = self.records.front() else {
            return Vec::new();
        };
        if from < first {
            return Vec::new();
        }
        let start = (from - first) as usize;
        self.records
            .iter()
            .skip(start)
            .take_while(|(v, _)| *v <= to)
            .take(max)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_consecutive() {
        let mut t = Tail::new(10, 100);
        for v in 1..=5 {
            t.push(v, Bytes::from(vec![0u8; 3]));
        }
        // 3 records of 3 bytes fit in 10.
        assert!(t.get(2, 5, 10).is_empty());
        let got: Vec<_> = t.get(3, 4, 10).into_iter().map(|(v, _)| v).collect();
        assert_eq!(got, vec![3, 4]);
        t.push(9, Bytes::from_static(b"x"));
        assert!(t.get(5, 9, 10).is_empty());
        assert_eq!(t.get(9, 9, 10).len(), 1);
    }
}
