//! `e2e`: open-loop produce at a fixed `--rate`, consumers on every partition,
//! latency from each message's INTENDED send time (stamped in its payload) to
//! its arrival at a consumer. Sends follow the schedule whether or not
//! earlier requests were acknowledged, so a stall shows up as latency instead
//! of being hidden (no coordinated omission).

use crate::args::E2eArgs;
use crate::consume::offsets;
use crate::pacer::Pacer;
use crate::payload::{read_stamp, Clock, Payloads};
use crate::produce::{base_report, build_batch, ProduceSpec};
use crate::report::new_histogram;
use crate::setup::Session;
use anyhow::Result;
use coremq_client::{finish_produce, Client, FetchOptions, OffsetSpec, PendingFetch, ProduceAck};
use coremq_wire::batch::records_from;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_RATE: u64 = 100_000;
/// Largest number of messages per request in e2e (smaller than produce's
/// default: at a fixed rate, batches are what one slot of schedule brings).
pub const DEFAULT_BATCH: usize = 500;
/// Default schedule slot (`--slot-us`). Each producer sends what is due every
/// slot, so a message waits on average half a slot (at most one) before it
/// leaves, where tokio's 1 ms interval added ~0.5 ms plus its lateness. Each
/// slot costs one request per producer, on both sides of a shared 2-core
/// host: 100 µs slots took ~40% of a core in the load generator (vs ~17% at
/// 1 ms) and raised the broker's request rate 5x, which made latency worse
/// there; 300 µs had the best medians (README, "End-to-end latency work").
pub const DEFAULT_SLOT_US: u64 = 300;
/// Bound on requests awaiting acks per producer: memory safety only; the
/// schedule (and so the measured latency) does not depend on it.
const MAX_OUTSTANDING: usize = 4096;

struct Counters {
    acked: AtomicU64,
    received: AtomicU64,
    producing_done: AtomicBool,
}

pub async fn run(args: E2eArgs) -> Result<ExitCode> {
    let common = &args.common();
    let mut session = Session::open(common).await?;
    let run_started = Instant::now();
    let cpu_at_start = crate::report::process_cpu_seconds();
    let mut spec = ProduceSpec::from_common(common, session.partitions);
    spec.batch = common.batch_or(DEFAULT_BATCH);
    let rate = common.rate.unwrap_or(DEFAULT_RATE).max(1);
    let duration = match (common.duration, common.messages) {
        (Some(d), _) => d,
        (None, Some(m)) => Duration::from_secs_f64(m as f64 / rate as f64),
        (None, None) => crate::produce::DEFAULT_DURATION,
    };
    let slot = Duration::from_micros(args.slot_us.max(1));
    let clock = Clock::new();
    let counters = Arc::new(Counters {
        acked: AtomicU64::new(0),
        received: AtomicU64::new(0),
        producing_done: AtomicBool::new(false),
    });
    let starts = offsets(
        &session.client,
        &spec.topic,
        session.partitions,
        OffsetSpec::Latest,
    )
    .await?;
    eprintln!(
        "e2e: {rate} msg/s of {} B for {:.1} s over {} partitions, {} producers",
        spec.msg_size,
        duration.as_secs_f64(),
        spec.partitions,
        spec.producers
    );
    let consumers: Vec<_> = starts
        .iter()
        .enumerate()
        .map(|(partition, &offset)| {
            tokio::spawn(consumer(
                session.client.clone(),
                spec.topic.clone(),
                partition as u32,
                offset,
                clock,
                counters.clone(),
                args.drain,
            ))
        })
        .collect();
    let start = Instant::now();
    let producers: Vec<_> = (0..spec.producers)
        .map(|id| {
            tokio::spawn(producer(
                session.client.clone(),
                spec.clone(),
                id,
                rate as f64 / spec.producers as f64,
                duration,
                slot,
                clock,
                counters.clone(),
            ))
        })
        .collect();
    let mut report = base_report("e2e", common, &session, &spec);
    let mut sent = 0;
    for task in producers {
        let (task_sent, errors) = task.await?;
        sent += task_sent;
        for error in errors {
            report.note_error(error);
        }
    }
    let produce_elapsed = start.elapsed();
    counters.producing_done.store(true, Ordering::Release);
    let mut histogram = new_histogram();
    for task in consumers {
        let (part, errors) = task.await?;
        histogram.add(&part)?;
        for error in errors {
            report.note_error(error);
        }
    }
    let acked = counters.acked.load(Ordering::Acquire);
    let received = counters.received.load(Ordering::Acquire);
    report.set_throughput(
        received,
        received * spec.msg_size as u64,
        produce_elapsed.as_secs_f64(),
    );
    report.set_latency("intended send time -> consumed (open loop)", &histogram);
    report.extra.insert("target_rate".into(), rate.into());
    report.extra.insert("slot_us".into(), args.slot_us.into());
    report.extra.insert(
        "pacing".into(),
        if Pacer::new().is_precise() {
            "timerfd"
        } else {
            "tokio-timer-1ms"
        }
        .into(),
    );
    // CPU of this process only (all its threads; not the spawned broker).
    if let (Some(end), Some(begin)) = (crate::report::process_cpu_seconds(), cpu_at_start) {
        let cpu = end - begin;
        let wall = run_started.elapsed().as_secs_f64();
        report.extra.insert(
            "loadgen_cpu_s".into(),
            ((cpu * 100.0).round() / 100.0).into(),
        );
        report.extra.insert(
            "loadgen_cpu_pct".into(),
            ((cpu / wall * 1000.0).round() / 10.0).into(),
        );
    }
    report.extra.insert("sent".into(), sent.into());
    report.extra.insert("acked".into(), acked.into());
    report.extra.insert("received".into(), received.into());
    if received < acked {
        report.note_error(format!(
            "{} acknowledged messages were not consumed within the {:?} drain",
            acked - received,
            args.drain
        ));
    }
    if session.broker_died() {
        report.note_error("the broker died during the run");
    } else {
        report.add_broker_stats(&session.admin).await;
    }
    report.finish(common)
}

