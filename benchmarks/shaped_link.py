"""A TCP proxy that behaves like a long link to a bucket: each connection is slow.

Every connection accepted on 127.0.0.1 is relayed to an upstream address
(fake-gcs-server, say) through a token bucket per connection and direction
(``--rate`` bytes per second, bursts of 64 KiB), and every piece is
delivered ``--latency`` seconds after it was read, in each direction. So one
stream can never go faster than the rate, as a single TCP stream to a
distant bucket cannot, while several connections together can: the cap is
per connection, not for the link. Data waiting for its delay is bounded (a
slow reader slows the sender, as TCP does).

The proxy runs in its own process (:class:`ShapedLink` starts it), so
relaying costs none of the measured program's GIL. It counts the bytes each
connection delivers, each way, in 100 ms slots; a line ``stats`` on its
stdin prints them as JSON and starts counting afresh. :func:`summarize`
turns that into the figures the bucket benchmark prints: how many
connections carried data at once, the fastest one second of any single
connection, the total.

Usage (standalone): python benchmarks/shaped_link.py UPSTREAM_PORT [--rate 25e6]
[--latency 0.02]; it prints the port it listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict

PIECE = 64 * 1024  # read size, and the token bucket's burst
SLOT = 0.1  # seconds per counting slot


class TokenBucket:
    """At most ``rate`` bytes per second on average, in bursts of at most PIECE.

    Taking more than there is runs into debt, slept off at once; a sleep that
    overshoots is made up by the tokens it earned (up to a burst), so the
    rate is reached, not just approached.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = float(PIECE)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(PIECE, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class Counter:
    """Since the last report, per way ("up", "down") and connection: the bytes
    delivered in each slot, and when the first and the last of them went."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[int, dict[int, int]]] = {
            way: defaultdict(lambda: defaultdict(int)) for way in ("up", "down")
        }
        self.spans: dict[str, dict[int, list[float]]] = {"up": {}, "down": {}}

    def add(self, way: str, conn: int, n: int) -> None:
        now = time.monotonic()
        self.slots[way][conn][int(now / SLOT)] += n
        self.spans[way].setdefault(conn, [now, now])[1] = now

    def report(self) -> str:
        doc = {way: {"slots": {c: dict(s) for c, s in self.slots[way].items()},
                     "spans": self.spans[way]} for way in ("up", "down")}
        for way in ("up", "down"):
            self.slots[way].clear()
            self.spans[way] = {}
        return json.dumps(doc)


async def pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float, latency: float,
    count=None,
) -> None:
    """Relay one direction: shaped by a token bucket, each piece delayed by ``latency``."""
    loop = asyncio.get_running_loop()
    bucket = TokenBucket(rate)
    # What may wait for its delay: the rate times the latency, and a few pieces more.
    queue: asyncio.Queue = asyncio.Queue(maxsize=max(4, math.ceil(rate * latency / PIECE) + 2))

    async def deliver() -> None:
        while True:
            at, data = await queue.get()
            if data is None:
                break
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
            if count is not None:
                count(len(data))
        if writer.can_write_eof():
            writer.write_eof()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(PIECE):
            await bucket.take(len(data))
            await queue.put((loop.time() + latency, data))
        await queue.put((0.0, None))
        await delivering
    finally:
        delivering.cancel()  # the connection broke: stop delivering


async def serve(upstream_port: int, rate: float, latency: float) -> None:
    counter = Counter()
    ids = iter(range(1, 10**9))

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = next(ids)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return
        tasks = [
            asyncio.create_task(
                pump(client_r, up_w, rate, latency, lambda n: counter.add("up", conn, n))
            ),
            asyncio.create_task(
                pump(up_r, client_w, rate, latency, lambda n: counter.add("down", conn, n))
            ),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_w, up_w):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with server:
        while line := await commands.readline():
            if line.strip() == b"stats":
                print(counter.report(), flush=True)


class ShapedLink:
    """The proxy in a child process: ``with ShapedLink(port, rate, latency) as link: link.url``."""

    def __init__(self, upstream_port: int, rate: float, latency: float) -> None:
        self.args = [sys.executable, os.path.abspath(__file__), str(upstream_port),
                     "--rate", str(rate), "--latency", str(latency)]
        self.rate, self.latency = rate, latency
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> ShapedLink:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        return self

    def stats(self) -> dict:
        """The counts since the last call (and start counting afresh)."""
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(10)


def summarize(stats: dict, way: str) -> dict:
    """For one way ("up" or "down"): how many connections carried data, how many
    at once (the most whose spans from first to last byte overlap), the fastest
    second of any one connection (bytes/s), and the bytes delivered in all."""
    fastest = total = 0
    window = round(1 / SLOT)
    for slots in stats[way]["slots"].values():
        counts = {int(k): v for k, v in slots.items()}
        total += sum(counts.values())
        for first in counts:
            fastest = max(fastest, sum(counts.get(first + i, 0) for i in range(window)))
    edges = sorted(
        (t, step) for first, last in stats[way]["spans"].values()
        for t, step in ((first, 1), (last, -1))
    )
    at_once = concurrent = 0
    for _, step in edges:
        at_once += step
        concurrent = max(concurrent, at_once)
    return {"connections": len(stats[way]["spans"]), "concurrent": concurrent,
            "fastest_stream": fastest, "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upstream_port", type=int)
    ap.add_argument("--rate", type=float, default=25e6, help="bytes/s per connection and way")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds, each way")
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.upstream_port, args.rate, args.latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
