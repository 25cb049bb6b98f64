//! Retention: which old segments may go. Pure; the engine applies the answer.
//!
//! Rule (whole segments only): the oldest segments up to a cut are deleted
//! when, for every live partition with data before the cut, that data is
//! past retention: its newest batch there was appended more than
//! `retention_ms` ago, or the partition keeps at least `retention_bytes`
//! after the cut. Data of deleted topics never holds a segment back. The
//! segment being written is never deleted.

use crate::index::PartitionIndex;

/// What retention needs to know about one partition.
pub struct PartitionView<'a> {
    pub index: &'a PartitionIndex,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

/// May this partition lose everything before `cut`?
pub fn releasable(p: &PartitionView<'_>, cut: u64, now_ms: i64) -> bool {
    let dropped = p.index.count_before(cut);
    if dropped == 0 {
        return true;
    }
    let newest = p
        .index
        .get(dropped - 1)
        .expect("dropped <= len")
        .append_time_ms;
    let by_time = p
        .retention_ms
        .is_some_and(|ms| newest < now_ms.saturating_sub(ms as i64));
    let kept = p.index.total_bytes() - p.index.bytes_of_first(dropped);
    let by_size = p.retention_bytes.is_some_and(|bytes| kept >= bytes);
    by_time || by_size
}

/// The furthest segment end (from `segment_ends`, oldest first, the active
/// segment excluded) up to which every partition agrees to drop data.
pub fn retention_cut(
    segment_ends: &[u64],
    partitions: &[PartitionView<'_>],
    now_ms: i64,
) -> Option<u64> {
    let mut cut = None;
    for &end in segment_ends {
        if partitions.iter().all(|p| releasable(p, end, now_ms)) {
            cut = Some(end);
        } else {
            break;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten 100-byte entries at positions 0, 100, ..., appended at t = 0..10.
    fn index() -> PartitionIndex {
        let mut index = PartitionIndex::new();
        for i in 0..10u64 {
            index.push(i, 1, 100, i * 100, 0, i as i64);
        }
        index
    }

    #[test]
    fn by_time_and_size() {
        let index = index();
        let forever = PartitionView {
            index: &index,
            retention_ms: None,
            retention_bytes: None,
        };
        assert!(releasable(&forever, 0, 100), "nothing before the cut");
        assert!(!releasable(&forever, 500, 100));
        let timed = PartitionView {
            index: &index,
            retention_ms: Some(10),
            retention_bytes: None,
        };
        // Newest entry before 500 was appended at t=4: expired once now - 10 > 4.
        assert!(!releasable(&timed, 500, 14));
        assert!(releasable(&timed, 500, 15));
        let sized = PartitionView {
            index: &index,
            retention_ms: None,
            retention_bytes: Some(500),
        };
        assert!(releasable(&sized, 500, 0), "keeps 500 bytes");
        assert!(!releasable(&sized, 600, 0), "would keep only 400");
    }

    #[test]
    fn cut_stops_at_the_first_segment_someone_needs() {
        let index = index();
        let sized = PartitionView {
            index: &index,
            retention_ms: None,
            retention_bytes: Some(300),
        };
        assert_eq!(
            retention_cut(&[200, 400, 800, 1000], &[sized], 0),
            Some(400)
        );
        let forever = PartitionView {
            index: &index,
            retention_ms: None,
            retention_bytes: None,
        };
        assert_eq!(retention_cut(&[200, 400], &[forever], 0), None);
        assert_eq!(
            retention_cut(&[200, 400], &[], 0),
            Some(400),
            "no live data at all"
        );
    }
}
