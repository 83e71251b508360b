#!/usr/bin/env bash
# Side-by-side TLS sessions benchmark: Sluice (rustls) vs nginx and haproxy (OpenSSL), one worker
# each, terminating TLS with the same certificate in front of the same nginx backend (64-byte
# body). Full handshakes are measured by tls.sh; this measures what happens after them. See
# docs/benchmarks.md for the method and the recorded results.
#
#   benches/side-by-side/tls_sessions.sh [ROUNDS] [SECONDS] [IDLE_CONNECTIONS]
#   CONTENDERS="nginx sluice" KEYS="ecdsa" benches/side-by-side/tls_sessions.sh 1 5 1000
#
# Per key type (ECDSA P-256, RSA-2048), round and contender:
#   - resumed handshakes: `openssl s_time -reuse` over TLS 1.2 (s_time reuses one session; with
#     TLS 1.3 its tickets arrive after the handshake and s_time does not wait for them);
#   - HTTPS keep-alive: wrk -t1 -c50, req/s and CPU µs per request (ECDSA only);
#   - memory per idle TLS connection: IDLE_CONNECTIONS handshaken, idle connections held open by
#     one client; the proxy's RSS growth divided by their number (ECDSA only).
# Contenders run one after another, interleaved over ROUNDS rounds; medians are reported.
# Pinning: proxies on CPU 0, backend and clients on CPU 1 (on a 2-core machine).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
IDLE=${3:-8000}
CLIENTS=${CLIENTS:-4}
KEYS=${KEYS:-ecdsa rsa}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy wrk openssl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice --bin sluice >&2
# Enough descriptors for the idle-connection test: haproxy wants two per connection plus a
# margin. Sandboxes may cap the hard limit (20000 here), which caps IDLE.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ $((IDLE * 2 + 2048)) -gt "$hard" ]; then
  echo "IDLE=$IDLE needs $((IDLE * 2 + 2048)) descriptors; the hard limit is $hard" >&2
  exit 1
fi
ulimit -n "$hard"

work=$(mktemp -d)
pids=()
# Waits for the proxies only: a bare `wait` would also wait for the backend, which runs on.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
backend_pid=""
trap 'stop_all; [ -z "$backend_pid" ] || kill "$backend_pid" 2>/dev/null; rm -rf "$work"' EXIT

BACKEND=127.0.0.1:18200 NGINX=127.0.0.1:18201 HAPROXY=127.0.0.1:18202 SLUICE=127.0.0.1:18203 SLUICE_ADMIN=127.0.0.1:18913
body=$(printf 'x%.0s' $(seq 1 63))

# One certificate per key type, self-signed for `bench.test`, shared by the three proxies.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ecdsa.key" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.key" 2>/dev/null
for k in ecdsa rsa; do
  openssl req -new -x509 -key "$work/$k.key" -out "$work/$k.pem" -days 30 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test 2>/dev/null
  # PKCS#8 for Sluice (it reads PKCS#8, PKCS#1 and SEC1 alike; this keeps one code path).
  openssl pkcs8 -topk8 -nocrypt -in "$work/$k.key" -out "$work/$k.p8"
  cat "$work/$k.pem" "$work/$k.key" > "$work/$k.haproxy.pem"
done

mkdir -p "$work/backend"
cat > "$work/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $BACKEND; location / { return 200 "$body\n"; } }
}
EOF
taskset -c 1 nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" &
backend_pid=$!

. benches/side-by-side/lib.sh   # ticks, rss_kb, hz

start_proxies() {
  local k=$1 conns=$((IDLE + 256))
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $((IDLE * 2 + 1024));
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
# nginx starts closing idle connections when fewer than 1/16 of worker_connections are free:
# twice the idle count keeps it from doing that during the idle test.
events { worker_connections $((IDLE * 2)); }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_header_timeout 600s;
  upstream backend { server $BACKEND; keepalive 128; }
  server {
    listen $NGINX ssl;
    ssl_certificate $work/$k.pem;
    ssl_certificate_key $work/$k.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:20m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $conns
  tune.ssl.cachesize 100000
defaults
  mode http
  timeout connect 2s
  timeout client 600s
  timeout http-request 600s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind $HAPROXY ssl crt $work/$k.haproxy.pem
  default_backend be
backend be
  server b1 $BACKEND
EOF
  cat > "$work/sluice.toml" <<EOF
[admin]
bind = "$SLUICE_ADMIN"
[runtime]
worker_threads = 1
[access_log]
path = "off"
[log]
level = "warn"
[[listener]]
name = "web"
bind = "$SLUICE"
max_connections = $conns
# The idle-connection test holds handshaken connections that send no request for a while.
header_read_timeout = "600s"
keepalive_timeout = "600s"
[listener.tls]
cert = "$work/$k.pem"
key = "$work/$k.p8"
[[route]]
service = "backend"
[[service]]
name = "backend"
instances = ["$BACKEND"]
EOF
  taskset -c 0 nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!); pid[nginx]=$!
  taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!); pid[haproxy]=$!
  taskset -c 0 target/release/sluice run -c "$work/sluice.toml" 2>"$work/sluice.log" & pids+=($!); pid[sluice]=$!
  sleep 1
}

