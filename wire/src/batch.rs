//! Record batches: the unit of produce, storage and fetch.
//!
//! ```text
//! offset size field              set by
//!  0      8   base_offset        broker (patched at append)
//!  8      8   append_time_ms     broker (patched at append)
//! 16      4   batch_length       producer: header + records, in bytes
//! 20      4   crc                producer: crc32 (IEEE) of bytes [24, batch_length)
//! 24      2   magic              0xCB01
//! 26      2   flags              0 (reserved for transactions / control batches)
//! 28      4   record_count       >= 1
//! 32      8   first_timestamp_ms
//! 40      8   max_timestamp_ms
//! 48      8   producer_id
//! 56      2   producer_epoch
//! 58      2   reserved           0
//! 60      4   base_sequence
//! 64          records
//! ```
//!
//! Each record: `u32 body_len | u32 offset_delta | i32 timestamp_delta_ms |
//! u32 key_len (u32::MAX = no key) | key | u32 value_len | value |
//! u16 header_count | (u16 name_len | name | u32 value_len | value)*`.
//! `body_len` counts the bytes after itself, so a reader can skip a record
//! without decoding it; offset deltas are 0, 1, 2, ... in order.
//!
//! The CRC covers everything after the broker-assigned fields, so the broker
//! patches base offset and append time without re-checksumming (Kafka v2's idea).
//! The broker checks [`verify_batch`] once at ingress: header, CRC, and the
//! framing of every record (one pass over the length fields, keys and values
//! never decoded). Readers use [`RecordIter`], which applies the same checks
//! (one set of functions, `batch/verify.rs`) and never panics, so a batch the
//! broker accepted is one every reader accepts.

use thiserror::Error;

mod verify;
pub use verify::{Expected, MAX_TIMESTAMP_MS};

pub const BATCH_HEADER_LEN: usize = 64;
pub const BATCH_MAGIC: u16 = 0xCB01;
/// Bytes of a record with empty key, value and no headers.
pub const RECORD_OVERHEAD: usize = 4 + 4 + 4 + 4 + 4 + 2;
/// Where the CRC-covered region starts.
pub const CRC_START: usize = 24;

const NO_KEY: u32 = u32::MAX;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated at byte {offset}: need {need} bytes, have {have}")]
    UnexpectedEof {
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("bad batch magic {found:#06x} at byte {offset}")]
    BadMagic { offset: usize, found: u16 },
    #[error("batch_length {length} at byte {offset} is invalid")]
    BadLength { offset: usize, length: u32 },
    #[error(
        "batch at byte {offset} has a bad crc: stored {stored:#010x}, computed {computed:#010x}"
    )]
    BadCrc {
        offset: usize,
        stored: u32,
        computed: u32,
    },
    #[error("batch at byte {offset} has an invalid header: {reason}")]
    BadHeader { offset: usize, reason: &'static str },
    #[error("batch field {field} at byte {offset} is {found}, expected {expected}")]
    BadField {
        offset: usize,
        field: &'static str,
        expected: Expected,
        found: i64,
    },
    #[error("record {index} at byte {offset}: {field} is {found}, expected {expected}")]
    BadRecord {
        index: u32,
        offset: usize,
        field: &'static str,
        expected: Expected,
        found: i64,
    },
    #[error("batch declares {record_count} records but ends at byte {offset} after {found}")]
    MissingRecords {
        offset: usize,
        record_count: u32,
        found: u32,
    },
    #[error(
        "batch declares {record_count} records but {bytes} bytes follow the last one at byte {offset}"
    )]
    TrailingBytes {
        offset: usize,
        record_count: u32,
        bytes: usize,
    },
    #[error(
        "record timestamp {timestamp_ms} is too far from the batch's first timestamp {first_ms}"
    )]
    TimestampOutOfRange { timestamp_ms: i64, first_ms: i64 },
    #[error("record timestamp {timestamp_ms} is outside 0..={MAX_TIMESTAMP_MS} (1970 to 9999)")]
    TimestampInvalid { timestamp_ms: i64 },
    #[error("record field too large: {what}")]
    FieldTooLarge { what: &'static str },
}

