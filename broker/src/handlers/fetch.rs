//! Fetch with long polling. One partition (the common case for shard-aware
//! consumers) waits up to `max_wait_ms` for data. With several partitions, a
//! first pass reads without waiting and answers if anything is there;
//! otherwise every partition waits concurrently.
//!
//! Bounds (docs/protocol.md, "Limits"): at most [`MAX_FETCH_PARTITIONS`]
//! partitions, each (topic, partition) once; every partition's `max_bytes` is
//! clamped to an equal share of what fits in one response frame, and the
//! response is trimmed at batch boundaries so it never exceeds
//! `--max-frame-bytes`.
//!
//! A read that starts at a damaged stored batch is answered with `DataLoss`
//! and `next_offset`, the first offset after the damage (docs/protocol.md).

use super::{error_fields, invalid, Body, HandlerResult};
use crate::context::ShardContext;
use crate::mesh::{PartitionFetch, RequestError};
use coremq_wire::frame::FRAME_HEADER_LEN;
use coremq_wire::{fb, ErrorCode};
use flatbuffers::{FlatBufferBuilder, VerifierOptions};
use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

/// Longest long poll a client may ask for.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);
/// Most partitions one fetch request may name.
pub const MAX_FETCH_PARTITIONS: usize = 1024;
/// Encoded bytes of a response besides its partitions: root table, vtable,
/// the results vector's length, the FlatBuffers size prefix and alignment.
const RESPONSE_OVERHEAD_BYTES: usize = 64;
/// Encoded bytes of one partition result besides its topic name, error
/// message and records: table, vtable, three length prefixes, string
/// terminators and alignment padding (checked by `encoded_size_is_bounded`).
const PARTITION_OVERHEAD_BYTES: usize = 96;

type FetchResult = Result<PartitionFetch, RequestError>;

pub async fn handle(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::FetchRequest>(body, options).map_err(invalid)?;
    let partitions = request
        .partitions()
        .ok_or_else(|| invalid("fetch request without partitions"))?;
    if partitions.is_empty() {
        return Err(invalid("fetch request without partitions"));
    }
    if partitions.len() > MAX_FETCH_PARTITIONS {
        return Err(invalid(format!(
            "fetch request names {} partitions; at most {MAX_FETCH_PARTITIONS} per request",
            partitions.len()
        )));
    }
    let names: Vec<(&str, u32)> = partitions
        .iter()
        .map(|p| (p.topic(), p.partition()))
        .collect();
    check_unique(&names)?;
    let budget_bytes = response_budget_bytes(ctx.config.max_frame_bytes);
    let share_bytes = partition_share_bytes(budget_bytes, &names)?;
    let max_wait = Duration::from_millis(request.max_wait_ms() as u64).min(MAX_WAIT_CAP);
    let fetch_all = |wait: Duration| {
        futures::future::join_all(partitions.iter().map(move |p| {
            ctx.fetch(
                p.topic(),
                p.partition(),
                p.offset(),
                p.max_bytes().clamp(1, share_bytes),
                wait,
            )
        }))
    };
    let mut results: Vec<FetchResult> = if partitions.len() == 1 {
        fetch_all(max_wait).await
    } else {
        fetch_all(Duration::ZERO).await
    };
    let bytes: usize = results
        .iter()
        .map(|r| r.as_ref().map_or(0, |f| f.batches.len()))
        .sum();
    let any_error = results.iter().any(|r| r.is_err());
    if partitions.len() > 1 && bytes == 0 && !any_error && !max_wait.is_zero() {
        results = fetch_all(max_wait).await;
    }
    fit_to_budget(&names, &mut results, budget_bytes)?;
    Ok(encode(&names, &results))
}

/// A (topic, partition) pair named twice would be answered twice from one
/// read position: refuse the request instead of guessing.
fn check_unique(names: &[(&str, u32)]) -> Result<(), RequestError> {
    let mut seen = HashSet::with_capacity(names.len());
    for (topic, partition) in names {
        if !seen.insert((*topic, *partition)) {
            return Err(invalid(format!(
                "fetch request names topic '{topic}' partition {partition} more than once"
            )));
        }
    }
    Ok(())
}

/// Bytes a response body may take so that its frame fits `max_frame_bytes`.
fn response_budget_bytes(max_frame_bytes: u32) -> usize {
    (max_frame_bytes as usize).saturating_sub(FRAME_HEADER_LEN + RESPONSE_OVERHEAD_BYTES)
}

fn partition_bytes(topic: &str, message: Option<&str>) -> usize {
    PARTITION_OVERHEAD_BYTES + topic.len() + message.map_or(0, str::len)
}

