//! Acknowledged data survives `kill -9` and restart.

mod common;
use common::*;
use coremq_wire::frame::Kind;
use coremq_wire::ErrorCode;
use std::collections::BTreeMap;

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    kill_9_under_load(None, Route::Owner);
}

/// Every produce goes to the port of a shard that does not own its
/// partition, so every one is forwarded over the mesh and acknowledged
/// through it (what `coremq-loadgen --no-shard-aware` does to half of them).
#[test]
fn kill_9_with_every_request_forwarded_loses_no_acknowledged_record() {
    kill_9_under_load(None, Route::OtherShard);
}

/// The same with size retention and small segments, so that segments are
/// released and reused (their old entries still on disk) while the load
/// runs and when the broker dies: recovery must serve only acknowledged data.
#[test]
fn kill_9_while_segments_are_reused_loses_no_acknowledged_record() {
    kill_9_under_load(Some(2 << 20), Route::Owner);
}

/// Which shard's port the writers send a partition's produces to.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Owner,
    OtherShard,
}

fn kill_9_under_load(retention_bytes: Option<i64>, route: Route) {
    // 8 MiB segments (the harness); with 2 MiB retention per partition they
    // are released and reused within a second or two.
    let mut broker = Broker::start(2, &[]);
    let dir = broker.data_dir.clone();
    let mut admin = broker.connect();
    assert_eq!(
        admin.create_topic_with("durable", 4, None, retention_bytes),
        ErrorCode::None
    );

    // Several connections produce with requests in flight; record every ack.
    let addresses: Vec<_> = (0..4)
        .map(|p| {
            let owner = coremq_wire::shard_for("durable", p, 2);
            match route {
                Route::Owner => broker.shard_address(owner),
                Route::OtherShard => broker.shard_address((owner + 1) % 2),
            }
        })
        .collect();
    let writers: Vec<_> = (0..4u32)
        .map(|partition| {
            let address = addresses[partition as usize];
            std::thread::spawn(move || {
                let mut conn = Conn::connect(address);
                let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
                // Responses may come back out of order: match them by correlation id.
                let mut in_flight = std::collections::HashMap::new();
                for i in 0..100_000u32 {
                    let values: Vec<String> =
                        (0..20).map(|j| format!("p{partition}-b{i}-r{j}")).collect();
                    let mut builder = coremq_wire::BatchBuilder::with_capacity(1024);
                    for v in &values {
                        builder.push(1, None, v.as_bytes(), &[]).unwrap();
                    }
                    let body = produce_body(&[("durable", partition, &builder.finish())]);
                    let mut frame = Vec::new();
                    coremq_wire::frame::encode_frame(
                        &mut frame,
                        Kind::Produce.request(),
                        i as u64,
                        &body,
                    );
                    if conn.send_raw(&frame).is_err() {
                        break;
                    }
                    in_flight.insert(i as u64, values);
                    if in_flight.len() >= 8 {
                        let Some(response) = conn.recv() else { break };
                        let values = in_flight
                            .remove(&response.correlation_id)
                            .expect("known correlation id");
                        let r = coremq_wire::messages::parse::<coremq_wire::fb::ProduceResponse>(
                            &response.body,
                            &coremq_wire::messages::verifier_options(1 << 20),
                        )
                        .unwrap();
                        let result = r.results().unwrap().get(0);
                        assert_eq!(result.error(), 0);
                        for (j, v) in values.into_iter().enumerate() {
                            acked.push((result.base_offset() + j as u64, v.into_bytes()));
                        }
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    if retention_bytes.is_some() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while admin.counter("segments_recycled") < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no segment was reused under load"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let forwarded = admin.counter("forwarded_requests");
    if route == Route::OtherShard {
        assert!(forwarded > 100, "produces were forwarded: {forwarded}");
    }
    broker.kill9();
    let acked: Vec<Vec<(u64, Vec<u8>)>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = acked.iter().map(|a| a.len()).sum();
    assert!(total > 0, "nothing was acknowledged before the kill");

    let restarted = Broker::start_in(&dir, 2, &[]);
    let mut conn = restarted.connect();
    for (partition, acked) in acked.iter().enumerate() {
        // Retention may still move the start after the restart.
        let (start, records) = conn.read_all_from_log_start("durable", partition as u32);
        if retention_bytes.is_none() {
            assert_eq!(start, 0);
        }
        let stored: BTreeMap<u64, Vec<u8>> = records.into_iter().collect();
        for (offset, value) in acked.iter().filter(|(offset, _)| *offset >= start) {
            assert_eq!(
                stored.get(offset),
                Some(value),
                "partition {partition} offset {offset} lost or changed"
            );
        }
        // Offsets are dense: no holes from a torn tail.
        let offsets: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(
            offsets,
            (start..start + offsets.len() as u64).collect::<Vec<_>>()
        );
        // Pipelined requests of one connection are stored in the order they
        // were sent (20 records per request; retention cuts at batch starts).
        let sequence: Vec<u64> = stored
            .values()
            .step_by(20)
            .map(|v| {
                String::from_utf8_lossy(v).split('-').nth(1).unwrap()[1..]
                    .parse()
                    .unwrap()
            })
            .collect();
        let first = sequence.first().copied().unwrap_or(0);
        assert_eq!(
            sequence,
            (first..first + sequence.len() as u64).collect::<Vec<_>>(),
            "partition {partition} out of order"
        );
    }
    // The restarted broker accepts new writes after the recovered tail.
    let (error, base) = conn.produce("durable", 0, &batch("after", 1));
    assert_eq!(error, ErrorCode::None);
    let (start, records) = conn.read_all_from_log_start("durable", 0);
    assert_eq!(base, start + records.len() as u64 - 1);
}
