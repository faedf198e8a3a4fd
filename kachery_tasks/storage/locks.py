"""Advisory file locks (``flock``) that coordinate the processes sharing a store.

A lock is held on an open file description, so two threads of one process
that each take it exclude each other just as two processes do, and the
kernel releases it when its holder dies: a lock nobody holds means that
nobody is at work, which is how ``gc`` tells an abandoned partial download
from one in progress.

A lock file may be removed by whoever holds it (a finished download removes
its lock). Someone who opened the file just before it was removed would then
lock a file no longer in the directory; :func:`hold` notices (the name no
longer leads to the inode it locked) and starts again with the new file, so
two holders never believe they have the same lock. Lock files are opened
read-only (``flock`` needs no more), so in a group-shared node directory every
member can take a lock another member's process created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..fsutil import os_error


@contextlib.contextmanager
def hold(path: Path, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock at ``path`` (created if absent) for the ``with`` block.

    Yields True once held; with ``blocking=False`` yields False at once when
    someone else holds it (the block then runs without the lock).
    """
    fd = _acquire(path, shared, blocking)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _acquire(path: Path, shared: bool, blocking: bool) -> int | None:
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, f"cannot open lock file {path}") from e
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed (and perhaps re-created) while we waited: lock the new one


def remove_held(path: Path) -> None:
    """Remove the lock file at ``path``; call only while holding it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
