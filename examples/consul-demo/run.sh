#!/usr/bin/env bash
# consul-demo: the web tier of seed 004 (Django x2 + Consul + Fabio) as plain processes on
# loopback, no Docker needed.
#
#   run.sh        file registry: web-1, web-2 (sluice-testbackend) registered by the
#                 Consul-format definitions in consul.d/, one Sluice routing /web to both
#   run.sh etcd   etcd registry: etcd, web-1 and web-2 each under sluice-sidecar (which
#                 registers them on a lease), two Sluice instances watching the same etcd
#
# Everything runs from a fresh temporary directory (printed); Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/wasm-target.sh # the target Sluice's built-in policies compile to (rustup may lack it)
repo=$PWD
example=$repo/examples/consul-demo
variant=${1:-file}
case $variant in file|etcd) ;; *) echo "usage: $0 [file|etcd]" >&2; exit 2 ;; esac

cargo build --locked -p sluice -p sluice-sidecar -p sluice-test-support \
    --bin sluice --bin sluice-sidecar --bin sluice-testbackend
bin=$repo/target/debug
state=$(mktemp -d /tmp/consul-demo.XXXXXX)
pids=()
cleanup() {
    # Newest first: the workloads and sidecars (which deregister), then Sluice, then etcd.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() { # URL: waits up to 20 s for a 200
    for _ in $(seq 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "$1 did not answer within 20 s" >&2
    exit 1
}

if [[ $variant == file ]]; then
    cp "$example/sluice.toml" "$state/"
    mkdir "$state/registry"
    "$bin/sluice" check -c "$state/sluice.toml"
    "$bin/sluice-testbackend" web-1 127.0.0.1:8001 & pids+=($!); echo $! > "$state/web-1.pid"
    "$bin/sluice-testbackend" web-2 127.0.0.1:8002 & pids+=($!); echo $! > "$state/web-2.pid"
    # Registering = dropping the Consul definition into the registry directory, atomically.
    for id in web-1 web-2; do
        cp "$example/consul.d/$id.json" "$state/registry/.$id.json.tmp"
        mv "$state/registry/.$id.json.tmp" "$state/registry/$id.json"
    done
    "$bin/sluice" run -c "$state/sluice.toml" > "$state/access.log" 2> "$state/sluice.log" &
    pids+=($!)
    wait_http http://127.0.0.1:9901/readyz
    cat <<MSG

state directory: $state   (sluice.log, access.log, registry/)
  curl -s 127.0.0.1:8080/web/hello                     # web-1, web-2, web-1, ...
  curl -s 127.0.0.1:9901/api/routes                    # the route from the urlprefix-/web tags
  curl -s 127.0.0.1:9901/api/catalog                   # the registrations
  kill \$(cat $state/web-2.pid)                 # stop web-2: its tcp check fails
  rm $state/registry/web-1.json          # deregister web-1
Ctrl-C stops everything.
MSG
    wait "${pids[-1]}"
    exit
fi

etcd_bin=$(command -v etcd || true)
[[ -n $etcd_bin ]] || { echo "etcd is not installed: run scripts/setup.sh" >&2; exit 1; }
"$etcd_bin" --name consul-demo --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster consul-demo=http://127.0.0.1:2380 > "$state/etcd.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:2379/health
for n in 1 2; do
    "$bin/sluice" check -c "$example/sluice-etcd-$n.toml"
    "$bin/sluice" run -c "$example/sluice-etcd-$n.toml" \
        > "$state/access-$n.log" 2> "$state/sluice-$n.log" &
    pids+=($!)
done
# The app settings of seed 004's Consul KV; each sidecar renders them into its app's
# settings file (web-N.settings.json in the state directory) and keeps it current.
etcd_put() { # KEY VALUE, through etcd's JSON gateway
    curl -sf -o /dev/null http://127.0.0.1:2379/v3/kv/put \
        -d "{\"key\":\"$(printf %s "$1" | base64)\",\"value\":\"$(printf %s "$2" | base64)\"}"
}
etcd_put web/debug false
etcd_put web/allowed_hosts example.com
for n in 1 2; do
    # A relative destination is relative to the sidecar's config: copied here, it writes here.
    cp "$example/sidecar/web-$n.toml" "$state/"
    "$bin/sluice-sidecar" --config "$state/web-$n.toml" -- \
        "$bin/sluice-testbackend" "web-$n" "127.0.0.1:800$n" --settings "$state/web-$n.settings.json" \
        2> "$state/web-$n.log" &
    pids+=($!); echo $! > "$state/sidecar-web-$n.pid"
done
wait_http http://127.0.0.1:9911/readyz
wait_http http://127.0.0.1:9912/readyz
wait_http http://127.0.0.1:8001/
wait_http http://127.0.0.1:8002/
# The apps are the sidecars' children; remember them too, so a sidecar killed with SIGKILL
# does not leave its app behind when this script ends.
for n in 1 2; do
    for child in $(pgrep -P "$(cat "$state/sidecar-web-$n.pid")"); do pids+=("$child"); done
done
cat <<MSG

state directory: $state   (etcd.log, sluice-1.log, sluice-2.log, web-1.log, web-2.log)
  curl -s 127.0.0.1:8081/web/hello; curl -s 127.0.0.1:8082/web/hello   # both Sluices, both instances
  diff <(curl -s 127.0.0.1:9911/api/routes) <(curl -s 127.0.0.1:9912/api/routes) && echo same
  curl -s 127.0.0.1:8081/web/hello              # "settings": the app's, rendered from KV by its sidecar
  curl -s -XPOST 127.0.0.1:2379/v3/kv/put -d '{"key":"d2ViL2RlYnVn","value":"dHJ1ZQ=="}'   # web/debug = true
  kill \$(cat $state/sidecar-web-2.pid)          # web-2 deregisters (lease revoked), then stops
  kill -KILL \$(cat $state/sidecar-web-1.pid)    # web-1's sidecar dies: its lease expires in 3 s
Ctrl-C stops everything.
MSG
wait "${pids[0]}"
