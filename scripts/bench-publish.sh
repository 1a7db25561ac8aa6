#!/bin/sh
# Times `corral publish` and `corral image export` of the Debian 12 (bookworm) test container
# on a throwaway corrald (own CORRAL_DIR, own network namespace: nothing leaves the host).
# Usage: scripts/bench-publish.sh [IMAGE.tar]   (default: the packed bookworm test image)
# Prints JSON: seconds for publish (zstd, the instance stopped and running/frozen), export.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CORRAL_BIN:-$root/target/release}
image=${1:-$(ls "$root"/target/tmp/corral-bookworm-*.tar | head -n1)}
dir=$(mktemp -d /tmp/corral-bench-publish.XXXXXX)
ns=corral-bench-publish-$$
ip netns add "$ns"
cleanup() {
    CORRAL_DIR=$dir "$bin/corral" stop -f bench >/dev/null 2>&1 || true
    CORRAL_DIR=$dir "$bin/corrald" shutdown >/dev/null 2>&1 || true
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$dir"
    bench_cpu_release
}
trap cleanup EXIT
. "$root/scripts/bench-cpu.sh"
bench_cpu_priority publish
export CORRAL_DIR=$dir
nsenter --net=/run/netns/"$ns" "$bin/corrald" >"$dir.log" 2>&1 &
pid=$!
"$bin/corrald" waitready --timeout 30
c="$bin/corral"
$c image import "$image" --alias debian12 >/dev/null
$c init debian12 bench >/dev/null
now() { date +%s.%N; }
t0=$(now); out=$($c publish bench --alias pub-stopped); t1=$(now)
fp=$(echo "$out" | awk '{print $NF}')
mkdir -p "$dir/export"
t2=$(now); $c image export "$fp" "$dir/export/" >/dev/null; t3=$(now)
size=$(du -b "$dir"/export/* | awk '{s+=$1} END {print s}')
$c start bench >/dev/null
t4=$(now); $c publish bench --alias pub-running >/dev/null; t5=$(now)
rootfs=$(du -sb "$dir"/storage-pools/*/containers/bench/rootfs 2>/dev/null | awk '{print $1}')
printf '{"image":"%s","cpu_priority":"%s","rootfs_bytes":%s,"publish_stopped_s":%.2f,"export_s":%.2f,"export_bytes":%s,"publish_running_s":%.2f}\n' \
    "$(basename "$image")" "$(bench_cpu_priority_json)" "${rootfs:-0}" "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)" "$size" "$(echo "$t5 - $t4" | bc)"
