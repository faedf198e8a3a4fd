"""Remote tasks end to end, every part a process: ``kachery.channel`` in requester
processes, ``node start --provide`` daemons, the embedded broker, and a gs:// bucket
(fake-gcs-server), where a lab's channel keeps its results. (Providers as processes
on a bucket directory: ``test_provider_processes.py``.)

One channel for the whole module: providers p1 (``remote_tasks`` and
``shifted_tasks``) and p2 (``remote_tasks`` and ``edited_tasks``: ``shifted``
with another body), requesters r1 and r2, and viewer (a member without
``request_tasks``). Each requester process runs
``with kachery.channel("lab"): kachery.gather(task.map(items))``
(``tests/integration/remote_tasks_proc.py``); runs are counted across processes
with ``KACHERY_TEST_RUNS_DIR``.

* 200 calls of 50 distinct ids from 2 requester processes (2 threads each), to
  2 providers (p1 on a LocalCluster of one worker process, p2 in-process):
  every answer right, each id computed once in the channel;
* a result record planted by a non-member before anyone computed the id is
  ignored by the requester and replaced by the provider that computes it;
* a member without ``request_tasks`` is refused, by its own client at once, and
  by the provider daemons when a modified client asks anyway;
* a provider whose ``shifted`` has another code hash refuses, naming both hashes
  and both nodes, and the requester is served by the other provider (last: it
  stops p1).
"""

from __future__ import annotations

import collections
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from kachery_tasks.network.tasks import protocol
from kachery_tasks.nodes import Node
from kachery_tasks.runtime import cache, shared
from kachery_tasks.storage.buckets import Bucket, open_bucket
from kachery_tasks.storage.layout import result_key
from tests.integration.test_channel_daemons import ALL, free_port, member_nodes, start_broker
from tests.integration.test_channels_processes import Proc, env_for, started_procs
from tests.integration.test_provider_processes import Requester, runs_of, start_provider
from tests.network.tasks.edited_tasks import shifted as edited_shifted
from tests.network.tasks.planted import plant_record
from tests.network.tasks.remote_tasks import slow_square, square
from tests.network.tasks.shifted_tasks import shifted

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODULE = "tests.network.tasks.remote_tasks"
REQUESTER = frozenset({"download", "upload", "request_tasks", "read_feeds"})


@dataclass
class Lab:
    procs: object
    paths: dict[str, Path]
    runs: Path
    bucket: Bucket
    providers: dict[str, Proc]

    def node_id(self, name: str) -> str:
        return Node(self.paths[name]).id

    def start(self, name: str, function: str, items: list, *args: object,
              module: str = MODULE, **spec: object) -> Proc:
        """A requester process of node ``name`` mapping ``function`` over ``items``."""
        spec = {"module": module, "function": function, "items": items, "args": list(args),
                **spec}
        return self.procs([sys.executable, "-m", "tests.integration.remote_tasks_proc",
                           json.dumps(spec)],
                          {**env_for(self.paths[name]), "KACHERY_TEST_RUNS_DIR": str(self.runs)},
                          bool(spec.get("go")))

    def ask(self, name: str, function: str, items: list, *args: object,
            **spec: object) -> list[dict]:
        return outcome(self.start(name, function, items, *args, **spec))

    def asked(self, provider: str, task_id: str) -> list[dict]:
        """The requests for ``task_id`` that provider ``provider`` noted."""
        node = Node(self.paths[provider])
        try:
            return cache.for_node(node).records.requests_of(task_id)
        finally:
            node.close()


def provider_pids(lab: Lab) -> set[int]:
    """The provider daemons' pids and those of their processes (a LocalCluster's workers)."""
    import psutil  # distributed's dependency

    pids = set()
    for p in lab.providers.values():
        pids.add(p.proc.pid)
        pids.update(c.pid for c in psutil.Process(p.proc.pid).children(recursive=True))
    return pids


def outcome(proc: Proc, timeout: float = 90.0) -> list[dict]:
    """What a requester process printed: one entry per thread."""
    assert proc.proc.wait(timeout) == 0, proc.settle(0.1)
    return json.loads(proc.wait_for(lambda s: s.startswith("[")))


