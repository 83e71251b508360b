#!/usr/bin/env bash
# Side-by-side failover benchmark (seed 001): two mirror members, an open-loop client sending
# GETs through the proxy on a fixed schedule (RATE per second, each on its own connection,
# never waiting for earlier answers), and after WARMUP seconds the primary breaks right after
# one of its status-page probes (the worst moment of the probe cycle) and the backup is
# promoted. Compared: Sluice (serve = "primary", mirror-primary Wasm policy), haproxy with the
# equivalent HTTP check (status 200 on /csp/mirror_status.cxw; per-server maxconn + queue,
# on-marked-down shutdown-sessions), and nginx (open source: passive health only, as in the
# seed). Every contender checks every 1 s with a 500 ms timeout and connects with a 2 s timeout.
#
#   benches/side-by-side/failover.sh [MODE...]     # modes: stop (ports closed), freeze (hangs)
#
# The concurrency sweep: for each IN_FLIGHT (default "2 64 400") the primary answers
# IN_FLIGHT / RATE seconds late, so that many requests are in flight on it when it breaks
# (Little's law); the new primary answers at once. Environment: RATE (200), WARMUP (2),
# AFTER (5), IN_FLIGHT, CONTENDERS ("nginx haproxy sluice"), HAPROXY_MAXCONN (512, per
# server), PROFILE (release; "debug" uses the debug binaries, for a quick functional check).
#
# Reported per mode, in-flight level and contender: requests, requests in flight at the flip,
# failed requests (non-200, error, or > 5 s) and their kinds, answers from a member that was not
# primary, when the new primary first answered, when the last failure happened (seconds after
# the primary broke), and the slowest request.
set -euo pipefail
MODES=${*:-stop freeze}
WARMUP=${WARMUP:-2} AFTER=${AFTER:-5} RATE=${RATE:-200} IN_FLIGHT=${IN_FLIGHT:-2 64 400}
PROFILE=${PROFILE:-release} HAPROXY_MAXCONN=${HAPROXY_MAXCONN:-512}
cd "$(dirname "$0")/../.."
root=$PWD
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
# Hundreds of connections in flight, twice over (client side and member side of each proxy).
ulimit -n "$(ulimit -Hn)"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p sluice -p sluice-test-support >&2
else
  cargo build --locked -p sluice -p sluice-test-support --bins >&2
fi
bin=$root/target/$PROFILE

work=$(mktemp -d)
member_pids=() proxy=
cleanup() { for p in $proxy "${member_pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

A_WEB=127.0.0.1:19101 A_TCP=127.0.0.1:19102 A_CTL=127.0.0.1:19103
B_WEB=127.0.0.1:19111 B_TCP=127.0.0.1:19112 B_CTL=127.0.0.1:19113
NGINX=127.0.0.1:19121 HAPROXY=127.0.0.1:19122 SLUICE=127.0.0.1:19123 SLUICE_ADMIN=127.0.0.1:19923

cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream ap1 { server $A_WEB max_fails=1 fail_timeout=10s; server $B_WEB max_fails=1 fail_timeout=10s; keepalive 16; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://ap1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 2s;
      proxy_read_timeout 5s;
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  maxconn 8192
  timeout connect 2s
  timeout queue 5s
  timeout client 30s
  timeout server 5s
  timeout check 500ms
  retries 3
  option redispatch 1
frontend fe
  bind $HAPROXY
  default_backend ap1
backend ap1
  option httpchk GET /csp/mirror_status.cxw
  http-check expect status 200
  default-server check inter 1s fastinter 1s downinter 1s rise 1 fall 1 maxconn $HAPROXY_MAXCONN on-marked-down shutdown-sessions
  server a $A_WEB
  server b $B_WEB
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
[[policy]]
name = "mirror-primary"
world = "health"
file = "builtin:mirror-primary"
[[listener]]
name = "web"
bind = "$SLUICE"
[[route]]
service = "ap1"
[[service]]
name = "ap1"
instances = ["$A_WEB", "$B_WEB"]
serve = "primary"
timeouts = { connect = "2s", response_header = "5s" }
health = { kind = "http", path = "/csp/mirror_status.cxw", policy = "mirror-primary", interval = "1s", timeout = "500ms" }
EOF

start_members() {
  "$bin/sluice-mirror-member" a primary "$A_WEB" "$A_TCP" "$A_CTL" 2>/dev/null & member_pids=($!)
  "$bin/sluice-mirror-member" b backup "$B_WEB" "$B_TCP" "$B_CTL" 2>/dev/null & member_pids+=($!)
  for _ in $(seq 50); do curl -fs "http://$A_WEB/csp/mirror_status.cxw" >/dev/null && break; sleep 0.1; done
  curl -fsS -XPOST "http://$A_CTL/delay?ms=$1" >/dev/null
}
stop_members() { kill "${member_pids[@]}" 2>/dev/null || true; wait "${member_pids[@]}" 2>/dev/null || true; }

declare -A addr=([nginx]=$NGINX [haproxy]=$HAPROXY [sluice]=$SLUICE)
results=()
for mode in $MODES; do
  for n in $IN_FLIGHT; do
    delay_ms=$(python3 -c "print(round($n * 1000 / $RATE))")
    for who in ${CONTENDERS:-nginx haproxy sluice}; do
      start_members "$delay_ms"
      case $who in
        nginx) nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" & proxy=$! ;;
        haproxy) haproxy -q -f "$work/haproxy.cfg" & proxy=$! ;;
        sluice) "$bin/sluice" run -c "$work/sluice.toml" 2>"$work/sluice.log" & proxy=$! ;;
      esac
      sleep 2   # first checks
      out=$(python3 benches/side-by-side/failover_client.py "http://${addr[$who]}/api/get" "$RATE" "$WARMUP" "$AFTER" \
        "http://$A_CTL/probed" "http://$A_CTL/$mode" "http://$B_CTL/primary")
      echo "$mode $n $who: $out" >&2
      results+=("$mode $n $who $out")
      kill "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true
      stop_members
    done
  done
done

printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
print("| primary | in flight | proxy | requests | in flight at flip | failed | non-primary answers | new primary answers after | last failure after | slowest request | failures by kind |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
def s(v):
    return "—" if v is None else f"{v} s"
for line in sys.stdin:
    mode, n, who, js = line.split(" ", 3)
    r = json.loads(js)
    kinds = ", ".join(f"{c} × {k}" for k, c in sorted(r["failed_by_kind"].items(), key=lambda kv: -kv[1])) or "—"
    cells = [mode, n, who, r["requests"], r["in_flight_at_flip"], r["failed"], r["non_primary_answers"], s(r["new_primary_after_s"]), s(r["last_failure_after_s"]), s(r["slowest_request_s"]), kinds]
    print("| " + " | ".join(str(c) for c in cells) + " |")
'
