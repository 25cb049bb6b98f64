#!/usr/bin/env bash
# tuning/tune.sh: check (--check) or set (--apply) the host settings a CoreMQ
# broker needs. Every item prints one line:
#   [ok]   fine as it is          [off]  should change (--apply fixes it)
#   [set]  changed by --apply     [fail] --apply could not change it
#   [n/a]  does not apply here    [info] reported, not judged
# --check only reads (no sudo, no writes) and exits 0; with --strict it exits 1
# when an item is [off]. --apply is idempotent: a second run prints no [set].
# See tuning/README.md for why each value.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tuning/tune.sh --check [--strict] [options]
       tuning/tune.sh --apply [options]          (as root)

options:
  --data-dir DIR       the broker's data directory (default /var/lib/coremq, or
                       its nearest existing parent): picks the disk to check
  --data-disk NAME     the block device instead (e.g. vda, nvme0n1)
  --shard-cores LIST   cores the shards run on (e.g. 1-3 or 2,3): check that no
                       device IRQ is routed to them; with --apply, move IRQs off
  --root DIR           operate on a fake tree DIR/{proc,sys,etc,run} (tests)
  -h, --help           this text
EOF
}

mode=""
strict=0
root=""
data_dir="/var/lib/coremq"
data_disk=""
shard_cores=""
while (($#)); do
  case "$1" in
    --check) mode=check ;;
    --apply) mode=apply ;;
    --strict) strict=1 ;;
    --data-dir) data_dir="${2:?--data-dir needs a value}"; shift ;;
    --data-disk) data_disk="${2:?--data-disk needs a value}"; shift ;;
    --shard-cores) shard_cores="${2:?--shard-cores needs a value}"; shift ;;
    --root) root="${2:?--root needs a value}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "tune.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$mode" ]]; then
  usage >&2
  exit 2
fi
if [[ "$mode" == apply && -z "$root" && "$EUID" -ne 0 ]]; then
  echo "tune.sh --apply changes kernel settings and /etc: run it as root" >&2
  exit 2
fi

# Targets. Names are spelled out once here so README and report agree.
readonly memlock_want="unlimited"
readonly nofile_want=1048576
readonly sysctl_file="$root/etc/sysctl.d/90-coremq.conf"
readonly limits_file="$root/etc/security/limits.d/90-coremq.conf"
readonly dropin_file="$root/etc/systemd/system/coremq.service.d/90-coremq-limits.conf"
readonly udev_file="$root/etc/udev/rules.d/60-coremq-scheduler.rules"

count_ok=0 count_off=0 count_set=0 count_fail=0 count_na=0
report() {
  local status="$1" item="$2"
  shift 2
  case "$status" in
    ok) count_ok=$((count_ok + 1)) ;;
    off) count_off=$((count_off + 1)) ;;
    set) count_set=$((count_set + 1)) ;;
    fail) count_fail=$((count_fail + 1)) ;;
    n/a) count_na=$((count_na + 1)) ;;
  esac
  printf '%-7s %-22s %s\n' "[$status]" "$item" "$*"
}

applying() { [[ "$mode" == apply ]]; }

# Writes $3 to file $2 (item $1) when it differs. `check` only compares.
managed_file() {
  local item="$1" path="$2" content="$3" current=""
  if [[ -f "$path" ]]; then current="$(<"$path")"; fi
  if [[ "$current" == "$content" ]]; then
    report ok "$item" "${path#"$root"} is up to date"
    return 0
  fi
  local what="missing"
  if [[ -f "$path" ]]; then what="differs from what tune.sh writes"; fi
  if ! applying; then
    report off "$item" "${path#"$root"} $what"
    return 0
  fi
  local error
  if error="$({ mkdir -p "$(dirname "$path")" && printf '%s\n' "$content" >"$path"; } 2>&1)"; then
    report set "$item" "wrote ${path#"$root"} (was $what)"
    return 0
  fi
  report fail "$item" "could not write ${path#"$root"}: $error"
  return 1
}

# Expands a cpu list ("0-2,5") into one number per line.
expand_cpus() {
  local part
  local -a parts
  IFS=',' read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
      seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ "$part" =~ ^[0-9]+$ ]]; then
      echo "$part"
    elif [[ -n "$part" ]]; then
      return 1
    fi
  done
}

