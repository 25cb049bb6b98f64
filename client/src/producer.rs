//! `Producer`: record-level batching on top of [`Client::produce_to`].
//!
//! Records are copied into one `BatchBuilder` per partition as they are sent
//! (no allocation per record: the builder is sized to `batch_bytes`). A batch
//! is sealed when it reaches `batch_bytes` or has been open for `linger`; a
//! background flusher task groups sealed batches by shard, one ProduceRequest
//! per shard carrying many partitions, several requests in flight per
//! connection. `max_in_flight_bytes` bounds the bytes buffered or unacknowledged:
//! `send` waits (FIFO) for room.
//!
//! Ordering: records of one partition are appended to its batch in the order
//! their `send` futures are first polled (when `max_in_flight_bytes` is
//! exhausted, waiters are served FIFO), and batches of one partition are
//! queued in order on one connection by the single flusher task; the broker
//! appends a connection's requests in arrival order, so same key (same
//! partition) means same order.
//!
//! Defaults: `linger` 1 ms (enough to fill batches under load, invisible next
//! to an fsync), `batch_bytes` 256 KiB, `max_in_flight_bytes` 64 MiB.

use crate::client::{finish_produce, Client, Route};
use crate::conn::PendingResponse;
use crate::error::{Error, Result};
use crate::types::ProduceAck;
use coremq_wire::batch::record_encoded_len;
use coremq_wire::{partition_for_key, BatchBuilder, ErrorCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify, Semaphore};

/// A record to send; borrowed, because it is copied into a batch at once.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    /// `None`: by key hash, or sticky round-robin when there is no key.
    pub partition: Option<u32>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// `None`: now (milliseconds since the Unix epoch).
    pub timestamp_ms: Option<i64>,
}

impl<'a> Record<'a> {
    pub fn new(topic: &'a str, value: &'a [u8]) -> Record<'a> {
        Record {
            topic,
            partition: None,
            key: None,
            value,
            headers: &[],
            timestamp_ms: None,
        }
    }

    pub fn key(mut self, key: &'a [u8]) -> Record<'a> {
        self.key = Some(key);
        self
    }

    pub fn partition(mut self, partition: u32) -> Record<'a> {
        self.partition = Some(partition);
        self
    }

    pub fn headers(mut self, headers: &'a [(&'a [u8], &'a [u8])]) -> Record<'a> {
        self.headers = headers;
        self
    }

    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Record<'a> {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    fn encoded_len(&self) -> usize {
        record_encoded_len(self.key, self.value, self.headers)
    }
}

#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub linger: Duration,
    pub batch_bytes: usize,
    pub max_in_flight_bytes: usize,
    /// Largest ProduceRequest the flusher builds (several partitions' batches).
    pub max_request_bytes: usize,
    /// Retries of a request that failed with a retriable error. Default 0: a
    /// retry after a lost connection can duplicate records.
    pub retries: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(1),
            batch_bytes: 256 * 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            retries: 0,
        }
    }
}

pub struct ProducerBuilder {
    client: Client,
    config: ProducerConfig,
}

