#!/usr/bin/env bash
# User-space instructions per proxied request — Sluice vs nginx vs haproxy — counted by
# valgrind's callgrind. Unlike req/s and CPU time, instruction counts do not depend on what
# else the machine is doing, so they compare implementations reliably on a noisy host. They
# leave out the kernel's share (the same syscalls per request for all three: see
# docs/benchmarks.md).
#
#   benches/side-by-side/instructions.sh [REQUESTS]
#   PROTO=h2c SLUICE=/tmp/sluice-old CONTENDERS=sluice benches/side-by-side/instructions.sh
#
# Each proxy runs under callgrind in front of the same nginx backend (64-byte body) and gets
# REQUESTS requests (plus a 1 s warm-up) from `loadgen` at 200 req/s over 20 keep-alive
# connections, on the client protocol PROTO: h1 (the default), h2c (HTTP/2 with prior
# knowledge), https (HTTP/1.1 over TLS 1.3) or h2 (ALPN h2); every proxy speaks HTTP/1.1 to
# the backend. SLUICE names the Sluice binary (target/release/sluice, built first, by default).
# LOAD=closed counts at saturation instead, where HTTP/2 streams and reads come in batches:
# h2load with 20 connections (10 streams each on HTTP/2), 4,000 requests of warm-up, then the
# counters are zeroed (callgrind_control -z) and REQUESTS requests counted (try 20000).
# Otherwise (LOAD=open, the default) a second run with no requests measures start-up and shutdown, which is
# subtracted. With KEEP_CALLGRIND=DIR, Sluice's callgrind profiles are copied to DIR (read
# them with callgrind_annotate). CONTENDERS="sluice" runs a subset; SLUICE_ROUTE_EXTRA and
# SLUICE_SERVICE_EXTRA add keys to Sluice's route and service, to count what an option costs:
#   SLUICE_ROUTE_EXTRA='rate_limit = { rate = 10000000 }' CONTENDERS=sluice instructions.sh
set -euo pipefail
REQUESTS=${1:-2000}
PROTO=${PROTO:-h1}
LOAD=${LOAD:-open}
SLUICE=${SLUICE:-target/release/sluice}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy valgrind curl openssl h2load callgrind_control; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice -p sluice-benches --bin sluice --bin loadgen >&2

work=$(mktemp -d)
backend_pid=""
cleanup() { [ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null; wait 2>/dev/null || true; [ -n "${KEEP_CALLGRIND:-}" ] && cp "$work"/cg.sluice.* "$KEEP_CALLGRIND"/ 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

BACKEND=127.0.0.1:18100 PROXY=127.0.0.1:18101 PROXY_PORT=18101 ADMIN=127.0.0.1:18901
tls=false scheme=http
case $PROTO in
  h1|h2c) ;;
  https|h2) tls=true scheme=https ;;
  *) echo "PROTO must be h1, h2c, https or h2" >&2; exit 1 ;;
esac
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 30 -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
declare -A nginx_listen=([h1]="" [h2c]=" http2" [https]=" ssl" [h2]=" ssl http2")
declare -A haproxy_bind=([h1]="" [h2c]=" proto h2" [https]=" ssl crt $work/haproxy.pem alpn http/1.1" [h2]=" ssl crt $work/haproxy.pem alpn h2")
sluice_tls=""
$tls && sluice_tls=$(printf '[listener.tls]\ncert = "%s"\nkey = "%s"' "$work/cert.pem" "$work/key.pem")
# How curl (readiness) and loadgen speak PROTO.
curl_flags=(-fsS -o /dev/null) loadgen_flags=()
case $PROTO in
  h2c) curl_flags+=(--http2-prior-knowledge); loadgen_flags+=(--http2) ;;
  https) curl_flags+=(--cacert "$work/cert.pem" --connect-to "bench.test:$PROXY_PORT:$PROXY") ;;
  h2) curl_flags+=(--http2 --cacert "$work/cert.pem" --connect-to "bench.test:$PROXY_PORT:$PROXY")
      loadgen_flags+=(--http2) ;;
