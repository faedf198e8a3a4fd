"""Live events for the hub: one hub fans events out to every server-sent-event client.

Events are JSON objects with a ``type``: what the channel services report
(``channel``, ``presence``, ``request``, ``feed``, ``config``; see
NodeDaemon.subscribe), ``run`` (a task run started or finished on this node,
found by :class:`RunWatcher`) and ``file`` (content stored through the API).
:meth:`EventHub.publish` may be called from any thread; each client has a
bounded queue and a client that falls that far behind is told so
(``{"type": "overflow"}``) and disconnected, never blocking the others.

:func:`sse` formats one server-sent event (``text/event-stream``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger("kachery_tasks.daemon")

QUEUE_LIMIT = 1000
_CLOSED = object()


class EventHub:
    """Fans published events out to the subscribers' asyncio queues."""

    def __init__(self) -> None:
        self._subs: dict[asyncio.Queue, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()

    def publish(self, event: dict[str, Any]) -> None:
        """Send ``event`` to every subscriber (any thread)."""
        with self._lock:
            subs = list(self._subs.items())
        for queue, loop in subs:
            try:
                loop.call_soon_threadsafe(_offer, queue, event)
            except RuntimeError:  # its loop is closed: the server is stopping
                pass

    async def stream(self, idle: float | None = None,
                     greeting: dict[str, Any] | None = None
                     ) -> AsyncIterator[dict[str, Any] | None]:
        """Every event published from now on, until the client goes away or overflows;
        None after each ``idle`` seconds without one (time for a keep-alive).

        ``greeting``, when given, comes first and only once the stream is subscribed:
        a client that acts on it (emits, reloads its lists) misses no event after it.
        """
        queue: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)
        with self._lock:
            self._subs[queue] = asyncio.get_running_loop()
        try:
            if greeting is not None:
                yield greeting
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), idle)
                except TimeoutError:
                    yield None
                    continue
                if event is _CLOSED:
                    yield {"type": "overflow", "detail": "events came faster than this client "
                           "read them; reconnect and reload"}
                    return
                yield event
        finally:
            with self._lock:
                self._subs.pop(queue, None)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)


def _offer(queue: asyncio.Queue, event: dict[str, Any]) -> None:
    if queue.full():
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_CLOSED)
        return
    queue.put_nowait(event)


def sse(data: Any, event: str | None = None, id: int | str | None = None) -> bytes:
    """One server-sent event; ``data`` is sent as JSON on one line."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keep-alive\n\n"


class RunWatcher:
    """Publishes a ``run`` event when a task run starts or changes status on this node.

    Task runs are recorded by whatever process runs them (a script, a Dask
    worker); the watcher reads the newest runs of the node's records every
    ``interval`` seconds while a client listens, and reports the ones it has not
    seen in that state.
    """

    def __init__(self, records: Any, hub: EventHub, interval: float = 0.5,
                 window: int = 50) -> None:
        self.records = records
        self.hub = hub
        self.interval = interval
        self.window = window
        self._seen: dict[int, str] | None = None

    def poll(self) -> int:
        """Look once; the number of events published (none the first time: the baseline)."""
        runs = self.records.runs(limit=self.window)
        now = {r.run_id: r.status for r in runs}
        previous, self._seen = self._seen, now
        if previous is None:
            return 0
        sent = 0
        for r in reversed(runs):  # oldest first
            if previous.get(r.run_id) != r.status:
                self.hub.publish({"type": "run", "task_id": r.task_id, "run_id": r.run_id,
                                  "function": r.function, "status": r.status})
                sent += 1
        return sent

    async def run(self) -> None:
        """Poll until cancelled, while someone listens (a client that connects gets the
        runs as they are then for a baseline, and loads the lists itself)."""
        while True:
            if not self.hub.subscribers:
                self._seen = None
                await asyncio.sleep(self.interval)
                continue
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a damaged records database: the hub shows the error elsewhere
                log.exception("could not read the task records")
            await asyncio.sleep(self.interval)
