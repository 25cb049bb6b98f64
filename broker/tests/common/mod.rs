//! Test harness: starts the real `coremq` binary on 127.0.0.1 with a temporary
//! data directory, and talks to it over a raw, synchronous connection built
//! only on coremq-wire, so tests can send exactly the bytes they mean
//! (including bad ones).

#![allow(dead_code)]

use coremq_wire::batch::{records_from, BatchBuilder};
use coremq_wire::fb;
use coremq_wire::frame::{decode_frame, encode_frame, Kind, FRAME_HEADER_LEN, KIND_ERROR};
use coremq_wire::messages::{parse, verifier_options};
use coremq_wire::ErrorCode;
use flatbuffers::FlatBufferBuilder;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub main_address: SocketAddr,
    pub shard_ports: Vec<u16>,
    pub shards: u16,
}

/// A data directory on the repository's file system (ext4 here), never tmpfs:
/// O_DIRECT needs a real file system.
pub fn temp_data_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).expect("target tmp dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

impl Broker {
    pub fn start(shards: u16, extra: &[&str]) -> Broker {
        let temp = temp_data_dir();
        let dir = temp.path().to_path_buf();
        let mut broker = Broker::start_in(&dir, shards, extra);
        broker._temp = Some(temp);
        broker
    }

    /// Starts on an existing data directory (for restart tests).
    pub fn start_in(dir: &Path, shards: u16, extra: &[&str]) -> Broker {
        Broker::start_from(None, dir, shards, extra)
    }

    /// Starts with `cwd` as the working directory (`dir` may be relative to it).
    pub fn start_from(cwd: Option<&Path>, dir: &Path, shards: u16, extra: &[&str]) -> Broker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coremq"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                &shards.to_string(),
                "--segment-bytes",
                "8388608",
            ])
            .args([
                "--max-batch-bytes",
                "1048576",
                "--max-frame-bytes",
                "4194304",
            ])
            .args(extra)
            .env("COREMQ_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn coremq");
        let stdout = child.stdout.take().expect("stdout");
        let coremq_client::ReadyLine {
            main_address,
            shard_ports,
        } = coremq_client::ReadyLine::read(stdout).expect("the broker's ready line");
        Broker {
            child: Some(child),
            data_dir: dir.to_path_buf(),
            _temp: None,
            main_address,
            shard_ports,
            shards,
        }
    }

    pub fn shard_address(&self, shard: u16) -> SocketAddr {
        SocketAddr::new(self.main_address.ip(), self.shard_ports[shard as usize])
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.main_address)
    }

    pub fn connect_shard(&self, shard: u16) -> Conn {
        Conn::connect(self.shard_address(shard))
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running broker");
        unsafe_free_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Conn {
    pub stream: TcpStream,
    next_id: u64,
}

pub struct Frame {
    pub kind: u16,
    pub correlation_id: u64,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn error(&self) -> Option<(ErrorCode, String)> {
        if self.kind != KIND_ERROR {
            return None;
        }
        let e =
            parse::<fb::ErrorResponse>(&self.body, &verifier_options(1 << 26)).expect("error body");
        Some((
            ErrorCode::from_u16(e.code()),
            e.message().unwrap_or("").to_string(),
        ))
    }
}

impl Conn {
    pub fn connect(address: SocketAddr) -> Conn {
        let stream = TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn { stream, next_id: 1 }
    }

    pub fn send(&mut self, kind: u16, body: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = Vec::new();
        encode_frame(&mut frame, kind, id, body);
        self.stream.write_all(&frame).expect("write");
        id
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one whole frame; None when the broker closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut frame = header.to_vec();
        frame.resize(4 + length, 0);
        self.stream
            .read_exact(&mut frame[FRAME_HEADER_LEN..])
            .ok()?;
        let parsed = decode_frame(&frame, u32::MAX)
            .expect("valid frame")
            .expect("whole frame");
        Some(Frame {
            kind: parsed.kind,
            correlation_id: parsed.correlation_id,
            body: frame[FRAME_HEADER_LEN..].to_vec(),
        })
    }

    /// `recv` gives up (returns `None`) after `timeout` without a frame.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    pub fn call(&mut self, kind: Kind, body: &[u8]) -> Frame {
        let id = self.send(kind.request(), body);
        let frame = self.recv().expect("response");
        assert_eq!(frame.correlation_id, id);
        frame
    }

    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        durability: Option<&str>,
    ) -> ErrorCode {
        self.create_topic_with(name, partitions, durability, None)
    }

    /// `create_topic` with size retention per partition.
    pub fn create_topic_with(
        &mut self,
        name: &str,
        partitions: u32,
        durability: Option<&str>,
        retention_bytes: Option<i64>,
    ) -> ErrorCode {
        let mut b = FlatBufferBuilder::new();
        let n = b.create_string(name);
        let d = durability.map(|d| b.create_string(d));
        let root = fb::CreateTopicRequest::create(
            &mut b,
            &fb::CreateTopicRequestArgs {
                name: Some(n),
                partitions,
                durability: d,
                retention_bytes: retention_bytes.unwrap_or(-1),
                ..Default::default()
            },
        );
        b.finish(root, None);
        let frame = self.call(Kind::CreateTopic, b.finished_data());
        assert_eq!(
            frame.kind,
            Kind::CreateTopic.response(),
            "{:?}",
            frame.error()
        );
        let r = parse::<fb::TopicResult>(&frame.body, &verifier_options(1 << 26))
            .expect("topic result");
        ErrorCode::from_u16(r.error())
    }

    pub fn metadata(&mut self) -> (u16, Vec<(String, u32)>) {
        let mut b = FlatBufferBuilder::new();
        let root = fb::MetadataRequest::create(&mut b, &fb::MetadataRequestArgs { topics: None });
        b.finish(root, None);
        let frame = self.call(Kind::Metadata, b.finished_data());
        let m = parse::<fb::MetadataResponse>(&frame.body, &verifier_options(1 << 26))
            .expect("metadata");
        let topics = m
            .topics()
            .map(|ts| {
                ts.iter()
                    .map(|t| (t.name().unwrap_or("").to_string(), t.partitions()))
                    .collect()
            })
            .unwrap_or_default();
        (m.shard_count(), topics)
    }

    /// Produces one batch; returns (error, base offset).
    pub fn produce(&mut self, topic: &str, partition: u32, batch: &[u8]) -> (ErrorCode, u64) {
        let frame = self.call(Kind::Produce, &produce_body(&[(topic, partition, batch)]));
        assert_eq!(frame.kind, Kind::Produce.response(), "{:?}", frame.error());
        let r = parse::<fb::ProduceResponse>(&frame.body, &verifier_options(1 << 26))
            .expect("produce response");
        let first = r.results().expect("results").get(0);
        (ErrorCode::from_u16(first.error()), first.base_offset())
    }

    /// Fetches; returns (error, high watermark, batches bytes).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait_ms: u32,
    ) -> (ErrorCode, u64, Vec<u8>) {
        let frame = self.call(
            Kind::Fetch,
            &fetch_body(topic, partition, offset, 1 << 20, max_wait_ms),
        );
        assert_eq!(frame.kind, Kind::Fetch.response(), "{:?}", frame.error());
        let r = parse::<fb::FetchResponse>(&frame.body, &verifier_options(1 << 26))
            .expect("fetch response");
        let first = r.results().expect("results").get(0);
        (
            ErrorCode::from_u16(first.error()),
            first.high_watermark(),
            first
                .records()
                .map(|v| v.bytes().to_vec())
                .unwrap_or_default(),
        )
    }

    /// The partition's first offset (retention moves it).
    pub fn log_start_offset(&mut self, topic: &str, partition: u32) -> u64 {
        let mut b = FlatBufferBuilder::new();
        let t = b.create_string(topic);
        let entry = fb::ListOffsetsPartition::create(
            &mut b,
            &fb::ListOffsetsPartitionArgs {
                topic: Some(t),
                partition,
                spec: fb::OffsetSpec::Earliest,
                timestamp_ms: 0,
            },
        );
        let partitions = b.create_vector(&[entry]);
        let root = fb::ListOffsetsRequest::create(
            &mut b,
            &fb::ListOffsetsRequestArgs {
                partitions: Some(partitions),
            },
        );
        b.finish(root, None);
        let frame = self.call(Kind::ListOffsets, b.finished_data());
        let r = parse::<fb::ListOffsetsResponse>(&frame.body, &verifier_options(1 << 26))
            .expect("list offsets response");
        let first = r.results().expect("results").get(0);
        assert_eq!(first.error(), 0, "{:?}", first.error_message());
        first.offset()
    }

    /// A stats counter, summed over every shard.
    pub fn counter(&mut self, name: &str) -> u64 {
        let mut b = FlatBufferBuilder::new();
        let root = fb::StatsRequest::create(&mut b, &fb::StatsRequestArgs { reset: false });
        b.finish(root, None);
        let frame = self.call(Kind::Stats, b.finished_data());
        let stats = parse::<fb::StatsResponse>(&frame.body, &verifier_options(1 << 26))
            .expect("stats response");
        stats
            .shards()
            .expect("shards")
            .iter()
            .flat_map(|s| s.counters().expect("counters"))
            .filter(|c| c.name() == Some(name))
            .map(|c| c.value())
            .sum()
    }

    /// The log start offset and every record from it to the high watermark,
    /// for a partition whose retention may still be moving its start: a
    /// read that the start overtook is retried from the new start.
    pub fn read_all_from_log_start(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> (u64, Vec<(u64, Vec<u8>)>) {
        loop {
            let start = self.log_start_offset(topic, partition);
            match self.try_read_all(topic, partition, start) {
                Ok(records) => return (start, records),
                Err(ErrorCode::OffsetOutOfRange)
                    if self.log_start_offset(topic, partition) > start => {}
                Err(error) => panic!("{topic}/{partition}: read failed with {error:?}"),
            }
        }
    }

    /// Every record value from `offset` to the high watermark.
    pub fn read_all(&mut self, topic: &str, partition: u32, offset: u64) -> Vec<(u64, Vec<u8>)> {
        match self.try_read_all(topic, partition, offset) {
            Ok(records) => records,
            Err(error) => panic!("{topic}/{partition}: read failed with {error:?}"),
        }
    }

    /// `read_all`, ending at the first fetch error.
    pub fn try_read_all(
        &mut self,
        topic: &str,
        partition: u32,
        mut offset: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, ErrorCode> {
        let mut out = Vec::new();
        loop {
            let (error, high_watermark, batches) = self.fetch(topic, partition, offset, 0);
            if error != ErrorCode::None {
                return Err(error);
            }
            for record in records_from(&batches, offset) {
                let record = record.expect("valid record");
                out.push((record.offset, record.value.to_vec()));
                offset = record.offset + 1;
            }
            if offset >= high_watermark {
                return Ok(out);
            }
        }
    }
}

pub fn produce_body(parts: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let entries: Vec<_> = parts
        .iter()
        .map(|(topic, partition, batch)| {
            let t = b.create_string(topic);
            let v = b.create_vector(batch);
            fb::PartitionBatches::create(
                &mut b,
                &fb::PartitionBatchesArgs {
                    topic: Some(t),
                    partition: *partition,
                    batches: Some(v),
                },
            )
        })
        .collect();
    let v = b.create_vector(&entries);
    let root = fb::ProduceRequest::create(
        &mut b,
        &fb::ProduceRequestArgs {
            partitions: Some(v),
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

pub fn fetch_body(
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: u32,
    max_wait_ms: u32,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let t = b.create_string(topic);
    let p = fb::FetchPartition::create(
        &mut b,
        &fb::FetchPartitionArgs {
            topic: Some(t),
            partition,
            offset,
            max_bytes,
        },
    );
    let v = b.create_vector(&[p]);
    let root = fb::FetchRequest::create(
        &mut b,
        &fb::FetchRequestArgs {
            partitions: Some(v),
            max_wait_ms,
            min_bytes: 1,
        },
    );
    b.finish(root, None);
    b.finished_data().to_vec()
}

/// A batch of `count` records whose values are `"{prefix}-{i}"`.
pub fn batch(prefix: &str, count: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(64 + count as usize * 64);
    for i in 0..count {
        builder
            .push(
                1_700_000_000_000 + i as i64,
                None,
                format!("{prefix}-{i}").as_bytes(),
                &[],
            )
            .expect("push");
    }
    builder.finish()
}

/// A partition of `topic` owned by `shard`.
pub fn partition_on_shard(topic: &str, partitions: u32, shard: u16, shards: u16) -> u32 {
    (0..partitions)
        .find(|p| coremq_wire::shard_for(topic, *p, shards) == shard)
        .expect("a partition on that shard")
}
