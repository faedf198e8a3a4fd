"""Tasks the daemon API tests request (``Provided.from_modules`` of this module).

``RAN`` counts runs in this process (untracked: not part of any task id);
``GATE`` holds ``gated`` until a test sets it.
"""

import collections
import threading

import numpy as np

import kachery_tasks as kachery

RAN = kachery.untracked(collections.Counter())
GATE = kachery.untracked(threading.Event())


@kachery.pure
def add(a, b=10):
    RAN["add"] += 1
    return a + b


@kachery.pure
def power(base, /, exp=2):
    return base**exp


@kachery.pure
def ramp(n):
    return np.arange(n, dtype="float64")


@kachery.pure
def fails(x):
    raise ValueError(f"cannot take {x}")


@kachery.pure
def gated(x):
    if not GATE.wait(60):
        raise TimeoutError("the test never opened the gate")
    return x * 3


@kachery.action
def note(text):
    RAN["note"] += 1
