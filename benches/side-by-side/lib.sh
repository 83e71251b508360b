# Shared by the side-by-side scripts (sourced): what a proxy process costs, read from /proc.

# CPU ticks (utime + stime) of a process and its direct children (nginx's worker is a child).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# Resident memory in KiB of a process and its direct children.
rss_kb() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/status" ] || continue
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# Clock ticks per second, to turn `ticks` into seconds.
hz=$(getconf CLK_TCK)

# A scratch directory in $work, removed at exit with every process listed in $pids; the CPUs
# kept awake for the run (keep_cpus_awake).
bench_workdir() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
  keep_cpus_awake
}

# keep_cpus_awake: asks the kernel for an idle exit latency of 0 for as long as this shell runs
# (PM QoS, /dev/cpu_dma_latency; as tuned's latency-performance profile does), so an idle CPU
# polls rather than halts. On this host a halted virtual CPU took milliseconds to wake: a proxy
# pinned to an otherwise idle CPU answered 16 KiB at 1,000 req/s with a p50 of about 4 ms,
# and of 0.23 ms with the CPU kept awake. That wake-up is the host's, not the proxy's, and
# dominated latency at moderate rates for every contender. The request ends when the shell
# exits (its descriptor closes; children started here inherit it and are killed at cleanup).
# CPU_IDLE=host leaves the host's setting alone.
keep_cpus_awake() {
  [ "${CPU_IDLE:-awake}" = host ] && return
  # The group's redirection of stderr ends with it; the descriptor `exec` opens stays open.
  if { exec {cpu_dma_latency}>/dev/cpu_dma_latency; } 2>/dev/null && printf 00000000 >&"$cpu_dma_latency"; then
    return
  fi
  echo "warning: cannot write /dev/cpu_dma_latency (needs root): latencies include the host's CPU wake-up time" >&2
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# nginx_head DIR: the main context of a one-worker nginx whose pid file and error log are in DIR.
nginx_head() {
  printf 'worker_processes 1;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\nevents { worker_connections 4096; }\n' "$1" "$1"
}

# sluice_proxy_conf ADMIN BACKEND NAME=ADDR[+tls]...: the Sluice contender's configuration on
# stdout: one listener per NAME=ADDR (+tls: TLS with bench_cert's certificate), each routed to
# the one service, `backend`, whose one instance is BACKEND. Settings of that service may be
# printed right after it.
sluice_proxy_conf() {
  local admin=$1 backend=$2 spec
  shift 2
  sluice_head "$admin"
  for spec in "$@"; do
    printf '[[listener]]\nname = "%s"\nbind = "%s"\n' "${spec%%=*}" "$(listener_addr "$spec")"
    [[ $spec == *+tls ]] && printf '[listener.tls]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem"
  done
  for spec in "$@"; do
    printf '[[route]]\nlistener = "%s"\nservice = "backend"\n' "${spec%%=*}"
  done
  printf '[[service]]\nname = "backend"\ninstances = ["%s"]\n' "$backend"
}
listener_addr() { local addr=${1#*=}; echo "${addr%+tls}"; }

# backend_nginx_conf DIR ADDR BODY: DIR/nginx.conf for the one-worker nginx backend answering
# every request on ADDR with BODY and a newline, keep-alive without a request limit.
backend_nginx_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<EOF
$(nginx_head "$1")
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $2; location / { return 200 "$3\n"; } }
}
EOF
}

# The location of every nginx contender: HTTP/1.1 keep-alive to the upstream named `backend`.
nginx_proxy_location() {
  printf '    location / {\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n    }\n'
}

# global and defaults of every haproxy contender: one thread, HTTP keep-alive on both sides.
haproxy_http_head() {
  printf 'global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n'
}

# sluice_head ADMIN: the settings every Sluice contender runs with (one worker, no access log).
sluice_head() {
  printf '[admin]\nbind = "%s"\n[runtime]\nworker_threads = 1\n[access_log]\npath = "off"\n[log]\nlevel = "warn"\n' "$1"
}

# Starts the backend nginx (CPU 1) and the three contenders (CPU 0) from the files in $work;
# sets nginx_pid, haproxy_pid and sluice_pid. SLUICE_BIN names another Sluice binary to run.
start_contenders() {
  taskset -c 1 nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" & pids+=($!)
  taskset -c 0 nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!); nginx_pid=$!
  taskset -c 0 haproxy -q -f "$work/haproxy.cfg" & pids+=($!); haproxy_pid=$!
  taskset -c 0 "${SLUICE_BIN:-target/release/sluice}" run -c "$work/sluice.toml" 2>"$work/sluice.log" & pids+=($!); sluice_pid=$!
  sleep 1
}

# bench_cert: a self-signed ECDSA P-256 certificate for bench.test in $work: cert.pem, key.pem,
# and haproxy.pem (the two together, as haproxy reads them).
bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 30 -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -addext "basicConstraints=critical,CA:FALSE" 2>"$work/openssl.log" \
    || { cat "$work/openssl.log" >&2; return 1; }
  cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
}

# files_backend_conf DIR ADDR ROOT [BACKLOG]: DIR/nginx.conf for the one-worker nginx backend
# serving ROOT's files on ADDR (sendfile, keep-alive without a request limit), with an accept
# queue of BACKLOG (nginx's own default, 511, when not given).
files_backend_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
$(nginx_head "$1")
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server { listen $2${4:+ backlog=$4}; root $3; }
}
CONF
}

# nginx_proxy_conf DIR BACKEND LISTEN...: DIR/nginx.conf for the nginx contender, one `listen`
# line per LISTEN argument ("127.0.0.1:1 ssl http2"; bench_cert's certificate serves TLS), and
# HTTP/1.1 keep-alive to BACKEND.
nginx_proxy_conf() {
  local dir=$1 backend=$2 listen tls=""
  shift 2
  mkdir -p "$dir"
  {
    nginx_head "$dir"
    printf 'http {\n  access_log off;\n  keepalive_requests 1000000;\n'
    printf '  upstream backend { server %s; keepalive 128; }\n  server {\n' "$backend"
    for listen in "$@"; do
      printf '    listen %s;\n' "$listen"
      [[ $listen == *ssl* ]] && tls=yes
    done
    [ -n "$tls" ] && printf '    ssl_certificate %s;\n    ssl_certificate_key %s;\n' \
      "$work/cert.pem" "$work/key.pem"
    nginx_proxy_location
    printf '  }\n}\n'
  } > "$dir/nginx.conf"
}
