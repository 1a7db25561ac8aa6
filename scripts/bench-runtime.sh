#!/usr/bin/env bash
# Prints the runtime's figures as JSON (medians): start, stop, Debian boot, exec, monitor PSS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
source scripts/bench-cpu.sh
busybox=$(tests/images/build.sh busybox | awk '{print $2}')
debian=$(tests/images/build.sh bookworm | awk '{print $2}')
cargo build --release -p corrald --bin corrald --example bench_runtime >&2
trap bench_cpu_release EXIT
bench_cpu_priority runtime # scripts/bench-cpu.sh
bench_cpu_containers
target/release/examples/bench_runtime "$busybox" "$debian"
