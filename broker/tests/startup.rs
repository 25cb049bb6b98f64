//! Start-up refusals and reports: ports in use fail at once naming the port,
//! too many shards are refused, a new data directory says what it pre-allocates.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};

/// Runs `coremq`, which must fail to start, to its exit and returns its
/// output; a broker that starts instead (prints its ready line) is killed
/// and fails the test.
fn run_to_exit(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--segment-bytes", "8388608", "--max-batch-bytes", "1048576"])
        .args(args)
        .env("COREMQ_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coremq");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    if !line.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the broker started although it should not have: {line}");
    }
    child.wait_with_output().expect("wait")
}

/// A port `p` with `p + 1 ..= p + after` free too (probed by binding them).
fn free_port_run(after: u16) -> u16 {
    for _ in 0..100 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("probe");
        let port = probe.local_addr().expect("address").port();
        if port > u16::MAX - after {
            continue;
        }
        let others: Vec<_> = (1..=after)
            .map(|i| TcpListener::bind(("127.0.0.1", port + i)))
            .collect();
        if others.iter().all(|o| o.is_ok()) {
            return port;
        }
    }
    panic!("no run of free ports");
}

#[test]
fn a_main_port_in_use_fails_at_once_naming_it() {
    let temp = temp_data_dir();
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = held.local_addr().expect("address").port();
    let listen = format!("127.0.0.1:{port}");
    let output = run_to_exit(temp.path(), &["--listen", &listen, "--shards", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&listen), "{stderr}");
    assert!(stderr.contains("main port"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "the holder is named: {stderr}"
    );
    assert!(
        !stderr.contains("retrying"),
        "no retry for a live holder: {stderr}"
    );
}

#[test]
fn a_shard_port_in_use_names_the_shard() {
    let temp = temp_data_dir();
    let main = free_port_run(2);
    let shard_one: SocketAddr = format!("127.0.0.1:{}", main + 2).parse().expect("address");
    let _held = TcpListener::bind(shard_one).expect("hold shard 1's port");
    let listen = format!("127.0.0.1:{main}");
    let output = run_to_exit(temp.path(), &["--listen", &listen, "--shards", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&shard_one.to_string()), "{stderr}");
    assert!(stderr.contains("shard 1's own port"), "{stderr}");
    assert!(stderr.contains(&format!("--listen {listen}")), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}

#[test]
fn more_shards_than_cores_are_refused_and_nothing_is_allocated() {
    let temp = temp_data_dir();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = (cores + 1).to_string();
    let output = run_to_exit(
        temp.path(),
        &["--listen", "127.0.0.1:0", "--shards", &shards],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--force-shards"), "{stderr}");
    let entries = std::fs::read_dir(temp.path()).expect("data dir").count();
    assert_eq!(entries, 0, "a refused start wrote into the data directory");
}

#[test]
fn a_new_data_directory_reports_its_preallocation() {
    let temp = temp_data_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .arg("--data-dir")
        .arg(temp.path())
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .args(["--segment-bytes", "8388608", "--max-batch-bytes", "1048576"])
        .env("COREMQ_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coremq");
    let stdout = child.stdout.take().expect("stdout");
    coremq_client::ReadyLine::read(stdout).expect("ready line");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pre-allocates"), "{stderr}");
    assert!(stderr.contains("8 MiB in all"), "{stderr}");
}
