"""Pub/sub speed: the embedded broker, the raw ``ably`` SDK and our adapter, side by side.

The broker runs in its own process (``kachery-tasks broker start``), as it
would in use. Prints:

* publish-to-receive latency on loopback (median of many messages sent one
  at a time): the raw SDK beside the adapter (sync API, callbacks on their
  thread), and their ratio (target: adapter at most 1.5x raw); first with
  publisher and subscriber in one process (raw: two clients on one asyncio
  loop), then with the subscriber in another process, as between two nodes;
* fan-out: messages delivered per second to each of 3 subscribers on one
  channel (target: at least 5,000/s each), with the subscribers being raw
  websocket clients (the broker's own capacity), raw SDK clients and adapter
  clients; the publishers are raw websocket clients that pipeline their
  messages, or SDK clients with up to 200 unacknowledged publishes each;
* the CPU each message costs a subscriber, a publisher and the broker
  (per message delivered), each measured in its own process, which says
  which of them limits the rate on this machine.

    python benchmarks/bench_broker.py [--latency N] [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SDK_OPTIONS = {"tls": False, "use_binary_protocol": False, "fallback_hosts": []}


def start_broker() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kachery_tasks", "broker", "start", "--port", "0", "--quiet",
         "--open"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline()
    url = line.split()[3]
    return proc, url


def sdk_client(url: str, client_id: str):
    from ably import AblyRealtime
    from ably.types.tokendetails import TokenDetails

    async def token(_params):
        return TokenDetails(token="bench", client_id=client_id)

    return AblyRealtime(client_id=client_id, auth_callback=token,
                        endpoint=url[len("ws://"):], **SDK_OPTIONS)


async def connected(client) -> None:
    if client.connection.state != "connected":
        await client.connection.once_async("connected")


# -- latency --------------------------------------------------------------------


async def raw_latency(url: str, n: int) -> list[float]:
    pub, sub = sdk_client(url, "pub"), sdk_client(url, "sub")
    await connected(pub)
    await connected(sub)
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future] = []

    def on_message(_message) -> None:
        waiter[0].set_result(time.perf_counter())

    await sub.channels.get("lat").subscribe(on_message)
    channel = pub.channels.get("lat")
    await channel.publish("warm", "x")
    await asyncio.sleep(0.2)
    times = []
    for _ in range(n):
        waiter[:] = [loop.create_future()]
        t0 = time.perf_counter()
        await channel.publish("ping", "x")
        t1 = await waiter[0]
        times.append(t1 - t0)
    await pub.close()
    await sub.close()
    return times


def adapter_latency(url: str, n: int) -> list[float]:
    from kachery_tasks.network.pubsub import connect_pubsub

    pub, sub = connect_pubsub(url, "pub"), connect_pubsub(url, "sub")
    received = threading.Event()
    stamp = [0.0]

    def on_message(_message) -> None:
        stamp[0] = time.perf_counter()
        received.set()

    sub.subscribe("lat", on_message)
    pub.publish("lat", "warm", "x")
    time.sleep(0.2)
    times = []
    for _ in range(n):
        received.clear()
        t0 = time.perf_counter()
        pub.publish("lat", "ping", "x")
        received.wait(10)
        times.append(stamp[0] - t0)
    pub.close()
    sub.close()
    return times


def latency(url: str, n: int, rounds: int = 5) -> None:
    raw: list[float] = []
    ours: list[float] = []
    for _ in range(rounds):  # alternate, so both see the same machine load
        raw += asyncio.run(raw_latency(url, n // rounds))
        ours += adapter_latency(url, n // rounds)
    r, a = statistics.median(raw) * 1e3, statistics.median(ours) * 1e3
    print(f"latency, publish to receive, publisher and subscriber in one process "
          f"(median of {len(raw)}):")
    print(f"  raw ably SDK      {r:7.3f} ms")
    print(f"  PubSub adapter    {a:7.3f} ms   ratio {a / r:.2f}x (target <= 1.5x)")
    raw, ours = [], []
    for _ in range(rounds):
        raw += latency_across(url, "sdk", n // rounds)
        ours += latency_across(url, "adapter", n // rounds)
    r, a = statistics.median(raw) * 1e3, statistics.median(ours) * 1e3
    print(f"latency, publish to receive, subscriber in another process, as between nodes "
          f"(median of {len(raw)}):")
    print(f"  raw ably SDK      {r:7.3f} ms")
    print(f"  PubSub adapter    {a:7.3f} ms   ratio {a / r:.2f}x (target <= 1.5x)")


def latency_subscriber(kind: str, url: str, channel: str, n: int, ready, result) -> None:
    """Receives ``n`` messages whose data is the publisher's perf_counter; returns the delays.

    perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process.
    """
    delays: list[float] = []
    if kind == "adapter":
        from kachery_tasks.network.pubsub import connect_pubsub

        done = threading.Event()

        def on_message(message) -> None:
            delays.append(time.perf_counter() - float(message.data))
            if len(delays) == n:
                done.set()

        client = connect_pubsub(url, "sub")
        client.subscribe(channel, on_message)
        ready.set()
        done.wait(600)
        client.close()
    else:
        async def run() -> None:
            client = sdk_client(url, "sub")
            await connected(client)
            done = asyncio.get_running_loop().create_future()

            def on_message(message) -> None:
                delays.append(time.perf_counter() - float(message.data))
                if len(delays) == n and not done.done():
                    done.set_result(None)

            await client.channels.get(channel).subscribe(on_message)
            ready.set()
            await done
            await client.close()

        asyncio.run(run())
    result.put(delays)


def latency_across(url: str, kind: str, n: int, gap: float = 0.002) -> list[float]:
    """One message every ``gap`` s from this process, received in another; the delays."""
    ctx = mp.get_context("spawn")
    channel = f"lat-{kind}-{time.monotonic_ns()}"
    ready, result = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=latency_subscriber, args=(kind, url, channel, n, ready, result))
    proc.start()
    ready.wait(60)
    if kind == "adapter":
        from kachery_tasks.network.pubsub import connect_pubsub

        with connect_pubsub(url, "pub") as client:
            for _ in range(n):
                client.publish(channel, "t", repr(time.perf_counter()))
                time.sleep(gap)
    else:
        async def run() -> None:
            client = sdk_client(url, "pub")
            await connected(client)
            ch = client.channels.get(channel)
            for _ in range(n):
                await ch.publish("t", repr(time.perf_counter()))
                await asyncio.sleep(gap)
            await client.close()

        asyncio.run(run())
    delays = result.get(timeout=600)
    proc.join(60)
    return delays


# -- fan-out -------------------------------------------------------------------------


async def ws_subscriber(url: str, channel: str, total: int, ready, result) -> None:
    """A minimal protocol client: connect, attach, count messages until ``total``."""
    from websockets.asyncio.client import connect

    async with connect(f"{url}/?clientId=s&v=5", compression=None, max_size=None) as ws:
        await ws.recv()  # CONNECTED
        await ws.send(json.dumps({"action": 10, "channel": channel}))
        while json.loads(await ws.recv())["action"] != 11:
            pass
        ready.set()
        count, t0, c0 = 0, None, 0.0
        while count < total:
            frame = json.loads(await ws.recv())
            if frame["action"] == 15:
                if t0 is None:
                    t0, c0 = time.perf_counter(), cpu()
                count += len(frame["messages"])
        result.put(("ws", count, time.perf_counter() - t0, cpu() - c0))


async def sdk_subscriber(url: str, channel: str, total: int, ready, result) -> None:
    client = sdk_client(url, "s")
    await connected(client)
    done = asyncio.get_running_loop().create_future()
    state = {"count": 0, "t0": None, "c0": 0.0}

    def on_message(_message) -> None:
        if state["t0"] is None:
            state["t0"], state["c0"] = time.perf_counter(), cpu()
        state["count"] += 1
        if state["count"] == total and not done.done():
            done.set_result(time.perf_counter())

    await client.channels.get(channel).subscribe(on_message)
    ready.set()
    t1 = await done
    result.put(("sdk", state["count"], t1 - state["t0"], cpu() - state["c0"]))
    await client.close()


def adapter_subscriber(url: str, channel: str, total: int, ready, result) -> None:
    from kachery_tasks.network.pubsub import connect_pubsub

    client = connect_pubsub(url, "s")
    done = threading.Event()
    state = {"count": 0, "t0": None, "t1": None, "c0": 0.0}

    def on_message(_message) -> None:
        if state["t0"] is None:
            state["t0"], state["c0"] = time.perf_counter(), cpu()
        state["count"] += 1
        if state["count"] == total:
            state["t1"] = time.perf_counter()
            done.set()

    client.subscribe(channel, on_message)
    ready.set()
    done.wait(600)
    result.put(("adapter", state["count"], state["t1"] - state["t0"], cpu() - state["c0"]))
    client.close()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def subscriber_main(kind: str, url: str, channel: str, total: int, ready, result) -> None:
    if kind == "adapter":
        adapter_subscriber(url, channel, total, ready, result)
    else:
        fn = ws_subscriber if kind == "ws" else sdk_subscriber
        asyncio.run(fn(url, channel, total, ready, result))


async def ws_publisher(url: str, channel: str, count: int) -> None:
    """Pipelined publishing over a raw websocket; waits for the last ACK."""
    from websockets.asyncio.client import connect

    async with connect(f"{url}/?clientId=p&v=5", compression=None) as ws:
        await ws.recv()
        acked = 0

        async def read_acks() -> None:
            nonlocal acked
            while acked < count:
                frame = json.loads(await ws.recv())
                if frame["action"] == 1:
                    acked += frame.get("count", 1)

        reader = asyncio.create_task(read_acks())
        for serial in range(count):
            await ws.send(json.dumps({"action": 15, "channel": channel, "msgSerial": serial,
                                      "messages": [{"name": "m", "data": f"message {serial}"}]}))
            if serial - acked > 1000:
                await asyncio.sleep(0.001)
        await reader


async def sdk_publisher(url: str, channel: str, count: int, window: int = 200) -> float:
    """Publishes ``count`` messages; returns the CPU seconds spent doing so."""
    client = sdk_client(url, f"p{os.getpid()}")
    await connected(client)
    ch = client.channels.get(channel)
    pending: set[asyncio.Task] = set()
    c0 = cpu()
    for i in range(count):
        pending.add(asyncio.create_task(ch.publish("m", f"message {i}")))
        if len(pending) >= window:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)
    spent = cpu() - c0
    await client.close()
    return spent


def publisher_main(kind: str, url: str, channel: str, count: int, result) -> None:
    fn = ws_publisher if kind == "ws" else sdk_publisher
    c0 = cpu()
    spent = asyncio.run(fn(url, channel, count))
    result.put(("publisher", count, 0.0, spent if spent is not None else cpu() - c0))


def process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by process ``pid`` (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fanout(url: str, sub_kind: str, pub_kind: str, publishers: int, messages: int,
           broker_pid: int) -> tuple[list, list, float | None]:
    ctx = mp.get_context("spawn")
    channel = f"fan-{sub_kind}-{pub_kind}-{publishers}-{time.monotonic_ns()}"
    result = ctx.Queue()
    per_publisher = messages // publishers
    total = per_publisher * publishers
    readies = [ctx.Event() for _ in range(3)]
    subs = [ctx.Process(target=subscriber_main, args=(sub_kind, url, channel, total, r, result))
            for r in readies]
    for p in subs:
        p.start()
    for r in readies:
        r.wait(60)
    pubs = [ctx.Process(target=publisher_main,
                        args=(pub_kind, url, channel, per_publisher, result))
            for _ in range(publishers)]
    b0 = process_cpu(broker_pid)
    for p in pubs:
        p.start()
    out = [result.get(timeout=600) for _ in range(len(subs) + len(pubs))]
    b1 = process_cpu(broker_pid)
    for p in pubs + subs:
        p.join(60)
    received = [o for o in out if o[0] != "publisher"]
    published = [o for o in out if o[0] == "publisher"]
    broker_cpu = None if b0 is None or b1 is None else b1 - b0
    return received, published, broker_cpu


def report_fanout(url: str, messages: int, broker_pid: int) -> None:
    print(f"fan-out to 3 subscribers on one channel ({messages} messages; per subscriber;"
          " CPU per message published or delivered):")
    cases = [("ws", "ws", 1), ("ws", "ws", 2), ("sdk", "ws", 1), ("sdk", "sdk", 2),
             ("adapter", "ws", 1), ("adapter", "sdk", 2)]
    for sub_kind, pub_kind, publishers in cases:
        received, published, broker_cpu = fanout(url, sub_kind, pub_kind, publishers,
                                                  messages, broker_pid)
        rates = [count / seconds for _, count, seconds, _ in received]
        sub_cpu = statistics.mean(c / count for _, count, _, c in received) * 1e6
        pub_cpu = sum(c for *_, c in published) / sum(n for _, n, *_ in published) * 1e6
        delivered = sum(count for _, count, _, _ in received)
        broker = "n/a" if broker_cpu is None else f"{broker_cpu / delivered * 1e6:4.1f} us"
        print(f"  subscribers {sub_kind:8s} publishers {publishers} x {pub_kind:4s}: "
              f"{min(rates):>8,.0f} msg/s (slowest) {statistics.mean(rates):>8,.0f} (mean)"
              f"  CPU: subscriber {sub_cpu:5.1f} us, publisher {pub_cpu:5.1f} us,"
              f" broker {broker}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=int, default=1000, help="round trips per client kind")
    parser.add_argument("--messages", type=int, default=50_000, help="messages per fan-out run")
    args = parser.parse_args()
    proc, url = start_broker()
    try:
        print(f"broker: {url} (own process); {os.cpu_count()} CPUs")
        latency(url, args.latency)
        report_fanout(url, args.messages, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
