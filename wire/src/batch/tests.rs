use super::*;
use proptest::prelude::*;

fn sample_batch(n: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(4096);
    for i in 0..n {
        let key = format!("key-{i}");
        let value = vec![i as u8; i as usize * 3];
        let headers: &[(&[u8], &[u8])] = if i % 2 == 0 {
            &[(b"tag", b"red"), (b"trace", b"")]
        } else {
            &[]
        };
        let key = if i % 3 == 0 {
            None
        } else {
            Some(key.as_bytes())
        };
        builder
            .push(1_000 + i as i64, key, &value, headers)
            .unwrap();
    }
    builder.finish()
}

#[test]
fn build_verify_iterate() {
    let mut batch = sample_batch(10);
    let header = verify_batch(&batch).unwrap();
    assert_eq!(header.record_count, 10);
    assert_eq!(header.first_timestamp_ms, 1_000);
    assert_eq!(header.max_timestamp_ms, 1_009);
    set_broker_fields(&mut batch, 500, 77);
    // Patching broker fields keeps the CRC valid.
    let header = verify_batch(&batch).unwrap();
    assert_eq!(header.base_offset, 500);
    assert_eq!(header.append_time_ms, 77);
    assert_eq!(header.last_offset(), 509);
    let records: Vec<_> = RecordIter::new(&batch)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, 500 + i as u64);
        assert_eq!(r.timestamp_ms, 1_000 + i as i64);
        assert_eq!(r.value, &vec![i as u8; i * 3][..]);
        if i % 3 == 0 {
            assert_eq!(r.key, None);
        } else {
            assert_eq!(r.key, Some(format!("key-{i}").as_bytes()));
        }
        let headers: Vec<_> = r.headers().collect();
        if i % 2 == 0 {
            assert_eq!(
                headers,
                vec![(&b"tag"[..], &b"red"[..]), (&b"trace"[..], &b""[..])]
            );
        } else {
            assert!(headers.is_empty());
        }
    }
}

#[test]
fn split_and_slice_mid_batch() {
    let mut a = sample_batch(5);
    let mut b = sample_batch(4);
    set_broker_fields(&mut a, 0, 1);
    set_broker_fields(&mut b, 5, 1);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    let split: Vec<_> = split_batches(&both).map(|x| x.unwrap()).collect();
    assert_eq!(split, vec![&a[..], &b[..]]);
    let offsets: Vec<u64> = records_from(&both, 3).map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, vec![3, 4, 5, 6, 7, 8]);
}

#[test]
fn detects_corruption_and_truncation() {
    let batch = sample_batch(3);
    for i in CRC_START..batch.len() {
        let mut bad = batch.clone();
        bad[i] ^= 0x40;
        assert!(verify_batch(&bad).is_err(), "flip at {i} accepted");
    }
    for cut in 0..batch.len() {
        assert!(verify_batch(&batch[..cut]).is_err());
    }
    let mut extra = batch.clone();
    extra.push(0);
    assert!(verify_batch(&extra).is_err());
}

#[test]
fn timestamp_too_far_apart_is_an_error() {
    let mut builder = BatchBuilder::with_capacity(64);
    builder.push(0, None, b"x", &[]).unwrap();
    assert!(matches!(
        builder.push(i64::from(i32::MAX) + 1, None, b"y", &[]),
        Err(BatchError::TimestampOutOfRange { .. })
    ));
}

#[test]
fn encoded_len_matches() {
    let mut builder = BatchBuilder::with_capacity(64);
    let headers: &[(&[u8], &[u8])] = &[(b"a", b"bc")];
    builder.push(5, Some(b"k"), b"value", headers).unwrap();
    assert_eq!(
        builder.len_bytes(),
        BATCH_HEADER_LEN + record_encoded_len(Some(b"k"), b"value", headers)
    );
}

