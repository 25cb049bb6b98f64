//! One flush: write every pending chunk (one aligned write each), then
//! fdatasync the touched segment files if any pending append needs it.
//! Only the holder of the flush gate's permit runs this.
//!
//! A failed fdatasync (or one whose flush was dropped before it returned,
//! its error lost) fails every append waiting for it and queues all
//! chunks written since the last good sync to be written again: Linux may
//! have dropped them and reports that only once, so the next sync alone
//! would mark lost bytes durable ("fsyncgate").
//!
//! Cancel safety: the caller's future may be dropped at any await (a client
//! goes away). Chunks taken for writing are handed back by [`InFlight`]'s
//! drop unless the write completed, and files stay in the dirty list until a
//! sync of them succeeds, so a cancelled flush loses nothing and the next
//! one redoes it.

use super::{Engine, Failure};
use crate::clock::Clock;
use crate::commitlog::writer::{SealedChunk, MAX_UNSYNCED_BYTES};
use crate::disk::{Disk, DiskFile, IoBuffer};
use crate::storage::StorageError;
use std::io;
use std::time::Instant;

fn overlap<F: DiskFile>(a: &SealedChunk<F>, b: &SealedChunk<F>) -> bool {
    a.segment_base == b.segment_base && b.start < a.start + a.data.as_bytes().len() as u64
}

/// Chunks being written; returned to the writer if not written.
struct InFlight<'a, D: Disk, C: Clock> {
    engine: &'a Engine<D, C>,
    chunks: Option<Vec<SealedChunk<D::File>>>,
}

impl<D: Disk, C: Clock> Drop for InFlight<'_, D, C> {
    fn drop(&mut self) {
        if let Some(chunks) = self.chunks.take() {
            if let Ok(mut state) = self.engine.state() {
                state.writer.restore(chunks);
            }
        }
    }
}

/// Syncs under way: if they do not all succeed (one fails, or the flush is
/// dropped before it learns how they went, losing any error with it), every
/// chunk written since the last good sync is queued to be written again.
struct SyncsInFlight<'a, D: Disk, C: Clock> {
    engine: &'a Engine<D, C>,
    succeeded: bool,
}

impl<D: Disk, C: Clock> Drop for SyncsInFlight<'_, D, C> {
    fn drop(&mut self) {
        if !self.succeeded {
            if let Ok(mut state) = self.engine.state() {
                state.writer.sync_failed();
            }
        }
    }
}

