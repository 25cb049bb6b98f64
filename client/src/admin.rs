//! `Admin`: topics, metadata, offsets and broker statistics.

use crate::client::{parse, topic_info, Client, Route};
use crate::conn::Body;
use crate::error::{check_code, Result};
use crate::types::{HistogramStats, Metadata, OffsetSpec, ShardStats, TopicConfig, TopicInfo};
use coremq_wire::{fb, ErrorCode, Kind};
use flatbuffers::FlatBufferBuilder;
use std::sync::Arc;

#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Fresh metadata from the broker (also refreshes the client's cache).
    pub async fn metadata(&self) -> Result<Arc<Metadata>> {
        self.client.refresh_metadata().await
    }

    pub async fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<()> {
        let mut builder = FlatBufferBuilder::with_capacity(128 + name.len());
        let name_offset = builder.create_string(name);
        let durability = config
            .durability
            .as_deref()
            .map(|d| builder.create_string(d));
        let root = fb::CreateTopicRequest::create(
            &mut builder,
            &fb::CreateTopicRequestArgs {
                name: Some(name_offset),
                partitions: config.partitions,
                durability,
                retention_ms: config.retention_ms.unwrap_or(-1),
                retention_bytes: config.retention_bytes.unwrap_or(-1),
            },
        );
        builder.finish(root, None);
        self.change_topic(Kind::CreateTopic, builder).await
    }

    /// Creates the topic unless it exists. Returns whether it was created.
    pub async fn ensure_topic(&self, name: &str, config: &TopicConfig) -> Result<bool> {
        if self.client.refresh_metadata().await?.topic(name).is_some() {
            return Ok(false);
        }
        match self.create_topic(name, config).await {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(ErrorCode::TopicAlreadyExists) => {
                self.client.refresh_metadata().await?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut builder = FlatBufferBuilder::with_capacity(64 + name.len());
        let name_offset = builder.create_string(name);
        let root = fb::DeleteTopicRequest::create(
            &mut builder,
            &fb::DeleteTopicRequestArgs {
                name: Some(name_offset),
            },
        );
        builder.finish(root, None);
        self.change_topic(Kind::DeleteTopic, builder).await
    }

    /// Sends a create or delete request, checks its `TopicResult`, and
    /// refreshes metadata (producers look partitions up in the cached copy).
    async fn change_topic(&self, kind: Kind, builder: FlatBufferBuilder<'_>) -> Result<()> {
        let timeout = self.client.config().request_timeout;
        let body = self
            .client
            .call(Route::Main, kind, Body::from_builder(builder), timeout)
            .await?;
        let result = parse::<fb::TopicResult>(&body)?;
        check_code(result.error(), result.error_message())?;
        self.client.refresh_metadata().await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let body = self
            .client
            .call_idempotent(Route::Main, Kind::ListTopics, || {
                let mut builder = FlatBufferBuilder::with_capacity(32);
                let root = fb::ListTopicsRequest::create(&mut builder, &Default::default());
                builder.finish(root, None);
                Body::from_builder(builder)
            })
            .await?;
        let response = parse::<fb::ListTopicsResponse>(&body)?;
        Ok(response
            .topics()
            .map(|t| t.iter().map(topic_info).collect())
            .unwrap_or_default())
    }

    pub async fn list_offset(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64> {
        self.client.list_offset(topic, partition, spec).await
    }

    /// Per-shard histograms and counters; `reset` clears the histograms
    /// after reading them.
    pub async fn stats(&self, reset: bool) -> Result<Vec<ShardStats>> {
        let build = || {
            let mut builder = FlatBufferBuilder::with_capacity(32);
            let root = fb::StatsRequest::create(&mut builder, &fb::StatsRequestArgs { reset });
            builder.finish(root, None);
            Body::from_builder(builder)
        };
        let body = if reset {
            let timeout = self.client.config().request_timeout;
            self.client
                .call(Route::Main, Kind::Stats, build(), timeout)
                .await?
        } else {
            self.client
                .call_idempotent(Route::Main, Kind::Stats, build)
                .await?
        };
        decode_stats(&body)
    }
}

fn decode_stats(body: &[u8]) -> Result<Vec<ShardStats>> {
    let response = parse::<fb::StatsResponse>(body)?;
    let mut shards: Vec<ShardStats> = response
        .shards()
        .map(|shards| {
            shards
                .iter()
                .map(|s| ShardStats {
                    shard: s.shard(),
                    histograms: s
                        .histograms()
                        .map(|h| {
                            h.iter()
                                .map(|h| HistogramStats {
                                    name: h.name().unwrap_or_default().to_string(),
                                    count: h.count(),
                                    min: h.min(),
                                    p50: h.p50(),
                                    p90: h.p90(),
                                    p99: h.p99(),
                                    p999: h.p999(),
                                    max: h.max(),
                                    mean: h.mean(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    counters: s
                        .counters()
                        .map(|c| {
                            c.iter()
                                .map(|c| (c.name().unwrap_or_default().to_string(), c.value()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    shards.sort_by_key(|s| s.shard);
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_decode() {
        let mut builder = FlatBufferBuilder::new();
        let name = builder.create_string("produce_us");
        let histogram = fb::Histogram::create(
            &mut builder,
            &fb::HistogramArgs {
                name: Some(name),
                count: 10,
                min: 1,
                p50: 5,
                p90: 9,
                p99: 10,
                p999: 10,
                max: 10,
                mean: 5.5,
            },
        );
        let histograms = builder.create_vector(&[histogram]);
        let counter_name = builder.create_string("records_in");
        let counter = fb::Counter::create(
            &mut builder,
            &fb::CounterArgs {
                name: Some(counter_name),
                value: 42,
            },
        );
        let counters = builder.create_vector(&[counter]);
        let shard = fb::ShardStats::create(
            &mut builder,
            &fb::ShardStatsArgs {
                shard: 1,
                histograms: Some(histograms),
                counters: Some(counters),
            },
        );
        let shards = builder.create_vector(&[shard]);
        let root = fb::StatsResponse::create(
            &mut builder,
            &fb::StatsResponseArgs {
                shards: Some(shards),
            },
        );
        builder.finish(root, None);
        let stats = decode_stats(builder.finished_data()).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].shard, 1);
        assert_eq!(stats[0].histogram("produce_us").unwrap().p99, 10);
        assert_eq!(stats[0].counter("records_in"), Some(42));
    }
}
