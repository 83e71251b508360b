#!/usr/bin/env bash
# Two builds of Sluice, paired: the same nginx backend, one load run each, alternating, so the
# host's drift (often tens of per cent between minutes here) hits both alike. Prints each
# round and the median of the rounds' own ratios (B / A) of CPU per request and of req/s.
#
#   benches/side-by-side/paired.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS] [SIZE]
#   PROTO=h1 benches/side-by-side/paired.sh /tmp/sluice-old target/release/sluice 8 3 1024
#   SYSCALLS=1 ...   # also counts the proxy's system calls per request (perf stat)
#
# PROTO: h2c (default; h2load -t1 -c20 -m10), h2 (the same over TLS 1.3, ALPN h2) or h1
# (wrk -t1 -c20). Both Sluices run one worker on CPU 0; the backend and the load generator
# run on CPU 1.
set -euo pipefail
A=${1:?old binary}; B=${2:?new binary}
ROUNDS=${3:-8}; SECS=${4:-3}; SIZE=${5:-1024}
PROTO=${PROTO:-h2c}; SYSCALLS=${SYSCALLS:-0}
A=$(realpath "$A"); B=$(realpath "$B")
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx wrk h2load openssl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
. benches/side-by-side/lib.sh   # bench_workdir, nginx_head, sluice_head, ticks, hz
bench_workdir
mkdir -p "$work/files" "$work/backend"
chmod 755 "$work" "$work/files"
head -c "$SIZE" /dev/zero | tr '\0' x > "$work/files/$SIZE"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
  -out "$work/cert.pem" -days 30 -subj "/CN=bench.test" 2>/dev/null
tls=""
[ "$PROTO" = h2 ] && tls=$(printf '[listener.tls]\ncert = "%s"\nkey = "%s"' "$work/cert.pem" "$work/key.pem")
scheme=http; [ "$PROTO" = h2 ] && scheme=https
cat > "$work/backend/nginx.conf" <<CONF
$(nginx_head "$work/backend")
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18400; root $work/files; }
}
CONF
declare -A port=([a]=18410 [b]=18420) bin=([a]=$A [b]=$B) pid=()
for v in a b; do
  cat > "$work/$v.toml" <<CONF
$(sluice_head "127.0.0.1:$((port[$v] + 9))")
[[listener]]
name = "l"
bind = "127.0.0.1:${port[$v]}"
$tls
[[route]]
service = "backend"
[[service]]
name = "backend"
instances = ["127.0.0.1:18400"]
CONF
done
taskset -c 1 nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" & pids+=($!)
for v in a b; do
  taskset -c 0 "${bin[$v]}" run -c "$work/$v.toml" 2>"$work/$v.log" & pids+=($!); pid[$v]=$!
done
sleep 1.5

# load URL SECONDS → "requests req/s"
load() {
  if [ "$PROTO" != h1 ]; then
    taskset -c 1 h2load -t1 -c20 -m10 -D "$2" "$1" 2>&1 |
      awk '/^requests:/ {n=$8} /^finished in/ {gsub(",", "", $4); r=$4} END {print n, r}'
  else
    taskset -c 1 wrk -t1 -c20 -d"${2}s" "$1" |
      awk '/requests in/ {n=$1} /^Requests\/sec/ {r=$2} END {print n, r}'
  fi
}

events='syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait'
: > "$work/rounds"
for round in $(seq 1 "$ROUNDS"); do
  for v in a b; do
    url="$scheme://127.0.0.1:${port[$v]}/$SIZE"
    load "$url" 1 >/dev/null
    counting=""
    if [ "$SYSCALLS" = 1 ]; then
      perf stat -x, -e "$events" -p "${pid[$v]}" -o "$work/perf.$v" 2>/dev/null & counting=$!
      sleep 0.2
    fi
    before=$(ticks "${pid[$v]}")
    read -r n rps < <(load "$url" "$SECS")
    after=$(ticks "${pid[$v]}")
    calls=""
    if [ -n "$counting" ]; then
      kill -INT "$counting"; wait "$counting" || true
      calls=$(awk -F, -v n="$n" '/syscalls/ {split($3, e, ":"); sub("sys_enter_", "", e[2]); printf "%s %.2f  ", e[2], $1 / n}' "$work/perf.$v")
    fi
    cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    echo "round $round $v: $rps req/s, $cpu µs CPU/req  $calls" >&2
    echo "$round $v $rps $cpu" >> "$work/rounds"
  done
done
python3 - "$work/rounds" "$PROTO" "$SIZE" <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    r, v, rps, cpu = line.split()
    rounds.setdefault(r, {})[v] = (float(rps), float(cpu))
pairs = [(x["b"][1] / x["a"][1], x["b"][0] / x["a"][0]) for x in rounds.values() if "a" in x and "b" in x]
cpu = sorted(c for c, _ in pairs)
rps = sorted(r for _, r in pairs)
print(f"{sys.argv[2]} {sys.argv[3]} B: {len(pairs)} paired rounds; B/A CPU per request: median "
      f"{statistics.median(cpu):.3f} (rounds {cpu[0]:.2f}-{cpu[-1]:.2f}); B/A req/s: median "
      f"{statistics.median(rps):.3f} (rounds {rps[0]:.2f}-{rps[-1]:.2f})")
PY
