#!/usr/bin/env bash
# Side-by-side sweep over response body sizes and client protocols: Sluice vs nginx vs haproxy,
# one worker each, in front of the same nginx backend serving static files.
#
#   benches/side-by-side/sizes.sh [ROUNDS] [SECONDS]
#   SIZES="16384 131072" PROTOS="h1 h2c" benches/side-by-side/sizes.sh 3 5   # a subset
#
# Protocols (client → proxy; every proxy speaks HTTP/1.1 with keep-alive to the backend):
#   h1     HTTP/1.1 keep-alive, wrk -t1 -c20
#   h2c    HTTP/2 with prior knowledge, h2load -t1 -c20 -m10
#   https  HTTP/1.1 over TLS 1.3 (ECDSA P-256), wrk -t1 -c20 (handshakes only at connect)
#   h2     HTTP/2 over TLS 1.3 (ALPN h2), h2load -t1 -c20 -m10
# Two phases, each with contenders one after another, interleaved over ROUNDS rounds:
# - ceilings: per cell and round a 1 s warm-up, then SECONDS of closed-loop load; req/s from the
#   load generator, proxy CPU µs per request from /proc (utime + stime over the run / requests);
# - latency: SECONDS of `loadgen` open loop at a fixed rate (20 connections, HTTP/2 sending each
#   request as its own stream at its time), for p50/p99 measured from each request's intended
#   send time. The rate of a cell is FRACTION (default 0.5) of the lowest contender's median
#   ceiling in the cell, measured in the first phase of the same run, so that every contender
#   can keep up whatever the host's speed that day; RATES="size:rate proto:size:rate ..." fixes
#   rates instead (a proto:size pair wins over its size), and RATES=none skips the phase.
#   PHASES=latency (with RATES) skips the ceilings. WARMUP_MS (default 1000) precedes each run.
# - wire (only when PHASES names it, with RATES): what each proxy does per request at the fixed
#   rate, from the kernel's counts rather than from time, so builds compare on a noisy host:
#   writes (sendto, sendmsg, write, writev), reads (recvfrom, recvmsg, read, readv) and epoll
#   waits (`perf stat` on the proxy's process, which needs root), and the segments carrying
#   data that the proxy sent to the client per segment carrying data from it (`ss -ti` on its
#   listening port, read just before the run ends). The requests are small and sent one at a
#   time, so on HTTP/1.x 1.00 means each answer left in one segment; HTTP/2 batches frames.
#   `PHASES="wire" RATES="64:10000 1024:10000" SIZES="64 1024" PROTOS="h1 https" sizes.sh 3 3`
# Medians are reported for the ceilings, and ratios against the best peer of the cell (highest
# req/s, lowest CPU per request). Latency percentiles are pooled: every request of a
# contender's rounds in one histogram, so that a stall of the host in one round weighs as
# much as its requests, not as a whole round's percentile; each round's p99 is also compared
# with each peer's p99 of the same round. The contenders' order turns with each round.
# Pinning: proxies on CPU 0, backend and load generators on CPU 1 (on a 2-core machine).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
SIZES=${SIZES:-64 1024 16384 131072 1048576}
PROTOS=${PROTOS:-h1 h2c https h2}
CONTENDERS=${CONTENDERS:-nginx haproxy sluice}
# Fixed request rates per body size for the latency phase (size:rate), or none; unset derives
# them from the ceilings (FRACTION of the slowest contender's).
RATES=${RATES:-}
FRACTION=${FRACTION:-0.5}
PHASES=${PHASES:-ceilings latency}
WARMUP_MS=${WARMUP_MS:-1000}
case " $PHASES " in
  *" wire "*) command -v perf >/dev/null || { echo "missing perf: run scripts/setup.sh" >&2; exit 1; } ;;&
  *" ceilings "*) ;;
  *) [ -n "$RATES" ] && [ "$RATES" != none ] || { echo "PHASES without ceilings needs RATES" >&2; exit 1; } ;;
esac
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy wrk h2load openssl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice -p sluice-benches --bin sluice --bin loadgen >&2

