//! Start-up: from the files on disk back to a consistent in-memory state.
//!
//! 1. List `log/*.seg`; load `index/checkpoint` if it verifies and matches
//!    the segments (else scan from the first segment, whose leading catalog
//!    snapshot seeds the state).
//! 2. Delete segments that end at or before the checkpoint's first segment
//!    (retention had dropped them).
//! 3. Scan forward from the checkpoint position: each entry must parse (magic,
//!    length, header CRC, batch CRC) and chain to the previous one; batches
//!    must continue their partition's offsets. The first entry that fails is
//!    the end of the log (a torn tail); at a segment's end the scan goes on
//!    only if the next segment's first entry chains.
//!    (Spare segments, `*.spare`, are deleted: see `StorageConfig::recycle_segments`.)
//! 4. Delete segments after the end; the writer resumes at the block
//!    boundary after the end (a written block is never rewritten); fdatasync
//!    what was scanned so recovered data is durable.

mod damage;
mod scan;

use crate::catalog::{decode_create, Catalog, Snapshot};
use crate::clock::Clock;
use crate::codec::align_down;
use crate::commitlog::cache::ReadCache;
use crate::commitlog::entry::{
    batch_header, EntryHeader, EntryKind, CHAIN_START, ENTRY_HEADER_LEN,
};
use crate::commitlog::segments::{
    parse_segment_file_name, segment_file_name, Segment, Segments, SPARE_SUFFIX,
};
use crate::commitlog::writer::Writer;
use crate::disk::{close_shared, Disk, DiskFile};
use crate::engine::{add_topic, io_error, remove_topic, PartitionState, State};
use crate::index::checkpoint::{Checkpoint, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use crate::index::segment_index::{
    parse_segment_index_file_name, segment_index_file_name, SegmentIndex,
};
use crate::storage::StorageError;
use crate::StorageConfig;
use scan::{scan_segment, ScanEnd};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

/// What the scan rebuilds.
struct Tables {
    catalog: Catalog,
    partitions: HashMap<(u32, u32), PartitionState>,
    /// No checkpoint: the first snapshot entry seeds the state.
    from_scratch: bool,
    applied: u64,
    /// After damage the log resumes past: a partition's next batch may
    /// start beyond its next offset (those offsets are lost, never reused).
    allow_gaps: bool,
    /// (topic id, partition, first lost offset, first offset after them).
    gaps: Vec<(u32, u32, u64, u64)>,
    /// (log position, append time) of the newest batch applied.
    newest_batch: Option<(u64, i64)>,
}

impl Tables {
    /// A topic's name for messages (`#<id>` once it is gone).
    fn topic_name(&self, topic_id: u32) -> String {
        self.catalog
            .by_id(topic_id)
            .map_or_else(|| format!("#{topic_id}"), |t| t.config.name.clone())
    }

    /// Applies one verified entry. `Err` means "the log ends before it".
    fn apply(
        &mut self,
        header: &EntryHeader,
        entry: &[u8],
        position: u64,
        config: &StorageConfig,
    ) -> Result<(), &'static str> {
        let payload = &entry[ENTRY_HEADER_LEN..];
        match header.kind {
            EntryKind::Batch => {
                let batch = batch_header(entry);
                if let Some(p) = self
                    .partitions
                    .get_mut(&(header.topic_id, header.partition))
                {
                    if batch.base_offset != p.next_offset {
                        if !(self.allow_gaps && batch.base_offset > p.next_offset) {
                            return Err("batch does not continue its partition's offsets");
                        }
                        self.gaps.push((
                            header.topic_id,
                            header.partition,
                            p.next_offset,
                            batch.base_offset,
                        ));
                    }
                    p.index.push(
                        batch.base_offset,
                        batch.record_count,
                        header.length,
                        position,
                        batch.max_timestamp_ms,
                        batch.append_time_ms,
                    );
                    p.next_offset = batch.next_offset();
                    self.newest_batch = Some((position, batch.append_time_ms));
                }
            }
            EntryKind::CreateTopic => {
                let record = decode_create(payload).ok_or("unreadable create-topic entry")?;
                if record.id != header.topic_id {
                    return Err("create-topic entry with mismatched id");
                }
                add_topic(&mut self.catalog, &mut self.partitions, record, config);
            }
            EntryKind::DeleteTopic => {
                remove_topic(&mut self.catalog, &mut self.partitions, header.topic_id);
            }
            EntryKind::CatalogSnapshot => {
                let snapshot = Snapshot::decode(payload).ok_or("unreadable catalog snapshot")?;
                if self.from_scratch && self.applied == 0 {
                    for record in snapshot.topics {
                        add_topic(&mut self.catalog, &mut self.partitions, record, config);
                    }
                    for (topic_id, partition, next) in snapshot.partitions {
                        if let Some(p) = self.partitions.get_mut(&(topic_id, partition)) {
                            p.next_offset = next;
                            p.log_start_offset = next;
                        }
                    }
                    self.catalog.set_next_topic_id(snapshot.next_topic_id);
                }
            }
        }
        self.applied += 1;
        Ok(())
    }
}

