#!/usr/bin/env bash
# What a request policy costs per request: Sluice with the shipped `jwt` policy (HS256, exp
# checked, `sub` mapped to a request header) on a route, against the same route without a
# policy, and haproxy verifying the same token with its `jwt_verify` converter against haproxy
# without it; one worker each, in front of the same nginx backend (64-byte body), over HTTP/1.1
# keep-alive. The issue's target: Sluice with the policy ≥ 0.9× the req/s of Sluice without it.
# `sluice_jwt` is the policy as shipped: a token that verified is answered again by the host
# without a Wasm call (`cache_seconds`, default 60 s); `sluice_jwt_calls` sets it to 0, so every
# request calls the policy.
#
#   benches/side-by-side/request_policy.sh [ROUNDS] [SECONDS]
#
# Per contender and round: wrk -t1 -c50 with the token in `Authorization` (req/s, proxy CPU µs
# per request from /proc). Contenders are interleaved over ROUNDS rounds; medians are reported
# with each policy contender's ratio to itself without the check. A refused token would show
# as non-2xx in the errors column.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
cd "$(dirname "$0")/../.."
for tool in nginx haproxy wrk taskset python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p sluice --bin sluice >&2

. benches/side-by-side/lib.sh   # bench_workdir, backend_nginx_conf, haproxy_http_head, sluice_head, ticks, hz
bench_workdir

SECRET=bench-secret-of-32-bytes-0123456
# An HS256 token valid for a day, made with the standard library (the policy's own tests use
# `jsonwebtoken`); the bench measures verification, not minting.
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)

BACKEND=127.0.0.1:18300
declare -A addr=([sluice]=127.0.0.1:18301 [sluice_jwt]=127.0.0.1:18302
                 [haproxy]=127.0.0.1:18303 [haproxy_jwt]=127.0.0.1:18304
                 [sluice_jwt_calls]=127.0.0.1:18305)
contenders="sluice sluice_jwt sluice_jwt_calls haproxy haproxy_jwt"
body=$(printf 'x%.0s' $(seq 1 63))
backend_nginx_conf "$work/backend" "$BACKEND" "$body"
cat > "$work/haproxy.cfg" <<EOF
$(haproxy_http_head)
frontend plain
  bind ${addr[haproxy]}
  default_backend be
frontend jwt
  bind ${addr[haproxy_jwt]}
  http-request set-var(txn.now) date
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","$SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request set-header x-user %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend be
backend be
  server b1 $BACKEND
EOF
sluice_config() { # NAME BIND ADMIN ROUTE_EXTRA POLICY
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
$5
EOF
}
sluice_config sluice "${addr[sluice]}" 127.0.0.1:18907 "" ""
sluice_config sluice_jwt "${addr[sluice_jwt]}" 127.0.0.1:18908 'policy = "jwt"' "[[policy]]
name = \"jwt\"
world = \"request\"
file = \"builtin:jwt\"
config = { secret = \"$SECRET\", claims_to_headers = { sub = \"x-user\" } }"
# The same policy with its answers never reused (`cache_seconds = 0`): a Wasm call per request,
# as for a client that sends a new token every time.
sluice_config sluice_jwt_calls "${addr[sluice_jwt_calls]}" 127.0.0.1:18909 'policy = "jwt"' "[[policy]]
name = \"jwt\"
world = \"request\"
file = \"builtin:jwt\"
config = { secret = \"$SECRET\", claims_to_headers = { sub = \"x-user\" }, cache_seconds = 0 }"

taskset -c 1 nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" & pids+=($!)
taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!)
haproxy_pid=$!
for s in sluice sluice_jwt sluice_jwt_calls; do
  taskset -c 0 target/release/sluice run -c "$work/$s.toml" 2>"$work/$s.log" & pids+=($!)
  declare "${s}_pid=$!"
done
sleep 1
declare -A pid=([haproxy]=$haproxy_pid [haproxy_jwt]=$haproxy_pid [sluice]=$sluice_pid
                [sluice_jwt]=$sluice_jwt_pid [sluice_jwt_calls]=$sluice_jwt_calls_pid)

# Every contender must accept the token, and the checking ones refuse a bad one.
# (A new binary compiles its built-in policies at start: give it up to 10 s to listen.)
for who in $contenders; do
  for _ in $(seq 1 50); do
    curl -fsS -H "Authorization: Bearer $TOKEN" "http://${addr[$who]}/" >/dev/null 2>&1 && continue 2
    sleep 0.2
  done
  echo "$who refuses the token or does not answer" >&2; cat "$work"/*.log >&2; exit 1
done
for who in sluice_jwt sluice_jwt_calls haproxy_jwt; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN}x" "http://${addr[$who]}/")
  [ "$code" = 401 ] || { echo "$who accepts a bad signature ($code)" >&2; exit 1; }
done

results="$work/results.tsv"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for who in $contenders; do
    url="http://${addr[$who]}/"
    taskset -c 1 wrk -t1 -c50 -d2s -H "Authorization: Bearer $TOKEN" "$url" >/dev/null   # warm-up
    before=$(ticks "${pid[$who]}")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" -H "Authorization: Bearer $TOKEN" "$url")
    after=$(ticks "${pid[$who]}")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {s=s $0 "; "} END {print s}' <<<"$out")
    cpu_us=$(awk -v d=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.3f", d / hz * 1e6 / n}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$who" "$rps" "$cpu_us" "$errors" >> "$results"
    echo "round $round $who: $rps req/s, $cpu_us µs CPU/req ${errors}" >&2
  done
done

python3 - "$results" "$SECS" "$ROUNDS" <<'PY'
import statistics, sys
path, secs, rounds = sys.argv[1:4]
rows = {}
for line in open(path):
    rnd, who, rps, cpu, errs = line.rstrip("\n").split("\t")
    rows.setdefault(who, {})[rnd] = (float(rps), float(cpu), errs)
med = statistics.median
def paired(who, check, at):
    """The median over rounds of each round's ratio: a round's contenders ran seconds apart."""
    return med([rows[check][r][at] / rows[who][r][at] for r in rows[who]])
s = {w: dict(rps=med([v[0] for v in rs.values()]), cpu=med([v[1] for v in rs.values()]),
             errs="".join(v[2] for v in rs.values())) for w, rs in rows.items()}
print(f"Medians of {rounds} rounds; wrk -t1 -c50 -d{secs}s, HS256 token in Authorization.")
print("Ratios are the median of the rounds' own ratios (this host's speed drifts between rounds).\n")
print("| contender | req/s without check | req/s with JWT check | ratio | CPU µs/req without | with | ratio |")
print("|---|---|---|---|---|---|---|")
for who, check in [("sluice", "sluice_jwt"), ("sluice", "sluice_jwt_calls"), ("haproxy", "haproxy_jwt")]:
    a, b = s[who], s[check]
    print(f'| {check} | {a["rps"]:.0f} | {b["rps"]:.0f} | {paired(who, check, 0):.3f}× | {a["cpu"]:.2f} | {b["cpu"]:.2f} | {paired(who, check, 1):.3f}× |')
bad = {w: v["errs"] for w, v in s.items() if v["errs"]}
if bad: print("\nerrors:", bad)
PY