/// The decoded fixed header of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub batch_length: u32,
    pub crc: u32,
    pub flags: u16,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub base_sequence: u32,
}

impl BatchHeader {
    /// Offset of the last record: offsets are dense within a batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64 - 1
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64
    }

    /// Reads the header fields without any validation beyond length.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(BatchError::UnexpectedEof {
                offset: 0,
                need: BATCH_HEADER_LEN,
                have: bytes.len(),
            });
        }
        Ok(BatchHeader {
            base_offset: read_u64(bytes, 0),
            append_time_ms: read_u64(bytes, 8) as i64,
            batch_length: read_u32(bytes, 16),
            crc: read_u32(bytes, 20),
            flags: read_u16(bytes, 26),
            record_count: read_u32(bytes, 28),
            first_timestamp_ms: read_u64(bytes, 32) as i64,
            max_timestamp_ms: read_u64(bytes, 40) as i64,
            producer_id: read_u64(bytes, 48),
            producer_epoch: read_u16(bytes, 56),
            base_sequence: read_u32(bytes, 60),
        })
    }
}

/// Checks that `bytes` is exactly one well-formed batch with a correct CRC
/// and well-framed records. This is the only check the broker runs on
/// produced data: a batch it accepts is one [`RecordIter`] reads to the end.
pub fn verify_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = verify_header_and_crc(bytes)?;
    verify::check_records(bytes, &header)?;
    Ok(header)
}

/// Integrity of a batch the broker itself stored (log recovery, disk reads):
/// the fixed header's layout fields (magic, exact length, a record count
/// that fits, reserved 0) and the CRC — not the ingress policy on flags and
/// timestamps, which [`verify_batch`] applied when the batch was produced
/// (and which an older broker may have applied less strictly: its data must
/// stay readable and must never look like damage to recovery).
pub fn verify_stored_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = verify::check_layout(bytes)?;
    let fit = (bytes.len() - BATCH_HEADER_LEN) / RECORD_OVERHEAD;
    if header.record_count == 0 || header.record_count as usize > fit || read_u16(bytes, 58) != 0 {
        return Err(BatchError::BadHeader {
            offset: 28,
            reason: "record_count or reserved field out of range",
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            offset: 0,
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// The CRC a batch should carry: crc32 (IEEE) of bytes `[CRC_START, len)`.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// The header and CRC alone: what a reader checks before it walks the
/// records with [`RecordIter`] (which frames each record as it goes).
pub fn verify_header_and_crc(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = verify::check_header(bytes)?;
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            offset: 0,
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Length of the batch starting at `bytes[0]`, checked against the buffer.
pub fn batch_length_at(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < BATCH_HEADER_LEN {
        return Err(BatchError::UnexpectedEof {
            offset: 0,
            need: BATCH_HEADER_LEN,
            have: bytes.len(),
        });
    }
    let length = read_u32(bytes, 16);
    if (length as usize) < BATCH_HEADER_LEN + RECORD_OVERHEAD {
        return Err(BatchError::BadLength { offset: 0, length });
    }
    if length as usize > bytes.len() {
        return Err(BatchError::UnexpectedEof {
            offset: 0,
            need: length as usize,
            have: bytes.len(),
        });
    }
    Ok(length as usize)
}

/// Splits back-to-back batches. Yields an error (then stops) at the first
/// batch whose length field does not fit the buffer.
pub fn split_batches(bytes: &[u8]) -> SplitBatches<'_> {
    SplitBatches {
        bytes,
        position: 0,
        failed: false,
    }
}

pub struct SplitBatches<'a> {
    bytes: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> Iterator for SplitBatches<'a> {
    type Item = Result<&'a [u8], BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.position..];
        match batch_length_at(rest) {
            Ok(length) => {
                self.position += length;
                Some(Ok(&rest[..length]))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(offset_error(error, self.position)))
            }
        }
    }
}

