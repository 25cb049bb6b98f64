//! One module per request kind: verify the body (once, bounded), do the work
//! through [`ShardContext`], build the response table.

pub mod fetch;
pub mod offsets;
pub mod produce;
pub mod stats;
pub mod topics;

use crate::mesh::RequestError;
use coremq_wire::ErrorCode;
use flatbuffers::FlatBufferBuilder;

/// A finished FlatBuffers body, taken out of its builder without copying.
pub struct Body {
    buffer: Vec<u8>,
    head: usize,
}

impl Body {
    pub fn finish<T>(
        mut builder: FlatBufferBuilder<'static>,
        root: flatbuffers::WIPOffset<T>,
    ) -> Body {
        builder.finish(root, None);
        let (buffer, head) = builder.collapse();
        Body { buffer, head }
    }

    pub fn from_vec(buffer: Vec<u8>) -> Body {
        Body { buffer, head: 0 }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.head..]
    }
}

pub type HandlerResult = Result<Body, RequestError>;

pub fn invalid(error: impl std::fmt::Display) -> RequestError {
    RequestError::new(ErrorCode::InvalidRequest, error.to_string())
}

/// Error fields for per-partition results: (code, message or None).
pub fn error_fields(result: &Result<impl Sized, RequestError>) -> (u16, Option<&str>) {
    match result {
        Ok(_) => (ErrorCode::None.as_u16(), None),
        Err(error) => (error.code.as_u16(), Some(error.message.as_str())),
    }
}