@pytest.fixture(scope="module")
def lab(gcs_emulator, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote-tasks")
    with started_procs() as procs, pytest.MonkeyPatch.context() as env:
        # a bucket in the session's fake-gcs-server, for this process and its children
        env.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
        name = f"remote-tasks-{uuid.uuid4().hex[:12]}"
        gcs_emulator.create_bucket(name)
        bucket_url = f"gs://{name}/lab/kachery"
        port = free_port()
        start_broker(procs, port)
        paths = member_nodes(tmp, bucket_url, f"ws://127.0.0.1:{port}",
                             {"p1": ALL, "p2": ALL, "r1": REQUESTER, "r2": REQUESTER,
                              "viewer": ALL - {"request_tasks"}})
        runs = tmp / "runs"
        runs.mkdir()
        providers = {
            # p1 runs its calls on a LocalCluster (a batch's calls start there as one unit),
            # p2 in its own process (call by call)
            "p1": start_provider(procs, paths["p1"], runs, "tests.network.tasks.shifted_tasks",
                                 "--workers", "1"),
            "p2": start_provider(procs, paths["p2"], runs, "tests.network.tasks.edited_tasks"),
        }
        bucket = open_bucket(bucket_url)
        yield Lab(procs, paths, runs, bucket, providers)
        bucket.close()


def test_200_calls_of_50_ids_from_two_requesters_are_each_computed_once(lab):
    ids = list(range(50))
    r1 = lab.start("r1", "square", ids, threads=2, go=True)
    r2 = lab.start("r2", "square", ids[::-1], threads=2, go=True, reverse_providers=True)
    for r in (r1, r2):  # both processes started: their 4 maps begin together
        r.wait_for(lambda s: s == "ready", timeout=60)
    for r in (r1, r2):
        r.send("go")
    outs = {"r1": outcome(r1), "r2": outcome(r2)}
    providers = {lab.node_id("p1"), lab.node_id("p2")}
    for name, items in (("r1", ids), ("r2", ids[::-1])):
        assert len(outs[name]) == 2
        for thread in outs[name]:
            assert thread.get("results") == [x * x for x in items], thread
            assert set(thread["nodes"]) <= providers  # computed by a provider, not here
    computed_by = {n for out in outs.values() for t in out for n in t["nodes"]}
    assert computed_by == providers  # the ids were shared out between both providers
    pids = runs_of(lab.runs, "square")
    assert len(pids) == 50  # 50 runs for 50 ids: each computed exactly once channel-wide
    assert set(pids) <= provider_pids(lab)  # a provider daemon or one of its Dask workers
    asked = [a for p in ("p1", "p2") for x in ids for a in lab.asked(p, square.task_id(x))]
    assert 50 <= len(asked) <= 200  # identical calls found the shared result or joined a run
    outcomes = collections.Counter(a["outcome"] for a in asked)
    assert outcomes["computed"] >= 50 and set(outcomes) <= {
        "computed", "served the shared result", "served what another provider computed"}
    print(f"\n200 calls of 50 ids: {len(asked)} requests reached the providers: {outcomes}")


def test_a_record_planted_by_a_non_member_is_ignored_and_replaced(lab):
    call = slow_square.prepare(1001, 1.5)  # runs longer than the requester polls the bucket
    plant_record(lab.bucket, call.task_id, call.function, 7)  # a wrong value, validly signed
    [out] = lab.ask("r1", "slow_square", [1001], 1.5)
    assert out.get("results") == [1001 * 1001], out
    [node] = out["nodes"]
    assert node in {lab.node_id("p1"), lab.node_id("p2")}
    assert len(runs_of(lab.runs, "slow_square")) == 1  # computed once, by that provider
    record = shared.read_record(lab.bucket.get(result_key(call.task_id)), call.task_id, "bucket")
    assert record["node"] == node  # its record replaced the planted one
    [again] = lab.ask("r2", "slow_square", [1001], 1.5)  # now served from the shared record
    assert again == out and len(runs_of(lab.runs, "slow_square")) == 1


def test_a_member_without_request_tasks_is_refused_end_to_end(lab):
    before = len(runs_of(lab.runs, "square"))
    [honest] = lab.ask("viewer", "square", [3000])  # its client refuses at once
    assert honest.get("error") == "ChannelPermissionError", honest
    assert "set-permissions lab" in honest["message"]
    [modified] = lab.ask("viewer", "square", [3001], timeout=20.0, skip_own_check=True)
    assert modified.get("error") == "ChannelPermissionError", modified  # the daemons refused
    assert "lacks request_tasks" in modified["message"]
    assert len(runs_of(lab.runs, "square")) == before
    asked = lab.asked("p1", square.task_id(3001)) + lab.asked("p2", square.task_id(3001))
    assert asked and {a["outcome"] for a in asked} == {"declined not_allowed"}
    assert not lab.asked("p1", square.task_id(3000)) + lab.asked("p2", square.task_id(3000))


def test_a_provider_with_edited_code_refuses_and_the_other_serves(lab):
    assert shifted.name == edited_shifted.name and shifted.code_hash != edited_shifted.code_hash
    [out] = lab.ask("r2", "shifted", [1, 2, 3], module="tests.network.tasks.shifted_tasks")
    assert out.get("results") == [1001, 1002, 1003], out
    assert set(out["nodes"]) == {lab.node_id("p1")}  # the provider with the caller's code
    assert len(runs_of(lab.runs, "shifted")) == 3 and not runs_of(lab.runs, "shifted_edited")
    requester = Requester(lab.paths["r1"])  # asked directly, p2 refuses
    try:
        pending = requester.ask(lab.paths["p2"], shifted.prepare(4))
    finally:
        requester.close()
    assert pending.status == "declined"
    body = pending.declines[lab.node_id("p2")].body
    assert body["code"] == "code_hash" and "code_hash" in protocol.DECLINE_CODES
    reason = body["reason"]
    assert shifted.code_hash in reason and edited_shifted.code_hash in reason
    assert f"r1 ({lab.node_id('r1')[:16]}...)" in reason
    assert f"p2 ({lab.node_id('p2')[:16]}...)" in reason
    lab.providers["p1"].stop()  # now only p2 provides shifted, with another code hash
    [alone] = lab.ask("r2", "shifted", [5], module="tests.network.tasks.shifted_tasks")
    assert alone.get("error") == "CallRejectedError", alone
    assert shifted.code_hash in alone["message"] and edited_shifted.code_hash in alone["message"]
    assert not runs_of(lab.runs, "shifted_edited") and len(runs_of(lab.runs, "shifted")) == 3
