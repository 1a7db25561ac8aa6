#!/usr/bin/env bash
# Installs what Corral needs on Debian 12 (idempotent) and starts the services its containers
# use. Sourced by setup.sh and test.sh; safe to run again.
set -euo pipefail

packages=(
  build-essential pkg-config libseccomp-dev   # libseccomp crate links Debian's libseccomp
  lxcfs                                       # /proc files that show a container's limits
  debootstrap busybox-static                  # test images (tests/images/build.sh)
  rsync                                       # dir pools restore only what changed
  squashfs-tools                              # squashfs image rootfs (unsquashfs; mksquashfs in tests)
  iproute2 procps psmisc curl socat iperf3    # iperf3: veth throughput (scripts/bench-network.sh)
  dnsmasq-base nftables                       # managed bridges: DHCP/DNS, NAT (corral-network)
  btrfs-progs                                 # btrfs storage pools (corral-storage)
  lxd-client                                  # the real lxc 5.0 client, for compatibility tests
  python3-pylxd                               # pylxd (with ws4py), for compatibility tests
  python3 openssl                             # test image servers and their CA (tests/remote_images.rs)
  # CRIU 4.1.1's build dependencies (built below from trixie's source: see the CRIU step)
  pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libnl-route-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler
  uuid-dev libaio-dev python3-protobuf xz-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# lxcfs: no systemd here to start it, so start it ourselves.
# A dead lxcfs leaves its mount behind ("transport endpoint is not connected"): clear it.
if grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts && ! cat /var/lib/lxcfs/proc/uptime >/dev/null 2>&1; then
  umount -l /var/lib/lxcfs || true
fi
if ! grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts; then
  mkdir -p /var/lib/lxcfs
  # Its own session, its own log: it must outlive this script and whatever ran it.
  # lxcfs stays in the foreground here: put it in the background ourselves, without our
  # descriptors above 2: a bench run under `flock LOCKFILE` would hand the lock's descriptor to
  # lxcfs, which would hold the lock for as long as it runs.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-"
    done
    exec setsid lxcfs --enable-pidfd /var/lib/lxcfs >>/var/log/lxcfs.log 2>&1 </dev/null
  ) &
  disown
  for _ in $(seq 50); do grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts && break; sleep 0.1; done
fi

# CRIU (checkpoint/restore: stop --stateful, stateful snapshots, live move). Bookworm's criu
# 3.17 fails on this kernel (vDSO layout), so build 4.1.1 from Debian trixie's source. The
# mirror's pool serves only the upstream tarball (no .dsc for 4.1.1), so fetch that and build
# the upstream tree against bookworm's libraries; installed under /usr/local, where it shadows
# nothing of Debian's. Skipped entirely when this build (version and patches, recorded in
# $criu_stamp) is already there.
#
# Two patches (criu_patch below), and one build setting:
# - sockets.c (also in upstream CRIU after 4.1.1 in another form): since Linux 6.16
#   getsockopt(SO_PASSCRED/SO_PASSSEC) answers EOPNOTSUPP on sockets other than unix, netlink and
#   bluetooth, and 4.1.1 fails the whole dump on it ("Can't get 1:16 opt: Operation not
#   supported"), i.e. on any container with a TCP, UDP or packet socket (systemd-networkd's DHCP
#   client, any server). Such a socket cannot have the option set, so the patch records it as
#   absent instead (and the restore then leaves it alone).
# - net.c: with --empty-ns net (how Corral dumps: the NICs are the daemon's) the namespace is
#   restored without its rules, so its conntrack entries mean nothing; 4.1.1 dumps them anyway,
#   and each of its two conntrack dumps walks the host's whole hash table (20-45 ms each here,
#   with 262144 buckets), all while the container is frozen. The patch skips them then.
# - RUNDIR: criu keeps its kernel-feature cache (criu.kdat) in RUNDIR only if that is a tmpfs,
#   else probes the kernel again on every run (30-60 ms of each dump and restore). /run is not
#   a tmpfs on every host (it is not on this one), so RUNDIR is a directory of its own, which
#   Corral's runtime mounts a tmpfs on in criu's private mount namespace, the cache kept
#   between runs (crates/corral-runtime/src/checkpoint.rs, "kdat"); criu run by hand just probes.
criu_version=4.1.1
criu_build_id="${criu_version}+corral-sockopt-1+conntrack-1+rundir-1"
# Must match checkpoint.rs KDAT_DIR.
criu_rundir=/usr/local/lib/corral/criu-run
criu_stamp=/usr/local/share/corral/criu.build
criu_sha256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
criu_cache=/var/cache/corral/criu
criu_tarball=$criu_cache/criu_${criu_version}.orig.tar.xz
criu_patch=$(cat <<'CRIU_PATCH'
--- a/criu/sockets.c
+++ b/criu/sockets.c
@@ -637,6 +637,26 @@
 	return 0;
 }
 
