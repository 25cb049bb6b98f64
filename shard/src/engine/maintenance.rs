//! Periodic work (the broker calls `maintenance` about every 100 ms):
//! interval fdatasyncs, creating the next segment ahead of the writer,
//! retention, index checkpoints. And `close`.

use super::{Engine, State};
use crate::clock::Clock;
use crate::commitlog::segments::{spare_file_name, Segment};
use crate::disk::{close_shared, Disk, DiskFile, IoBuffer};
use crate::engine::io_error;
use crate::index::checkpoint::{CheckpointEncoder, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use crate::index::segment_index::{segment_index_file_name, SegmentIndex};
use crate::index::IndexEntry;
use crate::retention::{retention_cut, PartitionView};
use crate::storage::StorageError;
use std::rc::Rc;

/// Released segment files kept for reuse, at most (each is a whole segment
/// of disk space retention would otherwise have given back).
const MAX_SPARES: usize = 2;

impl<D: Disk, C: Clock> Engine<D, C> {
    /// fdatasync for `interval` topics that are due, retention, next segment,
    /// index checkpoint.
    pub async fn maintenance(&self) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let sync_due = self.state()?.interval_due_ms.is_some_and(|due| due <= now);
        if sync_due {
            let _flush = self.flush_gate.enter().await;
            self.flush_locked(true).await?;
        }
        self.prepare_next_segment().await?;
        if !self.apply_retention(now).await? {
            let due = {
                let state = self.state()?;
                now - state.last_checkpoint_ms >= self.config.checkpoint_interval.as_millis() as i64
                    && state.writer.end() > state.checkpointed_position
            };
            if due {
                let _catalog = self.catalog_lock.lock().await;
                self.checkpoint_locked().await?;
            }
        }
        Ok(())
    }

    /// Writes an index checkpoint now (flushing and syncing first).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        let _catalog = self.catalog_lock.lock().await;
        self.checkpoint_locked().await
    }

    /// Creates the next segment once the current one is half full, so the
    /// roll itself does no file-system work.
    async fn prepare_next_segment(&self) -> Result<(), StorageError> {
        let base = {
            let state = self.state()?;
            let w = &state.writer;
            let half = (w.segment_end() - w.segment_base()) / 2;
            if state.prepared.is_some() || w.room() > half {
                return Ok(());
            }
            w.segment_end()
        };
        let _roll = self.roll_lock.lock().await;
        if self.state()?.writer.segment_end() != base {
            return Ok(());
        }
        let segment = self.create_segment(base, self.config.segment_bytes).await?;
        self.state()?.prepared = Some(segment);
        Ok(())
    }

    /// Deletes whole segments past retention. Returns whether it wrote a
    /// checkpoint.
    async fn apply_retention(&self, now: i64) -> Result<bool, StorageError> {
        let cut = {
            let state = self.state()?;
            retention_cut_of(&state, now)
        };
        let Some(cut) = cut else {
            return Ok(false);
        };
        let _catalog = self.catalog_lock.lock().await;
        {
            let mut guard = self.state()?;
            let state = &mut *guard;
            // The catalog may have changed while we waited for the lock.
            if retention_cut_of(state, now).is_none_or(|c| c < cut) {
                return Ok(false);
            }
            for p in state.partitions.values_mut() {
                let n = p.index.count_before(cut);
                p.index.drop_first(n);
                p.log_start_offset = p.index.first().map_or(p.next_offset, |e| e.base_offset);
            }
            let removed = state.segments.remove_before(cut);
            state.cache.drop_before(cut);
            self.read_ahead.borrow_mut().clear();
            tracing::info!(
                shard = self.config.shard.0,
                segments = removed.len(),
                cut,
                "retention drops old segments"
            );
            state.doomed.extend(removed);
        }
        // Checkpoint first, so recovery never needs a deleted segment.
        self.checkpoint_locked().await?;
        Ok(true)
    }

    /// Caller holds `catalog_lock`. Flushes and syncs, writes the index of
    /// every newly sealed segment, records the rest of the index as of the
    /// durable end, then deletes segments retention gave up.
    pub(crate) async fn checkpoint_locked(&self) -> Result<(), StorageError> {
        {
            let _flush = self.flush_gate.enter().await;
            self.flush_locked(true).await?;
        }
        // Sealed segments whose every entry is synced get their index file;
        // recovery trusts those files whole. A segment is not necessarily
        // all synced yet: appends may have copied its tail and rolled to
        // the next segment while the flush above ran.
        let (sealed, indexed_below) = {
            let state = self.state()?;
            let active = state.writer.segment_base();
            let durable = state.writer.durable_end();
            let sealed: Vec<SegmentIndex> = state
                .segments
                .iter()
                .filter(|s| {
                    (s.base >= state.indexed_below || state.index_missing.contains(&s.base))
                        && s.base < active
                        && s.end() <= durable
                })
                .map(|s| segment_index_of(&state, s.base, s.size))
                .collect();
            let below = sealed.last().map_or(0, |s| s.base + s.size);
            (sealed, below.max(state.indexed_below))
        };
        for index in &sealed {
            let name = segment_index_file_name(index.base);
            let tmp = self.index_dir.join(format!("{name}.tmp"));
            self.write_file_atomically(&tmp, &self.index_dir.join(&name), &index.encode())
                .await?;
        }
        let (image, position) = {
            let state = self.state()?;
            (
                checkpoint_image(&state, indexed_below),
                state.writer.durable_end(),
            )
        };
        let tmp = self.index_dir.join(CHECKPOINT_TMP_FILE);
        let path = self.index_dir.join(CHECKPOINT_FILE);
        self.write_file_atomically(&tmp, &path, &image).await?;
        let doomed = {
            let mut state = self.state()?;
            state.last_checkpoint_ms = self.clock.now_ms();
            state.checkpointed_position = position;
            state.indexed_below = indexed_below;
            state
                .index_missing
                .retain(|base| !sealed.iter().any(|index| index.base == *base));
            std::mem::take(&mut state.doomed)
        };
        if !doomed.is_empty() {
            self.delete_segments(doomed).await?;
        }
        Ok(())
    }

    /// tmp file, fdatasync, rename, directory sync: a crash leaves the old
    /// file or the new one.
    async fn write_file_atomically(
        &self,
        tmp: &std::path::Path,
        path: &std::path::Path,
        image: &[u8],
    ) -> Result<(), StorageError> {
        let shown = path.display().to_string();
        let file = self
            .disk
            .create(tmp)
            .await
            .map_err(|e| io_error("creating", &shown, e))?;
        let written = async {
            let mut buffer = file.alloc_buffer(image.len());
            buffer.as_bytes_mut().copy_from_slice(image);
            let n = file
                .write_at(Rc::new(buffer), 0)
                .await
                .map_err(|e| io_error("writing", &shown, e))?;
            if n != image.len() {
                let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                return Err(io_error("writing", &shown, e));
            }
            file.sync()
                .await
                .map_err(|e| io_error("syncing", &shown, e))?;
            file.rename(path)
                .await
                .map_err(|e| io_error("renaming", &shown, e))
        }
        .await;
        let closed = file.close().await;
        written?;
        closed.map_err(|e| io_error("closing", &shown, e))?;
        let dir = path.parent().unwrap_or(&self.index_dir);
        self.disk
            .sync_dir(dir)
            .await
            .map_err(|e| io_error("syncing directory of", &shown, e))
    }

    async fn delete_segments(&self, segments: Vec<Segment<D::File>>) -> Result<(), StorageError> {
        for segment in segments {
            if self.wants_spare(&segment)? {
                self.keep_as_spare(segment).await?;
                continue;
            }
            let path = self.segment_path(segment.base);
            segment
                .file
                .remove()
                .await
                .map_err(|e| io_error("removing", &path, e))?;
            close_shared(segment.file)
                .await
                .map_err(|e| io_error("closing", &path, e))?;
            remove_if_present(
                &self.disk,
                &self.index_dir.join(segment_index_file_name(segment.base)),
            )
            .await?;
        }
        for dir in [&self.log_dir, &self.index_dir] {
            let shown = dir.display().to_string();
            self.disk
                .sync_dir(dir)
                .await
                .map_err(|e| io_error("syncing directory", &shown, e))?;
        }
        Ok(())
    }

    /// Whether a segment retention released should be kept for reuse.
    fn wants_spare(&self, segment: &Segment<D::File>) -> Result<bool, StorageError> {
        Ok(self.config.recycle_segments
            && segment.size == self.config.segment_bytes
            && self.state()?.spares.len() < MAX_SPARES)
    }

    /// Renames a released segment to `<base>.spare` and drops its index
    /// file; `create_segment` renames it to its new name when needed. (The
    /// directory sync after the loop in `delete_segments` makes it durable;
    /// a crash leaves either name, and recovery deletes both kinds.)
    async fn keep_as_spare(&self, segment: Segment<D::File>) -> Result<(), StorageError> {
        let path = self.segment_path(segment.base);
        let spare = self.log_dir.join(spare_file_name(segment.base));
        segment
            .file
            .rename(&spare)
            .await
            .map_err(|e| io_error("renaming", &path, e))?;
        remove_if_present(
            &self.disk,
            &self.index_dir.join(segment_index_file_name(segment.base)),
        )
        .await?;
        self.state()?.spares.push(segment);
        Ok(())
    }

    /// Flushes and syncs everything, writes a checkpoint, closes files.
    /// Later calls fail with `Closed`; a second close is a no-op.
    pub async fn close(&self) -> Result<(), StorageError> {
        let _catalog = self.catalog_lock.lock().await;
        if self.state().is_err() {
            return Ok(());
        }
        self.checkpoint_locked().await?;
        let _roll = self.roll_lock.lock().await;
        let _flush = self.flush_gate.enter().await;
        self.flush_locked(true).await?;
        // Reads ahead hold segment files: drop them before closing the files.
        self.read_ahead.borrow_mut().clear();
        let Some(state) = self.state.borrow_mut().take() else {
            return Ok(());
        };
        self.closed_durable_end.set(state.writer.durable_end());
        let State {
            segments,
            writer,
            cache,
            dirty_files,
            prepared,
            doomed,
            spares,
            ..
        } = state;
        drop((writer, cache, dirty_files));
        let files = segments
            .iter()
            .cloned()
            .chain(prepared)
            .chain(doomed)
            .chain(spares)
            .collect::<Vec<_>>();
        drop(segments);
        for segment in files {
            let path = self.segment_path(segment.base);
            close_shared(segment.file)
                .await
                .map_err(|e| io_error("closing", &path, e))?;
        }
        self.appended.notify(usize::MAX);
        tracing::info!(shard = self.config.shard.0, "storage closed");
        Ok(())
    }
}

