"""Starting the calls of a provider's jobs on its executor together.

Each job of a :class:`~.provider.TaskProvider` runs in its own thread and
computes one call. Submitting each call on its own costs a cluster one
scheduler message per call; the :class:`Launcher` gathers the calls its jobs
want started within :data:`GATHER_FOR` seconds (a call alone, with nothing
else under way, goes at once) and starts them with one
:meth:`~kachery_tasks.runtime.executors.Executor.submit_many` per task and
mode (``client.map`` on Dask). An executor that runs calls in the calling
thread (the in-process one) is used directly, so that the jobs' calls still run
side by side.
"""

from __future__ import annotations

import concurrent.futures
import threading

from ...nodes import Node
from ...runtime.call import Call
from ...runtime.executors import Executor, TaskFuture

GATHER_FOR = 0.002
"""Seconds the launcher waits for more calls once one arrived."""


class Launcher:
    """Starts calls on ``executor`` as ``node`` (see the module docstring)."""

    def __init__(self, executor: Executor, node: Node, gather_for: float = GATHER_FOR) -> None:
        self.executor = executor
        self.node = node
        self.gather_for = gather_for
        self._ready = threading.Condition()
        self._queue: list[tuple[Call, str, concurrent.futures.Future]] = []
        self._running = 0  # calls queued or started, not ended
        self._closed = False
        self._thread: threading.Thread | None = None

    def run(self, call: Call, mode: str) -> None:
        """Compute ``call`` on the executor and wait until it ended (raises what it raised).
        The value stays where it was computed: that node recorded and published it."""
        if self.executor.in_caller:
            self.executor.submit(call.task, call.args, call.kwargs, mode).wait()
            return
        started: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the provider is closing")
            self._queue.append((call, mode, started))
            self._running += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kachery-launch",
                                                daemon=True)
                self._thread.start()
            self._ready.notify()
        try:
            future: TaskFuture = started.result()
            future.wait()
        finally:
            with self._ready:
                self._running -= 1

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed and not self._queue:
                    return
                alone = self._running == 1  # nothing else under way: no company to wait for
            if not alone:
                threading.Event().wait(self.gather_for)
            with self._ready:
                todo, self._queue = self._queue, []
            groups: dict[tuple[int, str], list[tuple[Call, str, concurrent.futures.Future]]] = {}
            for item in todo:
                groups.setdefault((id(item[0].task), item[1]), []).append(item)
            for group in groups.values():
                self._start(group)

    def _start(self, group: list[tuple[Call, str, concurrent.futures.Future]]) -> None:
        task, mode = group[0][0].task, group[0][1]
        try:
            with self.node:
                futures = self.executor.submit_many(
                    task, [(call.args, call.kwargs) for call, _, _ in group], mode)
        except BaseException as e:  # the cluster is away: each job hears it
            for _, _, started in group:
                started.set_exception(e)
            return
        for (_, _, started), future in zip(group, futures, strict=True):
            started.set_result(future)
