//! Stats: every shard's histograms and counters.

use super::{invalid, Body, HandlerResult};
use crate::context::ShardContext;
use coremq_wire::fb;
use flatbuffers::{FlatBufferBuilder, VerifierOptions};

pub async fn handle(ctx: &ShardContext, body: &[u8], options: &VerifierOptions) -> HandlerResult {
    let request =
        coremq_wire::messages::parse::<fb::StatsRequest>(body, options).map_err(invalid)?;
    let snapshots = ctx.stats(request.reset()).await;
    let mut builder = FlatBufferBuilder::with_capacity(1024);
    let mut shards = Vec::with_capacity(snapshots.len());
    for snapshot in &snapshots {
        let histograms: Vec<_> = snapshot
            .histograms
            .iter()
            .map(|h| {
                let name = builder.create_string(&h.name);
                fb::Histogram::create(
                    &mut builder,
                    &fb::HistogramArgs {
                        name: Some(name),
                        count: h.count,
                        min: h.min,
                        p50: h.p50,
                        p90: h.p90,
                        p99: h.p99,
                        p999: h.p999,
                        max: h.max,
                        mean: h.mean,
                    },
                )
            })
            .collect();
        let histograms = builder.create_vector(&histograms);
        let counters: Vec<_> = snapshot
            .counters
            .iter()
            .map(|(name, value)| {
                let name = builder.create_string(name);
                fb::Counter::create(
                    &mut builder,
                    &fb::CounterArgs {
                        name: Some(name),
                        value: *value,
                    },
                )
            })
            .collect();
        let counters = builder.create_vector(&counters);
        shards.push(fb::ShardStats::create(
            &mut builder,
            &fb::ShardStatsArgs {
                shard: snapshot.shard,
                histograms: Some(histograms),
                counters: Some(counters),
            },
        ));
    }
    let shards = builder.create_vector(&shards);
    let root = fb::StatsResponse::create(
        &mut builder,
        &fb::StatsResponseArgs {
            shards: Some(shards),
        },
    );
    Ok(Body::finish(builder, root))
}
