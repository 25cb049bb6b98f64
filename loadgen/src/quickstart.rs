//! `quickstart`: spawns a broker (like --spawn-broker), creates a topic,
//! produces for a few seconds, reads it all back, prints a short summary.

use crate::args::QuickstartArgs;
use crate::consume::{consume_ranges, offsets};
use crate::produce::{fill_report, produce_load, ProduceSpec};
use crate::report::{broker_table, Report};
use crate::setup::Session;
use anyhow::Result;
use coremq_client::{FetchOptions, OffsetSpec};
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(args: QuickstartArgs) -> Result<ExitCode> {
    let common = args.common();
    let session = Session::open(&common).await?;
    let spec = ProduceSpec::from_common(&common, session.partitions);
    let starts = offsets(
        &session.client,
        &spec.topic,
        session.partitions,
        OffsetSpec::Latest,
    )
    .await?;
    eprintln!(
        "quickstart: producing to {:?} ({} partitions on {} shards)",
        spec.topic, session.partitions, session.shards
    );
    let produced = produce_load(&session.client, &spec).await?;
    let mut produce = Report::default();
    fill_report(&mut produce, &produced, "");
    let ends = offsets(
        &session.client,
        &spec.topic,
        session.partitions,
        OffsetSpec::Latest,
    )
    .await?;
    eprintln!("quickstart: consuming it back");
    let consumed = consume_ranges(
        &session.client,
        &spec.topic,
        &starts,
        &ends,
        &FetchOptions::default(),
        true,
        Duration::from_secs(30),
    )
    .await;
    let mut report = Report::default();
    report.add_broker_stats(&session.admin).await;
    let consumed_rate = consumed.records as f64 / consumed.elapsed.as_secs_f64().max(1e-9);
    let errors = produced.errors + consumed.errors.len() as u64;
    let mut out = String::new();
    out.push_str(&format!(
        "CoreMQ quickstart: broker {} ({} shards, fsync {}), topic {:?} ({} partitions), {} B messages\n",
        session.addr, session.shards, common.fsync, spec.topic, session.partitions, spec.msg_size
    ));
    out.push_str(&format!(
        "  produced {:>10} msgs in {:.2} s = {:>9.0} msg/s ({:.0} MB/s); ack latency per {}-msg batch: p50 {} µs, p99 {} µs, max {} µs\n",
        produced.messages,
        produced.elapsed.as_secs_f64(),
        produce.msgs_per_sec,
        produce.mb_per_sec,
        spec.batch,
        produce.p50_us,
        produce.p99_us,
        produce.max_us
    ));
    out.push_str(&format!(
        "  consumed {:>10} msgs in {:.2} s = {:>9.0} msg/s (CRC checked)\n",
        consumed.records,
        consumed.elapsed.as_secs_f64(),
        consumed_rate
    ));
    out.push_str(&format!("  errors: {errors}\n"));
    for error in produced
        .error_samples
        .iter()
        .chain(&consumed.errors)
        .take(5)
    {
        out.push_str(&format!("    {error}\n"));
    }
    out.push_str(&broker_table(&report.broker_shards));
    println!("{out}");
    Ok(if errors == 0 && consumed.records == produced.messages {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
