#!/usr/bin/env python3
"""Time from `sluice-sidecar` start to the workload's exec, for the typical template set.

The workload is `date +%s%N`, which prints the wall clock as soon as it runs; the same command
run directly gives the baseline (fork/exec/dynamic loading of `date` itself). The difference of
the medians is the sidecar's own start-up: parse config, load KV, render three templates, write
them atomically, fork/exec the workload. Run benches/sidecar/startup.sh first (it builds).

Usage: python3 benches/sidecar/exec_latency.py [RUNS]
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "sluice-sidecar")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
ENV = {**os.environ, "SLUICE_LOG": "warn", "CLIENT_SYSTEMS": "app_1;app_2;app_3", "CA_ROOT": "/c/ca.cer",
       "CA_SERVER": "/c/server.cer", "CA_PRIVATE_KEY": "/c/server.key"}


def measure(argv, cwd):
    samples = []
    for _ in range(RUNS):
        start = time.time_ns()
        out = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, check=True).stdout
        samples.append((int(out.strip().splitlines()[-1]) - start) / 1e6)
    samples.sort()
    return samples


def main():
    work = tempfile.mkdtemp(prefix="sluice-exec-")
    shutil.copytree(os.path.join(ROOT, "benches", "sidecar", "typical"), work, dirs_exist_ok=True)
    date = shutil.which("date")
    direct = measure([date, "+%s%N"], work)
    bare = measure([BIN, "--", date, "+%s%N"], work)
    typical = measure([BIN, "--config", "sidecar.toml", "--", date, "+%s%N"], work)
    for name, samples in [("date directly", direct), ("sidecar, no templates", bare), ("sidecar, typical set", typical)]:
        print(f"{name:24} start->exec ms: median {statistics.median(samples):.2f}  p90 {samples[int(RUNS * 0.9)]:.2f}  min {samples[0]:.2f}")
    print(f"sidecar overhead (median difference): no templates {statistics.median(bare) - statistics.median(direct):.2f} ms, "
          f"typical set {statistics.median(typical) - statistics.median(direct):.2f} ms")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