pub(crate) async fn recover<D: Disk, C: Clock>(
    disk: &D,
    clock: &C,
    config: &StorageConfig,
    log_dir: &Path,
    index_dir: &Path,
) -> Result<State<D::File>, StorageError> {
    let shown = |p: &Path| p.display().to_string();
    for dir in [log_dir, index_dir] {
        disk.create_dir_all(dir)
            .await
            .map_err(|e| io_error("creating", &shown(dir), e))?;
    }
    let mut segments = open_segments(disk, log_dir).await?;
    let checkpoint = load_checkpoint(disk, index_dir).await?;

    let mut tables = Tables {
        catalog: Catalog::new(),
        partitions: HashMap::new(),
        from_scratch: true,
        applied: 0,
        allow_gaps: false,
        gaps: Vec::new(),
        newest_batch: None,
    };
    let quarantine_dir = log_dir
        .parent()
        .map_or_else(|| log_dir.join("quarantine"), |d| d.join("quarantine"));
    let quarantined = damage::load_quarantined(disk, &quarantine_dir).await?;
    let mut damaged: Vec<Damaged> = Vec::new();
    // Sealed segments whose `.idx` had to be rebuilt (written back later).
    let mut index_missing = Vec::new();
    // Where the scan starts, and the chain value expected there (None: any).
    let mut start = segments.first().map_or(0, |s| s.base);
    let mut chain = None;
    let mut checkpointed_position = 0;
    let mut indexed_below = start;
    if let Some(cp) = checkpoint.filter(|cp| checkpoint_fits(cp, &segments)) {
        let (stale, live): (Vec<_>, Vec<_>) = segments
            .into_iter()
            .partition(|s| s.end() <= cp.first_segment_base);
        segments = live;
        delete_segments(disk, log_dir, stale).await?;
        let oldest = segments.first().map_or(cp.position, |s| s.base);
        for record in cp.topics {
            tables.catalog.insert(record);
        }
        tables.catalog.set_next_topic_id(cp.next_topic_id);
        let mut recent = HashMap::new();
        for pc in cp.partitions {
            let Some(record) = tables.catalog.by_id(pc.topic_id) else {
                continue;
            };
            let mut p = PartitionState::new(
                pc.topic_id,
                pc.partition,
                record.config.durability,
                pc.next_offset,
            );
            p.log_start_offset = pc.log_start_offset;
            tables.partitions.insert((pc.topic_id, pc.partition), p);
            recent.insert((pc.topic_id, pc.partition), pc.entries);
        }
        // Sealed segments first (their index files), then the checkpoint's
        // own entries: log order.
        for segment in segments.iter().filter(|s| s.base < cp.indexed_below) {
            let groups = match load_segment_index(disk, index_dir, segment).await? {
                Some(index) => index.partitions,
                None => {
                    tracing::warn!(
                        shard = config.shard.0,
                        segment = segment.base,
                        "segment index missing or invalid; rebuilding it from the segment"
                    );
                    index_missing.push(segment.base);
                    scan::index_segment(segment, &quarantined).await?
                }
            };
            for (topic_id, partition, entries) in groups {
                if let Some(p) = tables.partitions.get_mut(&(topic_id, partition)) {
                    restore_entries(p, entries);
                }
            }
        }
        for (key, entries) in recent {
            if let Some(p) = tables.partitions.get_mut(&key) {
                let entries = entries.into_iter().filter(|e| e.position >= oldest);
                restore_entries(p, entries.collect());
            }
        }
        for p in tables.partitions.values_mut() {
            if let Some(first) = p.index.first() {
                p.log_start_offset = p.log_start_offset.max(first.base_offset);
            } else {
                p.log_start_offset = p.next_offset;
            }
        }
        indexed_below = cp.indexed_below;
        tables.from_scratch = false;
        start = cp.position;
        chain = Some(cp.chain);
        checkpointed_position = cp.position;
    } else if !segments.is_empty() {
        // Normal after a crash before the first checkpoint; a corrupt or
        // mismatched checkpoint was reported as an error above.
        tracing::info!(
            shard = config.shard.0,
            "no usable index checkpoint; scanning the whole log"
        );
    }

    // Scan.
    let mut end_index = None;
    let mut end = start;
    if let Some(mut i) = segments
        .iter()
        .position(|s| s.base <= start && start <= s.end())
    {
        let mut position = start;
        loop {
            let segment = &segments[i];
            let outcome = scan_segment(segment, position, &mut chain, &mut tables, config).await?;
            end = outcome.end;
            end_index = Some(i);
            // The log goes on in the next segment if its first entry chains
            // (a segment's unused end may hold zeros, or stale bytes of its
            // previous life, after the writer rolled). With no chain yet,
            // any first entry would "chain": then only after a clean end,
            // so a damaged first snapshot cannot skip its segment unreported.
            let continues = chain.is_some() || matches!(outcome.reason, ScanEnd::Clean);
            let next_chains = match segments.get(i + 1) {
                Some(next) if continues => scan::first_entry_chains(next, chain).await?,
                _ => false,
            };
            if next_chains {
                i += 1;
                position = segments[i].base;
                continue;
            }
            if let ScanEnd::Torn(reason) = outcome.reason {
                // Damage an earlier repair quarantined, or damage that later
                // data proves had been synced (recovery/damage.rs).
                // (resume, whether this start found the damage: only new
                // damage is quarantined; recorded damage is skipped).
                let (resume, found_now) = match quarantined.iter().find(|q| q.from == end) {
                    Some(q) => (
                        segments
                            .iter()
                            .position(|s| s.base <= q.to && q.to < s.end())
                            .map(|segment| damage::Resume {
                                segment,
                                position: q.to,
                            }),
                        false,
                    ),
                    None => {
                        let max_entry = config.max_batch_bytes as u64 + ENTRY_HEADER_LEN as u64;
                        // Without a checkpoint the first segment's leading
                        // snapshot seeds everything: if it is damaged while
                        // later segments exist, nothing can tell live from
                        // stale, and truncating here would delete every
                        // segment. Treat it as damage; a repair resumes at
                        // the next segment's snapshot.
                        let unseeded = tables.from_scratch
                            && tables.applied == 0
                            && end == segment.base
                            && i + 1 < segments.len();
                        let found = if unseeded {
                            Some(damage::Resume {
                                segment: i + 1,
                                position: segments[i + 1].base,
                            })
                        } else {
                            damage::find_resume(&segments, i, end, &tables, max_entry).await?
                        };
                        if let Some(resume) = found {
                            damaged.push(Damaged {
                                file: shown(&log_dir.join(segment_file_name(segment.base))),
                                segment_base: segment.base,
                                position: end,
                                resume: resume.position,
                                reason,
                            });
                        }
                        (found, true)
                    }
                };
                if let Some(resume) = resume {
                    if config.repair_corruption && found_now {
                        let range = damage::Quarantined {
                            from: end,
                            to: resume.position,
                        };
                        let kept =
                            damage::quarantine(disk, &quarantine_dir, segment, range).await?;
                        tracing::error!(
                            shard = config.shard.0,
                            from = end,
                            to = resume.position,
                            copy = %kept.display(),
                            reason,
                            "damaged log range quarantined; the log resumes after it"
                        );
                    }
                    i = resume.segment;
                    position = resume.position;
                    chain = None;
                    tables.allow_gaps = true;
                    continue;
                }
                tracing::warn!(
                    shard = config.shard.0,
                    segment = segment.base,
                    position = end,
                    reason,
                    "log ends in a torn or invalid entry; truncating there"
                );
            }
            break;
        }
    }
    for &(topic_id, partition, from, to) in &tables.gaps {
        let topic = tables.topic_name(topic_id);
        tracing::error!(
            shard = config.shard.0,
            topic = %topic,
            partition,
            lost_first = from,
            lost_last = to - 1,
            "offsets lost to damaged log data; readers skip to the next readable offset"
        );
    }
    if !damaged.is_empty() && !config.repair_corruption {
        return Err(corruption_error(config, &damaged, &tables));
    }

    // Drop what follows the end, or start a fresh log.
    let tail_segment = match end_index {
        Some(i) => {
            let after = segments.split_off(i + 1);
            delete_segments(disk, log_dir, after).await?;
            segments.pop().expect("the end segment")
        }
        None => {
            delete_segments(disk, log_dir, std::mem::take(&mut segments)).await?;
            end = 0;
            chain = None;
            create_first_segment(disk, log_dir, config).await?
        }
    };
    // A segment without a valid entry starts, like every segment, with the catalog.
    let fresh = end == tail_segment.base;
    for s in segments.iter().chain(std::iter::once(&tail_segment)) {
        if s.end() > checkpointed_position {
            s.file.sync().await.map_err(|e| {
                io_error(
                    "syncing",
                    &shown(&log_dir.join(segment_file_name(s.base))),
                    e,
                )
            })?;
        }
    }
    let writer = Writer::new(
        tail_segment.file.clone(),
        tail_segment.base,
        tail_segment.end(),
        end,
        chain.unwrap_or(CHAIN_START),
    );
    let tail_base = tail_segment.base;
    remove_stale_index_files(disk, index_dir, &segments, tail_base).await?;
    let mut all = Segments::default();
    for s in segments {
        all.insert(s);
    }
    all.insert(tail_segment);
    let batches: usize = tables.partitions.values().map(|p| p.index.len()).sum();
    tracing::info!(
        shard = config.shard.0,
        segments = all.len(),
        topics = tables.catalog.topics().count(),
        partitions = tables.partitions.len(),
        batches,
        end,
        "storage recovered"
    );
    let mut state = State {
        catalog: tables.catalog,
        partitions: tables.partitions,
        segments: all,
        writer,
        cache: ReadCache::new(config.read_cache_bytes),
        dirty_files: Vec::new(),
        sync_needed_end: end,
        interval_needed_end: 0,
        interval_due_ms: None,
        flush_attempts: 0,
        failure: None,
        last_checkpoint_ms: clock.now_ms(),
        checkpointed_position,
        prepared: None,
        doomed: Vec::new(),
        spares: Vec::new(),
        indexed_below: indexed_below.min(tail_base),
        index_missing,
    };
    if fresh {
        crate::engine::write_snapshot(&mut state);
    }
    Ok(state)
}

