#!/usr/bin/env bash
# kill -9 trials: every acknowledged message survives SIGKILL and restart.
#   cargo build --release && benches/scripts/kill9-trials.sh [TRIALS] [SECONDS]
# Each trial starts a release broker, produces with an ack log (one line per
# acknowledged message, flushed after every ack) for a random 2..SECONDS s,
# kills the broker with SIGKILL under load, restarts it on the same data
# directory and verifies every logged message (`coremq-loadgen verify`).
# Trials rotate through: a fresh or a reused data dir (the reused one has
# small segments and size retention, so segments are released and reused
# under the load), 1 or 2 shards, and shard-aware or --no-shard-aware
# clients (every request sent to the main port and forwarded when another
# shard owns it). Prints one line per trial and a total; exits non-zero if
# any message was lost or corrupt.
set -euo pipefail
cd "$(dirname "$0")/../.."
trials="${1:-30}"
seconds="${2:-6}"
broker=./target/release/coremq
lg=./target/release/coremq-loadgen
[[ -x "$broker" && -x "$lg" ]] || { echo "build first: cargo build --release" >&2; exit 1; }
# A real file system (O_DIRECT), not tmpfs.
work="$(mktemp -d "${TMPDIR:-/var/tmp}/coremq-kill9.XXXXXX")"
pid=""
cleanup() { [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=benches/scripts/start-broker.sh
source benches/scripts/start-broker.sh  # cwd: the repository root (above)

total_acked=0 total_lost=0 total_corrupt=0 total_expired=0
reused="$work/reused"
for trial in $(seq 1 "$trials"); do
  shards=$(( trial % 2 + 1 ))
  aware=(); [[ $(( trial % 3 )) == 0 ]] && aware=(--no-shard-aware)
  if (( trial % 2 == 0 )); then
    dir="$reused-$shards"; extra=(--segment-bytes 16777216 --max-batch-bytes 1048576); retention=(--retention-bytes 8388608)
  else
    dir="$work/fresh-$trial"; extra=(); retention=()
  fi
  mkdir -p "$dir"
  ack="$work/acks-$trial"
  start_broker "$dir" "$shards" "${extra[@]}"
  run_s=$(( 2 + RANDOM % (seconds - 1) ))
  "$lg" produce --broker "$addr" --topic "kill9" --partitions 4 --batch 100 --producers 2 --in-flight 2 \
    "${retention[@]}" "${aware[@]}" --duration 60 --ack-log "$ack" --json > "$work/produce.json" 2> "$work/produce.err" &
  lgpid=$!
  sleep "$run_s"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  wait "$lgpid" 2>/dev/null || true
  start_broker "$dir" "$shards" "${extra[@]}"
  if ! "$lg" verify --broker "$addr" --ack-log "$ack" --json > "$work/verify.json" 2> "$work/verify.err"; then
    echo "trial $trial: verify failed:" >&2; tail -5 "$work/verify.err" >&2
  fi
  read -r checked lost corrupt expired < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("checked",0), r.get("lost",0), r.get("corrupt",0), r.get("expired",0))' "$work/verify.json")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  echo "trial $trial: shards=$shards dir=$([[ $(( trial % 2 )) == 0 ]] && echo reused || echo fresh) ${aware[*]:-shard-aware} killed after ${run_s}s: $checked acknowledged checked, $expired released by retention, $lost lost, $corrupt corrupt"
  total_expired=$(( total_expired + expired ))
  total_acked=$(( total_acked + checked )); total_lost=$(( total_lost + lost )); total_corrupt=$(( total_corrupt + corrupt ))
  rm -f "$ack"
  [[ "$dir" == "$work/fresh-"* ]] && rm -rf "$dir"
done
echo "total: $trials trials, $total_acked acknowledged messages checked (and $total_expired released by retention), $total_lost lost, $total_corrupt corrupt"
(( total_lost == 0 && total_corrupt == 0 ))
