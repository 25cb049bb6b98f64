//! An in-memory stand-in for the CoreMQ broker, for developing and profiling
//! clients without the real one: same frames, same FlatBuffers envelopes,
//! metadata with per-shard ports, produce (batches verified, offsets
//! assigned), fetch with long polling, list offsets, topics, empty stats.
//! Nothing is durable. `--discard` acks produce without storing (to measure
//! the client side alone).
//!
//! `cargo run --release -p coremq-client --example mock_broker -- 127.0.0.1:9092 2 [--discard]`

use bytes::Bytes;
use coremq_wire::frame::{self, FRAME_HEADER_LEN, KIND_ERROR};
use coremq_wire::{batch, fb, messages, ErrorCode, Kind};
use flatbuffers::FlatBufferBuilder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Default)]
struct Partition {
    batches: Vec<(u64, Bytes)>,
    next_offset: u64,
}

struct Broker {
    host: String,
    port: u16,
    shards: u16,
    discard: bool,
    topics: Mutex<HashMap<String, u32>>,
    partitions: Mutex<HashMap<(String, u32), Partition>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let shards: u16 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let discard = args.iter().any(|a| a == "--discard");
    let main = TcpListener::bind(&addr).await?;
    let local = main.local_addr()?;
    let broker = Arc::new(Broker {
        host: local.ip().to_string(),
        port: local.port(),
        shards,
        discard,
        topics: Mutex::new(HashMap::new()),
        partitions: Mutex::new(HashMap::new()),
    });
    println!("mock broker on {local} with {shards} shard ports (discard: {discard})");
    for shard in 0..shards {
        let listener = TcpListener::bind((local.ip(), local.port() + 1 + shard)).await?;
        tokio::spawn(accept(listener, broker.clone()));
    }
    accept(main, broker).await;
    Ok(())
}

async fn accept(listener: TcpListener, broker: Arc<Broker>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, broker.clone()));
    }
}

