#!/usr/bin/env bash
# Sidecar start-up cost: time from `sluice-sidecar` start to the workload's exit, for a typical
# template set (3 templates: envsubst JSON, jinja from a file KV, jinja from the file registry),
# against the workload alone. The difference is the sidecar's overhead (start, read config, load
# KV, render, write atomically, fork/exec, reap, exit). Needs hyperfine (apt-get install hyperfine).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p sluice-sidecar >/dev/null 2>&1
bin="$PWD/target/release/sluice-sidecar"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r benches/sidecar/typical/. "$work/"
cd "$work"
export CLIENT_SYSTEMS="app_1;app_2;app_3" CA_ROOT=/certificates/CA_Server.cer \
  CA_SERVER=/certificates/data_server.cer CA_PRIVATE_KEY=/certificates/data_server.key SLUICE_LOG=warn
"$bin" --config sidecar.toml -- /bin/true
head -3 out/settings.py
hyperfine -N --warmup 50 --runs 500 --export-markdown "$work/result.md" \
  '/bin/true' \
  "$bin --config sidecar.toml -- /bin/true" \
  "$bin -- /bin/true"
cat "$work/result.md"
