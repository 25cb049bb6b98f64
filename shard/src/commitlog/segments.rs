//! Segment files: `<dir>/log/<base>.seg`, `base` the global log position of
//! the segment's first byte, zero-padded to 20 digits so names sort.

use std::collections::BTreeMap;
use std::rc::Rc;

pub const SEGMENT_SUFFIX: &str = ".seg";

pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// A segment retention released, kept for reuse (see
/// `StorageConfig::recycle_segments`): `<old base>.spare`. Recovery deletes
/// these; only the running engine reuses them.
pub const SPARE_SUFFIX: &str = ".spare";

pub fn spare_file_name(old_base: u64) -> String {
    format!("{old_base:020}{SPARE_SUFFIX}")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub struct Segment<F> {
    pub base: u64,
    pub size: u64,
    pub file: Rc<F>,
}

impl<F> Segment<F> {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

impl<F> Clone for Segment<F> {
    fn clone(&self) -> Self {
        Segment {
            base: self.base,
            size: self.size,
            file: self.file.clone(),
        }
    }
}

/// The live segments, by base position.
pub struct Segments<F> {
    map: BTreeMap<u64, Segment<F>>,
}

impl<F> Default for Segments<F> {
    fn default() -> Self {
        Segments {
            map: BTreeMap::new(),
        }
    }
}

impl<F> Segments<F> {
    pub fn insert(&mut self, segment: Segment<F>) {
        if let Some(last) = self.map.values().next_back() {
            assert!(
                last.end() <= segment.base,
                "segments are added in log order"
            );
        }
        self.map.insert(segment.base, segment);
    }

    /// The segment holding `position`.
    pub fn find(&self, position: u64) -> Option<&Segment<F>> {
        let (_, segment) = self.map.range(..=position).next_back()?;
        (position < segment.end()).then_some(segment)
    }

    pub fn first(&self) -> Option<&Segment<F>> {
        self.map.values().next()
    }

    pub fn last(&self) -> Option<&Segment<F>> {
        self.map.values().next_back()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Segment<F>> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes and returns every segment that ends at or before `cut`.
    pub fn remove_before(&mut self, cut: u64) -> Vec<Segment<F>> {
        let keep = self.map.split_off(&cut);
        let removed = std::mem::replace(&mut self.map, keep);
        let removed: Vec<Segment<F>> = removed.into_values().collect();
        for segment in &removed {
            assert!(segment.end() <= cut, "a cut falls on a segment boundary");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(segment_file_name(4096), "00000000000000004096.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000004096.seg"),
            Some(4096)
        );
        assert_eq!(parse_segment_file_name("4096.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000409x.seg"), None);
        assert!(segment_file_name(9999) < segment_file_name(10000));
    }

    #[test]
    fn find_and_remove() {
        let mut segments = Segments::default();
        for base in [0, 100, 200] {
            segments.insert(Segment {
                base,
                size: 100,
                file: Rc::new(()),
            });
        }
        assert_eq!(segments.find(150).map(|s| s.base), Some(100));
        assert!(segments.find(300).is_none());
        let removed = segments.remove_before(200);
        assert_eq!(removed.len(), 2);
        assert_eq!(segments.first().map(|s| s.base), Some(200));
    }
}
