#!/usr/bin/env bash
# Prints live-migration downtime figures as one JSON object (on stdout; progress on stderr).
# Not run by CI. Needs root, CRIU (scripts/install-deps.sh) and the test images.
#
#   scripts/bench-checkpoint.sh [--runs N] [--only busybox|debian] [--lazy]
#
# Two corrald (release builds), each in a network namespace of its own, joined by a veth pair
# (10.79.0.1 and .2), HTTPS between them, a managed bridge with the same name on both. For a
# busybox container and a Debian 12 systemd container (migration.stateful=true, one NIC on the
# bridge), N live moves h1 -> h2 and N back (each leg one sample), and per kind the medians of:
# - dump_criu_ms: criu dump (the container is frozen meanwhile), from the source's log;
# - dump_total_ms: the whole stateful stop on the source (criu, monitor teardown, records);
# - restore_criu_ms: criu restore on the target (the last timestamp of its restore.log);
# - restore_total_ms: the target's start from the state (spec, NICs, criu, addresses, records);
# - downtime_ms: the pause the source measured and the CLI prints ("paused for N ms"):
#   checkpoint, delta with the state over the link, restore on the target, its answer.
# --lazy: also, per kind, a privileged container (security.privileged=true: without a user
# namespace of its own, which this kernel's vm.unprivileged_userfaultfd=0 needs for criu's
# userfaultfd) moved N times there and back with stop-and-copy, then N times with post-copy
# (migration.stateful.lazy=true): "<kind>_privileged": the median pause of each, and the
# target's time from the start of its restore until every page had arrived (lazy_fetch_ms).
# BENCH_LAZY_MEM_MB=N: the privileged busybox also holds N MB in a shell variable (a process
# of init's tree), memory that stop-and-copy carries inside the pause and post-copy after it.
# BENCH_BIN=DIR uses the corrald and corral in DIR instead of building them (a baseline);
# CORRAL_CRIU=PATH another criu. At exit (also on error or Ctrl-C) the daemons, their
# containers, the namespaces, the veth and the temporary directory go.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
ONLY=
LAZY=
while (($#)); do
  case $1 in
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --only) ONLY=${2:?--only needs busybox or debian}; shift ;;
    --lazy) LAZY=1 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench-checkpoint.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-checkpoint.sh: --runs: not a number: $RUNS" >&2; exit 2; }
[[ -z $ONLY || $ONLY == busybox || $ONLY == debian ]] \
  || { echo "bench-checkpoint.sh: --only: busybox or debian" >&2; exit 2; }
if ((EUID != 0)); then echo "bench-checkpoint.sh: needs root" >&2; exit 1; fi

