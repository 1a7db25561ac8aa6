#!/usr/bin/env bash
# Prints API figures as one JSON object: Corral's (its own corrald in a temporary directory)
# and, for LXD and Incus, the same workload through their REST API and CLIs, with Corral's
# ratios (examples/bench_api.rs says what is measured). Not run by CI. Corral's run also times
# `list` with 1000 more (stopped) instances (list_cli_ms_median_many); the references do not:
# a thousand instances take them many minutes to make.
#
#   scripts/bench-api.sh [--with-lxd] [--with-incus] [--pool-on-root]
#
# Corral's directory (its dir pool, database and run directories) is on a fresh ext4 (mkfs.ext4
# defaults, so journaled) on a sparse loop file the script makes, mounts and removes at exit
# (also on error or Ctrl-C): this host's / is ext4 without a journal, where creating an inode
# skips every one deleted in the last minutes (ext4's recently_deleted()), so a launch that
# copies a rootfs after an earlier run deleted one says nothing about a user's host.
# --pool-on-root puts it on / instead (under /var/lib, as before). The JSON says which
# (corral.pool_filesystem). LXD and Incus keep their own directories.
#
# A reference is measured when it is installed and its daemon answers on its socket
# (/var/lib/lxd, /var/lib/incus, or LXD_DIR, INCUS_DIR). With --with-lxd / --with-incus, a daemon
# that is not running is started for the benchmark and stopped at the end; one found running is
# left running. Either way the benchmark deletes the instances and the image it made.
set -euo pipefail
cd "$(dirname "$0")/.."

want_start=()
pool_on_root=0
for arg in "$@"; do
  case $arg in
    --with-lxd) want_start+=(lxd) ;;
    --with-incus) want_start+=(incus) ;;
    --pool-on-root) pool_on_root=1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "bench-api.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

source scripts/install-deps.sh
source scripts/bench-cpu.sh
busybox=$(tests/images/build.sh busybox | awk '{print $2}')
debian=$(tests/images/build.sh bookworm | awk '{print $2}')
cargo build --release -p corrald -p corral --bins --example bench_api >&2
bench=$PWD/target/release/examples/bench_api

# The work directory beside LXD's and Incus's state (/var/lib/lxd, /var/lib/incus), where
# Corral's default /var/lib/corral is; Corral's own directory is on the fresh ext4 mounted in it
# (see above), or in it with --pool-on-root.
work=$(mktemp -d /var/lib/corral-bench-api.XXXXXX)
chmod 0755 "$work"   # containers' unprivileged root must reach their rootfs under it
export TMPDIR=$work  # the references' bench_api work files: removed at exit
corral_tmp=$work     # Corral's: its corrald's directory (pool included) and images
pool_fs="/ ($(findmnt -no FSTYPE --target "$work"), the host's root filesystem)"
export LXD_CONF=$work/lxc-conf INCUS_CONF=$work/incus-conf   # the user's client config untouched
# Nothing listens on the discard port: a daemon given this proxy reaches no image server.
dead_proxy=http://127.0.0.1:9
log() { echo "bench-api.sh: $*" >&2; }

# What differs between the references: $daemon, $dir_var (its directory's variable), $dir,
# $cli, $admin (waitready, init, shutdown), $group (of its socket).
reference() {
  case $1 in
    lxd)
      daemon=$(command -v lxd || true) dir_var=LXD_DIR dir=${LXD_DIR:-/var/lib/lxd}
      cli=lxc admin=(lxd) group=lxd ;;
    incus)
      daemon=$(command -v incusd || echo /usr/libexec/incus/incusd)
      dir_var=INCUS_DIR dir=${INCUS_DIR:-/var/lib/incus} cli=incus admin=(incus admin) group=incus-admin ;;
  esac
  socket=$dir/unix.socket
}

answers() { curl -sf --max-time 10 --unix-socket "$1" "http://bench$2"; }

