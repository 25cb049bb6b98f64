//! `Client`: metadata, one lazily opened connection per shard, routing of
//! partition requests to the owning shard, reconnects with backoff.

use crate::conn::{Body, Connection, PendingResponse, MAX_RESPONSE_FRAME_BYTES};
use crate::error::{check_code, Error, Result};
use crate::fetch::{self, FetchOptions, FetchedPartition};
use crate::types::{Metadata, OffsetSpec, ProduceAck, ShardInfo, TopicInfo};
use bytes::Bytes;
use coremq_wire::{fb, messages, shard_for, Kind};
use flatbuffers::{FlatBufferBuilder, VerifierOptions, WIPOffset};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Timeouts and reconnect policy.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long a request may wait for its response (fetches add their `max_wait`).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// First wait before reconnecting a failed connection; doubles per failure.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Send partition requests straight to the owning shard's port (true), or
    /// everything to the bootstrap address and let the broker forward (false).
    pub shard_aware: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            shard_aware: true,
        }
    }
}

/// Which listener a connection goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// The bootstrap address (SO_REUSEPORT main port: any shard answers).
    Main,
    /// One shard's own port.
    Shard(u16),
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    next_attempt: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while connecting, so concurrent callers share one attempt.
    connecting: tokio::sync::Mutex<Backoff>,
}

struct Inner {
    bootstrap: String,
    config: ClientConfig,
    metadata: RwLock<Arc<Metadata>>,
    slots: Mutex<HashMap<Route, Arc<Slot>>>,
}

/// A handle to one broker. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn options() -> VerifierOptions {
    messages::verifier_options(MAX_RESPONSE_FRAME_BYTES)
}

pub(crate) fn parse<'a, T>(body: &'a [u8]) -> Result<T::Inner>
where
    T: flatbuffers::Follow<'a> + flatbuffers::Verifiable + 'a,
{
    messages::parse::<T>(body, &options()).map_err(|e| Error::Protocol(e.to_string()))
}

impl Client {
    /// Connects to `addr` ("host:port") and loads the metadata.
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    pub async fn connect_with(addr: impl Into<String>, config: ClientConfig) -> Result<Client> {
        let client = Client {
            inner: Arc::new(Inner {
                bootstrap: addr.into(),
                config,
                metadata: RwLock::new(Arc::new(Metadata::default())),
                slots: Mutex::new(HashMap::new()),
            }),
        };
        client.refresh_metadata().await?;
        Ok(client)
    }

    pub fn bootstrap(&self) -> &str {
        &self.inner.bootstrap
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The last metadata loaded (no request).
    pub fn metadata(&self) -> Arc<Metadata> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the broker for fresh metadata and caches it.
    pub async fn refresh_metadata(&self) -> Result<Arc<Metadata>> {
        let body = self
            .call_idempotent(Route::Main, Kind::Metadata, || {
                let mut builder = FlatBufferBuilder::with_capacity(64);
                let root = fb::MetadataRequest::create(&mut builder, &Default::default());
                builder.finish(root, None);
                Body::from_builder(builder)
            })
            .await?;
        let metadata = Arc::new(decode_metadata(&body)?);
        *self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|p| p.into_inner()) = metadata.clone();
        Ok(metadata)
    }

    /// Partition count of `topic`, refreshing the metadata once if unknown.
    pub async fn partitions_for(&self, topic: &str) -> Result<u32> {
        if let Some(info) = self.metadata().topic(topic) {
            return Ok(info.partitions);
        }
        match self.refresh_metadata().await?.topic(topic) {
            Some(info) => Ok(info.partitions),
            None => Err(Error::UnknownTopic(topic.to_string())),
        }
    }

    /// The route for a partition: its shard when shard-aware.
    pub fn route_for(&self, topic: &str, partition: u32) -> Route {
        let shards = self.metadata().shard_count;
        if self.inner.config.shard_aware && shards > 0 {
            Route::Shard(shard_for(topic, partition, shards))
        } else {
            Route::Main
        }
    }

    fn address(&self, route: Route) -> String {
        match route {
            Route::Main => self.inner.bootstrap.clone(),
            Route::Shard(id) => match self.metadata().shard(id) {
                Some(info) => shard_address(&self.inner.bootstrap, info),
                None => self.inner.bootstrap.clone(),
            },
        }
    }