# Writes a value to a /proc or /sys file, reporting set or fail.
write_value() {
  local item="$1" path="$2" value="$3" from="$4" why="$5" error
  if error="$({ printf '%s\n' "$value" >"$path"; } 2>&1)"; then
    report set "$item" "$from -> $value ($why)"
    return 0
  fi
  report fail "$item" "could not set $value (still $from): ${error##*: }"
  return 1
}

systemd_running() { [[ -d "$root/run/systemd/system" ]]; }

echo "CoreMQ host tuning: $mode${root:+ (fake root $root)}"
echo "host $(uname -n), kernel $(uname -r), $(nproc) cpus online, running as uid $EUID"

# ---------- memory locking and file descriptors ----------
limits_content="# Written by CoreMQ tuning/tune.sh --apply: edit the script, not this file.
# io_uring (glommio) registers its I/O buffers, which count against memlock.
# The * wildcard does not cover root in pam_limits, hence the root lines.
*    soft memlock $memlock_want
*    hard memlock $memlock_want
root soft memlock $memlock_want
root hard memlock $memlock_want
*    soft nofile  $nofile_want
*    hard nofile  $nofile_want
root soft nofile  $nofile_want
root hard nofile  $nofile_want"
dropin_content="# Written by CoreMQ tuning/tune.sh --apply: edit the script, not this file.
[Service]
LimitMEMLOCK=infinity
LimitNOFILE=$nofile_want"

limits_ok=0
managed_file limits.d "$limits_file" "$limits_content" || true
if [[ -f "$limits_file" && "$(<"$limits_file")" == "$limits_content" ]]; then limits_ok=1; fi
dropin_ok=1
if systemd_running; then
  set_before="$count_set"
  managed_file systemd-dropin "$dropin_file" "$dropin_content" || true
  if [[ ! -f "$dropin_file" || "$(<"$dropin_file")" != "$dropin_content" ]]; then dropin_ok=0; fi
  if applying && [[ -z "$root" && "$count_set" -gt "$set_before" ]]; then systemctl daemon-reload || true; fi
else
  report n/a systemd-dropin "systemd is not the running init (PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo unknown)): no coremq.service drop-in; start coremq from a login shell or set its limits in its supervisor"
fi

memlock_now="$(ulimit -S -l)"
nofile_now="$(ulimit -S -n)"
memlock_note="this shell: $memlock_now"
if [[ "$memlock_now" =~ ^[0-9]+$ ]]; then memlock_note+=" KiB"; fi
if [[ "$memlock_now" != unlimited && "$EUID" -eq 0 ]]; then
  memlock_note+=" (root has CAP_IPC_LOCK, so io_uring registration is not limited for root)"
fi
if ((limits_ok && dropin_ok)); then
  report ok memlock "configured $memlock_want for new sessions and coremq.service; $memlock_note"
else
  report off memlock "want $memlock_want (io_uring buffer registration; glommio falls back to unregistered buffers under 8 MiB); $memlock_note"
fi
if ((limits_ok && dropin_ok)); then
  report ok nofile "configured $nofile_want for new sessions and coremq.service; this shell: $nofile_now"
else
  report off nofile "want $nofile_want (one fd per connection and per open segment); this shell: $nofile_now"
fi
if applying && [[ "$memlock_now" != unlimited ]]; then
  report info memlock "limits apply to new sessions: log in again (or 'ulimit -l unlimited' as root) before starting coremq"
fi

# ---------- sysctls ----------
sysctl_lines=()
# sysctl_item ITEM KEY WANT eq|min WHY
sysctl_item() {
  local item="$1" key="$2" want="$3" rule="$4" why="$5"
  local path="$root/proc/sys/${key//.//}"
  if [[ ! -r "$path" ]]; then
    report n/a "$item" "$key does not exist on this kernel"
    return 0
  fi
  local now ok=0
  now="$(<"$path")"
  case "$rule" in
    eq) [[ "$now" == "$want" ]] && ok=1 ;;
    min) [[ "$now" =~ ^[0-9]+$ ]] && ((now >= want)) && ok=1 ;;
  esac
  local keep="$want" wanted="$want"
  if [[ "$rule" == min ]]; then
    wanted=">= $want"
    if ((ok)); then keep="$now"; fi
  fi
  sysctl_lines+=("$key = $keep")
  if ((ok)); then
    report ok "$item" "$key = $now ($why)"
  elif applying; then
    write_value "$item" "$path" "$want" "$key = $now" "$why" || true
  else
    report off "$item" "$key = $now, want $wanted ($why)"
  fi
}

