//! The data directory remembers its shape: a broker with another shard
//! count refuses it instead of moving partitions and reusing offsets.

mod common;
use common::*;
use coremq_wire::ErrorCode;
use std::process::{Command, Stdio};

/// Runs `coremq` expecting it to refuse to start; returns its stderr.
/// A broker that starts anyway is killed and fails the test.
fn refused_start(dir: &std::path::Path, shards: u16) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--shards", &shards.to_string()])
        .args(["--segment-bytes", "8388608", "--max-batch-bytes", "1048576"])
        .env("COREMQ_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coremq");
    let stdout = child.stdout.take().expect("stdout");
    // The ready line (or EOF when the broker exits at start-up).
    let started = coremq_client::ReadyLine::read(stdout).is_ok();
    if started {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("wait for coremq");
    assert!(!started, "coremq started on a mismatched data dir");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn another_shard_count_is_refused_and_the_data_kept() {
    let temp = temp_data_dir();
    let dir = temp.path().to_path_buf();
    let mut broker = Broker::start_in(&dir, 1, &[]);
    let mut conn = broker.connect();
    assert_eq!(conn.create_topic("kept", 4, None), ErrorCode::None);
    for partition in 0..4 {
        assert_eq!(
            conn.produce("kept", partition, &batch("v", 3)).0,
            ErrorCode::None
        );
    }
    drop(conn);
    assert!(broker.stop().success());
    let manifest = std::fs::read_to_string(dir.join("MANIFEST")).expect("manifest written");
    assert!(manifest.contains("shard_count = 1"), "{manifest}");

    let stderr = refused_start(&dir, 2);
    assert!(stderr.contains("holds 1 shards"), "{stderr}");
    assert!(stderr.contains("--shards 1"), "{stderr}");
    assert!(
        !dir.join("shard-1").exists(),
        "nothing of a second shard was created"
    );

    // The right count still reads every record.
    let mut broker = Broker::start_in(&dir, 1, &[]);
    let mut conn = broker.connect();
    for partition in 0..4 {
        assert_eq!(conn.read_all("kept", partition, 0).len(), 3);
    }
    drop(conn);
    assert!(broker.stop().success());
}
