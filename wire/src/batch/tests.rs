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
