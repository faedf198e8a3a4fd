"""A progress bar on standard error for long operations, silent when not a terminal.

Large copies, hashes and transfers report how many bytes they just processed;
:func:`progress_bar` turns that into a single redrawn line with percentage,
rate and time left. When standard error is not a terminal (a pipe, a log file,
CI) or the operation is small, nothing is printed at all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from .sizes import format_size

ENV_FORCE = "KACHERY_TASKS_PROGRESS"  # "1" forces bars on, "0" off


class ProgressBar:
    """Accumulates byte counts (or counts of ``unit``) and redraws at most ten times a second."""

    def __init__(self, total: int, label: str, stream=None, unit: str | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r{self.label[:30]:<30} [{bar}] {frac * 100:5.1f}% "
            f"{self._rate(rate)}/s {left:5.0f}s left "
        )
        self.stream.flush()

    def _rate(self, rate: float) -> str:
        return format_size(int(rate)) if self.unit is None else f"{rate:.0f} {self.unit}"

    def close(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def _enabled(total: int, threshold: int) -> bool:
    forced = os.environ.get(ENV_FORCE)
    if forced is not None:
        return forced == "1"
    return total >= threshold and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(
    total: int, label: str, threshold: int, enabled: bool | None = None,
    unit: str | None = None,
) -> Iterator[Callable[[int], None] | None]:
    """Yield a byte-count callback drawing a bar, or None when no bar is wanted.

    ``enabled=None`` decides automatically: a bar only on a terminal and only for
    operations of at least ``threshold`` bytes. With ``unit`` the counts are of
    that (say "blobs"), not bytes.
    """
    if enabled is None:
        enabled = _enabled(total, threshold)
    if not enabled:
        yield None
        return
    bar = ProgressBar(total, label, unit=unit)
    try:
        yield bar
    finally:
        bar.close()
