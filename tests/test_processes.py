"""Is a process still running here, and is it the same one?"""

import os
import subprocess
import sys

from kachery_tasks import processes


def test_reused_pid_is_detected():
    me = processes.pid_start_time(os.getpid())
    assert me is not None
    assert processes.pid_alive(os.getpid(), me)
    assert not processes.pid_alive(os.getpid(), str(int(me) + 1))
    parent = os.getppid()
    assert processes.pid_alive(parent, processes.pid_start_time(parent))
    assert not processes.pid_alive(parent, "1")


def test_an_ended_process_is_not_alive():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert not processes.pid_alive(int(proc.stdout))


def _report_start(q):
    me = os.getpid()
    q.put((processes.my_start_time(), processes.pid_start_time(me),
           processes.pid_alive(me, processes.pid_start_time(me))))


def test_a_forked_child_knows_its_own_start_time():
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    assert processes.my_start_time() == processes.pid_start_time(os.getpid())
    child = ctx.Process(target=_report_start, args=(q,))
    child.start()
    mine, from_proc, alive = q.get(timeout=60)
    child.join(60)
    assert mine == from_proc != processes.my_start_time()
    assert alive
