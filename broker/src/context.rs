//! `ShardContext`: what one shard's tasks share (its storage, metrics, the
//! mesh to its peers), and the partition operations that run locally when this
//! shard owns the partition or hop over the mesh when another shard does.

use crate::config::BrokerConfig;
use crate::mesh::{CatalogChange, Mesh, OffsetQuery, PartitionFetch, RequestError, ShardRequest};
use crate::metrics::{bump, ShardMetrics, ShardStatsSnapshot};
use coremq_shard::{AppendOutcome, ShardStorage, TopicConfig};
use coremq_wire::{shard_for, ErrorCode};
use futures::future::{select, Either};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The shard that orders catalog changes (see [`ShardContext::change_catalog`]).
pub const CATALOG_COORDINATOR: u16 = 0;

/// Every topic any shard has, by name; where two shards disagree on a
/// topic's settings (which ordered changes prevent), the lowest shard wins
/// and the conflict is logged.
pub fn catalog_union(catalogs: &[Vec<TopicConfig>]) -> BTreeMap<String, TopicConfig> {
    let mut union: BTreeMap<String, TopicConfig> = BTreeMap::new();
    for (shard, topics) in catalogs.iter().enumerate() {
        for topic in topics {
            match union.get(&topic.name) {
                None => {
                    union.insert(topic.name.clone(), topic.clone());
                }
                Some(kept) if kept != topic => tracing::error!(
                    shard,
                    topic = %topic.name,
                    ?kept,
                    found = ?topic,
                    "shards disagree on a topic's settings; keeping the lowest shard's"
                ),
                Some(_) => {}
            }
        }
    }
    union
}

pub struct ShardContext {
    pub id: u16,
    pub config: BrokerConfig,
    pub storage: ShardStorage,
    pub mesh: Mesh,
    pub metrics: ShardMetrics,
    /// The address every shard accepts on (advertised in metadata as the bootstrap address).
    pub main_address: SocketAddr,
    /// Each shard's own address, indexed by shard id.
    pub shard_addresses: Vec<SocketAddr>,
    pub shutting_down: Cell<bool>,
    /// One permit: catalog changes run one at a time (used on the coordinator).
    pub catalog_changes: glommio::sync::Semaphore,
    /// Fired once when shutdown starts, to wake accept loops and long polls.
    pub shutdown: event_listener::Event,
    /// Bytes all of this shard's connections hold (`--max-shard-buffer-bytes`).
    pub buffer_budget: Rc<crate::budget::ByteBudget>,
    /// Bytes of produce requests from other shards being served
    /// (`--max-forwarded-bytes`): the mesh receiver waits for them.
    pub forwarded_bytes: Rc<glommio::sync::Semaphore>,
    /// Data requests from other shards being served, at most
    /// [`crate::mesh::MESH_CHANNEL_DEPTH`]: beyond it the mesh receiver
    /// waits and the bounded channel pushes back on the senders.
    pub peer_requests: Rc<glommio::sync::Semaphore>,
}

impl ShardContext {
    pub fn shard_count(&self) -> u16 {
        self.shard_addresses.len() as u16
    }

    pub fn owner(&self, topic: &str, partition: u32) -> u16 {
        shard_for(topic, partition, self.shard_count())
    }

