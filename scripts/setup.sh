#!/usr/bin/env bash
# Sets Corral up on a fresh Debian 12 machine (as root) and runs its main job: corrald up on
# its default directory (/var/lib/corral) with its corralbr0 network, a busybox image built from Debian's packages and
# imported, a container launched from it and listed. corrald keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

cargo build --release -p corrald -p corral >&2
bin=target/release
install -m 0755 "$bin/corrald" "$bin/corral" /usr/local/bin/

# The daemon, on its embedded defaults; an already running one is kept.
if ! corrald waitready --timeout 1 2>/dev/null; then
  setsid corrald >>/var/log/corrald.log 2>&1 < /dev/null &
  corrald waitready --timeout 30
fi
# The corralbr0 bridge (DHCP, DNS, NAT) and eth0 on it in the default profile; a no-op when
# the default profile has a NIC already.
corrald init --auto

# A busybox image from Debian's busybox-static, built from the test image's recipe as an LXD
# unified image (/etc/hostname from a template).
image=/var/cache/corral/busybox.tar.xz
[ -s "$image" ] || corral image build tests/images/busybox.yaml --output /var/cache/corral >&2
corral image list --format csv | grep -q '^busybox,' || corral image import "$image" --alias busybox

corral delete --force demo >/dev/null 2>&1 || true
corral launch busybox demo
corral list
corral exec demo -- sh -c 'echo "inside demo: $(id -un), uid map $(tr -s " " < /proc/self/uid_map)"'
