#!/usr/bin/env bash
# The test command: everything `cargo test` covers, against real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Programs the end-to-end tests run next to `sluice` (the sidecar and the test backend):
# `cargo test` builds only the binaries of packages that have integration tests.
cargo build --locked -p sluice-sidecar -p sluice-test-support --bins
exec cargo test --workspace --locked "$@"
