#!/usr/bin/env bash
# Runs Tollgate's whole test suite: formatting and lint gates, unit tests,
# property tests of the state machine, openraft's storage conformance suite,
# the multi-process cluster tests (real `tollgate` processes on loopback), and
# the end-to-end edge tests driven by the official `anthropic` and `openai`
# Python SDKs, and a brief run of every chaos scenario (in network namespaces
# the tests create themselves). CI runs exactly this script (.ci/run). Needs
# cargo, python3, and root with iproute2 (`ip`) for the chaos scenarios:
# protobuf is compiled in pure Rust, the SDKs are installed here into a venv
# under target/, and every process and namespace the tests create is removed.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The SDKs for the end-to-end tests, pinned, in a venv under target/.
target_dir=${CARGO_TARGET_DIR:-target}
venv="$target_dir/pyenv"
req=edge/tests/py/requirements.txt
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
