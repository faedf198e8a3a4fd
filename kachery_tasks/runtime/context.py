"""Where a task call goes from here: the current executor, the nested-call hook and the
remote runner.

This module sits below both :mod:`.tasks` and :mod:`.executors`, so that
neither imports the other in both directions: executors import tasks (they
run them), and tasks find the executor of ``submit``/``map`` here.
:mod:`.executors` registers, when it is imported (importing the
``kachery_tasks.runtime`` package always imports it), the in-process default
executor and the hook that sends calls made inside a task on a Dask worker
through the cluster.

A **remote runner** (``use_remote_runner``; ``kachery.channel("lab")`` installs
one) is where a call made at the top level (not inside a running task) goes
when it must run: a pure call that misses here and in the shared records, an
action with no recorded outcome, every query. This module knows only its
shape (:class:`RemoteRunner`); the network layer provides it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ..errors import ExecutorError


class Submitter(Protocol):
    """What ``Task.submit`` and ``Task.map`` need of an executor."""

    def submit(self, task: Any, args: tuple, kwargs: dict, mode: str = "call") -> Any: ...

    def map(self, task: Any, items: Iterable[Any], args: tuple = (),
            kwargs: dict | None = None) -> list: ...


_current: contextvars.ContextVar[Submitter | None] = contextvars.ContextVar(
    "kachery_executor", default=None
)
_default: Submitter | None = None
_nested: Callable[[], Callable[..., Any] | None] | None = None


def set_default_executor(executor: Submitter) -> None:
    """Make ``executor`` the one used outside every ``use_executor`` block."""
    global _default
    _default = executor


def current_executor() -> Submitter:
    """The executor submissions go to: the innermost ``dask(...)`` block, else in-process."""
    executor = _current.get()
    if executor is None:
        executor = _default
        if executor is None:  # pragma: no cover - the runtime package registers one
            raise ExecutorError(
                "no executor is registered; import kachery_tasks.runtime (or kachery_tasks)"
            )
    return executor


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value: Any) -> Iterator[Any]:
    """``var`` set to ``value`` inside the block, restored after it."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def use_executor(executor: Submitter) -> contextlib.AbstractContextManager[Submitter]:
    """Send ``submit``/``map`` to ``executor`` inside the block."""
    return _setting(_current, executor)


class RemoteRunner(Protocol):
    """Runs a call elsewhere (a channel's providers) instead of here."""

    def run_call(self, call: Any, mode: str) -> Any:
        """Run ``call`` (a :class:`~.call.Call`) in ``mode``; the kind's outcome: the value
        of a pure task (then recorded here), a QueryResult, an ActionOutcome."""
        ...


_remote: contextvars.ContextVar[RemoteRunner | None] = contextvars.ContextVar(
    "kachery_remote_runner", default=None
)


def use_remote_runner(runner: RemoteRunner | None) -> contextlib.AbstractContextManager[Any]:
    """Send the calls that must run (see the module docstring) to ``runner`` in the block;
    None: run them here (a runner running a call locally sets it)."""
    return _setting(_remote, runner)


def remote_runner() -> RemoteRunner | None:
    """The innermost ``use_remote_runner`` block's runner, or None."""
    return _remote.get()


def set_nested_runner(hook: Callable[[], Callable[..., Any] | None]) -> None:
    """Register the function that says how a call made inside a running task is run."""
    global _nested
    _nested = hook


def nested_runner() -> Callable[..., Any] | None:
    """Inside a task on a Dask worker, the function that runs a nested call through the
    cluster (``runner(task, start, args, kwargs, mode)``); None elsewhere."""
    return _nested() if _nested is not None else None
