#!/usr/bin/env bash
# What a rate limit that is configured but not reached costs per request: Sluice, nginx
# (`limit_req`) and haproxy (a stick table tracking each client's request rate), each with and
# without its limit, one worker each, in front of the same nginx backend (64-byte body), over
# HTTP/1.1 keep-alive. The issue's target: Sluice with the limit ≤ 1.05× its CPU per request
# without it.
#
#   benches/side-by-side/rate_limit.sh [ROUNDS] [SECONDS] [RATE]
#
# Per contender and round: wrk -t1 -c50 (req/s, proxy CPU µs per request from /proc), then
# `loadgen` at a fixed RATE (CPU µs per request at that rate). Contenders are interleaved over
# ROUNDS rounds; medians are reported, with each limited contender's ratio to itself unlimited.
# The limits admit 10,000,000 requests a second per client (keyed by client address), so no
# request is refused; a refusal would show as non-2xx in the table's errors.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
RATE=${3:-15000}
cd "$(dirname "$0")/../.."
for tool in nginx haproxy wrk taskset; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p sluice -p sluice-benches --bin sluice --bin loadgen >&2

. benches/side-by-side/lib.sh   # bench_workdir, backend_nginx_conf, nginx_head, haproxy_http_head, ticks, hz
bench_workdir

BACKEND=127.0.0.1:18200
declare -A addr=([nginx]=127.0.0.1:18201 [nginx_limited]=127.0.0.1:18202
                 [haproxy]=127.0.0.1:18203 [haproxy_limited]=127.0.0.1:18204
                 [sluice]=127.0.0.1:18205 [sluice_limited]=127.0.0.1:18206)
body=$(printf 'x%.0s' $(seq 1 63))

mkdir -p "$work/nginx"
backend_nginx_conf "$work/backend" "$BACKEND" "$body"
# One nginx serves both of its contenders: the same worker, one server block with limit_req.
cat > "$work/nginx/nginx.conf" <<EOF
$(nginx_head "$work/nginx")
http {
  access_log off;
  keepalive_requests 1000000;
  limit_req_zone \$binary_remote_addr zone=perclient:10m rate=10000000r/s;
  upstream backend { server $BACKEND; keepalive 128; }
  server {
    listen ${addr[nginx]};
$(nginx_proxy_location)
  }
  server {
    listen ${addr[nginx_limited]};
    limit_req zone=perclient burst=10000000 nodelay;
$(nginx_proxy_location)
  }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend plain
  bind ${addr[haproxy]}
  default_backend be
frontend limited
  bind ${addr[haproxy_limited]}
  stick-table type ip size 100k expire 30s store http_req_rate(1s)
  http-request track-sc0 src
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 10000000 }
  default_backend be
backend be
  server b1 $BACKEND
EOF
sluice_config() { # NAME BIND ADMIN LIMIT
  cat > "$work/$1.toml" <<EOF
$(sluice_head "$3")
[[listener]]
name = "web"
bind = "$2"
[[route]]
service = "backend"
$4
[[service]]
name = "backend"
instances = ["$BACKEND"]
EOF
}
sluice_config sluice "${addr[sluice]}" 127.0.0.1:18905 ""
sluice_config sluice_limited "${addr[sluice_limited]}" 127.0.0.1:18906 \
  'rate_limit = { rate = 10000000, per = "1s", burst = 10000000 }'

taskset -c 1 nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" & pids+=($!)
taskset -c 0 nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
nginx_pid=$!
taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!)
haproxy_pid=$!
for s in sluice sluice_limited; do
  taskset -c 0 target/release/sluice run -c "$work/$s.toml" 2>"$work/$s.log" & pids+=($!)
  declare "${s}_pid=$!"
done
sleep 1
declare -A pid=([nginx]=$nginx_pid [nginx_limited]=$nginx_pid [haproxy]=$haproxy_pid
                [haproxy_limited]=$haproxy_pid [sluice]=$sluice_pid [sluice_limited]=$sluice_limited_pid)

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for who in sluice sluice_limited nginx nginx_limited haproxy haproxy_limited; do
    url="http://${addr[$who]}/"
    curl -fsS "$url" >/dev/null || { echo "$who does not answer at $url" >&2; exit 1; }
    taskset -c 1 wrk -t1 -c50 -d2s "$url" >/dev/null   # warm-up
    before=$(ticks "${pid[$who]}")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$url")
    after=$(ticks "${pid[$who]}")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {s=s $0 "; "} END {print s}' <<<"$out")
    cpu_us=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.3f", d / hz * 1e6 / n}')
    before=$(ticks "${pid[$who]}")
    lat=$(taskset -c 1 target/release/loadgen --url "$url" --rate "$RATE" --connections 50 --duration "$SECS")
    after=$(ticks "${pid[$who]}")
    fixed=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); n=j["requests"]; e=j["errors"]; print(f"{int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / n:.3f}\t{e}")' "$lat" $((after - before)) "$hz")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$who" "$rps" "$cpu_us" "$fixed" "$errors" >> "$results"
    echo "round $round $who: $rps req/s, $cpu_us µs CPU/req; at $RATE/s: $(cut -f1 <<<"$fixed") µs CPU/req ${errors}" >&2
  done
done

python3 - "$results" "$RATE" "$SECS" "$ROUNDS" <<'PY'
import statistics, sys
path, rate, secs, rounds = sys.argv[1:5]
rows = {}
for line in open(path):
    _, who, rps, cpu, fixed, lat_err, errs = line.rstrip("\n").split("\t")
    rows.setdefault(who, []).append((float(rps), float(cpu), float(fixed), int(lat_err), errs))
med = lambda xs: statistics.median(xs)
s = {w: dict(rps=med([r[0] for r in rs]), cpu=med([r[1] for r in rs]), fixed=med([r[2] for r in rs]),
             errs="".join(r[4] for r in rs) + (f"loadgen errors {sum(r[3] for r in rs)}" if any(r[3] for r in rs) else ""))
     for w, rs in rows.items()}
print(f"Medians of {rounds} rounds; wrk -t1 -c50 -d{secs}s at saturation, loadgen at {rate} req/s for {secs}s.\n")
print(f"| proxy | req/s unlimited | req/s limited | CPU µs/req unlimited | limited | ratio | CPU µs/req at {rate}/s unlimited | limited | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for who in ["sluice", "nginx", "haproxy"]:
    a, b = s[who], s[who + "_limited"]
    print(f'| {who} | {a["rps"]:.0f} | {b["rps"]:.0f} | {a["cpu"]:.2f} | {b["cpu"]:.2f} | {b["cpu"]/a["cpu"]:.3f}× | {a["fixed"]:.2f} | {b["fixed"]:.2f} | {b["fixed"]/a["fixed"]:.3f}× |')
bad = {w: v["errs"] for w, v in s.items() if v["errs"]}
if bad: print("\nerrors:", bad)
PY
