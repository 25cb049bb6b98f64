//! The client against a small in-process fake broker that answers produce
//! requests out of order, sends error frames, and drops connections.

use coremq_client::{Client, ErrorCode, Producer, Record};
use coremq_wire::frame::{self, FRAME_HEADER_LEN, KIND_ERROR};
use coremq_wire::{batch, fb, messages, Kind};
use flatbuffers::FlatBufferBuilder;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Mock {
    next_offset: AtomicU64,
    /// Produce requests answered so far; every 3rd connection's 5th request drops it.
    produced: AtomicU64,
}

fn metadata_body(port: u16) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let host = b.create_string("127.0.0.1");
    let shard = fb::ShardInfo::create(
        &mut b,
        &fb::ShardInfoArgs {
            id: 0,
            host: Some(host),
            port,
        },
    );
    let shards = b.create_vector(&[shard]);
    let name = b.create_string("t");
    let topic = fb::TopicInfo::create(
        &mut b,
        &fb::TopicInfoArgs {
            name: Some(name),
            partitions: 2,
            durability: None,
            retention_ms: -1,
            retention_bytes: -1,
        },
    );
    let topics = b.create_vector(&[topic]);
    let root = fb::MetadataResponse::create(
        &mut b,
        &fb::MetadataResponseArgs {
            shard_count: 1,
            shards: Some(shards),
            topics: Some(topics),
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

fn produce_body(mock: &Mock, request: &[u8]) -> Vec<u8> {
    let request =
        messages::parse::<fb::ProduceRequest>(request, &messages::verifier_options(1 << 26))
            .unwrap();
    let mut b = FlatBufferBuilder::new();
    let mut results = Vec::new();
    for part in request.partitions().unwrap() {
        let mut records = 0u64;
        for one in batch::split_batches(part.batches().bytes()) {
            records += batch::verify_batch(one.unwrap()).unwrap().record_count as u64;
        }
        let base = mock.next_offset.fetch_add(records, Ordering::SeqCst);
        let topic = b.create_string(part.topic());
        results.push(fb::PartitionProduceResult::create(
            &mut b,
            &fb::PartitionProduceResultArgs {
                topic: Some(topic),
                partition: part.partition(),
                error: 0,
                error_message: None,
                base_offset: base,
                last_offset: base + records - 1,
                append_time_ms: 1,
            },
        ));
    }
    let results = b.create_vector(&results);
    let root = fb::ProduceResponse::create(
        &mut b,
        &fb::ProduceResponseArgs {
            results: Some(results),
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

async fn serve(mock: Arc<Mock>, mut stream: TcpStream, port: u16, drop_after: Option<u64>) {
    let mut buf = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut answered = 0u64;
    loop {
        while let Ok(Some(header)) = frame::decode_frame(&buf, 1 << 26) {
            let body = buf[FRAME_HEADER_LEN..header.frame_len()].to_vec();
            buf.drain(..header.frame_len());
            let mut out = Vec::new();
            match Kind::from_u16(header.kind) {
                Some(Kind::Metadata) => {
                    frame::encode_frame(
                        &mut out,
                        Kind::Metadata.response(),
                        header.correlation_id,
                        &metadata_body(port),
                    );
                }
                Some(Kind::Produce) => {
                    mock.produced.fetch_add(1, Ordering::SeqCst);
                    let body = produce_body(&mock, &body);
                    frame::encode_frame(
                        &mut out,
                        Kind::Produce.response(),
                        header.correlation_id,
                        &body,
                    );
                    // Answer produce requests in pairs, the second first.
                    held.push(out);
                    if held.len() == 2 {
                        let second = held.pop().unwrap();
                        let first = held.pop().unwrap();
                        stream.write_all(&second).await.unwrap();
                        stream.write_all(&first).await.unwrap();
                    }
                    answered += 1;
                    if drop_after == Some(answered) {
                        return;
                    }
                    continue;
                }
                _ => {
                    let body = messages::error_response(ErrorCode::UnknownKind, "not in the mock");
                    frame::encode_frame(&mut out, KIND_ERROR, header.correlation_id, &body);
                }
            }
            stream.write_all(&out).await.unwrap();
        }
        // Flush a lone held response when the client has nothing more queued.
        let read = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                for out in held.drain(..) {
                    stream.write_all(&out).await.unwrap();
                }
            }
        }
    }
}

async fn start(drop_after: Option<u64>) -> (String, Arc<Mock>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mock = Arc::new(Mock {
        next_offset: AtomicU64::new(0),
        produced: AtomicU64::new(0),
    });
    let shared = mock.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((stream, _)) = listener.accept().await {
            connections += 1;
            // Only the first connection is dropped part-way, to test reconnects.
            let drop_after = if connections == 2 { drop_after } else { None };
            tokio::spawn(serve(shared.clone(), stream, port, drop_after));
        }
    });
    (format!("127.0.0.1:{port}"), mock)
}

fn one_batch(n: u32) -> Vec<u8> {
    let mut builder = coremq_wire::BatchBuilder::with_capacity(1024);
    for i in 0..n {
        builder.push(i as i64, None, b"payload", &[]).unwrap();
    }
    builder.finish()
}

#[tokio::test]
async fn pipelined_produces_match_out_of_order_responses() {
    let (addr, mock) = start(None).await;
    let client = Client::connect(&addr).await.unwrap();
    assert_eq!(client.metadata().shard_count, 1);
    let batches: Vec<Vec<u8>> = (1..=20).map(one_batch).collect();
    let futures = batches
        .iter()
        .map(|b| client.produce("t", 0, b))
        .collect::<Vec<_>>();
    let acks = futures::future::join_all(futures).await;
    // Each ack must describe its own batch: last - base + 1 == its record count.
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = ack.unwrap();
        assert_eq!(ack.last_offset - ack.base_offset + 1, i as u64 + 1);
    }
    assert_eq!(mock.produced.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn error_frames_become_typed_errors() {
    let (addr, _mock) = start(None).await;
    let client = Client::connect(&addr).await.unwrap();
    let error = coremq_client::Admin::new(client)
        .list_topics()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownKind), "{error}");
}