sysctl_item io_uring kernel.io_uring_disabled 0 eq "glommio needs io_uring for every I/O"
sysctl_item aio-max-nr fs.aio-max-nr 1048576 min "async I/O contexts: glommio uses io_uring, but libaio users on the host share this pool"
sysctl_item swappiness vm.swappiness 1 eq "never swap a shard's memory out under page-cache pressure; O_DIRECT keeps our data out of the page cache"
sysctl_item somaxconn net.core.somaxconn 4096 min "accept backlog for connection bursts"
sysctl_item syn-backlog net.ipv4.tcp_max_syn_backlog 4096 min "half-open connection backlog for connection bursts"
sysctl_item netdev-backlog net.core.netdev_max_backlog 16384 min "loopback packets queue in the per-CPU backlog: 1000 drops under benchmark bursts"
sysctl_item rmem_max net.core.rmem_max 16777216 min "lets a socket ask for a 16 MiB receive buffer (SO_RCVBUF)"
sysctl_item wmem_max net.core.wmem_max 16777216 min "lets a socket ask for a 16 MiB send buffer (SO_SNDBUF)"
sysctl_content="# Written by CoreMQ tuning/tune.sh --apply: edit the script, not this file."
for line in "${sysctl_lines[@]}"; do sysctl_content+=$'\n'"$line"; done
managed_file sysctl.d "$sysctl_file" "$sysctl_content" || true

# ---------- CPU frequency ----------
governors=("$root"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor)
if [[ ! -e "${governors[0]}" ]]; then
  report n/a cpu-governor "not available: no cpufreq in this kernel (usual in a VM: the hypervisor owns the clock)"
