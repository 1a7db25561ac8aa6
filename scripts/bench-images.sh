#!/bin/sh
# Image speed on the Debian 12 (bookworm) test image, on throwaway corrald daemons (own CORRAL_DIRs,
# one network namespace of their own with only loopback up: nothing leaves the host).
# Usage: scripts/bench-images.sh [--on-root] [IMAGE.tar]   (default: the packed bookworm test
# image, packed here into target/tmp if no test has yet)
# Everything the daemons write (pools, stored images) and the reference's tar -x are on a fresh
# journaled ext4 made here on a loop file (mounted on the bench's directory) unless --on-root
# keeps them in /tmp. Why: this host's / is ext4 without a journal, which skips every inode freed
# in the last minutes when allocating one (8 s instead of 0.95 s to copy Debian's rootfs).
# Prints one JSON object:
#   import_s              `corral image import` (returns once the file is checked and stored)
#   first_unpack_s        from the import's start until the image can be launched by a rename
#                         (the first unpack in the default pool: a spare copy or the image volume),
#                         cold: the image file's page cache is dropped first (dd iflag=nocache
#                         count=0, i.e. posix_fadvise DONTNEED on the whole file), as for a user's
#                         first import of a file downloaded earlier. (On a VM the host may still
#                         cache the file: the first read after a host-cold start is slower.)
#   import_unpack_mb_s    rootfs megabytes (10^6) per second over first_unpack_s
#   launch_after_import_s `corral init` right after the import returned
#   publish_stopped_s, publish_running_s, export_s   as scripts/bench-publish.sh
#   remote_*              the published (zstd) image served by `python3 -m http.server` as a
#                         simplestreams tree, launched (create + start) on a second, empty corrald;
#                         download_unpack_s is curl of the same files + GNU tar -x of the rootfs
#   remote_ratio          remote_launch_s / remote_download_unpack_s (target <= 1.5)
# BENCH_KEEP_LOGS=DIR keeps the daemons' logs there (a.log: import and publish; b.log: the remote
# launch); RUST_LOG=debug in the environment gives the daemons' timings.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CORRAL_BIN:-$root/target/release}
on_root=0
if [ "${1:-}" = --on-root ]; then on_root=1; shift; fi
image=${1:-$(ls "$root"/target/tmp/corral-bookworm-*.tar 2>/dev/null | head -n1)}
if [ -z "$image" ]; then
    # The bookworm test image as tests/support's packed_image makes it: uncompressed unified.
    rootfs=$("$root/tests/images/build.sh" bookworm | awk '{print $2}')
    image=$root/target/tmp/corral-bookworm-bench.tar
    mkdir -p "$root/target/tmp"
    stage=$(mktemp -d)
    printf 'architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: Debian\n  release: bookworm\n  description: bookworm\n' >"$stage/metadata.yaml"
    tar -cf "$image.tmp" --numeric-owner --xattrs --xattrs-include='*' --acls -C "$stage" metadata.yaml \
        -C "$(dirname "$rootfs")" rootfs
    mv "$image.tmp" "$image"
    rm -rf "$stage"
