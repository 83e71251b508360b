#!/usr/bin/env bash
# Adds the wasm32-wasip2 target to the pinned toolchain (rust-toolchain.toml), as
# scripts/setup.sh does: building `sluice` compiles its built-in policies to it, and not every
# rustup adds the targets rust-toolchain.toml names by itself. The example scripts run this
# before building. Without rustup (a distribution's Rust) it does nothing, and
# crates/sluice/build.rs says what is missing.
set -euo pipefail
command -v rustup >/dev/null || exit 0
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
rustup toolchain install "$toolchain" --profile minimal >/dev/null 2>&1 || true
rustup target add --toolchain "$toolchain" wasm32-wasip2 >/dev/null
