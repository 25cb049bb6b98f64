//! Stable hashes shared by clients and broker. Changing either one moves data:
//! they are part of the protocol (docs/protocol.md).

/// FNV-1a, 32 bit. Chosen because it is tiny, fast on short keys, has no
/// seed, and is trivial to re-implement in any client language.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The shard that owns partition `partition` of `topic` on a broker with
/// `shards` shards: `(fnv1a_32(topic) + partition) mod shards`.
///
/// Partitions of one topic go round-robin over the shards, starting at a
/// topic-dependent shard, so a topic with `shards` partitions uses every core.
pub fn shard_for(topic: &str, partition: u32, shards: u16) -> u16 {
    assert!(shards > 0, "a broker has at least one shard");
    ((fnv1a_32(topic.as_bytes()) as u64 + partition as u64) % shards as u64) as u16
}

/// The partition for a record key: `fnv1a_32(key) mod partitions`. Same key,
/// same partition, so records with one key stay in order.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    fnv1a_32(key) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 32 test vectors.
        assert_eq!(fnv1a_32(b""), 0x811c9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn shard_for_is_stable_and_spreads_partitions() {
        // Pinned values: if these change, clients and brokers disagree.
        assert_eq!(
            shard_for("orders", 0, 4),
            ((fnv1a_32(b"orders") as u64) % 4) as u16
        );
        let shards: Vec<u16> = (0..4).map(|p| shard_for("orders", p, 4)).collect();
        let mut sorted = shards.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(shard_for("anything", 7, 1), 0);
    }

    #[test]
    fn same_key_same_partition() {
        for p in [1, 3, 16] {
            assert_eq!(
                partition_for_key(b"user-42", p),
                partition_for_key(b"user-42", p)
            );
            assert!(partition_for_key(b"user-42", p) < p);
        }
    }
}