fi
dir=$(mktemp -d /tmp/corral-bench-images.XXXXXX)
ns=corral-bench-images-$$
port=8765
loopdev=
ip netns add "$ns"
in_ns() { nsenter --net=/run/netns/"$ns" "$@"; }
in_ns ip link set lo up
fs="/tmp: $(findmnt -no FSTYPE,OPTIONS --target /tmp)"
cleanup() {
    if [ -n "${BENCH_KEEP_LOGS:-}" ]; then
        mkdir -p "$BENCH_KEEP_LOGS" && cp "$dir/a.log" "$dir/b.log" "$BENCH_KEEP_LOGS/" 2>/dev/null || true
    fi
    for d in a b; do
        CORRAL_DIR=$dir/$d "$bin/corral" stop -f bench >/dev/null 2>&1 || true
        CORRAL_DIR=$dir/$d "$bin/corral" stop -f remote1 >/dev/null 2>&1 || true
        CORRAL_DIR=$dir/$d "$bin/corrald" shutdown >/dev/null 2>&1 || true
    done
    for p in ${pid_a:-} ${pid_b:-} ${pid_http:-}; do kill "$p" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
    if [ -n "$loopdev" ]; then
        # Mounts the daemons left under it (deepest first), then the filesystem itself.
        awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
        umount "$dir" 2>/dev/null || umount -l "$dir"
        losetup -d "$loopdev"
    fi
    rm -f "$dir.ext4"
    rm -rf "$dir"
    bench_cpu_release
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
. "$root/scripts/bench-cpu.sh"
bench_cpu_priority images
if [ $on_root = 0 ]; then
    # 8 GiB, sparse, beside the directory; inode tables and journal written now (no ext4lazyinit
    # writing during the runs).
    truncate -s 8G "$dir.ext4"
    mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$dir.ext4"
    loopdev=$(losetup --find --show "$dir.ext4")
    mount "$loopdev" "$dir"
    fs="fresh ext4 on a loop file: $(findmnt -no OPTIONS "$dir")"
fi
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
chmod 755 "$dir"
mkdir -p "$dir/a" "$dir/b"
CORRAL_DIR=$dir/a in_ns "$bin/corrald" >"$dir/a.log" 2>&1 &
pid_a=$!
CORRAL_DIR=$dir/b in_ns "$bin/corrald" >"$dir/b.log" 2>&1 &
pid_b=$!
CORRAL_DIR=$dir/a "$bin/corrald" waitready --timeout 30
CORRAL_DIR=$dir/b "$bin/corrald" waitready --timeout 30
export CORRAL_DIR=$dir/a
c="$bin/corral"
sync

# Import, then wait for the first unpack (a spare copy, or the image volume, in the default pool).
# Cold: the image file's pages dropped from the page cache.
dd if="$image" iflag=nocache count=0 status=none
t0=$(now)
$c image import "$image" --alias debian12 >/dev/null
t1=$(now)
fp=$(curl -s --unix-socket "$dir/a/unix.socket" http://x/1.0/images/aliases/debian12 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["target"])')
pool=$dir/a/storage-pools/default
unpacked() {
    [ -d "$pool/images/$fp" ] && return 0
    ls "$pool/spares/$fp" 2>/dev/null | grep -qv '^\.'
}
while ! unpacked; do sleep 0.02; done
t2=$(now)
rootfs=$(tar -tvf "$image" 2>/dev/null | awk '$6 ~ /^(\.\/)?rootfs\// {s+=$3} END {print s+0}')
# Let the background work (image volume, spare copy) finish before timing anything else.
while [ ! -d "$pool/images/$fp" ] || ! ls "$pool/spares/$fp" 2>/dev/null | grep -qv '^\.'; do sleep 0.1; done
$c image delete debian12 >/dev/null
sync
# Import again and launch at once (the launch waits for the unpack under way).
t3=$(now)
$c image import "$image" --alias debian12 >/dev/null
t4=$(now)
$c init debian12 bench >/dev/null
t5=$(now)

# Publish and export (as scripts/bench-publish.sh).
sync
t6=$(now); out=$($c publish bench --alias pub-stopped); t7=$(now)
pfp=$(echo "$out" | awk '{print $NF}')
mkdir -p "$dir/export"
t8=$(now); $c image export "$pfp" "$dir/export/" >/dev/null; t9=$(now)
export_bytes=$(du -b "$dir"/export/* | awk '{s+=$1} END {print s}')
$c start bench >/dev/null
t10=$(now); $c publish bench --alias pub-running >/dev/null; t11=$(now)
$c stop -f bench >/dev/null

# The published image as a simplestreams tree on loopback, launched on the empty daemon b.
$c image export-simplestreams "$dir/tree" "$pfp" >/dev/null
(cd "$dir/tree" && exec nsenter --net=/run/netns/"$ns" python3 -m http.server -b 127.0.0.1 "$port" >/dev/null 2>&1) &
pid_http=$!
url=http://127.0.0.1:$port
i=0
until in_ns curl -sf "$url/streams/v1/index.json" >/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "http server did not start" >&2; exit 1; }
    sleep 0.05
done
files=$(cd "$dir/tree" && find . -type f ! -path './streams/*' | sed 's|^\./||')
remote_bytes=$(cd "$dir/tree" && du -cb $files | tail -n1 | awk '{print $1}')
sync
mkdir -p "$dir/dl" "$dir/dl/x"
t12=$(now)
for f in $files; do in_ns curl -sf -o "$dir/dl/$(basename "$f")" "$url/$f"; done
t13=$(now)
for f in "$dir"/dl/*; do [ -f "$f" ] && tar -xf "$f" -C "$dir/dl/x" --xattrs --numeric-owner; done
t14=$(now)
rm -rf "$dir/dl"
sync
sock=$dir/b/unix.socket
api() { curl -s --unix-socket "$sock" -X "$1" "http://x$2" ${3:+-d "$3"}; }
# Parsed with sed and grep, not python3: its start-up (~0.1 s here, twice per operation) would
# count in remote_launch_s, which the reference (curl and tar) does not pay.
wait_op() {
    op=$(echo "$1" | sed -n 's/.*"operation":"\([^"]*\)".*/\1/p')
    [ -n "$op" ] || { echo "no operation in: $1" >&2; exit 1; }
    res=$(api GET "$op/wait?timeout=600")
    echo "$res" | grep -q '"status":"Success"' || { echo "operation failed: $res" >&2; exit 1; }
}
t15=$(now)
wait_op "$(api POST /1.0/instances "{\"name\":\"remote1\",\"source\":{\"type\":\"image\",\"mode\":\"pull\",\"server\":\"$url\",\"protocol\":\"simplestreams\",\"alias\":\"pub-stopped\"}}")"
t16=$(now)
wait_op "$(api PUT /1.0/instances/remote1/state '{"action":"start"}')"
t17=$(now)

dl_unpack=$(secs "$t12" "$t14")
launch=$(secs "$t15" "$t17")
printf '{"image":"%s","image_cache":"dropped before the first import","filesystem":"%s","cpu_priority":"%s","load_average":"%s","rootfs_bytes":%s,"import_s":%.2f,"first_unpack_s":%.2f,"import_unpack_mb_s":%.0f,' \
    "$(basename "$image")" "$fs" "$(bench_cpu_priority_json)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$rootfs" "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" \
    "$(echo "$rootfs / 1000000 / ($t2 - $t0)" | bc -l)"
printf '"launch_after_import_s":%.2f,"import_then_launch_s":%.2f,' "$(secs "$t4" "$t5")" "$(secs "$t3" "$t5")"
printf '"publish_stopped_s":%.2f,"export_s":%.2f,"export_bytes":%s,"publish_running_s":%.2f,' \
    "$(secs "$t6" "$t7")" "$(secs "$t8" "$t9")" "$export_bytes" "$(secs "$t10" "$t11")"
printf '"remote_bytes":%s,"remote_download_s":%.2f,"remote_download_unpack_s":%.2f,"remote_create_s":%.2f,"remote_launch_s":%.2f,"remote_ratio":%.2f}\n' \
    "$remote_bytes" "$(secs "$t12" "$t13")" "$dl_unpack" "$(secs "$t15" "$t16")" "$launch" \
    "$(echo "$launch / $dl_unpack" | bc -l)"
