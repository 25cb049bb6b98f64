//! `consume`: pre-fills the topic, then reads back what was written, one
//! fetch loop per partition, counting records from batch headers (no
//! per-record decoding). Latency = fetch request → response. With
//! `--prefill 0` it writes nothing and reads what the topic already holds,
//! from each partition's log start to its end.

use crate::args::ConsumeArgs;
use crate::produce::{base_report, fill_report, produce_load, ProduceOutcome, ProduceSpec};
use crate::report::{new_histogram, Report};
use crate::setup::Session;
use anyhow::{Context, Result};
use coremq_client::{Client, FetchOptions, OffsetSpec, PendingFetch};
use hdrhistogram::Histogram;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub const DEFAULT_PREFILL: u64 = 500_000;

pub async fn run(args: ConsumeArgs) -> Result<ExitCode> {
    let common = &args.common();
    let session = Session::open(common).await?;
    let prefill = args.prefill;
    let mut spec = ProduceSpec::from_common(common, session.partitions);
    spec.messages = Some(prefill);
    spec.duration = None;
    // What the prefill writes is read back; without one, the whole topic.
    let from = if prefill == 0 {
        OffsetSpec::Earliest
    } else {
        OffsetSpec::Latest
    };
    let starts = offsets(&session.client, &spec.topic, session.partitions, from).await?;
    let filled = if prefill == 0 {
        eprintln!("consume: no prefill, reading what {:?} holds", spec.topic);
        ProduceOutcome::default()
    } else {
        eprintln!(
            "consume: pre-filling {prefill} messages of {} B",
            spec.msg_size
        );
        produce_load(&session.client, &spec).await?
    };
    let mut report = base_report("consume", common, &session, &spec);
    let mut produce_report = Report::default();
    fill_report(&mut produce_report, &filled, "produce");
    report.extra.insert(
        "prefill".into(),
        json!({
            "messages": filled.messages,
            "msgs_per_sec": produce_report.msgs_per_sec,
            "p99_us": produce_report.p99_us,
            "errors": filled.errors,
        }),
    );
    report.errors += filled.errors;
    report.error_samples.extend(filled.error_samples);
    let ends = offsets(
        &session.client,
        &spec.topic,
        session.partitions,
        OffsetSpec::Latest,
    )
    .await?;
    let limit = common.duration.unwrap_or(Duration::from_secs(60));
    let options = FetchOptions {
        max_bytes: args.fetch_bytes,
        max_wait: Duration::from_millis(100),
        min_bytes: 1,
    };
    let outcome = consume_ranges(
        &session.client,
        &spec.topic,
        &starts,
        &ends,
        &options,
        args.verify_crc,
        limit,
    )
    .await;
    // Payload bytes of what the prefill wrote; a topic read as found has
    // payloads of unknown size, so its batch bytes stand in for them.
    let payload_bytes = if prefill == 0 {
        outcome.bytes
    } else {
        outcome.records * spec.msg_size as u64
    };
    report.set_throughput(
        outcome.records,
        payload_bytes,
        outcome.elapsed.as_secs_f64(),
    );
    report
        .extra
        .insert("wire_bytes".into(), outcome.bytes.into());
    report.set_latency("fetch request -> response", &outcome.histogram);
    report
        .extra
        .insert("fetches".into(), outcome.fetches.into());
    let expected: u64 = ends
        .iter()
        .zip(&starts)
        .map(|(e, s)| e.saturating_sub(*s))
        .sum();
    if outcome.records < expected {
        report.note_error(format!(
            "read {} of the {expected} records in range within {limit:?}",
            outcome.records
        ));
    }
    for error in outcome.errors {
        report.note_error(error);
    }
    report.add_broker_stats(&session.admin).await;
    report.finish(common)
}

pub async fn offsets(
    client: &Client,
    topic: &str,
    partitions: u32,
    spec: OffsetSpec,
) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        out.push(
            client
                .list_offset(topic, partition, spec)
                .await
                .with_context(|| format!("list offsets of {topic}/{partition}"))?,
        );
    }
    Ok(out)
}

