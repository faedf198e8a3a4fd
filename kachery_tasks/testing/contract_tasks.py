"""Tasks the executor contract submits (:mod:`kachery_tasks.testing.executors`).

They live in an importable module of the package, without pytest, so that
the workers of any executor (Dask processes, other machines with the package
installed) can load them by name.
"""

from __future__ import annotations

import os
import time

from ..runtime import action, pure


@pure
def add(a, b=10):
    """``a + b``."""
    return a + b


@pure
def slow_square(x: int, seconds: float):
    """``x * x`` after sleeping ``seconds`` (to keep two identical calls in flight)."""
    time.sleep(seconds)
    return x * x


@pure
def fail_until(marker: str):
    """Raises ValueError while the file ``marker`` does not exist, then returns "ok"."""
    if not os.path.exists(marker):
        raise ValueError(f"no marker {marker}")
    return "ok"


@pure(version="1")
def scale(x, factor: float = 2.0):
    """``x * factor``."""
    return x * factor


@pure
def summed_scale(x, factor: float):
    """A pure task that calls another: the sum of :func:`scale`'s result."""
    return float(scale(x, factor).sum())


@pure
def make_array(n: int):
    """``numpy.arange(n)`` as float64."""
    import numpy as np

    return np.arange(n, dtype=np.float64)


@action
def publish(target: str, text: str):
    """Appends ``text`` and a line break to the file ``target`` (an action: runs once)."""
    with open(target, "a") as f:
        f.write(text + "\n")
    return "ignored"
