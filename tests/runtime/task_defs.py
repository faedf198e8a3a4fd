"""Tasks used by the runtime tests (importable, so Dask workers can load them too)."""

from __future__ import annotations

import os
import time
from collections import Counter

import kachery_tasks.runtime as kachery

# Counts calls (in this process) for the tests; it does not change results, so it is
# kept out of the tasks' code hashes.
calls: Counter[str] = kachery.untracked(Counter())


@kachery.pure(version="1")
def scale(x, factor: float = 2.0):
    calls["scale"] += 1
    return x * factor


@kachery.pure
def add(a, b=10):
    calls["add"] += 1
    return a + b


@kachery.pure
def total(values: list):
    calls["total"] += 1
    return sum(add(v, 1) for v in values)


@kachery.pure
def summed_scale(x, factor: float):
    """Nested pure task: calls scale."""
    calls["summed_scale"] += 1
    return float(scale(x, factor).sum())


@kachery.pure
def fail_until(marker: str):
    """Fails while the file ``marker`` does not exist."""
    calls["fail_until"] += 1
    if not os.path.exists(marker):
        raise ValueError(f"no marker {marker}")
    return "ok"


@kachery.pure
def slow_square(x: int, seconds: float):
    calls["slow_square"] += 1
    time.sleep(seconds)
    return x * x


@kachery.pure
def make_array(n: int):
    import numpy as np

    calls["make_array"] += 1
    return np.arange(n, dtype=np.float64)


@kachery.pure
def pair(a, b):
    calls["pair"] += 1
    return (a, b)


@kachery.pure
def gen_result(n: int):
    return (i for i in range(n))


@kachery.pure
def unpicklable(n: int):
    import threading

    return threading.Lock()


@kachery.pure
def recursive(n: int):
    return recursive(n)


@kachery.query
def lookup(source: str):
    """A query over a file standing in for a service: raises when it is gone."""
    calls["lookup"] += 1
    with open(source) as f:
        return {"value": f.read()}


@kachery.action
def publish(target: str, text: str):
    calls["publish"] += 1
    if text == "bad":
        raise RuntimeError("refused")
    with open(target, "a") as f:
        f.write(text + "\n")
    return "ignored"


@kachery.pure
def with_kwonly(a, *, scale: int = 3, **extra):
    return a * scale + len(extra)


@kachery.pure
def block_unless(path: str, value: int):
    """Blocks (at most 60 s) while ``path`` does not exist, then returns ``value * 2``."""
    calls["block_unless"] += 1
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)
    return value * 2


@kachery.pure
def array_sum(x):
    """Reads a whole array (numpy or zarr)."""
    calls["array_sum"] += 1
    return float(x[:].sum())


@kachery.action
def gated_append(target: str, gate: str):
    """Appends ``start <pid>`` to ``target``, waits (at most 60 s) for the file
    ``gate`` to exist, then appends ``done <pid>``: one line pair per run."""
    calls["gated_append"] += 1
    with open(target, "a") as f:
        f.write(f"start {os.getpid()}\n")
    deadline = time.time() + 60
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)
    with open(target, "a") as f:
        f.write(f"done {os.getpid()}\n")


@kachery.pure
def echo(value):
    calls["echo"] += 1
    return value
