"""Executors: where submitted tasks run -- in this process, or on a Dask cluster.

The contract every :class:`Executor` keeps (one test suite shipped with the
package, :class:`kachery_tasks.testing.executors.ExecutorContract`, checks it
against each implementation):

* ``submit(task, args, kwargs)`` returns a :class:`TaskFuture` whose
  ``task_id`` is ``task.task_id(*args, **kwargs)``.
* A cached pure call is served from the cache *before* submission: the
  future is already done and nothing reaches the executor.
* Identical submissions in flight run once (same id, same computation).
* ``future.result()`` returns what ``task(*args, **kwargs)`` would return, or
  raises the exception the task raised, with its own type. The failure is
  recorded and never served as a cached result.
* A TaskFuture may be an argument of another submission: the dependent call
  runs after it, and its id encodes the producer's task id (tag ``r``).
* ``map(task, items, args, kwargs)`` is ``[submit(task, (item, *args), kwargs)
  for item in items]``, in order; ``submit_many(task, [(args, kwargs), ...],
  mode)`` likewise for whole argument lists (one message to a cluster).
* ``future.wait()`` returns once the call ended (it raises what ``result()``
  would raise for a failure, ExecutorError for a call the cluster cancelled)
  without bringing the value to this process: for a caller that only needs
  the call recorded and published where it ran; ``future.on_done(callback)``
  calls ``callback(future)`` once the call ended, from a thread of the
  executor's (at once when it already has).
* A failure of the executor itself (a Dask cluster that is gone) raises
  :class:`~kachery_tasks.errors.ExecutorError`.
* An executor whose ``runs_bundles`` is true (a cluster) also starts
  prepared calls of one task as one unit, ``submit_bundle(calls, mode,
  budget)``: each call looked up, recorded and published under its own id
  as when it runs alone, for less than a unit each (:mod:`.bundles`).
  ``threads()`` says how many calls the executor runs at once.

:class:`LocalExecutor` (the default) runs each submission at once in the
calling thread. :class:`DaskExecutor` sends misses to a ``distributed``
cluster; the Dask key of a call is ``"<function>-<task id>"`` -- it contains
the task id, so identical calls in flight share one key and run once, and
it starts with the function's name so Dask groups tasks per function (a key
made of the task id alone puts every task in its own group, which slows the
scheduler several-fold). Recomputations and queries, which must run even
when an identical call is in flight, get a random suffix.

On a worker, calls of pure tasks from inside a task join the same graph:
they are submitted through ``distributed.worker_client`` (which secedes the
waiting task from the worker's thread pool) under the same key scheme.
Workers on this machine use this process's node directory: it is passed
with every call and put in the worker's ``KACHERY_TASKS_DIR`` (a worker
process serves one node directory at a time). ``distributed`` is imported
only when Dask is used.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .. import nodes as node_mod
from ..config import ENV_DIR, default_path
from ..errors import ExecutorError, InvalidValueError
from ..progress import progress_bar
from . import bundles, context, encoders, shared
from . import cache as cache_mod
from .call import Call, encode_result
from .context import current_executor, use_executor
from .tasks import Task

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "TaskFuture", "connect",
           "current_executor", "dask",
           "dask_key", "gather", "nested_runner", "use_executor"]

_NOTHING = object()


class TaskFuture:
    """A submitted call: pending on an executor, or already done."""

    _kachery_future = True
    __slots__ = ("_dask", "_error", "_executor", "_value", "task", "task_id")

    def __init__(
        self, task: Task, task_id: str, value: Any = _NOTHING, error: BaseException | None = None,
        dask_future: Any = None, executor: Executor | None = None,
    ) -> None:
        self.task = task
        self.task_id = task_id
        self._value = value
        self._error = error
        self._dask = dask_future
        self._executor = executor

    def done(self) -> bool:
        """True when the result (or the error) is available."""
        if self._dask is not None:
            return self._dask.done()
        return True

    @property
    def status(self) -> str:
        """``running``, ``finished`` or ``error`` (Dask's state, when on Dask); a channel's
        future (:class:`~kachery_tasks.network.tasks.requester.ChannelFuture`) also says
        ``queued`` and ``waiting``."""
        if self._error is not None:
            return "error"
        if self._value is not _NOTHING or self._dask is None:
            return "finished"
        return {"pending": "running", "finished": "finished", "error": "error",
                "cancelled": "error", "lost": "error"}.get(self._dask.status, "running")

    def result(self, timeout: float | None = None) -> Any:
        """The task's result; raises the task's exception, or ExecutorError for the cluster's."""
        if self._error is not None:
            raise self._error
        if self._value is not _NOTHING:
            return self._value
        return gather([self], timeout=timeout)[0]

    def wait(self) -> None:
        """Wait until the call ended, leaving its value where it was computed (a worker
        that recorded and published it); raises what :meth:`result` raises for a failure."""
        if self._error is not None:
            raise self._error
        if self._dask is None or self._dask.status == "finished":
            return  # (a finished call needs no round trip through the client's event loop)
        executor = self._executor
        try:
            error = self._dask.exception()
            if error is None and self._dask.cancelled():  # exception() is None for those
                raise concurrent.futures.CancelledError(f"the call {self.task_id} was cancelled")
        except Exception as e:  # cancelled, or the cluster went away
            if isinstance(executor, DaskExecutor):
                raise executor._executor_error(e) from e
            raise
        if error is not None:
            raise error

    def on_done(self, callback: Callable[[TaskFuture], None]) -> None:
        """Call ``callback(self)`` once the call ended (at once when it already has; else from
        a thread of the executor's, which it should not hold for long)."""
        if self._dask is None:
            callback(self)
            return
        self._dask.add_done_callback(lambda _: callback(self))

    def _set(self, value: Any) -> None:
        self._value = _readonly_array(value)
        self._dask = None

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<TaskFuture {self.task.name} {self.task_id[:19]}... {state}>"

    def __reduce__(self):
        raise ExecutorError(
            "a TaskFuture cannot be sent elsewhere; pass it to submit() as an argument, or "
            "send its result()"
        )


encoders.register_special(TaskFuture, encode_result)  # tag r: the producer's task id


def _readonly_array(value: Any) -> Any:
    flags = getattr(value, "flags", None)
    if flags is not None and type(value).__module__ == "numpy":
        try:
            value.flags.writeable = False
        except (ValueError, AttributeError):  # pragma: no cover - exotic arrays
            pass
    return value


# ------------------------------------------------------------------ base
class Executor(abc.ABC):
    """Where submitted calls run. See the module docstring for the contract."""

    in_caller: bool = False
    """Whether ``submit`` runs the call before it returns (in the calling thread): then
    calls submitted together run one after the other."""

    @abc.abstractmethod
    def submit(self, task: Task, args: tuple, kwargs: dict, mode: str = "call") -> TaskFuture:
        """Start ``task(*args, **kwargs)``; ``mode`` is ``call``, ``force`` or ``again``."""

    def map(self, task: Task, items: Iterable[Any], args: tuple = (),
            kwargs: dict | None = None) -> list[TaskFuture]:
        """``submit(task, (item, *args), kwargs)`` for every item, in order."""
        return [self.submit(task, (item, *args), dict(kwargs or {})) for item in items]

    def submit_many(self, task: Task, calls: list[tuple[tuple, dict]],
                    mode: str = "call") -> list[TaskFuture]:
        """``submit(task, args, kwargs, mode)`` for every ``(args, kwargs)``, in order; an
        executor that can start many calls in one go (a cluster) does."""
        return [self.submit(task, args, kwargs, mode) for args, kwargs in calls]

    def gather(self, futures: Sequence[TaskFuture], timeout: float | None = None) -> list[Any]:
        """The results of ``futures`` in order (raises the first failure)."""
        return [f.result() for f in futures]

    runs_bundles: bool = False
    """Whether :meth:`submit_bundle` starts several calls as one unit, for less than one
    unit each (a cluster: see :mod:`.bundles`)."""

    def threads(self) -> int:
        """How many calls the executor runs at once."""
        return 1

    def submit_bundle(self, calls: Sequence[Call], mode: str = "call",
                      budget: float | None = None) -> bundles.Bundle:
        """Start prepared ``calls`` of one task as one unit (:mod:`.bundles`), where
        :attr:`runs_bundles` says the executor can; ``budget`` defaults to
        :data:`.bundles.BUDGET`."""
        raise NotImplementedError(f"{type(self).__name__} does not run calls in bundles")

    def close(self) -> None:  # noqa: B027 - optional: most executors hold nothing
        """Release the executor's resources (a no-op for the local executor)."""


class LocalExecutor(Executor):
    """Runs each submission immediately, in the calling thread."""

    in_caller = True

    def submit(self, task: Task, args: tuple, kwargs: dict, mode: str = "call") -> TaskFuture:
        call = task.prepare(*args, **kwargs)  # encoded once, hit or miss
        try:
            value = task.run(call, mode)
        except Exception as e:
            return TaskFuture(task, call.task_id, error=e, executor=self)
        return TaskFuture(task, call.task_id, value=value, executor=self)


LOCAL = LocalExecutor()
context.set_default_executor(LOCAL)


def serve_recorded(c: cache_mod.NodeCache, task: Task, prepared: list[Call],
                   mode: str) -> list[TaskFuture | None]:
    """Finished futures for the calls that need no run (``None`` for the others).

    In mode ``call``, what is cached or recorded is served; for a pure task the
    misses are then looked up in the shared records in one batch
    (:func:`.shared.fetch_many`), and what collaborators computed is served too.
    """
    out: list[TaskFuture | None] = [None] * len(prepared)
    policy = task.policy
    if policy.check_cached(mode):
        _serve_cached(c, task, prepared, out)
        missing = [prepared[i].task_id for i, f in enumerate(out) if f is None]
        if policy.deterministic and missing and shared.fetch_many(c, missing):
            _serve_cached(c, task, prepared, out)  # what collaborators computed
    return out


def _serve_cached(c: cache_mod.NodeCache, task: Task, prepared: list[Call], out: list) -> None:
    """Fill ``out`` with finished futures for calls that are cached (no submission)."""
    policy = task.policy
    if policy.deterministic:
        for i, call in enumerate(prepared):
            v = c.get(call.task_id)
            if v is not cache_mod.MISS:
                out[i] = TaskFuture(task, call.task_id, value=v)
    rest = [call.task_id for i, call in enumerate(prepared) if out[i] is None]
    if not rest:
        return
    rows = c.records.results_many(rest)
    for i, call in enumerate(prepared):
        row = rows.get(call.task_id)
        if out[i] is not None or row is None:
            continue
        try:
            v = policy.served(task, row, c.load)
        except Exception as e:  # a failed action, an untrusted pickle: seen on result()
            out[i] = TaskFuture(task, call.task_id, error=e)
            continue
        if v is not cache_mod.MISS:
            out[i] = TaskFuture(task, call.task_id, value=v)


# ------------------------------------------------------------------ Dask
def dask_key(task: Task, task_id: str, mode: str) -> str:
    """The Dask key of a call (see the module docstring)."""
    key = f"{task.name}-{task_id}"
    if task.policy.unique_key(mode):
        key += f"-{secrets.token_hex(6)}"
    return key


class DaskExecutor(Executor):
    """Runs cache misses on a ``distributed`` cluster through ``client``."""

    runs_bundles = True

    THREADS_FOR = 10.0
    """Seconds :meth:`threads` keeps the cluster's count before asking its scheduler again."""

    def __init__(self, client: Any, share_node_dir: bool = True, cluster: Any = None) -> None:
        self.client = client
        self.share_node_dir = share_node_dir
        self.cluster = cluster
        self.owns_client = False  # connect() sets it: close() ends a client it made
        self._threads: tuple[int, float] | None = None  # (count, when it was read)

    def submit(self, task: Task, args: tuple, kwargs: dict, mode: str = "call") -> TaskFuture:
        return self.submit_many(task, [(tuple(args), dict(kwargs))], mode)[0]

    def map(self, task: Task, items: Iterable[Any], args: tuple = (),
            kwargs: dict | None = None) -> list[TaskFuture]:
        kw = dict(kwargs or {})
        return self.submit_many(task, [((item, *args), kw) for item in items], "call")

    def submit_many(self, task: Task, calls: list[tuple[tuple, dict]],
                    mode: str = "call") -> list[TaskFuture]:
        """The calls not recorded yet go to the cluster in one message (``client.map``)."""
        c = cache_mod.current()
        policy = task.policy
        prepared = [task.prepare(*args, **kwargs) for args, kwargs in calls]
        out = serve_recorded(c, task, prepared, mode)
        todo = [i for i, f in enumerate(out) if f is None]
        if not todo:
            return out  # type: ignore[return-value]
        node_spec = self._node_spec()
        reason = policy.reason(mode)
        by_key: dict[str, int] = {}
        key_of: dict[int, str] = {}
        keys, starts, dargs, dkwargs = [], [], [], []
        for i in todo:
            call = prepared[i]
            tid, a, k = call.task_id, call.args, call.kwargs
            key = dask_key(task, tid, mode)
            if self._erred(key):  # a failure still held by some future: run afresh
                key = f"{key}-{secrets.token_hex(6)}"
            key_of[i] = key
            if key in by_key:
                continue
            by_key[key] = len(keys)
            keys.append(key)
            if _has_future(a) or _has_future(k.values()):
                # the id encodes producers by reference: describe the call before Dask
                # replaces the futures by their values
                starts.append(call.start(reason, c.node_id))
            else:  # the worker describes it (keeps the scheduler's messages small)
                starts.append((tid, reason))
            dargs.append(self._to_dask(a))
            dkwargs.append(self._to_dask(k))
        n = len(keys)
        try:
            dfuts = self.client.map(
                _run_on_worker, [task] * n, [node_spec] * n, starts, dargs,
                dkwargs, [mode] * n, key=keys, pure=False,
            )
        except Exception as e:
            raise self._executor_error(e) from e
        for i in todo:
            dfut = dfuts[by_key[key_of[i]]]
            out[i] = TaskFuture(task, prepared[i].task_id, dask_future=dfut, executor=self)
        return out  # type: ignore[return-value]

    def _node_spec(self) -> NodeSpec:
        c = cache_mod.current()
        return (str(c.node.path) if self.share_node_dir else None,
                [r.url for r in c.node.remotes])

    def submit_bundle(self, calls: Sequence[Call], mode: str = "call",
                      budget: float | None = None) -> bundles.Bundle:
        """One Dask task runs ``calls`` (of one task, their arguments holding no futures)
        on a worker, one after the other, each recorded and published as when it runs
        alone; its key starts with the task's name, as the keys of single calls do."""
        if not calls:
            raise InvalidValueError("a bundle needs at least one call")
        task = calls[0].task
        if any(call.task is not task for call in calls):
            raise InvalidValueError("the calls of a bundle are calls of one task")
        if any(_has_future(call.args) or _has_future(call.kwargs.values()) for call in calls):
            raise InvalidValueError("a bundle's calls cannot take futures as arguments")
        reason = task.policy.reason(mode)
        budget = bundles.BUDGET if budget is None else budget
        key = f"{task.name}-bundle-{secrets.token_hex(8)}"
        try:
            future = self.client.submit(
                _run_bundle, task, self._node_spec(), [(c.task_id, reason) for c in calls],
                [c.args for c in calls], [c.kwargs for c in calls], mode, budget, key=key,
                pure=False)
        except Exception as e:
            raise self._executor_error(e) from e
        return bundles.Bundle(future, [c.task_id for c in calls], self._executor_error)

    def threads(self) -> int:
        """The threads of the cluster's workers (read again every :attr:`THREADS_FOR`
        seconds; 1 when the scheduler cannot say)."""
        now = time.monotonic()
        if self._threads is None or now - self._threads[1] > self.THREADS_FOR:
            try:
                count = sum(self.client.nthreads().values())
            except Exception:
                count = 1
            self._threads = (max(1, count), now)
        return self._threads[0]

    def _erred(self, key: str) -> bool:
        state = getattr(self.client, "futures", {}).get(key)
        return state is not None and getattr(state, "status", None) == "error"

    def _to_dask(self, value: Any) -> Any:
        """Replace TaskFutures in an argument structure by what Dask can resolve."""
        t = type(value)
        if t is TaskFuture:
            if value._dask is not None:
                return value._dask
            return value.result()
        if t is tuple:
            return tuple(self._to_dask(v) for v in value)
        if t is list:
            return [self._to_dask(v) for v in value]
        if t is dict:
            return {k: self._to_dask(v) for k, v in value.items()}
        return value

    def gather(self, futures: Sequence[TaskFuture], timeout: float | None = None) -> list[Any]:
        pending = [f for f in futures if f._dask is not None]
        if pending:
            unique = list({id(f._dask): f._dask for f in pending}.values())
            try:
                values = self.client.gather(unique, errors="raise")
            except Exception as e:
                if not any(getattr(d, "status", None) == "error" for d in unique):
                    raise self._executor_error(e) from e
                # The tasks' own exceptions: keep them in the futures and let go of the
                # Dask futures, so that a new submission of the same key runs again.
                for f in pending:
                    if f._dask.status == "error":
                        f._error = f._dask.exception()
                        f._dask = None
                raise
            by_id = {id(d): v for d, v in zip(unique, values)}
            for f in pending:
                f._set(by_id[id(f._dask)])
        return [f.result() for f in futures]

    def _executor_error(self, e: BaseException) -> ExecutorError:
        address = getattr(getattr(self.client, "scheduler", None), "address", "?")
        status = getattr(self.client, "status", "?")
        return ExecutorError(
            f"the Dask cluster at {address} failed (client {status}): {type(e).__name__}: {e}. "
            "Check that the scheduler and its workers are running, then submit again"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


# -------------------------------------------------------- on the worker
NodeSpec = tuple[str | None, list[str]]
_worker_node: contextvars.ContextVar[NodeSpec | None] = contextvars.ContextVar(
    "kachery_worker_node", default=None
)


def _run_on_worker(task: Task, node_spec: NodeSpec, start: Any, args: tuple, kwargs: dict,
                   mode: str) -> Any:
    """What a Dask worker runs for one call: the same protocol as in-process.

    ``node_spec`` is the client's node directory (None: the worker's own
    node, for workers on other machines) and the URLs of the client's
    remotes: results are looked up and published through those, signed by
    the worker's node, as a direct call would. ``start`` is the RunStart
    prepared by the client, or ``(task_id, reason)`` when the arguments hold
    no futures and the worker can describe the call.
    """
    with _as_worker_node(node_spec):
        return _run_here(task, start, args, kwargs, mode)


def _run_bundle(task: Task, node_spec: NodeSpec, starts: list[tuple[str, str]],
                args: list[tuple], kwargs: list[dict], mode: str,
                budget: float) -> list[bundles.Outcome]:
    """What a Dask worker runs for a bundle (:mod:`.bundles`): each call as
    :func:`_run_on_worker` runs one, until ``budget`` seconds have passed."""
    with _as_worker_node(node_spec):
        return bundles.run_calls(lambda i: _run_here(task, starts[i], args[i], kwargs[i], mode),
                                 len(starts), budget)


@contextlib.contextmanager
def _as_worker_node(node_spec: NodeSpec) -> Iterator[None]:
    """On a worker: the node ``node_spec`` names is the current node, and the calls
    nested in the calls run here go to the cluster (:func:`nested_runner`)."""
    path, urls = node_spec
    worker_node = node_mod.node(path if path is not None else default_path(), remotes=urls)
    token = _worker_node.set(node_spec)
    try:
        with worker_node:
            yield
    finally:
        _worker_node.reset(token)


def _run_here(task: Task, start: Any, args: tuple, kwargs: dict, mode: str) -> Any:
    """Run a call on this worker's current node (served from its memo if cached)."""
    c = cache_mod.current()
    tid = start[0] if type(start) is tuple else start.task_id
    if mode == "call" and task.policy.deterministic:
        v = c.get(tid)
        if v is not cache_mod.MISS:
            return v
    if type(start) is tuple:  # recorded under the client's id, which its caller awaits
        start = dataclasses.replace(
            task.prepare(*args, **kwargs).start(start[1], c.node_id), task_id=tid)
    value = task.run_started(c, start, args, kwargs, mode)
    if task.policy.deterministic:
        shared.publish(c, tid)
    return value


def _has_future(values: Iterable[Any]) -> bool:
    for v in values:
        t = type(v)
        if t is TaskFuture:
            return True
        if t in (list, tuple) and any(type(x) is TaskFuture for x in v):
            return True
        if t is dict and any(type(x) is TaskFuture for x in v.values()):
            return True
    return False


def nested_runner() -> Any:
    """Inside a task on a Dask worker: a function that runs a call through the cluster."""
    ctx = _worker_node.get()
    if ctx is None:
        return None

    def run(task: Task, start: Any, args: tuple, kwargs: dict, mode: str) -> Any:
        from distributed import worker_client

        key = dask_key(task, start.task_id, mode)
        with worker_client() as client:
            fut = client.submit(_run_on_worker, task, ctx, start, args, kwargs, mode, key=key,
                                pure=False)
            return _readonly_array(fut.result())

    return run


context.set_nested_runner(nested_runner)


# -------------------------------------------------------------- public
GATHER_PROGRESS_MIN = 20
"""``gather`` shows a progress bar (on a terminal) for at least this many futures."""


def gather(futures: Iterable[TaskFuture], timeout: float | None = None) -> list[Any]:
    """The results of ``futures``, in order; Dask futures are fetched in one round trip.
    ``timeout`` (seconds) bounds the whole wait, whatever executor each future is on.

    With many futures and standard error a terminal, a progress bar counts them as
    they finish (``KACHERY_TASKS_PROGRESS=1`` forces it).
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    futures = list(futures)
    for f in futures:
        if not isinstance(f, TaskFuture):
            raise TypeError(f"kachery.gather takes TaskFutures (from submit or map), not {f!r}")
    with progress_bar(len(futures), "tasks", GATHER_PROGRESS_MIN, unit="tasks") as bar:
        if bar is not None:
            _count_done(futures, bar, timeout)
    groups: dict[int, tuple[Executor, list[TaskFuture]]] = {}
    for f in futures:
        if f._dask is not None and f._executor is not None:
            groups.setdefault(id(f._executor), (f._executor, []))[1].append(f)
    for executor, fs in groups.values():
        executor.gather(fs, timeout=left())
    return [f.result(left()) for f in futures]


def _count_done(futures: list[TaskFuture], bar: Callable[[int], None],
                timeout: float | None) -> None:
    """Wait until every future is done (or ``timeout``), telling ``bar`` how many finished."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list({id(f): f for f in futures}.values())
    seen = len(futures)
    while True:
        pending = [f for f in pending if not f.done()]
        left = sum(1 for f in futures if not f.done()) if pending else 0
        if seen - left:
            bar(seen - left)
            seen = left
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(0.05)


def _is_local_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1", "", socket.gethostname()) or host.startswith(
        "127."
    ) or address.startswith("inproc://")


def _check_address(address: str) -> None:
    """Raise ValueError when ``address`` names no Dask scheduler (no port, an unknown
    scheme), as ``distributed.Client`` would once its event loop had started."""
    from distributed.comm import get_address_host_port, parse_address

    if parse_address(address)[0] != "inproc":  # (in this process: no host and port)
        get_address_host_port(address)


def _address_problem(address: str, error: ValueError) -> str:
    """What is wrong with a scheduler address, in words: distributed says "invalid literal
    for int() with base 10" of a port that is not a number."""
    _, colon, port = address.split("://", 1)[-1].rpartition(":")
    if colon and not port.isdigit():
        return f"its port {port!r} is not a number" if port else "no port after its ':'"
    return str(error)


def connect(
    address: str | None = None,
    *,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    client: Any = None,
    share_node_dir: bool | None = None,
    timeout: float = 10.0,
    node_path: Any = None,
    **cluster_kwargs: Any,
) -> DaskExecutor:
    """A :class:`DaskExecutor` (see :func:`dask`, which takes the same arguments); close it.

    ``node_path`` is the node directory workers of a new LocalCluster serve
    (default: the current node's).
    """
    try:
        import distributed
    except ImportError as e:
        raise ExecutorError(
            "Dask is not installed; install it with: pip install 'kachery-tasks[dask]'"
        ) from e
    cluster = None
    own_client = client is None
    node = node_path if node_path is not None else cache_mod.current().node.path
    try:
        if client is None and address is not None:
            try:
                _check_address(address)  # before a client starts its event loop for nothing
                client = distributed.Client(address, timeout=timeout)
            except ValueError as e:  # not an address: no port, an unknown scheme
                raise InvalidValueError(
                    f"{address!r} is not the address of a Dask scheduler "
                    f"({_address_problem(address, e)}); give tcp://HOST:PORT, e.g. "
                    "tcp://scheduler:8786") from None
        elif client is None:  # no cluster given: start one here
            cluster = distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                dashboard_address=None, env={ENV_DIR: str(node)}, **cluster_kwargs,
            )
            client = distributed.Client(cluster)
    except (OSError, TimeoutError) as e:
        where = address or "a new LocalCluster"
        raise ExecutorError(
            f"cannot reach the Dask scheduler at {where}: {e}. Start it (dask scheduler) or "
            "check the address"
        ) from e
    if share_node_dir is None:
        share_node_dir = cluster is not None or _is_local_address(client.scheduler.address)
    executor = DaskExecutor(client, share_node_dir=share_node_dir, cluster=cluster)
    executor.owns_client = own_client
    return executor


@contextlib.contextmanager
def dask(address: str | None = None, **options: Any) -> Iterator[DaskExecutor]:
    """Run ``submit`` and ``map`` on Dask inside the block.

    Without arguments a ``LocalCluster`` of worker processes is started (and
    closed at the end; ``n_workers=2``, ``threads_per_worker=1`` and other
    ``LocalCluster`` options); ``address="tcp://host:8786"`` connects to a
    running scheduler (``timeout=10.0`` seconds); ``client=`` uses an existing
    ``distributed.Client``. Workers on this machine share this node directory
    (``share_node_dir`` defaults to True for a local cluster or a loopback
    address); workers elsewhere keep results in their own node directories.
    """
    executor = connect(address, **options)
    try:
        with use_executor(executor):
            yield executor
    finally:
        if executor.owns_client:
            executor.close()
