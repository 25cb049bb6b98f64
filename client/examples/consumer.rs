//! Reads a partition from the beginning and prints records as they arrive
//! (stops after `count` records, or after 5 s without new ones).
//!
//! `cargo run -p coremq-client --example consumer -- 127.0.0.1:9092 [topic] [partition] [count]`

use coremq_client::{Client, Consumer, OffsetSpec};
use futures::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "example".into());
    let partition: u32 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(100);

    let client = Client::connect(addr.as_str()).await?;
    let consumer = Consumer::new(client);
    let start = consumer
        .offset(&topic, partition, OffsetSpec::Earliest)
        .await?;
    println!("reading {topic}/{partition} from offset {start}");

    let stream = consumer.stream(topic.clone(), partition, start).take(count);
    futures::pin_mut!(stream);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(record)) => {
                let record = record?;
                println!(
                    "offset {} ts {} key {:?} value {:?} headers {}",
                    record.offset,
                    record.timestamp_ms,
                    record.key.as_deref().map(String::from_utf8_lossy),
                    String::from_utf8_lossy(&record.value),
                    record.headers.len()
                );
            }
            Ok(None) => break,
            Err(_) => {
                println!("no new records for 5 s");
                break;
            }
        }
    }
    Ok(())
}
