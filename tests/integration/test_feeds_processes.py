"""Feeds across real processes of one node: watching, concurrent appends, SIGKILL.

No wall-clock assertions here: watch latency is measured by
benchmarks/bench_feeds.py. These tests check what must hold whatever the timing.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import kachery_tasks as kf
from kachery_tasks.nodes import current_node

REPO = Path(__file__).resolve().parents[2]


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    watchdog = threading.Timer(90, proc.kill)  # a hung child fails the test, not the run
    watchdog.daemon = True
    watchdog.start()
    return proc


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return out


WATCHER = """
    import asyncio, json, sys
    from kachery_tasks import load_subfeed
    sub = load_subfeed(sys.argv[1])
    start = int(sys.argv[2])
    print("ready", flush=True)
    if sys.argv[3] == "watch":
        msgs = sub.watch(start, timeout=60)
    else:
        msgs = asyncio.run(sub.awatch(start, timeout=60))
    print(json.dumps([[m.seq, m.body, m.hash] for m in msgs]), flush=True)
"""


@pytest.mark.parametrize("form", ["watch", "awatch"])
def test_watcher_in_another_process_receives_the_message(form):
    sub = kf.create_feed("w").subfeed("events")
    sub.append("before")
    proc = _spawn(WATCHER, sub.uri, "1", form)
    assert proc.stdout.readline().strip() == "ready"
    m = sub.append({"event": "new"})
    got = json.loads(_finish(proc))
    assert got == [[1, {"event": "new"}, m.hash]]


WRITER = """
    import os, sys, time
    from kachery_tasks import load_subfeed
    sub = load_subfeed(sys.argv[1])
    writer, n, go = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(n):
        if i % 10 == 9:
            sub.append_many([{"w": writer, "i": i, "part": p} for p in range(3)])
        else:
            sub.append({"w": writer, "i": i})
"""


def test_concurrent_appends_from_several_processes_form_one_chain(tmp_path):
    sub = kf.create_feed("c").subfeed("log")
    go = tmp_path / "go"
    writers, n = 3, 60
    procs = [_spawn(WRITER, sub.uri, str(w), str(n), str(go)) for w in range(writers)]
    go.touch()
    for p in procs:
        _finish(p)
    msgs = list(sub.read(verify="full"))
    per_writer = n + 2 * (n // 10)  # every tenth op appends three messages
    assert len(msgs) == sub.count() == writers * per_writer
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    assert all(b.prev == a.hash for a, b in itertools.pairwise(msgs))
    seen = defaultdict(list)
    for m in msgs:
        seen[m.body["w"]].append((m.body["i"], m.body.get("part", 0)))
    for w in range(writers):  # each writer's messages, complete and in its order
        expected = [(i, p) for i in range(n) for p in (range(3) if i % 10 == 9 else [0])]
        assert seen[str(w)] == expected
    assert sub.feed.verify() == {"log": writers * per_writer}


BATCH = 50  # an append_many takes long enough for a kill to land inside it

LOOPER = """
    import sys
    from kachery_tasks import load_subfeed
    sub = load_subfeed(sys.argv[1])
    op, batch = int(sys.argv[2]), int(sys.argv[3])
    print("started", flush=True)
    while True:
        op += 1
        if op % 2:
            sub.append({"op": op})
        else:
            sub.append_many([{"op": op, "k": k} for k in range(batch)])
"""


def test_sigkill_mid_append_leaves_a_whole_chain():
    sub = kf.create_feed("k").subfeed("log")
    rng = random.Random(4)
    last_op, counts = 0, []
    for _ in range(6):
        proc = _spawn(LOOPER, sub.uri, str(last_op), str(BATCH))
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.05, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        n = sub.feed.verify()["log"]
        rows = current_node().feeds.conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert n == sub.count() == rows  # no gap, no row beyond the head
        msgs = list(sub.read())
        ops = defaultdict(int)
        for m in msgs:
            ops[m.body["op"]] += 1
        for op, k in ops.items():  # an append_many is all or nothing
            assert k == (1 if op % 2 else BATCH), (op, k)
        counts.append(n)
        last_op = max(ops)
    assert counts == sorted(counts) and counts[-1] > 0
    sub.append("after the crashes")  # the chain goes on where it stopped
    assert sub.verify() == counts[-1] + 1
