#!/usr/bin/env bash
# Side-by-side TLS handshake benchmark: full handshakes per second and server CPU per handshake
# for Sluice (rustls + ring), nginx and haproxy (both OpenSSL), one worker each, with an ECDSA
# P-256 and an RSA-2048 server certificate.
#
#   benches/side-by-side/tls.sh [ROUNDS] [SECONDS]
#
# Client: `openssl s_time -new` (a fresh full handshake per connection, no resumption, no
# request: the connection closes after the handshake), TLS 1.3 with X25519 as negotiated by
# default. Every server keeps its default session settings (all three send TLS 1.3 session
# tickets, which s_time -new never uses). Per contender, key type and round: handshakes = the connections s_time reports,
# rate = handshakes / wall time; the server's CPU time (utime + stime from /proc) over the run
# divided by the handshakes gives CPU per handshake. Medians over ROUNDS interleaved rounds.
# Pinning: servers on CPU 0, the client on CPU 1. One s_time process is single-threaded, so
# when the server needs less CPU per handshake than the client, the rate is the client's
# limit; the CPU-per-handshake column does not depend on that.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin"
for tool in nginx haproxy openssl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -p sluice >&2

. benches/side-by-side/lib.sh   # bench_workdir, ticks, hz
bench_workdir

# Certificates: one CA, one leaf per key type (the CA is not checked by s_time; it only makes
# the chain realistic: leaf + CA sent, as a production server would).
quiet() { local log; log=$("$@" 2>&1) || { echo "$log" >&2; return 1; }; }
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" \
  -out "$work/ca.pem" -days 30 -subj "/CN=bench CA"
leaf() { # NAME KEYSPEC...
  local name=$1; shift
  quiet openssl req -newkey "$@" -nodes -keyout "$work/$name.key" -out "$work/$name.csr" -subj "/CN=bench.test"
  printf 'subjectAltName=DNS:bench.test\nextendedKeyUsage=serverAuth\n' > "$work/$name.ext"
  quiet openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -set_serial 1 \
    -days 30 -extfile "$work/$name.ext" -out "$work/$name.leaf.pem"
  cat "$work/$name.leaf.pem" "$work/ca.pem" > "$work/$name.pem"
  cat "$work/$name.pem" "$work/$name.key" > "$work/$name.haproxy.pem"
}
leaf ecdsa ec -pkeyopt ec_paramgen_curve:P-256
leaf rsa rsa:2048

# Ports: ecdsa on 1940x, rsa on 1941x; nginx x1, haproxy x2, sluice x3.
port() { case "$1" in ecdsa) echo 1940;; rsa) echo 1941;; esac; }

cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$(port ecdsa)1 ssl; ssl_certificate $work/ecdsa.pem; ssl_certificate_key $work/ecdsa.key; return 200 "ok\n"; }
  server { listen 127.0.0.1:$(port rsa)1 ssl; ssl_certificate $work/rsa.pem; ssl_certificate_key $work/rsa.key; return 200 "ok\n"; }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend ecdsa
  bind 127.0.0.1:$(port ecdsa)2 ssl crt $work/ecdsa.haproxy.pem
  http-request return status 200
frontend rsa
  bind 127.0.0.1:$(port rsa)2 ssl crt $work/rsa.haproxy.pem
  http-request return status 200
EOF
cat > "$work/sluice.toml" <<EOF
[admin]
bind = "127.0.0.1:19499"
[runtime]
worker_threads = 1
[access_log]
path = "off"
[log]
level = "error"
[[listener]]
name = "ecdsa"
bind = "127.0.0.1:$(port ecdsa)3"
[listener.tls]
cert = "$work/ecdsa.pem"
key = "$work/ecdsa.key"
[[listener]]
name = "rsa"
bind = "127.0.0.1:$(port rsa)3"
[listener.tls]
cert = "$work/rsa.pem"
key = "$work/rsa.key"
[[route]]
listener = "ecdsa"
path = "/"
service = "none"
[[route]]
listener = "rsa"
path = "/"
service = "none"
[[service]]
name = "none"
EOF

taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" & pids+=($!)
taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!); haproxy_pid=$!
taskset -c 0 target/release/sluice run -c "$work/sluice.toml" 2>"$work/sluice.log" & pids+=($!); sluice_pid=$!
sleep 1
nginx_pid=$(cat "$work/nginx.pid")
# nginx's worker does the handshakes; count the master too (it is idle).
cpu_of() { # PID...: utime + stime (+ children) in clock ticks, summed
  local total=0 p f
  for p in "$@"; do
    read -ra f < "/proc/$p/stat"
    total=$((total + f[13] + f[14] + f[15] + f[16]))
  done
  echo "$total"
}
nginx_pids() { echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"; }
hz=$(getconf CLK_TCK)

# Every server must complete a handshake before measuring.
for kind in ecdsa rsa; do
  for n in 1 2 3; do
    echo | timeout 5 openssl s_client -connect "127.0.0.1:$(port "$kind")$n" -servername bench.test >/dev/null 2>&1 \
      || { echo "no TLS on 127.0.0.1:$(port "$kind")$n" >&2; cat "$work/sluice.log" >&2; exit 1; }
  done
done

results="$work/results"
: > "$results"
for round in $(seq "$ROUNDS"); do
  for kind in ecdsa rsa; do
    for who in sluice nginx haproxy; do
      case "$who" in
        nginx) n=1; p=$(nginx_pids) ;;
        haproxy) n=2; p=$haproxy_pid ;;
        sluice) n=3; p=$sluice_pid ;;
      esac
      # shellcheck disable=SC2086
      c0=$(cpu_of $p); t0=$(date +%s.%N)
      out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$(port "$kind")$n" -new -time "$SECS" 2>&1)
      # shellcheck disable=SC2086
      t1=$(date +%s.%N); c1=$(cpu_of $p)
      hs=$(echo "$out" | sed -n 's/^\([0-9]*\) connections in .* real seconds.*/\1/p' | head -1)
      [ -n "$hs" ] && [ "$hs" -gt 0 ] || { echo "s_time failed for $who $kind: $out" >&2; exit 1; }
      awk -v who="$who" -v kind="$kind" -v hs="$hs" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v hz="$hz" \
        'BEGIN { printf "%s %s %d %.1f %.1f\n", kind, who, hs, hs / (t1 - t0), c / hz * 1e6 / hs }' >> "$results"
      echo "round $round: $(tail -1 "$results")" >&2
    done
  done
done

echo
echo "| key | server | full handshakes/s (median) | server CPU per handshake (median) |"
echo "|---|---|---:|---:|"
for kind in ecdsa rsa; do
  for who in sluice nginx haproxy; do
    awk -v kind="$kind" -v who="$who" 'BEGIN { n = 0 } $1 == kind && $2 == who { r[n] = $4; c[n] = $5; n++ }
      function median(a, n,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2 }
      END { label = kind == "ecdsa" ? "ECDSA P-256" : "RSA-2048"
            printf "| %s | %s | %.0f | %.0f µs |\n", label, who, median(r, n), median(c, n) }' "$results"
  done
done