    /// Checks topic and partition against this shard's copy of the catalog, so
    /// a bad request fails here instead of after a hop.
    pub fn check_partition(&self, topic: &str, partition: u32) -> Result<(), RequestError> {
        match self.storage.topic(topic) {
            None => Err(RequestError::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic '{topic}'"),
            )),
            Some(config) if partition >= config.partitions => Err(RequestError::new(
                ErrorCode::UnknownPartition,
                format!(
                    "topic '{topic}' has {} partitions, no partition {partition}",
                    config.partitions
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn check_running(&self) -> Result<(), RequestError> {
        if self.shutting_down.get() {
            return Err(RequestError::new(
                ErrorCode::ShuttingDown,
                "broker is shutting down",
            ));
        }
        Ok(())
    }

    /// Appends `batches` to a partition, wherever it lives. `batches` is borrowed
    /// from the request frame: the local path stores it without copying.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
    ) -> Result<AppendOutcome, RequestError> {
        self.check_running()?;
        self.check_partition(topic, partition)?;
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.append_local(topic, partition, batches).await;
        }
        bump(&self.metrics.forwarded_requests, 1);
        let (topic, batches) = (topic.to_string(), batches.to_vec());
        self.mesh
            .call(owner, |reply| ShardRequest::Append {
                topic,
                partition,
                batches,
                reply,
            })
            .await
    }

    pub async fn append_local(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
    ) -> Result<AppendOutcome, RequestError> {
        if batches.is_empty() {
            return Err(RequestError::new(
                ErrorCode::CorruptBatch,
                "no record batch in the request",
            ));
        }
        let outcome = self.storage.append(topic, partition, batches).await?;
        bump(
            &self.metrics.produced_records,
            outcome.last_offset - outcome.base_offset + 1,
        );
        bump(&self.metrics.produced_bytes, batches.len() as u64);
        Ok(outcome)
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<PartitionFetch, RequestError> {
        self.check_running()?;
        self.check_partition(topic, partition)?;
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self
                .fetch_local(topic, partition, offset, max_bytes, max_wait)
                .await;
        }
        bump(&self.metrics.forwarded_requests, 1);
        let topic = topic.to_string();
        self.mesh
            .call(owner, |reply| ShardRequest::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait,
                reply,
            })
            .await
    }

    /// Reads, and if there is nothing at `offset` yet, waits (long poll) until
    /// something is appended, the wait is over, or the broker shuts down.
    pub async fn fetch_local(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<PartitionFetch, RequestError> {
        let deadline = Instant::now() + max_wait;
        loop {
            // Listen before reading so an append between the read and the wait is not missed.
            let appended = self.storage.appended();
            let started = Instant::now();
            let read = self
                .storage
                .read(topic, partition, offset, max_bytes)
                .await?;
            self.metrics
                .fetch_us
                .record(started.elapsed().as_micros() as u64);
            let now = Instant::now();
            // Damage is answered at once: waiting would not repair it.
            if !read.batches.is_empty()
                || read.data_loss.is_some()
                || now >= deadline
                || self.shutting_down.get()
            {
                bump(&self.metrics.fetched_bytes, read.batches.len() as u64);
                return Ok(PartitionFetch {
                    batches: read.batches,
                    high_watermark: read.high_watermark,
                    log_start_offset: read.log_start_offset,
                    data_loss: read.data_loss,
                });
            }
            let shutdown = self.shutdown.listen();
            let timer = glommio::timer::sleep(deadline - now);
            futures::pin_mut!(timer);
            match select(select(appended, shutdown), timer).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<u64, RequestError> {
        self.check_partition(topic, partition)?;
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.list_offset_local(topic, partition, query);
        }
        bump(&self.metrics.forwarded_requests, 1);
        let topic = topic.to_string();
        self.mesh
            .call(owner, |reply| ShardRequest::ListOffset {
                topic,
                partition,
                query,
                reply,
            })
            .await
    }

    pub fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<u64, RequestError> {
        Ok(match query {
            OffsetQuery::Earliest => self.storage.log_start_offset(topic, partition)?,
            OffsetQuery::Latest => self.storage.high_watermark(topic, partition)?,
            OffsetQuery::Timestamp(ts) => {
                self.storage.offset_for_timestamp(topic, partition, ts)?
            }
        })
    }

    /// Creates the topic on every shard (each keeps the whole catalog).
    pub async fn create_topic(&self, config: TopicConfig) -> Result<(), RequestError> {
        self.check_running()?;
        self.change_catalog(CatalogChange::Create(config)).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), RequestError> {
        self.check_running()?;
        self.change_catalog(CatalogChange::Delete(name.to_string()))
            .await
    }

    /// Runs a catalog change on the coordinator (shard 0), one change at a
    /// time, so that every shard applies creates and deletes in the same
    /// order: two clients creating the same topic with different settings
    /// through different shards cannot leave the shards disagreeing.
    pub async fn change_catalog(&self, change: CatalogChange) -> Result<(), RequestError> {
        if self.id != CATALOG_COORDINATOR {
            return self
                .mesh
                .call(CATALOG_COORDINATOR, |reply| ShardRequest::ChangeCatalog {
                    change,
                    reply,
                })
                .await;
        }
        let _turn = self.catalog_turn().await?;
        match change {
            CatalogChange::Create(config) => {
                if self.storage.topic(&config.name).is_some() {
                    return Err(RequestError::new(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic '{}' already exists", config.name),
                    ));
                }
                let topics = self.storage.topics().len();
                if topics >= self.config.max_topics {
                    return Err(RequestError::new(
                        ErrorCode::InvalidConfig,
                        format!(
                            "the broker holds {topics} topics, the most --max-topics allows; \
                             delete one first"
                        ),
                    ));
                }
                self.on_every_shard(|reply| ShardRequest::CreateTopic {
                    config: config.clone(),
                    reply,
                })
                .await
            }
            CatalogChange::Delete(name) => {
                if self.storage.topic(&name).is_none() {
                    return Err(RequestError::new(
                        ErrorCode::UnknownTopic,
                        format!("unknown topic '{name}'"),
                    ));
                }
                self.on_every_shard(|reply| ShardRequest::DeleteTopic {
                    name: name.clone(),
                    reply,
                })
                .await
            }
        }
    }

    /// At start-up, on the coordinator: a broker killed in the middle of a
    /// create or delete can leave the topic on some shards only. Every topic
    /// that any shard has is created on the shards that lack it (the
    /// interrupted create completes; an interrupted delete is undone, and
    /// deleting again finishes it), so no shard's data is dropped on a guess.
    pub async fn reconcile_catalog(&self) -> Result<(), RequestError> {
        let _turn = self.catalog_turn().await?;
        let mut catalogs = Vec::with_capacity(usize::from(self.shard_count()));
        for shard in 0..self.shard_count() {
            catalogs.push(
                self.mesh
                    .call(shard, |reply| ShardRequest::Topics { reply })
                    .await?,
            );
        }
        let union = catalog_union(&catalogs);
        for (shard, topics) in (0..self.shard_count()).zip(&catalogs) {
            for config in union.values() {
                if topics.iter().any(|t| t.name == config.name) {
                    continue;
                }
                tracing::warn!(
                    shard,
                    topic = %config.name,
                    "topic missing on this shard (a create or delete was interrupted); creating it"
                );
                self.mesh
                    .call(shard, |reply| ShardRequest::CreateTopic {
                        config: config.clone(),
                        reply,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn catalog_turn(&self) -> Result<glommio::sync::Permit<'_>, RequestError> {
        self.catalog_changes
            .acquire_permit(1)
            .await
            .map_err(|e| RequestError::new(ErrorCode::ShuttingDown, e.to_string()))
    }

    /// Runs a catalog change on every shard (this one included, through its own
    /// mesh receiver, so every shard applies it by the same code path) and
    /// returns the first error.
    async fn on_every_shard(
        &self,
        make: impl Fn(crate::mesh::Reply<()>) -> ShardRequest,
    ) -> Result<(), RequestError> {
        let calls = (0..self.shard_count()).map(|shard| self.mesh.call(shard, &make));
        first_error(futures::future::join_all(calls).await)
    }

    /// Stats of every shard, in shard order.
    pub async fn stats(&self, reset: bool) -> Vec<ShardStatsSnapshot> {
        let calls = (0..self.shard_count()).map(|shard| async move {
            if shard == self.id {
                Some(self.stats_local(reset))
            } else {
                let (tx, rx) = futures::channel::oneshot::channel();
                if !self
                    .mesh
                    .send(shard, ShardRequest::Stats { reset, reply: tx })
                    .await
                {
                    return None;
                }
                rx.await.ok()
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn stats_local(&self, reset: bool) -> ShardStatsSnapshot {
        let m = &self.metrics;
        let storage = self.storage.metrics();
        let of = crate::metrics::HistogramSummary::of;
        let fsync = of("fsync_us", &storage.fsync_us.borrow());
        let snapshot = ShardStatsSnapshot {
            shard: self.id,
            histograms: vec![
                m.produce_us.summary("produce_us"),
                fsync,
                m.fetch_us.summary("fetch_us"),
                m.queue_depth.summary("queue_depth"),
                of("write_us", &storage.write_us.borrow()),
                of("flush_bytes", &storage.flush_size.borrow()),
            ],
            counters: vec![
                ("requests".into(), m.requests.get()),
                ("in_flight".into(), m.in_flight.get()),
                ("produced_records".into(), m.produced_records.get()),
                ("produced_bytes".into(), m.produced_bytes.get()),
                ("fetched_bytes".into(), m.fetched_bytes.get()),
                ("forwarded_requests".into(), m.forwarded_requests.get()),
                ("errors".into(), m.errors.get()),
                ("connections".into(), m.connections.get()),
                ("connections_total".into(), m.connections_total.get()),
                (
                    "connections_timed_out".into(),
                    m.connections_timed_out.get(),
                ),
                ("connections_refused".into(), m.connections_refused.get()),
                ("reads_paused".into(), m.reads_paused.get()),
                ("buffered_bytes".into(), self.buffer_budget.used_bytes()),
                ("flushes".into(), storage.flushes.get()),
                ("flush_bytes".into(), storage.flush_bytes.get()),
                ("disk_reads".into(), storage.disk_reads.get()),
                ("disk_read_bytes".into(), storage.disk_read_bytes.get()),
                ("read_ahead_hits".into(), storage.read_ahead_hits.get()),
                ("segments_recycled".into(), storage.segments_recycled.get()),
                (
                    "corrupt_batches_skipped".into(),
                    storage.corrupt_batches_skipped.get(),
                ),
            ],
        };
        if reset {
            m.produce_us.reset();
            m.fetch_us.reset();
            m.queue_depth.reset();
            storage.fsync_us.borrow_mut().reset();
            storage.write_us.borrow_mut().reset();
            storage.flush_size.borrow_mut().reset();
        }
        snapshot
    }

    /// Serves one request that another shard sent over the mesh.
    pub async fn serve_peer_request(self: Rc<Self>, request: ShardRequest) {
        // A dropped reply receiver means the asking client went away: nothing to do.
        match request {
            ShardRequest::Append {
                topic,
                partition,
                batches,
                reply,
            } => {
                let _ = reply.send(self.append_local(&topic, partition, &batches).await);
            }
            ShardRequest::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait,
                reply,
            } => {
                let _ = reply.send(
                    self.fetch_local(&topic, partition, offset, max_bytes, max_wait)
                        .await,
                );
            }
            ShardRequest::ListOffset {
                topic,
                partition,
                query,
                reply,
            } => {
                let _ = reply.send(self.list_offset_local(&topic, partition, query));
            }
            ShardRequest::CreateTopic { config, reply } => {
                let _ = reply.send(
                    self.storage
                        .create_topic(config)
                        .await
                        .map_err(RequestError::from),
                );
            }
            ShardRequest::DeleteTopic { name, reply } => {
                let _ = reply.send(
                    self.storage
                        .delete_topic(&name)
                        .await
                        .map_err(RequestError::from),
                );
            }
            ShardRequest::ChangeCatalog { change, reply } => {
                let _ = reply.send(self.change_catalog(change).await);
            }
            ShardRequest::Topics { reply } => {
                let _ = reply.send(Ok(self.storage.topics()));
            }
            ShardRequest::ReconcileCatalog { reply } => {
                let _ = reply.send(self.reconcile_catalog().await);
            }
            ShardRequest::Stats { reset, reply } => {
                let _ = reply.send(self.stats_local(reset));
            }
            ShardRequest::Shutdown { reply } => {
                // Handled by the shard's main loop; never dispatched here.
                let _ = reply.send(());
            }
        }
    }
}

fn first_error(results: Vec<Result<(), RequestError>>) -> Result<(), RequestError> {
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}
