//! The rules a batch must satisfy, written once: [`verify_batch`] applies
//! them at ingress and [`RecordIter`] applies the same functions when it
//! reads, so a batch the broker stores is a batch every reader accepts.
//!
//! One pass over the records, reading only their length fields (keys,
//! values and header bytes are skipped, never decoded).
//!
//! [`verify_batch`]: super::verify_batch
//! [`RecordIter`]: super::RecordIter

use super::{
    read_u16, read_u32, BatchError, BatchHeader, BATCH_HEADER_LEN, BATCH_MAGIC, NO_KEY,
    RECORD_OVERHEAD,
};
use std::ops::Range;

/// Latest timestamp a batch may carry: 9999-12-31T23:59:59.999Z. Anything
/// later (or before 1970) is a producer bug, not a time.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// What a field should have held, for error messages (Iggy style: the
/// position, what was expected, what was found).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Exactly(i64),
    AtLeast(i64),
    AtMost(i64),
    Between(i64, i64),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Exactly(n) => write!(f, "{n}"),
            Expected::AtLeast(n) => write!(f, "at least {n}"),
            Expected::AtMost(n) => write!(f, "at most {n}"),
            Expected::Between(low, high) => write!(f, "{low}..={high}"),
        }
    }
}

/// Where one record's fields lie in its batch (byte ranges of the batch).
pub(super) struct RecordFrame {
    pub end: usize,
    pub timestamp_ms: i64,
    pub key: Option<Range<usize>>,
    pub value: Range<usize>,
    pub header_count: u16,
    pub headers: Range<usize>,
}

fn field(offset: usize, name: &'static str, expected: Expected, found: i64) -> BatchError {
    BatchError::BadField {
        offset,
        field: name,
        expected,
        found,
    }
}

/// The header's layout: it parses, carries the batch magic and the length
/// of `bytes` exactly (what storage checks of its own batches too).
pub(super) fn check_layout(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let magic = read_u16(bytes, 24);
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic {
            offset: 24,
            found: magic,
        });
    }
    if header.batch_length as usize != bytes.len() {
        return Err(BatchError::BadLength {
            offset: 16,
            length: header.batch_length,
        });
    }
    Ok(header)
}

/// The fixed header: every field a reader relies on (not the CRC).
pub(super) fn check_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_layout(bytes)?;
    if header.flags != 0 {
        return Err(field(
            26,
            "flags",
            Expected::Exactly(0),
            header.flags.into(),
        ));
    }
    let fit = ((bytes.len() - BATCH_HEADER_LEN) / RECORD_OVERHEAD) as i64;
    let count = header.record_count as i64;
    if count == 0 || count > fit {
        return Err(field(
            28,
            "record_count",
            Expected::Between(1, fit.max(1)),
            count,
        ));
    }
    let first = header.first_timestamp_ms;
    if !(0..=MAX_TIMESTAMP_MS).contains(&first) {
        return Err(field(
            32,
            "first_timestamp_ms",
            Expected::Between(0, MAX_TIMESTAMP_MS),
            first,
        ));
    }
    let max = header.max_timestamp_ms;
    if !(first..=MAX_TIMESTAMP_MS).contains(&max) {
        return Err(field(
            40,
            "max_timestamp_ms",
            Expected::Between(first, MAX_TIMESTAMP_MS),
            max,
        ));
    }
    let reserved = read_u16(bytes, 58);
    if reserved != 0 {
        return Err(field(58, "reserved", Expected::Exactly(0), reserved.into()));
    }
    Ok(header)
}

