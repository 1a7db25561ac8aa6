#!/bin/bash
# Build Corral's test container root filesystems from Debian packages only,
# cached by the hash of their recipe.  See README.md next to this file.
#
#   tests/images/build.sh [busybox|bookworm|trixie|all]...   (default: all)
#   tests/images/build.sh --verify NAME...   exit 1 if a cached rootfs changed since its build
#
# Prints "NAME PATH" on stdout per image (PATH = rootfs dir); progress -> stderr.
# A cached rootfs is read-only: tests boot containers on private copies of it. Each build
# records a manifest of it (NAME-HASH/manifest); a rootfs that no longer matches is rebuilt.
set -euo pipefail

# Bump to force a rebuild of every image (e.g. to pick up newer packages).
RECIPE_VERSION=1
CACHE=${CORRAL_TEST_IMAGE_CACHE:-/var/cache/corral/test-images}
# Mirror is not part of the hash: any Debian mirror serves the same packages.
MIRROR=${CORRAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ALL_IMAGES=(busybox bookworm trixie)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# Keep stdout for the result lines only; everything else goes to stderr.
exec 3>&1 1>&2
log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- recipes --
# An image's content is its recipe, tests/images/NAME.yaml, built by `corral image build`
# (crates/corral-imagebuild). The builder's version is part of the hash: a builder change that
# alters what a recipe gives bumps BUILDER_VERSION there.

builder_version() {
    sed -n 's/^pub const BUILDER_VERSION: u32 = \([0-9]*\);$/\1/p' "$REPO/crates/corral-imagebuild/src/lib.rs"
}

recipe() { # the text whose hash names an image
    echo "corral test image $1, recipe v$RECIPE_VERSION, builder v$(builder_version), arch $(dpkg --print-architecture)"
    cat "$HERE/$1.yaml"
}

BUILDER=${CORRAL_IMAGE_BUILDER:-}
builder() { # the corral CLI, built on first use (only a cache miss needs it)
    if [[ -z $BUILDER ]]; then
        log "building the corral CLI (cargo build -p corral)"
        (cd "$REPO" && cargo build -q -p corral) || die "cannot build the corral CLI"
        BUILDER=${CARGO_TARGET_DIR:-$REPO/target}/debug/corral
    fi
    "$BUILDER" "$@"
}

# ------------------------------------------------------------- machinery --

ensure_deps() {
    # Trixie's Release is signed with keys added in debian-archive-keyring
    # 2023.3+deb12u2 (Debian 12.11); older installs need the stable update.
    local need=() key=/usr/share/keyrings/debian-archive-trixie-stable.gpg
    command -v debootstrap >/dev/null || command -v mmdebstrap >/dev/null || need+=(debootstrap)
    [[ -e $key ]] || need+=(debian-archive-keyring)
    [[ ${#need[@]} -eq 0 ]] && return
    log "installing ${need[*]}"
    apt-get -q update   # fresh lists, or the keyring wouldn't upgrade
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y "${need[@]}"
    [[ -e $key ]] || die "no trixie key in debian-archive-keyring; need >= 2023.3+deb12u2"
}

# The builder mounts only in private mount namespaces, but be safe: unmount before deleting.
remove_tree() {
    local m
    awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$1"
}

# Every entry of a rootfs: path, type, size, mode, owner, mtime, link target. Not atime (reads
# are fine) nor ctime (cp -a cannot keep it). Sorted: a copy of the tree lists the same.
manifest() {
    (cd "$1" && find . -printf '%p\t%y\t%s\t%m\t%U:%G\t%T@\t%l\n') | LC_ALL=C sort
}

# Whether the rootfs of cache dir $1 is as built. Without a manifest (built before manifests
# existed) records one now and trusts it. $2 = quiet.
intact() {
    local dir=$1 quiet=${2:-} diffs
    if [[ ! -f $dir/manifest ]]; then
        log "$(basename "$dir"): no manifest (built before manifests); recording the rootfs as it is"
        manifest "$dir/rootfs" > "$dir/.manifest.$$" && mv -f "$dir/.manifest.$$" "$dir/manifest"
        return 0
    fi
    if manifest "$dir/rootfs" | cmp -s - "$dir/manifest"; then return 0; fi
    if [[ -z $quiet ]]; then
        diffs=$(manifest "$dir/rootfs" | diff "$dir/manifest" - | sed -n 's/^[<>] //p' | cut -f1 | LC_ALL=C sort -u)
        log "$(basename "$dir"): the cached rootfs was modified since it was built" \
            "($(wc -l <<<"$diffs") entries differ, e.g. $(head -5 <<<"$diffs" | tr '\n' ' '))"
    fi
    return 1
}

verify() { # --verify: of the build NAME points at (what tests use); nothing rebuilt
    local name=$1 dir
    dir=$(readlink -f "$CACHE/$name" || true)
    [[ -n $dir && -d $dir/rootfs ]] || die "$name: not built in $CACHE; run tests/images/build.sh $name"
    [[ -f $dir/manifest ]] || die "$name: no manifest in $dir; run tests/images/build.sh $name"
    intact "$dir" || exit 1
    log "$name: intact"
}

TMP_DIR=
trap '[[ -z $TMP_DIR ]] || remove_tree "$TMP_DIR"' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM

build_image() { # $1 = image name
    local name=$1 hash dir start lock old
    hash=$(recipe "$name" | sha256sum | cut -c1-16)
    dir=$CACHE/$name-$hash
    # Fast path: a NAME-HASH dir only exists once complete (atomic rename).
    # A modified rootfs (a test that wrote into it) is rebuilt.
    if [[ -d $dir/rootfs && $(readlink "$CACHE/$name" || true) == "$name-$hash" ]] && intact "$dir"; then
        log "$name: cached ($dir)"; echo "$name $dir/rootfs" >&3; return
    fi

    exec {lock}>"$CACHE/.$name.lock"
    flock "$lock"   # concurrent invocations: the second waits, then hits the cache
    if [[ -d $dir/rootfs ]] && ! intact "$dir" quiet; then
        log "$name: rebuilding"
        remove_tree "$dir"
    fi
    if [[ ! -d $dir ]]; then
        for old in "$CACHE/.tmp-$name-"*; do   # leftovers of interrupted runs
            if [[ -e $old ]]; then log "$name: removing stale $old"; remove_tree "$old"; fi
        done
        [[ $name == busybox ]] || ensure_deps
        start=$SECONDS
        TMP_DIR=$(mktemp -d "$CACHE/.tmp-$name-$hash.XXXXXX")
        chmod 0755 "$TMP_DIR"
        log "$name: building recipe $hash in $TMP_DIR"
        builder image build "$HERE/$name.yaml" --rootfs-only "$TMP_DIR/rootfs" --mirror "$MIRROR" >/dev/null
        recipe "$name" > "$TMP_DIR/recipe"   # for humans: what was hashed
        manifest "$TMP_DIR/rootfs" > "$TMP_DIR/manifest"
        mv -T "$TMP_DIR" "$dir"
        TMP_DIR=
        log "$name: built in $((SECONDS - start))s"
        for old in "$CACHE/$name"-????????????????; do   # superseded recipes
            if [[ $old != "$dir" && -d $old ]]; then log "$name: removing old $old"; rm -rf --one-file-system "$old"; fi
        done
    fi
    # Point NAME at this hash (atomic replace); a hit on an older recipe just flips it back.
    ln -sfn "$name-$hash" "$CACHE/.$name.link"
    mv -T "$CACHE/.$name.link" "$CACHE/$name"
    exec {lock}>&-
    echo "$name $dir/rootfs" >&3
}

# ------------------------------------------------------------------ main --

[[ $EUID -eq 0 ]] || die "must run as root (rootfs files are owned by host uid 0)"
if [[ ${1:-} == --verify ]]; then
    shift
    [[ $# -gt 0 ]] || die "usage: $0 --verify NAME..."
    for name in "$@"; do verify "$name"; done
    exit 0
fi
images=()
for arg in "${@:-all}"; do
    case $arg in
        all) images+=("${ALL_IMAGES[@]}") ;;
        busybox|bookworm|trixie) images+=("$arg") ;;
        *) echo "usage: $0 [busybox|bookworm|trixie|all]..." >&2; exit 2 ;;
    esac
done
mkdir -p "$CACHE"
for name in "${images[@]}"; do build_image "$name"; done
