//! One client connection: a read loop that frames requests (cancel-safe: a
//! frame is taken from the buffer only once it is whole) and runs each as its
//! own task, so pipelined requests proceed concurrently (that is what lets
//! group commit batch them), and a writer task that coalesces responses.
//! At most `max_in_flight_per_connection` requests are in flight at once, a
//! request counting from when it is read until its response is written to
//! the socket, and they hold at most `max_connection_buffer_bytes` (with
//! every connection of the shard together under `max_shard_buffer_bytes`,
//! see [`crate::budget`]); beyond either the broker stops reading from the
//! socket (TCP backpressure), so a client that pipelines requests and never
//! reads its responses holds a bounded amount of broker memory.
//!
//! Timeouts: a connection with nothing received and nothing in flight for
//! `idle_timeout` is closed, and so is one whose partial frame is not complete
//! `read_timeout` after the frame started (a slow client cannot hold a
//! connection with a trickle of bytes). Socket reads are cancel-safe (glommio
//! polls readiness, then receives), so a read raced against a timer loses nothing.

use crate::budget::{ByteBudget, Charge};
use crate::context::ShardContext;
use crate::dispatch::{dispatch, estimate_response_bytes, Response, RESPONSE_OVERHEAD_BYTES};
use crate::mesh::RequestError;
use crate::metrics::bump;
use crate::read_buffer::{ReadBuffer, MIN_CHUNK_BYTES};
use coremq_wire::frame::{decode_frame, FrameError, FRAME_HEADER_LEN};
use coremq_wire::messages::verifier_options;
use coremq_wire::ErrorCode;
use futures::channel::mpsc;
use futures::future::{select, Either};
use futures::StreamExt;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes read per socket read, at least.
const READ_CHUNK: usize = 256 * 1024;
/// Responses smaller than this are copied into one write; larger bodies are written directly.
const COALESCE_BYTES: usize = 64 * 1024;
/// How long a connection receives nothing before its read buffer is freed.
const SHRINK_AFTER: Duration = Duration::from_millis(500);
/// The write buffer an idle connection may keep; a larger one is freed.
const IDLE_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// A response on its way to the socket, with what it holds until written.
struct Outgoing {
    response: Response,
    _charge: Option<Charge>,
    _permit: Option<StaticPermit>,
}