#[allow(clippy::too_many_arguments)]
async fn producer(
    client: Client,
    spec: ProduceSpec,
    id: usize,
    rate: f64,
    duration: Duration,
    slot: Duration,
    clock: Clock,
    counters: Arc<Counters>,
) -> (u64, Vec<String>) {
    let mut errors = Vec::new();
    let mut payloads = Payloads::new(spec.msg_size);
    let mut pacer = Pacer::new();
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let total = (duration.as_secs_f64() * rate).round() as u64;
    let nanos_per_message = 1e9 / rate;
    // Message i of this producer is due at start + i / rate: its INTENDED
    // send time, stamped in its payload whatever time it actually leaves.
    let intended = move |i: u64| start_ns + (i as f64 * nanos_per_message) as u64;
    let slot_ns = (slot.as_nanos() as u64).max(1);
    // Every producer ticks at the same instants: their timers expire in one
    // hrtimer interrupt and wake the runtime once per slot, not once per
    // producer (each wake-up costs a context switch on a shared core).
    let mut tick = 0u64;
    let mut sent = 0u64;
    let mut partition = id as u32 % spec.partitions;
    let mut in_flight = FuturesUnordered::new();
    let note = |errors: &mut Vec<String>, result, count| match result {
        Ok(()) => {
            counters.acked.fetch_add(count, Ordering::AcqRel);
        }
        Err(error) => {
            if errors.len() < 100 {
                errors.push(format!("produce: {error}"));
            }
        }
    };
    while sent < total {
        // Sleep to the next slot boundary (a precise hrtimer, see pacer.rs).
        // Acks are not awaited here: the schedule never waits for them.
        pacer
            .sleep_until(start + Duration::from_nanos(tick * slot_ns))
            .await;
        let now = clock.now_ns();
        let due = if now < start_ns {
            0
        } else {
            (((now - start_ns) as f64 / nanos_per_message) as u64 + 1).min(total)
        };
        while sent < due {
            if in_flight.len() >= MAX_OUTSTANDING {
                // Memory bound only; the latency of what waits here still
                // counts from its intended time.
                if let Some((result, count)) = in_flight.next().await {
                    note(&mut errors, ack_result(result), count);
                }
            }
            let count = (due - sent).min(spec.batch as u64);
            // The sequence in the payload is the schedule index.
            let mut index = sent;
            let batch = build_batch(&mut payloads, &mut index, count, intended, None);
            sent += count;
            let this_partition = partition;
            partition = (partition + 1) % spec.partitions;
            let route = client.route_for(&spec.topic, this_partition);
            match client
                .start_produce_owned(route, &spec.topic, this_partition, batch.into())
                .await
            {
                Ok(pending) => {
                    in_flight.push(async move { (finish_produce(pending, 1).await, count) })
                }
                Err(error) => {
                    errors.push(format!("produce: {error}"));
                    if error.is_connection() {
                        return (sent, errors);
                    }
                }
            }
        }
        // Collect the acks that have arrived, without waiting.
        while let Some(Some((result, count))) = in_flight.next().now_or_never() {
            note(&mut errors, ack_result(result), count);
        }
        // The next slot after now (slots missed while busy are skipped: what
        // they would have sent goes out in the next one, stamped as due).
        let elapsed = start.elapsed().as_nanos() as u64;
        tick = (tick + 1).max(elapsed / slot_ns + 1);
    }
    while let Some((result, count)) = in_flight.next().await {
        note(&mut errors, ack_result(result), count);
    }
    (sent, errors)
}

