#!/usr/bin/env bash
# Side-by-side TCP relay benchmark: iperf3 through Sluice, haproxy (mode tcp) and nginx
# (stream), one worker each, and directly (the physical limit of this machine's loopback).
#
#   benches/side-by-side/tcp.sh [ROUNDS] [SECONDS] [STREAMS]
#
# Per contender and round: iperf3 -c ... -t SECONDS -P STREAMS (client → server) gives the
# throughput; the proxy's CPU time (utime + stime from /proc, children included) over the run
# divided by the bytes relayed gives CPU seconds per GB. Medians over ROUNDS interleaved rounds.
# Pinning: proxies on CPU 0, iperf3 client and server on CPU 1.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
STREAMS=${3:-1}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy iperf3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "missing nginx's stream module (libnginx-mod-stream): run scripts/setup.sh" >&2; exit 1; }
cargo build --release --locked -p sluice >&2

. benches/side-by-side/lib.sh   # bench_workdir, ticks, hz
bench_workdir

SERVER=127.0.0.1:19000 NGINX=127.0.0.1:19001 HAPROXY=127.0.0.1:19002 SLUICE=127.0.0.1:19003 SLUICE_ADMIN=127.0.0.1:19903

cat > "$work/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
stream {
  server { listen $NGINX; proxy_pass $SERVER; proxy_timeout 1h; }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend fe
  bind $HAPROXY
  default_backend be
backend be
  server s1 $SERVER
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
name = "relay"
bind = "$SLUICE"
protocol = "tcp"
service = "iperf"
[[service]]
name = "iperf"
instances = ["$SERVER"]
EOF

taskset -c 1 iperf3 -s -B 127.0.0.1 -p "${SERVER##*:}" >/dev/null 2>&1 & pids+=($!)
taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" & pids+=($!); nginx_pid=$!
taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!); haproxy_pid=$!
taskset -c 0 target/release/sluice run -c "$work/sluice.toml" 2>"$work/sluice.log" & pids+=($!); sluice_pid=$!
sleep 1

. benches/side-by-side/lib.sh   # ticks, rss_kb, hz

declare -A addr=([direct]=$SERVER [nginx]=$NGINX [haproxy]=$HAPROXY [sluice]=$SLUICE)
declare -A pid=([direct]="" [nginx]=$nginx_pid [haproxy]=$haproxy_pid [sluice]=$sluice_pid)
results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for who in ${CONTENDERS:-direct nginx haproxy sluice}; do
    a=${addr[$who]}
    before=0; [ -n "${pid[$who]}" ] && before=$(ticks "${pid[$who]}")
    out=$(taskset -c 1 iperf3 -c "${a%%:*}" -p "${a##*:}" -t "$SECS" -P "$STREAMS" -J)
    after=0; [ -n "${pid[$who]}" ] && after=$(ticks "${pid[$who]}")
    read -r bps bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"], e["bytes"])' <<<"$out")
    cpu="-"
    [ -n "${pid[$who]}" ] && cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v b="$bytes" 'BEGIN {printf "%.3f", d / hz / (b / 1e9)}')
    printf '%s\t%s\t%s\t%s\n' "$round" "$who" "$bps" "$cpu" >> "$results"
    echo "round $round $who: $(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 8e9}') GB/s, ${cpu} CPU s/GB" >&2
  done
done

python3 - "$results" "$ROUNDS" "$SECS" "$STREAMS" <<'PY'
import statistics, sys
path, rounds, secs, streams = sys.argv[1:5]
rows = {}
for line in open(path):
    rnd, who, bps, cpu = line.split()
    rows.setdefault(who, []).append((float(bps), None if cpu == "-" else float(cpu)))
med = statistics.median
print(f"Medians of {rounds} rounds; iperf3 -t {secs} -P {streams}, proxies pinned to CPU 0, iperf3 to CPU 1.\n")
print("| path | GB/s | vs direct | vs nginx | proxy CPU s per GB | vs nginx |")
print("|---|---|---|---|---|---|")
d = med([r[0] for r in rows["direct"]]) if "direct" in rows else None
n = rows.get("nginx")
nb = med([r[0] for r in n]) if n else None
nc = med([r[1] for r in n]) if n else None
for who in ["direct", "nginx", "haproxy", "sluice"]:
    if who not in rows: continue
    b = med([r[0] for r in rows[who]])
    cpus = [r[1] for r in rows[who] if r[1] is not None]
    c = med(cpus) if cpus else None
    print(f"| {who} | {b/8e9:.2f} | {b/d:.2f}× | {b/nb:.2f}× | {'—' if c is None else f'{c:.3f}'} | {'—' if c is None else f'{c/nc:.2f}×'} |")
PY
