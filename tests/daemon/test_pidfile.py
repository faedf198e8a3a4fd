"""One daemon per node directory: the pid file and its lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kachery_tasks.daemon.pidfile import PidFile, read_pid
from kachery_tasks.errors import DaemonError


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    path = tmp_path / "node" / "daemon" / "pid"
    first = PidFile(path)
    first.acquire()
    assert read_pid(path) == os.getpid()
    with pytest.raises(DaemonError, match=rf"a node daemon already serves {tmp_path / 'node'} "
                                          rf"\(pid {os.getpid()}\): stop it first"):
        PidFile(path).acquire()
    first.release()
    assert not path.exists()
    again = PidFile(path)
    again.acquire()  # free again
    again.release()


def test_a_pid_file_left_by_a_killed_daemon_does_not_keep_a_new_one_out(tmp_path):
    path = tmp_path / "daemon" / "pid"
    code = ("import sys, os; from pathlib import Path; "
            "from kachery_tasks.daemon.pidfile import PidFile; "
            f"PidFile(Path({str(path)!r})).acquire(); os._exit(0)")  # dies holding it
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert path.exists()
    found = PidFile(path)
    found.acquire()
    assert read_pid(path) == os.getpid()
    found.release()
