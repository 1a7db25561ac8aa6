#!/usr/bin/env bash
# Installs what Corral needs on Debian 12 (idempotent) and starts the services its containers
# use. Sourced by setup.sh and test.sh; safe to run again.
set -euo pipefail

packages=(
  build-essential pkg-config libseccomp-dev   # libseccomp crate links Debian's libseccomp
  lxcfs                                       # /proc files that show a container's limits
  debootstrap busybox-static                  # test images (tests/images/build.sh)
  rsync                                       # dir pools restore only what changed
  iproute2 procps psmisc curl socat iperf3    # iperf3: veth throughput (scripts/bench-network.sh)
  dnsmasq-base nftables                       # managed bridges: DHCP/DNS, NAT (corral-network)
  btrfs-progs                                 # btrfs storage pools (corral-storage)
  lxd-client                                  # the real lxc 5.0 client, for compatibility tests
  python3-pylxd                               # pylxd (with ws4py), for compatibility tests
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
  # lxcfs stays in the foreground here: put it in the background ourselves.
  setsid lxcfs --enable-pidfd /var/lib/lxcfs >>/var/log/lxcfs.log 2>&1 </dev/null &
  disown
  for _ in $(seq 50); do grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts && break; sleep 0.1; done
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