# Runs CLIENTS `s_time` processes on CPU 1 for SECS; prints "connections ticks" of the proxy.
s_time_run() {
  local who=$1 mode=$2 version=$3 before after total=0 i
  before=$(ticks "${pid[$who]}")
  for i in $(seq 1 "$CLIENTS"); do
    taskset -c 1 openssl s_time -connect "${addr[$who]}" "$mode" "$version" -time "$SECS" \
      > "$work/s_time.$i" 2>&1 &
  done
  wait $(jobs -p | tail -n "$CLIENTS")
  after=$(ticks "${pid[$who]}")
  for i in $(seq 1 "$CLIENTS"); do
    # "N connections in T real seconds" — the real-time line counts what completed.
    total=$((total + $(awk '/connections in [0-9.]+ real seconds/ {print $1; exit}' "$work/s_time.$i")))
  done
  echo "$total $((after - before))"
}

declare -A addr=([nginx]=$NGINX [haproxy]=$HAPROXY [sluice]=$SLUICE)
declare -A pid=()
results="$work/results.tsv"
: > "$results"
for k in $KEYS; do
  for round in $(seq 1 "$ROUNDS"); do
    # Fresh processes every round: memory a proxy kept from the last round's 8000 connections
    # would make the next round's idle connections look free.
    start_proxies "$k"
    for who in ${CONTENDERS:-nginx haproxy sluice}; do
      url="https://${addr[$who]}/"
      curl -fsSk "$url" >/dev/null || { echo "$who does not answer at $url" >&2; exit 1; }
      read -r n d < <(s_time_run "$who" -reuse -tls1_2)
      resumed_rate=$(awk -v n="$n" -v s="$SECS" 'BEGIN {printf "%.0f", n / s}')
      resumed_cpu=$(awk -v d="$d" -v hz="$hz" -v n="$n" 'BEGIN {printf "%.1f", n ? d / hz * 1e6 / n : 0}')
      rps="-" req_cpu="-" per_conn="-"
      if [ "$k" = ecdsa ]; then
        # Idle connections first, on a settled process: a keep-alive run before it would leave
        # buffers the allocator may return meanwhile, making the growth look smaller.
        sleep 1
        base=$(rss_kb "${pid[$who]}")
        per_conn=$(taskset -c 1 python3 benches/side-by-side/tls_idle.py "${addr[$who]}" "$IDLE" \
          "${pid[$who]}" "$base")
        taskset -c 1 wrk -t1 -c50 -d2s "$url" >/dev/null   # warm-up
        before=$(ticks "${pid[$who]}")
        out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$url")
        after=$(ticks "${pid[$who]}")
        rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
        total=$(awk '/requests in/ {print $1}' <<<"$out")
        req_cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$round" "$who" \
        "$resumed_rate" "$resumed_cpu" "$rps" "$req_cpu" "$per_conn" >> "$results"
      echo "$k round $round $who: resumed $resumed_rate/s ${resumed_cpu}µs, https $rps req/s ${req_cpu}µs, idle ${per_conn} KiB/conn" >&2
    done
    stop_all
  done
done
kill "$backend_pid" 2>/dev/null || true

python3 - "$results" "$ROUNDS" "$SECS" "$CLIENTS" "$IDLE" <<'EOF'
import statistics, sys
from collections import defaultdict
path, rounds, secs, clients, idle = sys.argv[1:]
cols = defaultdict(lambda: defaultdict(list))
for line in open(path):
    key, _round, who, *values = line.rstrip("\n").split("\t")
    for i, v in enumerate(values):
        if v not in ("-", ""):
            cols[(key, who)][i].append(float(v))
def med(key, who, i):
    xs = cols[(key, who)][i]
    return statistics.median(xs) if xs else None
def fmt(x, digits=0):
    return "—" if x is None else f"{x:.{digits}f}"
def ratio(x, base):
    return "—" if x is None or not base else f"{x / base:.2f}×"
print(f"Medians of {rounds} rounds, {secs} s each; {clients} s_time clients; {idle} idle connections.")
print()
print("| key | proxy | resumed handshakes (TLS 1.2)/s | CPU µs per resumed handshake | vs nginx |")
print("|---|---|---|---|---|")
for key in ("ecdsa", "rsa"):
    for who in ("nginx", "haproxy", "sluice"):
        if (key, who) not in cols:
            continue
        print(f"| {key} | {who} | {fmt(med(key, who, 0))} | {fmt(med(key, who, 1), 1)} | "
              f"{ratio(med(key, who, 1), med(key, 'nginx', 1))} |")
print()
print("| proxy (ECDSA) | HTTPS keep-alive req/s | vs nginx | CPU µs/req | vs nginx | KiB per idle TLS connection | vs nginx |")
print("|---|---|---|---|---|---|---|")
for who in ("nginx", "haproxy", "sluice"):
    if ("ecdsa", who) not in cols:
        continue
    print(f"| {who} | {fmt(med('ecdsa', who, 2))} | {ratio(med('ecdsa', who, 2), med('ecdsa', 'nginx', 2))} | "
          f"{fmt(med('ecdsa', who, 3), 2)} | {ratio(med('ecdsa', who, 3), med('ecdsa', 'nginx', 3))} | "
          f"{fmt(med('ecdsa', who, 4), 1)} | {ratio(med('ecdsa', who, 4), med('ecdsa', 'nginx', 4))} |")
EOF
