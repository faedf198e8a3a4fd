"""The task of bench_remote_tasks.py, importable by provider daemons and Dask workers.

Every run of ``tiny_plain`` (through kachery or through a plain Dask client) leaves
one empty file ``<x>.<pid>.<random>`` in the directory named by ``$KT_BENCH_RUNS``
(when set), so the benchmark counts how many times each argument was computed.
"""

from __future__ import annotations

import os
import uuid

from kachery_tasks.runtime import pure

RUNS_ENV = "KT_BENCH_RUNS"


def _ran(x: int) -> None:
    runs = os.environ.get(RUNS_ENV)
    if runs:
        with open(os.path.join(runs, f"{x}.{os.getpid()}.{uuid.uuid4().hex}"), "x"):
            pass


def tiny_plain(x: int) -> int:
    _ran(x)
    return x + 1


@pure(name="bench.remote.tiny")
def tiny(x: int) -> int:
    """``tiny_plain`` as a task, decorated as in a lab's module (sent to workers by name)."""
    _ran(x)
    return x + 1
