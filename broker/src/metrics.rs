//! Per-shard latency histograms (hdrhistogram) and counters, read by the
//! stats request. Owned by one shard; never shared across threads (snapshots
//! are plain data that can be).

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};

/// Highest value a histogram tracks: one minute in microseconds. Larger
/// values are clamped (a stall that long is reported as "at least a minute").
const HIGHEST_US: u64 = 60_000_000;

pub struct LatencyHistogram(RefCell<Histogram<u64>>);

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        // 3 significant digits: ~0.1% error; bounded memory (~40 KiB).
        let histogram = Histogram::new_with_bounds(1, HIGHEST_US, 3)
            .expect("static histogram bounds are valid");
        LatencyHistogram(RefCell::new(histogram))
    }

    pub fn record(&self, value: u64) {
        self.0
            .borrow_mut()
            .saturating_record(value.clamp(1, HIGHEST_US));
    }

    pub fn summary(&self, name: &str) -> HistogramSummary {
        HistogramSummary::of(name, &self.0.borrow())
    }

    pub fn reset(&self) {
        self.0.borrow_mut().reset();
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a shard measures about itself.
#[derive(Default)]
pub struct ShardMetrics {
    /// Produce request service time on the shard that received it (includes
    /// the group-commit wait under `always`).
    pub produce_us: LatencyHistogram,
    /// Fetch service time, long-poll waiting excluded.
    pub fetch_us: LatencyHistogram,
    /// Requests in flight on this shard when a request arrives.
    pub queue_depth: LatencyHistogram,
    pub requests: Cell<u64>,
    pub in_flight: Cell<u64>,
    pub produced_records: Cell<u64>,
    pub produced_bytes: Cell<u64>,
    pub fetched_bytes: Cell<u64>,
    pub forwarded_requests: Cell<u64>,
    pub errors: Cell<u64>,
    pub connections: Cell<u64>,
    pub connections_total: Cell<u64>,
    /// Connections closed by the idle or the partial-frame timeout.
    pub connections_timed_out: Cell<u64>,
    /// Connections refused at accept because of `--max-connections`.
    pub connections_refused: Cell<u64>,
    /// Times a connection stopped reading because a byte budget was used up.
    pub reads_paused: Cell<u64>,
}

pub fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

/// A histogram reduced to the figures the stats response carries.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSummary {
    pub name: String,
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl HistogramSummary {
    pub fn of(name: &str, h: &Histogram<u64>) -> HistogramSummary {
        let empty = h.is_empty();
        HistogramSummary {
            name: name.to_string(),
            count: h.len(),
            min: if empty { 0 } else { h.min() },
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: if empty { 0.0 } else { h.mean() },
        }
    }
}

/// One shard's stats, as plain data that can cross threads.
#[derive(Clone, Debug)]
pub struct ShardStatsSnapshot {
    pub shard: u16,
    pub histograms: Vec<HistogramSummary>,
    pub counters: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_recorded_values() {
        let h = LatencyHistogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        h.record(u64::MAX); // clamped, not an error
        let s = h.summary("x");
        assert_eq!(s.count, 1001);
        assert!((495..=505).contains(&s.p50), "{s:?}");
        assert!(s.max >= HIGHEST_US - HIGHEST_US / 1000);
        h.reset();
        assert_eq!(h.summary("x").count, 0);
    }
}
