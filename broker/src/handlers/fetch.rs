//! Fetch with long polling. One partition (the common case for shard-aware
//! consumers) waits up to `max_wait_ms` for data. With several partitions, a
//! first pass reads without waiting and answers if anything is there;
//! otherwise every partition waits concurrently.

use super::{error_fields, invalid, Body, HandlerResult};
use crate::context::ShardContext;
use crate::mesh::{PartitionFetch, RequestError};
use coremq_wire::fb;
use flatbuffers::{FlatBufferBuilder, VerifierOptions};
use std::time::Duration;

/// Longest long poll a client may ask for.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn handle(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::FetchRequest>(body, options).map_err(invalid)?;
    let partitions = request
        .partitions()
        .ok_or_else(|| invalid("fetch request without partitions"))?;
    if partitions.is_empty() {
        return Err(invalid("fetch request without partitions"));
    }
    let max_wait = Duration::from_millis(request.max_wait_ms() as u64).min(MAX_WAIT_CAP);
    let fetch_all = |wait: Duration| {
        futures::future::join_all(partitions.iter().map(move |p| {
            ctx.fetch(
                p.topic(),
                p.partition(),
                p.offset(),
                p.max_bytes().max(1),
                wait,
            )
        }))
    };
    let mut results: Vec<Result<PartitionFetch, RequestError>> = if partitions.len() == 1 {
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

    let total: usize = results
        .iter()
        .map(|r| r.as_ref().map_or(0, |f| f.batches.len()))
        .sum();
    let mut builder = FlatBufferBuilder::with_capacity(128 + total + 128 * results.len());
    let mut entries = Vec::with_capacity(results.len());
    for (p, result) in partitions.iter().zip(&results) {
        let (error, message) = error_fields(result);
        let topic = builder.create_string(p.topic());
        let error_message = message.map(|m| builder.create_string(m));
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
                partition: p.partition(),
                error,
                error_message,
                high_watermark,
                log_start_offset,
                records,
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
    Ok(Body::finish(builder, root))
}
