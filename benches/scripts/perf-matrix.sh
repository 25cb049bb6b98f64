#!/usr/bin/env bash
# The end-to-end numbers of docs/perf.md: every workload RUNS times (default 3),
# interleaved so machine noise spreads over all of them, then the median and the
# spread (min..max) per workload. Needs a release build:
#   cargo build --release && benches/scripts/perf-matrix.sh [RUNS] [DURATION]
# Each run spawns its own broker (2 shards, temporary data dir, removed after).
# consume-always reads 2 GB past a 64 MiB read cache (from disk); consume-hot
# gives the broker a 2 GiB read cache per shard, so it reads from memory (a
# consumer keeping up with producers). Needs ~5 GB of free memory.
# *-steady: a broker in steady state, where retention releases segments and
# they are reused (small segments and size retention so that it starts within
# a second or two of the run): what a long-running broker sees.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-3}"
duration="${2:-10}"
lg=./target/release/coremq-loadgen
[[ -x "$lg" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

workloads=(
  "produce-always-default|produce --fsync always"
  "produce-always-deep|produce --fsync always --batch 1000 --producers 2 --in-flight 4"
  "produce-never-deep|produce --fsync never --batch 1000 --producers 2 --in-flight 4"
  "consume-always|consume --fsync always --prefill 2000000"
  "consume-hot|consume --fsync always --prefill 2000000 --broker-arg=--read-cache-bytes=2147483648"
  "produce-always-steady|produce --fsync always --batch 1000 --producers 2 --in-flight 4 --retention-bytes 268435456 --broker-arg=--segment-bytes=268435456"
  "e2e-100k-always-steady|e2e --fsync always --rate 100000 --retention-bytes 67108864 --broker-arg=--segment-bytes=67108864"
  "e2e-50k-always|e2e --fsync always --rate 50000"
  "e2e-100k-always|e2e --fsync always --rate 100000"
  "e2e-50k-never|e2e --fsync never --rate 50000"
  "e2e-100k-never|e2e --fsync never --rate 100000"
)
for run in $(seq 1 "$runs"); do
  for entry in "${workloads[@]}"; do
    name="${entry%%|*}"; args="${entry#*|}"
    # shellcheck disable=SC2086
    if ! "$lg" $args --spawn-broker --duration "$duration" --json > "$out/$name.$run.json" 2> "$out/$name.$run.err"; then
      echo "run $run of $name failed (see below)" >&2; tail -5 "$out/$name.$run.err" >&2
    fi
    sleep 1
  done
done
python3 - "$out" "$runs" "${workloads[@]}" <<'PY'
import json, statistics, sys
out, runs, entries = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"| workload | msg/s median (min..max) | p50 µs | p99 µs | p99.9 µs | errors |")
print("|---|---|---|---|---|---|")
for entry in entries:
    name = entry.split("|")[0]
    rows = []
    for run in range(1, runs + 1):
        try:
            rows.append(json.load(open(f"{out}/{name}.{run}.json")))
        except Exception:
            pass
    if not rows:
        print(f"| {name} | failed | | | | |"); continue
    med = lambda k: statistics.median(r[k] for r in rows)
    rate = [r["msgs_per_sec"] for r in rows]
    print(f"| {name} | {med('msgs_per_sec'):,.0f} ({min(rate):,.0f}..{max(rate):,.0f}) | {med('p50_us'):,.0f} | "
          f"{med('p99_us'):,.0f} | {med('p999_us'):,.0f} | {sum(r['errors'] for r in rows)} |")
PY
