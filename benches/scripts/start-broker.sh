# Sourced by the trial scripts (kill9-trials.sh, full-disk-trial.sh).
# start_broker DIR SHARDS [FLAGS...]: starts "$broker" (a release coremq) on
# DIR with a kernel-picked port, waits for its ready line and sets `pid` and
# `addr` (the main address). Uses "$work" for its ready file and log.
start_broker() {
  local dir="$1" shards="$2"; shift 2
  : > "$work/ready"
  "$broker" --data-dir "$dir" --listen 127.0.0.1:0 --shards "$shards" "$@" \
    > "$work/ready" 2>> "$work/broker.log" &
  pid=$!
  for _ in $(seq 1 200); do
    if read -r line < "$work/ready" && [[ "$line" == "coremq listening on "* ]]; then
      addr="${line#coremq listening on }"; addr="${addr%% *}"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "broker exited at start-up:" >&2; tail -5 "$work/broker.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "broker did not become ready" >&2; exit 1
}