fn ack_result(
    result: coremq_client::Result<Vec<coremq_client::Result<ProduceAck>>>,
) -> coremq_client::Result<()> {
    result
        .and_then(|mut r| {
            r.pop()
                .unwrap_or(Err(coremq_client::Error::Protocol("no result".into())))
        })
        .map(|_| ())
}

async fn consumer(
    client: Client,
    topic: String,
    partition: u32,
    mut offset: u64,
    clock: Clock,
    counters: Arc<Counters>,
    drain: Duration,
) -> (Histogram<u64>, Vec<String>) {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    let options = FetchOptions {
        max_bytes: 4 * 1024 * 1024,
        max_wait: Duration::from_millis(50),
        min_bytes: 1,
    };
    let mut drain_deadline: Option<Instant> = None;
    // The fetch in flight. As soon as one answers, the next is queued (its
    // offset read from the batch headers alone), and only then are the
    // records decoded and timed: the broker holds a long poll again while
    // this side works, so a message appended meanwhile is not left waiting
    // for the processing as well as for the request's trip.
    let mut pending: Option<PendingFetch> = None;
    loop {
        if counters.producing_done.load(Ordering::Acquire) {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + drain);
            let all_in =
                counters.received.load(Ordering::Acquire) >= counters.acked.load(Ordering::Acquire);
            if all_in || Instant::now() >= deadline {
                break;
            }
        }
        let fetched = match pending.take() {
            Some(fetch) => fetch.wait().await,
            None => client.fetch(&topic, partition, offset, &options).await,
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                errors.push(format!("fetch {topic}/{partition}@{offset}: {error}"));
                if error.is_connection() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = clock.now_ns();
        if let Ok(summary) = fetched.summarize(false) {
            if summary.records > 0 {
                match client
                    .start_fetch(&topic, partition, summary.next_offset, &options)
                    .await
                {
                    Ok(next) => pending = Some(next),
                    // Retried below by a plain fetch.
                    Err(error) => tracing::debug!(%error, "queueing the next fetch"),
                }
            }
        }
        let mut count = 0;
        for record in records_from(&fetched.records, offset) {
            match record {
                Ok(record) => {
                    if let Some((_, intended_ns)) = read_stamp(record.value) {
                        let latency_us = now.saturating_sub(intended_ns) / 1000;
                        let _ = histogram.record(latency_us.max(1));
                    }
                    offset = record.offset + 1;
                    count += 1;
                }
                Err(error) => {
                    errors.push(format!("{topic}/{partition}@{offset}: {error}"));
                    return (histogram, errors);
                }
            }
        }
        if pending
            .as_ref()
            .is_some_and(|next| next.requested_offset() != offset)
        {
            // Header pass and records disagree (cannot happen with whole
            // batches): drop the queued fetch, fetch from `offset`.
            pending = None;
        }
        counters.received.fetch_add(count, Ordering::AcqRel);
    }
    (histogram, errors)
}
