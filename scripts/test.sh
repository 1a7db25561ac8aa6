#!/usr/bin/env bash
# Runs every check and test of Corral, as root on Debian 12: format, lints, unit tests and the
# system tests (real namespaces, cgroups, seccomp; test images built and cached first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

tests/images/build.sh all >&2
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Every system test must run here: a missing image or service is a failure, not a skip.
export CORRAL_REQUIRED_TESTS=1
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
