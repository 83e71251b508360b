#!/usr/bin/env python3
"""KV-change-to-signal latency with a real etcd, and the sidecar's memory.

Starts Debian's etcd on free loopback ports, runs the release `sluice-sidecar` with an etcd KV
layer and one template whose on-change action is SIGHUP, and a workload that records the
wall-clock time at which each SIGHUP arrives. Each round writes a new value with etcd's JSON
gateway and measures put -> SIGHUP in the workload. Quiescence is set to 0 so the number is the
pipeline itself (watch event -> render -> atomic write -> signal); a configured `[watch] min`
adds to it by design. Finally reports the sidecar's RSS (VmRSS/VmHWM) with the watch running.

Usage: cargo build --release -p sluice-sidecar && python3 benches/sidecar/kv_latency.py [ROUNDS]
"""
import base64, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "sluice-sidecar")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def b64(text):
    return base64.b64encode(text.encode()).decode()


def wait(what, predicate, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.001)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    client, peer = free_port(), free_port()
    etcd = subprocess.Popen(
        ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = None
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                    return b'"true"' in r.read()
            except OSError:
                return False
        wait("etcd", healthy)
        post(client, "/v3/kv/put", {"key": b64("web/debug"), "value": b64("v0")})
        with open(os.path.join(work, "t.j2"), "w") as f:
            f.write("DEBUG = {{ kv('web/debug') }}\n")
        with open(os.path.join(work, "sidecar.toml"), "w") as f:
            f.write(f'[[kv]]\nsource = "etcd"\nendpoints = ["http://127.0.0.1:{client}"]\nprefix = "web/"\n\n'
                    '[watch]\nmin = "0s"\nmax = "0s"\n\n'
                    '[[template]]\nsource = "t.j2"\ndestination = "settings.py"\nsignal = "SIGHUP"\n')
        stamps = os.path.join(work, "hup.log")
        workload = ("import os, signal, time\n"
                    f"def on_hup(*_):\n    with open({stamps!r}, 'a') as f: f.write(str(time.time_ns()) + '\\n')\n"
                    "signal.signal(signal.SIGHUP, on_hup)\n"
                    f"open({stamps!r}, 'a').close()\n"
                    "while True: signal.pause()\n")
        sidecar = subprocess.Popen([BIN, "--config", "sidecar.toml", "--", sys.executable, "-c", workload],
                                   cwd=work, env={**os.environ, "SLUICE_LOG": "warn"})
        wait("workload", lambda: os.path.exists(stamps))
        latencies = []
        for round_number in range(1, ROUNDS + 1):
            before = len(open(stamps).read().split())
            start = time.time_ns()
            post(client, "/v3/kv/put", {"key": b64("web/debug"), "value": b64(f"v{round_number}")})
            arrived = wait("SIGHUP", lambda: (lines := open(stamps).read().split()) and len(lines) > before and int(lines[-1]))
            latencies.append((arrived - start) / 1e6)
            time.sleep(0.02)
        status = open(f"/proc/{sidecar.pid}/status").read()
        rss = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))}
        latencies.sort()
        print(f"rounds: {ROUNDS}")
        print(f"put -> SIGHUP latency ms: median {statistics.median(latencies):.2f}, "
              f"p90 {latencies[int(len(latencies) * 0.9) - 1]:.2f}, min {latencies[0]:.2f}, max {latencies[-1]:.2f}")
        print(f"sidecar memory with an etcd watch: VmRSS {rss.get('VmRSS')}, VmHWM {rss.get('VmHWM')}")
    finally:
        try:
            if sidecar:
                sidecar.send_signal(signal.SIGTERM)
                sidecar.wait(timeout=15)
        finally:
            etcd.kill()
            etcd.wait()


if __name__ == "__main__":
    main()
