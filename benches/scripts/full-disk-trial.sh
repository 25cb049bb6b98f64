#!/usr/bin/env bash
# A full disk loses nothing: runs a release broker on a small ext4 file
# system (a loop-mounted image; needs root and a loop device), produces
# with an ack log until the disk is full, checks that producers got a clear
# disk-full error, restarts the broker on the full disk and verifies every
# acknowledged message; then deletes the topic and reports the space.
#   cargo build --release && sudo benches/scripts/full-disk-trial.sh [MiB]
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib="${1:-256}"
broker=./target/release/coremq
lg=./target/release/coremq-loadgen
[[ -x "$broker" && -x "$lg" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/var/tmp}/coremq-fulldisk.XXXXXX")"
mnt="$work/mnt"; mkdir -p "$mnt"
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
  umount "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
dd if=/dev/zero of="$work/fs.img" bs=1M count="$size_mib" status=none
mkfs.ext4 -q "$work/fs.img"
mount -o loop "$work/fs.img" "$mnt"
dir="$mnt/data"
# shellcheck source=benches/scripts/start-broker.sh
source benches/scripts/start-broker.sh  # cwd: the repository root (above)
start_broker "$dir" 1 --segment-bytes 16777216 --max-batch-bytes 1048576
"$lg" produce --broker "$addr" --topic full --partitions 2 --batch 100 --producers 2 \
  --duration 60 --ack-log "$work/acks" --json > "$work/produce.json" 2> "$work/produce.err" || true
python3 - "$work/produce.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"produce: {r.get('messages')} acknowledged, {r.get('errors')} errors; samples: {r.get('error_samples')}")
PY
df -h "$mnt" | tail -1
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
start_broker "$dir" 1 --segment-bytes 16777216 --max-batch-bytes 1048576
"$lg" verify --broker "$addr" --ack-log "$work/acks" --json > "$work/verify.json" 2> "$work/verify.err" || true
python3 - "$work/verify.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"verify after restart on the full disk: {r.get('checked')} checked, {r.get('lost')} lost, {r.get('corrupt')} corrupt")
sys.exit(0 if r.get("lost") == 0 and r.get("corrupt") == 0 else 1)
PY
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
