#!/usr/bin/env bash
# Runs Tollgate's whole test suite: formatting and lint gates, unit tests,
# property tests of the state machine, openraft's storage conformance suite,
# the multi-process cluster tests (real `tollgate` processes on loopback), and
# the end-to-end edge tests driven by the official `anthropic` and `openai`
# Python SDKs. CI runs exactly this script (.ci/run). Needs only cargo and
# python3: protobuf is compiled in pure Rust, the SDKs are installed here into
# a venv under target/, and every process the tests start stops by itself.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The SDKs for the end-to-end tests, pinned, in a venv under target/.
target_dir=${CARGO_TARGET_DIR:-target}
venv="$target_dir/pyenv"
req=chaos-tests/py/requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
export TOLLGATE_PYTHON="$PWD/$venv/bin/python"
case "$target_dir" in /*) export TOLLGATE_PYTHON="$venv/bin/python" ;; esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
