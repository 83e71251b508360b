#!/usr/bin/env bash
# simplemirror: two IRIS mirror sets (simulated) behind one Sluice, as plain processes.
# Builds Sluice (the mirror-primary policy is built into it) and the member stand-in, starts the
# four members on 127.0.0.11-14 and Sluice on 127.0.0.10, and waits. Walk through README.md from another
# terminal; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/wasm-target.sh # the target Sluice's built-in policies compile to (rustup may lack it)
cargo build --release --locked -p sluice -p sluice-test-support
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
member() { # NAME ROLE IP
    target/release/sluice-mirror-member "$1" "$2" "$3:52773" "$3:1972" "$3:52774" & pids+=($!)
}
member ap1a primary 127.0.0.11
member ap1b backup 127.0.0.12
member ap2a primary 127.0.0.13
member ap2b backup 127.0.0.14
target/release/sluice check -c examples/simplemirror/sluice.toml
echo
echo "Sluice: http://127.0.0.10:8080  tcp 127.0.0.10:1972 (AP1) and :11972 (AP2)  admin :9901"
echo "Members take POST /primary /backup /freeze /stop /start on their IP, port 52774."
echo
target/release/sluice run -c examples/simplemirror/sluice.toml & pids+=($!)
wait "${pids[-1]}"