async fn serve(stream: TcpStream, broker: Arc<Broker>) {
    let (mut read, mut write) = stream.into_split();
    let (out, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = bytes::BytesMut::with_capacity(1 << 20);
    loop {
        while let Ok(Some(header)) = frame::decode_frame(&buffer, 64 << 20) {
            let frame = buffer.split_to(header.frame_len()).freeze();
            let body = frame.slice(FRAME_HEADER_LEN..);
            let broker = broker.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let (kind, body) = handle(&broker, header.kind, body).await;
                let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
                frame::encode_frame(&mut frame, kind, header.correlation_id, &body);
                let _ = out.send(frame);
            });
        }
        buffer.reserve(1 << 20);
        match read.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn error(code: ErrorCode, message: &str) -> (u16, Vec<u8>) {
    (KIND_ERROR, messages::error_response(code, message))
}

async fn handle(broker: &Broker, kind: u16, body: Bytes) -> (u16, Vec<u8>) {
    let options = messages::verifier_options(64 << 20);
    let Some(kind) = Kind::from_u16(kind) else {
        return error(ErrorCode::UnknownKind, "unknown kind");
    };
    let body = match kind {
        Kind::Metadata => Some(metadata(broker)),
        Kind::CreateTopic => messages::parse::<fb::CreateTopicRequest>(&body, &options)
            .ok()
            .map(|r| {
                let exists = {
                    let mut topics = broker.topics.lock().unwrap();
                    let exists = topics.contains_key(r.name());
                    topics
                        .entry(r.name().to_string())
                        .or_insert(r.partitions().max(1));
                    exists
                };
                let code = if exists {
                    ErrorCode::TopicAlreadyExists
                } else {
                    ErrorCode::None
                };
                let mut b = FlatBufferBuilder::new();
                let name = b.create_string(r.name());
                let root = fb::TopicResult::create(
                    &mut b,
                    &fb::TopicResultArgs {
                        name: Some(name),
                        error: code.as_u16(),
                        error_message: None,
                    },
                );
                b.finish(root, None);
                b.finished_data().to_vec()
            }),
        Kind::Produce => messages::parse::<fb::ProduceRequest>(&body, &options)
            .ok()
            .map(|r| produce(broker, r)),
        Kind::Fetch => {
            let Ok(request) = messages::parse::<fb::FetchRequest>(&body, &options) else {
                return error(ErrorCode::InvalidRequest, "bad fetch");
            };
            let wanted: Vec<(String, u32, u64, u32)> = request
                .partitions()
                .map(|p| {
                    p.iter()
                        .map(|p| {
                            (
                                p.topic().to_string(),
                                p.partition(),
                                p.offset(),
                                p.max_bytes(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms() as u64);
            loop {
                let available = {
                    let partitions = broker.partitions.lock().unwrap();
                    wanted.iter().any(|(t, p, o, _)| {
                        partitions
                            .get(&(t.clone(), *p))
                            .is_some_and(|part| part.next_offset > *o)
                    })
                };
                if available || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Some(fetch(broker, &wanted))
        }
        Kind::ListOffsets => messages::parse::<fb::ListOffsetsRequest>(&body, &options)
            .ok()
            .map(|r| {
                let partitions = broker.partitions.lock().unwrap();
                let mut b = FlatBufferBuilder::new();
                let mut results = Vec::new();
                for p in r.partitions().iter().flatten() {
                    let next = partitions
                        .get(&(p.topic().to_string(), p.partition()))
                        .map_or(0, |part| part.next_offset);
                    let offset = if p.spec() == fb::OffsetSpec::Earliest {
                        0
                    } else {
                        next
                    };
                    let topic = b.create_string(p.topic());
                    results.push(fb::ListOffsetsPartitionResult::create(
                        &mut b,
                        &fb::ListOffsetsPartitionResultArgs {
                            topic: Some(topic),
                            partition: p.partition(),
                            error: 0,
                            error_message: None,
                            offset,
                        },
                    ));
                }
                let results = b.create_vector(&results);
                let root = fb::ListOffsetsResponse::create(
                    &mut b,
                    &fb::ListOffsetsResponseArgs {
                        results: Some(results),
                    },
                );
                b.finish(root, None);
                b.finished_data().to_vec()
            }),
        Kind::Stats => {
            let mut b = FlatBufferBuilder::new();
            let root = fb::StatsResponse::create(&mut b, &fb::StatsResponseArgs { shards: None });
            b.finish(root, None);
            Some(b.finished_data().to_vec())
        }
        Kind::DeleteTopic | Kind::ListTopics => None,
    };
    match body {
        Some(body) => (kind.response(), body),
        None => error(ErrorCode::InvalidRequest, "not supported by the mock"),
    }
}

fn metadata(broker: &Broker) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let shards: Vec<_> = (0..broker.shards)
        .map(|id| {
            let host = b.create_string(&broker.host);
            fb::ShardInfo::create(
                &mut b,
                &fb::ShardInfoArgs {
                    id,
                    host: Some(host),
                    port: broker.port + 1 + id,
                },
            )
        })
        .collect();
    let shards = b.create_vector(&shards);
    let topics: Vec<(String, u32)> = broker
        .topics
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let topics: Vec<_> = topics
        .iter()
        .map(|(name, partitions)| {
            let name = b.create_string(name);
            fb::TopicInfo::create(
                &mut b,
                &fb::TopicInfoArgs {
                    name: Some(name),
                    partitions: *partitions,
                    durability: None,
                    retention_ms: -1,
                    retention_bytes: -1,
                },
            )
        })
        .collect();
    let topics = b.create_vector(&topics);
    let root = fb::MetadataResponse::create(
        &mut b,
        &fb::MetadataResponseArgs {
            shard_count: broker.shards,
            shards: Some(shards),
            topics: Some(topics),
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

fn produce(broker: &Broker, request: fb::ProduceRequest<'_>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let mut results = Vec::new();
    for part in request.partitions().iter().flatten() {
        let key = (part.topic().to_string(), part.partition());
        let known = broker
            .topics
            .lock()
            .unwrap()
            .get(part.topic())
            .is_some_and(|n| part.partition() < *n);
        let mut code = if known {
            ErrorCode::None
        } else {
            ErrorCode::UnknownPartition
        };
        let mut batches = Vec::new();
        for one in batch::split_batches(part.batches().bytes()) {
            match one.map_err(|_| ()).and_then(|bytes| {
                batch::verify_batch(bytes)
                    .map(|h| (h, bytes))
                    .map_err(|_| ())
            }) {
                Ok((header, bytes)) => batches.push((header.record_count as u64, bytes)),
                Err(()) => code = ErrorCode::CorruptBatch,
            }
        }
        let (mut base, mut last) = (0, 0);
        if code == ErrorCode::None {
            let mut partitions = broker.partitions.lock().unwrap();
            let partition = partitions.entry(key).or_default();
            base = partition.next_offset;
            for (count, bytes) in batches {
                if !broker.discard {
                    let mut copy = bytes.to_vec();
                    batch::set_broker_fields(&mut copy, partition.next_offset, 1);
                    partition
                        .batches
                        .push((partition.next_offset, Bytes::from(copy)));
                }
                partition.next_offset += count;
            }
            last = partition.next_offset - 1;
        }
        let topic = b.create_string(part.topic());
        results.push(fb::PartitionProduceResult::create(
            &mut b,
            &fb::PartitionProduceResultArgs {
                topic: Some(topic),
                partition: part.partition(),
                error: code.as_u16(),
                error_message: None,
                base_offset: base,
                last_offset: last,
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

fn fetch(broker: &Broker, wanted: &[(String, u32, u64, u32)]) -> Vec<u8> {
    let partitions = broker.partitions.lock().unwrap();
    let mut b = FlatBufferBuilder::new();
    let mut results = Vec::new();
    for (topic, partition, offset, max_bytes) in wanted {
        let part = partitions.get(&(topic.clone(), *partition));
        let high = part.map_or(0, |p| p.next_offset);
        let mut data = Vec::new();
        let mut code = ErrorCode::None;
        if *offset > high {
            code = ErrorCode::OffsetOutOfRange;
        } else if let Some(part) = part {
            let start = part.batches.partition_point(|(base, bytes)| {
                let count = batch::BatchHeader::parse(bytes).map_or(0, |h| h.record_count as u64);
                base + count <= *offset
            });
            for (_, bytes) in &part.batches[start..] {
                if !data.is_empty() && data.len() + bytes.len() > *max_bytes as usize {
                    break;
                }
                data.extend_from_slice(bytes);
            }
        }
        let records = b.create_vector(&data);
        let topic = b.create_string(topic);
        results.push(fb::FetchPartitionResult::create(
            &mut b,
            &fb::FetchPartitionResultArgs {
                topic: Some(topic),
                partition: *partition,
                error: code.as_u16(),
                error_message: None,
                high_watermark: high,
                log_start_offset: 0,
                records: Some(records),
                next_offset: 0,
            },
        ));
    }
    let results = b.create_vector(&results);
    let root = fb::FetchResponse::create(
        &mut b,
        &fb::FetchResponseArgs {
            results: Some(results),
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}
