//! The produce engine (also used to pre-fill for `consume` and by
//! `quickstart`): closed loop, `--in-flight` requests per producer task, one
//! batch of `--batch` messages per request, latency = request sent → ack.

use crate::acklog::AckLogWriter;
use crate::args::{Common, ProduceArgs};
use crate::payload::{Clock, Payloads};
use crate::report::{new_histogram, Report};
use crate::setup::Session;
use anyhow::Result;
use coremq_client::{finish_produce, Client, ProduceAck};
use coremq_wire::batch::{BATCH_HEADER_LEN, RECORD_OVERHEAD};
use coremq_wire::BatchBuilder;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Messages per produce request by default: small enough that two requests
/// in flight keep the P99 low, large enough to amortise the per-request cost.
pub const DEFAULT_BATCH: usize = 250;

#[derive(Clone)]
pub struct ProduceSpec {
    pub topic: String,
    pub partitions: u32,
    pub msg_size: usize,
    pub batch: usize,
    pub producers: usize,
    pub in_flight: usize,
    pub rate: Option<u64>,
    pub duration: Option<Duration>,
    pub messages: Option<u64>,
    pub ack_log: Option<PathBuf>,
}

impl ProduceSpec {
    pub fn from_common(common: &Common, partitions: u32) -> ProduceSpec {
        let duration = match (common.duration, common.messages) {
            (None, None) => Some(DEFAULT_DURATION),
            (duration, _) => duration,
        };
        ProduceSpec {
            topic: common.topic.clone(),
            partitions,
            // Payloads carry a 16-byte stamp: that is the smallest size sent.
            msg_size: common.msg_size.max(crate::payload::STAMP_BYTES),
            batch: common.batch_or(DEFAULT_BATCH),
            producers: common.producers.max(1),
            in_flight: common.in_flight.max(1),
            rate: common.rate,
            duration,
            messages: common.messages,
            ack_log: None,
        }
    }
}

#[derive(Default)]
pub struct ProduceOutcome {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub histogram: Option<Histogram<u64>>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// A connection failed: the broker went away (or restarted).
    pub broker_gone: bool,
    pub ack_log_lines: u64,
}

struct Shared {
    client: Client,
    spec: ProduceSpec,
    clock: Clock,
    /// Messages not yet claimed by a producer task.
    remaining: AtomicU64,
    deadline: Option<Instant>,
    stop: AtomicBool,
    ack_log: Option<Mutex<AckLogWriter>>,
}

struct TaskResult {
    messages: u64,
    bytes: u64,
    histogram: Histogram<u64>,
    errors: Vec<String>,
    broker_gone: bool,
}

pub async fn run(args: ProduceArgs) -> Result<ExitCode> {
    let common = &args.common();
    let mut session = Session::open(common).await?;
    let mut spec = ProduceSpec::from_common(common, session.partitions);
    spec.ack_log = args.ack_log.clone();
    eprintln!(
        "produce: topic {:?}, {} partitions, {} B messages, batch {}, {} producers x {} in flight, {}",
        spec.topic,
        spec.partitions,
        spec.msg_size,
        spec.batch,
        spec.producers,
        spec.in_flight,
        limit_text(&spec)
    );
    let outcome = produce_load(&session.client, &spec).await?;
    let mut report = base_report("produce", common, &session, &spec);
    fill_report(
        &mut report,
        &outcome,
        "produce request sent -> ack, per batch",
    );
    if let Some(path) = &spec.ack_log {
        report
            .extra
            .insert("ack_log".into(), path.display().to_string().into());
        report
            .extra
            .insert("ack_log_lines".into(), outcome.ack_log_lines.into());
    }
    if outcome.broker_gone || session.broker_died() {
        report.extra.insert("broker_gone".into(), true.into());
        eprintln!(
            "the broker went away during the run: {} messages were acknowledged{}",
            outcome.messages,
            if spec.ack_log.is_some() {
                " (all in the ack log)"
            } else {
                ""
            }
        );
        if let Some(broker) = session.broker.as_mut() {
            if !broker.is_running() {
                eprintln!("the spawned broker's log ends with:\n{}", broker.log_tail());
            }
        }
    } else {
        report.add_broker_stats(&session.admin).await;
    }
    report.finish(common)
}

