//! `coremq`: parse flags, set up logging, run the broker until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use coremq_broker::config::{Args, BrokerConfig};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    coremq_broker::malloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = BrokerConfig::from_args(Args::parse()).context("invalid configuration")?;
    tracing::info!(?config, "starting coremq");
    let handle = coremq_broker::server::start(config.clone()).context("cannot start the broker")?;
    // One machine-readable line on stdout once every shard listens: tools wait
    // for it (`coremq_client::ReadyLine` parses it).
    let ports: Vec<String> = handle
        .shard_addresses
        .iter()
        .map(|a| a.port().to_string())
        .collect();
    println!(
        "coremq listening on {} shards={} shard_ports={}",
        handle.main_address,
        config.shards,
        ports.join(",")
    );
    std::io::stdout().flush().context("stdout")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "signal received, shutting down");
    }
    handle.shutdown();
    Ok(())
}
