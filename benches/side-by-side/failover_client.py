#!/usr/bin/env python3
"""Open-loop failover client for benches/side-by-side/failover.sh.

    failover_client.py URL RATE WARMUP AFTER PROBED_URL BREAK_URL PROMOTE_URL

Sends GET URL at RATE requests per second on a fixed schedule, each request on its own
connection (`Connection: close`) and its own task, never waiting for earlier answers: the
load independent clients put on a proxy, which does not ease off when the proxy stalls (a
closed loop of N clients would). After WARMUP seconds it POSTs PROBED_URL (the primary's
control port, http://A_CTL/probed: answered right after the member's next status-page probe,
unless "-"), then at once BREAK_URL (http://A_CTL/stop or /freeze: the flip, the worst moment
of the probe cycle) and PROMOTE_URL (http://B_CTL/primary, unless "-"); it keeps sending for
AFTER seconds, then waits for every request (each gives up after 10 s).

Prints one JSON object; times are seconds after the flip (just before BREAK_URL was sent):
- requests, failed (non-200, error, timeout, or slower than 5 s), failed_by_kind,
- non_primary_answers: 200s whose body says the member was not primary when it answered,
- new_primary_after_s: when the first answer from member "b" as primary arrived,
- last_failure_after_s: when the last failed request ended,
- slowest_request_s,
- in_flight_at_flip: requests sent and not yet ended at the flip; max_in_flight,
- send_lag_max_s: how late the client itself sent a request (its own overload).
"""
import asyncio
import json
import sys
import time
import urllib.request
from urllib.parse import urlsplit

url, rate, warmup, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
probed_url, break_url, promote_url = sys.argv[5], sys.argv[6], sys.argv[7]
parts = urlsplit(url)
host, port = parts.hostname, parts.port or 80
target = parts.path + (("?" + parts.query) if parts.query else "")
REQUEST = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n").encode()
TIMEOUT = 10.0
SLOW = 5.0

records = []  # dicts: scheduled, sent, first_byte, done, status, host, role, error


async def one(scheduled):
    rec = {"scheduled": scheduled, "sent": time.monotonic(), "first_byte": None, "status": None,
           "host": None, "role": None, "error": None}
    records.append(rec)

    async def run():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(REQUEST)
            await writer.drain()
            data = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if rec["first_byte"] is None:
                    rec["first_byte"] = time.monotonic()
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = None
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v.strip())
                    if length is not None and len(body) >= length:
                        break
        finally:
            writer.close()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise ConnectionError("closed without a complete answer" if data else "closed without an answer")
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        rec["status"] = int(status_line[1])
        try:
            j = json.loads(body)
            rec["host"], rec["role"] = j.get("host"), j.get("role")
            if rec["status"] != 200:
                rec["error"] = j.get("error")
        except ValueError:
            # Not JSON (haproxy's and nginx's own error pages): the reason phrase.
            if rec["status"] != 200 and len(status_line) > 2:
                rec["error"] = status_line[2].decode(errors="replace")

    try:
        await asyncio.wait_for(run(), TIMEOUT)
    except asyncio.TimeoutError:
        rec["error"] = f"timeout after {TIMEOUT:.0f} s"
    except Exception as e:  # noqa: BLE001 - every failure is a result
        rec["error"] = type(e).__name__ + (f": {e}" if str(e) else "")
    rec["done"] = time.monotonic()


def post(u):
    req = urllib.request.Request(u, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode().strip()


async def main():
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    period = 1.0 / rate
    stop = [False]
    tasks = []

    async def schedule():
        i = 0
        while not stop[0]:
            scheduled = start + i * period
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop[0]:
                break
            tasks.append(asyncio.ensure_future(one(scheduled)))
            i += 1

    sched = asyncio.ensure_future(schedule())
    await asyncio.sleep(warmup)
    probed = await loop.run_in_executor(None, post, probed_url) if probed_url != "-" else ""
    flip = time.monotonic()
    broke = await loop.run_in_executor(None, post, break_url)
    promoted = await loop.run_in_executor(None, post, promote_url) if promote_url != "-" else ""
    print(f"failover: {probed}; {broke}; {promoted}", file=sys.stderr)
    await asyncio.sleep(after)
    stop[0] = True
    await sched
    await asyncio.gather(*tasks)
    return flip


flip = asyncio.run(main())


def kind(r):
    if r["status"] == 200 and not (r["done"] - r["sent"] > SLOW):
        return None
    if r["status"] == 200:
        return "slower than 5 s"
    if r["status"] is not None:
        return f"{r['status']} {r['error'] or ''}".strip()
    return r["error"]


failed = [r for r in records if kind(r) is not None]
by_kind = {}
for r in failed:
    by_kind[kind(r)] = by_kind.get(kind(r), 0) + 1
wrong = [r for r in records if r["status"] == 200 and r["role"] != "primary"]
new_primary = [r["first_byte"] - flip for r in records
               if r["status"] == 200 and r["host"] == "b" and r["role"] == "primary" and r["first_byte"] >= flip]
events = sorted([(r["sent"], 1) for r in records] + [(r["done"], -1) for r in records], key=lambda e: (e[0], e[1]))
now = peak = 0
for _, d in events:
    now += d
    peak = max(peak, now)


def rnd(v):
    return None if v is None else round(v, 3)


print(json.dumps({
    "requests": len(records),
    "failed": len(failed),
    "failed_by_kind": by_kind,
    "non_primary_answers": len(wrong),
    "new_primary_after_s": rnd(min(new_primary)) if new_primary else None,
    "last_failure_after_s": rnd(max(r["done"] for r in failed) - flip) if failed else None,
    "slowest_request_s": rnd(max(r["done"] - r["sent"] for r in records)) if records else None,
    "in_flight_at_flip": sum(1 for r in records if r["sent"] <= flip < r["done"]),
    "max_in_flight": peak,
    "send_lag_max_s": rnd(max(r["sent"] - r["scheduled"] for r in records)) if records else None,
}))
