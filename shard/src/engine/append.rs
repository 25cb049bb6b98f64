//! Appends: verify, copy into the log tail, then wait for the flush that
//! covers the copy (group commit). Segment rolls happen here too.

use super::{Engine, State};
use crate::catalog::Snapshot;
use crate::clock::Clock;
use crate::codec::align_up;
use crate::commitlog::entry::{EntryKind, ENTRY_HEADER_LEN};
use crate::commitlog::segments::{segment_file_name, Segment};
use crate::disk::{close_shared, Disk, DiskFile};
use crate::engine::io_error;
use crate::storage::StorageError;
use crate::{AppendOutcome, Durability};
use coremq_wire::batch::{set_broker_fields, split_batches, verify_batch, BatchHeader};
use coremq_wire::BatchError;
use std::rc::Rc;

/// Unflushed bytes above which appends wait for a flush before copying.
pub const MAX_PENDING_BYTES: u64 = 64 << 20;

enum Step {
    Copied,
    Roll(u64),
    Flush,
    /// Another append is moving to a new segment: wait for it.
    AwaitRoll,
}

/// Counts a roll from its start (before it waits for `roll_lock`) to its
/// end, also when the rolling append is dropped.
struct RollUnderWay<'a> {
    rolls: &'a std::cell::Cell<usize>,
    done: &'a event_listener::Event,
}

impl Drop for RollUnderWay<'_> {
    fn drop(&mut self) {
        self.rolls.set(self.rolls.get() - 1);
        self.done.notify(usize::MAX);
    }
}

impl<D: Disk, C: Clock> Engine<D, C> {
    /// Largest entry a segment of the configured size takes.
    fn max_batch_bytes(&self) -> usize {
        self.config.max_batch_bytes
    }