/// Appends checkpointed entries to a partition's index; entries retention
/// already dropped are skipped, and a gap (which only corruption could
/// cause) makes the older entries unreadable rather than wrong.
fn restore_entries(p: &mut PartitionState, entries: Vec<crate::index::IndexEntry>) {
    for entry in entries {
        if entry.base_offset < p.log_start_offset {
            continue;
        }
        if let Some(last) = p.index.last() {
            // A gap (offsets skipped after quarantined damage) is kept.
            if last.next_offset() > entry.base_offset || last.end() > entry.position {
                tracing::error!(
                    topic_id = p.topic_id,
                    partition = p.partition,
                    offset = entry.base_offset,
                    "index files disagree; older batches of the partition become unreadable"
                );
                p.index = crate::index::PartitionIndex::new();
                p.log_start_offset = entry.base_offset;
            }
        }
        p.index.push_restored(entry);
    }
}

/// The index file of a sealed segment, if present and sound.
async fn load_segment_index<D: Disk>(
    disk: &D,
    index_dir: &Path,
    segment: &Segment<D::File>,
) -> Result<Option<SegmentIndex>, StorageError> {
    let path = index_dir.join(segment_index_file_name(segment.base));
    let shown = path.display().to_string();
    let file = match disk.open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("opening", &shown, e)),
    };
    let image = async {
        let size = file.size().await?;
        let bytes = file
            .read_at(0, crate::codec::align_up(size) as usize)
            .await?;
        Ok::<Vec<u8>, std::io::Error>(bytes.to_vec())
    }
    .await;
    let _ = file.close().await;
    let image = image.map_err(|e| io_error("reading", &shown, e))?;
    Ok(SegmentIndex::decode(&image).filter(|i| i.base == segment.base && i.size <= segment.size))
}