/// Record bytes each partition may ask its shard for: an equal share of what
/// the response has room for after the partitions' own fields.
fn partition_share_bytes(budget_bytes: usize, names: &[(&str, u32)]) -> Result<u32, RequestError> {
    let fixed_bytes: usize = names.iter().map(|(t, _)| partition_bytes(t, None)).sum();
    let room_bytes = budget_bytes.saturating_sub(fixed_bytes);
    if room_bytes == 0 {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!(
                "a fetch of {} partitions does not fit one response of at most {budget_bytes} bytes",
                names.len()
            ),
        ));
    }
    let share = (room_bytes / names.len()).max(1);
    Ok(u32::try_from(share).unwrap_or(u32::MAX))
}

/// Trims records at batch boundaries until the encoded response fits
/// `budget_bytes`. A partition whose data no longer fits comes back empty
/// (the client fetches it again); one whose first batch alone can never fit
/// gets `TooLarge`, so it is not retried forever.
fn fit_to_budget(
    names: &[(&str, u32)],
    results: &mut [FetchResult],
    budget_bytes: usize,
) -> Result<(), RequestError> {
    let fixed_bytes: usize = names
        .iter()
        .zip(results.iter())
        .map(|((topic, _), r)| {
            let (_, message, _) = result_fields(r);
            partition_bytes(topic, message.as_deref())
        })
        .sum();
    let Some(mut room_bytes) = budget_bytes.checked_sub(fixed_bytes) else {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!("the fetch response would exceed {budget_bytes} bytes"),
        ));
    };
    let data_room_bytes = room_bytes;
    for ((topic, partition), result) in names.iter().zip(results.iter_mut()) {
        let Ok(fetch) = result else { continue };
        // Each batch may be padded to the vector's alignment.
        let kept = whole_batches_within(&fetch.batches, room_bytes.saturating_sub(8));
        if kept == 0 && !fetch.batches.is_empty() {
            let first = first_batch_bytes(&fetch.batches);
            if first + 8 > data_room_bytes {
                let error = RequestError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the next batch of '{topic}' partition {partition} is {first} bytes, more than a response holds"
                    ),
                );
                room_bytes = room_bytes.saturating_sub(error.message.len());
                *result = Err(error);
                continue;
            }
        }
        fetch.batches.truncate(kept);
        room_bytes -= if kept == 0 { 0 } else { kept + 8 };
    }
    Ok(())
}

fn first_batch_bytes(batches: &[u8]) -> usize {
    coremq_wire::batch::batch_length_at(batches).unwrap_or(batches.len())
}

/// Length of the longest prefix of whole batches no longer than `limit_bytes`.
fn whole_batches_within(batches: &[u8], limit_bytes: usize) -> usize {
    let mut kept = 0;
    for batch in coremq_wire::batch::split_batches(batches) {
        let Ok(batch) = batch else { break };
        if kept + batch.len() > limit_bytes {
            break;
        }
        kept += batch.len();
    }
    kept
}

/// (error code, error message, next_offset) of one partition's result.
fn result_fields(result: &FetchResult) -> (u16, Option<Cow<'_, str>>, u64) {
    if let Ok(PartitionFetch {
        data_loss: Some(loss),
        ..
    }) = result
    {
        let message = format!(
            "{} damaged batch(es) from offset {} are not readable; next readable offset {}",
            loss.batches, loss.offset, loss.next_offset
        );
        return (
            ErrorCode::DataLoss.as_u16(),
            Some(Cow::Owned(message)),
            loss.next_offset,
        );
    }
    let (error, message) = error_fields(result);
    (error, message.map(Cow::Borrowed), 0)
}

fn encode(names: &[(&str, u32)], results: &[FetchResult]) -> Body {
    let total: usize = results
        .iter()
        .map(|r| r.as_ref().map_or(0, |f| f.batches.len()))
        .sum();
    let mut builder = FlatBufferBuilder::with_capacity(
        RESPONSE_OVERHEAD_BYTES + total + PARTITION_OVERHEAD_BYTES * results.len(),
    );
    let mut entries = Vec::with_capacity(results.len());
    for ((topic, partition), result) in names.iter().zip(results) {
        let (error, message, next_offset) = result_fields(result);
        let topic = builder.create_string(topic);
        let error_message = message.map(|m| builder.create_string(&m));
        let (records, high_watermark, log_start_offset) = match result {
            Ok(f) => (
                Some(builder.create_vector(&f.batches)),
                f.high_watermark,
                f.log_start_offset,
            ),
            Err(_) => (None, 0, 0),
        };
        entries.push(fb::FetchPartitionResult::create(
            &mut builder,
            &fb::FetchPartitionResultArgs {
                topic: Some(topic),
                partition: *partition,
                error,
                error_message,
                high_watermark,
                log_start_offset,
                records,
                next_offset,
            },
        ));
    }
    let results = builder.create_vector(&entries);
    let root = fb::FetchResponse::create(
        &mut builder,
        &fb::FetchResponseArgs {
            results: Some(results),
        },
    );
    Body::finish(builder, root)
}

#[cfg(test)]
mod tests;
