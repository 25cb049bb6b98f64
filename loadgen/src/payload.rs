//! Message payloads: a fixed template with the first 16 bytes patched per
//! message (sequence number, send time in ns since the run's clock origin), so
//! building a batch costs one copy per message and no allocation.

use std::time::Instant;

/// Bytes at the start of a payload that carry the sequence and the time.
pub const STAMP_BYTES: usize = 16;

pub struct Payloads {
    template: Vec<u8>,
}

impl Payloads {
    /// Payloads of `size` bytes (at least `STAMP_BYTES`).
    pub fn new(size: usize) -> Payloads {
        let size = size.max(STAMP_BYTES);
        let template = (0..size)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect();
        Payloads { template }
    }

    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// The payload for `sequence` sent at `time_ns`; valid until the next call.
    pub fn stamp(&mut self, sequence: u64, time_ns: u64) -> &[u8] {
        self.template[0..8].copy_from_slice(&sequence.to_le_bytes());
        self.template[8..16].copy_from_slice(&time_ns.to_le_bytes());
        &self.template
    }
}

/// (sequence, time_ns) from a payload built by [`Payloads::stamp`].
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < STAMP_BYTES {
        return None;
    }
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&payload[0..8]);
    let mut time = [0u8; 8];
    time.copy_from_slice(&payload[8..16]);
    Some((u64::from_le_bytes(sequence), u64::from_le_bytes(time)))
}

/// The run's clock: nanoseconds since a process-wide `Instant`, shared by the
/// producing and consuming sides (same process).
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut payloads = Payloads::new(1024);
        let payload = payloads.stamp(7, 123_456).to_vec();
        assert_eq!(payload.len(), 1024);
        assert_eq!(read_stamp(&payload), Some((7, 123_456)));
        assert_ne!(
            crc32fast::hash(&payload),
            crc32fast::hash(payloads.stamp(8, 123_456))
        );
        assert_eq!(Payloads::new(3).len(), STAMP_BYTES);
    }
}