/// Removes temporary files and index files of segments that are gone or
/// not yet sealed (a later checkpoint writes those again).
async fn remove_stale_index_files<D: Disk>(
    disk: &D,
    index_dir: &Path,
    sealed: &[Segment<D::File>],
    active_base: u64,
) -> Result<(), StorageError> {
    let shown = index_dir.display().to_string();
    let names = disk
        .list_dir(index_dir)
        .await
        .map_err(|e| io_error("listing", &shown, e))?;
    for name in names {
        let stale = match parse_segment_index_file_name(&name) {
            Some(base) => base >= active_base || !sealed.iter().any(|s| s.base == base),
            None => name.ends_with(".tmp"),
        };
        if stale {
            crate::engine::remove_if_present(disk, &index_dir.join(&name)).await?;
        }
    }
    Ok(())
}

/// A checkpoint is usable if its position lies in (or at the end of) a
/// segment it does not consider deleted.
fn checkpoint_fits<F>(cp: &Checkpoint, segments: &[Segment<F>]) -> bool {
    let fits = segments.iter().any(|s| {
        s.base <= cp.position && cp.position <= s.end() && s.end() > cp.first_segment_base
    });
    if !fits {
        tracing::error!(
            position = cp.position,
            "index checkpoint does not match the log segments; ignoring it"
        );
    }
    fits
}

