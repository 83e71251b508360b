#!/usr/bin/env bash
# Side-by-side HTTP/1.1 keep-alive benchmark: Sluice vs nginx vs haproxy, one worker each, in
# front of the same nginx backend (64-byte body). See docs/benchmarks.md for the method.
#
#   benches/side-by-side/http.sh [ROUNDS] [SECONDS] [RATE]
#   CONTENDERS="nginx sluice" benches/side-by-side/http.sh 3 5   # a subset
#
# Per contender and round: wrk -t1 -c50 for max throughput (req/s, proxy CPU µs per request from
# /proc), then `loadgen` at a fixed RATE for open-loop latency (p50/p99/p99.9) and CPU µs per request
# at that rate, then RSS.
# Contenders run one after another, interleaved over ROUNDS rounds; medians are reported.
# Pinning: proxies on CPU 0, backend and load generators on CPU 1 (on a 2-core machine).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
RATE=${3:-20000}
cd "$(dirname "$0")/../.."
root=$PWD
for tool in nginx haproxy wrk taskset; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p sluice -p sluice-benches --bin sluice --bin loadgen >&2

. benches/side-by-side/lib.sh   # bench_workdir, backend_nginx_conf, nginx_head, haproxy_http_head, ticks, hz
bench_workdir

BACKEND=127.0.0.1:18000 NGINX=127.0.0.1:18001 HAPROXY=127.0.0.1:18002 SLUICE=127.0.0.1:18003 SLUICE_ADMIN=127.0.0.1:18903
body=$(printf 'x%.0s' $(seq 1 63))

mkdir -p "$work/nginx"
backend_nginx_conf "$work/backend" "$BACKEND" "$body"
cat > "$work/nginx/nginx.conf" <<EOF
$(nginx_head "$work/nginx")
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server $BACKEND; keepalive 128; }
  server {
    listen $NGINX;
$(nginx_proxy_location)
  }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend fe
  bind $HAPROXY
  default_backend be
backend be
  server b1 $BACKEND
EOF
cat > "$work/sluice.toml" <<EOF
$(sluice_head "$SLUICE_ADMIN")
[[listener]]
name = "web"
bind = "$SLUICE"
[[route]]
service = "backend"
[[service]]
name = "backend"
instances = ["$BACKEND"]
EOF

start_contenders


declare -A addr=([direct]=$BACKEND [nginx]=$NGINX [haproxy]=$HAPROXY [sluice]=$SLUICE)
declare -A pid=([direct]="" [nginx]=$nginx_pid [haproxy]=$haproxy_pid [sluice]=$sluice_pid)
results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for who in ${CONTENDERS:-direct nginx haproxy sluice}; do
    url="http://${addr[$who]}/"
    curl -fsS "$url" >/dev/null || { echo "$who does not answer at $url" >&2; exit 1; }
    taskset -c 1 wrk -t1 -c50 -d2s "$url" >/dev/null   # warm-up
    before=0; [ -n "${pid[$who]}" ] && before=$(ticks "${pid[$who]}")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" "$url")
    after=0; [ -n "${pid[$who]}" ] && after=$(ticks "${pid[$who]}")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {s=s $0 "; "} END {print s}' <<<"$out")
    cpu_us="-"
    if [ -n "${pid[$who]}" ] && [ "$total" -gt 0 ]; then
      cpu_us=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    fi
    before=0; [ -n "${pid[$who]}" ] && before=$(ticks "${pid[$who]}")
    lat=$(taskset -c 1 target/release/loadgen --url "$url" --rate "$RATE" --connections 50 --duration "$SECS")
    after=0; [ -n "${pid[$who]}" ] && after=$(ticks "${pid[$who]}")
    fixed_cpu_us="-"
    if [ -n "${pid[$who]}" ]; then
      fixed_cpu_us=$(python3 -c 'import json,sys; n=json.loads(sys.argv[1])["requests"]; print(f"{int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / n:.2f}")' "$lat" $((after - before)) "$hz")
    fi
    rss="-"; [ -n "${pid[$who]}" ] && rss=$(rss_kb "${pid[$who]}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$who" "$rps" "$cpu_us" "$lat" "$rss" "$errors" "$fixed_cpu_us" >> "$results"
    echo "round $round $who: $rps req/s, ${cpu_us} µs CPU/req, at $RATE req/s ${fixed_cpu_us} µs CPU/req, latency $lat, rss ${rss} kB ${errors}" >&2
  done
done

python3 - "$results" "$RATE" "$SECS" "$ROUNDS" <<'PY'
import json, statistics, sys
path, rate, secs, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
for line in open(path):
    rnd, who, rps, cpu, lat, rss, errs, fixed_cpu = line.rstrip("\n").split("\t")
    j = json.loads(lat)
    rows.setdefault(who, []).append((float(rps), None if cpu == "-" else float(cpu), j, None if rss == "-" else int(rss), errs,
                                     None if fixed_cpu == "-" else float(fixed_cpu)))
med = lambda xs: statistics.median(xs) if xs else float("nan")
summary = {}
for who, rs in rows.items():
    summary[who] = dict(
        rps=med([r[0] for r in rs]),
        cpu=med([r[1] for r in rs if r[1] is not None]),
        fixed_cpu=med([r[5] for r in rs if r[5] is not None]),
        p50=med([r[2]["p50_us"] for r in rs]), p99=med([r[2]["p99_us"] for r in rs]),
        p999=med([r[2]["p999_us"] for r in rs]),
        lat_err=sum(r[2]["errors"] for r in rs), rss=med([r[3] for r in rs if r[3] is not None]),
        errs="".join(r[4] for r in rs))
print(f"Medians of {rounds} rounds; wrk -t1 -c50 -d{secs}s for req/s and CPU at saturation; loadgen at {rate} req/s, 50 connections, {secs}s for CPU at that rate and latency.\n")
print(f"| contender | req/s | vs nginx | CPU µs/req | vs nginx | CPU µs/req at {rate}/s | vs nginx | p50 µs | p99 µs | p99.9 µs | RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
n = summary.get("nginx")
for who in ["direct", "nginx", "haproxy", "sluice"]:
    s = summary.get(who)
    if not s: continue
    cpu = "—" if s["cpu"] != s["cpu"] else f'{s["cpu"]:.2f}'
    rr = f'{s["rps"]/n["rps"]:.2f}×' if n else ""
    cr = "—" if s["cpu"] != s["cpu"] else f'{s["cpu"]/n["cpu"]:.2f}×'
    fixed = "—" if s["fixed_cpu"] != s["fixed_cpu"] else f'{s["fixed_cpu"]:.2f}'
    fr = "—" if s["fixed_cpu"] != s["fixed_cpu"] else f'{s["fixed_cpu"]/n["fixed_cpu"]:.2f}×'
    rss = "—" if s["rss"] != s["rss"] else f'{s["rss"]/1024:.1f}'
    print(f'| {who} | {s["rps"]:.0f} | {rr} | {cpu} | {cr} | {fixed} | {fr} | {s["p50"]:.0f} | {s["p99"]:.0f} | {s["p999"]:.0f} | {rss} |')
bad = {w: s["errs"] + (f' loadgen errors: {s["lat_err"]}' if s["lat_err"] else "") for w, s in summary.items() if s["errs"] or s["lat_err"]}
if bad: print("\nerrors:", bad)
PY
