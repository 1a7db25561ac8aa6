#!/usr/bin/env bash
# Prints Corral's network figures as one JSON object (on stdout; progress on stderr). Not run
# by CI. Needs root.
#
#   scripts/bench-network.sh [--rootfs DIR]
#
# --rootfs DIR: launch this Debian root filesystem instead of the test image that
# `tests/images/build.sh bookworm` gives (to compare two images side by side).
#
# - launch_debian_to_systemd_ready_with_lease_ms: from POST /1.0/instances (the Debian 12 test
#   image, tests/images/bookworm.yaml; one NIC on a managed bridge; its root disk on a btrfs
#   pool, as the issue's LXD and Incus figures are) through the start, until both
#   `systemctl is-system-running --wait` in the container has returned running or degraded and
#   GET /1.0/networks/<bridge>/leases shows the instance's dynamic IPv4 lease (both polled every
#   20 ms). Median of 5 launches, each a new instance, deleted after its run. The pool is made
#   through the API (`{"driver":"btrfs","config":{"size":"4GiB"}}`: a loop file the daemon
#   creates); a first launch, not counted (first_launch_ms), puts the image into it. Each run
#   (launch_runs) also says where its time went: create_ms and start_ms (the two operations),
#   systemd_ready_at_ms and lease_at_ms (since the POST), systemd_boot_ms (systemd's own
#   figure, from its start to the end of its boot transaction), boot_cpu_ms (the CPU time the
#   container's cgroup used up to then, its `cpu.stat` usage_usec, read right after: the boot's
#   work whatever the machine's load; the readiness waiter's few `systemctl` execs count in it),
#   and systemd's start-up before its first unit: systemd_generators_ms (running the
#   generators), systemd_units_loaded_at_ms (from its start until every unit is loaded: the
#   first units start right after).
#   CPU: the bench's processes weigh 16 sessions (scripts/bench-cpu.sh), and so do the
#   containers (their parent cgroup, `corral`, for the bench's duration): the boot is the
#   container's work, and with the default weight a container booting while four other sessions
#   build gets a fifth of the CPU (--no-container-priority measures it so; the JSON's
#   cpu_priority says which). BENCH_LAUNCHES (5) and BENCH_IPERF_RUNS (9, 0: no throughput
#   figures) shorten a run.
# - veth_tcp_throughput_ratio: iperf3 TCP throughput (3 s, median of 9) from inside a running
#   container to an iperf3 server on the bridge's address, divided by the same between the two
#   ends of a bare veth pair in two network namespaces of this script's. Target: >= 0.95. The
#   runs alternate; veth_tcp_throughput_ratio_paired is the median of each container run's
#   ratio to the bare run after it, less sensitive to the machine's load changing.
# - bare_bridge_tcp_gbit_s, bridge_floor_ratio: the kernel's own cost of a bridge, without
#   Corral: a veth pair whose host end is on a bridge this script makes (no nftables table, no
#   dnsmasq), iperf3 to the bridge's address, in the same rotation; its ratio to the bare veth
#   pair is the floor a bridged NIC can reach. bridge_nf_call_iptables: the namespace's
#   net.bridge.bridge-nf-call-iptables (1 when br_netfilter is loaded: every bridged IPv4
#   packet then goes through the IPv4 netfilter hooks, the bridge's address included).
#
# Everything runs in network namespaces this script makes: its corrald runs under
# `nsenter --net=/run/netns/<netns>` as the tests' daemons do, so its bridge, nftables and
# dnsmasq are there and no packet leaves the machine. At exit (also on error or Ctrl-C): the
# instances, the pool (its mount, loop device and file), the daemon, its dnsmasq, the iperf3
# servers, the namespaces and the temporary directory go. CORRAL_TEST_IMAGE_CACHE is passed on
# to tests/images/build.sh; BENCH_BIN names a directory with corrald and corral to use instead
# of building them (cargo build --release). Figures are noisy on a small shared machine:
# compare runs made side by side.
set -euo pipefail
cd "$(dirname "$0")/.."

