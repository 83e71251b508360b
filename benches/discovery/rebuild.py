#!/usr/bin/env python3
"""Route-rebuild cost against the catalog size, through the real `sluice` binary.

For each size N (default 100, 1000, 10000) writes N Consul-format definition files (services of
10 instances, each tagged `urlprefix-/svcK`, half of them with a tcp check) into a file
registry, starts `sluice` on it, and waits until `/api/catalog` shows the N instances rebuilt.
Then, ROUNDS times, rewrites one definition (a new port: one instance changed) and reads the
rebuild the binary reports in `/api/catalog` (`last_rebuild.duration_ms`: the urlprefix Wasm
policy over the whole catalog, translation to services and routes, and `Proxy::apply` building
and swapping every table), plus the wall time from the file write to the new catalog version
being rebuilt (adds the 100 ms registry poll and the 20 ms debounce, so it is an upper bound).
Reports the first (cold) rebuild, the median (with its policy / translate / apply parts) and max
of the incremental ones, and the RSS.

Usage: cargo build --release -p sluice && python3 benches/discovery/rebuild.py [ROUNDS] [SIZES...]
       SLUICE=target/debug/sluice python3 benches/discovery/rebuild.py   (any other binary)
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SLUICE", os.path.join(ROOT, "target", "release", "sluice"))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
SIZES = [int(n) for n in sys.argv[2:]] or [100, 1000, 10000]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def wait(what, predicate, deadline=300.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # /api/catalog of 10k instances is megabytes: do not load the process being measured
    sys.exit(f"timed out waiting for {what}")


def definition(i, port):
    service = f"svc{i // 10}"
    body = {"name": service, "id": f"i{i}", "address": "127.0.0.1", "port": port,
            "tags": [f"urlprefix-/{service}"]}
    if i % 2 == 0:
        body["check"] = {"tcp": f"127.0.0.1:{port}", "interval": "60s", "timeout": "1s"}
    return json.dumps({"service": body})


def write(directory, i, port):
    path = os.path.join(directory, f"i{i}.json")
    tmp = os.path.join(directory, f".i{i}.tmp")
    with open(tmp, "w") as f:
        f.write(definition(i, port))
    os.rename(tmp, path)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rebuilt(admin, version_above):
    listing = get(admin, "/api/catalog")
    last = listing.get("last_rebuild") or {}
    if listing["version"] > version_above and last.get("catalog_version") == listing["version"]:
        return listing
    return None


def run(n):
    with tempfile.TemporaryDirectory(prefix="sluice-rebuild-") as work:
        registry = os.path.join(work, "registry")
        os.mkdir(registry)
        for i in range(n):
            # Ports spread over a range nothing listens on: checks fail quietly, traffic is not sent.
            write(registry, i, 20000 + i % 40000)
        admin, web = free_port(), free_port()
        config = os.path.join(work, "sluice.toml")
        with open(config, "w") as f:
            f.write(f'[admin]\nbind = "127.0.0.1:{admin}"\n[access_log]\npath = "off"\n[log]\nlevel = "warn"\n'
                    f'[[listener]]\nname = "web"\nbind = "127.0.0.1:{web}"\n'
                    f'[routing]\ndebounce = "20ms"\n'
                    f'[[discovery]]\nkind = "file"\ndir = "{registry}"\npoll_interval = "100ms"\n')
        log = open(os.path.join(work, "stderr.log"), "w")
        process = subprocess.Popen([BIN, "run", "-c", config], stdout=subprocess.DEVNULL, stderr=log)
        try:
            def ready():
                try:
                    listing = get(admin, "/api/catalog")
                except OSError:
                    return None
                last = listing.get("last_rebuild") or {}
                return listing if len(listing["instances"]) == n and last.get("result") == "ok" else None
            listing = wait("the first rebuild", ready)
            cold = listing["last_rebuild"]["duration_ms"]
            version = listing["version"]
            durations, walls = [], []
            for r in range(ROUNDS):
                started = time.monotonic()
                write(registry, r % n, 60001 + r)
                listing = wait("an incremental rebuild", lambda: rebuilt(admin, version))
                walls.append((time.monotonic() - started) * 1000)
                version = listing["version"]
                if listing["last_rebuild"]["result"] != "ok":
                    sys.exit(f"rebuild failed: {listing['last_rebuild']}")
                durations.append(listing["last_rebuild"])
            routes = listing["last_rebuild"]["routes"]
            part = lambda key: statistics.median(d[key] for d in durations)
            return {"instances": n, "routes": routes, "cold_ms": cold,
                    "median_ms": part("duration_ms"), "max_ms": max(d["duration_ms"] for d in durations),
                    "policy_ms": part("policy_ms"), "translate_ms": part("translate_ms"), "apply_ms": part("apply_ms"),
                    "wall_median_ms": statistics.median(walls), "rss_mib": rss_kib(process.pid) / 1024}
        finally:
            process.terminate()
            process.wait(timeout=30)


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release -p sluice (or set SLUICE=path)")
    print(f"binary: {BIN}; {ROUNDS} incremental rebuilds per size (one instance changed each)")
    print("| instances | routes | first rebuild ms | incremental median ms (policy / translate / apply) | incremental max ms | file write → rebuilt, median ms | RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for n in SIZES:
        r = run(n)
        print(f"| {r['instances']} | {r['routes']} | {r['cold_ms']:.1f} | {r['median_ms']:.1f} "
              f"({r['policy_ms']:.1f} / {r['translate_ms']:.1f} / {r['apply_ms']:.1f}) | {r['max_ms']:.1f} | "
              f"{r['wall_median_ms']:.0f} | {r['rss_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