async fn open_segments<D: Disk>(
    disk: &D,
    log_dir: &Path,
) -> Result<Vec<Segment<D::File>>, StorageError> {
    let shown = log_dir.display().to_string();
    let names = disk
        .list_dir(log_dir)
        .await
        .map_err(|e| io_error("listing", &shown, e))?;
    // Spare segments (released by retention, kept for reuse) belong to the
    // engine that kept them; a restarted one starts without.
    for name in names.iter().filter(|n| n.ends_with(SPARE_SUFFIX)) {
        crate::engine::remove_if_present(disk, &log_dir.join(name)).await?;
    }
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    bases.sort_unstable();
    let mut segments: Vec<Segment<D::File>> = Vec::with_capacity(bases.len());
    for base in bases {
        let path = log_dir.join(segment_file_name(base));
        let shown = path.display().to_string();
        let file = disk
            .open(&path)
            .await
            .map_err(|e| io_error("opening", &shown, e))?;
        let size = align_down(
            file.size()
                .await
                .map_err(|e| io_error("sizing", &shown, e))?,
        );
        if let Some(last) = segments.last() {
            if last.end() > base {
                // Overlap: only a bug could do this. Keep the older one.
                tracing::error!(path = %shown, "segment overlaps its predecessor; ignoring it");
                let _ = file.close().await;
                continue;
            }
        }
        segments.push(Segment {
            base,
            size,
            file: Rc::new(file),
        });
    }
    Ok(segments)
}

