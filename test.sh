#!/usr/bin/env bash
# Runs Tollgate's whole test suite: formatting and lint gates, unit tests,
# property tests of the state machine, openraft's storage conformance suite,
# the multi-process cluster tests (real `tollgate` processes on loopback), and
# the end-to-end edge tests driven by the official `anthropic` and `openai`
# Python SDKs and by Codex CLI, and a brief run of every chaos scenario (in
# network namespaces the tests create themselves). CI runs exactly this script
# (.ci/run). Needs cargo, python3, npm, and root with iproute2 (`ip`) for the
# chaos scenarios: protobuf is compiled in pure Rust, the SDKs are installed
# here into a venv under target/ (Codex CLI with npm, under target/codex), and
# every process and namespace the tests create is removed.
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
# Codex CLI, pinned, for the test that runs it through `tollgate up`.
codex_dir="$target_dir/codex"
pkg=edge/tests/codex/package.json
if ! cmp -s "$pkg" "$codex_dir/package.json" 2>/dev/null || ! [ -x "$codex_dir/node_modules/.bin/codex" ]; then
  rm -rf "$codex_dir"
  mkdir -p "$codex_dir"
  cp "$pkg" "$codex_dir/package.json"
  (cd "$codex_dir" && npm install --no-audit --no-fund --loglevel=error)
fi
export TOLLGATE_CODEX="$PWD/$codex_dir/node_modules/.bin/codex"
case "$target_dir" in /*) export TOLLGATE_CODEX="$codex_dir/node_modules/.bin/codex" ;; esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