    fn slot(&self, route: Route) -> Arc<Slot> {
        lock(&self.inner.slots).entry(route).or_default().clone()
    }

    /// The live connection for `route`, opening one (with backoff after
    /// failures) when there is none.
    pub async fn connection(&self, route: Route) -> Result<Arc<Connection>> {
        let slot = self.slot(route);
        if let Some(conn) = lock(&slot.current).as_ref().filter(|c| c.is_alive()) {
            return Ok(conn.clone());
        }
        let mut backoff = slot.connecting.lock().await;
        let previous = lock(&slot.current).clone();
        if let Some(conn) = previous.as_ref().filter(|c| c.is_alive()) {
            return Ok(conn.clone());
        }
        if let Some(at) = backoff.next_attempt {
            tokio::time::sleep_until(at.into()).await;
        }
        if previous.is_some() && route != Route::Main {
            // The old connection died: the broker may have restarted with other ports.
            if let Err(error) = Box::pin(self.refresh_metadata()).await {
                tracing::debug!(%error, "metadata refresh before reconnect failed");
            }
        }
        let addr = self.address(route);
        match Connection::connect(&addr, self.inner.config.connect_timeout).await {
            Ok(conn) => {
                *backoff = Backoff::default();
                let conn = Arc::new(conn);
                *lock(&slot.current) = Some(conn.clone());
                if previous.is_some() {
                    tracing::info!(%addr, ?route, "reconnected");
                }
                Ok(conn)
            }
            Err(error) => {
                let config = &self.inner.config;
                let factor = 1u32 << backoff.failures.min(16);
                let wait =
                    (config.reconnect_backoff_min * factor).min(config.reconnect_backoff_max);
                backoff.failures += 1;
                backoff.next_attempt = Some(Instant::now() + wait);
                if previous.is_some() {
                    tracing::warn!(%addr, ?route, %error, ?wait, "reconnect failed");
                } else {
                    tracing::debug!(%addr, ?route, %error, ?wait, "connect failed");
                }
                Err(error)
            }
        }
    }

    /// One request on `route`'s connection; no retry.
    pub async fn call(
        &self,
        route: Route,
        kind: Kind,
        body: Body,
        timeout: Duration,
    ) -> Result<Bytes> {
        let conn = self.connection(route).await?;
        conn.request(kind, body, timeout).await
    }

    /// A request that is safe to repeat: retried once on a fresh connection
    /// when the connection fails.
    pub(crate) async fn call_idempotent(
        &self,
        route: Route,
        kind: Kind,
        build: impl Fn() -> Body,
    ) -> Result<Bytes> {
        let timeout = self.inner.config.request_timeout;
        match self.call(route, kind, build(), timeout).await {
            Err(error) if error.is_connection() => {
                tracing::debug!(%error, "retrying {} once", kind.name());
                self.call(route, kind, build(), timeout).await
            }
            other => other,
        }
    }

