//! Produce: every partition of the request is appended concurrently (local
//! ones without copying the batch bytes), and the response has one result per
//! partition entry, in request order.

use super::{error_fields, invalid, Body, HandlerResult};
use crate::context::ShardContext;
use crate::metrics::bump;
use coremq_wire::fb;
use flatbuffers::{FlatBufferBuilder, VerifierOptions};
use std::time::Instant;

pub async fn handle(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let started = Instant::now();
    let request =
        coremq_wire::messages::parse::<fb::ProduceRequest>(body, options).map_err(invalid)?;
    let partitions = request
        .partitions()
        .ok_or_else(|| invalid("produce request without partitions"))?;
    if partitions.is_empty() {
        return Err(invalid("produce request without partitions"));
    }
    let appends = partitions
        .iter()
        .map(|p| ctx.append(p.topic(), p.partition(), p.batches().bytes()));
    let results = futures::future::join_all(appends).await;

    let mut builder = FlatBufferBuilder::with_capacity(64 + 96 * results.len());
    let mut entries = Vec::with_capacity(results.len());
    for (p, result) in partitions.iter().zip(&results) {
        let (error, message) = error_fields(result);
        if result.is_err() {
            bump(&ctx.metrics.errors, 1);
        }
        let topic = builder.create_string(p.topic());
        let error_message = message.map(|m| builder.create_string(m));
        let (base_offset, last_offset, append_time_ms) = match result {
            Ok(o) => (o.base_offset, o.last_offset, o.append_time_ms),
            Err(_) => (0, 0, 0),
        };
        entries.push(fb::PartitionProduceResult::create(
            &mut builder,
            &fb::PartitionProduceResultArgs {
                topic: Some(topic),
                partition: p.partition(),
                error,
                error_message,
                base_offset,
                last_offset,
                append_time_ms,
            },
        ));
    }
    let results = builder.create_vector(&entries);
    let root = fb::ProduceResponse::create(
        &mut builder,
        &fb::ProduceResponseArgs {
            results: Some(results),
        },
    );
    ctx.metrics
        .produce_us
        .record(started.elapsed().as_micros() as u64);
    Ok(Body::finish(builder, root))
}