log() { echo "bench-checkpoint.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

source scripts/install-deps.sh
source scripts/bench-cpu.sh
debian=$(tests/images/build.sh bookworm | awk '{print $2}')
busybox=$(tests/images/build.sh busybox | awk '{print $2}')
[[ -d $debian && -d $busybox ]] || die "no test rootfs from tests/images/build.sh"
if [[ -n ${BENCH_BIN:-} ]]; then
  bin=$BENCH_BIN # corrald and corral built elsewhere (a baseline), used as they are
else
  cargo build --release -p corrald -p corral --bins >&2
  bin=$PWD/target/release
fi

work=$(mktemp -d /tmp/corral-bench-checkpoint.XXXXXX)
chmod 755 "$work" # containers (their user namespace) traverse it
ns=(cbc-$$-a cbc-$$-b)
addr=(10.79.0.1 10.79.0.2)
pids=()
export CORRAL_CONF=$work/client

cleanup() {
  trap - EXIT INT TERM
  for i in 0 1; do
    local dir=$work/d$i
    if [[ -S $dir/unix.socket ]]; then
      for c in $(CORRAL_DIR=$dir "$bin/corral" list -f csv -c n 2>/dev/null); do
        CORRAL_DIR=$dir "$bin/corral" delete -f "$c" >/dev/null 2>&1 || true
      done
      CORRAL_DIR=$dir "$bin/corral" network delete cbcbr0 >/dev/null 2>&1 || true
    fi
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${ns[@]}"; do ip netns delete "$n" 2>/dev/null || true; done
  rm -rf "$work"
  bench_cpu_release
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bench_cpu_priority checkpoint # scripts/bench-cpu.sh
bench_cpu_containers

in_ns() { local n=$1; shift; nsenter --net="/run/netns/$n" "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cli() { in_ns "${ns[0]}" env CORRAL_DIR="$work/nodaemon" "$bin/corral" "$@"; }
on() { local i=$1; shift; CORRAL_DIR=$work/d$i "$bin/corral" "$@"; }
# A tracing field of the last line of daemon I's log that contains WHAT, in ms (integers as
# they are; Debug durations such as 262.1ms, 1.2s, 950µs converted).
field_ms() {
  local i=$1 what=$2 key=$3
  grep -a -- "stateful: $what" "$work/d$i.log" | tail -n1 | grep -o -- " $key=[^ ]*" | head -n1 | cut -d= -f2 \
    | sed 's/\x1b\[[0-9;]*m//g' | awk '
      /ms$/ { sub(/ms$/, ""); printf "%d\n", $0 + 0.5; next }
      /µs$/ { sub(/µs$/, ""); printf "%d\n", $0 / 1000 + 0.5; next }
      /ns$/ { print 0; next }
      /s$/ { sub(/s$/, ""); printf "%d\n", $0 * 1000 + 0.5; next }
      { printf "%d\n", $0 + 0.5 }'
}
# criu's own duration: the last "(SS.mmm)" timestamp of a log.
criu_log_ms() { grep -ao '^([ 0-9]*\.[0-9]*)' "$1" 2>/dev/null | tail -n1 | tr -d '() ' | awk '{printf "%d\n", $1 * 1000 + 0.5}'; }

log "two daemons, a veth between them"
ip link add "cbc$$a" type veth peer name "cbc$$b"
for i in 0 1; do
  ip netns add "${ns[$i]}"
  in_ns "${ns[$i]}" ip link set lo up
  dev=cbc$$$([[ $i == 0 ]] && echo a || echo b)
  ip link set "$dev" netns "${ns[$i]}"
  in_ns "${ns[$i]}" ip addr add "${addr[$i]}/24" dev "$dev"
  in_ns "${ns[$i]}" ip link set "$dev" up
  mkdir -p "$work/d$i"
  setsid nsenter --net="/run/netns/${ns[$i]}" env CORRAL_DIR="$work/d$i" NO_COLOR=1 \
    CORRAL_LOG="${CORRAL_LOG:-info}" "$bin/corrald" </dev/null >/dev/null 2>"$work/d$i.log" &
  pids+=($!)
  CORRAL_DIR=$work/d$i "$bin/corrald" waitready --timeout 30 || die "corrald $i did not come up"
  on "$i" config set core.https_address "${addr[$i]}:8443"
  token=$(on "$i" config trust add bench | tail -n1)
  cli remote add "h$((i + 1))" "$token" >/dev/null
  on "$i" network create cbcbr0 ipv4.address=10.252.7.1/24 ipv6.address=none ipv4.nat=false >/dev/null
done

pack() { # ROOTFS OUT: a unified image of a rootfs
  local meta=$work/meta
  mkdir -p "$meta"
  printf 'architecture: %s\ncreation_date: %s\nproperties:\n  description: bench\n' "$(uname -m)" "$(date +%s)" \
    >"$meta/metadata.yaml"
  tar --numeric-owner --xattrs --xattrs-include='*' -cf "$2" -C "$meta" metadata.yaml \
    -C "$(dirname "$1")" "$(basename "$1")" --transform "s,^$(basename "$1"),rootfs,"
}

# One kind: launch on h1, N moves there and back; sets the JSON fragment in $json_<kind>.
bench_kind() {
  local kind=$1 rootfs=$2 c=bench-$1
  shift 2
  log "$kind: importing and launching"
  pack "$rootfs" "$work/$kind.tar"
  on 0 image import "$work/$kind.tar" --alias "$kind" >/dev/null
  rm -f "$work/$kind.tar"
  on 0 init "$kind" "$c" -n cbcbr0 "$@" >/dev/null
  on 0 start "$c"
  if [[ $kind == debian ]]; then
    local s=
    for _ in $(seq 120); do
      s=$(on 0 exec "$c" -- systemctl is-system-running 2>/dev/null || true)
      [[ $s == running || $s == degraded ]] && break
      sleep 0.5
    done
    [[ $s == running || $s == degraded ]] || die "$kind: systemd did not come up ($s)"
  else
    sleep 1
  fi
  local dc=() dt=() rc=() rt=() down=() from to out ms
  for r in $(seq "$RUNS"); do
    for leg in 0 1; do
      from=$leg to=$((1 - leg))
      log "$kind: run $r/$RUNS, h$((from + 1)) -> h$((to + 1))"
      out=$(cli move "h$((from + 1)):$c" "h$((to + 1)):$c" 2>&1 >/dev/null) || die "$kind: move failed: $out"
      ms=$(grep -o 'paused for [0-9]*' <<<"$out" | grep -o '[0-9]*$') || die "$kind: no downtime in: $out"
      down+=("$ms")
      dc+=("$(field_ms "$from" checkpointed criu)")
      dt+=("$(field_ms "$from" checkpointed total)")
      rt+=("$(field_ms "$to" "restored from its state" took)")
      rc+=("$(criu_log_ms "$work/d$to/run/$c/criu-restore.log")")
      log "$kind: downtime ${ms} ms (dump criu ${dc[-1]}, total ${dt[-1]}; restore criu ${rc[-1]}, total ${rt[-1]})"
      # The container settles (a systemd guest's timers, the counter) before the next leg.
      sleep 1
    done
  done
  on 0 delete -f "$c" >/dev/null
  on 0 image delete "$kind" >/dev/null
  local list
  list() { local IFS=,; echo "$*"; }
  printf -v "json_$kind" '"%s": {"downtime_ms": %s, "dump_criu_ms": %s, "dump_total_ms": %s, "restore_criu_ms": %s, "restore_total_ms": %s,\n    "runs": {"downtime_ms": [%s], "dump_criu_ms": [%s], "dump_total_ms": [%s], "restore_criu_ms": [%s], "restore_total_ms": [%s]}}' \
    "$kind" "$(median "${down[@]}")" "$(median "${dc[@]}")" "$(median "${dt[@]}")" "$(median "${rc[@]}")" \
    "$(median "${rt[@]}")" "$(list "${down[@]}")" "$(list "${dc[@]}")" "$(list "${dt[@]}")" "$(list "${rc[@]}")" \
    "$(list "${rt[@]}")"
}

# One kind, privileged: N moves there and back without, then with post-copy; sets
# $json_<kind>_privileged.
bench_lazy() {
  local kind=$1 rootfs=$2 c=lazy-$1 held=0
  shift 2
  log "$kind (privileged): importing and launching"
  pack "$rootfs" "$work/$kind.tar"
  on 0 image import "$work/$kind.tar" --alias "$kind" >/dev/null
  rm -f "$work/$kind.tar"
  on 0 init "$kind" "$c" -n cbcbr0 -c security.privileged=true "$@" >/dev/null
  on 0 start "$c"
  if [[ $kind == debian ]]; then
    local s=
    for _ in $(seq 120); do
      s=$(on 0 exec "$c" -- systemctl is-system-running 2>/dev/null || true)
      [[ $s == running || $s == degraded ]] && break
      sleep 0.5
    done
    [[ $s == running || $s == degraded ]] || die "$kind: systemd did not come up ($s)"
  else
    sleep 1
    local mb=${BENCH_LAZY_MEM_MB:-0}
    if ((mb > 0)); then
      held=$mb
      # Daemonized, so init adopts it (exec sessions are not in the checkpoint).
      on 0 exec "$c" -- sh -c "(x=\$(head -c ${mb}000000 /dev/zero | tr '\\0' a); echo held > /held; \
        while :; do sleep 1; done) </dev/null >/dev/null 2>&1 &"
      for _ in $(seq 120); do on 0 exec "$c" -- test -e /held 2>/dev/null && break; sleep 0.5; done
      log "$kind (privileged): holds $(on 0 exec "$c" -- sh -c 'free -m | awk "/Mem/ {print \$3}"') MB used"
    fi
  fi
  local copy=() lazy=() fetch=() out ms mode
  for mode in false true; do
    on 0 config set "$c" migration.stateful.lazy=$mode
    for r in $(seq "$RUNS"); do
      for leg in 0 1; do
        log "$kind (privileged, lazy=$mode): run $r/$RUNS, h$((leg + 1)) -> h$((2 - leg))"
        if ! out=$(cli move "h$((leg + 1)):$c" "h$((2 - leg)):$c" 2>&1 >/dev/null); then
          # Said in the figures, not fatal: the other kinds' figures still come out.
          log "$kind (privileged): move failed: $out"
          on "$leg" delete -f "$c" >/dev/null 2>&1 || true
          on 0 image delete "$kind" >/dev/null 2>&1 || true
          out=$(tr -d '"\\' <<<"$out" | tr '\n' ' ')
          printf -v "json_${kind}_privileged" '"%s_privileged": {"error": "%s"}' "$kind" "$out"
          return 0
        fi
        ms=$(grep -o 'paused for [0-9]*' <<<"$out" | grep -o '[0-9]*$') || die "$kind: no downtime in: $out"
        if [[ $mode == true ]]; then
          grep -q 'post-copy' <<<"$out" && die "$kind: post-copy fell back: $out"
          lazy+=("$ms")
          fetch+=("$(grep -a 'post-copy): memory complete' "$work/d$((1 - leg)).log" | tail -n1 \
            | grep -o ' took=[^ ]*' | cut -d= -f2 | sed 's/\x1b\[[0-9;]*m//g' | awk '
              /ms$/ { sub(/ms$/, ""); printf "%d\n", $0 + 0.5; next }
              /s$/ { sub(/s$/, ""); printf "%d\n", $0 * 1000 + 0.5; next }
              { print -1 }')")
        else
          copy+=("$ms")
        fi
        log "$kind (privileged, lazy=$mode): downtime ${ms} ms"
        sleep 1
      done
    done
  done
  on 0 delete -f "$c" >/dev/null
  on 0 image delete "$kind" >/dev/null
  local list
  list() { local IFS=,; echo "$*"; }
  printf -v "json_${kind}_privileged" '"%s_privileged": {"held_mb": '"$held"', "stop_and_copy_downtime_ms": %s, "lazy_downtime_ms": %s, "lazy_fetch_ms": %s,\n    "runs": {"stop_and_copy_downtime_ms": [%s], "lazy_downtime_ms": [%s], "lazy_fetch_ms": [%s]}}' \
    "$kind" "$(median "${copy[@]}")" "$(median "${lazy[@]}")" "$(median "${fetch[@]}")" \
    "$(list "${copy[@]}")" "$(list "${lazy[@]}")" "$(list "${fetch[@]}")"
}

json_busybox= json_debian= json_busybox_privileged= json_debian_privileged=
[[ $ONLY == debian ]] || bench_kind busybox "$busybox"
[[ $ONLY == busybox ]] || bench_kind debian "$debian" -c migration.stateful=true -c limits.memory=512MiB
if [[ -n $LAZY ]]; then
  [[ $ONLY == debian ]] || bench_lazy busybox "$busybox"
  [[ $ONLY == busybox ]] || bench_lazy debian "$debian" -c migration.stateful=true -c limits.memory=512MiB
fi

parts=()
[[ -n $json_busybox ]] && parts+=("  $json_busybox")
[[ -n $json_debian ]] && parts+=("  $json_debian")
[[ -n $json_busybox_privileged ]] && parts+=("  $json_busybox_privileged")
[[ -n $json_debian_privileged ]] && parts+=("  $json_debian_privileged")
{
  echo "{"
  for p in "${parts[@]}"; do echo "$p,"; done
  echo "  \"legs_per_kind\": $((RUNS * 2)),"
  echo "  \"targets_ms\": {\"busybox_downtime\": 300, \"debian_downtime\": 1000},"
  echo "  \"criu\": \"$(/usr/local/sbin/criu --version | awk '/^Version/ {print $2}')\","
  echo "  \"cpu_priority\": \"$(bench_cpu_priority_json)\","
  echo "  \"load_average\": \"$(cut -d' ' -f1-3 /proc/loadavg)\""
  echo "}"
}