impl ProducerBuilder {
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.config.batch_bytes = bytes.max(1);
        self
    }

    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.config.max_in_flight_bytes = bytes.max(1);
        self
    }

    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes.max(1);
        self
    }

    pub fn retries(mut self, retries: u32) -> Self {
        self.config.retries = retries;
        self
    }

    /// Starts the flusher task (needs a tokio runtime).
    pub fn build(self) -> Producer {
        let permits = self.config.max_in_flight_bytes.min(Semaphore::MAX_PERMITS);
        let (outstanding, _) = watch::channel(0usize);
        let inner = Arc::new(Inner {
            client: self.client,
            capacity: Semaphore::new(permits),
            capacity_max: permits,
            config: self.config,
            state: Mutex::new(State {
                topics: HashMap::new(),
                sealed: Vec::new(),
                oneway_error: None,
                oneway_failed_batches: 0,
                outstanding,
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(flusher(inner.clone()));
        Producer {
            handle: Arc::new(Handle { inner }),
        }
    }
}

/// Set once per batch; every `send` future of the batch reads it.
#[derive(Default)]
struct Completion {
    result: OnceLock<Result<u64>>,
    notify: Notify,
}

impl Completion {
    fn complete(&self, result: Result<u64>) {
        let _ = self.result.set(result);
        self.notify.notify_waiters();
    }

    async fn wait(&self) -> Result<u64> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}

struct OpenBatch {
    builder: BatchBuilder,
    opened: Instant,
    permits: usize,
    completion: Option<Arc<Completion>>,
}

struct SealedBatch {
    topic: Arc<str>,
    partition: u32,
    bytes: Vec<u8>,
    permits: usize,
    completion: Option<Arc<Completion>>,
}

struct TopicState {
    name: Arc<str>,
    open: Vec<Option<OpenBatch>>,
    sticky: u32,
    /// The broker said the topic or a partition is unknown: refresh first.
    stale: bool,
}

struct State {
    topics: HashMap<String, TopicState>,
    sealed: Vec<SealedBatch>,
    /// Failures of records sent with `send_oneway`, reported by `flush`.
    oneway_error: Option<Error>,
    oneway_failed_batches: u64,
    /// Batches sealed or sent but not yet acknowledged.
    outstanding: watch::Sender<usize>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    state: Mutex<State>,
    capacity: Semaphore,
    capacity_max: usize,
    wake: Notify,
    closed: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The producer. Dropping it sends what is buffered, but only `flush` or
/// `close` wait for it.
pub struct Producer {
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

impl Clone for Producer {
    fn clone(&self) -> Self {
        Producer {
            handle: self.handle.clone(),
        }
    }
}

impl Producer {
    pub fn builder(client: Client) -> ProducerBuilder {
        ProducerBuilder {
            client,
            config: ProducerConfig::default(),
        }
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.handle.inner.config
    }

    /// Sends one record and waits for its acknowledgement: `(partition, offset)`.
    /// The record is copied into a batch when the future is first polled
    /// (after waiting for room under `max_in_flight_bytes`).
    pub async fn send(&self, record: Record<'_>) -> Result<(u32, u64)> {
        let (partition, index, completion) = self.enqueue(record, true, false).await?;
        let completion = completion.ok_or(Error::Closed)?;
        let base = completion.wait().await?;
        Ok((partition, base + index as u64))
    }

    /// Sends one record without a per-record future. Failures are counted and
    /// the first one is returned by the next `flush`.
    pub async fn send_oneway(&self, record: Record<'_>) -> Result<()> {
        self.enqueue(record, false, false).await.map(|_| ())
    }

    /// Sends one record, seals its batch at once (no linger) and waits for
    /// the acknowledgement: the simple synchronous-style call.
    pub async fn send_and_wait(&self, record: Record<'_>) -> Result<(u32, u64)> {
        let (partition, index, completion) = self.enqueue(record, true, true).await?;
        let completion = completion.ok_or(Error::Closed)?;
        let base = completion.wait().await?;
        Ok((partition, base + index as u64))
    }

    /// Sends everything buffered and waits until every batch is acknowledged.
    /// Returns the first `send_oneway` failure since the previous flush.
    pub async fn flush(&self) -> Result<()> {
        let inner = &self.handle.inner;
        let mut outstanding = {
            let mut state = lock(&inner.state);
            seal_all(&mut state, None);
            state.outstanding.subscribe()
        };
        inner.wake.notify_one();
        outstanding
            .wait_for(|n| *n == 0)
            .await
            .map_err(|_| Error::Closed)?;
        let mut state = lock(&inner.state);
        state.oneway_failed_batches = 0;
        match state.oneway_error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Flushes, then stops the flusher.
    pub async fn close(self) -> Result<()> {
        self.flush().await
    }

    async fn enqueue(
        &self,
        record: Record<'_>,
        want_completion: bool,
        seal_now: bool,
    ) -> Result<(u32, u32, Option<Arc<Completion>>)> {
        let inner = &self.handle.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let length = record.encoded_len();
        let permits = length.min(inner.capacity_max);
        let wanted = u32::try_from(permits).unwrap_or(u32::MAX);
        // try first: it never yields, so records sent from futures polled in
        // order are enqueued in that order (an await could yield on tokio's
        // cooperative budget and let later sends overtake).
        match inner.capacity.try_acquire_many(wanted) {
            Ok(permit) => permit.forget(),
            // `unconstrained`: outside tokio's cooperative budget. With
            // thousands of sends waiting in one task (join_all), a budget-
            // exhausted acquire wakes itself at once, and the combinator
            // re-polls every waiter in a spin.
            Err(_) => tokio::task::unconstrained(inner.capacity.acquire_many(wanted))
                .await
                .map_err(|_| Error::Closed)?
                .forget(),
        }
        let (known, stale) = match lock(&inner.state).topics.get(record.topic) {
            Some(topic) => (true, topic.stale),
            None => (false, false),
        };
        if !known || stale {
            let partitions =
                if stale {
                    inner.client.refresh_metadata().await.and_then(|m| {
                        match m.topic(record.topic) {
                            Some(info) => Ok(info.partitions),
                            None => Err(Error::UnknownTopic(record.topic.to_string())),
                        }
                    })
                } else {
                    inner.client.partitions_for(record.topic).await
                };
            let partitions = match partitions {
                Ok(partitions) => partitions,
                Err(error) => {
                    inner.capacity.add_permits(permits);
                    return Err(error);
                }
            };
            let mut state = lock(&inner.state);
            let State {
                topics,
                sealed,
                outstanding,
                ..
            } = &mut *state;
            let topic = topics
                .entry(record.topic.to_string())
                .or_insert_with(|| TopicState {
                    name: Arc::from(record.topic),
                    open: Vec::new(),
                    sticky: 0,
                    stale: false,
                });
            if topic.open.len() != partitions as usize {
                // Send what was batched under the old partition count as is.
                for (partition, slot) in topic.open.iter_mut().enumerate() {
                    seal(&topic.name, partition as u32, slot, sealed, outstanding);
                }
                topic.open = (0..partitions).map(|_| None).collect();
            }
            topic.stale = false;
        }
        let result = {
            let mut state = lock(&inner.state);
            append(
                &mut state,
                &inner.config,
                record,
                length,
                permits,
                want_completion,
                seal_now,
            )
        };
        match result {
            Ok((partition, index, completion, sealed)) => {
                // A new batch (index 0) needs the flusher to arm its linger
                // timer: an idle flusher sleeps without one.
                if sealed || index == 0 || inner.config.linger.is_zero() {
                    inner.wake.notify_one();
                }
                Ok((partition, index, completion))
            }
            Err(error) => {
                inner.capacity.add_permits(permits);
                Err(error)
            }
        }
    }
}

type Appended = (u32, u32, Option<Arc<Completion>>, bool);

fn append(
    state: &mut State,
    config: &ProducerConfig,
    record: Record<'_>,
    length: usize,
    permits: usize,
    want_completion: bool,
    seal_now: bool,
) -> Result<Appended> {
    let State {
        topics,
        sealed,
        outstanding,
        ..
    } = state;
    let topic = topics
        .get_mut(record.topic)
        .ok_or_else(|| Error::UnknownTopic(record.topic.to_string()))?;
    let partitions = topic.open.len() as u32;
    if partitions == 0 {
        return Err(Error::UnknownTopic(record.topic.to_string()));
    }
    let partition = match (record.partition, record.key) {
        (Some(p), _) if p < partitions => p,
        (Some(p), _) => {
            return Err(Error::UnknownPartition {
                topic: record.topic.to_string(),
                partition: p,
                partitions,
            })
        }
        (None, Some(key)) => partition_for_key(key, partitions),
        (None, None) => topic.sticky % partitions,
    };
    let mut did_seal = false;
    let slot = &mut topic.open[partition as usize];
    if let Some(open) = slot {
        if !open.builder.is_empty() && open.builder.len_bytes() + length > config.batch_bytes {
            seal(&topic.name, partition, slot, sealed, outstanding);
            did_seal = true;
        }
    }
    let open = slot.get_or_insert_with(|| OpenBatch {
        builder: BatchBuilder::with_capacity(config.batch_bytes.max(length + 64)),
        opened: Instant::now(),
        permits: 0,
        completion: None,
    });
    let index = open.builder.record_count();
    open.builder
        .push(
            record.timestamp_ms.unwrap_or_else(now_ms),
            record.key,
            record.value,
            record.headers,
        )
        .map_err(|e| Error::InvalidRecord(e.to_string()))?;
    open.permits += permits;
    let completion = if want_completion {
        Some(open.completion.get_or_insert_with(Default::default).clone())
    } else {
        None
    };
    if seal_now || open.builder.len_bytes() >= config.batch_bytes {
        seal(&topic.name, partition, slot, sealed, outstanding);
        did_seal = true;
    }
    if did_seal && record.partition.is_none() && record.key.is_none() {
        topic.sticky = topic.sticky.wrapping_add(1);
    }
    Ok((partition, index, completion, did_seal))
}

/// Moves an open batch to the sealed list. It counts as outstanding from
/// here (not from dispatch), so a `flush` that seals cannot miss it.
fn seal(
    topic: &Arc<str>,
    partition: u32,
    slot: &mut Option<OpenBatch>,
    sealed: &mut Vec<SealedBatch>,
    outstanding: &watch::Sender<usize>,
) {
    if let Some(open) = slot.take() {
        if open.builder.is_empty() {
            return;
        }
        outstanding.send_modify(|n| *n += 1);
        sealed.push(SealedBatch {
            topic: topic.clone(),
            partition,
            bytes: open.builder.finish(),
            permits: open.permits,
            completion: open.completion,
        });
    }
}

/// Seals every open batch (older than `linger`, when given). Returns the
/// earliest time a remaining open batch will be due.
fn seal_all(state: &mut State, linger: Option<Duration>) -> Option<Instant> {
    let State {
        topics,
        sealed,
        outstanding,
        ..
    } = state;
    let now = Instant::now();
    let mut next_due: Option<Instant> = None;
    for topic in topics.values_mut() {
        for (partition, slot) in topic.open.iter_mut().enumerate() {
            let Some(open) = slot else { continue };
            match linger {
                Some(linger) if now.duration_since(open.opened) < linger => {
                    let due = open.opened + linger;
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                }
                _ => seal(&topic.name, partition as u32, slot, sealed, outstanding),
            }
        }
    }
    next_due
}

async fn flusher(inner: Arc<Inner>) {
    loop {
        let closed = inner.closed.load(Ordering::Acquire);
        let (batches, next_due) = {
            let mut state = lock(&inner.state);
            let next_due = seal_all(
                &mut state,
                if closed {
                    None
                } else {
                    Some(inner.config.linger)
                },
            );
            (std::mem::take(&mut state.sealed), next_due)
        };
        if !batches.is_empty() {
            dispatch(&inner, batches).await;
        }
        if closed {
            tracing::debug!("producer flusher stopped");
            return;
        }
        match next_due {
            Some(due) => {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

/// Groups sealed batches by route and sends one request per group (split at
/// `max_request_bytes`). Requests are queued on their connection here, in
/// order, by this one task; their acks are awaited on separate tasks.
async fn dispatch(inner: &Arc<Inner>, batches: Vec<SealedBatch>) {
    let mut by_route: Vec<(Route, Vec<Vec<SealedBatch>>)> = Vec::new();
    for batch in batches {
        let route = inner.client.route_for(&batch.topic, batch.partition);
        let index = match by_route.iter().position(|(r, _)| *r == route) {
            Some(index) => index,
            None => {
                by_route.push((route, Vec::new()));
                by_route.len() - 1
            }
        };
        let requests = &mut by_route[index].1;
        let fits = requests.last().is_some_and(|last| {
            last.iter().map(|b| b.bytes.len()).sum::<usize>() + batch.bytes.len()
                <= inner.config.max_request_bytes
        });
        match requests.last_mut() {
            Some(last) if fits => last.push(batch),
            _ => requests.push(vec![batch]),
        }
    }
    for (route, requests) in by_route {
        for batches in requests {
            let started = {
                let parts = parts_of(&batches);
                inner.client.start_produce(route, &parts).await
            };
            match started {
                Ok(pending) => {
                    tokio::spawn(await_ack(inner.clone(), route, batches, Some(pending)));
                }
                Err(error) if error.is_retriable() && inner.config.retries > 0 => {
                    tokio::spawn(await_ack(inner.clone(), route, batches, None));
                }
                Err(error) => complete(inner, &batches, Err(error)),
            }
        }
    }
}

fn parts_of(batches: &[SealedBatch]) -> Vec<(&str, u32, &[u8])> {
    batches
        .iter()
        .map(|b| (&*b.topic, b.partition, &b.bytes[..]))
        .collect()
}

/// Waits for the ack of a started request (or sends it afresh when
/// `pending` is `None`), retrying retriable failures up to `retries` times.
async fn await_ack(
    inner: Arc<Inner>,
    route: Route,
    batches: Vec<SealedBatch>,
    mut pending: Option<PendingResponse>,
) {
    let mut attempt = 0;
    let outcome = loop {
        let result = match pending.take() {
            Some(pending) => finish_produce(pending, batches.len()).await,
            None => inner.client.produce_to(route, &parts_of(&batches)).await,
        };
        match result {
            Err(error) if error.is_retriable() && attempt < inner.config.retries => {
                attempt += 1;
                tracing::warn!(%error, attempt, "produce failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            other => break other,
        }
    };
    complete(&inner, &batches, outcome);
}

fn complete(inner: &Inner, batches: &[SealedBatch], outcome: Result<Vec<Result<ProduceAck>>>) {
    let results: Vec<Result<u64>> = match outcome {
        Ok(results) => results
            .into_iter()
            .map(|r| r.map(|ack| ack.base_offset))
            .collect(),
        Err(error) => vec![Err(error); batches.len()],
    };
    let mut permits = 0;
    for (batch, result) in batches.iter().zip(results) {
        permits += batch.permits;
        if let Err(error) = &result {
            tracing::debug!(topic = %batch.topic, partition = batch.partition, %error, "batch failed");
            let stale_topic = matches!(
                error.code(),
                Some(ErrorCode::UnknownTopic | ErrorCode::UnknownPartition)
            );
            let mut state = lock(&inner.state);
            if stale_topic {
                // Deleted or re-created topic: the next send looks its
                // partition count up in fresh metadata.
                if let Some(topic) = state.topics.get_mut(&*batch.topic) {
                    topic.stale = true;
                }
            }
            if batch.completion.is_none() {
                state.oneway_failed_batches += 1;
                if state.oneway_error.is_none() {
                    state.oneway_error = Some(error.clone());
                }
            }
        }
        if let Some(completion) = &batch.completion {
            completion.complete(result);
        }
    }
    inner.capacity.add_permits(permits);
    lock(&inner.state)
        .outstanding
        .send_modify(|n| *n -= batches.len());
}