+/* Like dump_opt(), but an option the socket does not support is absent, not an error. */
+static int dump_opt_optional(int sk, int level, int name, int *val, protobuf_c_boolean *has)
+{
+	socklen_t len = sizeof(*val);
+
+	*has = false;
+	if (getsockopt(sk, level, name, val, &len) < 0) {
+		if (errno == EOPNOTSUPP)
+			return 0;
+		pr_perror("Can't get %d:%d opt", level, name);
+		return -1;
+	}
+	if (len != sizeof(*val)) {
+		pr_err("Len mismatch on %d:%d : %d, want %zu\n", level, name, len, sizeof(*val));
+		return -1;
+	}
+	*has = true;
+	return 0;
+}
+
 int dump_socket_opts(int sk, SkOptsEntry *soe)
 {
 	int ret = 0, val;
@@ -676,13 +696,16 @@
 	soe->so_reuseport = val ? true : false;
 	soe->has_so_reuseport = true;
 
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSCRED, &val);
-	soe->has_so_passcred = true;
-	soe->so_passcred = val ? true : false;
-
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSSEC, &val);
-	soe->has_so_passsec = true;
-	soe->so_passsec = val ? true : false;
+	/*
+	 * Since Linux 6.16 (7d8d93fdde50 "net: Restrict SO_PASS{CRED,PIDFD,SEC}
+	 * to AF_{UNIX,NETLINK,BLUETOOTH}") other sockets answer EOPNOTSUPP:
+	 * they cannot have the option set, so there is nothing to dump.
+	 */
+	ret |= dump_opt_optional(sk, SOL_SOCKET, SO_PASSCRED, &val, &soe->has_so_passcred);
+	soe->so_passcred = soe->has_so_passcred && val;
+
+	ret |= dump_opt_optional(sk, SOL_SOCKET, SO_PASSSEC, &val, &soe->has_so_passsec);
+	soe->so_passsec = soe->has_so_passsec && val;
 
 	ret |= dump_opt(sk, SOL_SOCKET, SO_DONTROUTE, &val);
 	soe->has_so_dontroute = true;
--- a/criu/net.c
+++ b/criu/net.c
@@ -2859,10 +2859,16 @@
 		pr_err("Unable to dump more than one netns if the --emptyns is set\n");
 		ret = -1;
 	}
-	if (!ret)
-		ret = dump_nf_ct(fds, CR_FD_NETNF_CT);
-	if (!ret)
-		ret = dump_nf_ct(fds, CR_FD_NETNF_EXP);
+	/*
+	 * An empty netns (--empty-ns net) is restored without its rules, so
+	 * its connection tracking entries would mean nothing there; and each
+	 * conntrack dump walks the host's whole hash table (tens of ms with
+	 * 256k buckets, twice). Their images stay empty.
+	 */
+	if (!ret && !(opts.empty_ns & CLONE_NEWNET))
+		ret = dump_nf_ct(fds, CR_FD_NETNF_CT);
+	if (!ret && !(opts.empty_ns & CLONE_NEWNET))
+		ret = dump_nf_ct(fds, CR_FD_NETNF_EXP);
 
 out:
 	close(ns_sysfs_fd);
CRIU_PATCH
)
if ! /usr/local/sbin/criu --version 2>/dev/null | grep -q "^Version: ${criu_version}\$" \
  || [ "$(cat "$criu_stamp" 2>/dev/null)" != "$criu_build_id" ]; then
  mkdir -p "$criu_cache"
  # Kept across runs (and checked): a rebuild after a failed one needs no download.
  if ! echo "$criu_sha256  $criu_tarball" | sha256sum -c --status 2>/dev/null; then
    echo "downloading criu ${criu_version} source from Debian's mirror" >&2
    curl -fsSL -o "$criu_tarball.part" \
      "https://deb.debian.org/debian/pool/main/c/criu/criu_${criu_version}.orig.tar.xz"
    echo "$criu_sha256  $criu_tarball.part" | sha256sum -c --status \
      || { echo "criu source: checksum mismatch" >&2; rm -f "$criu_tarball.part"; exit 1; }
    mv "$criu_tarball.part" "$criu_tarball"
  fi
  criu_build=$(mktemp -d /tmp/corral-criu-build.XXXXXX)
  tar -xJf "$criu_tarball" -C "$criu_build" --strip-components=1
  printf '%s\n' "$criu_patch" | patch -d "$criu_build" -p1 --quiet \
    || { echo "criu: the patches do not apply" >&2; exit 1; }
  echo "building criu ${criu_version} (about a minute)" >&2
  # Only the binary and libcriu: the docs need asciidoc/xmlto, which nothing here uses.
  make -C "$criu_build" -j"$(nproc)" RUNDIR="$criu_rundir" criu lib >"$criu_build.log" 2>&1 \
    || { echo "criu build failed: see $criu_build.log" >&2; exit 1; }
  make -C "$criu_build" PREFIX=/usr/local install-criu install-lib >>"$criu_build.log" 2>&1 \
    || { echo "criu install failed: see $criu_build.log" >&2; exit 1; }
  ldconfig
  rm -rf "$criu_build" "$criu_build.log"
  /usr/local/sbin/criu --version | grep -q "^Version: ${criu_version}\$" \
    || { echo "criu ${criu_version} did not install" >&2; exit 1; }
  mkdir -p "$(dirname "$criu_stamp")"
  echo "$criu_build_id" > "$criu_stamp"
fi
# criu's RUNDIR (see above): an empty directory, root's only; tmpfs mounts on it stay in the
# private mount namespaces criu runs in.
install -d -m 0700 "$criu_rundir"
# CRIU's lazy pages (post-copy migration) move memory through pipes larger than the 1 MiB
# default, and root here lacks CAP_SYS_RESOURCE to exceed the limit: raise it (never lower it).
if (( $(sysctl -n fs.pipe-max-size) < 4194304 )); then
  sysctl -q -w fs.pipe-max-size=4194304
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
