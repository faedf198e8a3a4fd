"""Feed speed against its targets and against the physical limits of this machine.

Prints, each beside the raw Ed25519 rate of libsodium, the backend used (the
limit no single-threaded feed operation can beat, since every message is
signed once and verified on import), and of the `cryptography` package:

* appends, one at a time and through ``append_many`` (targets 20,000/s and 50,000/s);
* reads with verification: every signature (``verify="full"``: signatures
  checked by worker processes while the reader decodes; the first read pays
  for starting them; also with the workers off) and the default
  ``verify="chain"`` (every hash link, one signature per page);
* ``count()`` and reading the last 100 messages of a 1,000,000-message subfeed
  (target < 10 ms, independent of the length of the log);
* watch latency from an append in one process to a watcher in another
  (target < 50 ms), and the CPU an idle watcher costs.

Runs in a temporary node directory, removed at the end. ``--messages N``
changes the size of the long subfeed (default 1,000,000; about 40 s to build).

    python benchmarks/bench_feeds.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>9,.0f}/s"


def timed(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def raw_libsodium(n: int = 20_000) -> tuple[float, float] | None:
    """Raw Ed25519 rates of libsodium (PyNaCl), the backend KeyPair uses when installed."""
    try:
        from nacl import bindings
    except ImportError:
        return None
    pk, sk = bindings.crypto_sign_seed_keypair(b"k" * 32)
    msg = b'{"body":{"label":"good","unit":3},"feed":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
    msg += b'","seq":12345,"subfeed":"unit-labels","time":1700000000000}'
    t = time.perf_counter()
    for _ in range(n):
        signed = bindings.crypto_sign(msg, sk)
    sign = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n // 2):
        bindings.crypto_sign_open(signed, pk)
    return sign, (n // 2) / (time.perf_counter() - t)


def raw_ed25519(n: int = 20_000) -> tuple[float, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    msg = b'{"body":{"label":"good","unit":3},"feed":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
    msg += b'","seq":12345,"subfeed":"unit-labels","time":1700000000000}'
    t = time.perf_counter()
    for _ in range(n):
        sig = key.sign(msg)
    sign = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n // 2):
        pub.verify(sig, msg)
    verify = (n // 2) / (time.perf_counter() - t)
    return sign, verify


WATCHER = """
    import json, os, resource, sys, time
    from kachery_tasks import load_subfeed
    sub = load_subfeed(sys.argv[1])
    n = int(sys.argv[2])
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    c0, t0 = cpu(), time.monotonic()
    sub.watch(timeout=1.0)  # idle: nothing is appended during this second
    idle = (cpu() - c0) / (time.monotonic() - t0)
    print(json.dumps({"idle_cpu": idle}), flush=True)
    pos, lat = 0, []
    while pos < n:
        for m in sub.watch(pos, timeout=30):
            lat.append(time.monotonic() - m.body["t"])
            pos = m.seq + 1
    print(json.dumps({"latency": lat}), flush=True)
