//! Runs `tuning/tune.sh`: `--check` on this host (read-only, must exit 0 and
//! report every item), and `--apply` on a fake /proc, /sys and /etc tree
//! (`--root`) to show that it fixes what `--check --strict` flags and that a
//! second `--apply` changes nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/tune.sh")
}

fn run(args: &[&str]) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    println!("$ tune.sh {}\n{stdout}{stderr}", args.join(" "));
    (status.code().unwrap_or(-1), stdout)
}

/// Every item the report must mention, whatever the host.
const ITEMS: [&str; 16] = [
    "limits.d",
    "systemd-dropin",
    "memlock",
    "nofile",
    "io_uring",
    "aio-max-nr",
    "swappiness",
    "somaxconn",
    "netdev-backlog",
    "rmem_max",
    "sysctl.d",
    "cpu-governor",
    "transparent-hugepages",
    "disk-scheduler",
    "irq-affinity",
    "summary:",
];

#[test]
fn check_runs_read_only_and_reports_every_item() {
    let (code, report) = run(&["--check"]);
    assert_eq!(code, 0, "--check must exit 0 without --strict");
    for item in ITEMS {
        assert!(report.contains(item), "report does not mention {item}");
    }
    for line in report.lines().filter(|l| l.starts_with('[')) {
        assert!(
            !line.starts_with("[set]") && !line.starts_with("[fail]"),
            "--check changed something: {line}"
        );
    }
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(run(&[]).0, 2);
    assert_eq!(run(&["--check", "--bogus"]).0, 2);
    assert_eq!(run(&["--check", "--shard-cores", "x-y"]).0, 2);
}

fn write(root: &Path, path: &str, content: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    fs::write(path, format!("{content}\n")).expect("write");
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path))
        .expect("read")
        .trim()
        .to_string()
}

/// A host that needs every change: what a fresh untuned machine looks like.
fn untuned_host(root: &Path) {
    for (key, value) in [
        ("kernel/io_uring_disabled", "0"),
        ("fs/aio-max-nr", "65536"),
        ("vm/swappiness", "60"),
        ("net/core/somaxconn", "4096"),
        ("net/ipv4/tcp_max_syn_backlog", "2048"),
        ("net/core/netdev_max_backlog", "1000"),
        ("net/core/rmem_max", "212992"),
        ("net/core/wmem_max", "33554432"),
    ] {
        write(root, &format!("proc/sys/{key}"), value);
    }
    let thp = "sys/kernel/mm/transparent_hugepage";
    write(root, &format!("{thp}/enabled"), "[always] madvise never");
    write(
        root,
        &format!("{thp}/defrag"),
        "[always] defer defer+madvise madvise never",
    );
    write(
        root,
        "sys/block/vda/queue/scheduler",
        "none mq-deadline kyber [bfq]",
    );
    write(root, "sys/block/vda/queue/rotational", "0");
    for cpu in 0..4 {
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
        write(root, &format!("{dir}/scaling_governor"), "powersave");
        write(
            root,
            &format!("{dir}/scaling_available_governors"),
            "performance powersave",
        );
    }
    write(root, "sys/devices/system/cpu/online", "0-3");
    write(
        root,
        "proc/interrupts",
        "           CPU0  CPU1  CPU2  CPU3\n 24:  1 0 0 0  IO-APIC 5-edge ACPI:Ged\n \
         36: 0 9 0 0  PCI-MSIX virtio1-req.0\n 41: 7 0 0 0  PCI-MSIX virtio3-rx\n\
         NMI: 0 0 0 0  Non-maskable interrupts",
    );
    write(root, "proc/irq/24/smp_affinity_list", "0-3");
    write(root, "proc/irq/36/smp_affinity_list", "2");
    write(root, "proc/irq/41/smp_affinity_list", "0");
    fs::create_dir_all(root.join("etc/udev/rules.d")).expect("mkdir");
    fs::create_dir_all(root.join("run/systemd/system")).expect("mkdir");
}

