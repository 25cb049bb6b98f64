//! Fetch encoding and the fetched data: raw batch bytes, sliced out of the
//! response frame without copying, with cheap counting and owned decoding.

use crate::client::parse;
use crate::conn::Body;
use crate::error::{check_code, Error, Result};
use bytes::Bytes;
use coremq_wire::batch::{self, BatchHeader};
use coremq_wire::{fb, ErrorCode};
use flatbuffers::FlatBufferBuilder;
use std::time::Duration;

/// Long-poll parameters of a fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Upper bound on record bytes returned per partition.
    pub max_bytes: u32,
    /// How long the broker may hold the request waiting for `min_bytes`.
    pub max_wait: Duration,
    pub min_bytes: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            // 1 MiB: a fetch that fits the CPU caches. Against 4 MiB, a
            // consumer reading from the broker's memory went from ~2.2 M to
            // ~4.3 M msg/s of 1 KiB on the 2-core test host (docs/perf.md).
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
        }
    }
}

/// One partition's fetch result. `records` is a zero-copy slice of the
/// response frame: whole batches, the first of which may start before
/// `requested_offset`.
#[derive(Clone, Debug)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: u32,
    pub requested_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub records: Bytes,
}

/// An owned record. Key, value and header values share the fetch buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// What a pass over batch headers finds, without decoding records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records at or after the requested offset.
    pub records: u64,
    /// Batches seen (including one that starts before the requested offset).
    pub batches: u64,
    /// The offset to fetch next (`requested_offset` when nothing came back).
    pub next_offset: u64,
}

impl FetchedPartition {
    /// Counts records and finds the next offset from batch headers alone.
    /// `verify_crc` also checks each batch's CRC.
    pub fn summarize(&self, verify_crc: bool) -> Result<BatchSummary> {
        let mut summary = BatchSummary {
            next_offset: self.requested_offset,
            ..BatchSummary::default()
        };
        for batch in batch::split_batches(&self.records) {
            let batch = batch?;
            let header = if verify_crc {
                batch::verify_batch(batch)?
            } else {
                BatchHeader::parse(batch)?
            };
            if header.record_count == 0 {
                return Err(Error::Corrupt(coremq_wire::BatchError::BadHeader {
                    offset: 0,
                    reason: "record_count is 0",
                }));
            }
            summary.batches += 1;
            let next = header.next_offset();
            if next > summary.next_offset {
                let first = header.base_offset.max(summary.next_offset);
                summary.records += next - first;
                summary.next_offset = next;
            }
        }
        Ok(summary)
    }

