"""The two threads behind a synchronous pub/sub client.

:class:`LoopThread` runs an asyncio event loop (the SDK's network code) in a
daemon thread and lets other threads run coroutines on it and wait for the
result; :class:`CallbackThread` calls user callbacks one at a time, in the
order they were submitted, so a slow or blocking callback never stalls the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Coroutine
from typing import Any, Protocol

log = logging.getLogger("kachery_tasks.network.pubsub")


class LoopThread:
    """An asyncio event loop running forever in a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        """Run ``coro`` on the loop and return its result; TimeoutError after ``timeout`` s.

        On a timeout the coroutine is cancelled. Calling this from the loop's
        own thread would wait for ever, so it raises RuntimeError instead.
        """
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking pub/sub call cannot run on the pub/sub event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and close it."""
        if not self.thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout)
        except (TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self.loop.close()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process's pub/sub event loop thread (``kachery-pubsub-loop``), started on first use.

    Every client of the process runs its SDK connection on this one loop: a
    message published by one client and received by another in the same
    process then crosses no thread boundary, and a process holds two threads
    per client fewer.
    """
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.thread.is_alive() or _shared.pid != os.getpid():
            _shared = LoopThread("kachery-pubsub-loop")
        return _shared


class Delivery(Protocol):
    """A subscription as the callback thread sees it."""

    active: bool

    def callback(self, arg: Any) -> None: ...


_STOP = object()
_BURST_GAP = 250e-6  # seconds: messages closer than this to the previous one form a burst


class CallbackThread:
    """Calls ``delivery.callback(arg)`` for each submitted pair, in order, on one thread."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._last_submit = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, delivery: Delivery, arg: Any) -> None:
        """Queue one call; it is skipped if ``delivery.active`` is False by then."""
        now = time.perf_counter()
        lone = self._queue.empty() and now - self._last_submit > _BURST_GAP
        self._last_submit = now
        self._queue.put((delivery, arg))
        if lone:
            # Release the GIL for a moment so the woken callback thread runs now,
            # not after the event loop has finished its whole batch of ready work
            # (measured: 100 us later). Only for a message that does not follow
            # another closely: in a burst the hand-over would cost about 10 us of
            # CPU per message, and throughput matters more than latency there.
            time.sleep(0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            delivery, arg = item
            if not delivery.active:
                continue
            try:
                delivery.callback(arg)
            except Exception:
                log.exception("a pub/sub callback raised (delivery goes on)")

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the calls already queued, then end the thread."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
