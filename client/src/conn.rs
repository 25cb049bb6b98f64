//! One TCP connection to one broker port: a writer task, a reader task and a
//! map of pending requests keyed by correlation id. Requests are pipelined;
//! responses may arrive in any order.
//!
//! Frames to send are built in place: a request body is a finished
//! `FlatBufferBuilder` collapsed into its vector, and the 16 header bytes go
//! into the free space in front of the body when there is room, so a 1 MiB
//! produce request is never copied between the builder and the socket.

use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use coremq_wire::frame::{self, FRAME_HEADER_LEN, KIND_ERROR};
use coremq_wire::{fb, messages, Kind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Largest response frame accepted (a fetch of many partitions can be large).
pub(crate) const MAX_RESPONSE_FRAME_BYTES: u32 = 512 * 1024 * 1024;
/// Frames queued for the writer task before `request` waits.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// A finished FlatBuffers body: the builder's vector and where the data
/// starts, optionally followed by a `tail` of bytes that belong to the body
/// but are sent from their own buffer (see `Client::start_produce_owned`).
pub struct Body {
    buffer: Vec<u8>,
    head: usize,
    tail: Option<Bytes>,
}

/// A frame as the writer sends it: header and FlatBuffers bytes, then an
/// optional tail written straight from the caller's buffer.
struct OutFrame {
    head: Bytes,
    tail: Option<Bytes>,
}

impl Body {
    pub fn from_builder(builder: flatbuffers::FlatBufferBuilder<'_>) -> Body {
        let (buffer, head) = builder.collapse();
        Body {
            buffer,
            head,
            tail: None,
        }
    }

    /// A body whose last bytes are `tail` (the builder's data must end where
    /// the tail begins: a byte vector whose length field is already patched).
    pub(crate) fn with_tail(buffer: Vec<u8>, head: usize, tail: Bytes) -> Body {
        Body {
            buffer,
            head,
            tail: Some(tail),
        }
    }

    pub fn len(&self) -> usize {
        self.buffer.len() - self.head + self.tail.as_ref().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded FlatBuffers body, as one vector (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = self.buffer[self.head..].to_vec();
        if let Some(tail) = &self.tail {
            out.extend_from_slice(tail);
        }
        out
    }

    /// The whole frame, reusing the space in front of the body for the header.
    fn into_frame(self, kind: u16, correlation_id: u64) -> OutFrame {
        let header = frame::encode_header(kind, correlation_id, self.len());
        let head = if self.head >= FRAME_HEADER_LEN {
            let start = self.head - FRAME_HEADER_LEN;
            let mut buffer = self.buffer;
            buffer[start..self.head].copy_from_slice(&header);
            Bytes::from(buffer).slice(start..)
        } else {
            let mut out = Vec::with_capacity(FRAME_HEADER_LEN + self.buffer.len() - self.head);
            out.extend_from_slice(&header);
            out.extend_from_slice(&self.buffer[self.head..]);
            Bytes::from(out)
        };
        OutFrame {
            head,
            tail: self.tail,
        }
    }
}

type Waiter = oneshot::Sender<Result<(u16, Bytes)>>;

struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set once the connection is dead; later requests fail at once.
    closed: Option<Error>,
}

struct Shared {
    addr: String,
    pending: Mutex<Pending>,
    dead: AtomicBool,
}

impl Shared {
    fn fail_all(&self, error: Error) {
        self.dead.store(true, Ordering::Release);
        let waiters = {
            let mut pending = lock(&self.pending);
            if pending.closed.is_none() {
                pending.closed = Some(error.clone());
            }
            std::mem::take(&mut pending.waiters)
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts and removes), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pipelined connection. Cheap to share behind an `Arc`; dropping the last
/// handle stops the writer, which closes the socket.
pub struct Connection {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    writer: mpsc::Sender<OutFrame>,
}

impl Connection {
    pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<Connection> {
        let connect_error = |error: std::io::Error| Error::Connect {
            addr: addr.to_string(),
            error: Arc::new(error),
        };
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(connect_error(error)),
            Err(_) => {
                return Err(connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        stream.set_nodelay(true).map_err(connect_error)?;
        let (read_half, write_half) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: Mutex::new(Pending {
                waiters: HashMap::new(),
                closed: None,
            }),
            dead: AtomicBool::new(false),
        });
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        tokio::spawn(write_loop(write_half, queue, shared.clone()));
        tokio::spawn(read_loop(read_half, shared.clone()));
        tracing::debug!(addr, "connected");
        Ok(Connection {
            shared,
            next_id: AtomicU64::new(1),
            writer,
        })
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// False once the connection failed; the client then opens a new one.
    pub fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Sends one request and waits for its response body. A response of kind
    /// `KIND_ERROR` becomes [`Error::Broker`].
    pub async fn request(&self, kind: Kind, body: Body, timeout: Duration) -> Result<Bytes> {
        self.send(kind, body, timeout).await?.wait().await
    }

    /// Queues one request for the writer and returns the handle to its
    /// response. Requests queued by one task go out in the order of their
    /// `send` calls, which is what keeps one partition's batches in order.
    pub async fn send(&self, kind: Kind, body: Body, timeout: Duration) -> Result<PendingResponse> {
        let correlation_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = body.into_frame(kind.request(), correlation_id);
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if let Some(error) = &pending.closed {
                return Err(error.clone());
            }
            pending.waiters.insert(correlation_id, sender);
        }
        if self.writer.send(frame).await.is_err() {
            lock(&self.shared.pending).waiters.remove(&correlation_id);
            return Err(closed_error(&self.shared, "writer stopped"));
        }
        Ok(PendingResponse {
            shared: self.shared.clone(),
            correlation_id,
            kind,
            receiver,
            timeout,
        })
    }
}

fn closed_error(shared: &Shared, reason: &str) -> Error {
    lock(&shared.pending)
        .closed
        .clone()
        .unwrap_or_else(|| Error::ConnectionClosed {
            addr: shared.addr.clone(),
            reason: reason.to_string(),
        })
}

/// The response to a request already queued on a connection.
pub struct PendingResponse {
    shared: Arc<Shared>,
    correlation_id: u64,
    kind: Kind,
    receiver: oneshot::Receiver<Result<(u16, Bytes)>>,
    timeout: Duration,
}

impl PendingResponse {
    /// Waits for the response body (up to the request's timeout).
    pub async fn wait(self) -> Result<Bytes> {
        let kind = self.kind;
        let (response_kind, body) = match tokio::time::timeout(self.timeout, self.receiver).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(closed_error(&self.shared, "response channel dropped")),
            Err(_) => {
                lock(&self.shared.pending)
                    .waiters
                    .remove(&self.correlation_id);
                return Err(Error::Timeout {
                    kind: kind.name(),
                    addr: self.shared.addr.clone(),
                    after: self.timeout,
                });
            }
        };
        if response_kind == KIND_ERROR {
            let options = messages::verifier_options(MAX_RESPONSE_FRAME_BYTES);
            let error = messages::parse::<fb::ErrorResponse>(&body, &options)
                .map_err(|e| Error::Protocol(format!("bad ErrorResponse: {e}")))?;
            return Err(Error::broker(error.code(), error.message()));
        }
        if response_kind != kind.response() {
            return Err(Error::Protocol(format!(
                "response kind {response_kind:#06x} to a {} request",
                kind.name()
            )));
        }
        Ok(body)
    }
}

async fn write_loop(
    write_half: OwnedWriteHalf,
    mut queue: mpsc::Receiver<OutFrame>,
    shared: Arc<Shared>,
) {
    // Small frames are coalesced in the buffer; a frame larger than the
    // buffer goes straight to the socket (BufWriter bypasses itself).
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let result: std::io::Result<()> = async {
        while let Some(frame) = queue.recv().await {
            write_frame(&mut writer, &frame).await?;
            while let Ok(frame) = queue.try_recv() {
                write_frame(&mut writer, &frame).await?;
            }
            writer.flush().await?;
        }
        writer.shutdown().await
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(addr = %shared.addr, %error, "write failed");
        shared.fail_all(Error::ConnectionClosed {
            addr: shared.addr.clone(),
            reason: format!("write failed: {error}"),
        });
    }
}

async fn write_frame(
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: &OutFrame,
) -> std::io::Result<()> {
    writer.write_all(&frame.head).await?;
    if let Some(tail) = &frame.tail {
        writer.write_all(tail).await?;
    }
    Ok(())
}

async fn read_loop(mut read_half: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buffer = BytesMut::with_capacity(256 * 1024);
    let reason = loop {
        match frame::decode_frame(&buffer, MAX_RESPONSE_FRAME_BYTES) {
            Ok(Some(header)) => {
                let frame = buffer.split_to(header.frame_len()).freeze();
                let body = frame.slice(FRAME_HEADER_LEN..);
                let waiter = lock(&shared.pending).waiters.remove(&header.correlation_id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(Ok((header.kind, body)));
                    }
                    None => tracing::debug!(
                        addr = %shared.addr,
                        correlation_id = header.correlation_id,
                        "response for an abandoned request"
                    ),
                }
                continue;
            }
            Ok(None) => {
                // Make room for the whole frame at once when its length is known.
                if buffer.len() >= 4 {
                    let length = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
                    let need = (length as usize + 4).saturating_sub(buffer.len());
                    buffer.reserve(need.max(64 * 1024));
                } else {
                    buffer.reserve(64 * 1024);
                }
            }
            Err(error) => break format!("framing lost: {error}"),
        }
        match read_half.read_buf(&mut buffer).await {
            Ok(0) => break "closed by the broker".to_string(),
            Ok(_) => {}
            Err(error) => break format!("read failed: {error}"),
        }
    };
    tracing::debug!(addr = %shared.addr, %reason, "connection closed");
    shared.fail_all(Error::ConnectionClosed {
        addr: shared.addr.clone(),
        reason,
    });
}