else
  slow=()
  for path in "${governors[@]}"; do
    if [[ "$(<"$path")" != performance ]]; then slow+=("$path"); fi
  done
  available="$(cat "$(dirname "${governors[0]}")/scaling_available_governors" 2>/dev/null || echo performance)"
  if ((${#slow[@]} == 0)); then
    report ok cpu-governor "performance on ${#governors[@]} cpus"
  elif [[ " $available " != *" performance "* ]]; then
    report n/a cpu-governor "performance governor not offered (available: $available)"
  elif applying; then
    for path in "${slow[@]}"; do
      cpu="${path%/cpufreq/*}"
      write_value cpu-governor "$path" performance "${cpu##*/} $(<"$path")" "no ramp-up latency on a busy shard; not persistent across reboots" || true
    done
  else
    report off cpu-governor "${#slow[@]} of ${#governors[@]} cpus not on performance (e.g. $(<"${slow[0]}")); want performance: frequency ramp-up adds latency to a shard that wakes from idle"
  fi
fi

# ---------- transparent hugepages ----------
thp_dir="$root/sys/kernel/mm/transparent_hugepage"
thp_why="madvise or never: huge pages only where a program asks for them; 'always' lets khugepaged collapse and compact shard memory behind our back (latency spikes, RSS bloat)"
if [[ ! -r "$thp_dir/enabled" ]]; then
  report n/a transparent-hugepages "transparent hugepages not built into this kernel"
else
  thp_now="$(sed -E 's/.*\[([a-z+]+)\].*/\1/' "$thp_dir/enabled")"
  if [[ "$thp_now" == madvise || "$thp_now" == never ]]; then
    report ok transparent-hugepages "enabled = $thp_now ($thp_why)"
  elif applying; then
    write_value transparent-hugepages "$thp_dir/enabled" madvise "enabled = $thp_now" "not persistent: add transparent_hugepage=madvise to the kernel command line" || true
  else
    report off transparent-hugepages "enabled = $thp_now, want madvise ($thp_why)"
  fi
  if [[ -r "$thp_dir/defrag" ]]; then
    defrag_now="$(sed -E 's/.*\[([a-z+]+)\].*/\1/' "$thp_dir/defrag")"
    if [[ "$defrag_now" != always ]]; then
      report ok thp-defrag "defrag = $defrag_now (no direct compaction stalls in page faults)"
    elif applying; then
      write_value thp-defrag "$thp_dir/defrag" madvise "defrag = $defrag_now" "no direct compaction in page faults; not persistent" || true
    else
      report off thp-defrag "defrag = always, want madvise (direct compaction stalls a faulting shard)"
    fi
  fi
fi

# ---------- data disk ----------
dir="$data_dir"
while [[ ! -e "$dir" && "$dir" != / ]]; do dir="$(dirname "$dir")"; done
if [[ -z "$root" ]]; then
  fs_type="$(findmnt -n -o FSTYPE --target "$dir" 2>/dev/null || true)"
  fs_options="$(findmnt -n -o OPTIONS --target "$dir" 2>/dev/null || true)"
  case "$fs_type" in
    tmpfs | ramfs | overlay) report off data-fs "$dir is on $fs_type: O_DIRECT is silently off on tmpfs; put the data directory on ext4 or xfs" ;;
    ext4 | xfs) report ok data-fs "$dir is on $fs_type ($fs_options)" ;;
    "") report n/a data-fs "cannot tell the file system of $dir" ;;
    *) report info data-fs "$dir is on $fs_type (tested on ext4; O_DIRECT needs a file system that honours it)" ;;
  esac
  if [[ -z "$data_disk" ]]; then
    majmin="$(findmnt -n -o MAJ:MIN --target "$dir" 2>/dev/null | tr -d ' ' || true)"
    if [[ -n "$majmin" && -e "/sys/dev/block/$majmin" ]]; then
      sys_path="$(readlink -f "/sys/dev/block/$majmin")"
      if [[ -e "$sys_path/partition" ]]; then sys_path="$(dirname "$sys_path")"; fi
      data_disk="${sys_path##*/}"
    fi
  fi
fi
scheduler_path="$root/sys/block/$data_disk/queue/scheduler"
if [[ -z "$data_disk" ]]; then
  report n/a disk-scheduler "no block device found for $dir (give --data-disk)"
elif [[ ! -r "$scheduler_path" ]]; then
  report n/a disk-scheduler "$data_disk has no queue/scheduler"
else
  scheduler_now="$(sed -E 's/.*\[([a-z-]+)\].*/\1/' "$scheduler_path")"
  scheduler_available="$(tr -d '[]' <"$scheduler_path" | xargs)"
  case "$data_disk" in
    nvme*) scheduler_want=none ;;
    *) scheduler_want=mq-deadline ;;
  esac
  rotational="$(cat "$root/sys/block/$data_disk/queue/rotational" 2>/dev/null || echo 0)"
  scheduler_why="one sequential O_DIRECT writer per shard needs no reordering: none (NVMe) or mq-deadline (virtio-blk, as measured in MACHINE.md); bfq and kyber add CPU per request"
  if [[ "$scheduler_now" == none || "$scheduler_now" == mq-deadline ]] && ! [[ "$rotational" == 1 && "$scheduler_now" == none ]]; then
    report ok disk-scheduler "$data_disk: $scheduler_now (available: $scheduler_available; $scheduler_why)"
  elif [[ " $scheduler_available " != *" $scheduler_want "* ]]; then
    report off disk-scheduler "$data_disk: $scheduler_now, want $scheduler_want, which this kernel does not offer ($scheduler_available)"
  elif applying; then
    write_value disk-scheduler "$scheduler_path" "$scheduler_want" "$data_disk: $scheduler_now" "$scheduler_why" || true
  else
    report off disk-scheduler "$data_disk: $scheduler_now, want $scheduler_want ($scheduler_why)"
  fi
  if [[ -d "$root/etc/udev/rules.d" ]]; then
    managed_file udev-scheduler "$udev_file" "# Written by CoreMQ tuning/tune.sh --apply: keeps the data disk's scheduler across reboots.