/// A record body that passes the CRC (the producer computed it) but lies
/// about its lengths must not panic the reader.
#[test]
fn malicious_records_with_valid_crc_do_not_panic() {
    let batch = sample_batch(4);
    for i in BATCH_HEADER_LEN..batch.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = batch.clone();
            bad[i] ^= flip;
            let crc = crc32fast::hash(&bad[CRC_START..]);
            bad[20..24].copy_from_slice(&crc.to_le_bytes());
            if verify_batch(&bad).is_ok() {
                for r in RecordIter::new(&bad).unwrap().flatten() {
                    let _ = r.headers().count();
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = verify_batch(&bytes);
        for r in records_from(&bytes, 0).flatten() {
            let _ = r.headers().count();
        }
    }

    #[test]
    fn corrupted_batch_is_never_accepted(
        n in 1u32..8,
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let batch = sample_batch(n);
        let at = CRC_START + position.index(batch.len() - CRC_START);
        let mut bad = batch.clone();
        bad[at] ^= flip;
        prop_assert!(verify_batch(&bad).is_err());
    }

    #[test]
    fn round_trip_any_records(
        records in proptest::collection::vec(
            (any::<i32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::collection::vec(any::<u8>(), 0..100)),
            1..20)
    ) {
        let mut builder = BatchBuilder::with_capacity(0);
        let base_ts = 1_700_000_000_000i64;
        for (ts, key, value) in &records {
            builder.push(base_ts + (*ts as i64 / 4), key.as_deref(), value, &[]).unwrap();
        }
        let batch = builder.finish();
        verify_batch(&batch).unwrap();
        let read: Vec<_> = RecordIter::new(&batch).unwrap().map(|r| r.unwrap()).collect();
        prop_assert_eq!(read.len(), records.len());
        for (r, (ts, key, value)) in read.iter().zip(&records) {
            prop_assert_eq!(r.timestamp_ms, base_ts + (*ts as i64 / 4));
            prop_assert_eq!(r.key, key.as_deref());
            prop_assert_eq!(r.value, &value[..]);
        }
    }
}

#[test]
fn reused_buffer_builds_the_same_batch() {
    let first = sample_batch(4);
    let capacity = first.capacity();
    let mut builder = BatchBuilder::from_vec(first);
    builder.push(1_000, None, b"again", &[]).unwrap();
    let again = builder.finish();
    assert!(again.capacity() >= capacity.min(again.len()));
    let header = verify_batch(&again).unwrap();
    assert_eq!(header.record_count, 1);
    assert_eq!(
        RecordIter::new(&again)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .value,
        b"again"
    );
}

/// Recomputes the CRC, as a producer that means harm (or has a bug) would.
fn resign(batch: &mut [u8]) {
    let crc = crc32fast::hash(&batch[CRC_START..]);
    batch[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Every record of the batch read to the end, or the first error.
fn read_all(batch: &[u8]) -> Result<usize, BatchError> {
    let mut count = 0;
    for record in RecordIter::new(batch)? {
        let record = record?;
        let _ = record.headers().count();
        count += 1;
    }
    Ok(count)
}

/// Byte positions and widths of every length/offset/timestamp field of a
/// batch (the fields a reader interprets; keys and values are opaque).
fn fields_of(batch: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = vec![
        (16, 4),
        (24, 2),
        (26, 2),
        (28, 4),
        (32, 8),
        (40, 8),
        (58, 2),
    ];
    let mut at = BATCH_HEADER_LEN;
    while at < batch.len() {
        let end = at + 4 + read_u32(batch, at) as usize;
        fields.extend([(at, 4), (at + 4, 4), (at + 8, 4), (at + 12, 4)]);
        let key_len = read_u32(batch, at + 12);
        let mut p = at
            + 16
            + if key_len == NO_KEY {
                0
            } else {
                key_len as usize
            };
        fields.push((p, 4));
        p += 4 + read_u32(batch, p) as usize;
        fields.push((p, 2));
        let count = read_u16(batch, p);
        p += 2;
        for _ in 0..count {
            fields.push((p, 2));
            p += 2 + read_u16(batch, p) as usize;
            fields.push((p, 4));
            p += 4 + read_u32(batch, p) as usize;
        }
        assert_eq!(p, end, "walked the record as built");
        at = end;
    }
    fields
}

fn write_field(batch: &mut [u8], (at, width): (usize, usize), value: u64) {
    batch[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn read_field(batch: &[u8], (at, width): (usize, usize)) -> u64 {
    let mut x = [0u8; 8];
    x[..width].copy_from_slice(&batch[at..at + width]);
    u64::from_le_bytes(x)
}

/// The malformed batches of issue 6 that the old `verify_batch` stored and
/// readers then rejected (or, for a count one too low, read short).
#[test]
fn malformed_framing_is_rejected_with_its_position() {
    let good = sample_batch(4);
    verify_batch(&good).unwrap();
    let count_at = (28, 4);
    let second = BATCH_HEADER_LEN + 4 + read_u32(&good, BATCH_HEADER_LEN) as usize;
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "record_count + 1",
            Box::new(move |b| write_field(b, count_at, 5)),
        ),
        (
            "record_count - 1",
            Box::new(move |b| write_field(b, count_at, 3)),
        ),
        (
            "offset delta out of sequence",
            Box::new(move |b| write_field(b, (second + 4, 4), 2)),
        ),
        (
            "record length past the end",
            Box::new(move |b| write_field(b, (second, 4), 10_000)),
        ),
        (
            "unknown flags",
            Box::new(|b| write_field(b, (26, 2), 0x8000)),
        ),
        (
            "first timestamp far future",
            Box::new(|b| write_field(b, (32, 8), i64::MAX as u64 - 3)),
        ),
        (
            "negative first timestamp",
            Box::new(|b| write_field(b, (32, 8), (-5i64) as u64)),
        ),
        (
            "max timestamp below a record's",
            Box::new(|b| write_field(b, (40, 8), 1_001)),
        ),
        (
            "max timestamp above every record's",
            Box::new(|b| write_field(b, (40, 8), 9_999)),
        ),
        (
            "timestamp delta of the first record",
            Box::new(|b| write_field(b, (BATCH_HEADER_LEN + 8, 4), 1)),
        ),
    ];
    for (name, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        resign(&mut bad);
        let error = verify_batch(&bad).expect_err(name);
        assert!(
            !matches!(error, BatchError::BadCrc { .. }),
            "{name}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("byte"),
            "{name}: no position in '{message}'"
        );
        // What the verifier refuses, no reader would have read in full.
        if name != "max timestamp above every record's" {
            assert!(read_all(&bad).is_err(), "{name}: the reader accepts it");
        }
    }
}

#[test]
fn count_one_lower_no_longer_drops_a_record_silently() {
    let mut bad = sample_batch(3);
    write_field(&mut bad, (28, 4), 2);
    resign(&mut bad);
    let records: Vec<_> = records_from(&bad, 0).collect();
    assert!(
        matches!(records.last(), Some(Err(BatchError::TrailingBytes { .. }))),
        "{records:?}"
    );
}

#[test]
fn builder_refuses_timestamps_verify_would_refuse() {
    let mut builder = BatchBuilder::with_capacity(64);
    assert!(matches!(
        builder.push(-1, None, b"x", &[]),
        Err(BatchError::TimestampInvalid { .. })
    ));
    assert!(builder.push(MAX_TIMESTAMP_MS + 1, None, b"x", &[]).is_err());
    builder.push(MAX_TIMESTAMP_MS, None, b"x", &[]).unwrap();
    verify_batch(&builder.finish()).unwrap();
}

/// (timestamp offset, key, value, headers) of one record.
type AnyRecord = (i32, Option<Vec<u8>>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

fn any_record() -> impl Strategy<Value = AnyRecord> {
    (
        any::<i32>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..6),
                proptest::collection::vec(any::<u8>(), 0..6),
            ),
            0..3,
        ),
    )
}

fn build(records: &[AnyRecord]) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(0);
    let base_ts = 1_700_000_000_000i64;
    for (ts, key, value, headers) in records {
        let headers: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        builder
            .push(base_ts + (*ts as i64 / 4), key.as_deref(), value, &headers)
            .unwrap();
    }
    builder.finish()
}

