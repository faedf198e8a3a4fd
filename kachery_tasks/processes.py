"""Processes on this host: is the one that wrote something still running?

Leases (a task being computed) and temporary files (content being written)
both name the process that holds them; a holder whose process has ended can
be taken over or cleaned up. A process that is stopped (SIGSTOP, a debugger)
or busy in a long call is still running; a zombie (ended, not yet reaped by
its parent) is not.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are plain.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) <= 19:
        return None
    return fields[0].decode(), fields[19].decode()


def pid_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None."""
    st = _proc_stat(pid)
    return None if st is None else st[1]


_mine: tuple[int, str | None] = (-1, None)


def my_start_time() -> str | None:
    """When this process started (see :func:`pid_start_time`); right in a forked child too."""
    global _mine
    pid = os.getpid()
    if _mine[0] != pid:
        _mine = (pid, pid_start_time(pid))
    return _mine[1]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True when process ``pid`` exists on this host (and, if known, started at ``start``).

    A zombie is not alive: it has ended, only its exit status is left.
    """
    if pid == os.getpid():
        return start is None or start == my_start_time()
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    st = _proc_stat(pid)
    if st is not None:
        state, now_start = st
        if state in ("Z", "X"):
            return False  # ended; its parent has not collected it yet
        if start is not None and now_start != start:
            return False  # the pid was reused by another process
    return True
