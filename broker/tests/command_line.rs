//! What a user meets at the command line: errors are one line with no
//! backtrace (even with RUST_BACKTRACE=1), logs written to a file carry no
//! colour codes, and `--help` shows the default of every setting.

mod common;
use clap::{CommandFactory, Parser};
use common::temp_data_dir;
use coremq_broker::config::{Args, BrokerConfig};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn coremq(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coremq"));
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("COREMQ_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs a broker command that must fail, returning its stderr.
fn failing(mut command: Command) -> (Output, String) {
    let output = command.output().expect("run coremq");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "coremq was expected to fail; stderr:\n{stderr}"
    );
    (output, stderr)
}

fn assert_one_error_line(stderr: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one `error:` line expected:\n{stderr}");
    for noise in ["stack backtrace", "Caused by", "panicked", "\u{1b}["] {
        assert!(
            !stderr.to_lowercase().contains(&noise.to_lowercase()),
            "{noise:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_bad_flag_value_is_one_line_without_a_backtrace() {
    for args in [
        &["--shards", "abc"][..],
        &["--fsync", "sometimes"],
        &["--segment-bytes", "1000"],
        &["--no-such-flag"],
    ] {
        let (output, stderr) = failing(coremq(args));
        assert_eq!(
            stderr.lines().filter(|l| !l.trim().is_empty()).count(),
            1,
            "{args:?}: one line expected:\n{stderr}"
        );
        assert_one_error_line(&stderr);
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    let (output, stderr) = failing(coremq(&["--shards", "abc"]));
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
    assert!(stderr.contains("--shards"), "names the flag: {stderr}");
    let (output, stderr) = failing(coremq(&["--fsync", "sometimes"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("sometimes"), "names the value: {stderr}");
}

#[test]
fn an_unusable_data_directory_is_one_line_without_a_backtrace() {
    let temp = temp_data_dir();
    let file = temp.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let data_dir = file.join("data");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let (output, stderr) = failing(coremq(&[
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert_one_error_line(&stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error:"))
        .expect("an error line");
    assert!(error.contains(data_dir), "names the directory: {error}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let temp = temp_data_dir();
    let log_path = temp.path().join("broker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let data_dir = temp.path().join("data");
    let mut child = coremq(&["--listen", "127.0.0.1:0", "--shards", "1"])
        .arg("--data-dir")
        .arg(&data_dir)
        .env("COREMQ_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn coremq");
    let stdout = child.stdout.take().expect("stdout");
    coremq_client::ReadyLine::read(stdout).expect("the broker's ready line");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log_path).expect("read the log");
    assert!(
        text.contains("starting coremq"),
        "the log is written:\n{text}"
    );
    assert!(
        !text.contains("\u{1b}["),
        "escape codes in a log file:\n{text}"
    );
}

#[test]
fn help_shows_every_default() {
    let output = coremq(&["--help"]).output().expect("coremq --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("[default:"), "{help}");

    // Every setting that takes a value says its default, and the default it
    // states is the one BrokerConfig applies.
    let command = Args::command();
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        let takes_value = arg.get_action().takes_values();
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        if takes_value && !help.contains("[default:") {
            missing.push(arg.get_id().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "add `[default: …]` to the help of: {missing:?}"
    );
    let defaults = BrokerConfig::from_args(Args::parse_from(["coremq"])).expect("defaults");
    let stated = |id: &str| -> String {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no flag {id}"));
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let start = help.find("[default: ").expect("stated") + "[default: ".len();
        let value = &help[start..];
        let end = value.find([']', ' ']).expect("closed");
        value[..end].to_string()
    };
    let durability = format!("{:?}", defaults.default_durability).to_lowercase();
    for (id, actual) in [
        ("data_dir", defaults.data_dir.display().to_string()),
        ("listen", defaults.listen.to_string()),
        ("fsync", durability),
        ("segment_bytes", defaults.segment_bytes.to_string()),
        ("max_frame_bytes", defaults.max_frame_bytes.to_string()),
        ("max_batch_bytes", defaults.max_batch_bytes.to_string()),
        ("max_connections", defaults.max_connections.to_string()),
        (
            "max_in_flight_per_connection",
            defaults.max_in_flight_per_connection.to_string(),
        ),
        ("read_cache_bytes", defaults.read_cache_bytes.to_string()),
        (
            "max_connection_buffer_bytes",
            defaults.max_connection_buffer_bytes.to_string(),
        ),
        (
            "max_shard_buffer_bytes",
            defaults.max_shard_buffer_bytes.to_string(),
        ),
        (
            "max_forwarded_bytes",
            defaults.max_forwarded_bytes.to_string(),
        ),
        (
            "idle_timeout_ms",
            defaults.idle_timeout.as_millis().to_string(),
        ),
        (
            "read_timeout_ms",
            defaults.read_timeout.as_millis().to_string(),
        ),
        ("max_topics", defaults.max_topics.to_string()),
        (
            "spin_before_park_us",
            defaults
                .spin_before_park
                .map_or(0, |d| d.as_micros())
                .to_string(),
        ),
    ] {
        assert_eq!(stated(id), actual, "--help states another default for {id}");
    }
}
