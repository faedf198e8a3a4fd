"""10,000 tiny tasks on a 2-worker Dask LocalCluster: kachery vs. plain ``client.map``.

* All misses: ``inc.map(range(n))`` computes, stores and records every result
  on the workers (target: at most 1.3x the time of ``client.map`` of the same
  function).
* All hits: the same call again; every lookup happens before submission, so
  nothing reaches the cluster (target: at least 20x faster than
  ``client.map``).

The cluster is ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)``; the workers share this process's node directory. Both
sides run the same function from an importable module
(``_bench_task_defs.py``), as a project's tasks would be.

Usage: python benchmarks/bench_task_dask.py [--n 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kt-bench-dask-", dir=os.environ.get("BENCH_DIR", "/tmp")))
    os.environ["KACHERY_TASKS_DIR"] = str(work / "node")
    try:
        run(args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(n: int) -> None:
    import logging

    import distributed
    from _bench_task_defs import inc, inc_plain

    from kachery_tasks.runtime import dask, gather

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with dask(n_workers=2, threads_per_worker=1) as executor:
        client = executor.client
        client.gather(client.map(inc_plain, range(-200, 0)))  # warm up the workers
        gather(inc.map(range(-200, 0)))

        t = time.perf_counter()
        plain = client.gather(client.map(inc_plain, range(n), pure=False))
        t_plain = time.perf_counter() - t

        t = time.perf_counter()
        misses = gather(inc.map(range(n)))
        t_miss = time.perf_counter() - t
        assert misses == plain

        t = time.perf_counter()
        hits = gather(inc.map(range(n)))
        t_hit = time.perf_counter() - t
        assert hits == plain
        hits_again = gather(inc.map(range(n)))  # now from this process's memo
        assert hits_again == plain
        t = time.perf_counter()
        gather(inc.map(range(n)))
        t_memo = time.perf_counter() - t

    print(f"{n} tiny tasks, LocalCluster(n_workers=2, threads_per_worker=1, processes=True), "
          f"dask/distributed {distributed.__version__}")
    print(f"  plain client.map          {t_plain:7.2f} s   {t_plain / n * 1e6:7.0f} us/task")
    print(f"  kachery map, all misses   {t_miss:7.2f} s   {t_miss / n * 1e6:7.0f} us/task   "
          f"{t_miss / t_plain:5.2f}x the time of client.map")
    print(f"  kachery map, all hits     {t_hit:7.2f} s   {t_hit / n * 1e6:7.0f} us/task   "
          f"{t_plain / t_hit:5.1f}x faster than client.map (loaded from the store)")
    print(f"  kachery map, memo hits    {t_memo:7.2f} s   {t_memo / n * 1e6:7.0f} us/task   "
          f"{t_plain / t_memo:5.1f}x faster than client.map (already loaded here)")


if __name__ == "__main__":
    main()
