#!/usr/bin/env python3
"""Failover load client for benches/side-by-side/failover.sh.

Sends a steady stream of GET requests (THREADS keep-alive connections, each sequential) to URL
for WARMUP + AFTER seconds; after WARMUP it runs the FAILOVER command (which breaks the primary
and promotes the backup). Prints one JSON object: requests, failures (non-200, errors, or a
request that took longer than 5 s), answers from a member that was not primary, the time from
the failover until the new primary answered and until the last failure, and the slowest request.
"""
import http.client
import json
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

url, warmup, after, threads, failover = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
parts = urlsplit(url)
records = []  # (t since failover, ok, role, host, latency)
lock = threading.Lock()
t_failover = [None]
stop = threading.Event()


def rel(now):
    return None if t_failover[0] is None else now - t_failover[0]


def worker():
    conn = None
    while not stop.is_set():
        start = time.monotonic()
        ok, role, host = False, None, None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", parts.path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                j = json.loads(body)
                ok, role, host = True, j.get("role"), j.get("host")
            if resp.getheader("connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception:
            if conn is not None:
                conn.close()
            conn = None
        end = time.monotonic()
        with lock:
            records.append((rel(start), ok and end - start < 5, role, host, end - start))


ts = [threading.Thread(target=worker) for _ in range(threads)]
for t in ts:
    t.start()
time.sleep(warmup)
t_failover[0] = time.monotonic()
subprocess.run(failover, shell=True, check=True)
time.sleep(after)
stop.set()
for t in ts:
    t.join()

failed = [r for r in records if not r[1]]
wrong = [r for r in records if r[1] and r[2] != "primary"]
after_fo = [r for r in records if r[0] is not None]
new_primary = [r[0] + r[4] for r in after_fo if r[1] and r[3] == "b" and r[2] == "primary"]
print(json.dumps({
    "requests": len(records),
    "failed": len(failed),
    "non_primary_answers": len(wrong),
    "new_primary_after_s": round(min(new_primary), 3) if new_primary else None,
    "last_failure_after_s": round(max((r[0] or 0) + r[4] for r in failed), 3) if failed else None,
    "slowest_request_s": round(max(r[4] for r in records), 3) if records else None,
}))