    /// Produces one or more back-to-back batches (built with
    /// `coremq_wire::BatchBuilder`) to one partition; returns the broker's ack.
    /// The batch level API: no per-record work in the client.
    pub async fn produce(&self, topic: &str, partition: u32, batches: &[u8]) -> Result<ProduceAck> {
        let route = self.route_for(topic, partition);
        let mut results = self
            .produce_to(route, &[(topic, partition, batches)])
            .await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Protocol("produce response without results".into())))
    }

    /// One ProduceRequest carrying several partitions (normally all owned by
    /// the shard behind `route`). One result per entry, in order.
    pub async fn produce_to(
        &self,
        route: Route,
        partitions: &[(&str, u32, &[u8])],
    ) -> Result<Vec<Result<ProduceAck>>> {
        let pending = self.start_produce(route, partitions).await?;
        finish_produce(pending, partitions.len()).await
    }

    /// Queues a ProduceRequest and returns without waiting for the ack: the
    /// pipelining primitive. Requests started one after another from one task
    /// reach the broker in that order. Finish with [`finish_produce`].
    pub async fn start_produce(
        &self,
        route: Route,
        partitions: &[(&str, u32, &[u8])],
    ) -> Result<PendingResponse> {
        let body = encode_produce(partitions);
        let conn = self.connection(route).await?;
        conn.send(Kind::Produce, body, self.inner.config.request_timeout)
            .await
    }

    /// Like [`Client::produce`], but takes the batch bytes by value and sends
    /// them from their own buffer: no copy into the request (the cheapest path).
    pub async fn produce_owned(
        &self,
        topic: &str,
        partition: u32,
        batches: Bytes,
    ) -> Result<ProduceAck> {
        let route = self.route_for(topic, partition);
        let pending = self
            .start_produce_owned(route, topic, partition, batches)
            .await?;
        finish_produce(pending, 1)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Protocol("produce response without results".into())))
    }

    /// [`Client::start_produce`] for one partition whose batch bytes are
    /// owned: the request's FlatBuffers part is built around an empty byte
    /// vector placed last, and the batches follow it on the wire unchanged.
    pub async fn start_produce_owned(
        &self,
        route: Route,
        topic: &str,
        partition: u32,
        batches: Bytes,
    ) -> Result<PendingResponse> {
        let body = encode_produce_owned(topic, partition, batches)?;
        let conn = self.connection(route).await?;
        conn.send(Kind::Produce, body, self.inner.config.request_timeout)
            .await
    }

    /// One fetch of one partition, long-polling up to `options.max_wait`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<FetchedPartition> {
        let route = self.route_for(topic, partition);
        let timeout = self.inner.config.request_timeout + options.max_wait;
        let build = || fetch::encode_fetch(topic, partition, offset, options);
        let response = match self.call(route, Kind::Fetch, build(), timeout).await {
            Err(error) if error.is_connection() => {
                self.call(route, Kind::Fetch, build(), timeout).await?
            }
            other => other?,
        };
        fetch::decode_fetch(response, offset)
    }

    /// Queues one fetch and returns without waiting for the response: the
    /// consuming side's pipelining primitive (issue the next fetch as soon as
    /// a response arrives, before its records are processed). Unlike
    /// [`Client::fetch`] it is not retried on a failed connection; finish it
    /// with [`PendingFetch::wait`].
    pub async fn start_fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<PendingFetch> {
        let route = self.route_for(topic, partition);
        let timeout = self.inner.config.request_timeout + options.max_wait;
        let body = fetch::encode_fetch(topic, partition, offset, options);
        let conn = self.connection(route).await?;
        let pending = conn.send(Kind::Fetch, body, timeout).await?;
        Ok(PendingFetch {
            pending,
            requested_offset: offset,
        })
    }

    /// Resolves an offset of one partition.
    pub async fn list_offset(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64> {
        let route = self.route_for(topic, partition);
        let body = self
            .call_idempotent(route, Kind::ListOffsets, || {
                let mut builder = FlatBufferBuilder::with_capacity(128 + topic.len());
                let name = builder.create_string(topic);
                let (spec, timestamp_ms) = match spec {
                    OffsetSpec::Earliest => (fb::OffsetSpec::Earliest, 0),
                    OffsetSpec::Latest => (fb::OffsetSpec::Latest, 0),
                    OffsetSpec::Timestamp(ms) => (fb::OffsetSpec::Timestamp, ms),
                };
                let entry = fb::ListOffsetsPartition::create(
                    &mut builder,
                    &fb::ListOffsetsPartitionArgs {
                        topic: Some(name),
                        partition,
                        spec,
                        timestamp_ms,
                    },
                );
                let entries = builder.create_vector(&[entry]);
                let root = fb::ListOffsetsRequest::create(
                    &mut builder,
                    &fb::ListOffsetsRequestArgs {
                        partitions: Some(entries),
                    },
                );
                builder.finish(root, None);
                Body::from_builder(builder)
            })
            .await?;
        let response = parse::<fb::ListOffsetsResponse>(&body)?;
        let result = response
            .results()
            .and_then(|r| r.iter().next())
            .ok_or_else(|| Error::Protocol("list offsets response without results".into()))?;
        check_code(result.error(), result.error_message())?;
        Ok(result.offset())
    }
}

/// A fetch queued by [`Client::start_fetch`].
pub struct PendingFetch {
    pending: PendingResponse,
    requested_offset: u64,
}

impl PendingFetch {
    /// The offset this fetch asked for.
    pub fn requested_offset(&self) -> u64 {
        self.requested_offset
    }

