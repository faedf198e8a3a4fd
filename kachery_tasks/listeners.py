"""Callbacks registered for events of one source, called from any thread.

:class:`Listeners` is what ``FeedStore.on_commit`` and ``NodeDaemon.subscribe``
keep: ``add(callback)`` returns the function that removes it, and calling the
listeners calls each of them; one that raises is logged and the others still
run (a listener's failure is not the source's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kachery_tasks")


class Listeners:
    """The callbacks of one source (see the module docstring); ``what`` names them in logs."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._callbacks: list[Callable[..., Any]] = []

    def add(self, callback: Callable[..., Any]) -> Callable[[], None]:
        """Register ``callback``; returns the function that removes it (once is enough)."""
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def __call__(self, *args: Any) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                log.exception("a %s failed", self.what)

    def __len__(self) -> int:
        with self._lock:
            return len(self._callbacks)
