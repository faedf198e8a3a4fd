"""Tasks a provider serves in the provider tests (``--provide tests.network.tasks.remote_tasks``).

``RAN`` counts the runs of each function in this process (untracked: it is
not part of any task id); ``KACHERY_TEST_RUNS_DIR``, when set, gets one file
per run, so that tests with provider processes count runs across them.
"""

import collections
import os
import time
import uuid
from pathlib import Path

import kachery_tasks as kachery
from kachery_tasks.fsutil import write_atomic

RAN = kachery.untracked(collections.Counter())


def _ran(name):
    RAN[name] += 1
    where = os.environ.get("KACHERY_TEST_RUNS_DIR")
    if where:  # written whole (a test globbing the directory never reads half a file)
        write_atomic(Path(where) / f"{name}-{os.getpid()}-{uuid.uuid4().hex}",
                     str(os.getpid()).encode())


@kachery.pure
def square(x):
    _ran("square")
    return x * x


@kachery.pure
def slow_square(x, seconds):
    _ran("slow_square")
    time.sleep(seconds)
    return x * x


@kachery.pure
def fails(x):
    _ran("fails")
    raise ValueError(f"cannot take {x}")


@kachery.action
def notify(text):
    _ran("notify")


@kachery.query
def clock():
    _ran("clock")
    return RAN["clock"]


@kachery.pure
def nested(x):
    return square(x) + 1


@kachery.pure
def exits(x):
    """Ends its thread with SystemExit (not an Exception): the provider must still free
    the claim."""
    _ran("exits")
    raise SystemExit(x)


@kachery.pure
def fails_if_odd(x):
    """Fails for odd numbers: a batch of its calls mixes results and failures."""
    _ran("fails_if_odd")
    if x % 2:
        raise ValueError(f"{x} is odd")
    return x