proptest! {
    #[test]
    fn every_built_batch_verifies_and_reads_in_full(
        records in proptest::collection::vec(any_record(), 1..12)
    ) {
        let batch = build(&records);
        let header = verify_batch(&batch).unwrap();
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(read_all(&batch).unwrap(), records.len());
    }

    /// Reader and verifier agree: set one field to another value (near the
    /// old one or anything), re-sign, and whatever verify_batch accepts the
    /// reader reads to the end, record_count records.
    #[test]
    fn verifier_accepts_only_what_the_reader_reads(
        records in proptest::collection::vec(any_record(), 1..6),
        which in any::<prop::sample::Index>(),
        near in any::<bool>(),
        delta in -3i64..=3,
        wild in any::<u64>(),
    ) {
        let batch = build(&records);
        let fields = fields_of(&batch);
        let field = fields[which.index(fields.len())];
        let old = read_field(&batch, field);
        let new = if near { old.wrapping_add(delta as u64) } else { wild };
        let mut bad = batch.clone();
        write_field(&mut bad, field, new);
        resign(&mut bad);
        match verify_batch(&bad) {
            Ok(header) => {
                let read = read_all(&bad);
                prop_assert_eq!(read, Ok(header.record_count as usize), "field {:?}", field);
            }
            Err(error) => {
                let is_crc = matches!(error, BatchError::BadCrc { .. });
                prop_assert!(!is_crc, "re-signed, yet {}", error);
            }
        }
    }
}

