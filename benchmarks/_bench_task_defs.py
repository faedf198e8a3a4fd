"""Functions for bench_task_dask.py, importable so Dask workers load them by reference."""

from __future__ import annotations

from kachery_tasks.runtime import pure


def inc_plain(x: int) -> int:
    return x + 1


inc = pure(name="bench.inc")(inc_plain)
