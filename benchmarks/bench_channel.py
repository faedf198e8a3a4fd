"""Channel speed: files asked of a member and live feed messages, beside the raw SDK.

One broker process (``kachery-tasks broker start --open``, started by
``bench_broker``) serves everything, so the numbers compare on the same
broker and machine run. Node A runs its daemon (``kachery-tasks node
start``) in a process of its own; this process is node B asking (its
``channel:`` remote) and node A writing (its store and feeds). Prints:

* a small file (1 KiB, new each time) that only A holds, requested by B
  and loaded (verified, stored) on loopback: median and 90th percentile
  (target: median under 50 ms), inline in the answer (the default) and
  through the bucket (``--inline-max 0``), the bucket a file:// directory or
  (``--gcs``) fake-gcs-server on loopback;
* a feed message appended on A (in this process) seen by a ``watch`` on B
  (in this process, reading B's database, which B's daemon, another
  process, fills): median and 90th percentile (target: median under 20 ms);
* from ``bench_broker``, in the same run: publish-to-receive latency of the
  raw SDK and of the adapter, with their ratio (target <= 1.5x), and the
  broker's fan-out to 3 adapter subscribers (target >= 5,000 messages/s);
* the cost of checking a signed channel message on receipt (parse, verify,
  membership, nonce): how many a receiver can take per second.

    python benchmarks/bench_channel.py [--gcs] [--requests N] [--feed N] [--latency N]
                                       [--messages N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_broker  # noqa: E402


def env_for(path: Path) -> dict[str, str]:
    return {**os.environ, "KACHERY_TASKS_DIR": str(path),
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_daemon(path: Path, *options: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "kachery_tasks", "node", "start", "--quiet",
                             *options], env=env_for(path), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("node daemon of "), line
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def make_lab(root: Path, url: str, bucket_url: str, names: tuple[str, ...] = ("a", "b")):
    """Channel lab owned by the first node named, the others members; every node with every
    permission and the channel as its remote. Returns the nodes, in order."""
    from kachery_tasks.config import init_node_dir
    from kachery_tasks.keys import node_keypair
    from kachery_tasks.network.channels import ChannelStore, Invite
    from kachery_tasks.network.channels.config import PERMISSIONS
    from kachery_tasks.network.channels.membership import add_node, change_members, create_channel
    from kachery_tasks.network.channels.remote import channel_url
    from kachery_tasks.nodes import Node

    owner_dir = init_node_dir(root / names[0])
    lab = create_channel(owner_dir, "lab", bucket_url, url, names[0])
    nodes = [Node(root / names[0])]
    nodes[0].add_remote_url(channel_url(lab))
    for name in names[1:]:
        node_dir = init_node_dir(root / name)
        config = change_members(lab, add_node(node_keypair(node_dir).public_hex, name,
                                              frozenset(PERMISSIONS)))
        joined = ChannelStore(node_dir).add(Invite.of(config), config)
        nodes.append(Node(root / name))
        nodes[-1].add_remote_url(channel_url(joined))
    return nodes


def summary(times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[int(len(ms) * 0.9)]
    return f"median {statistics.median(ms):6.2f} ms, p90 {p90:6.2f} ms (n={len(ms)})"


def file_requests(a, b, n: int) -> list[float]:
    remote = b.remotes[-1]
    remote.session()  # connected once per process, not per request
    times = []
    for i in range(n + 5):
        uri = a.store_bytes(os.urandom(1024))
        t0 = time.perf_counter()
        remote.fetch_content(b.store, uri)
        if i >= 5:  # warm-up
            times.append(time.perf_counter() - t0)
    return times


def feed_messages(a, b, n: int) -> list[float]:
    feed = a.create_feed("bench")
    feed.subfeed("s").append({"i": 0})
    mine = b.load_feed(feed.uri).subfeed("s")  # asked live; b's daemon follows it from now
    count = mine.count()
    deadline = time.monotonic() + 30
    while True:  # until a's daemon knows b's daemon follows the feed
        feed.subfeed("s").append({"i": count})
        got = mine.watch(count, timeout=0.5)
        count += 1
        if got or time.monotonic() > deadline:
            break
    mine.watch(count - 1, timeout=5)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        feed.subfeed("s").append({"i": count})
        got = mine.watch(count, timeout=5)
        t1 = time.perf_counter()
        assert got, "a feed message did not arrive within 5 s"
        count = got[-1].seq + 1
        times.append(t1 - t0)
        time.sleep(0.005)
    return times


def check_cost(n: int = 5000) -> float:
    """Seconds to check one signed channel message on receipt."""
    from kachery_tasks.keys import KeyPair
    from kachery_tasks.network.channels import MessageChecker, seal_message
    from kachery_tasks.network.channels.config import (
        PERMISSIONS,
        MemberInfo,
        make_config,
        seal_config,
    )

    owner, sender = KeyPair.generate(), KeyPair.generate()
    config = seal_config(make_config("lab", owner.public_hex, 1, "file:///x", "ws://h:1",
                                     int(time.time()), {sender.public_hex: MemberInfo(
                                         "s", frozenset(PERMISSIONS))}), owner)
    envelopes = [seal_message("request_file", config.pubsub_name,
                              {"uri": "sha256://" + "0" * 64, "request": "0" * 32},
                              sender).to_dict() for _ in range(n)]
    checker = MessageChecker(config)
    t0 = time.perf_counter()
    for e in envelopes:
        assert checker.check(e) is not None
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="small-file requests")
    parser.add_argument("--feed", type=int, default=200, help="feed messages")
    parser.add_argument("--latency", type=int, default=1000, help="SDK round trips per kind")
    parser.add_argument("--messages", type=int, default=20_000, help="fan-out messages")
    parser.add_argument("--gcs", action="store_true",
                        help="the channel's bucket in fake-gcs-server (gs://) instead of file://")
    args = parser.parse_args()
    os.environ["KACHERY_TASKS_PROGRESS"] = "0"
    broker, url = bench_broker.start_broker()
    root = Path(tempfile.mkdtemp(prefix="bench-channel-"))
    daemons: list[subprocess.Popen] = []
    emulator = None
    try:
        print(f"broker: {url} (own process); {os.cpu_count()} CPUs")
        bucket_url = f"file://{root}/bucket"
        if args.gcs:
            from tests.gcs_emulator import Emulator

            emulator = Emulator(root / "gcs")
            emulator.start()
            emulator.create_bucket("bench")
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
            bucket_url = "gs://bench/kt"
        print(f"the channel's bucket: {bucket_url}")
        a, b = make_lab(root, url, bucket_url)
        daemon_a = start_daemon(root / "a")
        daemons.append(daemon_a)
        print("small file (1 KiB) held only by A, requested and loaded by B:")
        print(f"  inline in the answer      {summary(file_requests(a, b, args.requests))}")
        stop(daemons.pop())
        daemons.append(start_daemon(root / "a", "--inline-max", "0"))
        print(f"  through the bucket        {summary(file_requests(a, b, args.requests))}")
        stop(daemons.pop())
        daemons.append(start_daemon(root / "a"))
        daemons.append(start_daemon(root / "b"))
        print("feed message appended on A, seen by a watch on B (B's daemon imports it):")
        print(f"  append to watch           {summary(feed_messages(a, b, args.feed))}")
        cost = check_cost()
        print(f"checking a signed channel message on receipt: {cost * 1e6:.0f} us "
              f"({1 / cost:,.0f} messages/s per receiving process)")
        for d in daemons:
            stop(d)
        daemons.clear()
        b.close()
        bench_broker.latency(url, args.latency)
        print(f"broker fan-out to 3 subscribers ({args.messages} messages, each subscriber):")
        for sub_kind, pub_kind, publishers in (("adapter", "ws", 1), ("adapter", "sdk", 2)):
            received, _, _ = bench_broker.fanout(url, sub_kind, pub_kind, publishers,
                                                 args.messages, broker.pid)
            rates = [count / seconds for _, count, seconds, _ in received]
            print(f"  {sub_kind} subscribers, {publishers} x {pub_kind} publisher(s): "
                  f"{min(rates):>8,.0f} msg/s (slowest subscriber; target >= 5,000)")
    finally:
        with contextlib.ExitStack() as cleanup:  # last in, first out; each step runs even
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)  # if one before failed
            if emulator is not None:
                cleanup.callback(emulator.stop)
            cleanup.callback(broker.wait, 30)
            cleanup.callback(broker.terminate)
            for d in daemons:
                cleanup.callback(stop, d)


if __name__ == "__main__":
    main()
