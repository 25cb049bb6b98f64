//! Results: one JSON object (`--json`) or a human summary, the broker's
//! per-shard histograms next to ours, and the `--check` targets.

use crate::args::Common;
use anyhow::Result;
use coremq_client::{Admin, ShardStats};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::process::ExitCode;

/// User + system CPU time of this process (all threads, not children).
pub fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to an rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Latencies in microseconds, 1 µs .. 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Serialize, Default, Debug)]
pub struct Report {
    pub workload: String,
    pub messages: u64,
    pub bytes: u64,
    pub duration_s: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// What the latency figures measure.
    pub latency: String,
    pub latency_samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
    pub topic: String,
    pub partitions: u32,
    pub shards: u16,
    pub msg_size: usize,
    pub batch: usize,
    pub producers: usize,
    pub broker: String,
    /// Workload-specific fields, flattened into the top-level object.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    pub broker_shards: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Value>,
}

impl Report {
    pub fn set_latency(&mut self, what: &str, histogram: &Histogram<u64>) {
        self.latency = what.to_string();
        self.latency_samples = histogram.len();
        if histogram.is_empty() {
            return;
        }
        self.p50_us = histogram.value_at_quantile(0.50);
        self.p90_us = histogram.value_at_quantile(0.90);
        self.p99_us = histogram.value_at_quantile(0.99);
        self.p999_us = histogram.value_at_quantile(0.999);
        self.max_us = histogram.max();
        self.mean_us = (histogram.mean() * 10.0).round() / 10.0;
    }

    pub fn set_throughput(&mut self, messages: u64, bytes: u64, seconds: f64) {
        self.messages = messages;
        self.bytes = bytes;
        self.duration_s = (seconds * 1000.0).round() / 1000.0;
        if seconds > 0.0 {
            self.msgs_per_sec = (messages as f64 / seconds).round();
            self.mb_per_sec = ((bytes as f64 / seconds / 1e6) * 100.0).round() / 100.0;
        }
    }

    pub fn note_error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(error.to_string());
        }
    }

    /// Adds the broker's per-shard stats (best effort: a dead broker has none).
    pub async fn add_broker_stats(&mut self, admin: &Admin) {
        match admin.stats(false).await {
            Ok(shards) => self.broker_shards = shards.iter().map(shard_json).collect(),
            Err(error) => tracing::warn!(%error, "could not read the broker's stats"),
        }
    }

    /// Prints the report and turns errors and `--check` into the exit code.
    pub fn finish(mut self, common: &Common) -> Result<ExitCode> {
        let mut failures = Vec::new();
        if common.check {
            if self.msgs_per_sec < common.check_min_rate {
                failures.push(format!(
                    "throughput {:.0} msg/s is below {:.0}",
                    self.msgs_per_sec, common.check_min_rate
                ));
            }
            if self.p99_us >= common.check_max_p99_us {
                failures.push(format!(
                    "P99 {} µs is not below {} µs",
                    self.p99_us, common.check_max_p99_us
                ));
            }
            if self.latency_samples == 0 {
                failures.push("no latency samples".to_string());
            }
            self.check = Some(json!({
                "passed": failures.is_empty(),
                "min_rate": common.check_min_rate,
                "max_p99_us": common.check_max_p99_us,
                "failures": failures,
            }));
        }
        if common.json {
            println!("{}", serde_json::to_string(&self)?);
        } else {
            println!("{}", self.human());
        }
        if !failures.is_empty() {
            eprintln!("check FAILED: {}", failures.join("; "));
            return Ok(ExitCode::from(2));
        }
        if common.check {
            eprintln!("check passed");
        }
        if self.errors > 0 {
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn human(&self) -> String {
        let mut out = format!(
            "{}: {} messages of {} B in {:.2} s = {:.0} msg/s, {:.1} MB/s\n\
             latency ({}, {} samples): p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  mean {:.1} µs\n\
             errors: {}\n",
            self.workload,
            self.messages,
            self.msg_size,
            self.duration_s,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.latency,
            self.latency_samples,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.errors,
        );
        for sample in &self.error_samples {
            out.push_str(&format!("  error: {sample}\n"));
        }
        for (key, value) in &self.extra {
            out.push_str(&format!("{key}: {value}\n"));
        }
        out.push_str(&broker_table(&self.broker_shards));
        out
    }
}

fn shard_json(stats: &ShardStats) -> Value {
    let histograms: Map<String, Value> = stats
        .histograms
        .iter()
        .map(|h| {
            (
                h.name.clone(),
                json!({
                    "count": h.count, "min": h.min, "p50": h.p50, "p90": h.p90,
                    "p99": h.p99, "p999": h.p999, "max": h.max,
                    "mean": (h.mean * 10.0).round() / 10.0,
                }),
            )
        })
        .collect();
    let counters: Map<String, Value> = stats
        .counters
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    json!({ "shard": stats.shard, "histograms": histograms, "counters": counters })
}

/// The broker's histograms, one line per shard and histogram.
pub fn broker_table(shards: &[Value]) -> String {
    if shards.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "broker (per shard, µs):\n  shard histogram        count      p50      p90      p99    p99.9      max\n",
    );
    for shard in shards {
        let id = shard["shard"].as_u64().unwrap_or(0);
        if let Some(histograms) = shard["histograms"].as_object() {
            for (name, h) in histograms {
                let field = |k: &str| h[k].as_u64().unwrap_or(0);
                out.push_str(&format!(
                    "  {id:>5} {name:<14} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                    field("count"),
                    field("p50"),
                    field("p90"),
                    field("p99"),
                    field("p999"),
                    field("max"),
                ));
            }
        }
        if let Some(counters) = shard["counters"].as_object() {
            if !counters.is_empty() {
                let list: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("  {id:>5} counters: {}\n", list.join(" ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contract_fields() {
        let mut histogram = new_histogram();
        for v in 1..=1000 {
            histogram.record(v).unwrap();
        }
        let mut report = Report::default();
        report.set_latency("test", &histogram);
        report.set_throughput(1000, 1_024_000, 0.5);
        let value = serde_json::to_value(&report).unwrap();
        for key in [
            "msgs_per_sec",
            "mb_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["msgs_per_sec"], 2000.0);
        assert_eq!(value["max_us"], 1000);
        assert!((value["p99_us"].as_u64().unwrap() as i64 - 990).abs() <= 1);
    }
}
