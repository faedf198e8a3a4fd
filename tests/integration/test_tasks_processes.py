"""Tasks across real processes: one computation per id, and crashes that claim nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kachery_tasks.runtime import cache
from tests.network.channels.conftest import wait_for

RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"
pytestmark = pytest.mark.timeout(120)


# Run in a waiter: the first time the task runtime sleeps -- which it does only while
# another process holds the lease of the call -- it creates the file WAITING_MARKER.
SIGNAL_WAITING = """
import time, types
import kachery_tasks.runtime.tasks as tasks_mod
def _sleep(seconds, _real=time.sleep):
    open(WAITING_MARKER, "a").close()
    _real(seconds)
tasks_mod.time = types.SimpleNamespace(**{**vars(time), "sleep": _sleep})
"""


def _spawn(call: str, prelude: str = "") -> subprocess.Popen:
    code = (
        f"{prelude}\nimport sys; sys.path.insert(0, {str(RUNTIME_TESTS)!r}); import task_defs; "
        f"print(task_defs.{call}, flush=True)"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _task_defs():
    sys.path.insert(0, str(RUNTIME_TESTS))
    import task_defs

    return task_defs


def test_two_processes_compute_the_same_task_once():
    td = _task_defs()
    procs = [_spawn("slow_square(5, 1.5)") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["25", "25"]
    runs = cache.current().records.runs(task_id=td.slow_square.task_id(5, 1.5))
    assert [r.status for r in runs] == ["success"]
    assert runs[0].pid in {p.pid for p in procs}


def _wait_for_running(tid: str, timeout: float = 30.0):
    """The run of ``tid``, once it is recorded as running."""
    records = cache.current().records

    def running():
        runs = records.runs(task_id=tid)
        return runs[0] if runs and runs[0].status == "running" else None

    return wait_for(running, timeout, "the task's start")


def test_sigkill_mid_task_leaves_no_success_and_the_next_call_recomputes(tmp_path, monkeypatch):
    # With an hour-long lease only the holder's death can explain a takeover.
    monkeypatch.setenv("KACHERY_TASKS_LEASE_TTL", "3600")
    td = _task_defs()
    marker = str(tmp_path / "go")
    tid = td.block_unless.task_id(marker, 3)
    proc = _spawn(f"block_unless({marker!r}, 3)")
    run = _wait_for_running(tid)
    assert run.pid == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    records = cache.current().records
    assert records.result(tid) is None
    [killed] = records.runs(task_id=tid)
    assert killed.status == "running" and killed.effective_status() == "abandoned"
    assert not td.block_unless.is_cached(marker, 3)
    open(marker, "w").close()
    assert td.block_unless(marker, 3) == 6  # the dead holder's lease is taken over
    statuses = [r.status for r in records.runs(task_id=tid)]
    assert statuses == ["success", "abandoned"]
    assert td.block_unless.is_cached(marker, 3)


def test_a_waiting_process_takes_over_when_the_holder_is_killed(tmp_path, monkeypatch):
    monkeypatch.setenv("KACHERY_TASKS_LEASE_TTL", "3600")
    td = _task_defs()
    marker = str(tmp_path / "go")
    tid = td.block_unless.task_id(marker, 4)
    holder = _spawn(f"block_unless({marker!r}, 4)")
    _wait_for_running(tid)
    waiting = tmp_path / "waiting"
    waiter = _spawn(f"block_unless({marker!r}, 4)",
                    SIGNAL_WAITING.replace("WAITING_MARKER", repr(str(waiting))))
    deadline = time.time() + 60
    while not waiting.exists():  # until the waiter has found the lease held and polls it
        assert waiter.poll() is None, waiter.communicate()
        assert time.time() < deadline, "the waiter never waited for the lease"
        time.sleep(0.02)
    assert waiter.poll() is None
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    open(marker, "w").close()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert out.strip() == "8"
    runs = cache.current().records.runs(task_id=tid)
    assert [r.status for r in runs] == ["success", "abandoned"]
    assert runs[0].pid == waiter.pid


def _spawn_action(target: str, gate: str, ttl: str) -> subprocess.Popen:
    """A process that calls the action gated_append and prints whether it ran it."""
    code = (
        f"import sys; sys.path.insert(0, {str(RUNTIME_TESTS)!r}); import task_defs; "
        f"out = task_defs.gated_append({target!r}, {gate!r}); print(out.ran, out.ok, flush=True)"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KACHERY_TASKS_LEASE_TTL": ttl})


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_an_action_whose_holder_is_stopped_past_its_lease_does_not_run_twice(tmp_path):
    """SIGSTOP (like a long C call holding the GIL) stops the heartbeat: the lease
    expires, yet its holder is alive on this host, so a second caller waits for the
    outcome instead of running the action again."""
    td = _task_defs()
    target, gate = tmp_path / "log", tmp_path / "gate"
    tid = td.gated_append.task_id(str(target), str(gate))
    holder = _spawn_action(str(target), str(gate), ttl="0.3")
    try:
        _wait_for_running(tid)
        # (recorded as running before its body starts: stop it once the body has begun)
        wait_for(lambda: _lines(target) == ["start", str(holder.pid)], 30,
                 "the action's first line")
        os.kill(holder.pid, signal.SIGSTOP)
        time.sleep(1.0)  # more than three TTLs: the lease has expired
        lease = cache.current().records.lease(tid)
        assert lease.pid == holder.pid and lease.expires < time.time()
        waiter = _spawn_action(str(target), str(gate), ttl="0.3")
        time.sleep(2.0)  # the waiter polls the expired lease many times meanwhile
        assert waiter.poll() is None  # still waiting ...
        assert _lines(target) == ["start", str(holder.pid)]  # ... and it did not run
        gate.touch()
        os.kill(holder.pid, signal.SIGCONT)
        h_out, h_err = holder.communicate(timeout=60)
        w_out, w_err = waiter.communicate(timeout=60)
    finally:
        for p in (holder,):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    assert holder.returncode == 0 and waiter.returncode == 0, (h_err, w_err)
    assert h_out.split() == ["True", "True"]  # the holder ran it
    assert w_out.split() == ["False", "True"]  # the waiter got the recorded outcome
    assert _lines(target) == ["start", str(holder.pid), "done", str(holder.pid)]
    assert [r.status for r in cache.current().records.runs(task_id=tid)] == ["success"]


def test_an_action_whose_holder_is_killed_is_taken_over_by_the_waiter(tmp_path):
    """SIGKILL ends the holder (here left a zombie, not reaped): the waiter runs it."""
    td = _task_defs()
    target, gate = tmp_path / "log", tmp_path / "gate"
    tid = td.gated_append.task_id(str(target), str(gate))
    holder = _spawn_action(str(target), str(gate), ttl="3600")
    _wait_for_running(tid)
    waiter = _spawn_action(str(target), str(gate), ttl="3600")
    time.sleep(1.0)
    assert waiter.poll() is None
    os.kill(holder.pid, signal.SIGKILL)
    gate.touch()  # for the waiter, once it runs the action
    w_out, w_err = waiter.communicate(timeout=60)
    holder.wait(timeout=10)
    assert waiter.returncode == 0, w_err
    assert w_out.split() == ["True", "True"]  # it ran the action itself
    runs = cache.current().records.runs(task_id=tid)
    assert [r.status for r in runs] == ["success", "abandoned"]
    assert runs[0].pid == waiter.pid and runs[1].pid == holder.pid
    assert _lines(target)[-2:] == ["done", str(waiter.pid)]


_PREIMPORT = (
    "import kachery_tasks.storage.local, kachery_tasks.keys, kachery_tasks.runtime.shared, "
    "kachery_tasks.nodes, "
    "kachery_tasks.runtime.executors, kachery_tasks.storage.buckets, kachery_tasks.uris, "
    "cloudpickle, pickle, nacl.bindings, nacl._sodium, nacl.exceptions, numpy, "
    "cryptography.hazmat.primitives.asymmetric.ed25519"
)


def _as_member(shared: Path, uid: int, code: str) -> str:
    """Run ``code`` (task_defs imported) as user ``uid`` of the group nogroup, in the
    shared node; its stdout. Everything is imported first: after the switch to
    another user the interpreter's own files may be unreadable."""
    switch = "os.setgroups([]); os.setgid(65534); os.setuid(65534); " if uid else ""
    warm = "task_defs.pair.task_id(0, 0); "  # what computing a task id imports lazily
    script = (
        f"import os, sys; sys.path.insert(0, {str(RUNTIME_TESTS)!r}); import task_defs; "
        f"{_PREIMPORT}; {warm}{switch}os.umask(0o022)\n{code}"
    )
    env = {**os.environ, "KACHERY_TASKS_DIR": str(shared),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def _shared_node(prefix: str) -> tuple[Path, Path]:
    import tempfile

    from kachery_tasks.config import init_node_dir

    tmp = Path(tempfile.mkdtemp(prefix=prefix))  # reachable by other users
    os.chmod(tmp, 0o755)
    shared = tmp / "lab"
    init_node_dir(shared, shared=True)
    os.chown(shared, 0, 65534)  # group "nogroup": both root and nobody write through it
    return tmp, shared


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_group_shared_task_records_work_for_another_member():
    """The second member of a lab's shared node directory runs tasks, records and
    forgets results, and loads the first member's results (a pickle too); each
    member signs records with a key of their own that the other cannot read."""
    import shutil

    from kachery_tasks.config import NodeDir
    from kachery_tasks.runtime.records import Records

    tmp, shared = _shared_node("kachery-shared-tasks-")
    first = _as_member(shared, 0, "print(task_defs.pair(1, 2), task_defs.calls['pair'])")
    assert first.split() == ["(1,", "2)", "1"]
    second = _as_member(shared, 65534, """
print(task_defs.pair(1, 2), task_defs.calls['pair'])  # the first member's pickle, served
print(task_defs.pair(3, 4), task_defs.calls['pair'])  # computed and recorded here
from kachery_tasks.runtime import cache
tid = task_defs.pair.task_id(3, 4)
print(cache.current().records.result(tid) is not None, task_defs.pair.forget(3, 4),
      cache.current().records.result(tid) is None)
print(task_defs.pair(3, 4), task_defs.calls['pair'])  # forgotten: computed again
""")
    assert second.splitlines() == ["(1, 2) 0", "(3, 4) 1", "True True True", "(3, 4) 2"]
    users = shared / "identity" / "users"
    ids = {int(p.stem): p.read_text().strip() for p in users.glob("*.pub")}
    assert set(ids) == {0, 65534} and ids[0] != ids[65534]
    for uid in (0, 65534):
        st = os.stat(users / f"{uid}.key")
        assert st.st_uid == uid and st.st_mode & 0o777 == 0o600
    records = Records(NodeDir(shared).sub("tasks", "records.db"))
    by_task = {(r.args["a"], r.args["b"]): r.node for r in records.runs(function="task_defs.pair")}
    assert by_task == {("1", "2"): ids[0], ("3", "4"): ids[65534]}  # records name the member
    records.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_shared_node_made_before_member_keys_keeps_its_key_and_admits_members():
    """A node whose identity/ and node.key were made by an older version (private to
    their owner): the owner keeps signing with node.key and, on their next use, opens
    identity/ to the group, so the second member can add a key of their own."""
    import shutil

    from kachery_tasks.keys import KeyPair

    tmp, shared = _shared_node("kachery-shared-legacy-")
    identity = shared / "identity"
    identity.mkdir()
    os.chmod(identity, 0o2755)  # what KeyPair.save made under umask 022
    legacy = KeyPair.generate()
    legacy.save(identity / "node.key")
    _as_member(shared, 0, "task_defs.pair(5, 6)")
    out = _as_member(shared, 65534, "print(task_defs.pair(5, 6), task_defs.calls['pair'])")
    assert out.split() == ["(5,", "6)", "0"]
    assert (identity / "users" / "0.pub").read_text().strip() == legacy.public_hex
    assert (identity / "users" / "65534.key").exists()
    shutil.rmtree(tmp, ignore_errors=True)
