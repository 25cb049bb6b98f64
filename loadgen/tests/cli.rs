//! coremq-loadgen against the real broker binary: short, bounded runs on
//! loopback with temporary data dirs. The broker is found at
//! target/<profile>/coremq, next to this test's deps/ directory (`cargo test
//! --workspace` builds it); the tests skip, saying so, only when it does not exist.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn broker_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/cli-<hash> -> target/<profile>/coremq
    let candidate = exe.parent()?.parent()?.join("coremq");
    if candidate.is_file() {
        Some(candidate)
    } else {
        // Straight to stderr: cargo captures eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: broker binary {} does not exist (build it with `cargo build --bin coremq`)",
            candidate.display()
        );
        None
    }
}

fn loadgen(broker: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coremq-loadgen"));
    command.env("COREMQ_BIN", broker).stdin(Stdio::null());
    command
}

fn run(mut command: Command) -> (Output, Option<Value>) {
    let output = command.output().expect("run coremq-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(stdout.trim()).ok();
    if !output.status.success() || json.is_none() {
        eprintln!(
            "stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (output, json)
}

/// A broker the test runs itself (for produce-then-verify against one broker),
/// on port 0: it picks free ports itself and prints the main address.
struct Broker {
    child: Child,
    addr: String,
    /// Taken out for a restart on the same data dir.
    dir: Option<tempfile::TempDir>,
}

impl Broker {
    fn start(binary: &Path) -> Broker {
        Broker::start_in(binary, tempfile::tempdir().expect("temp dir"))
    }

    /// Starts on `dir` (a restart when it already holds data).
    fn start_in(binary: &Path, dir: tempfile::TempDir) -> Broker {
        let mut child = Command::new(binary)
            .args([
                "--shards",
                "2",
                "--fsync",
                "always",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        let stdout = child.stdout.take().expect("stdout");
        let addr = coremq_client::ReadyLine::read(stdout)
            .expect("the broker's ready line")
            .main_address
            .to_string();
        Broker {
            child,
            addr,
            dir: Some(dir),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn produce_json_run_reports_throughput_latency_and_broker_shards() {
    let Some(broker) = broker_binary() else {
        return;
    };
    let mut command = loadgen(&broker);
    command.args([
        "produce",
        "--spawn-broker",
        "--shards",
        "2",
        "--messages",
        "20000",
        "--batch",
        "500",
        "--msg-size",
        "512",
        "--json",
    ]);
    let (output, json) = run(command);
    assert!(output.status.success(), "exit {:?}", output.status);
    let json = json.expect("stdout is one JSON object");
    assert_eq!(json["messages"], 20000);
    assert_eq!(json["errors"], 0);
    assert!(json["msgs_per_sec"].as_f64().unwrap() > 0.0);
    for key in ["mb_per_sec", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(json[key].is_number(), "{key} missing");
    }
    assert!(json["p99_us"].as_u64().unwrap() >= json["p50_us"].as_u64().unwrap());
    assert_eq!(json["partitions"], 2);
    let shards = json["broker_shards"].as_array().expect("broker_shards");
    assert_eq!(shards.len(), 2, "{shards:?}");
}

#[test]
fn consume_reads_back_the_prefill() {
    let Some(broker) = broker_binary() else {
        return;
    };
    let mut command = loadgen(&broker);
    command.args([
        "consume",
        "--spawn-broker",
        "--prefill",
        "20000",
        "--batch",
        "1000",
        "--verify-crc",
        "--json",
    ]);
    let (output, json) = run(command);
    assert!(output.status.success(), "exit {:?}", output.status);
    let json = json.expect("stdout is one JSON object");
    assert_eq!(json["workload"], "consume");
    assert_eq!(json["messages"], 20000);
    assert_eq!(json["errors"], 0);
}

#[test]
fn e2e_receives_everything_it_sent() {
    let Some(broker) = broker_binary() else {
        return;
    };
    let mut command = loadgen(&broker);
    command.args([
        "e2e",
        "--spawn-broker",
        "--rate",
        "20000",
        "--duration",
        "1s",
        "--json",
    ]);
    let (output, json) = run(command);
    assert!(output.status.success(), "exit {:?}", output.status);
    let json = json.expect("stdout is one JSON object");
    assert_eq!(json["sent"], 20000);
    assert_eq!(json["received"], 20000);
    assert!(json["p99_us"].as_u64().unwrap() > 0);
}

#[test]
fn verify_finds_every_acknowledged_message_and_flags_tampering() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let broker = Broker::start(&binary);
    let dir = tempfile::tempdir().unwrap();
    let ack_log = dir.path().join("acks.log");
    let mut command = loadgen(&binary);
    command
        .args([
            "produce",
            "--broker",
            &broker.addr,
            "--topic",
            "durable",
            "--messages",
            "5000",
            "--batch",
            "250",
            "--json",
            "--ack-log",
        ])
        .arg(&ack_log);
    let (output, _) = run(command);
    assert!(output.status.success());
    let text = std::fs::read_to_string(&ack_log).unwrap();
    assert_eq!(text.lines().count(), 5000);

    let mut command = loadgen(&binary);
    command
        .args(["verify", "--broker", &broker.addr, "--json", "--ack-log"])
        .arg(&ack_log);
    let (output, json) = run(command);
    assert!(output.status.success());
    let json = json.unwrap();
    assert_eq!(
        (
            json["checked"].as_u64(),
            json["lost"].as_u64(),
            json["corrupt"].as_u64()
        ),
        (Some(5000), Some(0), Some(0))
    );

    // One wrong checksum and one offset that was never written.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[10].split('\t').map(str::to_string).collect();
    fields[3] = format!("{:08x}", u32::from_str_radix(&fields[3], 16).unwrap() ^ 1);
    lines[10] = fields.join("\t");
    lines.push("durable\t0\t999999\t00000000".into());
    let tampered = dir.path().join("tampered.log");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let mut command = loadgen(&binary);
    command
        .args(["verify", "--broker", &broker.addr, "--json", "--ack-log"])
        .arg(&tampered);
    let (output, json) = run(command);
    assert!(
        !output.status.success(),
        "verify must fail on lost or corrupt messages"
    );
    let json = json.unwrap();
    assert_eq!(
        (json["lost"].as_u64(), json["corrupt"].as_u64()),
        (Some(1), Some(1))
    );
}

fn help(subcommand: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_coremq-loadgen"))
        .args([subcommand, "--help"])
        .output()
        .expect("run coremq-loadgen --help");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn subcommands_list_only_the_flags_they_use() {
    for (subcommand, foreign) in [
        (
            "consume",
            &["--rate", "--ack-log", "--messages", "--drain", "--slot-us"][..],
        ),
        (
            "e2e",
            &["--ack-log", "--in-flight", "--prefill", "--fetch-bytes"],
        ),
        (
            "produce",
            &["--prefill", "--fetch-bytes", "--verify-crc", "--drain"],
        ),
        (
            "verify",
            &[
                "--spawn-broker",
                "--msg-size",
                "--producers",
                "--batch",
                "--duration",
                "--check",
                "--topic",
            ],
        ),
        ("quickstart", &["--json", "--check", "--rate", "--ack-log"]),
    ] {
        let text = help(subcommand);
        let flags: Vec<&str> = text
            .lines()
            .filter_map(|line| line.trim_start().split([' ', ',']).next())
            .filter(|word| word.starts_with("--"))
            .collect();
        for flag in foreign {
            assert!(
                !flags.contains(flag),
                "`{subcommand} --help` lists {flag}, which it does not use:\n{text}"
            );
        }
    }
    assert!(help("consume").contains("--prefill <N>"));
    assert!(help("produce").contains("--no-shard-aware"));
}

fn forwarded_requests(json: &Value) -> u64 {
    json["broker_shards"]
        .as_array()
        .expect("broker_shards")
        .iter()
        .map(|shard| {
            shard["counters"]["forwarded_requests"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn consume_reads_back_a_topic_that_already_holds_data() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let broker = Broker::start(&binary);
    let mut command = loadgen(&binary);
    command.args([
        "produce",
        "--broker",
        &broker.addr,
        "--topic",
        "existing",
        "--partitions",
        "3",
        "--messages",
        "6000",
        "--batch",
        "200",
        "--json",
    ]);
    let (output, json) = run(command);
    assert!(output.status.success());
    assert_eq!(json.expect("produce JSON")["messages"], 6000);

    // Twice: reading does not consume anything.
    for _ in 0..2 {
        let mut command = loadgen(&binary);
        command.args([
            "consume",
            "--broker",
            &broker.addr,
            "--topic",
            "existing",
            "--prefill",
            "0",
            "--verify-crc",
            "--json",
        ]);
        let (output, json) = run(command);
        assert!(output.status.success(), "exit {:?}", output.status);
        let json = json.expect("consume JSON");
        assert_eq!(json["messages"], 6000, "every stored message read back");
        assert_eq!(json["errors"], 0);
        assert_eq!(json["prefill"]["messages"], 0, "nothing produced");
    }
}

#[test]
fn no_shard_aware_sends_every_request_to_the_main_port_and_the_broker_forwards() {
    let Some(broker) = broker_binary() else {
        return;
    };
    let workloads: [&[&str]; 2] = [
        &["produce", "--messages", "8000"],
        &["consume", "--prefill", "8000", "--verify-crc"],
    ];
    for workload in workloads {
        for shard_aware in [true, false] {
            let mut command = loadgen(&broker);
            command.args(workload).args([
                "--spawn-broker",
                "--shards",
                "2",
                "--partitions",
                "4",
                "--batch",
                "200",
                "--json",
            ]);
            if !shard_aware {
                command.arg("--no-shard-aware");
            }
            let (output, json) = run(command);
            assert!(output.status.success(), "{workload:?}: {:?}", output.status);
            let json = json.expect("JSON");
            assert_eq!(json["messages"], 8000, "{workload:?}");
            assert_eq!(json["errors"], 0, "{workload:?}");
            let forwarded = forwarded_requests(&json);
            if shard_aware {
                assert_eq!(forwarded, 0, "{workload:?}: shard-aware requests hop");
            } else {
                // Requests for half the partitions land on the other shard.
                assert!(forwarded >= 8000 / 200 / 2, "{workload:?}: {forwarded}");
            }
        }
    }
}

/// `kill -9` while `produce --no-shard-aware` runs (every request to the
/// main port, those for the other shard's partitions forwarded), then a
/// restart on the same data dir: `verify` finds every acknowledged message.
#[test]
fn kill_9_during_a_forwarded_produce_loses_no_acknowledged_message() {
    let Some(binary) = broker_binary() else {
        return;
    };
    let mut broker = Broker::start(&binary);
    let dir = tempfile::tempdir().unwrap();
    let ack_log = dir.path().join("acks.log");
    let mut command = loadgen(&binary);
    command
        .args([
            "produce",
            "--broker",
            &broker.addr,
            "--no-shard-aware",
            "--topic",
            "forwarded",
            "--partitions",
            "4",
            "--duration",
            "60s",
            "--batch",
            "100",
            "--in-flight",
            "4",
            "--json",
            "--ack-log",
        ])
        .arg(&ack_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let producer = command.spawn().expect("start coremq-loadgen");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&ack_log).map_or(0, |t| t.lines().count()) < 20_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "acks did not reach 20000"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    broker.child.kill().expect("kill -9 the broker");
    broker.child.wait().expect("wait");
    let output = producer.wait_with_output().expect("loadgen exits");
    let json: Value = serde_json::from_slice(&output.stdout).expect("produce JSON");
    assert_eq!(json["broker_gone"], true, "{json}");
    let acknowledged = std::fs::read_to_string(&ack_log).unwrap().lines().count();
    assert_eq!(json["ack_log_lines"].as_u64(), Some(acknowledged as u64));

    let data_dir = broker.dir.take().expect("the broker's data dir");
    drop(broker);
    let restarted = Broker::start_in(&binary, data_dir);
    let mut command = loadgen(&binary);
    command
        .args([
            "verify",
            "--broker",
            &restarted.addr,
            "--no-shard-aware",
            "--json",
            "--ack-log",
        ])
        .arg(&ack_log);
    let (output, json) = run(command);
    assert!(output.status.success());
    let json = json.unwrap();
    assert_eq!(
        (
            json["checked"].as_u64(),
            json["lost"].as_u64(),
            json["corrupt"].as_u64()
        ),
        (Some(acknowledged as u64), Some(0), Some(0))
    );
}