impl<D: Disk, C: Clock> Engine<D, C> {
    /// Writes everything pending; syncs if `force_sync` or an append needs
    /// it. On failure nothing moves: the chunks go back to be retried and
    /// the failure is recorded for the appends it covered.
    pub(crate) async fn flush_locked(&self, force_sync: bool) -> Result<(), StorageError> {
        let (chunks, target_end, target_chain, want_sync, attempt) = {
            let mut state = self.state()?;
            let durable = state.writer.durable_end();
            let bounded = state.writer.unsynced_bytes() >= MAX_UNSYNCED_BYTES;
            let want_sync = (force_sync || bounded || state.sync_needed_end > durable)
                && durable < state.writer.end();
            if !state.writer.has_unwritten() && !want_sync {
                return Ok(());
            }
            state.flush_attempts += 1;
            let pending = state.writer.take_pending();
            (
                pending.chunks,
                pending.target_end,
                pending.target_chain,
                want_sync,
                state.flush_attempts,
            )
        };
        let mut in_flight = InFlight {
            engine: self,
            chunks: Some(chunks),
        };
        let mut bytes = 0u64;
        let write_started = Instant::now();
        let taken = in_flight.chunks.as_deref().unwrap_or_default();
        let mut from = 0;
        while from < taken.len() {
            // Chunks of one flush do not overlap and go out together; only a
            // retried chunk overlaps the next one and must land first.
            let mut to = from + 1;
            while to < taken.len() && !overlap(&taken[to - 1], &taken[to]) {
                to += 1;
            }
            let writes = taken[from..to].iter().map(|chunk| self.write_chunk(chunk));
            for result in futures::future::join_all(writes).await {
                if let Err((op, path, error)) = result {
                    drop(in_flight); // back to the writer, to be retried
                    let mut state = self.state()?;
                    return Err(self.record_failure(&mut state.failure, attempt, op, path, error));
                }
            }
            bytes += taken[from..to]
                .iter()
                .map(|c| c.data.as_bytes().len() as u64)
                .sum::<u64>();
            from = to;
        }
        let chunks = in_flight.chunks.take().expect("still held");
        {
            let mut guard = self.state()?;
            let state = &mut *guard;
            state.writer.mark_written(target_end, &chunks);
            for chunk in chunks {
                if !state
                    .dirty_files
                    .iter()
                    .any(|(base, _)| *base == chunk.segment_base)
                {
                    state
                        .dirty_files
                        .push((chunk.segment_base, chunk.file.clone()));
                }
                if !chunk.cached {
                    state
                        .cache
                        .insert(chunk.start, chunk.len, chunk.cost, chunk.data);
                }
            }
            if !want_sync {
                state.failure = None;
            }
        }
        let m = &self.metrics;
        m.flushes.set(m.flushes.get() + 1);
        m.flush_bytes.set(m.flush_bytes.get() + bytes);
        if bytes > 0 {
            let micros = write_started.elapsed().as_micros() as u64;
            let _ = m.write_us.borrow_mut().record(micros.max(1));
            let _ = m.flush_size.borrow_mut().record(bytes);
        }
        self.appended.notify(usize::MAX);
        if !want_sync {
            return Ok(());
        }
        // Clones: a file leaves the dirty list only once a sync of it worked.
        let files = self.state()?.dirty_files.clone();
        let mut syncs = SyncsInFlight {
            engine: self,
            succeeded: false,
        };
        for (base, file) in &files {
            let started = Instant::now();
            let synced = file.sync().await;
            let micros = started.elapsed().as_micros() as u64;
            let _ = self.metrics.fsync_us.borrow_mut().record(micros.max(1));
            if let Err(error) = synced {
                // The failed sync may have dropped what it covered: rewrite
                // all of it before any later sync may succeed.
                drop(syncs);
                let mut state = self.state()?;
                let path = self.segment_path(*base);
                return Err(self.record_failure(
                    &mut state.failure,
                    attempt,
                    "syncing",
                    path,
                    error,
                ));
            }
        }
        syncs.succeeded = true;
        drop(syncs);
        {
            let mut state = self.state()?;
            // Only the permit holder writes, so nothing was dirtied meanwhile.
            state.dirty_files.clear();
            state.writer.mark_durable(target_end, target_chain);
            if state.writer.durable_end() >= state.interval_needed_end {
                state.interval_due_ms = None;
            }
            state.failure = None;
        }
        self.appended.notify(usize::MAX);
        Ok(())
    }

    async fn write_chunk(
        &self,
        chunk: &SealedChunk<D::File>,
    ) -> Result<(), (&'static str, String, io::Error)> {
        let data = chunk.data.as_bytes();
        // Pair assertion: the padding the sealer zeroed is still zero.
        assert!(
            data[chunk.len..].iter().all(|b| *b == 0),
            "write padding is not zero"
        );
        let expected = data.len();
        let written = chunk
            .file
            .write_at(chunk.data.clone(), chunk.file_position())
            .await
            .map_err(|e| ("writing", self.segment_path(chunk.segment_base), e))?;
        if written != expected {
            let error = io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {expected} bytes"),
            );
            return Err(("writing", self.segment_path(chunk.segment_base), error));
        }
        Ok(())
    }

    fn record_failure(
        &self,
        slot: &mut Option<Failure>,
        attempt: u64,
        op: &'static str,
        path: String,
        error: io::Error,
    ) -> StorageError {
        tracing::error!(shard = self.config.shard.0, op, path = %path, %error, "log flush failed; appends not acknowledged");
        let failure = Failure {
            attempt,
            op,
            path,
            raw_os_error: error.raw_os_error(),
            kind: error.kind(),
            message: error.to_string(),
        };
        let result = failure.to_error();
        *slot = Some(failure);
        result
    }

    pub(crate) fn segment_path(&self, base: u64) -> String {
        self.log_dir
            .join(crate::commitlog::segments::segment_file_name(base))
            .display()
            .to_string()
    }
}