    /// Decodes the records at or after the requested offset (CRC checked).
    pub fn records(&self) -> Result<Vec<ConsumerRecord>> {
        let mut out = Vec::new();
        for record in batch::records_from(&self.records, self.requested_offset) {
            let record = record?;
            out.push(ConsumerRecord {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.map(|k| self.records.slice_ref(k)),
                value: self.records.slice_ref(record.value),
                headers: record
                    .headers()
                    .map(|(name, value)| {
                        (
                            String::from_utf8_lossy(name).into_owned(),
                            self.records.slice_ref(value),
                        )
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}

pub(crate) fn encode_fetch(
    topic: &str,
    partition: u32,
    offset: u64,
    options: &FetchOptions,
) -> Body {
    let mut builder = FlatBufferBuilder::with_capacity(128 + topic.len());
    let name = builder.create_string(topic);
    let entry = fb::FetchPartition::create(
        &mut builder,
        &fb::FetchPartitionArgs {
            topic: Some(name),
            partition,
            offset,
            max_bytes: options.max_bytes,
        },
    );
    let entries = builder.create_vector(&[entry]);
    let max_wait_ms = u32::try_from(options.max_wait.as_millis()).unwrap_or(u32::MAX);
    let root = fb::FetchRequest::create(
        &mut builder,
        &fb::FetchRequestArgs {
            partitions: Some(entries),
            max_wait_ms,
            min_bytes: options.min_bytes,
        },
    );
    builder.finish(root, None);
    Body::from_builder(builder)
}

pub(crate) fn decode_fetch(body: Bytes, requested_offset: u64) -> Result<FetchedPartition> {
    let response = parse::<fb::FetchResponse>(&body)?;
    let result = response
        .results()
        .and_then(|r| r.iter().next())
        .ok_or_else(|| Error::Protocol("fetch response without results".into()))?;
    if result.error() == ErrorCode::DataLoss.as_u16() {
        return Err(Error::DataLoss {
            topic: result.topic().unwrap_or_default().to_string(),
            partition: result.partition(),
            offset: requested_offset,
            next_offset: result.next_offset(),
            message: result.error_message().unwrap_or_default().to_string(),
        });
    }
    check_code(result.error(), result.error_message())?;
    let records = match result.records() {
        Some(records) => body.slice_ref(records.bytes()),
        None => Bytes::new(),
    };
    Ok(FetchedPartition {
        topic: result.topic().unwrap_or_default().to_string(),
        partition: result.partition(),
        requested_offset,
        high_watermark: result.high_watermark(),
        log_start_offset: result.log_start_offset(),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coremq_wire::BatchBuilder;

    fn batch(base: u64, count: u32) -> Vec<u8> {
        let mut builder = BatchBuilder::with_capacity(1024);
        for i in 0..count {
            let value = format!("v{}", base + i as u64);
            builder
                .push(1000 + i as i64, None, value.as_bytes(), &[(b"h", b"x")])
                .unwrap();
        }
        let mut bytes = builder.finish();
        batch::set_broker_fields(&mut bytes, base, 5);
        bytes
    }

    fn fetched(requested_offset: u64, records: Vec<u8>) -> FetchedPartition {
        FetchedPartition {
            topic: "t".into(),
            partition: 0,
            requested_offset,
            high_watermark: 100,
            log_start_offset: 0,
            records: Bytes::from(records),
        }
    }

    #[test]
    fn summary_skips_records_before_the_requested_offset() {
        let mut bytes = batch(10, 5);
        bytes.extend(batch(15, 3));
        let summary = fetched(12, bytes.clone()).summarize(true).unwrap();
        assert_eq!(summary.records, 3 + 3);
        assert_eq!(summary.batches, 2);
        assert_eq!(summary.next_offset, 18);
        let records = fetched(12, bytes).records().unwrap();
        assert_eq!(records.len(), 6);
        assert_eq!(records[0].offset, 12);
        assert_eq!(&records[0].value[..], b"v12");
        assert_eq!(
            records[0].headers,
            vec![("h".to_string(), Bytes::from_static(b"x"))]
        );
        assert_eq!(records[5].offset, 17);
    }

    #[test]
    fn empty_fetch_keeps_the_offset() {
        let summary = fetched(7, Vec::new()).summarize(true).unwrap();
        assert_eq!(
            summary,
            BatchSummary {
                records: 0,
                batches: 0,
                next_offset: 7
            }
        );
    }

    #[test]
    fn data_loss_carries_the_next_readable_offset() {
        let mut b = FlatBufferBuilder::new();
        let topic = b.create_string("t");
        let message = b.create_string("damaged");
        let result = fb::FetchPartitionResult::create(
            &mut b,
            &fb::FetchPartitionResultArgs {
                topic: Some(topic),
                partition: 3,
                error: ErrorCode::DataLoss.as_u16(),
                error_message: Some(message),
                high_watermark: 30,
                log_start_offset: 0,
                records: None,
                next_offset: 15,
            },
        );
        let results = b.create_vector(&[result]);
        let root = fb::FetchResponse::create(
            &mut b,
            &fb::FetchResponseArgs {
                results: Some(results),
            },
        );
        b.finish(root, None);
        let body = Bytes::copy_from_slice(b.finished_data());
        match decode_fetch(body, 13) {
            Err(Error::DataLoss {
                partition,
                offset,
                next_offset,
                ..
            }) => assert_eq!((partition, offset, next_offset), (3, 13, 15)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_batches_are_reported() {
        let mut bytes = batch(0, 2);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        assert!(fetched(0, bytes.clone()).summarize(true).is_err());
        assert!(fetched(0, bytes).records().is_err());
    }
}