esac
$tls && loadgen_flags+=(--ca "$work/cert.pem" --server-name bench.test)
body=$(printf 'x%.0s' $(seq 1 63))
cat > "$work/backend.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen $BACKEND; location / { return 200 "$body\n"; } } }
EOF
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server $BACKEND; keepalive 64; }
  server { listen $PROXY${nginx_listen[$PROTO]};
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind $PROXY${haproxy_bind[$PROTO]}
  default_backend be
backend be
  server b1 $BACKEND
EOF
cat > "$work/sluice.toml" <<EOF
[admin]
bind = "$ADMIN"
[runtime]
worker_threads = 1
[access_log]
path = "off"
[log]
level = "warn"
[[listener]]
name = "web"
bind = "$PROXY"
$sluice_tls
[[route]]
service = "backend"
${SLUICE_ROUTE_EXTRA:-}
[[service]]
name = "backend"
instances = ["$BACKEND"]
${SLUICE_SERVICE_EXTRA:-}
EOF

url="$scheme://$PROXY/" curl_url="$scheme://$PROXY/"
$tls && curl_url="$scheme://bench.test:$PROXY_PORT/"
nginx -c "$work/backend.conf" -e "$work/backend.err" &
backend_pid=$!
sleep 0.5

# start_counted NAME OUT: starts proxy NAME under callgrind (profile to OUT) and waits until it
# answers; sets `counted` (valgrind's pid) and `stop` (the signal that ends the proxy cleanly).
start_counted() {
  local cmd
  case $1 in
    sluice) cmd=("$SLUICE" run -c "$work/sluice.toml"); stop=INT ;;
    nginx) cmd=(nginx -c "$work/nginx.conf" -e "$work/nginx.err"); stop=QUIT ;;
    haproxy) cmd=(haproxy -db -q -f "$work/haproxy.cfg"); stop=USR1 ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$2" "${cmd[@]}" 2>"$work/vg.$1.log" &
  counted=$!
  for _ in $(seq 1 100); do curl "${curl_flags[@]}" "$curl_url" 2>/dev/null && break; sleep 0.1; done
}

stop_counted() { kill -"$stop" "$counted"; wait "$counted" 2>/dev/null || true; }

# run NAME REQUESTS: total instructions of one proxy run.
run() {
  local name=$1 n=$2 out="$work/cg.$1.$2"
  start_counted "$name" "$out"
  if [ "$n" -gt 0 ]; then
    target/release/loadgen --url "$url" "${loadgen_flags[@]}" --rate 200 --connections 20 --duration $((n / 200)) >&2
  fi
  stop_counted
  # The metrics exporter calibrates its clock at start-up for a varying number of rounds
  # (~6-11M instructions): that work is left out so it cannot leak into the difference
  # between the two runs.
  local total calibration
  total=$(awk '/^summary:/ {print $2}' "$out" | head -1)
  calibration=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
    awk '/src\/lib.rs:quanta::Calibration::calibrate \[/ {gsub(",", "", $1); print $1; exit}')
  echo $((total - ${calibration:-0}))
}

# closed_load REQUESTS: h2load at saturation; fails unless every request succeeded.
closed_load() {
  local flags=(-t1 -c20 -m10) done_
  case $PROTO in h1|https) flags=(--h1 -t1 -c20) ;; esac
  done_=$(h2load "${flags[@]}" -n "$1" "$url" | awk '/^requests:/ {print $8}')
  [ "$done_" = "$1" ] || { echo "h2load: $done_ of $1 requests succeeded" >&2; return 1; }
}

# run_closed NAME REQUESTS: instructions per request at saturation, start-up left out.
run_closed() {
  local out="$work/cg.$1.closed"
  start_counted "$1" "$out"
  closed_load 4000 && callgrind_control -z "$counted" >/dev/null 2>&1 &&
    closed_load "$2" && callgrind_control -d "$counted" >/dev/null 2>&1 ||
    { stop_counted; return 1; }
  stop_counted
  # The dump taken after the counted requests is the file's first part.
  echo $(( $(awk '/^summary:/ {print $2}' "$out.1" | head -1) / $2 ))
}

printf '| proxy | instructions per request | vs nginx |\n|---|---|---|\n'
declare -A per
contenders=${CONTENDERS:-nginx haproxy sluice}
for name in $contenders; do
  if [ "$LOAD" = closed ]; then
    per[$name]=$(run_closed "$name" "$REQUESTS")
    continue
  fi
  base=$(run "$name" 0)
  loaded=$(run "$name" "$REQUESTS")
  # loadgen sends 1 s of warm-up (200 requests) on top of REQUESTS; curl's readiness probes
  # are in both runs and cancel out.
  per[$name]=$(( (loaded - base) / (REQUESTS + 200) ))
done
for name in $contenders; do
  printf '| %s | %s | %s |\n' "$name" "${per[$name]}" "$(awk -v a="${per[$name]}" -v b="${per[nginx]:-}" 'BEGIN {if (b) printf "%.2f×", a / b; else printf "—"}')"
done