. benches/side-by-side/lib.sh   # bench_workdir, bench_cert, *_conf, haproxy_http_head, ticks, hz
bench_workdir

mkdir -p "$work/files"
chmod 755 "$work" "$work/files"   # nginx's workers run as an unprivileged user
for size in $SIZES; do head -c "$size" /dev/zero | tr '\0' 'x' > "$work/files/$size"; done
bench_cert

BACKEND=127.0.0.1:18100
# Ports: nginx 1811x, haproxy 1812x, sluice 1813x; x = 1 h1, 2 h2c, 3 https, 4 h2.
declare -A base=([nginx]=1811 [haproxy]=1812 [sluice]=1813)
declare -A slot=([h1]=1 [h2c]=2 [https]=3 [h2]=4)

files_backend_conf "$work/backend" "$BACKEND" "$work/files"
nginx_proxy_conf "$work/nginx" "$BACKEND" 127.0.0.1:18111 "127.0.0.1:18112 http2" \
  "127.0.0.1:18113 ssl" "127.0.0.1:18114 ssl http2"
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend fe
  bind 127.0.0.1:18121
  bind 127.0.0.1:18122 proto h2
  bind 127.0.0.1:18123 ssl crt $work/haproxy.pem alpn http/1.1
  bind 127.0.0.1:18124 ssl crt $work/haproxy.pem alpn h2
  default_backend be
backend be
  server b1 $BACKEND
EOF
sluice_proxy_conf 127.0.0.1:18139 "$BACKEND" h1=127.0.0.1:18131 h2c=127.0.0.1:18132 \
  https=127.0.0.1:18133+tls h2=127.0.0.1:18134+tls > "$work/sluice.toml"

start_contenders

declare -A pid=([nginx]=$nginx_pid [haproxy]=$haproxy_pid [sluice]=$sluice_pid)

# load PROTO URL SECONDS → "requests req/s" (0 0 when the generator reports errors)
load() {
  local out
  case "$1" in
    h1|https)
      out=$(taskset -c 1 wrk -t1 -c20 -d"${3}s" "$2")
      if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "0 0"; return; fi
      awk '/requests in/ {n=$1} /^Requests\/sec/ {r=$2} END {print n, r}' <<<"$out" ;;
    h2c|h2)
      out=$(taskset -c 1 h2load -t1 -c20 -m10 -D "$3" "$2" 2>&1)
      awk '/^requests:/ {n=$8; bad=$10+$12} /^finished in/ {gsub(",", "", $4); r=$4} END {if (bad > 0) print 0, 0; else print n, r}' <<<"$out" ;;
  esac
}

url_of() {  # url_of WHO PROTO SIZE
  local scheme=http
  [ "$2" = https ] || [ "$2" = h2 ] && scheme=https
  echo "$scheme://127.0.0.1:${base[$1]}${slot[$2]}/$3"
}

# in_turn ROUND: the contenders, the list turned by ROUND places, so that no contender always
# runs first or last in a round.
in_turn() {
  local all=($CONTENDERS) i
  for i in "${!all[@]}"; do echo "${all[$(( (i + $1) % ${#all[@]} ))]}"; done
}

results="$work/results.tsv"
: > "$results"
[[ " $PHASES " == *" ceilings "* ]] && ceiling_rounds=$ROUNDS || ceiling_rounds=0
for round in $(seq 1 "$ceiling_rounds"); do
  for proto in $PROTOS; do
    for size in $SIZES; do
      for who in $(in_turn "$round"); do
        url=$(url_of "$who" "$proto" "$size")
        prior=(); [ "$proto" = h2c ] && prior=(--http2-prior-knowledge)
        [ "$proto" = h2 ] && prior=(--http2)
        got=$(curl -ksS "${prior[@]}" "$url" | wc -c)
        [ "$got" = "$size" ] || { echo "$who $proto: $url gave $got bytes, want $size" >&2; exit 1; }
        load "$proto" "$url" 1 >/dev/null
        before=$(ticks "${pid[$who]}")
        read -r n rps < <(load "$proto" "$url" "$SECS")
        after=$(ticks "${pid[$who]}")
        cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN {if (n > 0) printf "%.2f", d / hz * 1e6 / n; else print "nan"}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$proto" "$size" "$who" "$rps" "$cpu" >> "$results"
        echo "round $round $proto $size $who: $rps req/s, $cpu µs CPU/req" >&2
      done
    done
  done