debian=
container_priority=1
while (($#)); do
  case $1 in
    --rootfs) debian=${2:?--rootfs needs a directory}; shift ;;
    --no-container-priority) container_priority=0 ;;
    -h | --help) sed -n '2,50p' "$0"; exit 0 ;;
    *) echo "bench-network.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((EUID != 0)); then echo "bench-network.sh: needs root" >&2; exit 1; fi
for tool in mkfs.btrfs losetup iperf3; do
  command -v "$tool" >/dev/null || { echo "bench-network.sh: needs $tool (scripts/install-deps.sh)" >&2; exit 1; }
done

LAUNCHES=${BENCH_LAUNCHES:-5}
IPERF_RUNS=${BENCH_IPERF_RUNS:-9}
IPERF_SECONDS=3
POLL_US=20000                 # one poll of the leases (and of the systemd waiter) every 20 ms
TIMEOUT_S=180                 # for one launch to reach systemd ready and a lease
BRIDGE=benchbr0
BRIDGE_NET=10.250.99          # the bridge's /24 (in the daemon's namespace only)
VETH_NET=10.250.98            # the bare veth pair's /24
FLOOR_NET=10.250.97           # the bare bridge's /24
PREFIX=bench-net-             # the instances' names
POOL=benchbtrfs               # the btrfs pool the instances' root disks are on

