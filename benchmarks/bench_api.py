"""The node daemon's HTTP API on loopback, beside what it is built on.

Runs a real daemon (``kachery-tasks node start`` in its own process) on a
fresh node holding one 64 MiB file, and prints, from the same run:

* a 1 MiB Range read of the stored file over one keep-alive connection
  (``GET /api/files/<sha256>`` with ``Range``; random offsets; p50/p90/p99),
  beside
  - a plain 1 MiB ``pread`` of the same blob in this process (the disk /
    page cache floor), and
  - a bare uvicorn app in its own process that answers the same request
    with the same ``pread`` and nothing else (the HTTP server's floor);
  target: p50 under 2 ms;
* how long a feed message appended in this process takes to reach a client
  of ``GET /api/feeds/<id>/main/events`` (server-sent events) through the
  daemon; target: p50 under 50 ms.

    python benchmarks/bench_api.py [--reads N] [--messages N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
FILE_SIZE = 64 * MiB

RAW_APP = """
import os, sys, uvicorn
path, port = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    first, last = headers[b"range"].decode().split("=")[1].split("-")
    start, end = int(first), int(last) + 1
    body = os.pread(fd, end - start, start)
    await send({"type": "http.response.start", "status": 206,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):6.3f} ms   p90 {pick(0.9):6.3f} ms   p99 {pick(0.99):6.3f} ms"


def range_reads(port: int, path: str, headers: dict, n: int) -> list[float]:
    """Seconds per 1 MiB Range GET over one keep-alive connection (after a warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    rng = random.Random(1)
    times = []
    for i in range(n + 50):
        start = rng.randrange(0, FILE_SIZE - MiB)
        t0 = time.perf_counter()
        conn.request("GET", path, headers={**headers, "Range": f"bytes={start}-{start + MiB - 1}"})
        r = conn.getresponse()
        body = r.read()
        t1 = time.perf_counter()
        assert r.status == 206 and len(body) == MiB, (r.status, len(body))
        if i >= 50:
            times.append(t1 - t0)
    conn.close()
    return times


def plain_reads(blob: str, n: int) -> list[float]:
    fd = os.open(blob, os.O_RDONLY)
    rng = random.Random(1)
    times = []
    for _ in range(n):
        start = rng.randrange(0, FILE_SIZE - MiB)
        t0 = time.perf_counter()
        data = os.pread(fd, MiB, start)
        times.append(time.perf_counter() - t0)
        assert len(data) == MiB
    os.close(fd)
    return times


def sse_latency(port: int, token: str, feed, n: int) -> list[float]:
    """Seconds from append (this process) to the event's arrival at an SSE client."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", f"/api/feeds/{feed.id}/main/events",
                 headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    assert r.status == 200
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    sub = feed.subfeed("main")

    def appender() -> None:
        time.sleep(0.3)
        for i in range(n):
            sent[i] = time.perf_counter()
            sub.append({"i": i})
            time.sleep(0.02)

    threading.Thread(target=appender, daemon=True).start()
    event = None
    while len(got) < n:
        line = r.fp.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "message":
            got[json.loads(line[5:])["seq"]] = time.perf_counter()
    conn.close()
    return [got[i] - sent[i] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import kachery_tasks as kachery

    with tempfile.TemporaryDirectory() as tmp:
        node_dir = Path(tmp) / "node"
        node = kachery.node(node_dir)
        src = Path(tmp) / "big.dat"
        src.write_bytes(os.urandom(FILE_SIZE))
        uri = node.store_file(src)
        sha = uri[len("sha256://"):][:64]
        blob = node.load_file(uri)
        feed = node.create_feed("bench")

        daemon = subprocess.Popen(
            [sys.executable, "-m", "kachery_tasks", "node", "start"], env={
                **env(), "KACHERY_TASKS_DIR": str(node_dir)},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        raw_port = free_port()
        raw = subprocess.Popen([sys.executable, "-c", RAW_APP, blob, str(raw_port)], env=env())
        try:
            daemon.stdout.readline()
            info = json.loads((node_dir / "daemon" / "http.json").read_text())
            token = (node_dir / "daemon" / "token").read_text()
            wait_port(info["port"])
            wait_port(raw_port)
            auth = {"Authorization": f"Bearer {token}"}
            print(f"1 MiB Range reads of a {FILE_SIZE // MiB} MiB stored file, "
                  f"{args.reads} each, loopback, keep-alive:")
            plain = plain_reads(blob, args.reads)
            print(f"  plain pread (this process)      {percentiles(plain)}")
            bare = range_reads(raw_port, "/", {}, args.reads)
            print(f"  bare uvicorn + pread            {percentiles(bare)}")
            api = range_reads(info["port"], f"/api/files/{sha}", auth, args.reads)
            print(f"  daemon GET /api/files (Range)   {percentiles(api)}   "
                  f"(target p50 < 2 ms: {'met' if statistics.median(api) < 0.002 else 'MISSED'})")
            lat = sse_latency(info["port"], token, feed, args.messages)
            print(f"feed append -> server-sent event at a client, {args.messages} messages:")
            print(f"  daemon /events                  {percentiles(lat)}   "
                  f"(target p50 < 50 ms: {'met' if statistics.median(lat) < 0.05 else 'MISSED'})")
        finally:
            for p in (daemon, raw):
                p.terminate()
                p.wait(30)


if __name__ == "__main__":
    main()