fn offset_error(error: BatchError, by: usize) -> BatchError {
    match error {
        BatchError::UnexpectedEof { offset, need, have } => BatchError::UnexpectedEof {
            offset: offset + by,
            need,
            have,
        },
        BatchError::BadLength { offset, length } => BatchError::BadLength {
            offset: offset + by,
            length,
        },
        other => other,
    }
}

/// Sets the broker-assigned fields. Does not touch the CRC-covered region.
pub fn set_broker_fields(batch: &mut [u8], base_offset: u64, append_time_ms: i64) {
    assert!(
        batch.len() >= BATCH_HEADER_LEN,
        "patching a batch shorter than its header"
    );
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
    batch[8..16].copy_from_slice(&append_time_ms.to_le_bytes());
}

/// Encoded size of one record, for producers that batch by bytes.
pub fn record_encoded_len(key: Option<&[u8]>, value: &[u8], headers: &[(&[u8], &[u8])]) -> usize {
    RECORD_OVERHEAD
        + key.map_or(0, |k| k.len())
        + value.len()
        + headers
            .iter()
            .map(|(n, v)| 2 + n.len() + 4 + v.len())
            .sum::<usize>()
}

/// Builds one batch in a single buffer. `finish` writes the header and CRC.
#[derive(Debug)]
pub struct BatchBuilder {
    buffer: Vec<u8>,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u32,
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        BatchBuilder::from_vec(Vec::with_capacity(bytes.max(BATCH_HEADER_LEN)))
    }

    /// Reuses `buffer`'s allocation (e.g. a finished batch whose request was
    /// acknowledged), so a steady producer allocates no memory per batch.
    pub fn from_vec(mut buffer: Vec<u8>) -> BatchBuilder {
        buffer.clear();
        buffer.resize(BATCH_HEADER_LEN, 0);
        BatchBuilder {
            buffer,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            producer_id: 0,
            producer_epoch: 0,
            base_sequence: 0,
        }
    }

    pub fn set_producer(&mut self, producer_id: u64, producer_epoch: u16, base_sequence: u32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the batch would have if finished now.
    pub fn len_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), BatchError> {
        if !(0..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
            return Err(BatchError::TimestampInvalid { timestamp_ms });
        }
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        let delta = timestamp_ms - self.first_timestamp_ms;
        let delta = i32::try_from(delta).map_err(|_| BatchError::TimestampOutOfRange {
            timestamp_ms,
            first_ms: self.first_timestamp_ms,
        })?;
        let body_len = record_encoded_len(key, value, headers) - 4;
        let body_len =
            u32::try_from(body_len).map_err(|_| BatchError::FieldTooLarge { what: "record" })?;
        if key.is_some_and(|k| k.len() >= NO_KEY as usize) {
            return Err(BatchError::FieldTooLarge { what: "key" });
        }
        if headers.len() > u16::MAX as usize {
            return Err(BatchError::FieldTooLarge {
                what: "header count",
            });
        }
        if headers
            .iter()
            .any(|(name, _)| name.len() > u16::MAX as usize)
        {
            return Err(BatchError::FieldTooLarge {
                what: "header name",
            });
        }
        let b = &mut self.buffer;
        b.reserve(body_len as usize + 4);
        b.extend_from_slice(&body_len.to_le_bytes());
        b.extend_from_slice(&self.record_count.to_le_bytes());
        b.extend_from_slice(&delta.to_le_bytes());
        match key {
            Some(key) => {
                b.extend_from_slice(&(key.len() as u32).to_le_bytes());
                b.extend_from_slice(key);
            }
            None => b.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        b.extend_from_slice(&(value.len() as u32).to_le_bytes());
        b.extend_from_slice(value);
        b.extend_from_slice(&(headers.len() as u16).to_le_bytes());
        for (name, value) in headers {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
            b.extend_from_slice(&(value.len() as u32).to_le_bytes());
            b.extend_from_slice(value);
        }
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        Ok(())
    }

    /// Writes the header and CRC and returns the batch bytes.
    /// Panics if no record was pushed (an empty batch is a caller bug).
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.record_count > 0, "a batch needs at least one record");
        let length = u32::try_from(self.buffer.len()).expect("batch under 4 GiB");
        let b = &mut self.buffer;
        b[0..8].copy_from_slice(&0u64.to_le_bytes());
        b[8..16].copy_from_slice(&0i64.to_le_bytes());
        b[16..20].copy_from_slice(&length.to_le_bytes());
        b[24..26].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        b[26..28].copy_from_slice(&0u16.to_le_bytes());
        b[28..32].copy_from_slice(&self.record_count.to_le_bytes());
        b[32..40].copy_from_slice(&self.first_timestamp_ms.to_le_bytes());
        b[40..48].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        b[48..56].copy_from_slice(&self.producer_id.to_le_bytes());
        b[56..58].copy_from_slice(&self.producer_epoch.to_le_bytes());
        b[58..60].copy_from_slice(&0u16.to_le_bytes());
        b[60..64].copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = compute_crc(b);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        self.buffer
    }
}