pub async fn serve(ctx: Rc<ShardContext>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    // A client that takes no response bytes for the idle timeout is dropped.
    let _ = stream.set_write_timeout(Some(ctx.config.idle_timeout));
    bump(&ctx.metrics.connections, 1);
    bump(&ctx.metrics.connections_total, 1);
    let (mut reader, writer) = futures_lite::io::split(stream);
    // Unbounded as a channel, bounded by what its entries hold: a count
    // permit and a byte charge each, released once written.
    let (responses, outbox) = mpsc::unbounded::<Outgoing>();
    // Set by the writer when the client has not taken a response for the idle
    // timeout (or the socket failed): the reader stops too.
    let writer_failed = Rc::new(Cell::new(false));
    let writer_task = glommio::spawn_local(write_loop(
        ctx.clone(),
        writer,
        outbox,
        writer_failed.clone(),
    ));
    let permits = Rc::new(Semaphore::new(
        ctx.config.max_in_flight_per_connection as u64,
    ));
    let options = Rc::new(verifier_options(ctx.config.max_frame_bytes));
    let budget = Rc::new(ByteBudget::new(ctx.config.max_connection_buffer_bytes));
    let mut buffer = ReadBuffer::new(READ_CHUNK);
    let max_in_flight = ctx.config.max_in_flight_per_connection as u64;
    // When the frame now at the front of the buffer started arriving.
    let mut partial_since: Option<Instant> = None;
    let mut last_received = Instant::now();

    let outcome: Result<(), String> = async {
        loop {
            loop {
                if writer_failed.get() {
                    return Err("the client stopped reading responses".to_string());
                }
                let header = match decode_frame(buffer.data(), ctx.config.max_frame_bytes) {
                    Ok(Some(header)) => header,
                    Ok(None) => break,
                    Err(error) => {
                        // Framing is lost: say why (best effort) and close.
                        let correlation_id = correlation_id_of(buffer.data());
                        let code = match error {
                            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                            _ => ErrorCode::MalformedFrame,
                        };
                        let _ = responses.unbounded_send(Outgoing {
                            response: Response::error(
                                correlation_id,
                                &RequestError::new(code, error.to_string()),
                            ),
                            _charge: None,
                            _permit: None,
                        });
                        return Err(error.to_string());
                    }
                };
                let frame = buffer.take(header.frame_len());
                partial_since = None;
                let permit = match permits.try_acquire_static_permit(1) {
                    Ok(permit) => permit,
                    Err(_) => {
                        bump(&ctx.metrics.reads_paused, 1);
                        permits
                            .acquire_static_permit(1)
                            .await
                            .map_err(|e| e.to_string())?
                    }
                };
                let estimate = frame.len() as u64
                    + estimate_response_bytes(
                        header.kind,
                        &frame[FRAME_HEADER_LEN..],
                        &options,
                        ctx.config.max_frame_bytes,
                    );
                let (mut charge, paused) =
                    Charge::reserve(&budget, &ctx.buffer_budget, estimate).await;
                if paused {
                    bump(&ctx.metrics.reads_paused, 1);
                }
                let ctx = ctx.clone();
                let responses = responses.clone();
                let options = options.clone();
                bump(&ctx.metrics.requests, 1);
                ctx.metrics.queue_depth.record(ctx.metrics.in_flight.get());
                bump(&ctx.metrics.in_flight, 1);
                glommio::spawn_local(async move {
                    let response =
                        dispatch(&ctx, header, &frame[FRAME_HEADER_LEN..], &options).await;
                    ctx.metrics.in_flight.set(ctx.metrics.in_flight.get() - 1);
                    drop(frame);
                    // From here on the charge covers the response alone.
                    charge.resize(
                        (FRAME_HEADER_LEN + response.body.bytes().len()) as u64
                            + RESPONSE_OVERHEAD_BYTES,
                    );
                    // The client may be gone; its request still completed.
                    let _ = responses.unbounded_send(Outgoing {
                        response,
                        _charge: Some(charge),
                        _permit: Some(permit),
                    });
                })
                .detach();
            }
            if buffer.data().is_empty() {
                partial_since = None;
            } else if partial_since.is_none() {
                partial_since = Some(last_received);
            }
            // Bytes already waiting are read without arming a timer.
            let ready = futures::FutureExt::now_or_never(reader.read(buffer.spare()));
            let read = match ready {
                Some(read) => read,
                None => {
                    let (deadline, why) = match partial_since {
                        Some(since) => {
                            (since + ctx.config.read_timeout, "a frame stayed incomplete")
                        }
                        None => (last_received + ctx.config.idle_timeout, "idle"),
                    };
                    // A connection quiet for a moment gives its read buffer back first.
                    let shrink_at = (buffer.held_bytes() > 2 * MIN_CHUNK_BYTES
                        && partial_since.is_none())
                    .then(|| last_received + SHRINK_AFTER)
                    .filter(|at| *at < deadline);
                    let wake = shrink_at.unwrap_or(deadline);
                    let timer =
                        glommio::timer::sleep(wake.saturating_duration_since(Instant::now()));
                    futures::pin_mut!(timer);
                    match select(reader.read(buffer.spare()), timer).await {
                        Either::Left((read, _)) => read,
                        Either::Right(_) if shrink_at.is_some() => {
                            buffer.shrink();
                            continue;
                        }
                        Either::Right(_) => {
                            if partial_since.is_none() && permits.available() < max_in_flight {
                                // Not idle: the client waits for answers (a long poll, say).
                                last_received = Instant::now();
                                continue;
                            }
                            bump(&ctx.metrics.connections_timed_out, 1);
                            return Err(format!("{why} past its timeout"));
                        }
                    }
                }
            };
            last_received = Instant::now();
            match read {
                Ok(0) => {
                    if !buffer.data().is_empty() {
                        return Err(format!(
                            "connection closed mid-frame ({} bytes pending)",
                            buffer.data().len()
                        ));
                    }
                    return Ok(());
                }
                Ok(n) => buffer.advance(n),
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    .await;
    if let Err(reason) = outcome {
        tracing::debug!(?peer, %reason, "closing connection");
    }
    drop(responses);
    // The writer ends once every in-flight request has answered (they hold senders).
    writer_task.await;
    ctx.metrics
        .connections
        .set(ctx.metrics.connections.get() - 1);
}

fn correlation_id_of(buffer: &[u8]) -> u64 {
    if buffer.len() >= FRAME_HEADER_LEN {
        let mut id = [0u8; 8];
        id.copy_from_slice(&buffer[8..16]);
        u64::from_le_bytes(id)
    } else {
        0
    }
}

/// Writes `bytes`; fails if the socket fails or takes none of them for the
/// stream's write timeout (a client that stopped reading; counted). glommio
/// arms that timer only when a write has to wait.
async fn write_within(
    ctx: &ShardContext,
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    bytes: &[u8],
) -> Result<(), ()> {
    match writer.write_all(bytes).await {
        Ok(()) => Ok(()),
        Err(error) => {
            if error.kind() == std::io::ErrorKind::TimedOut {
                bump(&ctx.metrics.connections_timed_out, 1);
            }
            Err(())
        }
    }
}

async fn write_loop(
    ctx: Rc<ShardContext>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    writer_failed: Rc<Cell<bool>>,
) {
    let mut pending: Vec<u8> = Vec::new();
    // Written (or copied into `pending`) but not yet sent: released after the write.
    let mut sent: Vec<Outgoing> = Vec::new();
    loop {
        if pending.capacity() > IDLE_WRITE_BUFFER_BYTES {
            // Idle connections keep no large buffer (they are many).
            pending = Vec::new();
        }
        let Some(first) = outbox.next().await else {
            break;
        };
        if writer_failed.get() {
            continue; // drain so in-flight requests can finish and drop their senders
        }
        let started = Instant::now();
        let mut next = Some(first);
        let mut broken = false;
        while let Some(outgoing) = next.take() {
            let response = &outgoing.response;
            pending.extend_from_slice(&response.header);
            let body = response.body.bytes();
            if body.len() >= COALESCE_BYTES {
                if write_within(&ctx, &mut writer, &pending).await.is_err()
                    || write_within(&ctx, &mut writer, body).await.is_err()
                {
                    broken = true;
                    break;
                }
                pending.clear();
            } else {
                pending.extend_from_slice(body);
            }
            sent.push(outgoing);
            if pending.len() < COALESCE_BYTES {
                next = outbox.try_recv().ok();
            }
        }
        if !broken
            && !pending.is_empty()
            && write_within(&ctx, &mut writer, &pending).await.is_err()
        {
            broken = true;
        }
        if broken {
            writer_failed.set(true);
        }
        pending.clear();
        sent.clear();
        tracing::trace!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "responses written"
        );
    }
    let _ = writer.close().await;
}
