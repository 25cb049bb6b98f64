//! coremq-loadgen against the real broker binary: short, bounded runs on
//! loopback with temporary data dirs. The broker is found at
//! target/<profile>/coremq, next to this test's deps/ directory (`cargo test
//! --workspace` builds it); the tests skip, saying so, only when it does not exist.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn broker_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/cli-<hash> -> target/<profile>/coremq
    let candidate = exe.parent()?.parent()?.join("coremq");
    if candidate.is_file() {
        Some(candidate)
    } else {
        eprintln!(
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
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(binary: &Path) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
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
            _dir: dir,
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
