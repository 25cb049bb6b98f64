//! Client-visible error codes. Stable numbers: never reuse or renumber one.

/// Error code carried in responses (`error: ushort` fields and `ErrorResponse.code`).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    None = 0,
    Unknown = 1,
    /// The frame could not be parsed (bad magic, bad length).
    MalformedFrame = 2,
    UnsupportedVersion = 3,
    /// The frame kind is not a request this broker knows.
    UnknownKind = 4,
    /// The body failed the FlatBuffers verifier or a required field is missing.
    InvalidRequest = 5,
    UnknownTopic = 6,
    UnknownPartition = 7,
    TopicAlreadyExists = 8,
    /// A record batch failed its CRC or header checks; nothing of it was stored.
    CorruptBatch = 9,
    /// A frame or batch is larger than the configured maximum.
    TooLarge = 10,
    OffsetOutOfRange = 11,
    /// The storage engine failed (I/O error); the append was not acknowledged.
    StorageError = 12,
    /// The disk is full; the append was not stored.
    DiskFull = 13,
    ShuttingDown = 14,
    Timeout = 15,
    InvalidTopicName = 16,
    InvalidConfig = 17,
    /// A stored batch in the fetched range is damaged and is never served;
    /// the fetch result's `next_offset` is where readable data resumes.
    DataLoss = 18,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownKind,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::CorruptBatch,
        ErrorCode::TooLarge,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::StorageError,
        ErrorCode::DiskFull,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
        ErrorCode::InvalidTopicName,
        ErrorCode::InvalidConfig,
        ErrorCode::DataLoss,
    ];

    /// Unknown numbers map to `Unknown` so an old client survives a newer broker.
    pub fn from_u16(code: u16) -> ErrorCode {
        ErrorCode::ALL
            .get(code as usize)
            .copied()
            .unwrap_or(ErrorCode::Unknown)
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn is_ok(self) -> bool {
        self == ErrorCode::None
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageError | ErrorCode::ShuttingDown | ErrorCode::Timeout
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}({})", self, *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u16() as usize, i);
            assert_eq!(ErrorCode::from_u16(code.as_u16()), *code);
        }
        assert_eq!(ErrorCode::from_u16(60000), ErrorCode::Unknown);
    }
}
