#!/usr/bin/env bash
# Runs Tollgate's whole test suite: formatting and lint gates, unit tests,
# property tests of the state machine, openraft's storage conformance suite,
# and the multi-process cluster tests (real `tollgate` processes on loopback).
# CI runs exactly this script (.ci/run). Needs only cargo: protobuf is
# compiled in pure Rust, and every cluster the tests start stops by itself.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
