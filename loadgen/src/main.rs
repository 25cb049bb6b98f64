//! coremq-loadgen: load generator and durability checker for CoreMQ.
//!
//! Workloads: `produce` (acknowledged throughput), `consume` (pre-fill, then
//! read back), `e2e` (open-loop fixed rate, end-to-end latency from the
//! intended send time), `verify` (read back an ack log), `quickstart`.
//! Runs on a current-thread tokio runtime by default (`--threads`), because
//! it shares the machine's cores with the broker.

mod acklog;
mod args;
mod broker;
mod consume;
mod e2e;
mod malloc;
mod pacer;
mod payload;
mod produce;
mod quickstart;
mod report;
mod setup;
mod verify;

use anyhow::Result;
use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    malloc::keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Escape codes only on a terminal, never in a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let threads = cli.command.threads();
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::E2e(args) => e2e::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Quickstart(args) => quickstart::run(args).await,
    }
}
