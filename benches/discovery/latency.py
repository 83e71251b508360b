#!/usr/bin/env python3
"""Catalog change → route latency, through the real `sluice` binary, for etcd and the file registry.

Starts a real etcd (Debian's `etcd-server`) on loopback ports, one HTTP backend, and `sluice` with
one `[[discovery]]` source. Then, ROUNDS times: registers an instance tagged
`urlprefix-/lat<i>` (etcd: a put through the JSON gateway; file: a definition renamed into the
registry directory) and measures the time until a request through the proxy to `/lat<i>` is
answered by the backend (200); then deregisters it (etcd delete; file removed) and measures the
time until the same request gets 404. Requests are sent back to back over one keep-alive
connection, so the resolution is one proxy round trip (well under a millisecond). Each change
comes 50 ms to 1.05 s (random) after the previous one was seen, so polling sources are measured
over their whole period rather than locked onto its phase.

The time includes everything between the change and the data path: etcd's commit and watch event
(or the file watch: inotify + 20 ms settle, or the poll), the catalog debounce (`[routing]
debounce`, DEBOUNCE below), the urlprefix policy, translation and `Proxy::apply`.

Usage: cargo build --release -p sluice && python3 benches/discovery/latency.py [ROUNDS] [MODES...]
  MODES: etcd, file (the default file source), file-poll (notify = false, poll_interval = 1s;
  the only file mode a binary from before the inotify watch understands is `file`, which there
  polls every second). Default: etcd file.
  SLUICE=path/to/sluice selects another binary; DEBOUNCE=20ms another [routing] debounce
  (default: the shipped 100ms).
"""
import base64, http.client, http.server, json, os, random, shutil, socket, statistics, subprocess, sys
import tempfile, threading, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SLUICE", os.path.join(ROOT, "target", "release", "sluice"))
DEBOUNCE = os.environ.get("DEBOUNCE", "100ms")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 50
MODES = sys.argv[2:] or ["etcd", "file"]
DEADLINE = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_backend():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Etcd:
    def __init__(self, work):
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.path.exists(binary):
            sys.exit("etcd not found: scripts/setup.sh installs Debian's etcd-server")
        self.port, peer = free_port(), free_port()
        client, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.log = open(os.path.join(work, "etcd.log"), "w")
        self.process = subprocess.Popen(
            [binary, "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"bench={peer_url}"],
            stdout=self.log, stderr=self.log)
        self.endpoint = client
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                self.call("/v3/kv/range", {"key": b64("x")})
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("etcd did not start; see its log in " + work)

    def call(self, path, body):
        request = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": b64(key)})

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def definition(i, port):
    return {"name": f"lat{i}", "id": f"lat{i}", "address": "127.0.0.1", "port": port,
            "tags": [f"urlprefix-/lat{i}"]}


class Probe:
    """Back-to-back GETs through the proxy over one keep-alive connection."""

    def __init__(self, port):
        self.port = port
        self.connection = None

    def status(self, path):
        for _ in range(3):
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.connection.request("GET", path)
                response = self.connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self.connection = None
        return 0

    def until(self, path, want, started):
        end = started + DEADLINE
        while time.monotonic() < end:
            if self.status(path) == want:
                return (time.monotonic() - started) * 1000
        sys.exit(f"{path} did not answer {want} within {DEADLINE} s")


def run(mode, work, backend_port):
    admin, web = free_port(), free_port()
    registry = os.path.join(work, f"registry-{mode}")
    os.makedirs(registry, exist_ok=True)
    etcd = Etcd(work) if mode == "etcd" else None
    source = {
        "etcd": f'kind = "etcd"\nendpoints = ["{etcd.endpoint if etcd else ""}"]\n',
        "file": f'kind = "file"\ndir = "{registry}"\n',
        "file-poll": f'kind = "file"\ndir = "{registry}"\nnotify = false\npoll_interval = "1s"\n',
    }[mode]
    config = os.path.join(work, f"sluice-{mode}.toml")
    with open(config, "w") as f:
        f.write(f'[admin]\nbind = "127.0.0.1:{admin}"\n[access_log]\npath = "off"\n[log]\nlevel = "warn"\n'
                f'[[listener]]\nname = "web"\nbind = "127.0.0.1:{web}"\n'
                f'[routing]\ndebounce = "{DEBOUNCE}"\n[[discovery]]\n{source}')
    log = open(os.path.join(work, f"sluice-{mode}.log"), "w")
    process = subprocess.Popen([BIN, "run", "-c", config], stdout=subprocess.DEVNULL, stderr=log)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > end or process.poll() is not None:
                    sys.exit(f"sluice did not start; see {log.name}")
                time.sleep(0.05)
        probe = Probe(web)
        added, removed = [], []
        for i in range(ROUNDS):
            path = f"/lat{i}"
            body = json.dumps(definition(i, backend_port))
            started = time.monotonic()
            if etcd:
                etcd.put(f"/sluice/services/lat{i}/lat{i}", body)
            else:
                tmp = os.path.join(registry, f".lat{i}.tmp")
                with open(tmp, "w") as f:
                    f.write(json.dumps({"service": json.loads(body)}))
                os.rename(tmp, os.path.join(registry, f"lat{i}.json"))
            added.append(probe.until(path, 200, started))
            time.sleep(0.05 + random.random())
            started = time.monotonic()
            if etcd:
                etcd.delete(f"/sluice/services/lat{i}/lat{i}")
            else:
                os.remove(os.path.join(registry, f"lat{i}.json"))
            removed.append(probe.until(path, 404, started))
            # Let the rebuild of the delete settle, so rounds do not overlap, and start the next
            # change at a random point of the poll period: back-to-back rounds lock onto the
            # poll's phase and would always measure its worst case.
            time.sleep(0.05 + random.random())
        return added, removed
    finally:
        process.terminate()
        process.wait(timeout=30)
        if etcd:
            etcd.stop()


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release -p sluice (or set SLUICE=path)")
    backend = start_backend()
    print(f"binary: {BIN}; [routing] debounce = {DEBOUNCE}; {ROUNDS} registrations and {ROUNDS} deregistrations per source")
    print("| source | change | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="sluice-latency-") as work:
        for mode in MODES:
            added, removed = run(mode, work, backend.server_address[1])
            for change, values in (("register", added), ("deregister", removed)):
                print(f"| {mode} | {change} | {statistics.median(values):.1f} | "
                      f"{percentile(values, 99):.1f} | {max(values):.1f} |", flush=True)
    backend.shutdown()


if __name__ == "__main__":
    main()
