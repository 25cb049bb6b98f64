//! FlatBuffers envelopes: bounded verification at ingress and small helpers
//! both sides use. The tables themselves are in [`crate::fb`], generated from
//! `wire/schema/coremq.fbs` by `wire/regenerate.sh`.

use crate::error::ErrorCode;
use crate::fb;
use flatbuffers::{FlatBufferBuilder, Follow, Verifiable, VerifierOptions};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("request body failed verification: {0}")]
pub struct InvalidBody(#[from] pub flatbuffers::InvalidFlatbuffer);

/// Limits for the verifier: depth and table count bounded so a hostile body
/// cannot make verification expensive; size bounded by the frame maximum.
pub fn verifier_options(max_frame_bytes: u32) -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: 1_000_000,
        max_apparent_size: max_frame_bytes as usize,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies `body` once and returns the root table borrowed from it.
pub fn parse<'a, T>(body: &'a [u8], options: &VerifierOptions) -> Result<T::Inner, InvalidBody>
where
    T: Follow<'a> + Verifiable + 'a,
{
    Ok(flatbuffers::root_with_opts::<T>(options, body)?)
}

/// Body of an `ErrorResponse` frame.
pub fn error_response(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(64 + message.len());
    let message = builder.create_string(message);
    let root = fb::ErrorResponse::create(
        &mut builder,
        &fb::ErrorResponseArgs {
            code: code.as_u16(),
            message: Some(message),
        },
    );
    builder.finish(root, None);
    builder.finished_data().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trip() {
        let body = error_response(ErrorCode::UnknownTopic, "no topic 'x'");
        let parsed = parse::<fb::ErrorResponse>(&body, &verifier_options(1 << 20)).unwrap();
        assert_eq!(ErrorCode::from_u16(parsed.code()), ErrorCode::UnknownTopic);
        assert_eq!(parsed.message(), Some("no topic 'x'"));
    }

    #[test]
    fn produce_request_round_trip_borrows_batches() {
        let mut builder = FlatBufferBuilder::new();
        let topic = builder.create_string("orders");
        let batches = builder.create_vector(&[1u8, 2, 3]);
        let partition = fb::PartitionBatches::create(
            &mut builder,
            &fb::PartitionBatchesArgs {
                topic: Some(topic),
                partition: 3,
                batches: Some(batches),
            },
        );
        let partitions = builder.create_vector(&[partition]);
        let root = fb::ProduceRequest::create(
            &mut builder,
            &fb::ProduceRequestArgs {
                partitions: Some(partitions),
            },
        );
        builder.finish(root, None);
        let body = builder.finished_data();
        let request = parse::<fb::ProduceRequest>(body, &verifier_options(1 << 20)).unwrap();
        let first = request.partitions().unwrap().get(0);
        assert_eq!(first.topic(), "orders");
        assert_eq!(first.partition(), 3);
        assert_eq!(first.batches().bytes(), &[1, 2, 3]);
    }

    #[test]
    fn garbage_bodies_are_rejected_not_panicking() {
        let options = verifier_options(1 << 20);
        for seed in 0u32..2000 {
            let len = (seed % 97) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(2654435761) >> (i % 24)) as u8)
                .collect();
            let _ = parse::<fb::ProduceRequest>(&body, &options);
            let _ = parse::<fb::FetchRequest>(&body, &options);
        }
    }
}
