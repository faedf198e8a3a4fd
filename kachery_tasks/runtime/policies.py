"""What differs between the kinds of task, in one object per kind.

A :class:`~kachery_tasks.runtime.tasks.Task` and the executors run every
kind through the same steps (encode, look up, lease, run, record) and ask
the task's policy (``task.policy``) where the kinds part ways:

==========================  ==========  ==========  ===========
question                    pure        query       action
==========================  ==========  ==========  ===========
deterministic (memo hits,   yes         no          no
results shared through
remotes, nested calls on
the cluster)
recorded outcome served     yes         no          yes
instead of running (also
before Dask submission)
takes a lease               yes         no          yes
a failure is the served     no          no          yes
outcome
keeps the return value      yes         yes         no (outcome)
a failed run serves the     no          yes         no
last result (stale)
every run has its own       no          yes         no
Dask key
what a call returns         the value   the value   ActionOutcome
                                        (warns when
                                        stale);
                                        ``fetch``:
                                        QueryResult
run reason: call / force /  miss /      query       miss / again
again                       forced                  / again
==========================  ==========  ==========  ===========

Modes: ``call`` serves what is recorded, ``force`` computes again (a pure
task's ``recompute``), ``again`` runs again (an action's ``run_again``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .records import ResultRow


class StaleResultWarning(UserWarning):
    """A query could not run, and its last cached result was returned instead."""


@dataclass(frozen=True)
class QueryResult:
    """What a query returned: ``value``, and whether it is a stale fallback (and why)."""

    value: Any
    stale: bool
    error: str | None
    computed: float | None


@dataclass(frozen=True)
class ActionOutcome:
    """The recorded outcome of an action: it succeeded (``ok``) or failed with ``error``.

    ``ran`` says whether this call ran the action or found its earlier outcome.
    """

    task_id: str
    function: str
    ok: bool
    ran: bool
    error: str | None
    finished: float


class TaskPolicy:
    """The behaviour of one kind of task; subclasses answer where their kind differs.

    ``task`` arguments are :class:`~kachery_tasks.runtime.tasks.Task` objects.
    """

    __slots__ = ()
    kind: ClassVar[str]
    #: The result depends on the task id alone: hits come from the in-process memo,
    #: results are looked up at and published to remotes, and a call made inside a
    #: task on a Dask worker joins the cluster's graph.
    deterministic: ClassVar[bool] = False
    #: In mode ``call``, a recorded outcome is served instead of running (executors
    #: serve it before submission).
    served_before_submission: ClassVar[bool] = False
    #: One run per task id at a time (others wait for its outcome).
    lease: ClassVar[bool] = False
    #: A failure is recorded as the outcome that is served (not run again).
    serves_failures: ClassVar[bool] = False
    #: The function's return value is encoded and cached (else only the outcome).
    keeps_value: ClassVar[bool] = True
    #: A failed run returns the last cached result, marked stale.
    stale_fallback: ClassVar[bool] = False
    #: Every run gets its own Dask key (identical calls in flight are not merged).
    random_key: ClassVar[bool] = False

    def reason(self, mode: str) -> str:
        """Why a run in ``mode`` happens, as its run record says."""
        return "miss" if mode == "call" else "forced"

    def check_cached(self, mode: str) -> bool:
        """Whether a call in ``mode`` is served from what is recorded, if anything is."""
        return self.served_before_submission and mode == "call"

    def unique_key(self, mode: str) -> bool:
        """Whether the Dask key of a call in ``mode`` needs a random suffix."""
        return self.random_key or mode != "call"

    def served(self, task: Any, row: ResultRow, load: Callable[[ResultRow], Any]) -> Any:
        """What a call returns for a recorded outcome ``row`` (``load`` reads a result;
        it returns the cache's MISS for a result that is gone)."""
        return load(row)

    def ran(self, task: Any, task_id: str, value: Any, finished: float) -> Any:
        """What a run that returned ``value`` (as cached) and ended at ``finished``
        (as recorded) gives back."""
        return value

    def value(self, outcome: Any) -> Any:
        """The value inside what :meth:`ran` or :meth:`served` gave back."""
        return outcome

    def returned(self, task: Any, outcome: Any, mode: str, stacklevel: int) -> Any:
        """What ``task(...)`` returns for ``outcome``; a warning names the caller ``stacklevel``
        frames up from here."""
        return self.value(outcome)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class PurePolicy(TaskPolicy):
    """``@pure``: computed once per id, the result served from then on."""

    __slots__ = ()
    kind = "pure"
    deterministic = True
    served_before_submission = True
    lease = True


class QueryPolicy(TaskPolicy):
    """``@query``: runs on every call; a failed run falls back to the last result."""

    __slots__ = ()
    kind = "query"
    stale_fallback = True
    random_key = True

    def reason(self, mode: str) -> str:
        return "query"

    def ran(self, task: Any, task_id: str, value: Any, finished: float) -> QueryResult:
        return QueryResult(value, False, None, finished)

    def stale(self, value: Any, error: str, computed: float | None) -> QueryResult:
        """The outcome of a failed run that serves the last result, ``value``."""
        return QueryResult(value, True, error, computed)

    def value(self, outcome: QueryResult) -> Any:
        return outcome.value

    def returned(self, task: Any, outcome: QueryResult, mode: str, stacklevel: int) -> Any:
        if outcome.stale and mode == "call":
            warnings.warn(
                StaleResultWarning(
                    f"{task.name} could not run ({outcome.error}); returning its result "
                    f"cached at {fmt_time(outcome.computed)}, which may be out of date"
                ),
                stacklevel=stacklevel,
            )
        return outcome.value


class ActionPolicy(TaskPolicy):
    """``@action``: runs at most once per id; its outcome (success or error) is served."""

    __slots__ = ()
    kind = "action"
    served_before_submission = True
    lease = True
    serves_failures = True
    keeps_value = False

    def reason(self, mode: str) -> str:
        return "miss" if mode == "call" else "again"

    def served(self, task: Any, row: ResultRow, load: Callable[[ResultRow], Any]) -> Any:
        """The recorded outcome; a recorded failure raises ``task.action_failed(row)``."""
        if row.status != "success":
            raise task.action_failed(row)
        return ActionOutcome(row.task_id, task.name, True, False, None, row.finished)

    def ran(self, task: Any, task_id: str, value: Any, finished: float) -> ActionOutcome:
        return ActionOutcome(task_id, task.name, True, True, None, finished)


PURE = PurePolicy()
QUERY = QueryPolicy()
ACTION = ActionPolicy()
POLICIES: dict[str, TaskPolicy] = {p.kind: p for p in (PURE, QUERY, ACTION)}


def fmt_time(t: float | None) -> str:
    """A local time for messages; "an unknown time" for None."""
    if t is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