"""


def watch_latency(sub, n: int = 50) -> tuple[list[float], float]:
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WATCHER), sub.uri, str(n)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    idle = json.loads(proc.stdout.readline())["idle_cpu"]
    time.sleep(0.05)
    for _ in range(n):
        sub.append({"t": time.monotonic()})
        time.sleep(0.02)
    lat = json.loads(proc.stdout.readline())["latency"]
    proc.wait(timeout=30)
    return lat, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=1_000_000,
        help="length of the long subfeed (default 1,000,000)",
    )
    args = parser.parse_args()
    node = tempfile.mkdtemp(prefix="bench-feeds-")
    os.environ["KACHERY_TASKS_DIR"] = node
    sys.path.insert(0, str(REPO))
    try:
        run(args.messages)
    finally:
        shutil.rmtree(node, ignore_errors=True)


def run(long_n: int) -> None:
    import cryptography

    import kachery_tasks as kf

    t_start = time.perf_counter()
    print(
        f"feeds benchmark: Python {sys.version.split()[0]}, cryptography "
        f"{cryptography.__version__}, {os.cpu_count()} CPUs"
    )
    sign, verify = raw_ed25519()
    print(f"raw Ed25519 in cryptography: sign {sign:,.0f}/s, verify {verify:,.0f}/s")
    sodium = raw_libsodium()
    if sodium is not None:
        sign, verify = sodium
        print(f"raw Ed25519 in libsodium (used; the limit): sign {sign:,.0f}/s, "
              f"verify {verify:,.0f}/s")
    print()
    feed = kf.create_feed("bench")
    body = {"unit": 3, "label": "good", "score": 0.93}

    sub = feed.subfeed("one-at-a-time")
    n = 20_000
    for _ in range(500):  # warm up
        sub.append(body)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        sub.append(body)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"append, one at a time      {rate(n, dt)}   target 20,000/s: {n / dt / 20_000:4.2f}x"
        f"   raw sign {sign:,.0f}/s ({n / dt / sign:.0%} of it)   per CPU second "
        f"{n / cpu:,.0f}"
    )

    sub = feed.subfeed("many")
    n, batch = 50_000, 1000
    bodies = [body] * batch
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n // batch):
        sub.append_many(bodies)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"append_many (1000 a call)  {rate(n, dt)}   target 50,000/s: {n / dt / 50_000:4.2f}x"
        f"   raw sign {sign:,.0f}/s ({n / dt / sign:.0%} of it)   per CPU second "
        f"{n / cpu:,.0f}"
    )

    for mode, what in (
        ("full", "every signature; 1st read, starts the workers"),
        ("full", "every signature; workers running"),
        ("full", "every signature; KACHERY_TASKS_VERIFY_WORKERS=0"),
        ("chain", "every link + 1 sig/page"),
        ("none", "decode only"),
    ):
        if what.endswith("=0"):
            os.environ["KACHERY_TASKS_VERIFY_WORKERS"] = "0"
        m = 20_000 if mode == "full" else n
        t = time.perf_counter()
        got = sum(1 for _ in sub.read(0, m, verify=mode))
        dt = time.perf_counter() - t
        assert got == m
        target = f"target 30,000/s: {got / dt / 30_000:4.2f}x" if mode != "none" else " " * 21
        print(
            f"read, verify={mode + ',':<6}       {rate(got, dt)}   {target}"
            f"   raw verify {verify:,.0f}/s   ({what})"
        )
        os.environ.pop("KACHERY_TASKS_VERIFY_WORKERS", None)

    print()
    long = feed.subfeed("long")
    t = time.perf_counter()
    step = 10_000
    for start in range(0, long_n, step):
        long.append_many([{"i": i} for i in range(start, min(start + step, long_n))])
    dt = time.perf_counter() - t
    print(f"{long_n:,}-message subfeed built with append_many in {dt:.1f} s ({rate(long_n, dt)})")
    short = feed.subfeed("short")
    short.append_many(list(range(100)))
    assert long.count() == long_n
    c_long = timed(long.count, 1000)
    c_short = timed(short.count, 1000)
    print(
        f"  count()                          {c_long:7.3f} ms   (100-message subfeed: "
        f"{c_short:.3f} ms)   target < 10 ms"
    )
    for mode in ("chain", "full"):

        def last100(mode: str = mode) -> None:
            assert sum(1 for _ in long.read(long.count() - 100, verify=mode)) == 100

        def first100(mode: str = mode) -> None:
            assert sum(1 for _ in short.read(0, verify=mode)) == 100

        print(
            f"  count() + read last 100, {mode + ':':<6}  {timed(last100, 30):7.3f} ms   "
            f"(100-message subfeed: {timed(first100, 30):.3f} ms)   target < 10 ms"
        )

    print()
    lat, idle = watch_latency(feed.subfeed("watched"))
    lat_ms = sorted(x * 1000 for x in lat)
    print(f"watch latency, append here -> watcher in another process, {len(lat)} messages:")
    print(
        f"  median {statistics.median(lat_ms):.1f} ms, 95th pct "
        f"{lat_ms[int(0.95 * len(lat_ms)) - 1]:.1f} ms, max {lat_ms[-1]:.1f} ms   "
        f"target < 50 ms"
    )
    print(f"  idle watcher CPU: {idle:.1%} of one core (polls every 5 ms)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
