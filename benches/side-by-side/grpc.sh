#!/usr/bin/env bash
# Side-by-side gRPC unary calls: Sluice (protocol = "h2c") vs nginx (grpc_pass) vs haproxy
# (proto h2), one worker each, HTTP/2 on both sides, in front of the same backend.
#
#   benches/side-by-side/grpc.sh [ROUNDS] [SECONDS]
#   MESSAGE=1024 benches/side-by-side/grpc.sh 3 5   # requests with a 1 KiB message
#
# The backend is nginx answering every call as a unary gRPC method does: HTTP/2, `content-type:
# application/grpc`, a small message, and `grpc-status: 0` in trailers (proxies relay the
# bytes; none of them parses the messages). The load is h2load -t1 -c20 -m10 sending POSTs
# with a framed MESSAGE-byte message (100 unless set), `content-type: application/grpc` and
# `te: trailers`, as a gRPC client's unary call looks on the wire. Per round and contender: a 1 s warm-up, SECONDS
# of load, req/s from h2load and proxy CPU µs per call from /proc. Medians over ROUNDS
# interleaved rounds, and ratios against the best peer. Pinning: proxies on CPU 0, backend and
# h2load on CPU 1.
set -euo pipefail
ROUNDS=${1:-3}
MESSAGE=${MESSAGE:-100}
SECS=${2:-5}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy h2load nghttp taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice --bin sluice >&2

. benches/side-by-side/lib.sh   # bench_workdir, nginx_head, haproxy_http_head, ticks, hz
bench_workdir
mkdir -p "$work/backend" "$work/nginx"

BACKEND=127.0.0.1:18200
declare -A port=([nginx]=18212 [haproxy]=18222 [sluice]=18232)
# A unary call's request: the 5-byte gRPC frame header (uncompressed, the length big-endian),
# then the message.
python3 -c 'import sys; n = int(sys.argv[1]); sys.stdout.buffer.write(b"\0" + n.to_bytes(4, "big") + b"m" * n)' \
  "$MESSAGE" > "$work/call.bin"

cat > "$work/backend/nginx.conf" <<EOF
$(nginx_head "$work/backend")
http {
  access_log off;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 1024;
  server {
    listen $BACKEND http2;
    location / {
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      return 200 "a-small-reply-message";
    }
  }
}
EOF
cat > "$work/nginx/nginx.conf" <<EOF
$(nginx_head "$work/nginx")
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server $BACKEND; keepalive 128; }
  server {
    listen 127.0.0.1:${port[nginx]} http2;
    location / { grpc_pass grpc://backend; }
  }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend fe
  bind 127.0.0.1:${port[haproxy]} proto h2
  default_backend be
backend be
  server b1 $BACKEND proto h2
EOF
cat > "$work/sluice.toml" <<EOF
$(sluice_head "127.0.0.1:18239")
[[listener]]
name = "grpc"
bind = "127.0.0.1:${port[sluice]}"
[[route]]
service = "backend"
[[service]]
name = "backend"
protocol = "h2c"
instances = ["$BACKEND"]
EOF

start_contenders
declare -A pid=([nginx]=$nginx_pid [haproxy]=$haproxy_pid [sluice]=$sluice_pid)
headers=(-H 'content-type: application/grpc' -H 'te: trailers')

# calls URL SECONDS → "calls calls/s failed": failed counts calls that got no answer or a
# non-2xx one (reported, not hidden: a proxy's failures are part of its result).
calls() {
  local out
  out=$(taskset -c 1 h2load -t1 -c20 -m10 -D "$2" -d "$work/call.bin" "${headers[@]}" "$1" 2>&1)
  # h2load counts a non-2xx answer as failed.
  awk '/^requests:/ {n=$2; bad=$10+$12+$14} /^finished in/ {gsub(",", "", $4); r=$4} END {print n, r, bad}' <<<"$out"
}

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for who in nginx haproxy sluice; do
    url="http://127.0.0.1:${port[$who]}/bench.Echo/Unary"
    # The call goes through with its trailer (nghttp prints the frames it receives).
    nghttp -v -d "$work/call.bin" "${headers[@]}" "$url" 2>&1 | grep -q 'grpc-status: 0' ||
      { echo "$who: $url did not relay grpc-status" >&2; exit 1; }
    calls "$url" 1 >/dev/null
    before=$(ticks "${pid[$who]}")
    read -r n rps failed < <(calls "$url" "$SECS")
    after=$(ticks "${pid[$who]}")
    cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN {if (n > 0) printf "%.2f", d / hz * 1e6 / n; else print "nan"}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$who" "$rps" "$cpu" "$failed" >> "$results"
    echo "round $round $who: $rps calls/s, $cpu µs CPU/call, $failed failed" >&2
  done
done

python3 - "$results" "$ROUNDS" "$SECS" <<'PY'
import math, os, statistics, sys
path, rounds, secs = sys.argv[1:4]
runs = {}
for line in open(path):
    _, who, rps, cpu, failed = line.rstrip("\n").split("\t")
    runs.setdefault(who, []).append((float(rps), float(cpu), int(failed)))
med = {w: (statistics.median(r for r, _, _ in v), statistics.median(c for _, c, _ in v), sum(f for _, _, f in v))
       for w, v in runs.items()}
best_rps = max(med[w][0] for w in ("nginx", "haproxy"))
best_cpu = min(med[w][1] for w in ("nginx", "haproxy"))
s = med["sluice"]
print(f"gRPC unary calls ({os.environ.get('MESSAGE', '100')}-byte messages), h2load -c20 -m10, medians of {rounds} interleaved rounds of {secs} s.\n")
print(f"Sluice vs the best peer: {s[0] / best_rps:.2f}× calls/s, {s[1] / best_cpu:.2f}× CPU per call.\n")
print("| proxy | calls/s | CPU µs per call | failed calls (all rounds) |")
print("|---|---|---|---|")
for w in ("sluice", "nginx", "haproxy"):
    print(f"| {w} | {med[w][0]:.0f} | {med[w][1]:.2f} | {med[w][2]} |")
PY