    /// Waits for the response (long poll included).
    pub async fn wait(self) -> Result<FetchedPartition> {
        let body = self.pending.wait().await?;
        fetch::decode_fetch(body, self.requested_offset)
    }
}

/// Shard listeners that advertise a wildcard or empty host are reached at the
/// bootstrap host.
fn shard_address(bootstrap: &str, info: &ShardInfo) -> String {
    let wildcard = matches!(info.host.as_str(), "" | "0.0.0.0" | "::" | "[::]");
    let host = if wildcard {
        match bootstrap.rsplit_once(':') {
            Some((host, _)) => host.to_string(),
            None => bootstrap.to_string(),
        }
    } else if info.host.contains(':') && !info.host.starts_with('[') {
        format!("[{}]", info.host)
    } else {
        info.host.clone()
    };
    format!("{host}:{}", info.port)
}

pub(crate) fn topic_info(t: fb::TopicInfo<'_>) -> TopicInfo {
    TopicInfo {
        name: t.name().unwrap_or_default().to_string(),
        partitions: t.partitions(),
        durability: t.durability().map(str::to_string),
        retention_ms: t.retention_ms(),
        retention_bytes: t.retention_bytes(),
    }
}

pub(crate) fn decode_metadata(body: &[u8]) -> Result<Metadata> {
    let response = parse::<fb::MetadataResponse>(body)?;
    let shards: Vec<ShardInfo> = response
        .shards()
        .map(|s| {
            s.iter()
                .map(|s| ShardInfo {
                    id: s.id(),
                    host: s.host().unwrap_or_default().to_string(),
                    port: s.port(),
                })
                .collect()
        })
        .unwrap_or_default();
    let topics = response
        .topics()
        .map(|t| {
            t.iter()
                .map(|t| {
                    let info = topic_info(t);
                    (info.name.clone(), info)
                })
                .collect()
        })
        .unwrap_or_default();
    let shard_count = if response.shard_count() > 0 {
        response.shard_count()
    } else {
        shards.len() as u16
    };
    Ok(Metadata {
        shard_count,
        shards,
        topics,
    })
}

/// Encodes a ProduceRequest. The batch bytes are copied once, into the
/// builder, which is sized up front so it never regrows.
pub(crate) fn encode_produce(partitions: &[(&str, u32, &[u8])]) -> Body {
    let capacity = partitions
        .iter()
        .map(|(topic, _, batches)| batches.len() + topic.len() + 64)
        .sum::<usize>()
        + 128;
    let mut builder = FlatBufferBuilder::with_capacity(capacity);
    let mut entries = Vec::with_capacity(partitions.len());
    for (topic, partition, batches) in partitions {
        // `create_byte_string` copies with one memcpy (create_vector::<u8>
        // pushes byte by byte); its trailing NUL is padding a [ubyte] reader ignores.
        let data = builder.create_byte_string(batches);
        let data = WIPOffset::new(data.value());
        let topic = builder.create_string(topic);
        entries.push(fb::PartitionBatches::create(
            &mut builder,
            &fb::PartitionBatchesArgs {
                topic: Some(topic),
                partition: *partition,
                batches: Some(data),
            },
        ));
    }
    let entries = builder.create_vector(&entries);
    let root = fb::ProduceRequest::create(
        &mut builder,
        &fb::ProduceRequestArgs {
            partitions: Some(entries),
        },
    );
    builder.finish(root, None);
    Body::from_builder(builder)
}

/// Waits for a produce started with [`Client::start_produce`]; one result per
/// partition entry of the request.
pub async fn finish_produce(
    pending: PendingResponse,
    partitions: usize,
) -> Result<Vec<Result<ProduceAck>>> {
    let body = pending.wait().await?;
    decode_produce(&body, partitions)
}