fn retention_cut_of<F: DiskFile>(state: &State<F>, now: i64) -> Option<u64> {
    // Never the segment being written, nor data still waiting for its write
    // (the checkpoint before the deletion syncs what is written).
    let limit = state.writer.segment_base().min(state.writer.written_end());
    let ends: Vec<u64> = state
        .segments
        .iter()
        .filter(|s| s.end() <= limit)
        .map(|s| s.end())
        .collect();
    if ends.is_empty() {
        return None;
    }
    let views: Vec<PartitionView<'_>> = state
        .partitions
        .values()
        .map(|p| {
            let topic = state.catalog.by_id(p.topic_id).map(|t| &t.config);
            PartitionView {
                index: &p.index,
                retention_ms: topic.and_then(|t| t.retention_ms),
                retention_bytes: topic.and_then(|t| t.retention_bytes),
            }
        })
        .collect();
    retention_cut(&ends, &views, now)
}

/// The batches of one sealed segment, from the in-memory index.
fn segment_index_of<F: DiskFile>(state: &State<F>, base: u64, size: u64) -> SegmentIndex {
    let mut keys: Vec<_> = state.partitions.keys().copied().collect();
    keys.sort_unstable();
    let partitions = keys
        .into_iter()
        .filter_map(|key| {
            let entries: Vec<IndexEntry> = state.partitions[&key]
                .index
                .between(base, base + size)
                .copied()
                .collect();
            (!entries.is_empty()).then_some((key.0, key.1, entries))
        })
        .collect();
    SegmentIndex {
        base,
        size,
        partitions,
    }
}