done

# The latency phase's rate per cell ("proto size" → req/s): RATES's, or FRACTION of the slowest
# contender's median ceiling measured above.
declare -A rate=()
while read -r proto size r; do rate["$proto $size"]=$r; done < <(
  python3 - "$results" "$FRACTION" "$RATES" "$PROTOS" "$SIZES" <<'PY'
import statistics, sys
path, fraction, fixed, protos, sizes = sys.argv[1:6]
fixed = dict(pair.rsplit(":", 1) for pair in fixed.split()) if fixed not in ("", "none") else None
ceilings = {(proto, size): {} for proto in protos.split() for size in sizes.split()}
for line in open(path):
    _, proto, size, who, rps, _ = line.rstrip("\n").split("\t")
    ceilings.setdefault((proto, size), {}).setdefault(who, []).append(float(rps))
for (proto, size), by in ceilings.items():
    if fixed is not None:
        r = fixed.get(f"{proto}:{size}", fixed.get(size))
    elif not by:
        r = None
    else:
        low = min(statistics.median(v) for v in by.values())
        r = int(low * float(fraction)) if low > 0 else None
    if r:
        print(proto, size, r)
PY
)

# at_fixed_rates FN: runs `FN ROUND PROTO SIZE WHO RATE` for every round, every cell that has a
# rate, and every contender, in turn.
at_fixed_rates() {
  local round proto size who cell_rate
  for round in $(seq 1 "$ROUNDS"); do
    for proto in $PROTOS; do
      for size in $SIZES; do
        cell_rate=${rate["$proto $size"]:-}
        [ -n "$cell_rate" ] || continue
        for who in $(in_turn "$round"); do "$1" "$round" "$proto" "$size" "$who" "$cell_rate"; done
      done
    done
  done
}

latencies="$work/latency.tsv"
: > "$latencies"
mkdir -p "$work/histograms"
latency_run() {  # latency_run ROUND PROTO SIZE WHO RATE
  local histogram="$work/histograms/$2-$3-$4-$1" lat h2=()
  { [ "$2" = h2c ] || [ "$2" = h2 ]; } && h2=(--http2)
  lat=$(taskset -c 1 target/release/loadgen --url "$(url_of "$4" "$2" "$3")" \
    --rate "$5" --connections 20 --duration "$SECS" --ca "$work/cert.pem" \
    --server-name bench.test --warmup-ms "$WARMUP_MS" --histogram "$histogram" "${h2[@]}")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$lat" "$histogram" >> "$latencies"
  echo "round $1 $2 $3 $4 at $5/s: $lat" >&2
}
if [ "$RATES" != none ] && [[ " $PHASES " == *" latency "* ]]; then
  at_fixed_rates latency_run
fi

# wire_run ROUND PROTO SIZE WHO RATE: one fixed-rate run under `perf stat` and `ss`, recorded as
# "requests writes reads epoll_waits cpu_ms segments_out segments_in".
WIRE_EVENTS=task-clock
for call in sendto sendmsg write writev recvfrom recvmsg read readv epoll_wait epoll_pwait; do
  WIRE_EVENTS+=",syscalls:sys_enter_$call"
