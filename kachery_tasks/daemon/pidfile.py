"""``<node>/daemon/pid``: which process serves a node directory, and only one at a time.

The daemon holds an exclusive ``flock`` on the pid file for as long as it
runs and writes its pid into it. A second daemon on the same node directory
finds the lock taken and refuses to start, naming the pid. The kernel
releases the lock when its holder dies however it dies, so a pid file left
by a crashed daemon never keeps a new one from starting.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import DaemonError
from ..fsutil import ensure_dir, os_error


class PidFile:
    """The pid file at ``path``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's pid; DaemonError if another one holds it."""
        ensure_dir(self.path.parent, self.shared)
        while True:
            fd = self._lock()
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed by a daemon that stopped meanwhile: lock the new file
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise os_error(e, f"cannot write {self.path}") from e
        self._fd = fd

    def _lock(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, f"cannot open {self.path}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise os_error(e, f"cannot lock {self.path}") from e
            raise DaemonError(
                f"a node daemon already serves {self.path.parent.parent} (pid "
                f"{read_pid(self.path) or '?'}): stop it first (Ctrl-C, or kill that pid)"
            ) from None
        return fd

    def release(self) -> None:
        """Remove the pid file and let the lock go."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)


def read_pid(path: Path) -> int | None:
    """The pid written in a pid file, or None."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
