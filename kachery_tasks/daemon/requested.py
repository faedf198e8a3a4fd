"""Tasks requested through the API (``POST /api/tasks/request``): run here or by a channel.

A request names a function and gives its arguments as JSON values, bound by
name to the task's signature (:func:`bind`). Without a channel, the function
must be registered on this daemon (``node start --provide MODULE``) and runs
on the daemon's executor, as the daemon's node: a cached pure result is
served without running. With a channel, the call is asked of that channel's
providers exactly as inside ``with kachery.channel(name):`` (the task is the
registered one, else the one its module defines, imported here: its code hash
must be the providers').

Each request runs in a thread of its own; :class:`TaskRequests` keeps a
status row per request (``{"id", "type", "channel", "from", "to", "status",
"started", "progress", "detail"}``, as the channel services' rows) while it
runs and for the last :data:`KEEP_DONE` that ended, and reports each change
to an ``events`` callback as ``{"type": "request", "request": row}``: the hub
lists them with the requests in flight through the channels.

The answer (:meth:`Requested.answer`) is ``{"request", "task_id", "function",
"channel", "status", "result", "computed_by", "error"}``: ``status`` is
``finished``, ``error`` (the task raised: ``error`` says what) or
``running``; ``result`` is the value when it is JSON of at most
:data:`INLINE_RESULT_MAX` bytes, else ``{"uri", "codec", "summary"}`` (the
result's content URI on this node). ``computed_by`` is the node id recorded as
having computed the result. A failure of the request itself (no provider, a
channel not joined, a Dask cluster gone) is raised as its KacheryError.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import (
    ExecutorError,
    InvalidValueError,
    KacheryError,
    RemoteTaskError,
    UnknownTaskError,
    one_line,
)
from ..nodes import Node

log = logging.getLogger("kachery_tasks.daemon")

DEFAULT_WAIT = 30.0
"""Seconds a request waits for its answer before saying ``running`` (HTTP 202)."""

MAX_WAIT = 600.0
"""The longest ``wait`` a request may ask for."""

INLINE_RESULT_MAX = 64 * 1024
"""Bytes of JSON up to which a result is answered as its value (larger: a summary)."""

KEEP_DONE = 100
"""Ended requests whose rows are kept (the hub shows them with those in flight)."""

REQUEST_TYPE = "request_task"

Events = Callable[[dict[str, Any]], None]


def find_task(provided: Any, function: str, *, channel: str | None) -> Any:
    """The task a request names: registered in ``provided`` (exact name, or a unique last
    part); for a channel request, else the task its module defines. UnknownTaskError
    (404) otherwise, listing what is registered."""
    task = _registered(provided, function)
    if task is not None:
        return task
    if channel is not None:
        task = _importable_task(function)
        if task is not None:
            return task
    if provided is None or len(provided) == 0:
        what = ("this node provides no tasks (start it with 'kachery-tasks node start "
                "--provide MODULE')")
    else:
        names = provided.names()
        what = (f"it provides {', '.join(names[:50])}{' ...' if len(names) > 50 else ''} "
                f"(from {', '.join(provided.modules) or 'no module'})")
    where = (f"; to ask channel {channel} for it, its module must be importable by this "
             "daemon" if channel is not None else "")
    raise UnknownTaskError(f"no task named {function[:200]!r} here: {what}{where}")


def _registered(provided: Any, function: str) -> Any:
    if provided is None:
        return None
    if function in provided:
        return provided.lookup(function)
    matches = [n for n in provided.names() if n.endswith("." + function)]
    return provided.lookup(matches[0]) if len(matches) == 1 else None


def _importable_task(function: str) -> Any:
    """The task named ``function`` (``module.qualname``) found by importing its module."""
    from ..network.tasks.registry import import_module
    from ..runtime.tasks import Task

    parts = function.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = import_module(".".join(parts[:cut]))
        except KacheryError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj if isinstance(obj, Task) and obj.name == function else None
    return None


def bind(task: Any, args: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """``args`` (parameter name -> value) as the positional and keyword arguments of
    ``task``; InvalidValueError naming an unknown or a missing parameter."""
    params = task.signature.parameters
    named = [p for p in params.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = ", ".join(p.name for p in named) or "none"
    for name in args:
        known = name in params and params[name].kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if not known and not takes_any:
            raise InvalidValueError(f"{task.name} has no parameter {name[:200]!r} (its "
                                    f"parameters: {names}); fix the request's args")
    for p in named:
        if p.default is p.empty and p.name not in args:
            raise InvalidValueError(f"{task.name} needs parameter {p.name!r} (its "
                                    f"parameters: {names}); add it to the request's args")
    only = [p for p in named if p.kind is p.POSITIONAL_ONLY]
    given = [i for i, p in enumerate(only) if p.name in args]
    positional = tuple(args.get(p.name, p.default) for p in only[:given[-1] + 1]) \
        if given else ()
    keyword = {k: v for k, v in args.items() if k not in {p.name for p in only}}
    return positional, keyword


class Requested:
    """One request: runs in its own thread; :attr:`done` is set when it ended."""

    def __init__(self, node: Node, task: Any, args: tuple, kwargs: dict[str, Any],
                 task_id: str, channel: str | None) -> None:
        self.id = secrets.token_hex(16)
        self.node = node
        self.task = task
        self.args, self.kwargs = args, kwargs
        self.task_id = task_id
        self.channel = channel
        self.started = time.time()
        self.status = "running"
        self.detail = ""
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None  # the task's exception, or the request's
        self.task_failed = False  # the error is the task's (answered status "error")
        self._live: Callable[[], tuple[str, str]] | None = None
        self._when_done: list[Callable[[], None]] = []
        self._done_lock = threading.Lock()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (in the request's thread, or now) once the request ended."""
        with self._done_lock:
            if not self.done.is_set():
                self._when_done.append(fn)
                return
        fn()

    def _ended(self) -> None:
        with self._done_lock:
            self.done.set()
            callbacks, self._when_done = self._when_done, []
        for fn in callbacks:
            fn()

    def row(self) -> dict[str, Any]:
        """Its status row (the shape of the channel services' rows)."""
        status, detail = self.status, self.detail
        live = self._live
        if live is not None and not self.done.is_set():
            status, detail = live()
        what = f"{self.task.name} ({self.task_id[:19]}...)"
        return {"id": self.id, "type": REQUEST_TYPE,
                "channel": self.channel or "(this node)", "from": self.node.id,
                "to": None if self.channel else self.node.id, "status": status,
                "started": self.started, "progress": None,
                "detail": f"{what}: {detail}" if detail else what}

    def answer(self) -> dict[str, Any]:
        """The API's answer; raises the request's own failure (a KacheryError)."""
        if not self.done.is_set():
            return self._answer("running")
        if self.error is not None and not self.task_failed:
            raise self.error
        if self.error is not None:
            by = getattr(self.error, "provider", None) or self._computed_by()  # RemoteTaskError
            return {**self._answer("error"), "computed_by": by,
                    "error": one_line(self.error, 500)}
        return {**self._answer("finished"), "result": self._result(),
                "computed_by": self._computed_by()}

    def _answer(self, status: str) -> dict[str, Any]:
        return {"request": self.id, "task_id": self.task_id, "function": self.task.name,
                "channel": self.channel, "status": status, "result": None,
                "computed_by": None, "error": None}

    def _computed_by(self) -> str | None:
        from ..runtime import cache

        row = cache.for_node(self.node).records.result(self.task_id)
        if row is not None and row.node:
            return row.node
        return None if self.channel else self.node.id

    def _result(self) -> Any:
        from ..runtime import cache, results
        from ..runtime.call import summarize
        from ..runtime.policies import ActionOutcome

        value = self.value
        if isinstance(value, ActionOutcome):
            return {k: v for k, v in dataclasses.asdict(value).items()
                    if k not in ("task_id", "function")}
        if results.codec_named("json").accepts(value):
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            if len(text.encode("utf-8")) <= INLINE_RESULT_MAX:
                return value
        c = cache.for_node(self.node)
        row = c.records.result(self.task_id)
        uri = c.materialize(self.task_id) if row is not None else None
        return {"uri": uri, "codec": row.codec if row is not None else None,
                "summary": summarize(value)}


