//! Frames: `u32 length | u16 magic/version | u16 kind | u64 correlation id | body`,
//! little endian. `length` counts every byte after the length field itself
//! (12 header bytes + body), so a reader needs 4 bytes to know how much to wait for.
//!
//! Decoding is cancel-safe: [`decode_frame`] only looks at a buffer and says
//! whether it holds a whole frame; the caller advances its buffer only after a
//! successful parse.

use thiserror::Error;

/// Magic and protocol version in one field: high byte 0xC3 ("CoreMQ"), low byte the version.
pub const MAGIC_V1: u16 = 0xC301;
/// Bytes before the body: length (4) + magic (2) + kind (2) + correlation id (8).
pub const FRAME_HEADER_LEN: usize = 16;
/// Default largest frame accepted (header included): 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// What a frame body holds. Requests have the high bit clear; the response to
/// request kind `k` has kind `k | RESPONSE_BIT`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Produce = 1,
    Fetch = 2,
    Metadata = 3,
    CreateTopic = 4,
    DeleteTopic = 5,
    ListTopics = 6,
    ListOffsets = 7,
    Stats = 8,
}

pub const RESPONSE_BIT: u16 = 0x8000;
/// Kind of an `ErrorResponse` frame: the request could not be answered at all.
pub const KIND_ERROR: u16 = 0xFFFF;

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Produce,
        Kind::Fetch,
        Kind::Metadata,
        Kind::CreateTopic,
        Kind::DeleteTopic,
        Kind::ListTopics,
        Kind::ListOffsets,
        Kind::Stats,
    ];

    pub fn from_u16(kind: u16) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u16 == kind)
    }

    pub fn request(self) -> u16 {
        self as u16
    }

    pub fn response(self) -> u16 {
        self as u16 | RESPONSE_BIT
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Fetch => "fetch",
            Kind::Metadata => "metadata",
            Kind::CreateTopic => "create_topic",
            Kind::DeleteTopic => "delete_topic",
            Kind::ListTopics => "list_topics",
            Kind::ListOffsets => "list_offsets",
            Kind::Stats => "stats",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u16,
    pub correlation_id: u64,
    pub body_len: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on the wire.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len as usize
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Framing is lost: the connection must be closed.
    #[error("bad frame magic/version {found:#06x} (expected {MAGIC_V1:#06x})")]
    BadMagic { found: u16 },
    #[error("frame length field {length} is shorter than the 12-byte frame header")]
    LengthTooSmall { length: u32 },
    /// The frame is too large; the connection must be closed (its body is not read).
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge { length: u64, max: u32 },
}

/// Looks at the start of `buf`. `Ok(None)`: not a whole frame yet, read more.
/// `Ok(Some(header))`: `buf[FRAME_HEADER_LEN..header.frame_len()]` is the body.
/// Errors mean the stream can no longer be framed.
pub fn decode_frame(buf: &[u8], max_frame_bytes: u32) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (length as usize) < FRAME_HEADER_LEN - 4 {
        return Err(FrameError::LengthTooSmall { length });
    }
    let total = length as u64 + 4;
    if total > max_frame_bytes as u64 {
        return Err(FrameError::TooLarge {
            length: total,
            max: max_frame_bytes,
        });
    }
    if buf.len() >= 6 {
        let magic = u16::from_le_bytes([buf[4], buf[5]]);
        if magic != MAGIC_V1 {
            return Err(FrameError::BadMagic { found: magic });
        }
    }
    if (buf.len() as u64) < total {
        return Ok(None);
    }
    let kind = u16::from_le_bytes([buf[6], buf[7]]);
    let mut correlation = [0u8; 8];
    correlation.copy_from_slice(&buf[8..16]);
    Ok(Some(FrameHeader {
        kind,
        correlation_id: u64::from_le_bytes(correlation),
        body_len: length - (FRAME_HEADER_LEN as u32 - 4),
    }))
}

/// The 16 header bytes of a frame with a `body_len`-byte body.
pub fn encode_header(kind: u16, correlation_id: u64, body_len: usize) -> [u8; FRAME_HEADER_LEN] {
    let length = u32::try_from(body_len + FRAME_HEADER_LEN - 4).expect("frame body under 4 GiB");
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[0..4].copy_from_slice(&length.to_le_bytes());
    out[4..6].copy_from_slice(&MAGIC_V1.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    out[8..16].copy_from_slice(&correlation_id.to_le_bytes());
    out
}

/// Appends a whole frame (header + body) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: u16, correlation_id: u64, body: &[u8]) {
    out.extend_from_slice(&encode_header(kind, correlation_id, body.len()));
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, Kind::Fetch.request(), 42, b"hello");
        let header = decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(header.kind, 2);
        assert_eq!(header.correlation_id, 42);
        assert_eq!(header.body_len, 5);
        assert_eq!(&buf[FRAME_HEADER_LEN..header.frame_len()], b"hello");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 7, &[9u8; 100]);
        for cut in 0..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut], DEFAULT_MAX_FRAME_BYTES),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn rejects_bad_magic_and_oversize() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 7, &[0u8; 10]);
        let mut bad = buf.clone();
        bad[4] = 0;
        assert!(matches!(
            decode_frame(&bad, 1024),
            Err(FrameError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_frame(&buf, 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame(&[1, 0, 0, 0], 1024),
            Err(FrameError::LengthTooSmall { .. })
        ));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u16(kind.request()), Some(kind));
            assert_eq!(Kind::from_u16(kind.response()), None);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some(header)) = decode_frame(&bytes, 1 << 20) {
                prop_assert!(header.frame_len() <= bytes.len());
            }
        }
    }
}