ACTION==\"add|change\", KERNEL==\"$data_disk\", ATTR{queue/scheduler}=\"$scheduler_want\"" || true
  else
    report info udev-scheduler "no /etc/udev/rules.d: the scheduler setting does not survive a reboot"
  fi
fi

# ---------- IRQ affinity ----------
online="$(cat "$root/sys/devices/system/cpu/online" 2>/dev/null || echo "0-$(($(nproc) - 1))")"
mapfile -t online_cpus < <(expand_cpus "$online")
irq_numbers=()
if [[ -r "$root/proc/interrupts" ]]; then
  mapfile -t irq_numbers < <(sed -nE 's/^ *([0-9]+):.*/\1/p' "$root/proc/interrupts")
fi
if ((${#irq_numbers[@]} == 0)); then
  report n/a irq-affinity "no device IRQs listed in /proc/interrupts"
elif [[ -z "$shard_cores" ]]; then
  summary=""
  for irq in "${irq_numbers[@]}"; do
    affinity="$(cat "$root/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo "?")"
    summary+=" $irq:$affinity"
  done
  report info irq-affinity "${#irq_numbers[@]} device IRQs (irq:cores)$summary; pass --shard-cores LIST to check they avoid the shard cores"
else
  if ! shard_list="$(expand_cpus "$shard_cores")" || [[ -z "$shard_list" ]]; then
    echo "tune.sh: --shard-cores '$shard_cores' is not a cpu list like 1-3 or 2,3" >&2
    exit 2
  fi
  mapfile -t shard_cpus <<<"$shard_list"
  housekeeping=()
  for cpu in "${online_cpus[@]}"; do
    if [[ " ${shard_cpus[*]} " != *" $cpu "* ]]; then housekeeping+=("$cpu"); fi
  done
  housekeeping_list="$(
    IFS=,
    echo "${housekeeping[*]}"
  )"
  conflicts=()
  for irq in "${irq_numbers[@]}"; do
    affinity_path="$root/proc/irq/$irq/smp_affinity_list"
    [[ -r "$affinity_path" ]] || continue
    for cpu in $(expand_cpus "$(<"$affinity_path")"); do
      if [[ " ${shard_cpus[*]} " == *" $cpu "* ]]; then
        conflicts+=("$irq")
        break
      fi
    done
  done
  irq_why="a device interrupt on a shard core steals time from its reactor"
  if ((${#conflicts[@]} == 0)); then
    report ok irq-affinity "no device IRQ may run on shard cores $shard_cores"
  elif ((${#housekeeping[@]} == 0)); then
    report off irq-affinity "${#conflicts[@]} IRQs may run on shard cores $shard_cores, and every online core ($online) is a shard core: leave one core to the kernel (fewer shards) to move them"
  elif applying; then
    for irq in "${conflicts[@]}"; do
      affinity_path="$root/proc/irq/$irq/smp_affinity_list"
      from="$(<"$affinity_path")"
      if error="$({ printf '%s\n' "$housekeeping_list" >"$affinity_path"; } 2>&1)"; then
        report set irq-affinity "irq $irq: cores $from -> $housekeeping_list ($irq_why)"
      elif [[ "$error" == *"Input/output error"* ]]; then
        report n/a irq-affinity "irq $irq: kernel-managed (multi-queue) interrupt, cannot be moved"
      else
        report fail irq-affinity "irq $irq: could not set cores $housekeeping_list: ${error##*: }"
      fi
    done
  else
    report off irq-affinity "IRQs ${conflicts[*]} may run on shard cores $shard_cores, want only $housekeeping_list ($irq_why)"
  fi
  if [[ -z "$root" ]] && pgrep -x irqbalance >/dev/null 2>&1; then
    report info irq-affinity "irqbalance is running and will move IRQs back: stop it or give it IRQBALANCE_BANNED_CPULIST=$shard_cores"
  fi
fi

# ---------- summary ----------
echo "summary: $count_ok ok, $count_off off, $count_na n/a, $count_set set, $count_fail failed"
if ((count_fail > 0)); then exit 1; fi
if [[ "$mode" == check && "$strict" -eq 1 && "$count_off" -gt 0 ]]; then exit 1; fi
exit 0
