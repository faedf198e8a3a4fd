"""Task decorators and the Task object: ``@pure``, ``@query``, ``@action``.

* **pure**: deterministic. The result is cached under the task id and served
  from then on; ``recompute`` forces a new computation whose result replaces
  the old one, ``forget`` drops it. Concurrent callers of the same id (threads,
  processes, Dask workers) compute it once: the others wait on the lease
  (:mod:`.leases`) and load the result. Failures are recorded, never served.
* **query**: re-run on every call. When the run raises (for instance because
  what it queries cannot be reached), the last cached result is returned with
  a :class:`StaleResultWarning`; ``fetch`` returns a :class:`QueryResult`
  whose ``stale`` flag says the same. With no cached result the error
  propagates.
* **action**: changes the world. Its outcome (success or the error) is
  recorded under its id and it runs at most once per id, unless called
  through :func:`again` or ``.run_again``. It returns an
  :class:`ActionOutcome`, never the function's own return value. An action
  whose process was killed mid-run recorded no outcome and runs again.

A task's name is ``module.qualname`` (``__main__.qualname`` in a script or
a notebook); lambdas need ``name=``. Generator functions and coroutines
cannot be tasks. Results are read-only (see :mod:`.results`).
Inside a task, calls to other tasks are recorded as call edges
(parent -> child) and, for pure tasks, cached too.

A call is encoded once into a :class:`~.call.Call` (``task.prepare``), which
``task.run`` runs; a direct call of a pure task that hits the in-process memo
skips building it. Where the kinds differ, the task asks its policy
(``task.policy``, see :mod:`.policies`). ``submit`` and ``map`` find the
executor through :mod:`.context`: this module does not import the executors.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from ..errors import InvalidValueError, TaskDefinitionError, TaskError
from ..uris import format_uri
from . import cache as cache_mod
from . import codehash, context, encoders, ids, leases, results
from .call import Call, resolve_futures, resolve_futures_kw
from .encoders import _DISPATCH, _Refused, _resolve
from .file_args import File as File  # re-exported: kachery.File
from .policies import (
    POLICIES,
    ActionOutcome,
    QueryResult,
    StaleResultWarning,
    TaskPolicy,
    fmt_time,
)
from .records import ResultRow, RunStart

F = TypeVar("F", bound=Callable[..., Any])
_MISS = cache_mod.MISS
_sha256 = hashlib.sha256

__all__ = ["ActionOutcome", "File", "QueryResult", "StaleResultWarning", "Task", "TaskIdWarning",
           "action", "again", "pure", "query"]


class TaskIdWarning(UserWarning):
    """A task changed, while it ran, a value its own task id depends on."""


# ------------------------------------------------------------ call frames
class _Frame:
    __slots__ = ("children", "task_id")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.children: list[str] = []


_local = threading.local()


def _stack() -> list[_Frame]:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


# -------------------------------------------------------------- the task
class Task:
    """A function made into a task. Call it like the function; see the module docstring."""

    _kachery_task_kind: str
    _kachery_task = True  # how code hashes recognise a task among the values code reads

    def __init__(
        self, func: Callable[..., Any], kind: str, version: str | None = None,
        name: str | None = None,
    ) -> None:
        if kind not in ids.KINDS:
            raise TaskDefinitionError(f"unknown task kind {kind!r}; use one of {ids.KINDS}")
        if isinstance(func, Task):
            raise TaskDefinitionError(f"{func.name} is already a task; decorate it only once")
        if not isinstance(func, types.FunctionType):
            raise TaskDefinitionError(
                f"only plain Python functions can be tasks, not {type(func).__name__} "
                f"({func!r}); wrap it in a def"
            )
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TaskDefinitionError(
                f"{func.__qualname__} is a generator function: its values are produced lazily "
                "and cannot be cached. Return a list instead of yielding"
            )
        if inspect.iscoroutinefunction(func):
            raise TaskDefinitionError(
                f"{func.__qualname__} is a coroutine function; tasks must be plain functions"
            )
        if version is not None and (not isinstance(version, str) or not version):
            raise TaskDefinitionError(
                f"version must be a non-empty string such as '1', not {version!r}"
            )
        self.func = func
        self.kind = kind
        self._kachery_task_kind = kind
        self.policy: TaskPolicy = POLICIES[kind]
        self.version = version
        self.name = name or _stable_name(func)
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        self._code_hash: str | None = None
        self._watch: codehash.Watch | None = None
        self._warned = False
        self._header: bytes | None = None
        self._init_signature()

    # ---------------------------------------------------------- identity
    def _init_signature(self) -> None:
        try:
            sig = inspect.signature(self.func)
        except (TypeError, ValueError) as e:  # pragma: no cover - plain functions have one
            raise TaskDefinitionError(f"cannot read the signature of {self.name}: {e}") from e
        self.signature = sig
        params = list(sig.parameters.values())
        self._names = [p.name for p in params]
        self._fast = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._npos = len(params)
        required = [p for p in params if p.default is p.empty]
        self._nrequired = len(required)
        self._defaults = tuple(p.default for p in params[self._nrequired :])
        if self._fast and any(p.default is p.empty for p in params[self._nrequired :]):
            self._fast = False  # pragma: no cover - Python forbids this ordering
        keyed = sorted(range(len(params)), key=lambda i: ids.name_key(self._names[i]))
        self._order = tuple(keyed)
        self._name_enc = tuple(ids.name_key(n) for n in self._names)
        self._argc = ids.args_prefix(len(params))

    @property
    def code_hash(self) -> str | None:
        """Hash of what the function computes (see :mod:`.codehash`); None with a version."""
        return self._code_identity()[0]

    def _code_identity(self) -> tuple[str | None, codehash.Watch | None]:
        """The code hash and its watch, computed again when what it read has changed."""
        if self.version is not None:
            return None, None  # the version rules: the code is not looked at
        if self._code_hash is None or (self._watch is not None and self._watch.changed()):
            self._code_hash, self._watch = codehash.code_identity(self.func, self.name)
        return self._code_hash, self._watch

    def _init_header(self) -> bytes:
        self._header = ids.header(self.kind, self.name, self.version, self._code_identity()[0])
        return self._header

    def _id(self, args: tuple, kwargs: dict) -> tuple[str, list[bytes], list[int]]:
        """A call's task id, with the pieces of its preimage and where each argument starts."""
        parts, marks = self._encode(args, kwargs)
        return "sha256:" + _sha256(b"".join(parts)).hexdigest(), parts, marks

    def _encode(self, args: tuple, kwargs: dict) -> tuple[list[bytes], list[int]]:
        """Encode a call: (pieces of the id preimage, where each argument starts)."""
        hdr = self._header
        if hdr is None or (self._watch is not None and self._watch.changed()):
            hdr = self._init_header()  # first call, or a global/closure value changed
        n = len(args)
        if not kwargs and self._fast and self._nrequired <= n <= self._npos:
            full = args if n == self._npos else args + self._defaults[n - self._nrequired :]
            parts = [hdr, self._argc]
            marks: list[int] = []
            names = self._name_enc
            i = 0
            try:
                for i in self._order:
                    v = full[i]
                    parts.append(names[i])
                    marks.append(len(parts))
                    enc = _DISPATCH.get(type(v))
                    if enc is None:
                        enc = _resolve(v)
                    enc(v, parts)
            except _Refused as e:
                raise encoders.unsupported(self._names[i], full[i], e, f" of {self.name}") from None
            except RecursionError:
                raise encoders.too_deep(self._names[i], full[i], f" of {self.name}") from None
            return parts, marks
        return self._encode_bound(hdr, args, kwargs)

    def _encode_bound(self, hdr: bytes, args: tuple, kwargs: dict):
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None
        bound.apply_defaults()
        items = sorted(bound.arguments.items(), key=lambda kv: ids.name_key(kv[0]))
        parts = [hdr, ids.args_prefix(len(items))]
        marks: list[int] = []
        for name, v in items:
            parts.append(ids.name_key(name))
            marks.append(len(parts))
            encoders.encode_argument(name, v, parts, f" of {self.name}")
        return parts, marks

    def prepare(self, *args: Any, **kwargs: Any) -> Call:
        """Encode this call without running it: its :class:`~.call.Call` (id, preimage,
        arguments), which :meth:`run` runs and other nodes can be sent."""
        parts, marks = self._encode(args, kwargs)
        tid = "sha256:" + _sha256(b"".join(parts)).hexdigest()
        return self._call(tid, parts, marks, args, kwargs)

    def _call(self, tid: str, parts: list[bytes], marks: list[int], args: tuple,
              kwargs: dict) -> Call:
        # right after _encode, _code_hash is the one the id was computed with
        return Call(self, tid, None if self.version is not None else self._code_hash, parts,
                    marks, args, kwargs)

    def task_id(self, *args: Any, **kwargs: Any) -> str:
        """The id of this call, ``'sha256:<hex>'``, computed without running anything."""
        return self._id(args, kwargs)[0]

    # ------------------------------------------------------------ calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tid, parts, marks = self._id(args, kwargs)
        if self.policy.deterministic:  # a hit needs no Call: the hot path stays short
            value = cache_mod.current().get(tid)
            if value is not _MISS:
                stack = getattr(_local, "stack", None)
                if stack:  # a call made inside a running task: a call edge
                    stack[-1].children.append(tid)
                return value
        return self._run(self._call(tid, parts, marks, args, kwargs), "call")

    def run(self, call: Call, mode: str = "call") -> Any:
        """Run a prepared call: ``call`` (serve what is recorded), ``force`` (pure: compute
        again) or ``again`` (action: run again). Returns what calling the task returns."""
        if call.task is not self:
            raise TaskError(f"{self.name} cannot run a call of {call.function}; use its task")
        return self._run(call, mode)

    def _run(self, call: Call, mode: str) -> Any:
        c = cache_mod.current()
        tid = call.task_id
        if mode == "call":
            stack = getattr(_local, "stack", None)
            if stack:  # a call made inside a running task: a call edge
                stack[-1].children.append(tid)
        p = self.policy
        if p.deterministic:
            if mode == "call":
                value = c.get(tid)
                if value is not _MISS:
                    return value
            else:
                c.invalidate(tid)
            return self._pure(c, call, mode)
        outcome = self._outcome(c, call, mode)
        return p.returned(self, outcome, mode, stacklevel=4)  # the caller of __call__ or run

    def fetch(self, *args: Any, **kwargs: Any) -> QueryResult:
        """Run a query and say whether the value is fresh or a stale fallback."""
        p = self.policy
        if not p.stale_fallback:
            raise TaskError(f"fetch is for queries; {self.name} is a {self.kind} task")
        return self._outcome(cache_mod.current(), self.prepare(*args, **kwargs), "call")

    def is_cached(self, *args: Any, **kwargs: Any) -> bool:
        """True when this call has a recorded outcome that would be served (no computation)."""
        tid = self._id(args, kwargs)[0]
        c = cache_mod.current()
        if c.has(tid):
            return True
        row = c.records.result(tid)
        if row is None:
            return False
        return row.result_uri is None or row.data is not None or c.store.has(row.result_uri)

    def recompute(self, *args: Any, **kwargs: Any) -> Any:
        """Compute again even if cached; the new result replaces the old one."""
        return self._run(self.prepare(*args, **kwargs), "force")

    def run_again(self, *args: Any, **kwargs: Any) -> Any:
        """Run even though an outcome is recorded (actions); for pure tasks, ``recompute``."""
        return self._run(self.prepare(*args, **kwargs), "again")

    def forget(self, *args: Any, **kwargs: Any) -> bool:
        """Stop serving this call's recorded outcome; True if there was one."""
        tid = self.task_id(*args, **kwargs)
        c = cache_mod.current()
        dropped = c.records.forget(tid)
        c.invalidate(tid)  # after the row is gone: no process can memoise it again
        return dropped

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Run on the current executor (see :func:`kachery_tasks.runtime.executors.dask`).

        Returns a TaskFuture; a cached pure result never reaches the executor.
        """
        return context.current_executor().submit(self, args, kwargs)

    def map(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> list:
        """``submit(item, *args, **kwargs)`` for every item; a list of TaskFutures."""
        return context.current_executor().map(self, items, args, kwargs)

    # ---------------------------------------------------------- execution
    def _pure(self, c: cache_mod.NodeCache, call: Call, mode: str) -> Any:
        tid = call.task_id
        force = mode != "call"
        if not force:
            row = c.records.result(tid)
            if row is not None:
                value = c.load(row)
                if value is not _MISS:
                    return value
        from . import shared

        if not force and shared.fetch(c, tid):
            value = c.load(c.records.result(tid))  # computed by a collaborator
            if value is not _MISS:
                return value
        runner = context.nested_runner()
        if runner is None:
            remote = context.remote_runner()
            if remote is not None and not getattr(_local, "stack", None):
                return remote.run_call(call, mode)  # recorded here as the provider's result
        start = call.start(self.policy.reason(mode), c.node_id)
        if runner is not None:
            value = runner(self, start, call.args, call.kwargs, "force" if force else "call")
        else:
            value = self.run_started(c, start, call.args, call.kwargs,
                                     "force" if force else "call")
        shared.publish(c, tid)
        return value

    def run_started(
        self, c: cache_mod.NodeCache, start: RunStart, args: tuple, kwargs: dict, mode: str
    ) -> Any:
        """Run a prepared call here (in this process or on a Dask worker).

        ``mode`` is ``call`` (serve a cached outcome if there is one), ``force``
        (pure: recompute) or ``again`` (action: run again).
        """
        return self.policy.value(self._started(c, start, args, kwargs, mode))

    def outcome(self, call: Call, mode: str = "call") -> Any:
        """Run a prepared call like :meth:`run`, but return the kind's outcome: the value of
        a pure task, a :class:`QueryResult` (never warns), an :class:`ActionOutcome`."""
        if call.task is not self:
            raise TaskError(f"{self.name} cannot run a call of {call.function}; use its task")
        if self.policy.deterministic:
            return self._run(call, mode)
        return self._outcome(cache_mod.current(), call, mode)

    def _outcome(self, c: cache_mod.NodeCache, call: Call, mode: str) -> Any:
        """Run (or serve) a query or an action: the kind's outcome. At the top level of a
        ``use_remote_runner`` block (``kachery.channel``) it runs on the remote runner."""
        remote = context.remote_runner()
        if remote is None or getattr(_local, "stack", None):  # nested calls run here
            start = call.start(self.policy.reason(mode), c.node_id)
            return self._started(c, start, call.args, call.kwargs, mode)
        p = self.policy
        if p.check_cached(mode):  # an action's recorded outcome: served, not sent
            row = c.records.result(call.task_id)
            if row is not None:
                served = p.served(self, row, c.load)
                if served is not _MISS:
                    return served
        try:
            return remote.run_call(call, mode)
        except Exception as e:
            return self._stale_or_raise(c, call.task_id, e)

    def _started(self, c: cache_mod.NodeCache, start: RunStart, args: tuple, kwargs: dict,
                 mode: str) -> Any:
        """Run (or serve) a call whose start is described: the kind's outcome."""
        p = self.policy
        try:
            return self._execute(c, start, args, kwargs, p.lease, p.check_cached(mode))
        except Exception as e:
            return self._stale_or_raise(c, start.task_id, e)

    def _stale_or_raise(self, c: cache_mod.NodeCache, task_id: str, e: Exception) -> Any:
        """A query's last recorded result, marked stale, after its run raised ``e``;
        anything else (and a query with no usable result) raises ``e`` again."""
        p = self.policy
        if not p.stale_fallback:
            raise e
        row = c.records.result(task_id)
        value = c.load(row) if row is not None else _MISS
        if value is _MISS:
            raise e
        return p.stale(value, _describe(e), row.finished)

    def _execute(
        self, c: cache_mod.NodeCache, start: RunStart, args: tuple, kwargs: dict,
        lease: bool, check_cached: bool,
    ) -> Any:
        tid = start.task_id
        stack = _stack()
        if any(f.task_id == tid for f in stack):
            raise TaskDefinitionError(
                f"{self.name} calls itself with the same arguments ({tid}); it would wait "
                "for its own result forever"
            )
        ttl = leases.lease_ttl() if lease else None
        got = self._begin(c, start, ttl, check_cached)
        if isinstance(got, _Served):
            return got.value
        run_id, held = got
        frame = _Frame(tid)
        stack.append(frame)
        p = self.policy
        try:
            value = self.func(*resolve_futures(args), **resolve_futures_kw(kwargs))
        except BaseException as e:
            stack.pop()
            c.records.finish(run_id, start, held, "error", frame.children, error=_describe(e),
                             serve=p.serves_failures)
            raise
        stack.pop()
        if not self._warned and self._watch is not None and self._watch.changed():
            self._warn_id_changed()
        if not p.keeps_value:
            finished = c.records.finish(run_id, start, held, "success", frame.children)
            return p.ran(self, tid, None, finished)
        try:
            codec, data = results.encode(value)
            label = f"{self.func.__name__}.{codec.extension}"
            inline = None
            if codec.inline and len(data) <= c.inline_max:
                inline = bytes(data)
                uri = format_uri(_sha256(inline).hexdigest(), label=label, size=len(inline))
            else:
                uri = c.store.store_bytes(data, label=label)
        except BaseException as e:
            c.records.finish(run_id, start, held, "error", frame.children, error=_describe(e),
                             serve=False)
            raise
        finished = c.records.finish(run_id, start, held, "success", frame.children, uri,
                                    codec.name, data=inline)
        return p.ran(self, tid, c.put(tid, codec.memo(value, data)), finished)

    def _begin(self, c: cache_mod.NodeCache, start: RunStart, ttl: float | None,
               check_cached: bool) -> Any:
        """Get the lease and a run row, waiting for another holder; or a recorded outcome."""
        tid = start.task_id
        delay = 0.001
        while True:
            got = c.records.begin(start, ttl, check_cached)
            if isinstance(got, ResultRow):
                served = self.policy.served(self, got, c.load)
                if served is not _MISS:
                    return _Served(served)
                c.records.forget(tid)  # its blob is gone: compute again
                continue
            if got is not None:
                return got
            while True:  # another live process holds the lease: wait for it
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                if check_cached:
                    row = c.records.result(tid)
                    if row is not None:
                        served = self.policy.served(self, row, c.load)
                        if served is not _MISS:
                            return _Served(served)
                held = c.records.lease(tid)
                if held is None or held.is_stale():
                    break

    def _warn_id_changed(self) -> None:
        what = self._watch.first_change() if self._watch is not None else None
        self._warned = True
        warnings.warn(
            TaskIdWarning(
                f"{self.name} changed {what or 'a value it reads'} while it ran; that value is "
                "part of its task id, so later calls get new ids and compute again. If it does "
                "not change results (a counter, a cache), mark it with kachery.untracked(...)"
            ),
            stacklevel=2,
        )

    def action_failed(self, row: ResultRow) -> TaskError:
        """The error for an action whose recorded outcome is a failure."""
        return TaskError(
            f"action {self.name} ({row.task_id}) failed at {fmt_time(row.finished)}: "
            f"{row.error}. Actions run at most once per id; to try again call "
            f"{self.func.__name__}.run_again(...) or kachery.again({self.func.__name__}, ...)"
        )

    # -------------------------------------------------------- pickling
    def __reduce__(self):
        mod = sys.modules.get(self.func.__module__)
        if (
            mod is not None
            and self.func.__module__ != "__main__"
            and getattr(mod, self.func.__qualname__, None) is self
        ):
            return (_import_task, (self.func.__module__, self.func.__qualname__))
        return (_rebuild_task, (self.func, self.kind, self.version, self.name, self.code_hash))

    def __repr__(self) -> str:
        v = f", version={self.version!r}" if self.version else ""
        return f"<{self.kind} task {self.name}{v}>"


