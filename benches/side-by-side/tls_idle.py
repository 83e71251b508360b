"""Memory per idle TLS connection, for benches/side-by-side/tls.sh.

    python3 tls_idle.py HOST:PORT COUNT PROXY_PID BASE_RSS_KB

Opens COUNT TLS connections to the proxy (full handshake each, no request), holds them open
and idle, waits for the proxy's RSS to settle, and prints (RSS now - BASE_RSS_KB) / COUNT in
KiB. Then closes them all. Fails (exit 1) if a connection cannot be made or is closed early:
a proxy that drops idle connections must not look cheap.
"""

import os
import socket
import ssl
import subprocess
import sys
import time


def rss_kb(pid: int) -> int:
    """VmRSS of the process and its direct children (nginx's worker is a child)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def main() -> int:
    target, count, pid, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    host, port = target.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conns = []
    try:
        for i in range(count):
            raw = socket.create_connection((host, int(port)), timeout=10)
            conns.append(ctx.wrap_socket(raw, server_hostname="bench.test"))
        # Let the proxy finish its side of every handshake and settle.
        time.sleep(2)
        for c in conns[:: max(1, count // 50)]:
            c.setblocking(False)
            try:
                if c.recv(1) == b"":
                    print(f"a connection was closed by the proxy while idle", file=sys.stderr)
                    return 1
            except (ssl.SSLWantReadError, BlockingIOError):
                pass  # still open, nothing to read: what an idle connection looks like
        now = rss_kb(pid)
        print(f"{(now - base) / count:.1f}")
        return 0
    except OSError as e:
        print(f"connection {len(conns) + 1} of {count} failed: {e}", file=sys.stderr)
        return 1
    finally:
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
