"""The same 3-step pipeline in kachery-tasks and in redun, cold and warm.

generate (a 1M-sample noisy signal) -> smooth (moving average) -> summarize
(a few statistics). Cold: an empty cache. Warm: the same call again, in the
same process; for kachery also "warm, new process" (the in-process memo
emptied, so results come from the records database and the store).

Usage: python benchmarks/bench_vs_redun.py [--n 1000000]
(redun comes from ``pip install -e '.[bench]'``.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

redun_namespace = "kachery_bench"


def generate(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(np.linspace(0, 20 * np.pi, n)) + rng.normal(0, 0.5, n)


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    return np.convolve(x, np.ones(width) / width, mode="same")


def summarize(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std()), "max": float(x.max())}


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_kachery(n: int) -> dict[str, float]:
    from kachery_tasks.runtime import cache, pure

    gen_t = pure(name="bench.generate")(generate)
    smooth_t = pure(name="bench.smooth")(smooth)
    summ_t = pure(name="bench.summarize")(summarize)

    def pipeline():
        return summ_t(smooth_t(gen_t(n, 0), 25))

    cold, a = timed(pipeline)
    warm, b = timed(pipeline)
    cache.current().clear()
    new_process, c = timed(pipeline)
    assert a == b == c
    return {"cold": cold, "warm": warm, "warm, new process": new_process, "result": a}


def bench_redun(n: int, work: Path) -> dict[str, float]:
    import logging

    from redun import Scheduler, task

    logging.getLogger("redun").setLevel(logging.ERROR)
    gen_t = task(name="generate")(generate)
    smooth_t = task(name="smooth")(smooth)
    summ_t = task(name="summarize")(summarize)

    @task(name="pipeline")
    def pipeline(n: int):
        return summ_t(smooth_t(gen_t(n, 0), 25))

    config = {"backend": {"db_uri": f"sqlite:///{work}/redun.db"}}
    scheduler = Scheduler(config=config)
    scheduler.load()
    cold, a = timed(lambda: scheduler.run(pipeline(n)))
    warm, b = timed(lambda: scheduler.run(pipeline(n)))
    scheduler2 = Scheduler(config=config)
    scheduler2.load()
    new_scheduler, c = timed(lambda: scheduler2.run(pipeline(n)))
    assert a == b == c
    return {"cold": cold, "warm": warm, "warm, new scheduler": new_scheduler, "result": a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kt-bench-redun-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    os.environ["KACHERY_TASKS_DIR"] = str(work / "node")
    try:
        import redun

        bare, _ = timed(lambda: summarize(smooth(generate(args.n, 0), 25)))
        ours = bench_kachery(args.n)
        theirs = bench_redun(args.n, work)
        assert ours["result"] == theirs["result"]
        print(f"3-step pipeline on {args.n} samples ({args.n * 8 / 2**20:.0f} MiB arrays); "
              f"plain Python without caching: {bare * 1e3:.1f} ms; redun {redun.__version__}")
        print(f"  kachery-tasks  cold {ours['cold'] * 1e3:8.1f} ms   warm "
              f"{ours['warm'] * 1e3:8.3f} ms   warm, new process "
              f"{ours['warm, new process'] * 1e3:7.2f} ms")
        print(f"  redun          cold {theirs['cold'] * 1e3:8.1f} ms   warm "
              f"{theirs['warm'] * 1e3:8.3f} ms   warm, new scheduler "
              f"{theirs['warm, new scheduler'] * 1e3:7.2f} ms")
        print(f"  kachery is {theirs['cold'] / ours['cold']:.1f}x faster cold and "
              f"{theirs['warm'] / ours['warm']:.0f}x faster warm")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
