"""Processes on this host: is the one that wrote something still running?

Leases (a task being computed) and temporary files (content being written)
both name the process that holds them; a holder whose process has ended can
be taken over or cleaned up.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def pid_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are plain.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


MY_START = pid_start_time(os.getpid())  # this process, to tell a reused pid apart


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True when process ``pid`` exists on this host (and, if known, started at ``start``)."""
    if pid == os.getpid():
        return start is None or start == MY_START
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        now_start = pid_start_time(pid)
        if now_start is not None and now_start != start:
            return False  # the pid was reused by another process
    return True
