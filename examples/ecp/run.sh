#!/usr/bin/env bash
# ECP example (seed 000) as plain processes. Builds Sluice (the ecp-authz policy is built into
# it) and the data-server stand-in, makes the certificates (gen-certificates.sh) and the KV key
# ecp/CLIENT_SYSTEMS (from $CLIENT_SYSTEMS, default "app1;app2"), starts the data server on
# 127.0.0.21 and Sluice on 127.0.0.20, and waits. Walk through README.md from another
# terminal; Ctrl-C stops everything. SLUICE_PROFILE=debug uses a debug build of Sluice (much
# faster to build; the embedded policy is compiled in release either way).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
scripts/wasm-target.sh # the target Sluice's built-in policies compile to (rustup may lack it)
case "${SLUICE_PROFILE:-release}" in
    release) cargo build --release --locked -p sluice -p sluice-test-support; bin=target/release ;;
    debug) cargo build --locked -p sluice -p sluice-test-support; bin=target/debug ;;
    *) echo "SLUICE_PROFILE must be release or debug" >&2; exit 2 ;;
esac
"$here/gen-certificates.sh" "$here/certs"
mkdir -p "$here/kv/ecp"
printf '%s\n' "${CLIENT_SYSTEMS:-app1;app2}" > "$here/kv/ecp/CLIENT_SYSTEMS"
echo "ecp/CLIENT_SYSTEMS = $(cat "$here/kv/ecp/CLIENT_SYSTEMS")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# The data server: the mirror-member stand-in's superserver port greets with its name.
"$bin/sluice-mirror-member" datasrv primary \
    127.0.0.21:52773 127.0.0.21:1972 127.0.0.21:52774 & pids+=($!)
"$bin/sluice" check -c "$here/sluice.toml"
echo
echo "Sluice: superserver 127.0.0.20:1972 (mutual TLS), admin 127.0.0.20:9901"
echo
"$bin/sluice" run -c "$here/sluice.toml" & pids+=($!)
wait "${pids[-1]}"
