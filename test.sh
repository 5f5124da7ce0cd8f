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
cargo test --workspace --locked
