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
"""

from __future__ import annotations

import hashlib
import inspect
import os
import stat as stat_mod
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from ..errors import (
    InvalidValueError,
    SourceFileError,
    TaskDefinitionError,
    TaskError,
)
from ..uris import format_uri
from . import cache as cache_mod
from . import codehash, encoders, ids, leases, results
from .encoders import _DISPATCH, _Refused, _resolve
from .records import ResultRow, RunStart

F = TypeVar("F", bound=Callable[..., Any])
_MISS = cache_mod.MISS
_sha256 = hashlib.sha256


class StaleResultWarning(UserWarning):
    """A query could not run, and its last cached result was returned instead."""


class TaskIdWarning(UserWarning):
    """A task changed, while it ran, a value its own task id depends on."""


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
        self._sig = sig
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
            bound = self._sig.bind(*args, **kwargs)
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

    def task_id(self, *args: Any, **kwargs: Any) -> str:
        """The id of this call, ``'sha256:<hex>'``, computed without running anything."""
        return self._id(args, kwargs)[0]

    def _components(
        self, parts: list[bytes], marks: list[int], names: list[str]
    ) -> dict[str, str]:
        """Per-argument hashes (hex SHA-256 of each argument's encoding), for ``why``.

        ``names`` are the parameters in encoding order (sorted by their encoding).
        """
        ends = [m - 1 for m in marks[1:]] + [len(parts)]
        return {
            name: _sha256(b"".join(parts[m:end])).hexdigest()
            for name, m, end in zip(names, marks, ends, strict=True)
        }

    def _prepare(
        self, tid: str, parts: list[bytes], marks: list[int], args: tuple, kwargs: dict,
        reason: str, node: str,
    ) -> RunStart:
        """What the records need about a call that is about to run (its id is encoded)."""
        bound = self._sig.bind(*args, **kwargs)  # cannot fail: the call was encoded
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        return RunStart(
            task_id=tid,
            kind=self.kind,
            function=self.name,
            version=self.version,
            code_hash=self.code_hash,
            components={"args": self._components(
                parts, marks, sorted(arguments, key=ids.name_key)
            )},
            args={k: summarize(v) for k, v in arguments.items()},
            inputs=_inputs(arguments.values()),
            reason=reason,
            node=node,
        )

    # ------------------------------------------------------------ calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tid, parts, marks = self._id(args, kwargs)
        return self._run("call", tid, parts, marks, args, kwargs)

    def _run(
        self, mode: str, tid: str, parts: list[bytes], marks: list[int], args: tuple,
        kwargs: dict,
    ) -> Any:
        """Run a call whose id is known: ``call`` (serve what is recorded), ``force``
        (pure: compute again) or ``again`` (action: run again)."""
        c = cache_mod.current()
        if mode == "call":
            stack = getattr(_local, "stack", None)
            if stack:
                stack[-1].children.append(tid)
        if self.kind == "pure":
            if mode == "call":
                value = c.get(tid)
                if value is not _MISS:
                    return value
            else:
                c.invalidate(tid)
            return self._pure(c, tid, parts, marks, args, kwargs, force=mode != "call")
        if self.kind == "query":
            q = self._query(c, tid, parts, marks, args, kwargs)
            if q.stale and mode == "call":
                warnings.warn(
                    StaleResultWarning(
                        f"{self.name} could not run ({q.error}); returning its result cached at "
                        f"{_fmt_time(q.computed)}, which may be out of date"
                    ),
                    stacklevel=3,  # the caller of __call__
                )
            return q.value
        return self._action(c, tid, parts, marks, args, kwargs, again=mode != "call")

    def fetch(self, *args: Any, **kwargs: Any) -> QueryResult:
        """Run a query and say whether the value is fresh or a stale fallback."""
        if self.kind != "query":
            raise TaskError(f"fetch is for queries; {self.name} is a {self.kind} task")
        tid, parts, marks = self._id(args, kwargs)
        return self._query(cache_mod.current(), tid, parts, marks, args, kwargs)

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
        tid, parts, marks = self._id(args, kwargs)
        return self._run("force", tid, parts, marks, args, kwargs)

    def run_again(self, *args: Any, **kwargs: Any) -> Any:
        """Run even though an outcome is recorded (actions); for pure tasks, ``recompute``."""
        tid, parts, marks = self._id(args, kwargs)
        return self._run("again", tid, parts, marks, args, kwargs)

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
        from .executors import current_executor

        return current_executor().submit(self, args, kwargs)

    def map(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> list:
        """``submit(item, *args, **kwargs)`` for every item; a list of TaskFutures."""
        from .executors import current_executor

        return current_executor().map(self, items, args, kwargs)

    # ---------------------------------------------------------- execution
    def _pure(
        self, c: cache_mod.NodeCache, tid: str, parts: list, marks: list, args: tuple,
        kwargs: dict, force: bool,
    ) -> Any:
        if not force:
            row = c.records.result(tid)
            if row is not None:
                value = c.load(row)
                if value is not _MISS:
                    return value
        from . import shared
        from .executors import nested_runner

        if not force and shared.fetch(c, tid):
            value = c.load(c.records.result(tid))  # computed by a collaborator
            if value is not _MISS:
                return value
        start = self._prepare(tid, parts, marks, args, kwargs, "forced" if force else "miss",
                              c.node_id)
        runner = nested_runner()
        if runner is not None:
            value = runner(self, start, args, kwargs, "force" if force else "call")
        else:
            value = self.run_started(c, start, args, kwargs, "force" if force else "call")
        shared.publish(c, tid)
        return value

    def run_started(
        self, c: cache_mod.NodeCache, start: RunStart, args: tuple, kwargs: dict, mode: str
    ) -> Any:
        """Run a prepared call here (in this process or on a Dask worker).

        ``mode`` is ``call`` (serve a cached outcome if there is one), ``force``
        (pure: recompute) or ``again`` (action: run again).
        """
        if self.kind == "pure":
            return self._execute(c, start, args, kwargs, lease=True, check_cached=mode == "call")
        if self.kind == "query":
            return self._query_started(c, start, args, kwargs).value
        return self._action_started(c, start, args, kwargs, again=mode == "again")

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
        if isinstance(got, ResultRow):  # an action's recorded outcome
            return got
        run_id, held = got
        frame = _Frame(tid)
        stack.append(frame)
        try:
            value = self.func(*_resolve_futures(args), **_resolve_futures_kw(kwargs))
        except BaseException as e:
            stack.pop()
            c.records.finish(run_id, start, held, "error", frame.children, error=_describe(e),
                             serve=self.kind == "action")
            raise
        stack.pop()
        if not self._warned and self._watch is not None and self._watch.changed():
            self._warn_id_changed()
        if self.kind == "action":
            c.records.finish(run_id, start, held, "success", frame.children)
            return ActionOutcome(tid, self.name, True, True, None, time.time())
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
        c.records.finish(run_id, start, held, "success", frame.children, uri, codec.name,
                         data=inline)
        return c.put(tid, codec.memo(value, data))

    def _begin(self, c: cache_mod.NodeCache, start: RunStart, ttl: float | None,
               check_cached: bool) -> Any:
        """Get the lease and a run row, waiting for another holder; or a cached outcome."""
        tid = start.task_id
        delay = 0.001
        while True:
            got = c.records.begin(start, ttl, check_cached)
            if isinstance(got, ResultRow):
                if self.kind == "action":
                    return got
                value = c.load(got)
                if value is not _MISS:
                    return _Served(value)
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
                        if self.kind == "action":
                            return row
                        value = c.load(row)
                        if value is not _MISS:
                            return _Served(value)
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

    # ------------------------------------------------------------- query
    def _query(self, c, tid, parts, marks, args, kwargs) -> QueryResult:
        start = self._prepare(tid, parts, marks, args, kwargs, "query", c.node_id)
        return self._query_started(c, start, args, kwargs)

    def _query_started(self, c, start: RunStart, args: tuple, kwargs: dict) -> QueryResult:
        try:
            value = self._execute(c, start, args, kwargs, lease=False, check_cached=False)
        except Exception as e:
            row = c.records.result(start.task_id)
            value = c.load(row) if row is not None else _MISS
            if value is _MISS:
                raise
            return QueryResult(value, True, _describe(e), row.finished)
        return QueryResult(value, False, None, time.time())

    # ------------------------------------------------------------ action
    def _action(self, c, tid, parts, marks, args, kwargs, again: bool) -> ActionOutcome:
        start = self._prepare(tid, parts, marks, args, kwargs, "again" if again else "miss",
                              c.node_id)
        return self._action_started(c, start, args, kwargs, again)

    def _action_started(self, c, start: RunStart, args, kwargs, again: bool) -> ActionOutcome:
        out = self._execute(c, start, args, kwargs, lease=True, check_cached=not again)
        if isinstance(out, ActionOutcome):
            return out
        row: ResultRow = out
        if row.status != "success":
            raise self.action_failed(row)
        return ActionOutcome(row.task_id, self.name, True, False, None, row.finished)

    def action_failed(self, row: ResultRow) -> TaskError:
        """The error for an action whose recorded outcome is a failure."""
        return TaskError(
            f"action {self.name} ({row.task_id}) failed at {_fmt_time(row.finished)}: "
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


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _resolve_futures(args: tuple) -> tuple:
    if not any(_is_future(a) or type(a) in (list, tuple, dict) for a in args):
        return args
    return tuple(_resolve_value(a) for a in args)


def _resolve_futures_kw(kwargs: dict) -> dict:
    if not kwargs:
        return kwargs
    return {k: _resolve_value(v) for k, v in kwargs.items()}


def _is_future(v: Any) -> bool:
    return getattr(type(v), "_kachery_future", False)


def _resolve_value(v: Any) -> Any:
    if _is_future(v):
        return v.result()
    t = type(v)
    if t is list:
        return [_resolve_value(x) for x in v] if any(_is_future(x) for x in v) else v
    if t is tuple:
        return tuple(_resolve_value(x) for x in v) if any(_is_future(x) for x in v) else v
    if t is dict and any(_is_future(x) for x in v.values()):
        return {k: _resolve_value(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------- summaries
def summarize(v: Any, limit: int = 80) -> str:
    """A short human-readable description of an argument (for records and the CLI)."""
    t = type(v)
    if hasattr(v, "dtype") and hasattr(v, "shape") and t.__module__.startswith("numpy"):
        if getattr(v, "ndim", 0) == 0:
            return f"{v.dtype}({v!r})"[:limit]
        return f"ndarray({v.dtype}, shape={tuple(v.shape)})"
    if isinstance(v, bytes | bytearray | memoryview):
        return f"{t.__name__}[{len(v)}]"
    if isinstance(v, File):
        return f"File({str(v.path)!r}, {v.uri})"[: limit * 2]
    if _is_future(v):
        return f"result of {v.task_id}"
    if t is str and v.startswith("sha256://") and len(v) < 300:
        return repr(v)  # a content URI: kept whole, it names an input
    try:
        text = repr(v)
    except Exception:  # repr refuses ints of over 4300 digits, also inside containers
        if t is int:
            return f"int of {v.bit_length()} bits"
        return f"{t.__name__} that cannot be shown"  # a summary must never fail
    if len(text) > limit:
        if isinstance(v, list | tuple | dict | set | frozenset):
            return f"{t.__name__} of {len(v)} items"
        return text[: limit - 3] + "..."
    return text


def _inputs(values: Iterable[Any]) -> list[str]:
    """Content URIs and task ids an argument list refers to."""
    found: list[str] = []

    def visit(v: Any, depth: int) -> None:
        t = type(v)
        if t is str:
            if v.startswith("sha256://"):
                from ..uris import is_content_uri

                if is_content_uri(v):
                    found.append(v)
        elif isinstance(v, File):
            found.append(v.uri)
        elif _is_future(v):
            found.append(v.task_id)
        elif depth < 3 and t in (list, tuple, set, frozenset):
            for x in v:
                visit(x, depth + 1)
        elif depth < 3 and t is dict:
            for x in v.values():
                visit(x, depth + 1)

    for v in values:
        visit(v, 0)
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------ File
class File:
    """A file argument identified by its content, not by its path.

    ``kachery.File(path)`` hashes the file (SHA-256, remembered while its size,
    mtime and inode stay the same), so a task taking it is recomputed when
    the content changes and not when the file moves. The task receives the
    File: use ``.path`` (or pass it to ``open``) to read it.
    """

    _hashes: ClassVar[dict[tuple, str]] = {}

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._signature()  # fail early for a missing file

    def _signature(self) -> tuple:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SourceFileError(f"kachery.File: no such file: {self.path}") from None
        except OSError as e:
            raise SourceFileError(f"kachery.File: cannot read {self.path}: {e.strerror}") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise SourceFileError(f"kachery.File: {self.path} is not a regular file")
        return (str(self.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file's current content."""
        sig = self._signature()
        h = File._hashes.get(sig)
        if h is None:
            try:
                with open(self.path, "rb") as f:
                    h = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as e:
                raise SourceFileError(f"kachery.File: cannot read {self.path}: {e}") from e
            File._hashes[sig] = h
        return h

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)

    @property
    def uri(self) -> str:
        """The ``sha256://`` URI of the content (not stored; see :meth:`store`)."""
        from ..uris import format_uri

        return format_uri(self.sha256, label=self.path.name, size=self.size)

    def store(self) -> str:
        """Copy the file into the node's store and return its URI."""
        return cache_mod.current().store.store_file(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"File({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def _enc_file(v: File, out: list) -> None:
    out.append(b"p" + v.sha256.encode("ascii"))


encoders.register_special(File, _enc_file)


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