pub fn limit_text(spec: &ProduceSpec) -> String {
    let mut text = match (spec.duration, spec.messages) {
        (Some(d), _) => format!("for {:.1} s", d.as_secs_f64()),
        (None, Some(m)) => format!("{m} messages"),
        (None, None) => "unbounded".to_string(),
    };
    if let Some(rate) = spec.rate {
        text.push_str(&format!(" at most {rate} msg/s"));
    }
    text
}

pub fn base_report(
    workload: &str,
    common: &Common,
    session: &Session,
    spec: &ProduceSpec,
) -> Report {
    Report {
        workload: workload.to_string(),
        topic: common.topic.clone(),
        partitions: session.partitions,
        shards: session.shards,
        msg_size: spec.msg_size,
        batch: spec.batch,
        producers: spec.producers,
        broker: session.addr.clone(),
        ..Report::default()
    }
}

pub fn fill_report(report: &mut Report, outcome: &ProduceOutcome, latency: &str) {
    report.set_throughput(
        outcome.messages,
        outcome.bytes,
        outcome.elapsed.as_secs_f64(),
    );
    if let Some(histogram) = &outcome.histogram {
        report.set_latency(latency, histogram);
    }
    report.errors += outcome.errors;
    report
        .error_samples
        .extend(outcome.error_samples.iter().cloned());
}

