"""The task of bench_remote_tasks.py, importable by provider daemons and Dask workers.

Every run of ``tiny_plain`` (through kachery or through a plain Dask client) appends
a line ``<x>`` to the file ``<pid>`` of its process in the directory named by
``$KT_BENCH_RUNS`` (when set), so the benchmark counts how many times each argument
was computed. An append costs the run a few microseconds; creating a file per run
cost it more than the rest of the task on some disks (0.7 ms of CPU on the VM the
figures in docs/remote-tasks.md come from), in both columns of the comparison.
"""

from __future__ import annotations

import os

from kachery_tasks.runtime import pure

RUNS_ENV = "KT_BENCH_RUNS"


def _ran(x: int) -> None:
    runs = os.environ.get(RUNS_ENV)
    if runs:
        with open(os.path.join(runs, str(os.getpid())), "a") as f:
            f.write(f"{x}\n")  # one write(2) with O_APPEND: lines of threads do not mix


def tiny_plain(x: int) -> int:
    _ran(x)
    return x + 1


@pure(name="bench.remote.tiny")
def tiny(x: int) -> int:
    """``tiny_plain`` as a task, decorated as in a lab's module (sent to workers by name)."""
    _ran(x)
    return x + 1
