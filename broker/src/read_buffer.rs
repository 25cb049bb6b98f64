//! A socket read buffer that hands out whole frames as `Bytes` without copying
//! them, and does not zero its free space before every read.
//!
//! `BytesMut` needs initialised bytes to read into. Zeroing the free space on
//! every read cost a memset as large as the data itself; here the buffer's
//! length covers its whole initialised area and `filled` says how much of it
//! holds received bytes, so memory is zeroed once, when it is first reserved.

use bytes::{Bytes, BytesMut};

pub struct ReadBuffer {
    /// Initialised memory; `[..filled]` holds received bytes, the rest is spare.
    memory: BytesMut,
    filled: usize,
    chunk: usize,
}

impl ReadBuffer {
    pub fn new(chunk: usize) -> ReadBuffer {
        ReadBuffer {
            memory: BytesMut::new(),
            filled: 0,
            chunk,
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

    /// Free space to read into: at least a quarter of a chunk.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.memory.len() - self.filled < self.chunk / 4 {
            // Drop the spare tail first so a reallocation copies only received bytes.
            self.memory.truncate(self.filled);
            self.memory.reserve(self.chunk);
            let capacity = self.memory.capacity();
            self.memory.resize(capacity, 0);
        }
        &mut self.memory[self.filled..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.memory.len(),
            "read past the spare space"
        );
        self.filled += n;
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
}