class TaskRequests:
    """The requests made through the API of ``node``, whose NodeDaemon is ``daemon`` (its
    ``provided`` registry and ``executor``; None without channel services)."""

    def __init__(self, node: Node, daemon: Any | None, events: Events | None = None) -> None:
        self.node = node
        self.daemon = daemon
        self.events = events
        self._lock = threading.Lock()
        self._running: dict[str, Requested] = {}
        self._done: OrderedDict[str, Requested] = OrderedDict()

    def start(self, function: str, args: dict[str, Any],
              channel: str | None = None) -> Requested:
        """Check the request (raising its KacheryError) and start it in a thread."""
        provided = getattr(self.daemon, "provided", None)
        joined_name = None
        if channel is not None:
            from ..network.channels import ChannelStore

            joined_name = ChannelStore(self.node.dir).find(channel).name  # 404 when not joined
        task = find_task(provided, function, channel=joined_name)
        positional, keyword = bind(task, args)
        with self.node:
            task_id = task.prepare(*positional, **keyword).task_id  # bad values: 400
        req = Requested(self.node, task, positional, keyword, task_id, joined_name)
        with self._lock:
            self._running[req.id] = req
        self._changed(req)
        threading.Thread(target=self._run, args=(req,), daemon=True,
                         name=f"kachery-api-request-{req.id[:8]}").start()
        return req

    def _run(self, req: Requested) -> None:
        try:
            with req.node:
                if req.channel is None:
                    req.value = self._run_here(req)
                else:
                    req.value = self._run_in_channel(req)
            req.status = "finished"
        except BaseException as e:
            req.error = e
            req.task_failed = _is_task_failure(e, req.channel)
            req.status, req.detail = "error", one_line(e, 500)
            if not req.task_failed:
                log.info("API request for %s failed: %s", req.task.name, req.detail)
        finally:
            with self._lock:
                self._running.pop(req.id, None)
                self._done[req.id] = req
                while len(self._done) > KEEP_DONE:
                    self._done.popitem(last=False)
            try:  # the event first: a client answered next sees it before anything later
                self._changed(req)
            finally:
                req._ended()

    def _run_here(self, req: Requested) -> Any:
        from ..runtime.executors import LOCAL

        executor = getattr(self.daemon, "executor", None) or LOCAL
        req.detail = "running on this node"
        return executor.submit(req.task, req.args, req.kwargs).result()

    def _run_in_channel(self, req: Requested) -> Any:
        from ..network.tasks.requester import ChannelTasks

        with ChannelTasks(str(req.channel)) as tasks:
            future = tasks.submit(req.task, req.args, req.kwargs)
            req._live = lambda: (future.status, future.detail)
            return future.result()

    def _changed(self, req: Requested) -> None:
        if self.events is not None:
            self.events({"type": "request", "request": req.row()})

    def status(self) -> list[dict[str, Any]]:
        """The rows of the requests that ended (the last ones) and of those running."""
        with self._lock:
            reqs = [*self._done.values(), *self._running.values()]
        return [r.row() for r in reqs]


def _is_task_failure(e: BaseException, channel: str | None) -> bool:
    """Whether ``e`` is the task's own failure (answered ``error``) rather than the
    request's (answered with its HTTP status)."""
    if channel is not None:  # the requester raises KacheryErrors of its own
        return isinstance(e, RemoteTaskError) or not isinstance(e, KacheryError)
    return not isinstance(e, ExecutorError)