    /// Appends one or more back-to-back record batches to a partition this
    /// shard owns; completes as the topic's durability says.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        batches: &[u8],
    ) -> Result<AppendOutcome, StorageError> {
        // Nothing is stored unless every batch is sound.
        let mut count = 0usize;
        let mut entry_bytes = 0u64;
        for batch in split_batches(batches) {
            let batch = batch?;
            if batch.len() > self.max_batch_bytes() {
                return Err(StorageError::BatchTooLarge {
                    size: batch.len(),
                    max: self.max_batch_bytes(),
                });
            }
            verify_batch(batch)?;
            count += 1;
            entry_bytes += (ENTRY_HEADER_LEN + batch.len()) as u64;
        }
        if count == 0 {
            return Err(StorageError::CorruptBatch(BatchError::UnexpectedEof {
                offset: 0,
                need: coremq_wire::batch::BATCH_HEADER_LEN,
                have: 0,
            }));
        }
        let append_time_ms = self.clock.now_ms();
        let mut copied = 0usize;
        let mut copied_bytes = 0u64;
        let mut first_offset = None;
        let mut last_offset = 0u64;
        // An append that waits for a new segment keeps its place: appends
        // that have copied nothing yet wait for every roll under way, and
        // the rolling append copies as soon as its roll ends (no await in
        // between), so offsets follow submission order per partition.
        let mut rolled = false;
        let (end, needs_sync, copied_at) = loop {
            let step = {
                let mut guard = self.state()?;
                let state = &mut *guard;
                let key = state.partition_key(topic, partition)?;
                if state.writer.pending_bytes() >= MAX_PENDING_BYTES {
                    if let Some(failure) = &state.failure {
                        return Err(failure.to_error());
                    }
                    Step::Flush
                } else if copied == 0 && !rolled && self.rolls_under_way.get() > 0 {
                    Step::AwaitRoll
                } else {
                    let remaining = entry_bytes - copied_bytes;
                    // A request that fits in half a segment is never split.
                    let whole = copied_bytes == 0 && remaining <= self.config.segment_bytes / 2;
                    let mut step = Step::Copied;
                    for batch in split_batches(batches).skip(copied) {
                        let batch = batch?;
                        let length = (ENTRY_HEADER_LEN + batch.len()) as u64;
                        let room = state.writer.room();
                        if whole && copied_bytes == 0 && remaining > room {
                            step = Step::Roll(remaining);
                            break;
                        }
                        if length > room {
                            step = Step::Roll(length);
                            break;
                        }
                        let (base, last) = copy_batch(state, key, batch, append_time_ms);
                        first_offset.get_or_insert(base);
                        last_offset = last;
                        copied += 1;
                        copied_bytes += length;
                    }
                    if copied == count {
                        let end = state.writer.end();
                        let needs_sync = match state.partitions[&key].durability {
                            Durability::Always => {
                                state.sync_needed_end = end;
                                true
                            }
                            Durability::Interval(every) => {
                                state.interval_needed_end = end;
                                let due = append_time_ms + every.as_millis() as i64;
                                state.interval_due_ms =
                                    Some(state.interval_due_ms.map_or(due, |d| d.min(due)));
                                false
                            }
                            Durability::Never => false,
                        };
                        break (end, needs_sync, state.flush_attempts);
                    }
                    step
                }
            };
            match step {
                Step::Copied => unreachable!("a partial copy always asks for a roll"),
                Step::Roll(need) => {
                    self.roll(need).await?;
                    rolled = true;
                }
                Step::AwaitRoll => {
                    let listener = self.roll_done.listen();
                    if self.rolls_under_way.get() > 0 {
                        listener.await;
                    }
                }
                Step::Flush => {
                    let _flush = self.flush_gate.enter().await;
                    self.flush_locked(false).await?;
                }
            }
        };
        let m = &self.metrics;
        m.appended_batches
            .set(m.appended_batches.get() + count as u64);
        m.appended_bytes.set(m.appended_bytes.get() + entry_bytes);
        let base_offset = first_offset.expect("at least one batch was copied");
        m.appended_records
            .set(m.appended_records.get() + (last_offset + 1 - base_offset));
        self.wait_durable(end, needs_sync, copied_at).await?;
        Ok(AppendOutcome {
            base_offset,
            last_offset,
            append_time_ms,
        })
    }

    /// Appends a control entry; `apply` updates the in-memory state under the
    /// same borrow, so memory and log order agree. Returns (end, flush attempt).
    pub(crate) async fn append_control(
        &self,
        kind: EntryKind,
        topic_id: u32,
        payload: &[u8],
        apply: impl FnOnce(&mut State<D::File>),
    ) -> Result<(u64, u64), StorageError> {
        let length = (ENTRY_HEADER_LEN + payload.len()) as u64;
        loop {
            {
                let mut state = self.state()?;
                if length <= state.writer.room() {
                    state
                        .writer
                        .append(payload.len(), kind, topic_id, 0, |dst| {
                            dst.copy_from_slice(payload)
                        });
                    apply(&mut state);
                    let end = state.writer.end();
                    state.sync_needed_end = end;
                    return Ok((end, state.flush_attempts));
                }
            }
            self.roll(length).await?;
        }
    }

    /// Waits until the data up to `end` is written (and synced if
    /// `needs_sync`), flushing if nobody else is.
    pub(crate) async fn wait_durable(
        &self,
        end: u64,
        needs_sync: bool,
        copied_at: u64,
    ) -> Result<(), StorageError> {
        loop {
            if self.satisfied(end, needs_sync, copied_at)? {
                return Ok(());
            }
            match self.flush_gate.try_enter() {
                Some(permit) => {
                    // Let every task that is already runnable (appenders
                    // woken by the last flush, requests read in the same
                    // socket read) copy its batch first, so this flush
                    // carries them all. Without it the new leader flushed
                    // alone and the rest waited for the flush after: flushes
                    // alternated between 1 batch and all the others.
                    futures_lite::future::yield_now().await;
                    // A flush can fail on someone else's part (a sync an
                    // `always` append needed) after this append's own write
                    // succeeded: judge by our own data.
                    let flushed = self.flush_locked(false).await;
                    drop(permit);
                    if self.satisfied(end, needs_sync, copied_at)? {
                        return Ok(());
                    }
                    flushed?;
                }
                None => {
                    let listener = self.flush_gate.listen();
                    if self.satisfied(end, needs_sync, copied_at)? {
                        return Ok(());
                    }
                    if self.flush_gate.is_busy() {
                        listener.await;
                    }
                }
            }
        }
    }

    fn satisfied(&self, end: u64, needs_sync: bool, copied_at: u64) -> Result<bool, StorageError> {
        let state = match self.state() {
            Ok(state) => state,
            // Closed: close() flushed and synced everything copied before it.
            Err(_) => return Ok(end <= self.closed_durable_end.get()),
        };
        let done = if needs_sync {
            state.writer.durable_end() >= end
        } else {
            state.writer.written_end() >= end
        };
        if done {
            return Ok(true);
        }
        if let Some(failure) = &state.failure {
            if failure.attempt > copied_at {
                return Err(failure.to_error());
            }
        }
        Ok(false)
    }

    /// Makes room for an entry of `need` bytes by moving to a new segment.
    pub(crate) async fn roll(&self, need: u64) -> Result<(), StorageError> {
        self.rolls_under_way.set(self.rolls_under_way.get() + 1);
        let _under_way = RollUnderWay {
            rolls: &self.rolls_under_way,
            done: &self.roll_done,
        };
        let _roll = self.roll_lock.lock().await;
        let (base, size, prepared) = {
            let mut state = self.state()?;
            if state.writer.room() >= need {
                return Ok(()); // Someone else rolled meanwhile.
            }
            let snapshot = snapshot_len(&state);
            let base = state.writer.segment_end();
            let size = self
                .config
                .segment_bytes
                .max(align_up(need + snapshot + 4096));
            let prepared = state
                .prepared
                .take()
                .filter(|s| s.base == base && s.size >= size);
            (base, size, prepared)
        };
        let segment = match prepared {
            Some(segment) => segment,
            None => self.create_segment(base, size).await?,
        };
        let mut state = self.state()?;
        assert_eq!(
            state.writer.segment_end(),
            base,
            "only roll() moves segments"
        );
        state
            .writer
            .switch_segment(segment.file.clone(), segment.base, segment.size);
        state.segments.insert(segment);
        write_snapshot(&mut state);
        tracing::info!(
            shard = self.config.shard.0,
            base,
            size,
            "rolled to a new log segment"
        );
        Ok(())
    }

    fn take_spare(&self, size: u64) -> Result<Option<Segment<D::File>>, StorageError> {
        let mut state = self.state()?;
        let found = state.spares.iter().position(|s| s.size == size);
        Ok(found.map(|i| state.spares.swap_remove(i)))
    }

    /// Renames a spare (a released segment, see `StorageConfig::recycle_segments`)
    /// to be the segment at `base`. Its old entries stay in it until
    /// overwritten; none chains to the live log, so neither recovery nor a
    /// read (which goes through the index) ever takes one.
    async fn reuse_spare(
        &self,
        spare: Segment<D::File>,
        base: u64,
        path: &std::path::Path,
    ) -> Result<Segment<D::File>, StorageError> {
        let shown = path.display().to_string();
        let named = async {
            spare
                .file
                .rename(path)
                .await
                .map_err(|e| io_error("renaming a spare segment to", &shown, e))?;
            self.disk
                .sync_dir(&self.log_dir)
                .await
                .map_err(|e| io_error("syncing directory of", &shown, e))
        };
        if let Err(error) = named.await {
            if let Err(e) = spare.file.remove().await {
                tracing::warn!(path = %shown, error = %e, "could not remove a spare segment");
            }
            let _ = close_shared(spare.file).await;
            return Err(error);
        }
        let m = &self.metrics;
        m.segments_recycled.set(m.segments_recycled.get() + 1);
        tracing::debug!(
            shard = self.config.shard.0,
            base,
            old_base = spare.base,
            "reusing a released segment"
        );
        Ok(Segment {
            base,
            size: spare.size,
            file: spare.file,
        })
    }

    /// Creates, pre-allocates and durably names a segment file.
    pub(crate) async fn create_segment(
        &self,
        base: u64,
        size: u64,
    ) -> Result<Segment<D::File>, StorageError> {
        let path = self.log_dir.join(segment_file_name(base));
        let shown = path.display().to_string();
        if let Some(spare) = self.take_spare(size)? {
            return self.reuse_spare(spare, base, &path).await;
        }
        let file = self
            .disk
            .create(&path)
            .await
            .map_err(|e| io_error("creating", &shown, e))?;
        let setup = async {
            file.pre_allocate(size)
                .await
                .map_err(|e| io_error("pre-allocating", &shown, e))?;
            self.disk
                .sync_dir(&self.log_dir)
                .await
                .map_err(|e| io_error("syncing directory of", &shown, e))
        };
        if let Err(error) = setup.await {
            if let Err(e) = file.remove().await {
                tracing::warn!(path = %shown, error = %e, "could not remove a half-created segment");
            }
            let _ = file.close().await;
            return Err(error);
        }
        Ok(Segment {
            base,
            size,
            file: Rc::new(file),
        })
    }
}

