#!/usr/bin/env bash
# What a burst after a stall costs: Sluice vs nginx vs haproxy, one worker each, in front of the
# same nginx backend, under an open-loop HTTP/2 load. Some seconds in, the proxy, the backend
# and the load generator are stopped together (SIGSTOP) and resumed (SIGCONT), as a host that
# pauses its processes does. The requests the stall held back then arrive at once: up to
# 20 connections × the proxy's concurrent streams, each wanting a connection to the backend.
#
#   benches/side-by-side/stall.sh [ROUNDS] [STALL_SECONDS]
#   PROTOS="h2c h2" RATE=13000 SIZE=1024 BACKLOG=64 benches/side-by-side/stall.sh 3 3
#   SLUICE_SERVICE=$'[service.pool]\nmax_connecting = 65536' benches/side-by-side/stall.sh
#                                       # lines added to Sluice's [[service]], to compare settings
#   SLUICE_BIN=/tmp/sluice-old CONTENDERS=sluice benches/side-by-side/stall.sh   # another build
#
# Reported per contender and run: requests that failed (transport error or non-2xx, as
# `loadgen` counts them), TCP connections opened on the host (`TcpActiveOpens`; the
# generator's 20 included) and SYNs dropped at a full accept queue (`TcpExtListenOverflows`),
# both from `nstat`, so nothing else should run meanwhile. The backend's accept queue is
# BACKLOG (64 by default, against nginx's 511): smaller than the burst, so that every run
# shows how a proxy opens connections to it, not only the runs where the host was slow.
# Pinning: proxies on CPU 0, backend and load generator on CPU 1.
set -euo pipefail
ROUNDS=${1:-3}
STALL=${2:-3}
PROTOS=${PROTOS:-h2c h2}
CONTENDERS=${CONTENDERS:-nginx haproxy sluice}
RATE=${RATE:-13000}
SIZE=${SIZE:-1024}   # response body bytes
BACKLOG=${BACKLOG:-64}
SLUICE_SERVICE=${SLUICE_SERVICE:-}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin:/sbin"
for tool in nginx haproxy openssl taskset nstat; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice -p sluice-benches --bin sluice --bin loadgen >&2

. benches/side-by-side/lib.sh   # bench_workdir, bench_cert, *_conf, haproxy_http_head
bench_workdir

mkdir -p "$work/files"
chmod 755 "$work" "$work/files"   # nginx's workers run as an unprivileged user
head -c "$SIZE" /dev/zero | tr '\0' 'x' > "$work/files/$SIZE"
bench_cert

BACKEND=127.0.0.1:18150
# Ports: nginx 1816x, haproxy 1817x, sluice 1818x; x = 2 h2c, 4 h2.
declare -A base=([nginx]=1816 [haproxy]=1817 [sluice]=1818)
declare -A slot=([h2c]=2 [h2]=4)

files_backend_conf "$work/backend" "$BACKEND" "$work/files" "$BACKLOG"
nginx_proxy_conf "$work/nginx" "$BACKEND" "127.0.0.1:18162 http2" "127.0.0.1:18164 ssl http2"
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend fe
  bind 127.0.0.1:18172 proto h2
  bind 127.0.0.1:18174 ssl crt $work/haproxy.pem alpn h2
  default_backend be
backend be
  server b1 $BACKEND
EOF
{
  sluice_proxy_conf 127.0.0.1:18189 "$BACKEND" h2c=127.0.0.1:18182 h2=127.0.0.1:18184+tls
  echo "$SLUICE_SERVICE"
} > "$work/sluice.toml"

start_contenders
declare -A pid=([nginx]=$nginx_pid [haproxy]=$haproxy_pid [sluice]=$sluice_pid)
backend_pids=$(pgrep -f "nginx -c $work/backend/nginx.conf" | tr '\n' ' ')

# A process and its direct children (nginx's worker).
family() { echo "$1" $(pgrep -P "$1" | tr '\n' ' '); }

# stalled_run WHO PROTO → "failed opened overflows"
stalled_run() {
  local scheme=http; [ "$2" = h2 ] && scheme=https
  local url="$scheme://127.0.0.1:${base[$1]}${slot[$2]}/$SIZE" out="$work/loadgen.out" lg
  nstat -n >/dev/null
  taskset -c 1 target/release/loadgen --url "$url" --rate "$RATE" --connections 20 \
    --duration 10 --http2 --ca "$work/cert.pem" --server-name bench.test > "$out" &
  lg=$!
  sleep 3
  # shellcheck disable=SC2046 # word splitting wanted: a list of pids
  kill -STOP $(family "${pid[$1]}") $backend_pids "$lg"
  sleep "$STALL"
  # shellcheck disable=SC2046
  kill -CONT $(family "${pid[$1]}") $backend_pids "$lg"
  wait "$lg"
  local counters; counters=$(nstat 2>/dev/null)
  python3 - "$out" "$counters" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
count = lambda name: next((int(l.split()[1]) for l in sys.argv[2].splitlines() if l.startswith(name + " ")), 0)
print(run["errors"], count("TcpActiveOpens"), count("TcpExtListenOverflows"))
PY
}

results="$work/results"
for round in $(seq "$ROUNDS"); do
  for proto in $PROTOS; do
    for who in $CONTENDERS; do
      echo "$proto $who $(stalled_run "$who" "$proto")" | tee -a "$results" >&2
      sleep 2   # connections the run left idle close, the backend's queue empties
    done
  done
  echo "round $round done" >&2
done

if [[ " $CONTENDERS " == *" sluice "* ]]; then
  echo "Sluice's counters over every run:" >&2
  curl -s http://127.0.0.1:18189/metrics \
    | grep -E '^sluice_upstream_(errors|connect_waits|connections)_total' >&2 || true
fi

python3 - "$results" "$BACKLOG" "$STALL" <<'PY'
import sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    proto, who, failed, opened, overflows = line.split()
    runs[(proto, who)].append((int(failed), int(opened), int(overflows)))
print(f"\nStalled {sys.argv[3]} s under load; backend accept queue {sys.argv[2]}. Per run:\n")
print("| protocol | proxy | failed requests | connections opened | accept-queue overflows |")
print("|---|---|---|---|---|")
for (proto, who), rs in sorted(runs.items()):
    col = lambda i: ", ".join(f"{r[i]:,}" for r in rs)
    print(f"| {proto} | {who} | {col(0)} | {col(1)} | {col(2)} |")
PY
