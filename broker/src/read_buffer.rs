//! A socket read buffer that hands out whole frames as `Bytes` without copying
//! them, and does not zero its free space before every read.
//!
//! `BytesMut` needs initialised bytes to read into. Zeroing the free space on
//! every read cost a memset as large as the data itself; here the buffer's
//! length covers its whole initialised area and `filled` says how much of it
//! holds received bytes, so memory is zeroed once, when it is first reserved.
//!
//! Connections are many and mostly idle, so the buffer starts small
//! (`MIN_CHUNK_BYTES`), doubles its read size each time a read fills all the
//! space offered (up to the chunk given at creation), and [`shrink`]
//! (Self::shrink) gives the memory back when the connection goes idle.

use bytes::{Bytes, BytesMut};

/// The first read size of a connection.
pub const MIN_CHUNK_BYTES: usize = 4 * 1024;

pub struct ReadBuffer {
    /// Initialised memory; `[..filled]` holds received bytes, the rest is spare.
    memory: BytesMut,
    filled: usize,
    /// Space reserved when the spare space runs low; grows with use.
    chunk: usize,
    max_chunk: usize,
    /// Length of the spare space last handed out.
    offered: usize,
}

impl ReadBuffer {
    pub fn new(max_chunk: usize) -> ReadBuffer {
        let max_chunk = max_chunk.max(MIN_CHUNK_BYTES);
        ReadBuffer {
            memory: BytesMut::new(),
            filled: 0,
            chunk: MIN_CHUNK_BYTES,
            max_chunk,
            offered: 0,
        }
    }

    /// Received bytes not yet taken as frames.
    pub fn data(&self) -> &[u8] {
        &self.memory[..self.filled]
    }

    /// Takes the first `len` received bytes (one whole frame) out of the buffer.
    pub fn take(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.filled,
            "taking {len} bytes of {} received",
            self.filled
        );
        self.filled -= len;
        self.memory.split_to(len).freeze()
    }

    /// Free space to read into: at least a quarter of the current chunk.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.memory.len() - self.filled < self.chunk / 4 {
            // Drop the spare tail first so a reallocation copies only received bytes.
            self.memory.truncate(self.filled);
            self.memory.reserve(self.chunk);
            let capacity = self.memory.capacity();
            self.memory.resize(capacity, 0);
        }
        self.offered = self.memory.len() - self.filled;
        &mut self.memory[self.filled..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.memory.len(),
            "read past the spare space"
        );
        self.filled += n;
        if n == self.offered && self.chunk < self.max_chunk {
            // The read took all it was offered: more is likely waiting.
            self.chunk = (self.chunk * 2).min(self.max_chunk);
        }
    }

    /// Gives the memory back when no bytes are pending (an idle connection);
    /// frames already taken keep their own bytes alive.
    pub fn shrink(&mut self) {
        if self.filled == 0 {
            self.memory = BytesMut::new();
            self.chunk = MIN_CHUNK_BYTES;
            self.offered = 0;
        }
    }

    /// Bytes of memory the buffer holds (its initialised area).
    pub fn held_bytes(&self) -> usize {
        self.memory.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_whole_and_in_order() {
        let mut buffer = ReadBuffer::new(64);
        let mut expected = Vec::new();
        for round in 0u8..50 {
            let spare = buffer.spare();
            assert!(spare.len() >= 16);
            let n = 7.min(spare.len());
            spare[..n].fill(round);
            buffer.advance(n);
            expected.extend(std::iter::repeat_n(round, n));
            if buffer.data().len() >= 10 {
                let frame = buffer.take(10);
                assert_eq!(&frame[..], &expected[..10]);
                expected.drain(..10);
            }
        }
        assert_eq!(buffer.data(), &expected[..]);
    }

    #[test]
    fn starts_small_grows_with_full_reads_and_shrinks_when_idle() {
        let mut buffer = ReadBuffer::new(256 * 1024);
        assert!(buffer.spare().len() <= 2 * MIN_CHUNK_BYTES);
        for _ in 0..12 {
            let n = buffer.spare().len();
            buffer.advance(n);
            let all = buffer.data().len();
            buffer.take(all);
        }
        let grown = buffer.spare().len();
        assert!(grown >= 64 * 1024, "grew to {grown}");
        buffer.advance(3);
        buffer.shrink();
        assert!(buffer.held_bytes() > 0, "pending bytes are kept");
        buffer.take(3);
        buffer.shrink();
        assert_eq!(buffer.held_bytes(), 0);
        assert!(buffer.spare().len() <= 2 * MIN_CHUNK_BYTES);
    }
}
