//! Metadata and topic administration. Every shard holds the whole catalog, so
//! reads are answered locally; create and delete run on every shard.

use super::{invalid, Body, HandlerResult};
use crate::context::ShardContext;
use crate::mesh::RequestError;
use coremq_shard::engine::MAX_PARTITIONS;
use coremq_shard::{validate_topic_name, Durability, TopicConfig};
use coremq_wire::{fb, ErrorCode};
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, VerifierOptions, WIPOffset};
use std::collections::BTreeSet;

/// Topics described between two chances for other tasks to run.
const TOPICS_PER_TURN: usize = 256;

async fn topic_infos<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    topics: &[TopicConfig],
) -> WIPOffset<Vector<'b, ForwardsUOffset<fb::TopicInfo<'b>>>> {
    let mut infos = Vec::with_capacity(topics.len());
    for chunk in topics.chunks(TOPICS_PER_TURN) {
        infos.extend(chunk.iter().map(|t| {
            let name = builder.create_string(&t.name);
            let durability = builder.create_string(&t.durability.to_string());
            fb::TopicInfo::create(
                builder,
                &fb::TopicInfoArgs {
                    name: Some(name),
                    partitions: t.partitions,
                    durability: Some(durability),
                    retention_ms: t.retention_ms.map_or(-1, |v| v as i64),
                    retention_bytes: t.retention_bytes.map_or(-1, |v| v as i64),
                },
            )
        }));
        glommio::yield_if_needed().await;
    }
    builder.create_vector(&infos)
}

/// The topics a metadata request asks about, sorted by name: each wanted name
/// is looked up once (work linear in the request, never names × topics), and
/// a request may name at most `--max-topics` topics.
fn wanted_topics(
    ctx: &ShardContext,
    wanted: Option<Vector<'_, ForwardsUOffset<&str>>>,
) -> Result<Vec<TopicConfig>, RequestError> {
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        let mut topics = ctx.storage.topics();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(topics);
    };
    if wanted.len() > ctx.config.max_topics {
        return Err(RequestError::new(
            ErrorCode::InvalidRequest,
            format!(
                "a metadata request may name at most {} topics (--max-topics), got {}",
                ctx.config.max_topics,
                wanted.len()
            ),
        ));
    }
    let names: BTreeSet<&str> = wanted.iter().collect();
    Ok(names
        .into_iter()
        .filter_map(|name| ctx.storage.topic(name))
        .collect())
}

pub async fn metadata(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::MetadataRequest>(body, options).map_err(invalid)?;
    let topics = wanted_topics(ctx, request.topics())?;
    let mut builder = FlatBufferBuilder::with_capacity(256);
    let shards: Vec<_> = ctx
        .shard_addresses
        .iter()
        .enumerate()
        .map(|(id, address)| {
            let host = builder.create_string(&address.ip().to_string());
            fb::ShardInfo::create(
                &mut builder,
                &fb::ShardInfoArgs {
                    id: id as u16,
                    host: Some(host),
                    port: address.port(),
                },
            )
        })
        .collect();
    let shards = builder.create_vector(&shards);
    let topics = topic_infos(&mut builder, &topics).await;
    let root = fb::MetadataResponse::create(
        &mut builder,
        &fb::MetadataResponseArgs {
            shard_count: ctx.shard_count(),
            shards: Some(shards),
            topics: Some(topics),
        },
    );
    Ok(Body::finish(builder, root))
}

pub async fn list(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    coremq_wire::messages::parse::<fb::ListTopicsRequest>(body, options).map_err(invalid)?;
    let mut topics = ctx.storage.topics();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut builder = FlatBufferBuilder::with_capacity(256);
    let topics = topic_infos(&mut builder, &topics).await;
    let root = fb::ListTopicsResponse::create(
        &mut builder,
        &fb::ListTopicsResponseArgs {
            topics: Some(topics),
        },
    );
    Ok(Body::finish(builder, root))
}

fn topic_result(name: &str, result: Result<(), RequestError>) -> Body {
    let mut builder = FlatBufferBuilder::with_capacity(128);
    let name = builder.create_string(name);
    let (error, message) = match &result {
        Ok(()) => (ErrorCode::None.as_u16(), None),
        Err(e) => (e.code.as_u16(), Some(builder.create_string(&e.message))),
    };
    let root = fb::TopicResult::create(
        &mut builder,
        &fb::TopicResultArgs {
            name: Some(name),
            error,
            error_message: message,
        },
    );
    Body::finish(builder, root)
}

/// Turns a create request into a validated topic config.
fn topic_config(
    ctx: &ShardContext,
    request: &fb::CreateTopicRequest,
) -> Result<TopicConfig, RequestError> {
    let name = request.name();
    validate_topic_name(name).map_err(|m| RequestError::new(ErrorCode::InvalidTopicName, m))?;
    let partitions = request.partitions();
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(RequestError::new(
            ErrorCode::InvalidConfig,
            format!("partitions must be 1..={MAX_PARTITIONS}, got {partitions}"),
        ));
    }
    let durability = match request.durability() {
        None | Some("") => ctx.config.default_durability,
        Some(text) => text
            .parse::<Durability>()
            .map_err(|m| RequestError::new(ErrorCode::InvalidConfig, m))?,
    };
    let positive = |v: i64| (v > 0).then_some(v as u64);
    Ok(TopicConfig {
        name: name.to_string(),
        partitions,
        durability,
        retention_ms: positive(request.retention_ms()),
        retention_bytes: positive(request.retention_bytes()),
    })
}

pub async fn create(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::CreateTopicRequest>(body, options).map_err(invalid)?;
    let result = match topic_config(ctx, &request) {
        Ok(config) => ctx.create_topic(config).await,
        Err(e) => Err(e),
    };
    if result.is_ok() {
        tracing::info!(
            topic = request.name(),
            partitions = request.partitions(),
            "topic created"
        );
    }
    Ok(topic_result(request.name(), result))
}

pub async fn delete(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::DeleteTopicRequest>(body, options).map_err(invalid)?;
    let result = ctx.delete_topic(request.name()).await;
    if result.is_ok() {
        tracing::info!(topic = request.name(), "topic deleted");
    }
    Ok(topic_result(request.name(), result))
}
