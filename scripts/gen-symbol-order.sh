#!/usr/bin/env bash
# Writes crates/corrald/symbol-order.txt: the functions a daemon runs, which the release link
# puts first and together (crates/corrald/build.rs says why). The names carry hashes of each
# crate's build metadata, which change with its dependencies: run it again after Cargo.lock or a
# crate's dependencies change, or much code is added on the daemon's common paths. A stale list
# only loses some of the gain (after one merge that added a dependency, 1983 of 4229 names
# were left).
#
#   scripts/gen-symbol-order.sh [BUSYBOX_ROOTFS]
#
# A release corrald is run twice in a network namespace of its own with a temporary CORRAL_DIR,
# on the busybox test image: under callgrind (every function that runs, however briefly: start-up,
# image import, the API; valgrind cannot follow containers, whose pidfds it does not know), then
# natively under `perf record` with call stacks while it launches, execs into, lists, snapshots,
# restarts and deletes containers (the daemon's and the monitors' hot paths). The list is the
# functions seen by either, in the order first seen. Needs root, valgrind and perf
# (scripts/install-deps.sh does not install them: this is a maintainer's tool).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind perf nsenter; do
  command -v "$tool" >/dev/null || { echo "gen-symbol-order.sh: $tool is missing" >&2; exit 1; }
done
rootfs=${1:-$(tests/images/build.sh busybox | awk '{print $2}')}
[[ -d $rootfs ]] || { echo "gen-symbol-order.sh: no busybox rootfs at $rootfs" >&2; exit 1; }

cargo build --release -p corrald -p corral >&2
bin=$PWD/target/release
work=$(mktemp -d /tmp/corral-symbol-order.XXXXXX)
chmod 755 "$work" # the containers' own users walk through it to their rootfs
netns=corral-symorder-$$
export CORRAL_DIR=$work/corral
cleanup() {
  set +e
  "$bin/corral" list --format csv -c n 2>/dev/null | while read -r name; do
    "$bin/corral" delete --force "$name" >/dev/null 2>&1 || true
  done
  "$bin/corrald" shutdown >/dev/null 2>&1 || true
  ip netns del "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$netns"

mkdir -p "$work/image"
cp -a "$rootfs" "$work/image/rootfs"
printf 'architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n' \
  >"$work/image/metadata.yaml"

api_workload() {
  local c=$bin/corral
  "$bin/corrald" waitready --timeout 120
  "$c" info >/dev/null
  "$c" list >/dev/null
  "$c" image import "$work/image" --alias bb >/dev/null
  "$c" image list >/dev/null
  "$c" image show bb >/dev/null
  "$c" profile show default >/dev/null
  "$c" storage list >/dev/null
  "$c" network list >/dev/null
  "$c" init bb c1 >/dev/null
  "$c" config set c1 limits.memory=64MiB
  "$c" config show c1 >/dev/null
  "$c" snapshot c1 s1
  "$c" list >/dev/null
  "$c" list --format json >/dev/null
  "$c" delete c1
}

echo "gen-symbol-order.sh: the API under callgrind" >&2
nsenter --net="/run/netns/$netns" valgrind --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="$work/callgrind.out" "$bin/corrald" 2>"$work/valgrind.log" &
api_workload
"$bin/corrald" shutdown
wait

echo "gen-symbol-order.sh: containers under perf" >&2
export CORRAL_DIR=$work/corral-perf
nsenter --net="/run/netns/$netns" perf record -q -F 2000 --call-graph dwarf,16384 \
  -o "$work/perf.data" "$bin/corrald" 2>"$work/perf.log" &
"$bin/corrald" waitready --timeout 60
api_workload
for i in 1 2 3; do "$bin/corral" launch bb "c$i" >/dev/null; done
for i in 1 2 3 4 5; do "$bin/corral" exec c1 -- true; done
echo hello | "$bin/corral" exec c2 -- cat >/dev/null
"$bin/corral" list >/dev/null
"$bin/corral" file push "$work/image/metadata.yaml" c1/tmp/ >/dev/null
"$bin/corral" file pull c1/tmp/metadata.yaml "$work/pulled" >/dev/null
"$bin/corral" snapshot c1 s1
"$bin/corral" restart --force c2
"$bin/corral" stop --force c3
"$bin/corral" start c3
for i in 1 2 3; do "$bin/corral" delete --force "c$i"; done
"$bin/corrald" shutdown
wait

# Function names as the binary has them (mangled), in the order first seen, only those in it.
nm "$bin/corrald" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u >"$work/defined"
{
  sed -n 's/^c\{0,1\}fn=([0-9]*) \(.*\)$/\1/p' "$work/callgrind.out"
  perf script --no-demangle -i "$work/perf.data" -F ip,sym 2>/dev/null | awk 'NF >= 2 {print $2}'
} | awk '!seen[$0]++' | awk 'NR == FNR {defined[$0] = 1; next} $0 in defined' "$work/defined" - \
  >crates/corrald/symbol-order.txt
echo "gen-symbol-order.sh: $(wc -l <crates/corrald/symbol-order.txt) functions in crates/corrald/symbol-order.txt" >&2
# The linker reads the list; cargo does not watch it: relink the daemon at the next build.
touch crates/corrald/src/main.rs
