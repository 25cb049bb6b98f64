//! The topic catalog, which every shard keeps a copy of, stays the same on
//! every shard: changes are ordered through one coordinator shard, and
//! start-up completes a change that a crash cut short.

mod common;
use common::*;
use coremq_wire::ErrorCode;
use std::collections::BTreeSet;

/// What every shard's own port reports: one catalog per shard.
fn catalogs(broker: &Broker) -> Vec<Vec<(String, u32)>> {
    (0..broker.shards)
        .map(|shard| broker.connect_shard(shard).metadata().1)
        .collect()
}

/// A broker killed after a create reached shard 0 but before it reached
/// shard 1 leaves the topic on shard 0 only. Simulated without timing luck:
/// shard 1's directory is swapped for one from a broker that never saw the
/// topic. The restarted broker must list it on every shard, serve every
/// partition, and keep what shard 0 had stored.
#[test]
fn start_up_completes_a_create_that_reached_only_some_shards() {
    let mut full = Broker::start(2, &[]);
    let mut conn = full.connect();
    assert_eq!(conn.create_topic("half", 4, None), ErrorCode::None);
    let on_shard0: Vec<u32> = (0..4)
        .filter(|&p| coremq_wire::shard_for("half", p, 2) == 0)
        .collect();
    assert!(!on_shard0.is_empty());
    for &partition in &on_shard0 {
        let (error, _) = conn.produce("half", partition, &batch("kept", 3));
        assert_eq!(error, ErrorCode::None);
    }
    drop(conn);
    assert!(full.stop().success());

    let mut empty = Broker::start(2, &[]);
    assert!(empty.stop().success());
    let shard1 = full.data_dir.join("shard-1");
    std::fs::remove_dir_all(&shard1).expect("remove shard-1");
    std::fs::rename(empty.data_dir.join("shard-1"), &shard1).expect("swap shard-1");

    let broker = Broker::start_in(&full.data_dir, 2, &[]);
    let expected = vec![("half".to_string(), 4)];
    assert_eq!(catalogs(&broker), vec![expected.clone(), expected]);
    let mut conn = broker.connect();
    for partition in 0..4 {
        let kept = conn.read_all("half", partition, 0);
        if on_shard0.contains(&partition) {
            assert_eq!(kept.len(), 3, "partition {partition} lost its data");
        } else {
            assert!(kept.is_empty());
        }
        let (error, _) = conn.produce("half", partition, &batch("new", 1));
        assert_eq!(error, ErrorCode::None, "partition {partition}");
    }
}

/// Two clients creating the same topics at once through different shards,
/// with different partition counts: exactly one create of each name wins,
/// and every shard ends up with the winner's settings.
#[test]
fn concurrent_creates_through_different_shards_agree() {
    let broker = Broker::start(2, &[]);
    let names: Vec<String> = (0..40).map(|i| format!("race-{i}")).collect();
    let outcomes: Vec<Vec<ErrorCode>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u16)
            .map(|shard| {
                let (broker, names) = (&broker, &names);
                scope.spawn(move || {
                    let mut conn = broker.connect_shard(shard);
                    names
                        .iter()
                        .map(|name| conn.create_topic(name, 2 + u32::from(shard), None))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for (i, name) in names.iter().enumerate() {
        let codes: BTreeSet<u16> = outcomes.iter().map(|o| o[i].as_u16()).collect();
        assert_eq!(
            codes,
            BTreeSet::from([
                ErrorCode::None.as_u16(),
                ErrorCode::TopicAlreadyExists.as_u16()
            ]),
            "{name}: one create wins, the other is told it exists"
        );
    }
    let catalogs = catalogs(&broker);
    assert_eq!(catalogs[0].len(), names.len());
    assert_eq!(catalogs[0], catalogs[1], "shards disagree");
}