/// Removes a file if it exists (used for index files, which may not).
pub(crate) async fn remove_if_present<D: Disk>(
    disk: &D,
    path: &std::path::Path,
) -> Result<(), StorageError> {
    let shown = path.display().to_string();
    match disk.open(path).await {
        Ok(file) => {
            let removed = file.remove().await;
            let _ = file.close().await;
            removed.map_err(|e| io_error("removing", &shown, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("opening", &shown, e)),
    }
}

/// The checkpoint image as of the durable end; batches before
/// `indexed_below` live in segment index files instead.
fn checkpoint_image<F: DiskFile>(state: &State<F>, indexed_below: u64) -> Vec<u8> {
    let position = state.writer.durable_end();
    let first_segment_base = state.segments.first().map_or(0, |s| s.base);
    let mut e = CheckpointEncoder::new(
        position,
        state.writer.durable_chain(),
        first_segment_base,
        indexed_below,
        state.catalog.next_topic_id(),
    );
    let mut topics: Vec<_> = state.catalog.topics().collect();
    topics.sort_by_key(|t| t.id);
    e.topics(topics.into_iter());
    let mut keys: Vec<_> = state.partitions.keys().copied().collect();
    keys.sort_unstable();
    e.partition_count(keys.len());
    for key in keys {
        let p = &state.partitions[&key];
        let covered = p.index.visible_len(position);
        let next_offset = p
            .index
            .get(covered)
            .map_or(p.next_offset, |e| e.base_offset);
        let from = p.index.count_before(indexed_below).min(covered);
        e.partition(
            p.topic_id,
            p.partition,
            p.log_start_offset,
            next_offset,
            p.index.iter().skip(from).take(covered - from),
        );
    }
    e.finish()
}