class _Served:
    """A value served from the cache while trying to start a run."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _import_task(module: str, qualname: str) -> Task:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild_task(func, kind, version, name, code_hash) -> Task:
    """A task sent by value (e.g. defined in ``__main__``), keeping the sender's code hash."""
    t = Task(func, kind, version=version, name=name)
    t._code_hash = code_hash  # kept as sent (the watch stays empty): ids agree with the sender
    return t


def _stable_name(func: types.FunctionType) -> str:
    """``module.qualname``; ``__main__.qualname`` for a script or a notebook.

    A script run as ``python script.py`` and a notebook both define their
    functions in ``__main__`` (``__mp_main__`` in multiprocessing's children):
    the code hash tells their functions apart, so the qualified name suffices.
    """
    if func.__name__ == "<lambda>":
        raise TaskDefinitionError(
            "a lambda has no stable name to identify its task; use a def, or give one: "
            "kachery.pure(name='mymodule.myfunction')(lambda ...)"
        )
    module = func.__module__
    if module in (None, "__mp_main__"):
        module = "__main__"
    return f"{module}.{func.__qualname__}"


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 2000 else text[:1997] + "..."


# ------------------------------------------------------------ decorators
@overload
def pure(func: F) -> F: ...
@overload
def pure(*, version: str | None = None, name: str | None = None) -> Callable[[F], F]: ...
def pure(func=None, *, version=None, name=None):
    """Make a deterministic function a cached task: ``@pure`` or ``@pure(version="2")``.

    ``version`` replaces the code hash in the task id (bump it when the
    meaning changes); ``name`` replaces ``module.qualname`` (needed for
    lambdas).
    """
    return _decorate(func, "pure", version, name)


def query(func=None, *, version=None, name=None):
    """Make a function a query: re-run on every call, last result cached as a fallback."""
    return _decorate(func, "query", version, name)


def action(func=None, *, version=None, name=None):
    """Make a function an action: run at most once per id, its outcome recorded."""
    return _decorate(func, "action", version, name)


def _decorate(func, kind: str, version, name):
    if func is None:
        return lambda f: Task(f, kind, version=version, name=name)
    if isinstance(func, str):
        raise TaskDefinitionError(
            f"@{kind}({func!r}): pass the version by keyword, @{kind}(version={func!r})"
        )
    return Task(func, kind, version=version, name=name)


def again(task: Task, *args: Any, **kwargs: Any) -> Any:
    """Run ``task(*args, **kwargs)`` even though an outcome is recorded.

    For an action this is ``run_again``; for a pure task, ``recompute``; a
    query runs on every call anyway.
    """
    if not isinstance(task, Task):
        raise InvalidValueError(f"kachery.again needs a task as its first argument, not {task!r}")
    return task.run_again(*args, **kwargs)
