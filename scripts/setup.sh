#!/usr/bin/env bash
# Sets Corral up on a fresh Debian 12 machine (as root) and runs its main job: a busybox system
# container started unprivileged on an idmapped rootfs, listed, used and stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

cargo build --release -p corrald >&2
rootfs=$(tests/images/build.sh busybox | awk '$1 == "busybox" {print $2}')
corrald=target/release/corrald

name=demo
"$corrald" container stop "$name" --force >/dev/null 2>&1 || true
"$corrald" container start "$name" --rootfs "$rootfs"
"$corrald" container list
"$corrald" container exec "$name" -- sh -c 'echo "inside: $(id -un) on $(hostname), $(cat /proc/self/uid_map | tr -s " ")"'
"$corrald" container stop "$name"
