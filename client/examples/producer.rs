//! Sends a few keyed records and prints where they landed.
//!
//! `cargo run -p coremq-client --example producer -- 127.0.0.1:9092 [topic] [count]`

use coremq_client::{Admin, Client, Producer, Record, TopicConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "example".into());
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(10);

    let client = Client::connect(addr.as_str()).await?;
    let shards = u32::from(client.metadata().shard_count.max(1));
    if Admin::new(client.clone())
        .ensure_topic(&topic, &TopicConfig::new(shards))
        .await?
    {
        println!("created topic {topic:?} with {shards} partitions");
    }

    let producer = Producer::builder(client)
        .linger(Duration::from_millis(1))
        .batch_bytes(256 * 1024)
        .build();

    // One acknowledged send per record, all in flight together.
    let values: Vec<String> = (0..count).map(|i| format!("hello #{i}")).collect();
    let keys: Vec<String> = (0..count).map(|i| format!("user-{}", i % 3)).collect();
    let headers: &[(&[u8], &[u8])] = &[(b"source", b"example")];
    let sends = values.iter().zip(&keys).map(|(value, key)| {
        producer.send(
            Record::new(&topic, value.as_bytes())
                .key(key.as_bytes())
                .headers(headers),
        )
    });
    for ((value, key), result) in values
        .iter()
        .zip(&keys)
        .zip(futures::future::join_all(sends).await)
    {
        let (partition, offset) = result?;
        println!("{key} {value:?} -> partition {partition} offset {offset}");
    }

    // Fire-and-forget records; flush waits for them and reports failures.
    for i in 0..count {
        producer
            .send_oneway(Record::new(&topic, format!("oneway #{i}").as_bytes()))
            .await?;
    }
    producer.flush().await?;
    println!("{count} one-way records acknowledged");
    Ok(())
}
