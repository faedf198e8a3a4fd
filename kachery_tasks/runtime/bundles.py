"""Bundles: several calls of one task run one after the other as one unit of a cluster.

A Dask task costs the scheduler, its worker and the client that waits for it
about a millisecond of CPU each, whatever it computes (Dask's documentation
advises tasks of 100 ms or more for this reason). A call that takes a few
milliseconds spends most of its cost there. A provider with many calls of
one task to start runs them in bundles: one Dask task runs several calls on
a worker, each looked up, recorded and published under its own task id
exactly as when it runs alone (:func:`run_calls`).

A bundle starts no call once ``budget`` seconds have passed since it began;
it hands the calls it did not start back (:data:`UNRUN`), and its caller
starts those one Dask task each, keyed by their task ids, as calls of long
tasks always are. So a bundle of long calls costs the time of one call
before the others go out, and no worker thread waits idle behind a bundle.

What a bundle returns is small: per call, an :class:`Outcome`: it ran, it
failed (its exception described by type name, message and traceback text in
a :class:`CallFailed`, never the exception itself, which may not survive
pickling), or it was not started. Values stay where they were computed, recorded and published
by the worker's node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ExecutorError
from .tracebacks import remote_traceback

BUDGET = 1.0
"""Seconds after which a bundle starts no more calls (the rest go out one by one). Wall
time: on a busy machine, tiny calls take several times their CPU."""

ARGUMENTS_MAX = 64 * 1024
"""Bytes of arguments (in memory) above which a call is not bundled: a bundle's calls
travel to the cluster in one message, and Dask handles large arguments best one task
each."""

RAN, FAILED, UNRUN = "ran", "failed", "unrun"


def fits(call: Any) -> bool:
    """Whether ``call``'s arguments are small enough to travel in a bundle
    (:data:`ARGUMENTS_MAX`, measured as Dask measures what it holds)."""
    from dask.sizeof import sizeof

    return sizeof((call.args, call.kwargs)) <= ARGUMENTS_MAX


@dataclass(frozen=True)
class Outcome:
    """What became of one call of a bundle: ``status`` is :data:`RAN`, :data:`FAILED`
    (``error`` describes the exception) or :data:`UNRUN`."""

    status: str
    error: CallFailed | None = None


class CallFailed(Exception):
    """The exception a bundled call raised, as its worker described it: ``type_name``,
    ``message`` and the ``traceback`` text from the task's own first frame."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self):
        return (CallFailed, (self.type_name, self.message, self.traceback))


def run_calls(run_one: Callable[[int], Any], n: int, budget: float) -> list[Outcome]:
    """On a worker: ``run_one(i)`` for ``i`` in ``range(n)`` until ``budget`` seconds have
    passed (the first call always runs); what became of each call, in order. A task's
    SystemExit fails its call, not the bundle; KeyboardInterrupt and the like end the
    bundle as they end any Dask task."""
    out: list[Outcome] = []
    began = time.monotonic()
    for i in range(n):
        if i and time.monotonic() - began > budget:
            out.extend([Outcome(UNRUN)] * (n - i))
            break
        try:
            run_one(i)
        except (Exception, SystemExit) as e:
            out.append(Outcome(FAILED, CallFailed(type(e).__name__, str(e),
                                                  remote_traceback(e))))
            continue
        out.append(Outcome(RAN))
    return out


class Bundle:
    """Calls started as one unit (see the module docstring): ``task_ids`` in order.

    ``future`` is the cluster's future of the unit; ``executor_error`` turns a
    failure of the cluster itself into the executor's ExecutorError.
    """

    def __init__(self, future: Any, task_ids: list[str],
                 executor_error: Callable[[BaseException], ExecutorError]) -> None:
        self.task_ids = task_ids
        self._future = future
        self._executor_error = executor_error

    def on_done(self, callback: Callable[[Bundle], None]) -> None:
        """Call ``callback(self)`` once the bundle ended, from a thread of the executor's
        (which it should not hold for long)."""
        self._future.add_done_callback(lambda _: callback(self))

    def outcomes(self) -> list[Outcome]:
        """What became of each call, in order. Raises what the bundle itself raised (its
        worker could not open the node), or ExecutorError when the cluster cancelled it
        or went away."""
        try:
            raw = self._future.result()
        except Exception as e:
            if getattr(self._future, "status", None) == "error":
                raise  # the bundle's own failure: every call of it failed with it
            raise self._executor_error(e) from e
        if type(raw) is not list or len(raw) != len(self.task_ids) \
                or not all(isinstance(outcome, Outcome) for outcome in raw):
            raise ExecutorError(f"a bundle of {len(self.task_ids)} calls came back without "
                                f"an outcome for each: {str(raw)[:200]}")
        return raw


__all__ = ["ARGUMENTS_MAX", "BUDGET", "FAILED", "RAN", "UNRUN", "Bundle", "CallFailed", "Outcome",
           "fits", "run_calls"]
