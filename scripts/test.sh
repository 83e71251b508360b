#!/usr/bin/env bash
# The test command: everything `cargo test` covers, against real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace --locked "$@"
