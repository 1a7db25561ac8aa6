#!/usr/bin/env bash
# Prints migration figures as one JSON object (on stdout; progress on stderr). Not run by CI.
# Needs root.
#
#   scripts/bench-migration.sh [--runs N] [--no-journal] [--size-mb N] [--pool dir|btrfs]
#                              [--dir-on-root] [--live-debian] [--no-cpu-priority]
#
# Each daemon's CORRAL_DIR (so its dir pool) is a fresh journaled ext4 (mkfs.ext4 on a sparse
# loop file the bench makes, mounts and removes at exit), as on a user's host: / here is ext4
# without a journal, which skips every inode freed in the last minutes when it allocates one, so
# that writing a rootfs after a bench or suite deleted one takes 8x as long there. --dir-on-root:
# the CORRAL_DIRs on / as before (the JSON's dir_pool_fs says which). btrfs loop files stay on /.
# Two corrald (release builds), each in a network namespace of its own, joined by a veth pair
# (10.78.0.1 and .2), each listening on HTTPS there, and a client that trusts both (its own
# CORRAL_CONF). Timed with the CLI, as a user would see it, median of N runs (3):
# - copy_ms: `corral copy h1:deb h2:deb-N` of a stopped Debian 12 container (dir pools, or with
#   --pool btrfs a btrfs pool on a loop file on each side, where the volume goes as a btrfs send
#   stream into btrfs receive);
# - move_ms: `corral move` of it to the other server and back (each leg timed);
# - tar_socat_ms: `tar | socat` of the same rootfs over the same veth, into `tar -x` on the
#   other side: the throughput reference (the issue wants copy ≥ 80% of it);
# - live_busybox_downtime_ms: `corral move` of a running busybox container, the pause the
#   source measured (checkpoint, delta, restore on the target), and live_busybox_total_ms.
# --no-journal: the Debian image without the rootfs's /var/log/journal (the cached bookworm
# test rootfs carries some 330 MB of journals from earlier boots; without them its volume is
# about 160 MB). --size-mb N: pads the Debian container's volume up to N MB with a file of random
# (incompressible) bytes, /var/cache/bench-pad, so that a figure is taken at the size the issue
# names (240 MB) whatever the test image's size. BENCH_BIN=DIR uses the corrald and corral in DIR
# instead of building them. BENCH_KEEP_LOGS=DIR keeps the daemons' logs (d0.log, d1.log: each
# phase's timings, CRIU's stats) there.
# --pool btrfs: each daemon makes a btrfs pool `bench` (a 4 GiB sparse loop file under its
# CORRAL_DIR) and the containers live there (the busybox live move stays on the dir pools).
# Both daemons then hold the Debian image (imported on each, its volume in h2's pool made by an
# instance created and deleted there), as when both launched from the same image server: copy_ms
# and move_ms are of a container of it (only its difference from the image travels, as an
# incremental btrfs stream on h2's copy of the image). copy_full_ms: `corral copy` of the same
# files as a container of an image only h1 has (the same rootfs packed with another
# description), so the whole volume goes as one btrfs stream.
# CPU: after the build the bench runs in a cpu cgroup weighing 16 sessions (scripts/bench-cpu.sh
# says why: without it a btrfs send that takes 2 s took 7 beside a nice-19 build).
# --no-cpu-priority (or BENCH_CPU_PRIORITY=0): not (the JSON's cpu_priority says which).
# --live-debian: also N live moves there and back of a Debian 12 systemd container
# (migration.stateful=true, one NIC on a managed bridge of the same name on both), each leg's
# pause in live_debian_downtime_ms.
# At exit (also on error or Ctrl-C) the daemons, their containers, the pools' mounts and loop
# devices, the ext4 filesystems, the namespaces, the veth and the temporary directory go.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
NO_JOURNAL=
SIZE_MB=
POOL=dir
ON_ROOT=
LIVE_DEBIAN=
while (($#)); do
  case $1 in
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --no-journal) NO_JOURNAL=1 ;;
    --size-mb) SIZE_MB=${2:?--size-mb needs a number}; shift ;;
    --pool) POOL=${2:?--pool needs dir or btrfs}; shift ;;
    --dir-on-root) ON_ROOT=1 ;;
    --live-debian) LIVE_DEBIAN=1 ;;
    --no-cpu-priority) export BENCH_CPU_PRIORITY=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench-migration.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-migration.sh: --runs: not a number: $RUNS" >&2; exit 2; }
