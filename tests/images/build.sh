#!/bin/bash
# Build Corral's test container root filesystems from Debian packages only,
# cached by the hash of their recipe.  See README.md next to this file.
#
#   tests/images/build.sh [busybox|bookworm|trixie|all]...   (default: all)
#
# Prints "NAME PATH" on stdout per image (PATH = rootfs dir); progress -> stderr.
set -euo pipefail

# Bump to force a rebuild of every image (e.g. to pick up newer packages).
RECIPE_VERSION=1
CACHE=${CORRAL_TEST_IMAGE_CACHE:-/var/cache/corral/test-images}
# Mirror is not part of the hash: any Debian mirror serves the same packages.
MIRROR=${CORRAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ALL_IMAGES=(busybox bookworm trixie)

# What a systemd container needs; networkd (DHCP on eth0) is part of the
# `systemd` package in both bookworm and trixie, so no extra package.
DEBIAN_PACKAGES=systemd,systemd-sysv,dbus,iproute2,iputils-ping,procps,netbase

# Keep stdout for the result lines only; everything else goes to stderr.
exec 3>&1 1>&2
log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- recipes --
# Everything that determines an image's content is in these functions; their
# source (via `declare -f`, heredocs included, comments excluded) is hashed.

build_busybox() { # $1 = rootfs dir (does not exist yet), $2 = scratch dir
    local root=$1 scratch=$2
    # Take busybox from the .deb rather than the host, so host state doesn't matter.
    (cd "$scratch" && apt_get download busybox-static)
    dpkg-deb -x "$scratch"/busybox-static_*.deb "$scratch/deb"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,usr/share/udhcpc,proc,sys,dev,run,var}
    install -d -m 0700 "$root/root"
    install -d -m 1777 "$root/tmp"
    install -m 0755 "$scratch/deb/bin/busybox" "$root/bin/busybox"
    chroot "$root" /bin/busybox --install -s   # applet symlinks, incl. /sbin/init
    [[ -L $root/sbin/init ]] || die "busybox did not install /sbin/init"

    echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
    echo 'root:x:0:' > "$root/etc/group"
    echo 'root:!::0:99999:7:::' > "$root/etc/shadow"   # '!' = locked
    chmod 0600 "$root/etc/shadow"
    echo busybox > "$root/etc/hostname"
    : > "$root/etc/resolv.conf"

    # /dev/console is a pty: plain respawned shell on it.  Shutdown only syncs:
    # `umount -a -r` could remount the host fs read-only in a privileged container.
    cat > "$root/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::restart:/sbin/init
EOF
    cat > "$root/etc/init.d/rcS" <<'EOF'
#!/bin/sh
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
    udhcpc -b -q -i eth0 -s /usr/share/udhcpc/default.script >/run/udhcpc.log 2>&1 &
fi
exit 0
EOF
    cat > "$root/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# Called by udhcpc with $1 = deconfig|bound|renew|leasefail|nak; env has the lease.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    {
        [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
    } > /etc/resolv.conf
    ;;
esac
exit 0
EOF
    chmod 0755 "$root/etc/init.d/rcS" "$root/usr/share/udhcpc/default.script"
}

build_debian() { # $1 = suite, $2 = rootfs dir
    local suite=$1 root=$2
    # Default keyring (debian-archive-keyring.gpg) verifies the Release files.
    debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" \
        "$suite" "$root" "$MIRROR"

    mkdir -p "$root/etc/systemd/network"
    cat > "$root/etc/systemd/network/eth0.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=yes
EOF
    # systemctl enable works offline in a chroot (just creates the symlinks).
    chroot "$root" systemctl enable systemd-networkd
    echo "$suite" > "$root/etc/hostname"
    : > "$root/etc/fstab"
    : > "$root/etc/resolv.conf"          # debootstrap copied the host's
    : > "$root/etc/machine-id"           # empty: systemd generates one at boot
    rm -f "$root/var/lib/dbus/machine-id"  # dbus falls back to /etc/machine-id
    chroot "$root" passwd -l root
    # Space: apt metadata and downloaded debs are useless in a test image.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root/var/log/bootstrap.log"
}

recipe() { # the text whose hash names an image
    echo "corral test image $1, recipe v$RECIPE_VERSION, arch $(dpkg --print-architecture)"
    case $1 in
        busybox) declare -f build_busybox ;;
        *) echo "suite=$1 packages=$DEBIAN_PACKAGES"; declare -f build_debian ;;
    esac
}

# ------------------------------------------------------------- machinery --

APT_UPDATED=
apt_get() { # apt-get, retried once after `apt-get update` (fresh CI machines have no lists)
    local run=(apt-get -q -o APT::Sandbox::User=root "$@")
    DEBIAN_FRONTEND=noninteractive "${run[@]}" && return
    [[ -z $APT_UPDATED ]] || return 1
    APT_UPDATED=1; apt-get -q update
    DEBIAN_FRONTEND=noninteractive "${run[@]}"
}

ensure_deps() {
    # Trixie's Release is signed with keys added in debian-archive-keyring
    # 2023.3+deb12u2 (Debian 12.11); older installs need the stable update.
    local need=() key=/usr/share/keyrings/debian-archive-trixie-stable.gpg
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [[ -e $key ]] || need+=(debian-archive-keyring)
    [[ ${#need[@]} -eq 0 ]] && return
    log "installing ${need[*]}"
    APT_UPDATED=1; apt-get -q update   # fresh lists, or the keyring wouldn't upgrade
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y "${need[@]}"
    [[ -e $key ]] || die "no trixie key in debian-archive-keyring; need >= 2023.3+deb12u2"
}

# debootstrap mounts /proc and /sys inside the target; an interrupted run can
# leave them mounted, so unmount before deleting.
remove_tree() {
    local m
    awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$1"
}

TMP_DIR=
trap '[[ -z $TMP_DIR ]] || remove_tree "$TMP_DIR"' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM

build_image() { # $1 = image name
    local name=$1 hash dir start lock old
    hash=$(recipe "$name" | sha256sum | cut -c1-16)
    dir=$CACHE/$name-$hash
    # Fast path: a NAME-HASH dir only exists once complete (atomic rename).
    if [[ -d $dir/rootfs && $(readlink "$CACHE/$name" || true) == "$name-$hash" ]]; then
        log "$name: cached ($dir)"; echo "$name $dir/rootfs" >&3; return
    fi

    exec {lock}>"$CACHE/.$name.lock"
    flock "$lock"   # concurrent invocations: the second waits, then hits the cache
    if [[ ! -d $dir ]]; then
        for old in "$CACHE/.tmp-$name-"*; do   # leftovers of interrupted runs
            if [[ -e $old ]]; then log "$name: removing stale $old"; remove_tree "$old"; fi
        done
        ensure_deps
        start=$SECONDS
        TMP_DIR=$(mktemp -d "$CACHE/.tmp-$name-$hash.XXXXXX")
        chmod 0755 "$TMP_DIR"
        log "$name: building recipe $hash in $TMP_DIR"
        mkdir "$TMP_DIR/scratch"
        case $name in
            busybox) build_busybox "$TMP_DIR/rootfs" "$TMP_DIR/scratch" ;;
            *) build_debian "$name" "$TMP_DIR/rootfs" ;;
        esac
        remove_tree "$TMP_DIR/scratch"
        recipe "$name" > "$TMP_DIR/recipe"   # for humans: what was hashed
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