# The PID listening on the unix socket $1.
listener_pid() {
  ss -xlpn | awk -v s="$1" '$5 == s' | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

declare -A started_pid=()
started_any=0
# liblxc (in LXD and Incus) leaves an empty lxc.pivot cgroup in each hierarchy: those that were
# not there before go once the daemons this script started are stopped.
pivots_before=$(ls -d /sys/fs/cgroup/*/lxc.pivot /sys/fs/cgroup/lxc.pivot 2>/dev/null || true)

# Starts reference $1's daemon (see `reference`); 0 when it answers and has a pool.
start_daemon() {
  local name=$1 subid='' logfile=/var/log/$1-bench.log
  # LXD and Incus give containers root's range from /etc/subuid and /etc/subgid, and with no
  # entry for root (as here) only privileged containers. Show them, in their own mount
  # namespace, the range Corral uses then (LXD's own default): the host's files stay as they are.
  if [[ -e /etc/subuid && -e /etc/subgid ]] &&
    ! { grep -qE '^(root|0):' /etc/subuid && grep -qE '^(root|0):' /etc/subgid; }; then
    subid=$work/subid
    echo root:1000000:1000000000 >"$subid"
  fi
  local group_arg=()
  getent group "$group" >/dev/null && group_arg=(--group "$group")
  log "starting $name ($daemon), log $logfile"
  # A mount namespace of its own, slave to the host's: it sees lxcfs and the host's mounts, and
  # what it mounts stays there and goes with it. setsid: a Ctrl-C reaches this script, whose
  # exit trap shuts the daemon down cleanly. No fork on the way: $! is the daemon's PID.
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
  if answers "$socket" /1.0/storage-pools | grep -q '"metadata":\[\]'; then
    # As `init --auto` but without its bridge (Corral's default profile has no NIC either),
    # and with the dead proxy in the daemon's config too.
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
  "$bench" clean --socket "$socket" || true
  env "$dir_var=$dir" "${admin[@]}" shutdown --timeout 60 >/dev/null 2>&1 || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  log "stopped $name"
}

finish() {
  local name corral_socket
  # Interrupted in the middle of a run: what it made goes, and so does its own corrald (in its
  # own process group, a Ctrl-C does not reach it: its instances must be deleted through it).
  if [[ -n ${current_socket:-} ]]; then "$bench" clean --socket "$current_socket" || true; fi
  for corral_socket in "$corral_tmp"/corral-bench-api-*/unix.socket; do
    [[ -S $corral_socket ]] || continue
    "$bench" clean --socket "$corral_socket" || true
    kill "$(listener_pid "$corral_socket")" 2>/dev/null || true
  done
  for name in "${!started_pid[@]}"; do stop_daemon "$name"; done
  # The fresh filesystem (whatever a killed corrald left mounted under it first, deepest first).
  local m dev
  while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  while IFS= read -r dev; do
    [[ -n $dev ]] && losetup -d "$dev" 2>/dev/null
  done < <(losetup -nl -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 { print $1 }')
  if ((started_any)); then
    local pivot
    for pivot in /sys/fs/cgroup/*/lxc.pivot /sys/fs/cgroup/lxc.pivot; do
      if [[ -d $pivot && $'\n'$pivots_before$'\n' != *$'\n'$pivot$'\n'* ]]; then
        rmdir "$pivot" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "$work"
  bench_cpu_release
}
trap finish EXIT
trap 'exit 130' INT TERM
bench_cpu_priority api # scripts/bench-cpu.sh: the references' daemons get it too
bench_cpu_containers   # Corral's containers too (LXD's and Incus's are in lxc.payload.*: not)

if ((!pool_on_root)); then
  # 8 GiB sparse: the --many instances are a thousand busybox copies (about 2 GiB, 300k inodes).
  truncate -s 8G "$work/pool.img"
  mkfs.ext4 -q "$work/pool.img"
  mkdir "$work/fs"
  mount -o loop "$work/pool.img" "$work/fs"
  chmod 0755 "$work/fs"
  corral_tmp=$work/fs
  pool_fs="a fresh ext4 (mkfs.ext4 defaults: journaled) on a loop file, made for this run"
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
current_socket=
TMPDIR=$corral_tmp "$bench" run "$busybox" --debian "$debian" --many 1000 --pool-fs "$pool_fs" \
  >"$work/corral.json"
results=("corral=$work/corral.json")
notes=(--note "cpu priority: $(bench_cpu_priority_json) (scripts/bench-cpu.sh)")

for name in lxd incus; do
  reference "$name"
  if [[ ! -x $daemon ]] || ! command -v "$cli" >/dev/null; then
    notes+=(--note "$name: not installed")
    continue
  fi
  if ! answers "$socket" /1.0 >/dev/null; then
    if [[ " ${want_start[*]} " != *" $name "* ]]; then
      notes+=(--note "$name: daemon not running (--with-$name starts one)")
      continue
    fi
    if ! start_daemon "$name"; then
      notes+=(--note "$name: daemon did not start (/var/log/$name-bench.log)")
      stop_daemon "$name"
      continue
    fi
    notes+=(--note "$name: daemon started for the benchmark and stopped after it")
  else
    notes+=(--note "$name: daemon found running and left running")
  fi
  pid=$(listener_pid "$socket")
  current_socket=$socket
  if "$bench" run "$busybox" --debian "$debian" --socket "$socket" --pid "${pid:-${started_pid[$name]:-0}}" --cli "$cli" \
    >"$work/$name.json"; then
    results+=("$name=$work/$name.json")
  else
    notes+=(--note "$name: the benchmark failed (its error is above)")
  fi
  current_socket=
  stop_daemon "$name"
done

"$bench" compare --load-before "$load_before" "${notes[@]}" "${results[@]}"