/// A ProduceRequest for one partition with `batches` as the tail of the body.
///
/// FlatBuffers builds back to front, so the first object created ends the
/// buffer: an empty `[ubyte]` vector created first is the last 4 bytes (its
/// length field). Setting that length to the batch length and sending the
/// batch bytes right after gives exactly the buffer a builder would have made
/// with the bytes inside, without copying them (checked by a test through
/// the verifier).
pub(crate) fn encode_produce_owned(topic: &str, partition: u32, batches: Bytes) -> Result<Body> {
    let length = u32::try_from(batches.len())
        .map_err(|_| Error::InvalidRecord("batch bytes over 4 GiB".into()))?;
    let mut builder = FlatBufferBuilder::with_capacity(160 + topic.len());
    let data = builder.create_vector::<u8>(&[]);
    let topic = builder.create_string(topic);
    let entry = fb::PartitionBatches::create(
        &mut builder,
        &fb::PartitionBatchesArgs {
            topic: Some(topic),
            partition,
            batches: Some(data),
        },
    );
    let entries = builder.create_vector(&[entry]);
    let root = fb::ProduceRequest::create(
        &mut builder,
        &fb::ProduceRequestArgs {
            partitions: Some(entries),
        },
    );
    builder.finish(root, None);
    let (mut buffer, head) = builder.collapse();
    let end = buffer.len();
    if end < head + 4 || buffer[end - 4..] != [0, 0, 0, 0] {
        return Err(Error::Protocol(
            "flatbuffers layout changed: the empty vector is not last".into(),
        ));
    }
    buffer[end - 4..].copy_from_slice(&length.to_le_bytes());
    Ok(Body::with_tail(buffer, head, batches))
}

pub(crate) fn decode_produce(body: &[u8], expected: usize) -> Result<Vec<Result<ProduceAck>>> {
    let response = parse::<fb::ProduceResponse>(body)?;
    let results: Vec<Result<ProduceAck>> = response
        .results()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    check_code(r.error(), r.error_message()).map(|()| ProduceAck {
                        base_offset: r.base_offset(),
                        last_offset: r.last_offset(),
                        append_time_ms: r.append_time_ms(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if results.len() != expected {
        return Err(Error::Protocol(format!(
            "produce response has {} results for {expected} partitions",
            results.len()
        )));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_shard_hosts_use_the_bootstrap_host() {
        let info = |host: &str| ShardInfo {
            id: 0,
            host: host.into(),
            port: 9093,
        };
        assert_eq!(
            shard_address("127.0.0.1:9092", &info("0.0.0.0")),
            "127.0.0.1:9093"
        );
        assert_eq!(shard_address("localhost:9092", &info("")), "localhost:9093");
        assert_eq!(shard_address("x:1", &info("10.0.0.1")), "10.0.0.1:9093");
        assert_eq!(shard_address("x:1", &info("::1")), "[::1]:9093");
    }

    #[test]
    fn produce_request_round_trips_through_the_verifier() {
        let mut batch = coremq_wire::BatchBuilder::with_capacity(256);
        batch.push(1, Some(b"k"), b"value", &[]).unwrap();
        let batch = batch.finish();
        let body = encode_produce(&[("orders", 3, &batch), ("other", 0, &batch)]);
        let bytes = body.to_vec();
        let request = parse::<fb::ProduceRequest>(&bytes).unwrap();
        let partitions = request.partitions().unwrap();
        assert_eq!(partitions.len(), 2);
        assert_eq!(partitions.get(0).topic(), "orders");
        assert_eq!(partitions.get(0).partition(), 3);
        assert_eq!(partitions.get(0).batches().bytes(), &batch[..]);
        assert_eq!(partitions.get(1).batches().bytes(), &batch[..]);
        coremq_wire::batch::verify_batch(partitions.get(1).batches().bytes()).unwrap();
    }

    #[test]
    fn owned_produce_request_is_the_same_as_a_copied_one() {
        for topic in ["t", "orders", "a-much-longer-topic-name-x"] {
            for count in [1, 3, 17] {
                let mut batch = coremq_wire::BatchBuilder::with_capacity(256);
                for i in 0..count {
                    batch
                        .push(i, None, &vec![7u8; count as usize], &[])
                        .unwrap();
                }
                let batch = batch.finish();
                let owned = encode_produce_owned(topic, 5, Bytes::from(batch.clone()))
                    .unwrap()
                    .to_vec();
                let request = parse::<fb::ProduceRequest>(&owned).unwrap();
                let partitions = request.partitions().unwrap();
                assert_eq!(partitions.len(), 1);
                assert_eq!(partitions.get(0).topic(), topic);
                assert_eq!(partitions.get(0).partition(), 5);
                assert_eq!(partitions.get(0).batches().bytes(), &batch[..]);
            }
        }
    }
}