/// One record, borrowed from its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    header_count: u16,
    headers_raw: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn header_count(&self) -> u16 {
        self.header_count
    }

    /// Headers as (name, value) pairs; bounds were checked when the record was read.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut raw = self.headers_raw;
        (0..self.header_count).map(move |_| {
            let name_len = read_u16(raw, 0) as usize;
            let name = &raw[2..2 + name_len];
            let value_len = read_u32(raw, 2 + name_len) as usize;
            let value = &raw[6 + name_len..6 + name_len + value_len];
            raw = &raw[6 + name_len + value_len..];
            (name, value)
        })
    }
}

/// Iterates the records of one batch (bytes from [`split_batches`]).
/// The header is checked by [`RecordIter::new`] and every record framed as it
/// is read, by the same functions as [`verify_batch`] (not the CRC: see
/// [`verify_header_and_crc`]). A malformed record, or bytes after the last
/// one, end the iteration with an error.
pub struct RecordIter<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
    position: usize,
    index: u32,
    done: bool,
}

impl<'a> RecordIter<'a> {
    pub fn new(batch: &'a [u8]) -> Result<RecordIter<'a>, BatchError> {
        let header = verify::check_header(batch)?;
        Ok(RecordIter {
            header,
            bytes: batch,
            position: BATCH_HEADER_LEN,
            index: 0,
            done: false,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn read_record(&mut self) -> Result<Record<'a>, BatchError> {
        let index = self.index;
        let frame = verify::frame_record(self.bytes, self.position, index, &self.header)?;
        self.position = frame.end;
        self.index += 1;
        let bytes = self.bytes;
        Ok(Record {
            offset: self.header.base_offset + index as u64,
            timestamp_ms: frame.timestamp_ms,
            key: frame.key.map(|k| &bytes[k]),
            value: &bytes[frame.value],
            header_count: frame.header_count,
            headers_raw: &bytes[frame.headers],
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index >= self.header.record_count {
            self.done = true;
            return verify::check_end(self.bytes, self.position, &self.header)
                .err()
                .map(Err);
        }
        let result = self.read_record();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

/// Every record at or after `start_offset` in back-to-back batches: how a
/// fetch that starts mid-batch is sliced on the reading side. Each batch's
/// header and CRC are checked before its records are read, and each record is
/// framed as it is read (one pass, as at ingress).
pub fn records_from(
    batches: &[u8],
    start_offset: u64,
) -> impl Iterator<Item = Result<Record<'_>, BatchError>> {
    split_batches(batches).flat_map(move |batch| {
        let records: Box<dyn Iterator<Item = Result<Record<'_>, BatchError>>> = match batch
            .and_then(|b| verify_header_and_crc(b).map(|_| b))
            .and_then(RecordIter::new)
        {
            Ok(iter) => Box::new(
                iter.filter(move |r| r.as_ref().map_or(true, |r| r.offset >= start_offset)),
            ),
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        records
    })
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests;
