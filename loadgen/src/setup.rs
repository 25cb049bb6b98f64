//! What every workload does first: reach (or start) a broker, make sure the
//! topic exists.

use crate::args::Common;
use crate::broker::SpawnedBroker;
use anyhow::{bail, Context, Result};
use coremq_client::{Admin, Client, ClientConfig, TopicConfig};

pub const DEFAULT_BROKER: &str = "127.0.0.1:9092";

pub struct Session {
    pub client: Client,
    pub admin: Admin,
    pub broker: Option<SpawnedBroker>,
    pub addr: String,
    pub shards: u16,
    pub partitions: u32,
}

impl Session {
    /// Connects (or spawns) and makes sure `--topic` exists.
    pub async fn open(common: &Common) -> Result<Session> {
        let mut session = Session::connect(common).await?;
        session.partitions = session.ensure_topic(common).await?;
        Ok(session)
    }

    /// Connects (or spawns) without touching topics.
    pub async fn connect(common: &Common) -> Result<Session> {
        if !common.spawn_broker && !common.broker_arg.is_empty() {
            bail!("--broker-arg is passed to a spawned broker: it needs --spawn-broker");
        }
        let broker = if common.spawn_broker {
            let shards = common.shards.unwrap_or_else(default_shards);
            Some(SpawnedBroker::start(shards, &common.fsync, &common.broker_arg).await?)
        } else {
            None
        };
        let addr = match &broker {
            Some(broker) => broker.addr.clone(),
            None => common
                .broker
                .clone()
                .unwrap_or_else(|| DEFAULT_BROKER.to_string()),
        };
        let config = ClientConfig {
            shard_aware: common.shard_aware,
            ..ClientConfig::default()
        };
        let client = Client::connect_with(addr.clone(), config)
            .await
            .with_context(|| format!("connecting to the broker at {addr}"))?;
        let admin = Admin::new(client.clone());
        let shards = client.metadata().shard_count.max(1);
        Ok(Session {
            client,
            admin,
            broker,
            addr,
            shards,
            partitions: 0,
        })
    }

    /// Creates the topic when missing; returns its partition count.
    async fn ensure_topic(&self, common: &Common) -> Result<u32> {
        let partitions = common.partitions.unwrap_or(u32::from(self.shards)).max(1);
        let created = self
            .admin
            .ensure_topic(&common.topic, &{
                let mut topic = TopicConfig::new(partitions);
                topic.retention_bytes = common.retention_bytes;
                topic
            })
            .await
            .with_context(|| format!("creating topic {:?}", common.topic))?;
        let actual = self
            .client
            .partitions_for(&common.topic)
            .await
            .with_context(|| format!("looking up topic {:?}", common.topic))?;
        if created {
            eprintln!("created topic {:?} with {actual} partitions", common.topic);
        } else if common.partitions.is_some_and(|p| p != actual) {
            eprintln!(
                "topic {:?} exists with {actual} partitions (--partitions ignored)",
                common.topic
            );
        }
        Ok(actual)
    }

    /// Whether a spawned broker has died (always false for --broker).
    pub fn broker_died(&mut self) -> bool {
        self.broker.as_mut().is_some_and(|b| !b.is_running())
    }
}

pub fn default_shards() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, 2) as u16
}
