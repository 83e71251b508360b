#!/usr/bin/env bash
# Quickstart: builds Sluice, starts two demo backends and Sluice in front of them.
# Then, from another terminal:
#   curl -s localhost:8080/hello      # answered by "one" and "two" in turn
#   curl -s localhost:8080/one/x      # always "one", which sees the path /x
#   curl -s localhost:9901/api/services
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/wasm-target.sh # the target Sluice's built-in policies compile to (rustup may lack it)
cargo build --release --locked -p sluice -p sluice-test-support
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
target/release/sluice-testbackend one 127.0.0.1:9001 & pids+=($!)
target/release/sluice-testbackend two 127.0.0.1:9002 & pids+=($!)
target/release/sluice check -c examples/quickstart/sluice.toml
echo
echo "Sluice is starting on http://127.0.0.1:8080 (admin on http://127.0.0.1:9901)."
echo "Try:  curl -s localhost:8080/hello ; curl -s localhost:8080/hello"
echo
target/release/sluice run -c examples/quickstart/sluice.toml & pids+=($!)
wait "${pids[-1]}"