/// Frames record `index`, which starts at byte `at` of `bytes` (a batch
/// that passed [`check_header`]): every length is checked against the
/// record's own `body_len`, and `body_len` against the batch.
#[inline]
pub(super) fn frame_record(
    bytes: &[u8],
    at: usize,
    index: u32,
    header: &BatchHeader,
) -> Result<RecordFrame, BatchError> {
    let bad =
        |offset: usize, name: &'static str, expected: Expected, found: i64| BatchError::BadRecord {
            index,
            offset,
            field: name,
            expected,
            found,
        };
    let left = bytes.len() - at;
    if left == 0 {
        return Err(BatchError::MissingRecords {
            offset: at,
            record_count: header.record_count,
            found: index,
        });
    }
    let max_body = left.saturating_sub(4) as i64;
    if left < RECORD_OVERHEAD {
        return Err(bad(
            at,
            "bytes left for a record",
            Expected::AtLeast(RECORD_OVERHEAD as i64),
            left as i64,
        ));
    }
    let body_len = read_u32(bytes, at) as usize;
    if body_len + 4 < RECORD_OVERHEAD || body_len + 4 > left {
        return Err(bad(
            at,
            "body_len",
            Expected::Between((RECORD_OVERHEAD - 4) as i64, max_body),
            body_len as i64,
        ));
    }
    let end = at + 4 + body_len;
    let offset_delta = read_u32(bytes, at + 4);
    if offset_delta != index {
        return Err(bad(
            at + 4,
            "offset_delta",
            Expected::Exactly(index.into()),
            offset_delta.into(),
        ));
    }
    let timestamp_delta = read_u32(bytes, at + 8) as i32;
    if index == 0 && timestamp_delta != 0 {
        return Err(bad(
            at + 8,
            "timestamp_delta_ms",
            Expected::Exactly(0),
            timestamp_delta.into(),
        ));
    }
    // No overflow: check_header bounded first_timestamp_ms.
    let timestamp_ms = header.first_timestamp_ms + timestamp_delta as i64;
    if !(0..=header.max_timestamp_ms).contains(&timestamp_ms) {
        return Err(bad(
            at + 8,
            "timestamp_ms",
            Expected::Between(0, header.max_timestamp_ms),
            timestamp_ms,
        ));
    }
    // From here `end - p` never underflows: each check leaves room for the
    // fixed fields after it (value_len, header_count).
    let mut p = at + 12;
    let key_len = read_u32(bytes, p);
    p += 4;
    let key = if key_len == NO_KEY {
        None
    } else {
        let room = end - p - 6;
        if key_len as usize > room {
            return Err(bad(
                p - 4,
                "key_len",
                Expected::AtMost(room as i64),
                key_len.into(),
            ));
        }
        p += key_len as usize;
        Some(p - key_len as usize..p)
    };
    let value_len = read_u32(bytes, p) as usize;
    let room = end - p - 6;
    if value_len > room {
        return Err(bad(
            p,
            "value_len",
            Expected::AtMost(room as i64),
            value_len as i64,
        ));
    }
    p += 4;
    let value = p..p + value_len;
    p += value_len;
    let header_count = read_u16(bytes, p);
    p += 2;
    let headers_start = p;
    for h in 0..header_count {
        if end - p < 6 {
            return Err(bad(
                headers_start - 2,
                "header_count",
                Expected::AtMost(h.into()),
                header_count.into(),
            ));
        }
        let name_len = read_u16(bytes, p) as usize;
        let room = end - p - 6;
        if name_len > room {
            return Err(bad(
                p,
                "header name_len",
                Expected::AtMost(room as i64),
                name_len as i64,
            ));
        }
        p += 2 + name_len;
        let value_len = read_u32(bytes, p) as usize;
        let room = end - p - 4;
        if value_len > room {
            return Err(bad(
                p,
                "header value_len",
                Expected::AtMost(room as i64),
                value_len as i64,
            ));
        }
        p += 4 + value_len;
    }
    if p != end {
        return Err(bad(
            p,
            "bytes after the headers",
            Expected::Exactly(0),
            (end - p) as i64,
        ));
    }
    Ok(RecordFrame {
        end,
        timestamp_ms,
        key,
        value,
        header_count,
        headers: headers_start..end,
    })
}

/// The batch ends exactly after record `record_count - 1`.
pub(super) fn check_end(bytes: &[u8], end: usize, header: &BatchHeader) -> Result<(), BatchError> {
    if end != bytes.len() {
        return Err(BatchError::TrailingBytes {
            offset: end,
            record_count: header.record_count,
            bytes: bytes.len() - end,
        });
    }
    Ok(())
}

/// One pass over every record of a batch that passed [`check_header`].
pub(super) fn check_records(bytes: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let mut at = BATCH_HEADER_LEN;
    let mut max_timestamp_ms = 0;
    for index in 0..header.record_count {
        let frame = frame_record(bytes, at, index, header)?;
        max_timestamp_ms = max_timestamp_ms.max(frame.timestamp_ms);
        at = frame.end;
    }
    check_end(bytes, at, header)?;
    if max_timestamp_ms != header.max_timestamp_ms {
        return Err(field(
            40,
            "max_timestamp_ms",
            Expected::Exactly(max_timestamp_ms),
            header.max_timestamp_ms,
        ));
    }
    Ok(())
}