async fn load_checkpoint<D: Disk>(
    disk: &D,
    index_dir: &Path,
) -> Result<Option<Checkpoint>, StorageError> {
    let shown = index_dir.display().to_string();
    let names = disk
        .list_dir(index_dir)
        .await
        .map_err(|e| io_error("listing", &shown, e))?;
    if names.iter().any(|n| n == CHECKPOINT_TMP_FILE) {
        let tmp = index_dir.join(CHECKPOINT_TMP_FILE);
        if let Ok(file) = disk.open(&tmp).await {
            let _ = file.remove().await;
            let _ = file.close().await;
        }
    }
    if !names.iter().any(|n| n == CHECKPOINT_FILE) {
        return Ok(None);
    }
    let path = index_dir.join(CHECKPOINT_FILE);
    let shown = path.display().to_string();
    let file = disk
        .open(&path)
        .await
        .map_err(|e| io_error("opening", &shown, e))?;
    let image = async {
        let size = file.size().await?;
        let bytes = file
            .read_at(0, crate::codec::align_up(size) as usize)
            .await?;
        Ok::<Vec<u8>, std::io::Error>(bytes.to_vec())
    }
    .await;
    let _ = file.close().await;
    let image = image.map_err(|e| io_error("reading", &shown, e))?;
    let checkpoint = Checkpoint::decode(&image);
    if checkpoint.is_none() {
        tracing::error!(path = %shown, "index checkpoint fails verification; ignoring it");
    }
    Ok(checkpoint)
}

async fn delete_segments<D: Disk>(
    disk: &D,
    log_dir: &Path,
    segments: Vec<Segment<D::File>>,
) -> Result<(), StorageError> {
    if segments.is_empty() {
        return Ok(());
    }
    for segment in segments {
        let shown = log_dir
            .join(segment_file_name(segment.base))
            .display()
            .to_string();
        segment
            .file
            .remove()
            .await
            .map_err(|e| io_error("removing", &shown, e))?;
        close_shared(segment.file)
            .await
            .map_err(|e| io_error("closing", &shown, e))?;
    }
    let shown = log_dir.display().to_string();
    disk.sync_dir(log_dir)
        .await
        .map_err(|e| io_error("syncing directory", &shown, e))
}

async fn create_first_segment<D: Disk>(
    disk: &D,
    log_dir: &Path,
    config: &StorageConfig,
) -> Result<Segment<D::File>, StorageError> {
    let path = log_dir.join(segment_file_name(0));
    let shown = path.display().to_string();
    let size = crate::codec::align_up(config.segment_bytes.max(crate::codec::BLOCK_BYTES));
    let file = disk
        .create(&path)
        .await
        .map_err(|e| io_error("creating", &shown, e))?;
    file.pre_allocate(size)
        .await
        .map_err(|e| io_error("pre-allocating", &shown, e))?;
    disk.sync_dir(log_dir)
        .await
        .map_err(|e| io_error("syncing directory of", &shown, e))?;
    Ok(Segment {
        base: 0,
        size,
        file: Rc::new(file),
    })
}

/// Damage in synced data that the scan found (and, when repairing, skipped).
struct Damaged {
    file: String,
    segment_base: u64,
    position: u64,
    resume: u64,
    reason: &'static str,
}

fn corruption_error(config: &StorageConfig, damaged: &[Damaged], tables: &Tables) -> StorageError {
    let first = &damaged[0];
    let mut lost: Vec<String> = tables
        .gaps
        .iter()
        .map(|&(topic_id, partition, from, to)| {
            let topic = tables.topic_name(topic_id);
            format!("{topic}/{partition} offsets {from}..{}", to - 1)
        })
        .collect();
    if lost.is_empty() {
        lost.push("no batch of a known partition (a control entry)".to_string());
    }
    StorageError::Corruption {
        shard: config.shard.0,
        file: first.file.clone(),
        file_position: first.position - first.segment_base,
        position: first.position,
        resume: first.resume,
        reason: first.reason,
        ranges: damaged.len(),
        lost: lost.join(", "),
    }
}
