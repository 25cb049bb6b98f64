//! Request kind → handler, and the response frame around the handler's body.

use crate::context::ShardContext;
use crate::handlers::{self, Body};
use crate::mesh::RequestError;
use crate::metrics::bump;
use coremq_wire::frame::{encode_header, FrameHeader, Kind, FRAME_HEADER_LEN, KIND_ERROR};
use coremq_wire::messages::error_response;
use coremq_wire::{fb, ErrorCode};
use flatbuffers::VerifierOptions;

/// A response frame: 16 header bytes and a body that is written without
/// another copy when it is large.
pub struct Response {
    pub header: [u8; FRAME_HEADER_LEN],
    pub body: Body,
}

impl Response {
    pub fn new(kind: u16, correlation_id: u64, body: Body) -> Response {
        Response {
            header: encode_header(kind, correlation_id, body.bytes().len()),
            body,
        }
    }

    pub fn error(correlation_id: u64, error: &RequestError) -> Response {
        Response::new(
            KIND_ERROR,
            correlation_id,
            Body::from_vec(error_response(error.code, &error.message)),
        )
    }
}

/// Memory a response holds beyond its bytes (allocations, the queue entry),
/// charged with it to the connection's byte budget.
pub const RESPONSE_OVERHEAD_BYTES: u64 = 256;

/// Bytes the response to a request may hold, charged before the request
/// runs (and corrected once the response exists). Fetch responses are
/// estimated from the partitions' `max_bytes`, at most one frame; every
/// other response is small.
pub fn estimate_response_bytes(
    kind: u16,
    body: &[u8],
    options: &VerifierOptions,
    max_frame_bytes: u32,
) -> u64 {
    let small = RESPONSE_OVERHEAD_BYTES + FRAME_HEADER_LEN as u64;
    if Kind::from_u16(kind) != Some(Kind::Fetch) {
        return small;
    }
    let Ok(request) = coremq_wire::messages::parse::<fb::FetchRequest>(body, options) else {
        return small;
    };
    let wanted: u64 = request
        .partitions()
        .map(|partitions| {
            partitions
                .iter()
                .map(|p| u64::from(p.max_bytes()) + RESPONSE_OVERHEAD_BYTES)
                .sum()
        })
        .unwrap_or(0);
    small + wanted.min(u64::from(max_frame_bytes))
}

pub async fn dispatch(
    ctx: &ShardContext,
    header: FrameHeader,
    body: &[u8],
    options: &VerifierOptions,
) -> Response {
    let correlation_id = header.correlation_id;
    let Some(kind) = Kind::from_u16(header.kind) else {
        bump(&ctx.metrics.errors, 1);
        let error = RequestError::new(
            ErrorCode::UnknownKind,
            format!("unknown request kind {}", header.kind),
        );
        return Response::error(correlation_id, &error);
    };
    let result = match kind {
        Kind::Produce => handlers::produce::handle(ctx, body, options).await,
        Kind::Fetch => handlers::fetch::handle(ctx, body, options).await,
        Kind::Metadata => handlers::topics::metadata(ctx, body, options).await,
        Kind::CreateTopic => handlers::topics::create(ctx, body, options).await,
        Kind::DeleteTopic => handlers::topics::delete(ctx, body, options).await,
        Kind::ListTopics => handlers::topics::list(ctx, body, options).await,
        Kind::ListOffsets => handlers::offsets::handle(ctx, body, options).await,
        Kind::Stats => handlers::stats::handle(ctx, body, options).await,
    };
    match result {
        Ok(body) => Response::new(kind.response(), correlation_id, body),
        Err(error) => {
            bump(&ctx.metrics.errors, 1);
            tracing::debug!(kind = kind.name(), code = %error.code, message = %error.message, "request failed");
            Response::error(correlation_id, &error)
        }
    }
}
