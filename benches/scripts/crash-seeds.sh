#!/usr/bin/env bash
# Runs the storage crash test (shard/tests/crash.rs) over many seeds: CI runs
# 250; this runs 10,000 by default, in release, in chunks so a failure names
# its chunk, and prints the failing seed (replay: COREMQ_SEED=<n> cargo test
# -p coremq-shard --test crash).
#   benches/scripts/crash-seeds.sh [SEEDS] [CHUNK]
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds="${1:-10000}"
chunk="${2:-1000}"
cargo test --release -p coremq-shard --test crash --no-run
start=$SECONDS
for ((from = 0; from < seeds; from += chunk)); do
  to=$((from + chunk < seeds ? from + chunk : seeds))
  if ! COREMQ_SEEDS="$from..$to" cargo test --release -q -p coremq-shard --test crash 2>&1 | grep -E "replay with|panicked at|^open|test result" ; then
    echo "seeds $from..$to: FAILED (the failing seed is printed above)" >&2
    exit 1
  fi
  echo "seeds $from..$to passed ($((SECONDS - start)) s)"
done
echo "all $seeds seeds passed in $((SECONDS - start)) s"