done
wires="$work/wire.tsv"
: > "$wires"
wire_run() {
  local round=$1 proto=$2 size=$3 who=$4 cell_rate=$5 port procs perf_pid load_pid counted h2=()
  port=${base[$who]}${slot[$proto]}
  procs=$(echo "${pid[$who]}" $(pgrep -P "${pid[$who]}" || true) | tr ' ' ,)
  { [ "$proto" = h2c ] || [ "$proto" = h2 ]; } && h2=(--http2)
  perf stat -x, -o "$work/wire.perf" -e "$WIRE_EVENTS" -p "$procs" & perf_pid=$!
  sleep 0.3
  taskset -c 1 target/release/loadgen --url "$(url_of "$who" "$proto" "$size")" --rate "$cell_rate" \
    --connections 20 --duration "$SECS" --warmup-ms 0 --ca "$work/cert.pem" \
    --server-name bench.test "${h2[@]}" > "$work/wire.json" & load_pid=$!
  sleep "$(awk -v s="$SECS" 'BEGIN {print s - 0.5}')"
  ss -tinH state established "( sport = :$port )" > "$work/wire.ss"
  wait "$load_pid"
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  counted=$(python3 - "$work/wire.json" "$work/wire.perf" "$work/wire.ss" <<'PY'
import json, re, sys
summary, perf, ss = sys.argv[1:4]
counts = {}
for line in open(perf):
    fields = line.split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counts[fields[2].removeprefix("syscalls:sys_enter_")] = float(fields[0])
calls = lambda *names: sum(counts.get(n, 0) for n in names)
text = open(ss).read()
segments = lambda name: sum(int(n) for n in re.findall(rf"\b{name}:(\d+)", text))
print(json.load(open(summary))["requests"], calls("sendto", "sendmsg", "write", "writev"),
      calls("recvfrom", "recvmsg", "read", "readv"), calls("epoll_wait", "epoll_pwait"),
      counts.get("task-clock", 0), segments("data_segs_out"), segments("data_segs_in"))
PY
)
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$proto" "$size" "$who" "$counted" >> "$wires"
  echo "round $round $proto $size $who at $cell_rate/s: $counted" >&2
}
if [[ " $PHASES " == *" wire "* ]]; then
  at_fixed_rates wire_run
fi

python3 - "$results" "$latencies" "$ROUNDS" "$SECS" "$wires" <<'PY'
import json, math, statistics, sys
path, latency_path, rounds, secs, wire_path = sys.argv[1:6]
order = lambda k: (["h1", "h2c", "https", "h2"].index(k[0]), k[1])
def human(n):
    return f"{n // 1048576} MiB" if n >= 1048576 else f"{n // 1024} KiB" if n >= 1024 else f"{n} B"

ceilings = {}
for line in open(path):
    _, proto, size, who, rps, cpu = line.rstrip("\n").split("\t")
    ceilings.setdefault((proto, int(size)), {}).setdefault(who, []).append((float(rps), float(cpu)))
