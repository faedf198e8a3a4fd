"""Cache hits of a pure task beside joblib.Memory and beside xxh3's raw speed, in one run.

* A hit with small arguments (an int, a float, a str): microseconds per call,
  ours vs. ``joblib.Memory`` on the same function (target: under 10 us, and
  at least 6x faster than joblib). Two result types: a float (served as the
  same immutable object) and a small list (a JSON container: parsed afresh
  for every hit so callers cannot corrupt the cache).
* A hit with a 128 MiB float64 array argument (target: at least 15x faster
  than joblib), with the GB/s of argument hashing beside the raw speed of
  xxh3-128 on the same buffer -- the limit.

Usage: python benchmarks/bench_task_hits.py [--array-mib 128]
(joblib comes from ``pip install -e '.[bench]'``.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def per_call(fn, n: int, repeat: int = 5) -> float:
    """Best over ``repeat`` rounds of the mean seconds per call of ``fn()``, n calls a round."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--array-mib", type=int, default=128)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kt-bench-hits-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    os.environ["KACHERY_TASKS_DIR"] = str(work / "node")
    try:
        run(work, args.array_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, array_mib: int) -> None:
    import joblib
    import numpy as np
    import xxhash

    from kachery_tasks.runtime import pure

    def small_float(a: int, b: float, name: str) -> float:
        return a * b + len(name)

    def small_list(a: int, b: float, name: str) -> list:
        return [a, b, name]

    def array_sum(x: np.ndarray) -> float:
        return float(x.sum())

    memory = joblib.Memory(location=str(work / "joblib"), verbose=0)
    print(f"python task-cache hits; joblib {joblib.__version__}, xxhash {xxhash.VERSION}")
    print()
    print("small arguments (3, 2.5, 'probe-a'):")
    for fn in (small_float, small_list):
        ours = pure(name=f"bench.{fn.__name__}")(fn)
        theirs = memory.cache(fn)
        assert ours(3, 2.5, "probe-a") == theirs(3, 2.5, "probe-a")  # both compute once
        t_ours = per_call(lambda ours=ours: ours(3, 2.5, "probe-a"), 20_000)
        t_joblib = per_call(lambda theirs=theirs: theirs(3, 2.5, "probe-a"), 1_000)
        t_id = per_call(lambda ours=ours: ours.task_id(3, 2.5, "probe-a"), 20_000)
        print(f"  returns {fn.__annotations__['return']:<5}  kachery {t_ours * 1e6:6.2f} us/hit "
              f"(task id alone {t_id * 1e6:5.2f} us)   joblib {t_joblib * 1e6:7.1f} us/hit   "
              f"{t_joblib / t_ours:5.1f}x faster")

    print()
    nbytes = array_mib * 2**20
    x = np.random.default_rng(0).random(nbytes // 8)
    print(f"one {array_mib} MiB float64 array argument:")
    ours = pure(name="bench.array_sum")(array_sum)
    theirs = memory.cache(array_sum)
    assert ours(x) == theirs(x)
    t_ours = per_call(lambda: ours(x), 20, repeat=3)
    t_joblib = per_call(lambda: theirs(x), 3, repeat=2)
    t_raw = per_call(lambda: xxhash.xxh3_128_digest(x), 20, repeat=3)
    print(f"  kachery {t_ours * 1e3:7.2f} ms/hit = {nbytes / t_ours / 1e9:5.2f} GB/s of argument "
          f"hashing (xxh3-128 alone: {t_raw * 1e3:.2f} ms = {nbytes / t_raw / 1e9:.2f} GB/s, "
          f"{100 * t_raw / t_ours:.0f}% of the limit)")
    print(f"  joblib  {t_joblib * 1e3:7.2f} ms/hit = {nbytes / t_joblib / 1e9:5.2f} GB/s   "
          f"{t_joblib / t_ours:5.1f}x slower than kachery")


if __name__ == "__main__":
    main()
