#!/usr/bin/env bash
# Prints the daemon's figures as JSON: API request rates, launch and exec latencies, list time,
# daemon memory. Runs its own corrald in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
busybox=$(tests/images/build.sh busybox | awk '{print $2}')
cargo build --release -p corrald -p corral --bins --example bench_api >&2
target/release/examples/bench_api "$busybox"
