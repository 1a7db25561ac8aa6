#!/usr/bin/env bash
# Prints storage figures as one JSON object (on stdout; progress on stderr): Corral's (its own
# corrald in a temporary CORRAL_DIR) and, with --with-lxd / --with-incus, the same workload on
# LXD and Incus with Corral's ratios. Not run by CI. Needs root.
#
#   scripts/bench-storage.sh [--with-lxd] [--with-incus] [--runs N] [--on-root]
#
# Corral's dir pool is on a fresh journaled ext4 made here on a loop file (mounted where the
# default pool lives, $CORRAL_DIR/storage-pools/default), unless --on-root keeps it on the
# filesystem of /var/lib. Why: this host's / is ext4 without a journal, which skips every inode
# freed in the last minutes when allocating one (8 s instead of 0.95 s to copy Debian's rootfs).
# (LXD's and Incus's dir pools stay where they are: compare with them under --on-root.)
# On the Debian 12 test image, through the REST API on one keep-alive connection
# (crates/corrald/examples/bench_storage.rs says exactly what is timed): on a btrfs pool made
# through the API (a 4 GiB loop file the daemon creates) launch (create + start;
# launch_btrfs_first_ms is the first, which puts the image into the pool), snapshot of a running
# instance, restore of an older snapshot (stopped), local copy of a stopped instance, delete;
# the same on the default dir pool (launch on dir is scripts/bench-api.sh's); export (a zstd
# backup and its download, timed together as `lxc export` does them) of a stopped instance on
# each pool, with its size. Each figure is the median of N runs (5); every run is in `runs`,
# each step with the daemon's own part of it (`*_server_ms`). `targets_ms` has the issue's
# targets beside Corral's figures, `load_average` the load (the machine may be shared).
#
# Corral's daemon runs in a network namespace of its own (`nsenter --net`, as the tests' do).
# LXD and Incus: a reference is measured when it is installed and its daemon answers on its
# socket (/var/lib/lxd, /var/lib/incus, or LXD_DIR, INCUS_DIR); with --with-lxd / --with-incus
# one that is not running is started for the benchmark (as scripts/bench-api.sh does: its own
# mount namespace, image servers unreachable) and stopped at the end. Each gets the same
# workload on a btrfs pool of its own (`corral-bench-btrfs`, size=4GiB) and its default dir pool.
# BENCH_KEEP_LOGS=DIR keeps corrald's log there (with CORRAL_LOG=corrald=debug,corral_storage=debug:
# each snapshot's, restore's and copy's timings).
# At exit (also on error or Ctrl-C) the instances, images, pools (loop files, their mounts and
# loop devices, the dir pool's ext4 among them), the daemons this script started, the namespace and the temporary directory go.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5
on_root=0
want_start=()
while (($#)); do
  case $1 in
    --with-lxd) want_start+=(lxd) ;;
    --with-incus) want_start+=(incus) ;;
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --on-root) on_root=1 ;;
    -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "bench-storage.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-storage.sh: --runs: not a number: $RUNS" >&2; exit 2; }
if ((EUID != 0)); then echo "bench-storage.sh: needs root" >&2; exit 1; fi

log() { echo "bench-storage.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

source scripts/install-deps.sh
source scripts/bench-cpu.sh
for tool in btrfs mkfs.btrfs mkfs.ext4 losetup zstd; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs it)"
done
debian=$(tests/images/build.sh bookworm | awk '{print $2}')
[[ -d $debian ]] || die "no Debian rootfs from tests/images/build.sh bookworm"
cargo build --release -p corrald -p corral --bins --example bench_storage >&2
built_from="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(
  [[ -n $(git status --porcelain --untracked-files=no -- crates Cargo.lock 2>/dev/null) ]] &&
    echo ' with uncommitted changes under crates/' || true)"
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
bench=$bin/examples/bench_storage

# Where the default /var/lib/corral is, beside /var/lib/lxd and /var/lib/incus: the dir pools
# of all three copy on the same filesystem.
work=$(mktemp -d /var/lib/corral-bench-storage.XXXXXX)
chmod 0755 "$work"   # containers' unprivileged root must reach their rootfs under it
export CORRAL_DIR=$work/corral
export LXD_CONF=$work/lxc-conf INCUS_CONF=$work/incus-conf   # the user's client config untouched
socket=$CORRAL_DIR/unix.socket
netns=corral-bench-storage-$$
daemon_pid=
current_socket=                       # the daemon a run is using (cleaned up if interrupted)
dead_proxy=http://127.0.0.1:9         # nothing listens there: no image server is reachable

