#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian machine. Idempotent and quick
# when everything is already there. Tests never install anything themselves: they fail with a
# message naming this script.
set -euo pipefail

# Debian packages: real peers for the tests (curl, openssl, etcd), GNU envsubst (gettext-base),
# which the sidecar's envsubst mode is compared against, and the benchmarks' tools and
# side-by-side contenders (nginx with its stream module, haproxy, wrk, h2load, hyperfine,
# valgrind, iperf3, iproute2's nstat for the stall benchmark's TCP counters, and perf for the
# system calls `sizes.sh`'s wire phase counts), pebble (the ACME test CA the certificate tests
# run), and chromium, the headless browser the status page's tests drive. Debian's python3-grpcio
# is the real gRPC stack the gRPC tests run (Debian's own /usr/bin/python3 imports it, whatever
# python3 comes first in PATH).
need=()
for pair in curl:curl openssl:openssl etcd:etcd-server nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client envsubst:gettext-base hyperfine:hyperfine valgrind:valgrind iperf3:iperf3 nstat:iproute2 perf:linux-perf chromium:chromium pebble:pebble; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# nginx's `stream` (TCP proxy) module, for the TCP relay benchmark.
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
# A font for the status page's screenshots. Chromium's fontconfig dependency already pulls one
# in (fontconfig-config needs fonts-dejavu-core or another); named here so it never goes missing.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || need+=(python3-grpcio)
# venv (with ensurepip) for the Python policy toolchain below; Debian splits it from python3.
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The pinned toolchain (rust-toolchain.toml) and the target Wasm policies compile to.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
rustup toolchain install "$toolchain" --profile minimal --component rustfmt --component clippy >/dev/null 2>&1 || true
rustup target add --toolchain "$toolchain" wasm32-wasip2 >/dev/null

# Python policies (sdk/python): componentize-py at the version pinned in
# sdk/python/requirements.txt, in its own venv (Debian's python3 refuses `pip install` outside
# one, PEP 668). sdk/python/build.sh looks for it there.
pinned=$(sed -n 's/^componentize-py==\(.*\)$/\1/p' "$(dirname "$0")/../sdk/python/requirements.txt")
venv="${XDG_DATA_HOME:-$HOME/.local/share}/sluice/componentize-py"
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $pinned" ]; then
  echo "setup: installing componentize-py $pinned into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$pinned"
fi

# Fuzzing (scripts/fuzz.sh): libFuzzer's instrumentation needs the nightly toolchain, and
# cargo-fuzz drives it. Both only when absent: `rustup toolchain install nightly` on an installed
# nightly updates it (a download, then every fuzz target rebuilds), and installing cargo-fuzz
# compiles it from source (about 1.5 minutes on two cores).
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
