//! `coremq`: parse flags, set up logging, run the broker until SIGINT/SIGTERM.
//!
//! What a user can get wrong (a bad flag or value, an unusable data
//! directory, a port in use) ends the process with one line on stderr,
//! `error: what failed: why`, never a backtrace, whatever `RUST_BACKTRACE`
//! says: exit status 2 for command-line usage errors (as clap does), 1 for the
//! rest. Logs go to stderr, with colour only when stderr is a terminal.

use anyhow::Context;
use clap::Parser;
use coremq_broker::config::{Args, BrokerConfig};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    coremq_broker::malloc::keep_freed_memory();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => return command_line_error(&error),
    };
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Escape codes belong on a terminal, not in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = BrokerConfig::from_args(args).context("invalid configuration")?;
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

/// `--help` and `--version` print as clap renders them (stdout, exit 0).
/// A usage error becomes one line: clap's message, its tips in brackets, and
/// where to look, without the usage block.
fn command_line_error(error: &clap::Error) -> ExitCode {
    if !error.use_stderr() {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    // StyledStr's Display is plain text (no escape codes).
    let rendered = error.render().to_string();
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"));
    let first = lines.next().unwrap_or("error: invalid command line");
    let tips: Vec<&str> = lines.collect();
    let mut line = first.to_string();
    if !tips.is_empty() {
        line.push_str(&format!(" ({})", tips.join("; ")));
    }
    eprintln!("{line}; `coremq --help` lists every flag and its default");
    ExitCode::from(2)
}

/// The error and its causes on one line, `outer: inner: root`. A cause whose
/// text its parent already quotes is left out, and line breaks inside a
/// message (a TOML parse error shows the offending line) become spaces.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}
