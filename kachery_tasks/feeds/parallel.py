"""Checking the signatures of many feed messages on several cores.

Checking an Ed25519 signature is most of the cost of a fully verified read
(here about 40 us a message, against about 6 us to decode a message and
check its hash link). For reads long enough to repay it, the signatures of
each page are checked by worker processes while the reading process decodes
the next page; the reader hands out no message before its signature has
been checked (see ``Subfeed.read(verify="full")``).

The workers are ``python .../feeds/verify_worker.py`` processes talking over
pipes: they import nothing of the caller's program (no re-run of an
unguarded script, no fork of a process with threads), nor of kachery_tasks,
only libsodium. They are started on first need (a few tens of milliseconds,
once per process), reused by later reads, and end when this process does.
``KACHERY_TASKS_VERIFY_WORKERS`` sets how many (default: the cores, at most
4; ``0``: check every signature in the reading process, the default on a
single-core machine). One parallel read runs at a time per process; another
thread's full read meanwhile checks in its own thread. If a worker cannot
start or dies, its share is checked in the reading process: slower, never
skipped.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from typing import IO

from ..errors import InvalidValueError
from . import verify_worker
from .verify_worker import RESULT, encode_request, first_bad

# Fewer messages than this are checked in the reading process: starting the
# workers would cost more than it saves.
MIN_MESSAGES = 4000
ENV = "KACHERY_TASKS_VERIFY_WORKERS"

Item = tuple[int, bytes, str]  # (seq, unsigned bytes, signature hex)

_busy = threading.Lock()  # held by the one read that uses the workers
_workers: list[_Worker] = []
_broken = False


def worker_count() -> int:
    """How many worker processes check signatures (0: none, check in this process)."""
    from ..keys import _sodium

    if _sodium() is None:
        return 0  # the workers check with libsodium; without it, checks stay here
    raw = os.environ.get(ENV)
    if raw is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        return 0 if cores < 2 else min(cores, 4)
    try:
        n = int(raw)
        if n < 0:
            raise ValueError
    except ValueError:
        raise InvalidValueError(
            f"{ENV} must be a whole number of worker processes (0 to check signatures in "
            f"the reading process), not {raw!r}"
        ) from None
    return n


class _Worker:
    """One verify_worker process and its two pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, verify_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _widen_pipe(self.proc.stdin.fileno())
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout

    def send(self, request: bytes) -> None:
        self.stdin.write(request)
        self.stdin.flush()

    def receive(self) -> int:
        """The worker's answer to the oldest request not yet answered."""
        data = self.stdout.read(RESULT.size)
        if len(data) != RESULT.size:
            raise OSError("signature worker ended")
        return RESULT.unpack(data)[0]

    def stop(self) -> None:
        try:
            self.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold a page or two of requests, so that queueing the next page
    behind the one being checked never blocks the reader (Linux; elsewhere a
    full pipe only makes the reader wait)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except (ImportError, OSError):
        pass


_PIPE_SIZE = 1 << 20


def _start(n: int) -> list[_Worker]:
    global _broken
    while len(_workers) < n and not _broken:
        try:
            _workers.append(_Worker())
        except OSError:
            _broken = True
    return _workers[:n]


def _give_up() -> None:
    """A worker failed: stop them all and check in the reading process from now on."""
    global _broken
    _broken = True
    while _workers:
        _workers.pop().stop()


@atexit.register
def _stop_all() -> None:
    while _workers:
        _workers.pop().stop()


class Batch:
    """The signatures of one page of messages, being checked by the workers."""

    def __init__(self, feed: str, items: list[Item], parts: list[tuple[int, int, _Worker]]):
        self.feed = feed
        self.items = items
        self._parts = parts  # (offset, length, worker) per worker's share
        self._done = False
        self._first: int | None = None

    def first_bad(self) -> int | None:
        """Wait for the check; the seq of the first message whose signature fails, or None."""
        if self._done:
            return self._first
        first: int | None = None
        for offset, length, worker in self._parts:
            try:
                i = worker.receive()
            except (OSError, ValueError):  # the worker died: check its share here instead
                _give_up()
                i = first_bad(self.feed, _pairs(self.items[offset : offset + length]))
            except BaseException:  # interrupted mid-answer: the pipes are out of step
                _give_up()
                raise
            if i >= 0 and first is None:
                first = self.items[offset + i][0]
        self._done, self._first = True, first
        return first


class Pool:
    """The workers, held by one read at a time: ``Pool.acquire(n)``, then ``release()``."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    @classmethod
    def acquire(cls, n: int) -> Pool | None:
        """The pool for this read, or None (no workers, or another read has them)."""
        if n <= 0 or _broken or not _busy.acquire(blocking=False):
            return None
        workers = _start(n)
        if not workers:
            _busy.release()
            return None
        return cls(workers)

    def release(self) -> None:
        _busy.release()

    def submit(self, feed: str, items: list[Item]) -> Batch:
        """Send a page's signatures to the workers, a share each."""
        if _broken:
            return _checked_here(feed, items)
        size = -(-len(items) // len(self.workers)) or 1
        parts = []
        for worker, offset in zip(self.workers, range(0, len(items), size), strict=False):
            share = items[offset : offset + size]
            try:
                worker.send(encode_request(feed, _pairs(share)))
            except (OSError, ValueError):  # the worker died (or was stopped)
                _give_up()
                return _checked_here(feed, items)
            parts.append((offset, len(share), worker))
        return Batch(feed, items, parts)


def _checked_here(feed: str, items: list[Item]) -> Batch:
    batch = Batch(feed, items, [])
    i = first_bad(feed, _pairs(items))
    batch._done, batch._first = True, (items[i][0] if i >= 0 else None)
    return batch


def _pairs(items: list[Item]) -> list[tuple[bytes, str]]:
    return [(unsigned, signature) for _, unsigned, signature in items]