#[test]
fn error_messages_name_position_expected_and_found() {
    let mut builder = BatchBuilder::with_capacity(256);
    for i in 0..3 {
        builder.push(1_000 + i, None, b"x", &[]).unwrap();
    }
    let good = builder.finish();
    // Records of 23 bytes at 64, 87 and 110; positions name the field.
    let mut bad = good.clone();
    write_field(&mut bad, (91, 4), 3);
    resign(&mut bad);
    assert_eq!(
        verify_batch(&bad).unwrap_err().to_string(),
        "record 1 at byte 91: offset_delta is 3, expected 1"
    );
    let mut bad = good.clone();
    write_field(&mut bad, (28, 4), 2);
    resign(&mut bad);
    assert_eq!(
        verify_batch(&bad).unwrap_err().to_string(),
        "batch declares 2 records but 23 bytes follow the last one at byte 110"
    );
}

/// What the broker stored stays readable to recovery and disk reads even if
/// the ingress policy is stricter now (an older broker accepted negative
/// timestamps); the CRC still catches every flipped bit.
#[test]
fn stored_batches_are_checked_for_integrity_not_policy() {
    let mut batch = sample_batch(3);
    batch[32..40].copy_from_slice(&(-5i64).to_le_bytes()); // first_timestamp_ms
    let crc = compute_crc(&batch);
    batch[20..24].copy_from_slice(&crc.to_le_bytes());
    assert!(verify_batch(&batch).is_err(), "ingress refuses it");
    assert!(
        verify_stored_batch(&batch).is_ok(),
        "storage keeps reading it"
    );
    // (Bytes 0..16, base offset and append time, are the log entry CRC's job.)
    for at in [17, 24, 30, batch.len() - 1] {
        let mut bad = batch.clone();
        bad[at] ^= 0x04;
        assert!(verify_stored_batch(&bad).is_err(), "flip at {at}");
    }
}