/// Copies one verified batch into the tail and indexes it.
fn copy_batch<F: DiskFile>(
    state: &mut State<F>,
    key: (u32, u32),
    batch: &[u8],
    append_time_ms: i64,
) -> (u64, u64) {
    let header = BatchHeader::parse(batch).expect("verified before copying");
    let p = state
        .partitions
        .get_mut(&key)
        .expect("looked up under this borrow");
    let base_offset = p.next_offset;
    let position = state
        .writer
        .append(batch.len(), EntryKind::Batch, key.0, key.1, |dst| {
            dst.copy_from_slice(batch);
            set_broker_fields(dst, base_offset, append_time_ms);
        });
    let length = (ENTRY_HEADER_LEN + batch.len()) as u32;
    p.index.push(
        base_offset,
        header.record_count,
        length,
        position,
        header.max_timestamp_ms,
        append_time_ms,
    );
    p.next_offset += header.record_count as u64;
    (base_offset, p.next_offset - 1)
}

pub(crate) fn snapshot_of<F: DiskFile>(state: &State<F>) -> Snapshot {
    let mut topics: Vec<_> = state.catalog.topics().cloned().collect();
    topics.sort_by_key(|t| t.id);
    let mut partitions: Vec<_> = state
        .partitions
        .values()
        .map(|p| (p.topic_id, p.partition, p.next_offset))
        .collect();
    partitions.sort_unstable();
    Snapshot {
        next_topic_id: state.catalog.next_topic_id(),
        topics,
        partitions,
    }
}

fn snapshot_len<F: DiskFile>(state: &State<F>) -> u64 {
    let mut bytes = Vec::new();
    snapshot_of(state).encode(&mut bytes);
    (ENTRY_HEADER_LEN + bytes.len()) as u64
}

/// Every segment starts with the catalog, so recovery can start from any
/// segment.
pub(crate) fn write_snapshot<F: DiskFile>(state: &mut State<F>) {
    let mut payload = Vec::new();
    snapshot_of(state).encode(&mut payload);
    assert!(
        (ENTRY_HEADER_LEN + payload.len()) as u64 <= state.writer.room(),
        "segments are sized to hold the snapshot"
    );
    state
        .writer
        .append(payload.len(), EntryKind::CatalogSnapshot, 0, 0, |dst| {
            dst.copy_from_slice(&payload)
        });
}