# --------------------------------------------------------------- LXD and Incus (optional) --
# What differs between the references: $daemon, $dir_var, $dir, $cli, $admin, $group.
reference() {
  case $1 in
    lxd)
      daemon=$(command -v lxd || true) dir_var=LXD_DIR dir=${LXD_DIR:-/var/lib/lxd}
      cli=lxc admin=(lxd) group=lxd ;;
    incus)
      daemon=$(command -v incusd || echo /usr/libexec/incus/incusd)
      dir_var=INCUS_DIR dir=${INCUS_DIR:-/var/lib/incus} cli=incus admin=(incus admin) group=incus-admin ;;
  esac
  ref_socket=$dir/unix.socket
}

answers() { curl -sf --max-time 10 --unix-socket "$1" "http://bench$2"; }

declare -A started_pid=()
started_any=0
pivots_before=$(ls -d /sys/fs/cgroup/*/lxc.pivot /sys/fs/cgroup/lxc.pivot 2>/dev/null || true)

# Starts reference $1's daemon as scripts/bench-api.sh does; 0 when it answers and has a pool.
start_daemon() {
  local name=$1 subid='' logfile=/var/log/$1-bench.log
  if [[ -e /etc/subuid && -e /etc/subgid ]] &&
    ! { grep -qE '^(root|0):' /etc/subuid && grep -qE '^(root|0):' /etc/subgid; }; then
    subid=$work/subid
    echo root:1000000:1000000000 >"$subid"
  fi
  local group_arg=()
  getent group "$group" >/dev/null && group_arg=(--group "$group")
  log "starting $name ($daemon), log $logfile"
  # Its own mount namespace (its pools' mounts go with it); setsid: a Ctrl-C reaches this
  # script only, whose exit trap shuts the daemon down. $! is the daemon's PID.
  setsid unshare --mount --propagation slave -- sh -c '
      if [ -n "$1" ]; then mount --bind "$1" /etc/subuid && mount --bind "$1" /etc/subgid || exit 1; fi
      shift; exec "$@"' sh "$subid" \
    env http_proxy=$dead_proxy https_proxy=$dead_proxy HTTP_PROXY=$dead_proxy HTTPS_PROXY=$dead_proxy \
    no_proxy= NO_PROXY= PATH="$(dirname "$daemon"):$PATH" \
    "$daemon" "${group_arg[@]}" </dev/null >>"$logfile" 2>&1 &
  started_pid[$name]=$!
  started_any=1
  if ! env "$dir_var=$dir" "${admin[@]}" waitready --timeout 120 >&2; then
    log "$name did not start:"; tail -n 20 "$logfile" >&2
    return 1
  fi
  if answers "$ref_socket" /1.0/storage-pools | grep -q '"metadata":\[\]'; then
    env "$dir_var=$dir" "${admin[@]}" init --preseed >&2 <<EOF
config:
  core.proxy_http: $dead_proxy
  core.proxy_https: $dead_proxy
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
EOF
  else
    env "$dir_var=$dir" "$cli" config set core.proxy_http $dead_proxy >&2
    env "$dir_var=$dir" "$cli" config set core.proxy_https $dead_proxy >&2
  fi
}

# Stops reference $1's daemon if this script started it (what the benchmark left deleted first).
stop_daemon() {
  local name=$1 pid=${started_pid[$1]:-}
  [[ -n $pid ]] || return 0
  reference "$name"
  unset "started_pid[$name]"
  "$bench" clean --socket "$ref_socket" || true
  env "$dir_var=$dir" "${admin[@]}" shutdown --timeout 60 >/dev/null 2>&1 || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  log "stopped $name"
}

# ------------------------------------------------------------------------------ clean-up --
cleanup() {
  local rc=$? name run dir dev m
  trap - EXIT INT TERM
  set +e
  # A run interrupted on a reference: what it made there goes.
  if [[ -n $current_socket && $current_socket != "$socket" ]]; then "$bench" clean --socket "$current_socket"; fi
  for name in "${!started_pid[@]}"; do stop_daemon "$name"; done
  if ((started_any)); then
    local pivot
    for pivot in /sys/fs/cgroup/*/lxc.pivot /sys/fs/cgroup/lxc.pivot; do
      if [[ -d $pivot && $'\n'$pivots_before$'\n' != *$'\n'$pivot$'\n'* ]]; then
        rmdir "$pivot" 2>/dev/null || true
      fi
    done
  fi
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    # Instances, image and pools through the daemon (the btrfs pool's delete unmounts it,
    # detaches its loop device and removes its file).
    "$bench" clean --socket "$socket"
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
  # The daemon's dnsmasq outlives it by design (this benchmark makes no network: none expected).
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
  while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  while IFS= read -r dev; do
    [[ -n $dev ]] && losetup -d "$dev"
  done < <(losetup -nl -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 { print $1 }')
  [[ -e /run/netns/$netns ]] && ip netns delete "$netns"
  if [[ -n ${BENCH_KEEP_LOGS:-} && -s $work/corrald.log ]]; then
    mkdir -p "$BENCH_KEEP_LOGS" && cp "$work/corrald.log" "$BENCH_KEEP_LOGS/" && log "corrald's log kept in $BENCH_KEEP_LOGS"
  fi
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
bench_cpu_priority storage # scripts/bench-cpu.sh; the references' daemons get it too
bench_cpu_containers       # Corral's containers too (LXD's and Incus's are in lxc.payload.*: not)

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------- Corral --
ip netns add "$netns"
ip -n "$netns" link set lo up
mkdir -p "$CORRAL_DIR"
dir_pool_fs="the filesystem of /var/lib ($(findmnt -no FSTYPE,OPTIONS --target /var/lib))"
if ((!on_root)); then
  # 8 GiB, sparse; inode tables and journal written now (no ext4lazyinit writing during the runs).
  truncate -s 8G "$work/dir-pool.ext4"
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$work/dir-pool.ext4"
  loopdev=$(losetup --find --show "$work/dir-pool.ext4")
  mkdir -p "$CORRAL_DIR/storage-pools/default"
  mount "$loopdev" "$CORRAL_DIR/storage-pools/default"
  dir_pool_fs="a fresh journaled ext4 on a loop file ($(findmnt -no OPTIONS "$CORRAL_DIR/storage-pools/default"))"
fi
# setsid: a Ctrl-C reaches this script only, whose cleanup deletes everything through the
# daemon. nsenter execs corrald: $! is the daemon. CORRAL_LOG (e.g. corrald=debug) is passed on;
# its log is $work/corrald.log, shown if the benchmark fails and kept with BENCH_KEEP_LOGS=DIR.
setsid nsenter --net="/run/netns/$netns" "$bin/corrald" </dev/null >/dev/null 2>"$work/corrald.log" &
daemon_pid=$!
"$bin/corrald" waitready --timeout 30 || die "corrald did not come up"
pool=$(answers "$socket" /1.0/profiles/default | grep -o '"pool":"[^"]*"' | head -n1 | cut -d'"' -f4)
current_socket=$socket
log "Corral: $RUNS runs on btrfs and dir"
"$bench" run --socket "$socket" --debian "$debian" --runs "$RUNS" --work "$work/bench" \
  --spares "$CORRAL_DIR/storage-pools/${pool:-default}/spares" >"$work/corral.json"
current_socket=
results=("corral=$work/corral.json")
notes=("corral: built from $built_from" "corral: dir pool on $dir_pool_fs" "cpu priority: $(bench_cpu_priority_json) (scripts/bench-cpu.sh)")

for name in lxd incus; do
  reference "$name"
  if [[ ! -x $daemon ]] || ! command -v "$cli" >/dev/null; then
    notes+=("$name: not installed")
    continue
  fi
  if ! answers "$ref_socket" /1.0 >/dev/null; then
    if [[ " ${want_start[*]} " != *" $name "* ]]; then
      notes+=("$name: daemon not running (--with-$name starts one)")
      continue
    fi
    if ! start_daemon "$name"; then
      notes+=("$name: daemon did not start (/var/log/$name-bench.log)")
      stop_daemon "$name"
      continue
    fi
    notes+=("$name: daemon started for the benchmark and stopped after it")
  else
    notes+=("$name: daemon found running and left running")
  fi
  current_socket=$ref_socket
  log "$name: $RUNS runs on btrfs and dir"
  if "$bench" run --socket "$ref_socket" --debian "$debian" --runs "$RUNS" --work "$work/bench" \
    >"$work/$name.json"; then
    results+=("$name=$work/$name.json")
  else
    notes+=("$name: the benchmark failed (its error is above)")
  fi
  current_socket=
  stop_daemon "$name"
done

note_args=()
for n in "${notes[@]}"; do note_args+=(--note "$n"); done
"$bench" compare --load-before "$load_before" "${note_args[@]}" "${results[@]}"