pub struct ConsumeOutcome {
    pub records: u64,
    /// Record batch bytes received (headers included).
    pub bytes: u64,
    pub fetches: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    pub errors: Vec<String>,
}

/// Reads partition p from `starts[p]` up to `ends[p]`, all partitions at once.
pub async fn consume_ranges(
    client: &Client,
    topic: &str,
    starts: &[u64],
    ends: &[u64],
    options: &FetchOptions,
    verify_crc: bool,
    limit: Duration,
) -> ConsumeOutcome {
    let start = Instant::now();
    let deadline = start + limit;
    let tasks: Vec<_> = starts
        .iter()
        .zip(ends)
        .enumerate()
        .map(|(partition, (&from, &to))| {
            let client = client.clone();
            let topic = topic.to_string();
            let options = options.clone();
            tokio::spawn(async move {
                read_partition(
                    &client,
                    &topic,
                    partition as u32,
                    from,
                    to,
                    &options,
                    verify_crc,
                    deadline,
                )
                .await
            })
        })
        .collect();
    let mut outcome = ConsumeOutcome {
        records: 0,
        bytes: 0,
        fetches: 0,
        elapsed: Duration::ZERO,
        histogram: new_histogram(),
        errors: Vec::new(),
    };
    for task in tasks {
        match task.await {
            Ok(part) => {
                outcome.records += part.records;
                outcome.bytes += part.bytes;
                outcome.fetches += part.fetches;
                let _ = outcome.histogram.add(&part.histogram);
                outcome.errors.extend(part.errors);
            }
            Err(error) => outcome
                .errors
                .push(format!("consumer task failed: {error}")),
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn read_partition(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
    to: u64,
    options: &FetchOptions,
    verify_crc: bool,
    deadline: Instant,
) -> ConsumeOutcome {
    let mut outcome = ConsumeOutcome {
        records: 0,
        bytes: 0,
        fetches: 0,
        elapsed: Duration::ZERO,
        histogram: new_histogram(),
        errors: Vec::new(),
    };
    let mut offset = from;
    // The next fetch is queued as soon as one answers (its offset read from
    // the batch headers alone), before this side decodes and checks the
    // records: the broker reads ahead and answers while we work.
    let mut pending: Option<(Instant, PendingFetch)> = None;
    while offset < to && Instant::now() < deadline {
        let (sent, fetched) = match pending.take() {
            Some((sent, fetch)) => (sent, fetch.wait().await),
            None => {
                let sent = Instant::now();
                (sent, client.fetch(topic, partition, offset, options).await)
            }
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                outcome
                    .errors
                    .push(format!("fetch {topic}/{partition}@{offset}: {error}"));
                break;
            }
        };
        let _ = outcome
            .histogram
            .record((sent.elapsed().as_micros() as u64).max(1));
        outcome.fetches += 1;
        // The header walk gives the next offset; the CRC pass, when asked
        // for, runs after the next fetch is on its way.
        let headers = fetched.summarize(false);
        if let Ok(headers) = &headers {
            let next = headers.next_offset;
            if next > offset && next < to && Instant::now() < deadline {
                let sent = Instant::now();
                if let Ok(fetch) = client.start_fetch(topic, partition, next, options).await {
                    pending = Some((sent, fetch));
                }
            }
        }
        let summary = if verify_crc {
            fetched.summarize(true)
        } else {
            headers
        };
        match summary {
            Ok(summary) => {
                let counted = summary.next_offset.min(to) - offset;
                outcome.records += counted.min(summary.records);
                outcome.bytes += fetched.records.len() as u64;
                offset = summary.next_offset;
            }
            Err(error) => {
                outcome
                    .errors
                    .push(format!("{topic}/{partition}@{offset}: {error}"));
                break;
            }
        }
    }
    outcome
}
