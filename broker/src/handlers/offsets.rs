//! List offsets: earliest, latest (high watermark) or first at a timestamp.

use super::{error_fields, invalid, Body, HandlerResult};
use crate::context::ShardContext;
use crate::mesh::OffsetQuery;
use coremq_wire::fb;
use flatbuffers::{FlatBufferBuilder, VerifierOptions};

pub async fn handle(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::ListOffsetsRequest>(body, options).map_err(invalid)?;
    let partitions = request
        .partitions()
        .ok_or_else(|| invalid("list offsets request without partitions"))?;
    let queries = partitions.iter().map(|p| {
        let query = match p.spec() {
            fb::OffsetSpec::Latest => OffsetQuery::Latest,
            fb::OffsetSpec::Timestamp => OffsetQuery::Timestamp(p.timestamp_ms()),
            _ => OffsetQuery::Earliest,
        };
        ctx.list_offset(p.topic(), p.partition(), query)
    });
    let results = futures::future::join_all(queries).await;
    let mut builder = FlatBufferBuilder::with_capacity(64 + 96 * results.len());
    let mut entries = Vec::with_capacity(results.len());
    for (p, result) in partitions.iter().zip(&results) {
        let (error, message) = error_fields(result);
        let topic = builder.create_string(p.topic());
        let error_message = message.map(|m| builder.create_string(m));
        entries.push(fb::ListOffsetsPartitionResult::create(
            &mut builder,
            &fb::ListOffsetsPartitionResultArgs {
                topic: Some(topic),
                partition: p.partition(),
                error,
                error_message,
                offset: *result.as_ref().unwrap_or(&0),
            },
        ));
    }
    let results = builder.create_vector(&entries);
    let root = fb::ListOffsetsResponse::create(
        &mut builder,
        &fb::ListOffsetsResponseArgs {
            results: Some(results),
        },
    );
    Ok(Body::finish(builder, root))
}