#[test]
fn apply_fixes_what_check_flags_and_is_idempotent() {
    let root = tempfile::tempdir().expect("tempdir");
    let root_arg = root.path().to_str().expect("utf-8 path");
    untuned_host(root.path());
    let args = |mode| {
        vec![
            mode,
            "--root",
            root_arg,
            "--data-disk",
            "vda",
            "--shard-cores",
            "1-3",
        ]
    };
    let mut strict = args("--check");
    strict.push("--strict");

    let (code, before) = run(&strict);
    assert_eq!(code, 1, "an untuned host fails --check --strict");
    assert!(before.contains("[off]"));

    let (code, applied) = run(&args("--apply"));
    assert_eq!(code, 0, "--apply on the fake tree succeeds");
    assert!(!applied.contains("[fail]"));
    assert!(!applied.contains("[off]"));

    let host = root.path();
    assert_eq!(read(host, "proc/sys/vm/swappiness"), "1");
    assert_eq!(read(host, "proc/sys/fs/aio-max-nr"), "1048576");
    assert_eq!(read(host, "proc/sys/net/core/somaxconn"), "4096");
    assert_eq!(
        read(host, "proc/sys/net/core/wmem_max"),
        "33554432",
        "never lowered"
    );
    assert_eq!(
        read(host, "sys/kernel/mm/transparent_hugepage/enabled"),
        "madvise"
    );
    assert_eq!(read(host, "sys/block/vda/queue/scheduler"), "mq-deadline");
    for cpu in 0..4 {
        let governor = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        assert_eq!(read(host, &governor), "performance");
    }
    for irq in [24, 36, 41] {
        assert_eq!(
            read(host, &format!("proc/irq/{irq}/smp_affinity_list")),
            "0"
        );
    }
    let limits = read(host, "etc/security/limits.d/90-coremq.conf");
    assert!(limits.contains("root hard memlock unlimited"), "{limits}");
    let dropin = read(
        host,
        "etc/systemd/system/coremq.service.d/90-coremq-limits.conf",
    );
    assert!(dropin.contains("LimitMEMLOCK=infinity"), "{dropin}");
    let sysctl = read(host, "etc/sysctl.d/90-coremq.conf");
    assert!(sysctl.contains("vm.swappiness = 1"), "{sysctl}");
    assert!(sysctl.contains("net.core.wmem_max = 33554432"), "{sysctl}");

    let (code, again) = run(&args("--apply"));
    assert_eq!(code, 0);
    assert!(
        !again.contains("[set]"),
        "a second --apply changed something"
    );
    let (code, after) = run(&strict);
    assert_eq!(code, 0, "--check --strict passes after --apply");
    assert!(!after.contains("[off]"));
}

#[test]
fn irqs_stay_when_every_core_is_a_shard_core() {
    let root = tempfile::tempdir().expect("tempdir");
    untuned_host(root.path());
    let root_arg = root.path().to_str().expect("utf-8 path");
    let (code, report) = run(&["--apply", "--root", root_arg, "--shard-cores", "0-3"]);
    assert_eq!(code, 0);
    assert!(report.contains("every online core"), "{report}");
    assert_eq!(read(root.path(), "proc/irq/36/smp_affinity_list"), "2");
}

/// shellcheck-clean, where shellcheck is installed (.ci/run installs it; a
/// test installs nothing). Without it: a failure in CI (`CI` set), elsewhere
/// a SKIPPED line on the terminal.
#[test]
fn tune_sh_passes_shellcheck() {
    let status = Command::new("shellcheck")
        .arg(script())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/run"))
        .status();
    match status {
        Ok(status) => assert!(status.success(), "shellcheck found problems (output above)"),
        Err(error) => {
            let reason = format!(
                "shellcheck is not runnable here ({error}); install it (Debian: \
                 `apt-get install shellcheck`), as .ci/run does"
            );
            assert!(!in_ci(), "tune_sh_passes_shellcheck: {reason}");
            // Straight to stderr: cargo captures eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED tune_sh_passes_shellcheck: {reason}"
            );
        }
    }
}

/// CI services and .ci/run set `CI`; there a missing tool is a failure.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}