log() { echo "bench-network.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

source scripts/install-deps.sh
source scripts/bench-cpu.sh
if [[ -n $debian ]]; then
  [[ -x $debian/sbin/init || -L $debian/sbin/init ]] || die "--rootfs $debian: no /sbin/init there"
  debian=$(cd "$debian" && pwd)
else
  debian=$(tests/images/build.sh bookworm | awk '{print $2}')
  [[ -d $debian ]] || die "no Debian rootfs from tests/images/build.sh bookworm"
fi
if [[ -n ${BENCH_BIN:-} ]]; then
  bin=$BENCH_BIN # corrald and corral built elsewhere (a baseline), used as they are
else
  cargo build --release -p corrald -p corral --bins >&2
  bin=$PWD/target/release
fi

# Where the default /var/lib/corral would be (as scripts/bench-api.sh does): the launch copies
# a rootfs, and /tmp may be another filesystem.
work=$(mktemp -d /var/lib/corral-bench-network.XXXXXX)
chmod 0755 "$work"   # containers' unprivileged root must reach their rootfs under it
export CORRAL_DIR=$work/corral
socket=$CORRAL_DIR/unix.socket
netns=corral-bench-net-$$             # the daemon's
netns_a=corral-bench-veth-a-$$        # the bare veth pair's two ends
netns_b=corral-bench-veth-b-$$
netns_c=corral-bench-bridge-c-$$      # the bare bridge and its veth pair's other end
netns_d=corral-bench-bridge-d-$$
daemon_pid=
bg_pids=()                            # iperf3 servers, readiness waiters

api() { # METHOD PATH [JSON]: the response body
  local args=(-sS --max-time 150 --unix-socket "$socket" -X "$1")
  [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  curl "${args[@]}" "http://corral$2"
}

# Waits for the operation an answer started; fails unless it succeeded. $op_result: its answer.
wait_op() { # WHAT ANSWER
  # A synchronous answer (the pool's create): its own envelope.
  if [[ $2 =~ \"type\":\"sync\" ]]; then
    [[ $2 =~ \"error_code\":0, ]] || die "$1: $2"
    op_result=$2
    return 0
  fi
  [[ $2 =~ \"operation\":\"([^\"]+)\" ]] || die "$1: no operation in $2"
  op_result=$(api GET "${BASH_REMATCH[1]}/wait?timeout=120")
  [[ $op_result =~ \"metadata\":\{.*\"status\":\"Success\" ]] || die "$1: $op_result"
}

op() { # METHOD PATH [JSON]
  wait_op "$1 $2" "$(api "$@")"
}

try_op() { # METHOD PATH [JSON]: as op, but never fails (for the cleanup)
  local answer
  answer=$(api "$@" 2>/dev/null)
  [[ $answer =~ \"operation\":\"([^\"]+)\" ]] && api GET "${BASH_REMATCH[1]}/wait?timeout=60" >/dev/null 2>&1
  return 0
}

# Sets variable $1 to the time in microseconds (no fork: polls must stay cheap).
stamp() { local _us=${EPOCHREALTIME//[.,]/}; printf -v "$1" '%d' "$((10#$_us))"; }
ms_between() { awk -v d=$(($2 - $1)) 'BEGIN { printf "%.1f", d / 1000 }'; }   # START_US END_US
# Sleeps until $1 (microseconds), without a fork: read times out on a fifo nobody writes.
sleep_until() {
  local _now _left _s
  stamp _now
  _left=$(($1 - _now))
  ((_left > 0)) || return 0
  printf -v _s '%d.%06d' $((_left / 1000000)) $((_left % 1000000))
  read -r -t "$_s" -u "$tick" _ || true
}

median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

cleanup() {
  local rc=$? pid name run dir
  trap - EXIT INT TERM
  set +e
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    for name in $(api GET /1.0/instances 2>/dev/null | grep -o '/1.0/instances/[^"]*'); do
      name=${name##*/}
      try_op PUT "/1.0/instances/$name/state" '{"action":"stop","force":true}'
      try_op DELETE "/1.0/instances/$name"
    done
    # The image's volume is in the pool: the image goes first, then the pool (its delete
    # unmounts it, detaches its loop device and removes its file).
    [[ -n ${fingerprint:-} ]] && try_op DELETE "/1.0/images/$fingerprint"
    try_op DELETE "/1.0/storage-pools/$POOL"
    kill "$daemon_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  # Containers that outlived the daemon (a failed delete): through their monitors.
  for run in "$CORRAL_DIR"/run/*/; do
    [[ -S $run/monitor.sock ]] || continue
    name=$(basename "$run")
    CORRAL_RUN_DIR=$CORRAL_DIR/run "$bin/corrald" container stop --force "$name" >/dev/null 2>&1
  done
  # The daemon's dnsmasq outlives it by design.
  local args arg
  for dir in /proc/[0-9]*; do
    mapfile -d '' -t args <"$dir/cmdline" 2>/dev/null || continue
    [[ ${args[0]:-} == *dnsmasq ]] || continue
    for arg in "${args[@]}"; do
      [[ $arg == "--conf-file=$CORRAL_DIR/networks/"* ]] && kill -9 "${dir#/proc/}" 2>/dev/null
    done
  done
  # What a failed pool delete left: mounts under the directory (deepest first), loop devices
  # backed by a file in it.
  local m dev
  while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  while IFS= read -r dev; do
    [[ -n $dev ]] && losetup -d "$dev"
  done < <(losetup -nl -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 { print $1 }')
  for name in "$netns" "$netns_a" "$netns_b" "$netns_c" "$netns_d"; do
    [[ -e /run/netns/$name ]] && ip netns delete "$name"
  done
  if ((rc != 0)) && [[ -s $work/corrald.log ]]; then
    log "corrald's log (last lines):"
    tail -n 30 "$work/corrald.log" >&2
  fi
  for _ in $(seq 20); do rm -rf "$work" 2>/dev/null && break; sleep 0.2; done
  [[ -e $work ]] && log "could not remove $work"
  bench_cpu_release
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bench_cpu_priority network # scripts/bench-cpu.sh
((container_priority)) && bench_cpu_containers

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

mkfifo "$work/tick"
exec {tick}<>"$work/tick"

# ------------------------------------------------------------------ the daemon and its bridge --
ip netns add "$netns"
in_ns "$netns" ip link set lo up
mkdir -p "$CORRAL_DIR"
# setsid: a Ctrl-C reaches this script only, whose cleanup deletes the instances through the
# daemon. nsenter execs corrald (no fork for a network namespace): $! is the daemon.
setsid nsenter --net="/run/netns/$netns" "$bin/corrald" </dev/null >/dev/null 2>"$work/corrald.log" &
daemon_pid=$!
"$bin/corrald" waitready --timeout 30 || die "corrald did not come up"
server_version=$(api GET /1.0 | grep -o '"server_version":"[^"]*"' | cut -d'"' -f4)

api POST /1.0/networks "$(printf '{"name":"%s","type":"bridge","config":{"ipv4.address":"%s.1/24","ipv4.nat":"true","ipv6.address":"none"}}' "$BRIDGE" "$BRIDGE_NET")" |
  grep -q '"error_code":0,' || die "cannot create $BRIDGE"
[[ $(api GET "/1.0/networks/$BRIDGE") == *'"managed":true'* ]] || die "$BRIDGE is not there"
op POST /1.0/storage-pools "$(printf '{"name":"%s","driver":"btrfs","config":{"size":"4GiB"}}' "$POOL")"
[[ $(api GET "/1.0/storage-pools/$POOL") == *'"driver":"btrfs"'* ]] || die "$POOL is not there"

# ------------------------------------------------------------------------------- the image --
log "packing and importing $debian"
meta=$work/meta
mkdir -p "$meta"
cat >"$meta/metadata.yaml" <<EOF
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  os: debian
  release: bookworm
  description: corral-bench-network debian
EOF
tar --numeric-owner --xattrs --xattrs-include='*' -cf "$work/debian.tar" \
  -C "$meta" metadata.yaml -C "$(dirname "$debian")" "$(basename "$debian")" \
  --transform "s,^$(basename "$debian"),rootfs,"
answer=$(curl -sS --max-time 600 --unix-socket "$socket" -X POST \
  -H 'Content-Type: application/octet-stream' --upload-file "$work/debian.tar" http://corral/1.0/images)
wait_op "image import" "$answer"
fingerprint=$(sha256sum "$work/debian.tar" | cut -d' ' -f1)
rm -f "$work/debian.tar"
[[ $(api GET "/1.0/images/$fingerprint") == *"\"fingerprint\":\"$fingerprint\""* ]] ||
  die "the image is not there as $fingerprint"
# The import unpacks the image into the daemon's default (dir) pool and makes a spare copy of
# it there in the background (crates/corrald/src/storage.rs): left to finish (up to 10 min),
# so that it does not share the CPUs with the launches, which are on the btrfs pool.
spares=$CORRAL_DIR/storage-pools/default/spares/$fingerprint
spare_ready=0
for ((w = 0; w < 6000 && spare_ready == 0; w++)); do
  for e in "$spares"/*; do [[ -d $e ]] && spare_ready=1; done   # the glob skips .partial ones
  ((spare_ready)) || sleep 0.1
done
((spare_ready)) || log "the default pool's copy of the image is not finished after 10 minutes"

# ---------------------------------------------------------------------------- the launches --
has_lease() { # NAME: whether the bridge's leases show a dynamic IPv4 lease for it
  local out obj
  out=$(api GET "/1.0/networks/$BRIDGE/leases") || return 1
  while [[ $out =~ \{([^{}]*)\} ]]; do
    obj=${BASH_REMATCH[1]}
    out=${out#*"${BASH_REMATCH[0]}"}
    if [[ $obj == *"\"hostname\":\"$1\""* && $obj == *'"type":"dynamic"'* &&
      $obj =~ \"address\":\"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\" ]]; then
      return 0
    fi
  done
  return 1
}

# Launches instance $1 and waits until systemd is ready in it and it has its lease. Sets $total
# (ms) and $run (its figures as JSON).
launch() {
  local name=$1 body ready_file t0 t_created t_started t t_lease t_ready t_end state execs polls next
  local waiter boot userspace systemd_boot cpu boot_cpu generators units_loaded
  sleep 2   # let the load of the last delete's writes pass
  body=$(printf '{"name":"%s","source":{"type":"image","fingerprint":"%s"},"devices":{"eth0":{"type":"nic","network":"%s"},"root":{"type":"disk","path":"/","pool":"%s"}}}' \
    "$name" "$fingerprint" "$BRIDGE" "$POOL")
  ready_file=$work/ready-$name
  stamp t0
  op POST /1.0/instances "$body"
  stamp t_created
  op PUT "/1.0/instances/$name/state" '{"action":"start"}'
  stamp t_started
  # systemd: `systemctl is-system-running --wait` through exec, again until it answers
  # running or degraded (before systemd listens, it answers offline at once).
  (
    execs=0
    while :; do
      execs=$((execs + 1))
      state=$(timeout 120 "$bin/corral" exec "$name" -- systemctl is-system-running --wait 2>/dev/null || true)
      if [[ $state == running || $state == degraded ]]; then
        stamp t
        echo "$t $state $execs" >"$ready_file"
        exit 0
      fi
      stamp t
      sleep_until $((t + POLL_US))
    done
  ) &
  waiter=$!
  bg_pids+=("$waiter")
  t_lease='' t_ready='' state='' execs='' polls=0 next=$t_started
  while :; do
    polls=$((polls + 1))
    if [[ -z $t_lease ]] && has_lease "$name"; then stamp t_lease; fi
    if [[ -z $t_ready && -s $ready_file ]]; then read -r t_ready state execs <"$ready_file"; fi
    [[ -n $t_lease && -n $t_ready ]] && break
    stamp t
    ((t - t0 < TIMEOUT_S * 1000000)) ||
      die "$name: no systemd ready (${t_ready:-no}) or no lease (${t_lease:-no}) after ${TIMEOUT_S}s"
    next=$((next + POLL_US))
    ((next > t)) || next=$t   # a slow poll: the next one at once, no catching up
    sleep_until "$next"
  done
  t_end=$((t_lease > t_ready ? t_lease : t_ready))
  wait "$waiter" 2>/dev/null || true
  total=$(ms_between "$t0" "$t_end")
  cpu=$("$bin/corral" exec "$name" -- cat /sys/fs/cgroup/cpu.stat 2>/dev/null || true)
  boot_cpu=null
  [[ $cpu =~ usage_usec\ ([0-9]+) ]] && boot_cpu=$(ms_between 0 "${BASH_REMATCH[1]}")
  # systemd's own figure: from its start (as PID 1) to the end of its boot transaction.
  boot=$("$bin/corral" exec "$name" -- systemctl show \
    -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic -p GeneratorsStartTimestampMonotonic \
    -p GeneratorsFinishTimestampMonotonic -p UnitsLoadFinishTimestampMonotonic 2>/dev/null || true)
  systemd_boot=null generators=null units_loaded=null
  if [[ $boot =~ UserspaceTimestampMonotonic=([0-9]+) ]] && userspace=${BASH_REMATCH[1]}; then
    [[ $boot =~ (^|[[:space:]])FinishTimestampMonotonic=([0-9]+) ]] &&
      systemd_boot=$(ms_between "$userspace" "${BASH_REMATCH[2]}")
    [[ $boot =~ GeneratorsStartTimestampMonotonic=([0-9]+) ]] && generators=${BASH_REMATCH[1]} &&
      [[ $boot =~ GeneratorsFinishTimestampMonotonic=([0-9]+) ]] &&
      generators=$(ms_between "$generators" "${BASH_REMATCH[1]}")
    [[ $boot =~ UnitsLoadFinishTimestampMonotonic=([0-9]+) ]] &&
      units_loaded=$(ms_between "$userspace" "${BASH_REMATCH[1]}")
  fi
  [[ $generators == *.* ]] || generators=null
  run=$(printf '{"total_ms":%s,"create_ms":%s,"start_ms":%s,"systemd_ready_at_ms":%s,"lease_at_ms":%s,"systemd_boot_ms":%s,"systemd_generators_ms":%s,"systemd_units_loaded_at_ms":%s,"boot_cpu_ms":%s,"system_state":"%s","lease_polls":%d,"ready_execs":%d}' \
    "$total" "$(ms_between "$t0" "$t_created")" "$(ms_between "$t_created" "$t_started")" \
    "$(ms_between "$t0" "$t_ready")" "$(ms_between "$t0" "$t_lease")" "$systemd_boot" "$generators" "$units_loaded" "$boot_cpu" "$state" \
    "$polls" "$execs")
}

# The first launch puts the image into the pool (not counted).
launch "${PREFIX}0"
first_launch=$total
log "first launch (the image into the pool): $run"
op PUT "/1.0/instances/${PREFIX}0/state" '{"action":"stop","force":true}'
op DELETE "/1.0/instances/${PREFIX}0"

launch_runs=()
totals=()
for ((i = 1; i <= LAUNCHES; i++)); do
  name=$PREFIX$i
  launch "$name"
  totals+=("$total")
  launch_runs+=("$run")
  log "launch $i: $run"
  if ((i == 1)); then
    # Where the boot's time went (stderr only).
    "$bin/corral" exec "$name" -- systemd-analyze >&2 || true
    "$bin/corral" exec "$name" -- systemd-analyze critical-chain --no-pager >&2 || true
    "$bin/corral" exec "$name" -- sh -c 'systemd-analyze blame --no-pager | head -n 12' >&2 || true
  fi
  if ((i < LAUNCHES)); then
    op PUT "/1.0/instances/$name/state" '{"action":"stop","force":true}'
    op DELETE "/1.0/instances/$name"
  fi
done
container=$PREFIX$LAUNCHES   # kept for the throughput figures, deleted at exit

join() { local IFS=,; echo "$*"; }
json_launches() { # END: what follows the last line ("," when more comes)
  cat <<EOF
  "daemon": "corrald",
  "server_version": "$server_version",
  "kernel": "$(uname -r)",
  "cpus": $(nproc),
  "cpu_priority": "$(bench_cpu_priority_json)",
  "load_before": "$load_before",
  "load_after": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "rootfs": "$debian",
  "first_launch_ms": $first_launch,
  "launch_debian_to_systemd_ready_with_lease_ms": $(median "${totals[@]}"),
  "launch_runs": [$(join "${launch_runs[@]}")]$1
EOF
}
if ((IPERF_RUNS == 0)); then   # the launches only
  echo "{"
  json_launches ""
  echo "}"
  exit 0
fi

# -------------------------------------------------------------------------------- iperf3 --
gbit_s() { # iperf3 -J output on stdin: the receiver's rate in Gbit/s
  awk '/"sum_received"/ { f = 1 } f && /"bits_per_second"/ { gsub(/[^0-9.e+-]/, "", $2); printf "%.3f", $2 / 1e9; exit }'
}

start_iperf_server() { # NETNS ADDRESS
  # nsenter execs iperf3: $! is the server.
  nsenter --net="/run/netns/$1" iperf3 -s -B "$2" >/dev/null 2>&1 &
  bg_pids+=("$!")
  local _
  for _ in $(seq 100); do
    in_ns "$1" ss -ltn "sport = :5201" | grep -q 5201 && return 0
    sleep 0.05
  done
  die "iperf3 server in $1 did not listen"
}

iperf_client() { # NET-NAMESPACE-FILE SERVER: Gbit/s
  local out rate
  out=$(nsenter --net="$1" iperf3 -c "$2" -t "$IPERF_SECONDS" -J) || die "iperf3 -c $2 from $1: $out"
  rate=$(gbit_s <<<"$out")
  [[ -n $rate ]] || die "no rate in iperf3's output: $out"
  echo "$rate"
}

# The bare veth pair.
ip netns add "$netns_a"
ip netns add "$netns_b"
ip -n "$netns_a" link set lo up
ip -n "$netns_b" link set lo up
ip -n "$netns_a" link add vbench0 type veth peer name vbench1 netns "$netns_b"
ip -n "$netns_a" addr add "$VETH_NET.1/24" dev vbench0
ip -n "$netns_b" addr add "$VETH_NET.2/24" dev vbench1
ip -n "$netns_a" link set vbench0 up
ip -n "$netns_b" link set vbench1 up
start_iperf_server "$netns_a" "$VETH_NET.1"

# The bare bridge: the same veth pair, its host end on a bridge that has the address.
ip netns add "$netns_c"
ip netns add "$netns_d"
ip -n "$netns_c" link set lo up
ip -n "$netns_d" link set lo up
ip -n "$netns_c" link add brfloor0 type bridge
ip -n "$netns_c" addr add "$FLOOR_NET.1/24" dev brfloor0
ip -n "$netns_c" link set brfloor0 up
ip -n "$netns_c" link add vfloor0 type veth peer name vfloor1 netns "$netns_d"
ip -n "$netns_c" link set vfloor0 master brfloor0
ip -n "$netns_c" link set vfloor0 up
ip -n "$netns_d" addr add "$FLOOR_NET.2/24" dev vfloor1
ip -n "$netns_d" link set vfloor1 up
start_iperf_server "$netns_c" "$FLOOR_NET.1"
bridge_nf=$(in_ns "$netns_c" cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo null)

# The container: its NIC on the bridge, the server on the bridge's address.
init_pid=$(api GET "/1.0/instances/$container/state" | grep -o '"pid":[0-9]*' | head -n1 | cut -d: -f2)
[[ -n $init_pid && $init_pid != 0 ]] || die "no init pid for $container"
start_iperf_server "$netns" "$BRIDGE_NET.1"
container_rates=() veth_rates=() floor_rates=() pair_ratios=()
for ((r = 1; r <= IPERF_RUNS; r++)); do   # interleaved: drift in the machine's load hits both
  rate=$(iperf_client "/proc/$init_pid/ns/net" "$BRIDGE_NET.1")
  container_rates+=("$rate")
  rate=$(iperf_client "/run/netns/$netns_b" "$VETH_NET.1")
  veth_rates+=("$rate")
  pair_ratios+=("$(awk -v c="${container_rates[-1]}" -v v="$rate" 'BEGIN { printf "%.3f", c / v }')")
  floor_rates+=("$(iperf_client "/run/netns/$netns_d" "$FLOOR_NET.1")")
  log "iperf3 run $r: container->bridge ${container_rates[-1]} Gbit/s, bare veth ${veth_rates[-1]} Gbit/s, bare bridge ${floor_rates[-1]} Gbit/s"
done
container_gbit=$(median "${container_rates[@]}")
veth_gbit=$(median "${veth_rates[@]}")
floor_gbit=$(median "${floor_rates[@]}")
ratio=$(awk -v c="$container_gbit" -v v="$veth_gbit" 'BEGIN { printf "%.3f", c / v }')

echo "{"
json_launches ","
cat <<EOF
  "network": {"type": "bridge", "ipv4.address": "$BRIDGE_NET.1/24", "ipv4.nat": "true", "ipv6.address": "none"},
  "storage_pool": {"name": "$POOL", "driver": "btrfs", "size": "4GiB"},
  "container_to_bridge_tcp_gbit_s": $container_gbit,
  "container_to_bridge_tcp_gbit_s_runs": [$(join "${container_rates[@]}")],
  "bare_veth_tcp_gbit_s": $veth_gbit,
  "bare_veth_tcp_gbit_s_runs": [$(join "${veth_rates[@]}")],
  "veth_tcp_throughput_ratio": $ratio,
  "veth_tcp_throughput_ratio_paired": $(median "${pair_ratios[@]}"),
  "veth_tcp_throughput_ratio_paired_runs": [$(join "${pair_ratios[@]}")],
  "veth_tcp_throughput_ratio_target": 0.95,
  "bare_bridge_tcp_gbit_s": $floor_gbit,
  "bare_bridge_tcp_gbit_s_runs": [$(join "${floor_rates[@]}")],
  "bridge_floor_ratio": $(awk -v c="$floor_gbit" -v v="$veth_gbit" 'BEGIN { printf "%.3f", c / v }'),
  "bridge_nf_call_iptables": $bridge_nf,
  "iperf3_seconds": $IPERF_SECONDS
}
EOF