/// Runs the closed-loop produce workload and returns what was acknowledged.
pub async fn produce_load(client: &Client, spec: &ProduceSpec) -> Result<ProduceOutcome> {
    let ack_log = match &spec.ack_log {
        Some(path) => Some(Mutex::new(AckLogWriter::append_to(path)?)),
        None => None,
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        client: client.clone(),
        spec: spec.clone(),
        clock: Clock::new(),
        remaining: AtomicU64::new(spec.messages.unwrap_or(u64::MAX)),
        deadline: spec.duration.map(|d| start + d),
        stop: AtomicBool::new(false),
        ack_log,
    });
    let tasks: Vec<_> = (0..spec.producers)
        .map(|id| tokio::spawn(producer_task(shared.clone(), id)))
        .collect();
    let mut outcome = ProduceOutcome {
        histogram: Some(new_histogram()),
        ..ProduceOutcome::default()
    };
    for task in tasks {
        let result = task.await?;
        outcome.messages += result.messages;
        outcome.bytes += result.bytes;
        outcome.errors += result.errors.len() as u64;
        outcome.broker_gone |= result.broker_gone;
        for error in result.errors {
            if outcome.error_samples.len() < 5 {
                outcome.error_samples.push(error);
            }
        }
        if let Some(histogram) = outcome.histogram.as_mut() {
            histogram.add(&result.histogram)?;
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.ack_log_lines = shared.ack_log.as_ref().map_or(0, |log| lock(log).lines());
    Ok(outcome)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn claim(remaining: &AtomicU64, want: u64) -> u64 {
    let mut current = remaining.load(Ordering::Relaxed);
    loop {
        let take = current.min(want);
        if take == 0 {
            return 0;
        }
        match remaining.compare_exchange_weak(
            current,
            current - take,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return take,
            Err(actual) => current = actual,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Builds one batch of `count` messages; `crcs` gets each payload's crc32
/// when an ack log is kept.
pub fn build_batch(
    payloads: &mut Payloads,
    sequence: &mut u64,
    count: u64,
    time_ns: impl Fn(u64) -> u64,
    crcs: Option<&mut Vec<u32>>,
) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(
        BATCH_HEADER_LEN + count as usize * (payloads.len() + RECORD_OVERHEAD),
    );
    let timestamp_ms = now_ms();
    let mut crcs = crcs;
    for _ in 0..count {
        let payload = payloads.stamp(*sequence, time_ns(*sequence));
        if let Some(crcs) = crcs.as_deref_mut() {
            crcs.push(crc32fast::hash(payload));
        }
        builder
            .push(timestamp_ms, None, payload, &[])
            .expect("a loadgen payload always fits a record");
        *sequence += 1;
    }
    builder.finish()
}

type InFlight = (
    coremq_client::Result<Vec<coremq_client::Result<ProduceAck>>>,
    Instant,
    u32,
    u64,
    Vec<u32>,
);

async fn producer_task(shared: Arc<Shared>, id: usize) -> TaskResult {
    let spec = &shared.spec;
    let mut result = TaskResult {
        messages: 0,
        bytes: 0,
        histogram: new_histogram(),
        errors: Vec::new(),
        broker_gone: false,
    };
    let mut payloads = Payloads::new(spec.msg_size);
    let mut sequence = (id as u64) << 48;
    let mut next_partition = id as u32 % spec.partitions;
    let mut in_flight = FuturesUnordered::new();
    let per_task_rate = spec
        .rate
        .map(|r| (r as f64 / spec.producers as f64).max(1.0));
    let start = Instant::now();
    let mut sent_messages = 0u64;
    let keep_crcs = shared.ack_log.is_some();
    let mut stopping = false;
    loop {
        while !stopping && in_flight.len() < spec.in_flight {
            if shared.stop.load(Ordering::Relaxed)
                || shared.deadline.is_some_and(|d| Instant::now() >= d)
            {
                stopping = true;
                break;
            }
            let count = claim(&shared.remaining, spec.batch as u64);
            if count == 0 {
                stopping = true;
                break;
            }
            if let Some(rate) = per_task_rate {
                let due = start + Duration::from_secs_f64(sent_messages as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let partition = next_partition;
            next_partition = (next_partition + 1) % spec.partitions;
            let mut crcs = Vec::new();
            // One clock read per batch: per message it was 6% of the profile.
            let batch_time_ns = shared.clock.now_ns();
            let batch = build_batch(
                &mut payloads,
                &mut sequence,
                count,
                |_| batch_time_ns,
                keep_crcs.then_some(&mut crcs),
            );
            sent_messages += count;
            let route = shared.client.route_for(&spec.topic, partition);
            let sent_at = Instant::now();
            match shared
                .client
                .start_produce_owned(route, &spec.topic, partition, batch.into())
                .await
            {
                Ok(pending) => in_flight.push(async move {
                    let acks = finish_produce(pending, 1).await;
                    (acks, sent_at, partition, count, crcs)
                }),
                Err(error) => stopping |= fail(&shared, &mut result, &error),
            }
        }
        let Some((acks, sent_at, partition, count, crcs)): Option<InFlight> =
            in_flight.next().await
        else {
            break;
        };
        let latency_us = sent_at.elapsed().as_micros() as u64;
        let ack = acks.and_then(|mut acks| {
            acks.pop()
                .unwrap_or_else(|| Err(coremq_client::Error::Protocol("no result".into())))
        });
        match ack {
            Ok(ack) => {
                let _ = result.histogram.record(latency_us.max(1));
                result.messages += count;
                result.bytes += count * spec.msg_size as u64;
                if ack.last_offset + 1 - ack.base_offset != count {
                    result.errors.push(format!(
                        "partition {partition}: ack covers offsets {}..={} for {count} messages",
                        ack.base_offset, ack.last_offset
                    ));
                }
                if let Some(log) = &shared.ack_log {
                    if let Err(error) =
                        lock(log).record_batch(&spec.topic, partition, ack.base_offset, &crcs)
                    {
                        result.errors.push(format!("writing the ack log: {error}"));
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(error) => stopping |= fail(&shared, &mut result, &error),
        }
    }
    result
}

/// Counts a failure; returns whether this producer should stop (the
/// connection failed: the broker went away).
fn fail(shared: &Shared, result: &mut TaskResult, error: &coremq_client::Error) -> bool {
    tracing::debug!(%error, "produce failed");
    result.errors.push(error.to_string());
    if error.is_connection() {
        result.broker_gone = true;
        shared.stop.store(true, Ordering::Relaxed);
    }
    error.is_connection()
}