[[ $POOL == dir || $POOL == btrfs ]] || { echo "bench-migration.sh: --pool: dir or btrfs, not $POOL" >&2; exit 2; }
if ((EUID != 0)); then echo "bench-migration.sh: needs root" >&2; exit 1; fi

log() { echo "bench-migration.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

source scripts/install-deps.sh
source scripts/bench-cpu.sh
debian=$(tests/images/build.sh bookworm | awk '{print $2}')
busybox=$(tests/images/build.sh busybox | awk '{print $2}')
[[ -d $debian && -d $busybox ]] || die "no test rootfs from tests/images/build.sh"
if [[ -n ${BENCH_BIN:-} ]]; then
  bin=$BENCH_BIN # corrald and corral built elsewhere, used as they are
else
  cargo build --release -p corrald -p corral --bins >&2
  bin=$PWD/target/release
fi

work=$(mktemp -d /tmp/corral-bench-migration.XXXXXX)
chmod 755 "$work" # containers (their user namespace) traverse it
ns=(cbm-$$-a cbm-$$-b)
addr=(10.78.0.1 10.78.0.2)
pids=()
export CORRAL_CONF=$work/client

cleanup() {
  trap - EXIT INT TERM
  if [[ -n ${BENCH_KEEP_LOGS:-} ]]; then
    mkdir -p "$BENCH_KEEP_LOGS" && cp "$work"/d?.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
    for f in "$work"/d?/run/*/criu-*.log; do
      [[ -f $f ]] && cp "$f" "$BENCH_KEEP_LOGS/$(basename "$(dirname "$(dirname "$(dirname "$f")")")")-$(basename "$(dirname "$f")")-$(basename "$f")"
    done
  fi
  for i in 0 1; do
    local dir=$work/d$i
    if [[ -S $dir/unix.socket ]]; then
      for c in $(CORRAL_DIR=$dir "$bin/corral" list -f csv -c n 2>/dev/null); do
        CORRAL_DIR=$dir "$bin/corral" delete -f "$c" >/dev/null 2>&1 || true
      done
      CORRAL_DIR=$dir "$bin/corral" network delete cbmbr0 >/dev/null 2>&1 || true
    fi
  done
  for i in 0 1; do
    [[ $POOL == btrfs && -S $work/d$i/unix.socket ]] \
      && CORRAL_DIR=$work/d$i "$bin/corral" storage delete bench >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Whatever a failed run left, in order: the pools' mounts (deepest first), the loop devices on
  # files under the work directory other than the ext4 ones (btrfs pools'), the other mounts
  # (the disks/ binds, the ext4 filesystems), then the ext4 filesystems' loop devices.
  local m l
  umount_under() {
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done \
      < <(awk -v w="$1" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  }
  for i in 0 1; do umount_under "$work/d$i/storage-pools/"; done
  while read -r l m; do
    [[ $m == "$work"/ext4-*.img ]] || losetup -d "$l" 2>/dev/null || true
  done < <(losetup -nl -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 {print $1, $2}')
  umount_under "$work/"
  while read -r l; do losetup -d "$l" 2>/dev/null || true; done \
    < <(losetup -nl -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 {print $1}')
  for n in "${ns[@]}"; do ip netns delete "$n" 2>/dev/null || true; done
  rm -rf "$work"
  bench_cpu_release
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bench_cpu_priority migration
bench_cpu_containers # the containers' restore and their pause count in the downtime

in_ns() { local n=$1; shift; nsenter --net="/run/netns/$n" "$@"; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cli() { in_ns "${ns[0]}" env CORRAL_DIR="$work/nodaemon" "$bin/corral" "$@"; }

log "two daemons, a veth between them"
ip link add "cbm$$a" type veth peer name "cbm$$b"
for i in 0 1; do
  ip netns add "${ns[$i]}"
  in_ns "${ns[$i]}" ip link set lo up
  dev=cbm$$$([[ $i == 0 ]] && echo a || echo b)
  ip link set "$dev" netns "${ns[$i]}"
  in_ns "${ns[$i]}" ip addr add "${addr[$i]}/24" dev "$dev"
  in_ns "${ns[$i]}" ip link set "$dev" up
  mkdir -p "$work/d$i"
  if [[ -z $ON_ROOT ]]; then
    # A fresh journaled ext4 (mkfs.ext4's defaults; inode tables and journal written now, not by
    # ext4lazyinit in the background during the runs) as the daemon's whole CORRAL_DIR.
    truncate -s 8G "$work/ext4-$i.img"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/ext4-$i.img" \
      || die "mkfs.ext4 failed on $work/ext4-$i.img"
    mount -o loop "$work/ext4-$i.img" "$work/d$i" || die "cannot mount $work/ext4-$i.img"
    rmdir "$work/d$i/lost+found"
    chmod 755 "$work/d$i"
    # btrfs pools' loop files stay on / as before (one big file each: not slowed there).
    mkdir -p "$work/disks$i" "$work/d$i/disks"
    mount --bind "$work/disks$i" "$work/d$i/disks"
  fi
  setsid nsenter --net="/run/netns/${ns[$i]}" env CORRAL_DIR="$work/d$i" NO_COLOR=1 \
    CORRAL_LOG="${CORRAL_LOG:-info}" "$bin/corrald" \
    </dev/null >/dev/null 2>"$work/d$i.log" &
  pids+=($!)
  CORRAL_DIR=$work/d$i "$bin/corrald" waitready --timeout 30 || die "corrald $i did not come up"
  CORRAL_DIR=$work/d$i "$bin/corral" config set core.https_address "${addr[$i]}:8443"
  token=$(CORRAL_DIR=$work/d$i "$bin/corral" config trust add bench | tail -n1)
  cli remote add "h$((i + 1))" "$token" >/dev/null
  if [[ -n $LIVE_DEBIAN ]]; then
    CORRAL_DIR=$work/d$i "$bin/corral" network create cbmbr0 ipv4.address=10.252.8.1/24 ipv6.address=none \
      ipv4.nat=false >/dev/null
  fi
done

pack() { # ROOTFS OUT [DESCRIPTION]: a unified image of a rootfs
  local meta=$work/meta
  mkdir -p "$meta"
  printf 'architecture: %s\ncreation_date: %s\nproperties:\n  description: %s\n' "$(uname -m)" "$(date +%s)" "${3:-bench}" \
    >"$meta/metadata.yaml"
  local skip=()
  [[ -n $NO_JOURNAL ]] && skip=(--exclude="$(basename "$1")/var/log/journal/*")
  tar --numeric-owner --xattrs --xattrs-include='*' -cf "$2" -C "$meta" metadata.yaml \
    -C "$(dirname "$1")" "${skip[@]}" "$(basename "$1")" --transform "s,^$(basename "$1"),rootfs,"
}
log "importing Debian 12 and busybox on h1"
pack "$debian" "$work/debian.tar"
pack "$busybox" "$work/busybox.tar"
CORRAL_DIR=$work/d0 "$bin/corral" image import "$work/debian.tar" --alias debian >/dev/null
CORRAL_DIR=$work/d0 "$bin/corral" image import "$work/busybox.tar" --alias busybox >/dev/null
pool=default
if [[ $POOL == btrfs ]]; then
  pool=bench
  for i in 0 1; do
    CORRAL_DIR=$work/d$i "$bin/corral" storage create bench btrfs size=4GiB </dev/null >/dev/null \
      || die "cannot create a btrfs pool on daemon $i"
  done
  log "the Debian image on h2 too (its volume in h2's pool); another one of the same files on h1 only"
  CORRAL_DIR=$work/d1 "$bin/corral" image import "$work/debian.tar" --alias debian >/dev/null
  CORRAL_DIR=$work/d1 "$bin/corral" init debian seed --storage bench >/dev/null
  CORRAL_DIR=$work/d1 "$bin/corral" delete seed >/dev/null
  pack "$debian" "$work/debian-solo.tar" "bench, h1 only"
  CORRAL_DIR=$work/d0 "$bin/corral" image import "$work/debian-solo.tar" --alias debian-solo >/dev/null
fi
rm -f "$work"/*.tar
pad_to() { # VOLUME: pads it to --size-mb
  local vol=$1 mb pad
  mb=$(du -sm "$vol" | cut -f1)
  if [[ -n $SIZE_MB ]] && ((SIZE_MB > mb)); then
    # As the container's root would write it: owned by its unprivileged root on the host.
    pad=$vol/rootfs/var/cache/bench-pad
    head -c "$(((SIZE_MB - mb) * 1024 * 1024))" /dev/urandom >"$pad"
    chown --reference="$vol/rootfs/var/cache" "$pad"
  fi
}
CORRAL_DIR=$work/d0 "$bin/corral" init debian deb --storage "$pool" >/dev/null
vol=$work/d0/storage-pools/$pool/containers/deb
pad_to "$vol"
size_mb=$(du -sm "$vol" | cut -f1)
if [[ $POOL == btrfs ]]; then
  CORRAL_DIR=$work/d0 "$bin/corral" init debian-solo debsolo --storage "$pool" >/dev/null
  pad_to "$work/d0/storage-pools/$pool/containers/debsolo"
fi
sync # the volume's own writes are not the copy's to flush

copy=() copyfull=() move=() tarsocat=() down=() live=() ddown=()
for r in $(seq "$RUNS"); do
  log "run $r/$RUNS"
  sync # what the last run wrote or removed is not this one's to flush
  t=$(date +%s%N); cli copy h1:deb "h2:deb-$r" >/dev/null; copy+=("$(ms "$t")")
  t=$(date +%s%N); cli move "h1:deb" "h2:deb" >/dev/null; move+=("$(ms "$t")")
  t=$(date +%s%N); cli move "h2:deb" "h1:deb" >/dev/null; move+=("$(ms "$t")")
  cli delete "h2:deb-$r" >/dev/null
  if [[ $POOL == btrfs ]]; then
    sync
    t=$(date +%s%N); cli copy h1:debsolo "h2:debsolo-$r" >/dev/null; copyfull+=("$(ms "$t")")
    cli delete "h2:debsolo-$r" >/dev/null
  fi

  # Into the target's filesystem, as the copy writes.
  recv=$work/d1/bench-recv
  rm -rf "$recv"; mkdir -p "$recv"
  in_ns "${ns[1]}" socat -u "TCP-LISTEN:9000,bind=${addr[1]},reuseaddr" \
    EXEC:"tar -x --numeric-owner --xattrs --xattrs-include=* --acls -C $recv" &
  listener=$!
  sync
  sleep 0.3
  t=$(date +%s%N)
  in_ns "${ns[0]}" sh -c "tar -C '$vol' -c --numeric-owner --xattrs \
    --xattrs-include='*' --acls --sparse -f - . | socat -u - TCP:${addr[1]}:9000"
  wait "$listener"
  tarsocat+=("$(ms "$t")")

  cli launch busybox "h1:bb-$r" >/dev/null
  t=$(date +%s%N)
  out=$(cli move "h1:bb-$r" "h2:bb-$r" 2>&1 >/dev/null)
  live+=("$(ms "$t")")
  down+=("$(grep -o 'paused for [0-9]*' <<<"$out" | grep -o '[0-9]*$' || echo -1)")
  cli delete -f "h2:bb-$r" >/dev/null
  log "run $r/$RUNS: copy ${copy[-1]} ms${copyfull:+ (whole: ${copyfull[-1]} ms)}, moves ${move[-2]} and ${move[-1]} ms, tar|socat ${tarsocat[-1]} ms, busybox paused ${down[-1]} ms"
done

if [[ -n $LIVE_DEBIAN ]]; then
  # A Debian systemd container moved live there and back, each leg one sample.
  log "Debian live: launching"
  CORRAL_DIR=$work/d0 "$bin/corral" init debian dlive -n cbmbr0 -c migration.stateful=true \
    -c limits.memory=512MiB >/dev/null
  CORRAL_DIR=$work/d0 "$bin/corral" start dlive
  s=
  for _ in $(seq 120); do
    s=$(CORRAL_DIR=$work/d0 "$bin/corral" exec dlive -- systemctl is-system-running 2>/dev/null || true)
    [[ $s == running || $s == degraded ]] && break
    sleep 0.5
  done
  [[ $s == running || $s == degraded ]] || die "Debian live: systemd did not come up ($s)"
  for r in $(seq "$RUNS"); do
    for leg in 0 1; do
      out=$(cli move "h$((leg + 1)):dlive" "h$((2 - leg)):dlive" 2>&1 >/dev/null) || die "Debian live move failed: $out"
      ddown+=("$(grep -o 'paused for [0-9]*' <<<"$out" | grep -o '[0-9]*$' || echo -1)")
      log "Debian live: run $r/$RUNS, h$((leg + 1)) -> h$((2 - leg)): paused ${ddown[-1]} ms"
      if [[ -n ${BENCH_KEEP_LOGS:-} ]]; then
        mkdir -p "$BENCH_KEEP_LOGS"
        cp "$work/d$leg/run/dlive/criu-dump.log" "$BENCH_KEEP_LOGS/dlive-$r-$leg-dump.log" 2>/dev/null || true
        cp "$work/d$((1 - leg))/run/dlive/criu-restore.log" "$BENCH_KEEP_LOGS/dlive-$r-$leg-restore.log" 2>/dev/null || true
      fi
      sleep 1 # the guest settles (its timers) before the next leg
    done
  done
  CORRAL_DIR=$work/d0 "$bin/corral" delete -f dlive >/dev/null
fi

cat <<EOF
{
  "pool": "$POOL",
  "dir_pool_fs": "$([[ -n $ON_ROOT ]] && echo "/ ($(findmnt -no FSTYPE /), as the host has it)" || echo "fresh journaled ext4 on a loop file")",
  "debian_volume_mb": $size_mb,
  "copy_ms": $(median "${copy[@]}"),
  "copy_full_ms": $( ((${#copyfull[@]})) && median "${copyfull[@]}" || echo null),
  "move_ms": $(median "${move[@]}"),
  "tar_socat_ms": $(median "${tarsocat[@]}"),
  "copy_vs_tar_socat": $(awk -v a="$(median "${tarsocat[@]}")" -v b="$(median "${copy[@]}")" 'BEGIN {printf "%.2f", a / b}'),
  "live_busybox_downtime_ms": $(median "${down[@]}"),
  "live_busybox_total_ms": $(median "${live[@]}"),
  "live_debian_downtime_ms": $( ((${#ddown[@]})) && median "${ddown[@]}" || echo null),
  "runs": {"copy_ms": [$(IFS=,; echo "${copy[*]}")], "copy_full_ms": [$(IFS=,; echo "${copyfull[*]}")], "move_ms": [$(IFS=,; echo "${move[*]}")],
           "tar_socat_ms": [$(IFS=,; echo "${tarsocat[*]}")], "live_downtime_ms": [$(IFS=,; echo "${down[*]}")],
           "live_debian_downtime_ms": [$(IFS=,; echo "${ddown[*]}")]},
  "targets_ms": {"copy": 2000, "live_busybox_downtime": 300, "live_debian_downtime": 1000},
  "lxd_5_0_2_ms": {"copy": 7400, "move": 7800}, "incus_6_0_4_ms": {"copy": 6700, "move": 7400},
  "cpu_priority": "$(bench_cpu_priority_json)",
  "load_average": "$(cut -d' ' -f1-3 /proc/loadavg)"
}
EOF
