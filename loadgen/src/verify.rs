//! `verify`: fetches every message named in an ack log and compares its
//! payload's crc32. `lost`: acknowledged but not readable at its offset;
//! `corrupt`: readable but with another checksum (or in a batch that fails
//! its CRC).

use crate::acklog;
use crate::args::VerifyArgs;
use crate::report::{new_histogram, Report};
use crate::setup::Session;
use anyhow::Result;
use coremq_client::{Client, ErrorCode, FetchOptions};
use coremq_wire::batch::records_from;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Tally {
    pub checked: u64,
    pub lost: u64,
    pub corrupt: u64,
    /// Below the partition's log start: released by retention, not lost.
    pub expired: u64,
}

pub async fn run(args: VerifyArgs) -> Result<ExitCode> {
    let common = &args.common();
    let (acked, lines) = acklog::read(&args.ack_log)?;
    let session = Session::connect(common).await?;
    eprintln!(
        "verify: {lines} acknowledged messages in {} partitions from {}",
        acked.len(),
        args.ack_log.display()
    );
    let start = Instant::now();
    let mut total = Tally::default();
    let mut histogram = new_histogram();
    let mut report = Report {
        workload: "verify".into(),
        topic: common.topic.clone(),
        shards: session.shards,
        broker: session.addr.clone(),
        ..Report::default()
    };
    for ((topic, partition), offsets) in &acked {
        match verify_partition(&session.client, topic, *partition, offsets, &mut histogram).await {
            Ok(tally) => {
                if tally.lost + tally.corrupt > 0 {
                    eprintln!(
                        "{topic}/{partition}: {} lost, {} corrupt of {}",
                        tally.lost,
                        tally.corrupt,
                        offsets.len()
                    );
                }
                total.checked += tally.checked;
                total.lost += tally.lost;
                total.corrupt += tally.corrupt;
                total.expired += tally.expired;
            }
            Err(error) => {
                report.note_error(format!("{topic}/{partition}: {error}"));
                total.lost += offsets.len() as u64;
            }
        }
    }
    report.set_throughput(total.checked, 0, start.elapsed().as_secs_f64());
    report.set_latency("fetch request -> response", &histogram);
    report.extra.insert("acked".into(), lines.into());
    report.extra.insert("checked".into(), total.checked.into());
    report.extra.insert("lost".into(), total.lost.into());
    report.extra.insert("corrupt".into(), total.corrupt.into());
    report.extra.insert("expired".into(), total.expired.into());
    let ok = total.lost == 0 && total.corrupt == 0;
    eprintln!(
        "verify: {} checked, {} lost, {} corrupt, {} released by retention: {}",
        total.checked,
        total.lost,
        total.corrupt,
        total.expired,
        if ok { "OK" } else { "FAILED" }
    );
    let code = report.finish(common)?;
    Ok(if ok { code } else { ExitCode::FAILURE })
}

/// Walks the partition from the lowest acknowledged offset to the highest.
async fn verify_partition(
    client: &Client,
    topic: &str,
    partition: u32,
    offsets: &BTreeMap<u64, u32>,
    histogram: &mut Histogram<u64>,
) -> coremq_client::Result<Tally> {
    let mut tally = Tally::default();
    let (Some((&first, _)), Some((&last, _))) =
        (offsets.first_key_value(), offsets.last_key_value())
    else {
        return Ok(tally);
    };
    let options = FetchOptions {
        max_bytes: 8 * 1024 * 1024,
        max_wait: Duration::ZERO,
        min_bytes: 0,
    };
    // Retention may have released the oldest acknowledged messages: those
    // are `expired`, not lost (the log start only moves by retention).
    let log_start = client
        .list_offset(topic, partition, coremq_client::OffsetSpec::Earliest)
        .await?;
    tally.expired = offsets.range(..log_start).count() as u64;
    let mut offset = first.max(log_start);
    let mut seen = tally.expired;
    while offset <= last {
        let sent = Instant::now();
        let fetched = match client.fetch(topic, partition, offset, &options).await {
            Ok(fetched) => fetched,
            Err(error) if error.code() == Some(ErrorCode::OffsetOutOfRange) => break,
            Err(error) => return Err(error),
        };
        let _ = histogram.record((sent.elapsed().as_micros() as u64).max(1));
        let before = offset;
        for record in records_from(&fetched.records, offset) {
            match record {
                Ok(record) => {
                    if let Some(&crc) = offsets.get(&record.offset) {
                        seen += 1;
                        tally.checked += 1;
                        if crc32fast::hash(record.value) != crc {
                            tally.corrupt += 1;
                        }
                    }
                    offset = record.offset + 1;
                }
                Err(error) => {
                    // A batch that fails its CRC: count what it should hold as corrupt.
                    tracing::warn!(%error, topic, partition, offset, "corrupt batch");
                    let next = fetched
                        .summarize(false)
                        .map(|s| s.next_offset)
                        .unwrap_or(offset + 1)
                        .max(offset + 1);
                    let bad = offsets.range(offset..next).count() as u64;
                    seen += bad;
                    tally.checked += bad;
                    tally.corrupt += bad;
                    offset = next;
                    break;
                }
            }
        }
        if offset == before {
            // Nothing at or after `offset`: everything still expected is lost.
            break;
        }
    }
    tally.lost = offsets.len() as u64 - seen;
    Ok(tally)
}
