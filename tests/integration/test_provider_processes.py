"""Providers as processes: ``kachery-tasks node start --provide``, with real parts only.

The embedded broker in a process, a file:// bucket, provider daemons in
processes, the real ably SDK; the requester is this test process (a channel
session and an Asker: the requester side is built elsewhere):

* a provider SIGKILLed mid-task loses its claim at expiry (``--claim-ttl``)
  and the other provider, asked the same call, takes it over and answers the
  correct result;
* ``--workers 1`` runs a task on a real LocalCluster (a worker process);
* a claim left by a provider SIGKILLed before it expired is deleted by the
  same provider once restarted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from kachery_tasks.errors import ChannelMemberLeftError
from kachery_tasks.keys import node_keypair
from kachery_tasks.network.channels import ChannelSession, ChannelStore
from kachery_tasks.network.channels.requests import Asker
from kachery_tasks.network.tasks import protocol
from kachery_tasks.nodes import Node
from kachery_tasks.runtime import results, shared
from tests.integration.test_channel_daemons import ALL, free_port, member_nodes, start_broker
from tests.integration.test_channels_processes import Proc, env_for, procs  # noqa: F401
from tests.network.channels.conftest import FAST_SESSION, wait_for
from tests.network.tasks.remote_tasks import slow_square, square

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MODULE = "tests.network.tasks.remote_tasks"


def start_provider(procs, path: Path, runs: Path, *options: str) -> Proc:  # noqa: F811
    env = {**env_for(path), "KACHERY_TEST_RUNS_DIR": str(runs)}
    daemon = procs([sys.executable, "-m", "kachery_tasks", "node", "start", "--provide", MODULE,
                    *options], env)
    daemon.wait_for(lambda s: s.startswith("providing "), timeout=60)
    return daemon


def runs_of(runs: Path, function: str) -> list[int]:
    """The pids that ran ``function`` (one file per run)."""
    return sorted(int(p.read_text()) for p in runs.glob(f"{function}-*"))


class Requester:
    """A member asking providers from this process, as the requester side will."""

    def __init__(self, path: Path) -> None:
        self.node = Node(path)
        channel = ChannelStore(self.node.dir).find("lab")
        self.session = ChannelSession(channel, node_keypair(self.node.dir),
                                      **FAST_SESSION).start()
        self.asker = Asker(self.session)

    def ask(self, provider: Path, call, timeout: float = 30.0, statuses=None):
        target = Node(provider).id
        return self.asker.ask(
            protocol.TASK, protocol.request_body(target, call.to_bytes()), asked={target},
            online=2, timeout=timeout, what=f"the call of {call.function}",
            on_progress=lambda _p, m: statuses.append(m.body["status"]) if statuses is not None
            else None)

    def value(self, answer) -> object:
        """The value a ``task_finished`` names: carried by its record when small, else
        content in the channel's bucket."""
        body = answer.body
        data = None
        if body.get("record") is not None:
            record = shared.read_record(body["record"].encode(), body["task_id"], "the answer")
            data = shared.record_data(record, "the answer")
        if data is None:
            data = Path(self.node.local_path(body["result_uri"])).read_bytes()
        return results.codec_named(body["codec"]).decode_bytes(data)

    def close(self) -> None:
        self.session.close()
        self.node.close()


@pytest.fixture
def channel(tmp_path, procs):  # noqa: F811
    port = free_port()
    start_broker(procs, port, "--presence-timeout", "2")  # a killed provider leaves in 2 s
    paths = member_nodes(tmp_path, f"file://{tmp_path}/bucket", f"ws://127.0.0.1:{port}",
                         {"p1": ALL, "p2": ALL, "req": ALL})
    runs = tmp_path / "runs"
    runs.mkdir()
    requester = Requester(paths["req"])
    yield paths, runs, requester
    requester.close()


def test_a_provider_killed_mid_task_is_taken_over_by_another(channel, procs):  # noqa: F811
    paths, runs, requester = channel
    p1 = start_provider(procs, paths["p1"], runs, "--claim-ttl", "3")
    start_provider(procs, paths["p2"], runs, "--claim-ttl", "3")
    call = slow_square.prepare(7, 3.0)
    lost: dict = {}

    def ask_p1() -> None:
        try:
            requester.ask(paths["p1"], call, timeout=120.0)
        except Exception as e:  # it dies: no answer comes
            lost["error"] = e

    first = threading.Thread(target=ask_p1)
    first.start()
    wait_for(lambda: runs_of(runs, "slow_square"), timeout=30, what="p1 starting the task")
    os.kill(p1.proc.pid, signal.SIGKILL)
    p1.proc.wait(10)
    statuses: list[str] = []
    answer = requester.ask(paths["p2"], call, timeout=30.0, statuses=statuses).final
    first.join(30)  # it left presence 2 s after it was killed: no need to wait out the 120 s
    assert isinstance(lost["error"], ChannelMemberLeftError)
    assert f"the member {Node(paths['p1']).id[:16]}... asked" in str(lost["error"])
    assert answer.type == "task_finished"
    assert "waiting" in statuses  # p2 found p1's claim live, then took it over at expiry
    assert requester.value(answer) == 49
    record = shared.read_record(answer.body["record"].encode(), call.task_id, "answer")
    assert record["node"] == Node(paths["p2"]).id
    pids = runs_of(runs, "slow_square")
    assert len(pids) == 2 and p1.proc.pid in pids  # p1's (killed) and p2's


def test_workers_run_provided_tasks_on_a_local_cluster(channel, procs):  # noqa: F811
    paths, runs, requester = channel
    daemon = start_provider(procs, paths["p1"], runs, "--workers", "1")
    assert any("on a LocalCluster of 1 worker(s)" in line for line in daemon.lines)
    answer = requester.ask(paths["p1"], square.prepare(11), timeout=60.0).final
    assert answer.type == "task_finished"
    assert requester.value(answer) == 121
    [pid] = runs_of(runs, "square")
    assert pid != daemon.proc.pid  # computed in the cluster's worker process


def test_a_claim_a_killed_provider_left_is_deleted_after_its_restart(channel, procs):  # noqa: F811
    paths, runs, requester = channel
    bucket = paths["p1"].parent / "bucket"

    def claims() -> list[Path]:
        return list(bucket.glob("channels/*/*/claims/*.json"))

    # a TTL long enough for the claim to be seen before it expires, on a loaded machine
    p1 = start_provider(procs, paths["p1"], runs, "--claim-ttl", "5")
    answer = requester.ask(paths["p1"], square.prepare(5)).final
    assert answer.type == "task_finished"
    assert len(claims()) == 1  # left to expire on its own
    os.kill(p1.proc.pid, signal.SIGKILL)
    p1.proc.wait(10)
    start_provider(procs, paths["p1"], runs, "--claim-ttl", "5")  # the same node, restarted
    wait_for(lambda: not claims(), timeout=60, what="the expired claim deleted")
