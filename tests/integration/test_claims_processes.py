"""Claims across real processes, on file:// and gs:// buckets.

Racing provider processes claim new task ids and take over expired claims:
exactly one wins each id. A holder killed with SIGKILL stops renewing, and its
claim is taken over once it has expired.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kachery_tasks.envelopes import seal
from kachery_tasks.keys import KeyPair
from kachery_tasks.network.tasks import KIND, Claim, Claims, Holder
from kachery_tasks.storage.buckets import open_bucket
from tests.integration.claims_proc import FUNCTION, task_id
from tests.integration.test_channels_processes import Proc

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = 4
IDS = 8


@pytest.fixture(params=["file", "gs"])
def bucket_url(request, tmp_path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/bucket"
    return request.getfixturevalue("gcs_bucket_url")


def spawn(*args: str) -> Proc:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return Proc([sys.executable, "-m", "tests.integration.claims_proc", *args], env)


def observer(url: str, clock=time.time) -> Claims:
    return Claims(open_bucket(url), KeyPair.generate(), 30.0, lambda node: True, clock=clock)


def race(url: str, tmp_path: Path, *extra: str) -> dict[int, list[str]]:
    """PROVIDERS processes claim ids 0..IDS-1 at once; per id, the lines they printed."""
    go = tmp_path / "go"
    procs = [spawn("race", url, str(go), str(IDS), *extra) for _ in range(PROVIDERS)]
    try:
        for p in procs:
            p.wait_for(lambda line: line == "ready", timeout=60)
        go.touch()
        lines: dict[int, list[str]] = {i: [] for i in range(IDS)}
        for p in procs:
            for i in range(IDS):
                line = p.wait_for(lambda s, i=i: s.startswith(f"claim {i} "), timeout=120)
                lines[i].append(line)
        return lines
    finally:
        for p in procs:
            p.stop()


def test_racing_processes_claim_each_new_id_once(bucket_url, tmp_path):
    lines = race(bucket_url, tmp_path)
    for i, said in lines.items():
        assert sum(line.endswith(" won") for line in said) == 1, said
        holders = {line.split()[-1] for line in said if " held " in line}
        assert holders == {observer(bucket_url).read(task_id(i)).node}


def test_racing_processes_take_over_each_expired_claim_once(bucket_url, tmp_path):
    dead = KeyPair.generate()
    bucket = open_bucket(bucket_url)
    claims = observer(bucket_url)
    then = time.time() - 100
    for i in range(IDS):
        body = {"task_id": task_id(i), "function": FUNCTION, "node": dead.public_hex,
                "claim": "cd" * 16, "started": then, "renewed": then, "expires": then + 30,
                "state": "running", "outcome": None}
        assert bucket.put(claims.key_of(task_id(i)), seal(KIND, body, dead).to_bytes())
        assert claims.read(task_id(i)).node == dead.public_hex  # trusted, expired
    lines = race(bucket_url, tmp_path, "slow")
    for i, said in lines.items():
        assert sum(line.endswith(" won") for line in said) == 1, said
        assert claims.read(task_id(i)).node != dead.public_hex


def test_a_killed_holders_claim_is_taken_over_once_it_expired(bucket_url):
    ttl = 3.0
    holder = spawn("hold", bucket_url, str(ttl))
    try:
        node = holder.wait_for(lambda line: line.startswith("holding "), timeout=60).split()[1]
        claims = observer(bucket_url)
        seen = {claims.read(task_id(0)).renewed}
        deadline = time.monotonic() + 60
        while len(seen) < 3:  # it renews: the claim outlives its first TTL
            assert time.monotonic() < deadline, "the holder process did not renew its claim"
            time.sleep(0.1)
            seen.add(claims.read(task_id(0)).renewed)
        assert isinstance(claims.acquire(task_id(0), FUNCTION), Holder)  # alive: not taken
        os.kill(holder.proc.pid, signal.SIGKILL)
        holder.proc.wait(30)
        last = claims.read(task_id(0))
        assert last.node == node and last.state == "running"
        got = claims.wait(task_id(0), FUNCTION, lambda: False, timeout=120)
        assert isinstance(got, Claim)
        assert time.time() >= last.expires  # taken over only once the dead claim expired
        assert observer(bucket_url).read(task_id(0)).node == claims.key.public_hex
        got.release()
    finally:
        holder.stop()