if ceilings:
    print(f"Medians of {rounds} interleaved rounds of {secs} s; ratios against the best peer of the cell "
          "(nginx or haproxy: highest req/s, lowest CPU per request). Sluice's target: req/s ≥ 1.05×, CPU ≤ 0.9×.\n")
    print("| protocol | body | Sluice req/s | vs best peer | Sluice CPU µs/req | vs best peer | nginx req/s | nginx µs/req | haproxy req/s | haproxy µs/req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
for (proto, size) in sorted(ceilings, key=order):
    med = {w: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
           for w, v in ceilings[(proto, size)].items()}
    peers = [med[w] for w in ("nginx", "haproxy") if w in med]
    s = med.get("sluice")
    if not s or not peers:
        continue
    best_rps = max(p[0] for p in peers)
    best_cpu = min(p[1] for p in peers)
    fmt = lambda w: (f"{med[w][0]:.0f}", f"{med[w][1]:.2f}") if w in med else ("—", "—")
    (nr, nc), (hr, hc) = fmt("nginx"), fmt("haproxy")
    rr = f"{s[0] / best_rps:.2f}×" if best_rps > 0 else "—"
    cr = f"{s[1] / best_cpu:.2f}×" if best_cpu > 0 and not math.isnan(s[1]) else "—"
    print(f"| {proto} | {human(size)} | {s[0]:.0f} | {rr} | {s[1]:.2f} | {cr} | {nr} | {nc} | {hr} | {hc} |")

# Latency: (proto, size) → who → [(round, summary, histogram path)]
runs = {}
for line in open(latency_path):
    round_, proto, size, who, summary, histogram = line.rstrip("\n").split("\t")
    runs.setdefault((proto, int(size)), {}).setdefault(who, []).append((int(round_), json.loads(summary), histogram))

def pooled(paths):
    """p50, p99 and p99.9 in µs over every request of the runs' histograms."""
    counts = {}
    for p in paths:
        for line in open(p):
            us, n = map(int, line.split())
            counts[us] = counts.get(us, 0) + n
    total = sum(counts.values())
    if total == 0:
        return None
    out, seen, values = [], 0, sorted(counts)
    wanted = [0.50, 0.99, 0.999]
    for us in values:
        seen += counts[us]
        while wanted and seen >= wanted[0] * total:
            out.append(us)
            wanted.pop(0)
    return out

if runs:
    print(f"\nAt a fixed rate (loadgen, open loop, 20 connections, {rounds} rounds of {secs} s each, "
          "contenders interleaved): p50 / p99 / p99.9 in µs over every request of the rounds; "
          "p99 ratio against the best peer's; and in how many rounds Sluice's p99 was at most nginx's, and haproxy's, of the same round "
          "(about half of them each if the three were alike).\n")
    print("| protocol | body | rate/s | Sluice | p99 vs best peer | rounds Sluice ≤ nginx, ≤ haproxy | nginx | haproxy |")
    print("|---|---|---|---|---|---|---|---|")
for (proto, size), by in sorted(runs.items(), key=lambda kv: order(kv[0])):
    stats = {w: pooled([h for _, _, h in v]) for w, v in by.items()}
    def cell(w):
        if not stats.get(w):
            return "—"
        errors = sum(s["errors"] for _, s, _ in by[w])
        behind = statistics.median(s["achieved_rate"] / s["target_rate"] for _, s, _ in by[w])
        notes = ([f"{errors} errors"] if errors else []) + ([f"{behind:.0%} of the rate"] if behind < 0.95 else [])
        return " / ".join(str(v) for v in stats[w]) + (f" ({', '.join(notes)})" if notes else "")
    peers = [stats[w][1] for w in ("nginx", "haproxy") if stats.get(w)]
    ratio = f"{stats['sluice'][1] / min(peers):.2f}×" if peers and stats.get("sluice") else "—"
    per_round = {}
    for w, v in by.items():
        for r, s, _ in v:
            per_round.setdefault(r, {})[w] = s["p99_us"]
    def wins(peer):
        paired = [(ps["sluice"], ps[peer]) for ps in per_round.values() if "sluice" in ps and peer in ps]
        return f"{sum(a <= b for a, b in paired)}/{len(paired)}" if paired else "—"
    rate = by.get("sluice", next(iter(by.values())))[0][1]["target_rate"]
    print(f"| {proto} | {human(size)} | {rate} | {cell('sluice')} | {ratio} | {wins('nginx')}, {wins('haproxy')} | {cell('nginx')} | {cell('haproxy')} |")

# Wire: (proto, size) → who → [per-request figures of each round]
wire = {}
for line in open(wire_path):
    _, proto, size, who, counted = line.rstrip("\n").split("\t", 4)
    n, writes, reads, waits, cpu_ms, seg_out, seg_in = map(float, counted.split())
    if n > 0:
        wire.setdefault((proto, int(size)), {}).setdefault(who, []).append(
            (writes / n, reads / n, waits / n, cpu_ms * 1000 / n, seg_out / seg_in if seg_in else math.nan))
if wire:
    print(f"\nPer request at a fixed rate, medians of {rounds} rounds of {secs} s: the proxy's writes / reads / "
          "epoll waits (perf stat), its CPU µs (task-clock), and data segments to the client per data segment "
          "from it (ss).\n")
    print("| protocol | body | Sluice | nginx | haproxy |")
    print("|---|---|---|---|---|")
for (proto, size), by in sorted(wire.items(), key=lambda kv: order(kv[0])):
    def figures(w):
        if w not in by:
            return "—"
        med = [statistics.median(r[i] for r in by[w]) for i in range(5)]
        return f"{med[0]:.2f} / {med[1]:.2f} / {med[2]:.2f}, {med[3]:.1f} µs, {med[4]:.2f} seg"
    print(f"| {proto} | {human(size)} | {figures('sluice')} | {figures('nginx')} | {figures('haproxy')} |")
PY