#[tokio::test]
async fn producer_batches_and_reports_offsets() {
    let (addr, _mock) = start(None).await;
    let client = Client::connect(&addr).await.unwrap();
    let producer = Producer::builder(client)
        .linger(Duration::from_millis(2))
        .batch_bytes(1024)
        .build();
    let values: Vec<String> = (0..200).map(|i| format!("value-{i}")).collect();
    let sends = values
        .iter()
        .map(|v| producer.send(Record::new("t", v.as_bytes()).key(b"same-key")))
        .collect::<Vec<_>>();
    let results = futures::future::join_all(sends).await;
    let mut offsets: Vec<u64> = results
        .iter()
        .map(|r| {
            let (partition, offset) = r.as_ref().unwrap();
            assert_eq!(*partition, coremq_wire::partition_for_key(b"same-key", 2));
            *offset
        })
        .collect();
    let sorted = {
        let mut s = offsets.clone();
        s.sort();
        s
    };
    assert_eq!(offsets, sorted, "same key: offsets in send order");
    offsets.dedup();
    assert_eq!(offsets.len(), 200);
    producer.send_oneway(Record::new("t", b"x")).await.unwrap();
    producer.flush().await.unwrap();
    let (_, offset) = producer
        .send_and_wait(Record::new("t", b"y").partition(1))
        .await
        .unwrap();
    assert_eq!(offset, 201);
    let unknown = producer.send(Record::new("nope", b"x")).await.unwrap_err();
    assert!(
        matches!(unknown, coremq_client::Error::UnknownTopic(_)),
        "{unknown}"
    );
}

#[tokio::test]
async fn dropped_connection_fails_pending_requests_then_reconnects() {
    // Connection 1 is the metadata bootstrap; connection 2 (the shard's) drops
    // after answering 3 produce requests.
    let (addr, _mock) = start(Some(3)).await;
    let client = Client::connect(&addr).await.unwrap();
    let batch = one_batch(1);
    let mut failures = 0;
    for _ in 0..6 {
        if client.produce("t", 0, &batch).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures >= 1, "the drop must surface as an error");
    // A fresh connection works.
    client.produce("t", 0, &batch).await.unwrap();
}

#[tokio::test]
async fn a_lone_record_is_sent_after_linger() {
    let (addr, _mock) = start(None).await;
    let client = Client::connect(&addr).await.unwrap();
    let producer = Producer::builder(client)
        .linger(Duration::from_millis(5))
        .build();
    for _ in 0..3 {
        // Each send finds the flusher idle (nothing open): it must still go out.
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            producer.send(Record::new("t", b"alone").partition(0)),
        )
        .await;
        assert!(matches!(sent, Ok(Ok(_))), "{sent:?}");
    }
}

#[tokio::test]
async fn backpressure_waits_for_acks_and_keeps_order() {
    let (addr, _mock) = start(None).await;
    let client = Client::connect(&addr).await.unwrap();
    // Room for about 8 records: most sends wait for earlier acks.
    let producer = Producer::builder(client)
        .batch_bytes(512)
        .max_in_flight_bytes(8 * 100)
        .build();
    let value = [7u8; 64];
    let sends = (0..2000)
        .map(|_| producer.send(Record::new("t", &value).partition(1)))
        .collect::<Vec<_>>();
    let offsets: Vec<u64> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().1)
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in send order");
}
