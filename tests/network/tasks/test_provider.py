"""TaskProvider: request_task served on a channel (real broker, real ably SDK, file:// bucket)."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from kachery_tasks.network.channels.config import PERMISSIONS
from kachery_tasks.network.channels.membership import set_permissions
from kachery_tasks.network.channels.requests import Asker
from kachery_tasks.network.tasks import Provided, protocol
from kachery_tasks.network.tasks.left import FILE_NAME
from kachery_tasks.network.tasks.provider import TaskProvider
from kachery_tasks.runtime import bundles, shared
from kachery_tasks.runtime import cache as cache_mod
from tests.network.channels.conftest import wait_for
from tests.network.tasks import remote_tasks
from tests.network.tasks.planted import plant_record
from tests.network.tasks.remote_tasks import RAN, clock, fails, nested, notify, square

MODULE = "tests.network.tasks.remote_tasks"


@pytest.fixture
def provided():
    return Provided.from_modules([MODULE])


@pytest.fixture(autouse=True)
def fresh_counts():
    RAN.clear()


def start_provider(lab, name, provided, **options):
    session = lab.session(name, daemon=True)
    provider = TaskProvider(session, lab.nodes[name], provided, **options)
    lab.providers = [*getattr(lab, "providers", []), provider]
    return provider


@pytest.fixture
def two(lab, provided):
    """Channel lab: prov (a provider), prov2 (not started), requesters req and req2, and
    viewer (a member without request_tasks)."""
    for name in ("prov", "req", "req2", "prov2"):
        lab.add(name)
    lab.add("viewer", frozenset(PERMISSIONS) - {"request_tasks"})
    provider = start_provider(lab, "prov", provided)
    yield lab, provider
    for p in lab.providers:
        p.close()


def assert_left(provider, task_ids):
    """Each of ``task_ids`` was computed here and its claim left where it is (running, to
    expire on its own), with nothing renewed any more."""
    for tid in task_ids:
        holder = provider.claims.read(tid)
        assert holder is not None and holder.state == "running" and holder.node == provider.me
    assert len(provider.claims._renewer) == 0


def ask(lab, requester, provider_name, call, mode="call", timeout=20.0, statuses=None,
        details=None):
    """Ask provider ``provider_name`` for ``call`` from node ``requester``: the Pending
    (each status heard is added to ``statuses``, each ``(status, detail)`` to ``details``)."""
    session = lab.session(requester)
    asker = Asker(session)
    provider_id = lab.nodes[provider_name].id
    data = call.to_bytes(lab.nodes[requester].store.store_bytes)

    def seen(pending, msg):
        if statuses is not None:
            statuses.append(msg.body["status"])
        if details is not None:
            details.append((msg.body["status"], msg.body["detail"]))

    return asker.ask(protocol.TASK, protocol.request_body(provider_id, data, mode),
                     asked={provider_id}, online=1, timeout=timeout,
                     what=f"the call of {call.function}", on_progress=seen)


def test_a_pure_call_is_computed_published_and_answered(two):
    lab, provider = two
    statuses = []
    pending = ask(lab, "req", "prov", square.prepare(7), statuses=statuses)
    assert pending.status == "done"
    answer = pending.final
    assert answer.type == "task_finished"
    body = answer.body
    tid = square.task_id(7)
    assert body["task_id"] == tid and body["kind"] == "pure"
    record = shared.read_record(body["record"].encode(), tid, "answer")
    assert record["node"] == lab.nodes["prov"].id
    assert record["result_uri"] == body["result_uri"]
    bucket = lab.remote("req").bucket
    assert bucket.get_result_records([tid])[tid].decode() == body["record"]
    # a quick call's statuses may be overtaken (only the latest unsent one goes out)
    assert set(statuses) <= {"queued", "running"}
    assert RAN["square"] == 1
    # its claim, left to expire, is noted in the channel's directory for after a restart
    journal = provider.session.channel.path / FILE_NAME
    assert [json.loads(line)["task_id"] for line in journal.read_text().splitlines()] == [tid]
    # asked again: served from the shared record, not computed again
    again = ask(lab, "req", "prov", square.prepare(7))
    assert again.final.type == "task_finished" and again.final.body["record"] == body["record"]
    assert RAN["square"] == 1


def test_a_computed_call_leaves_its_claim_which_blocks_no_one(two, provided):
    lab, provider = two
    ask(lab, "req", "prov", square.prepare(8))
    assert_left(provider, [square.task_id(8)])
    start_provider(lab, "prov2", provided)
    again = ask(lab, "req2", "prov2", square.prepare(8), timeout=5.0)
    assert again.final.type == "task_finished"
    assert RAN["square"] == 1


def test_an_idle_provider_deletes_the_claims_it_left_once_expired(lab, provided):
    for name in ("prov", "req"):
        lab.add(name)
    provider = start_provider(lab, "prov", provided, claim_ttl=0.5, status_every=0.1)
    try:
        ask(lab, "req", "prov", square.prepare(11))
        deadline = time.monotonic() + 20
        while provider.claims.read(square.task_id(11)) is not None:
            assert time.monotonic() < deadline, "the claim left was never deleted"
            time.sleep(0.05)
        assert RAN["square"] == 1
    finally:
        provider.close()


@pytest.mark.parametrize("second", ["prov", "prov2"])
def test_a_recompute_right_after_a_computation_computes_again(two, provided, second):
    """Mode force meets the claim the computation left, live for a TTL more: the record
    published since it started says it is finished, so it is taken over, not waited on."""
    lab, _ = two
    if second == "prov2":
        start_provider(lab, "prov2", provided)
    first = ask(lab, "req", "prov", square.prepare(9))
    forced = ask(lab, "req2", second, square.prepare(9), mode="force", timeout=10.0)
    assert forced.final.type == "task_finished"
    assert forced.final.body["result_uri"] == first.final.body["result_uri"]
    assert RAN["square"] == 2
    assert lab.providers[-1].claims.read(square.task_id(9)) is None  # released: the record
    # there is the first one, so a claim left now would not say it finished


def test_the_provider_records_who_asked(two):
    lab, _ = two
    ask(lab, "req", "prov", square.prepare(3))
    from kachery_tasks.runtime import cache

    asked = cache.for_node(lab.nodes["prov"]).records.requests_of(square.task_id(3))
    assert [(a["requester"], a["label"], a["channel"], a["outcome"]) for a in asked] == [
        (lab.nodes["req"].id, "req", "lab", "computed")]


def _in_threads(*actions):
    results = [None] * len(actions)
    errors = []

    def run(i, action):
        try:
            results[i] = action()
        except BaseException as e:  # pragma: no cover - shown by the assert below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_two_requesters_of_one_provider_join_one_computation(two):
    lab, _ = two
    call = remote_tasks.slow_square.prepare(4, 0.5)
    a, b = _in_threads(lambda: ask(lab, "req", "prov", call),
                       lambda: ask(lab, "req2", "prov", call))
    assert a.final.type == b.final.type == "task_finished"
    assert a.final.body["record"] == b.final.body["record"]
    assert RAN["slow_square"] == 1


def test_two_providers_asked_the_same_id_compute_it_once(two, provided):
    lab, _ = two
    start_provider(lab, "prov2", provided)
    call = remote_tasks.slow_square.prepare(5, 1.0)
    details: list[tuple[str, str]] = []
    a, b = _in_threads(lambda: ask(lab, "req", "prov", call, details=details),
                       lambda: ask(lab, "req2", "prov2", call, details=details))
    assert a.final.type == b.final.type == "task_finished"
    assert a.final.body["record"] == b.final.body["record"]
    assert RAN["slow_square"] == 1
    waiting = [detail for status, detail in details if status == "waiting"]
    assert waiting  # the holder by its label, the call by its short id, until when
    holder = re.escape(call.task_id[:19])
    assert re.fullmatch(rf"prov2? \([0-9a-f]{{16}}\.\.\.\) holds the claim on {holder}\.\.\. "
                        r"since [-\d]+ [:\d]+, until [-\d]+ [:\d]+ unless renewed", waiting[0])


def test_a_record_planted_by_a_non_member_is_replaced_and_does_not_end_a_wait(two, provided):
    """One provider computes (its record replaces the planted one); the other, asked
    meanwhile, waits for its claim: the planted record is not the result it waits for."""
    lab, _ = two
    start_provider(lab, "prov2", provided)
    call = remote_tasks.slow_square.prepare(6, 1.0)
    bucket = lab.remote("req").bucket
    plant_record(bucket.bucket, call.task_id, call.function, 35)
    heard: tuple[list, list] = ([], [])
    a, b = _in_threads(lambda: ask(lab, "req", "prov", call, statuses=heard[0]),
                       lambda: ask(lab, "req2", "prov2", call, statuses=heard[1]))
    assert a.final.type == b.final.type == "task_finished", (a.final.body, b.final.body)
    assert a.final.body["record"] == b.final.body["record"]
    record = shared.read_record(a.final.body["record"].encode(), call.task_id, "answer")
    assert record["node"] in (lab.nodes["prov"].id, lab.nodes["prov2"].id)
    assert bucket.get_result_records([call.task_id])[call.task_id].decode() == \
        a.final.body["record"]  # the planted record was replaced
    assert any("waiting" in h for h in heard)  # one provider waited for the other's claim
    assert RAN["slow_square"] == 1


def test_a_raising_task_is_answered_task_failed_with_its_traceback(two):
    lab, _ = two
    pending = ask(lab, "req", "prov", fails.prepare(3))
    assert pending.final.type == "task_failed"
    error = pending.final.body["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "cannot take 3"
    assert "raise ValueError" in error["traceback"] and "remote_tasks.py" in error["traceback"]
    lines = error["traceback"].splitlines()  # the task's own frames, not the provider's
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith("  File ") and "remote_tasks.py" in lines[1]
    assert lines[-1] == "ValueError: cannot take 3" and "kachery_tasks" not in error["traceback"]
    assert error["provider"] == lab.nodes["prov"].id and error["label"] == "prov"
    bucket = lab.remote("req").bucket
    assert not bucket.has_result_record(fails.task_id(3))  # failures are not results


def test_an_action_runs_once_in_the_channel_and_again_when_asked_again(two, provided):
    lab, _ = two
    start_provider(lab, "prov2", provided)
    first = ask(lab, "req", "prov", notify.prepare("hello"))
    second = ask(lab, "req2", "prov2", notify.prepare("hello"))  # another provider: not again
    assert first.final.type == second.final.type == "task_finished"
    assert first.final.body["kind"] == "action"
    assert RAN["notify"] == 1
    assert first.final.body["ran"] is True and second.final.body["ran"] is False
    assert second.final.body["finished"] == first.final.body["finished"]  # the one run's
    assert second.final.body["ran_on"] == lab.nodes["prov"].id  # prov ran it, prov2 answered
    assert "ran_on" not in first.final.body
    third = ask(lab, "req", "prov", notify.prepare("hello"), mode="again")
    assert third.final.type == "task_finished"
    assert RAN["notify"] == 2


def test_a_query_runs_each_time_and_its_result_is_in_the_bucket(two):
    lab, _ = two
    first = ask(lab, "req", "prov", clock.prepare())
    second = ask(lab, "req", "prov", clock.prepare())
    assert RAN["clock"] == 2
    bucket = lab.remote("req").bucket
    for answer in (first.final, second.final):
        assert answer.type == "task_finished" and answer.body["kind"] == "query"
        assert answer.body["record"] is None
        uri = answer.body["result_uri"]
        assert bucket.has_content(uri.split("://")[1].split("?")[0])
    assert first.final.body["result_uri"] != second.final.body["result_uri"]


def test_nested_pure_calls_are_cached_and_shared(two):
    lab, _ = two
    pending = ask(lab, "req", "prov", nested.prepare(6))
    assert pending.final.type == "task_finished"
    bucket = lab.remote("req").bucket
    assert bucket.has_result_record(square.task_id(6))  # the inner call, shared too


# ------------------------------------------------------------------ declines
def _declined(pending):
    assert pending.status == "declined", pending.status
    (answer,) = [a for a in pending.answers.values()]
    assert answer == "task_declined"
    return pending


def ask_declined(lab, requester, call_bytes):
    session = lab.session(requester)
    asker = Asker(session)
    provider_id = lab.nodes["prov"].id
    got = {}

    def on(msg):
        if msg.body.get("to") == session.node_id:
            got["body"] = msg.body

    session.on("task_declined", on)
    pending = asker.ask(protocol.TASK, protocol.request_body(provider_id, call_bytes),
                        asked={provider_id}, online=1, timeout=20, what="the call")
    _declined(pending)
    return got["body"]


def test_a_function_not_provided_is_declined_unknown(two):
    lab, _ = two
    from kachery_tasks import pure

    @pure(name="tests.network.tasks.elsewhere.other")
    def other(x):
        return x

    body = ask_declined(lab, "req", other.prepare(1).to_bytes())
    assert body["code"] == "unknown"
    assert "does not provide 'tests.network.tasks.elsewhere.other'" in body["reason"]
    assert body["task_id"] == other.task_id(1)


def test_edited_code_is_declined_code_hash_naming_both_hashes_and_nodes(two):
    lab, _ = two
    from kachery_tasks import pure

    @pure(name=square.name)
    def edited(x):
        return x * x + 0  # another body: another code hash

    assert edited.code_hash != square.code_hash
    body = ask_declined(lab, "req", edited.prepare(2).to_bytes())
    assert body["code"] == "code_hash"
    reason = body["reason"]
    assert edited.code_hash in reason and square.code_hash in reason
    assert f"req ({lab.nodes['req'].id[:16]}...)" in reason
    assert f"prov ({lab.nodes['prov'].id[:16]}...)" in reason
    assert RAN["square"] == 0


def test_a_tampered_task_id_is_declined_rejected(two):
    lab, _ = two
    import json

    doc = json.loads(square.prepare(2).to_bytes())
    doc["task_id"] = square.task_id(3)  # the id of another call
    body = ask_declined(lab, "req", json.dumps(doc).encode())
    assert body["code"] == "rejected"
    assert "task id" in body["reason"]
    assert RAN["square"] == 0


def test_a_member_without_request_tasks_is_declined_not_allowed(two):
    lab, _ = two
    body = ask_declined(lab, "viewer", square.prepare(2).to_bytes())
    assert body["code"] == "not_allowed"
    assert "viewer" in body["reason"] and "request_tasks" in body["reason"]
    assert RAN["square"] == 0


def test_over_its_limit_a_provider_declines_busy(lab, provided):
    lab.add("prov")
    lab.add("req")
    lab.add("req2")
    try:
        start_provider(lab, "prov", provided, max_accepted=1, workers=1)
        slow = remote_tasks.slow_square.prepare(9, 2.0)
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("a", ask(lab, "req", "prov", slow)))
        t.start()

        wait_for(lambda: lab.providers[0].in_progress() == 1, what="the first call accepted")
        body = ask_declined(lab, "req2", square.prepare(1).to_bytes())
        assert body["code"] == "busy"
        t.join(30)
        assert result["a"].final.type == "task_finished"
    finally:
        for p in lab.providers:
            p.close()


def test_requests_for_another_provider_are_ignored(two, provided):
    lab, _ = two
    # prov2 is asked but does not run: prov (which hears the request too) must not answer
    session = lab.session("req")
    asker = Asker(session)
    target = lab.nodes["prov2"].id
    with pytest.raises(Exception, match="no member of channel lab answered"):
        asker.ask(protocol.TASK, protocol.request_body(target, square.prepare(1).to_bytes()),
                  asked={target}, online=2, timeout=1.5, what="the call")
    assert RAN["square"] == 0


def test_a_member_whose_permission_is_withdrawn_is_declined(two):
    lab, _ = two
    lab.change(set_permissions(lab.nodes["req"].id, frozenset({"download"})))

    provider = lab.providers[0]
    wait_for(lambda: "request_tasks" not in provider.session.config.permissions_of(
        lab.nodes["req"].id), what="the provider adopting the new config")
    # the message checker may drop the request of a member without request_tasks: either
    # way it is not run
    session = lab.session("req")
    asker = Asker(session)
    pid = lab.nodes["prov"].id
    try:
        pending = asker.ask(protocol.TASK, protocol.request_body(pid, square.prepare(1).to_bytes()),
                            asked={pid}, online=1, timeout=2, what="the call")
        assert pending.status == "declined"
    except Exception as e:
        assert "answered" in str(e)
    assert RAN["square"] == 0


def test_many_concurrent_requests_are_all_answered_each_id_computed_once(lab, provided):
    """More requests than job threads: the queued ones hear ``queued`` and are answered."""
    for name in ("prov", "req", "req2"):
        lab.add(name)
    try:
        start_provider(lab, "prov", provided, workers=1, status_every=0.3)
        askers = {name: Asker(lab.session(name)) for name in ("req", "req2")}
        pid = lab.nodes["prov"].id
        # one job thread, 10 ids of 0.8 s: the last waits ~8 s in the queue, far longer than
        # the requesters' patience (3 s, room for a loaded machine) without the repeated status
        calls = [remote_tasks.slow_square.prepare(i % 10, 0.8) for i in range(60)]
        answers: list = [None] * len(calls)

        def one(i: int) -> None:
            asker = askers["req" if i % 2 else "req2"]
            data = calls[i].to_bytes()
            answers[i] = asker.ask(protocol.TASK, protocol.request_body(pid, data),
                                   asked={pid}, online=1, timeout=3.0, what="a call").final

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(a is not None and a.type == "task_finished" for a in answers)
        assert RAN["slow_square"] == 10
        for call, answer in zip(calls, answers):
            assert answer.body["task_id"] == call.task_id
    finally:
        for p in lab.providers:
            p.close()


def test_a_call_hears_queued_while_no_job_thread_is_free_then_running(lab, provided):
    for name in ("prov", "req", "req2"):
        lab.add(name)
    start_provider(lab, "prov", provided, workers=1)

    first = threading.Thread(target=ask, args=(
        lab, "req", "prov", remote_tasks.slow_square.prepare(1, 1.5)))
    first.start()
    try:
        wait_for(lambda: RAN["slow_square"] == 1, what="the first call running")
        statuses: list[str] = []
        pending = ask(lab, "req2", "prov", remote_tasks.slow_square.prepare(2, 1.0),
                      statuses=statuses)
        assert pending.final.type == "task_finished"
        assert "queued" in statuses and "running" in statuses
        assert statuses.index("queued") < statuses.index("running")
        assert set(statuses[statuses.index("running"):]) == {"running"}
    finally:
        first.join(30)
        for p in lab.providers:
            p.close()


def test_calls_still_queued_when_the_provider_closes_are_declined_busy(lab, provided):
    for name in ("prov", "req", "req2"):
        lab.add(name)
    provider = start_provider(lab, "prov", provided, workers=1)

    got: dict = {}

    def ask_into(key, requester, call, timeout):
        try:
            got[key] = ask(lab, requester, "prov", call, timeout=timeout)
        except Exception as e:
            got[key] = e

    # the running call lasts long enough for the second to be accepted and the provider
    # closed before the only job thread is free to take the second on, on a loaded machine
    running = threading.Thread(target=ask_into, args=(
        "running", "req", remote_tasks.slow_square.prepare(1, 3.0), 5.0))
    running.start()
    wait_for(lambda: RAN["slow_square"] == 1, what="the first call running")
    queued = threading.Thread(target=ask_into, args=("queued", "req2", square.prepare(2), 20.0))
    queued.start()
    wait_for(lambda: provider.in_progress() == 2, what="the second call queued")
    provider.close()
    queued.join(30)
    running.join(30)
    assert got["queued"].status == "declined"
    assert RAN["square"] == 0


def ask_batch(lab, requester, calls_bytes, provider_name="prov", timeout=20.0):
    """Ask ``provider_name`` for a batch (``request_tasks``) from ``requester``: the Pending
    and every answer entry heard (progress messages, then the final one), in order."""
    session = lab.session(requester)
    provider_id = lab.nodes[provider_name].id
    entries: list[dict] = []
    messages: list[str] = []

    def seen(pending, msg):
        messages.append(msg.type)
        entries.extend(msg.body["answers"])

    pending = Asker(session).ask(
        protocol.TASKS, protocol.batch_body(provider_id, [b.decode() for b in calls_bytes]),
        asked={provider_id}, online=1, timeout=timeout, what="the batch", on_progress=seen)
    if pending.final is not None:
        messages.append(pending.final.type)
        entries.extend(pending.final.body["answers"])
    return pending, entries, messages


def test_a_batch_is_served_call_by_call_and_answered_in_few_messages(two):
    lab, _ = two
    import json

    from kachery_tasks import pure

    @pure(name="tests.network.tasks.elsewhere.other")
    def other(x):
        return x

    tampered = json.loads(square.prepare(2).to_bytes())
    tampered["task_id"] = square.task_id(3)
    calls = [square.prepare(i).to_bytes() for i in range(30)]
    calls += [square.prepare(5).to_bytes(),  # the same call twice: computed once
              other.prepare(1).to_bytes(), json.dumps(tampered).encode()]
    pending, entries, messages = ask_batch(lab, "req", calls)
    assert pending.status == "done" and pending.final.type == "tasks_answered"
    finals = [e for e in entries if e["type"] != "task_status"]
    by_id: dict = {}
    for e in finals:
        by_id.setdefault(e["task_id"], []).append(e)
    for i in range(30):
        finished = [e for e in by_id[square.task_id(i)] if e["type"] == "task_finished"]
        assert len(finished) == (2 if i == 5 else 1)  # 5 was asked twice
        record = shared.read_record(finished[0]["record"].encode(), square.task_id(i), "")
        assert record["node"] == lab.nodes["prov"].id
    assert [(e["type"], e["code"]) for e in by_id[other.task_id(1)]] == [
        ("task_declined", "unknown")]
    declined = [e for e in finals if e["type"] == "task_declined" and e["code"] == "rejected"]
    assert len(declined) == 1 and "task id" in declined[0]["reason"]
    assert len(finals) == 33  # one final answer per call of the batch
    assert RAN["square"] == 30
    assert len(messages) < 20  # gathered: not one message per call and status


def test_calls_accepted_as_the_provider_closes_are_declined_busy_not_left_unanswered(two):
    """A batch checked just before close() reaches a pool that takes no more work: its
    calls are declined busy (the requester asks another provider), each one answered."""
    lab, provider = two
    provider._pool.shutdown()  # as close() leaves it, the check having passed before
    calls = [square.prepare(700 + i).to_bytes() for i in range(3)]
    pending, entries, _ = ask_batch(lab, "req", calls, timeout=10.0)
    finals = [e for e in entries if e["type"] != "task_status"]
    assert pending.status == "done" and len(finals) == 3
    assert {(e["type"], e["code"]) for e in finals} == {("task_declined", "busy")}
    assert RAN["square"] == 0


def test_a_batch_from_a_member_without_request_tasks_is_declined_as_a_whole(two):
    lab, _ = two
    pending, entries, _ = ask_batch(lab, "viewer", [square.prepare(2).to_bytes()])
    assert pending.status == "declined" and entries == []
    body = pending.declines[lab.nodes["prov"].id].body
    assert body["code"] == "not_allowed" and "request_tasks" in body["reason"]
    assert RAN["square"] == 0


@pytest.fixture(scope="module")
def threads_cluster():
    """A real Dask cluster of threads in this process (its runs count in RAN)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


class _Counting:
    """A DaskExecutor that notes the size of each submit_many and each bundle."""

    def __init__(self, client):
        from kachery_tasks.runtime.executors import DaskExecutor

        self.groups: list[int] = []
        self.bundles: list[int] = []
        counting = self

        class Counted(DaskExecutor):
            def submit_many(self, task, calls, mode="call"):
                counting.groups.append(len(calls))
                return super().submit_many(task, calls, mode)

            def submit_bundle(self, calls, mode="call", budget=None):
                counting.bundles.append(len(calls))
                return super().submit_bundle(calls, mode, budget)

        self.executor = Counted(client)


@pytest.fixture
def counted(lab, provided, threads_cluster):
    """A provider "prov" on the threads cluster through a counting executor, and a
    requester "req": ``(counting, provider)``."""
    for name in ("prov", "req"):
        lab.add(name)
    counting = _Counting(threads_cluster)
    provider = start_provider(lab, "prov", provided, executor=counting.executor, workers=4)
    yield counting, provider
    provider.close()


def test_a_batch_on_a_cluster_starts_its_calls_together_and_answers_each(lab, counted):
    """More calls than the provider has job threads start at once: many calls of a task
    in bundles (two bundles at least per thread of the cluster, 4 threads here), a lone
    call as one Dask task; each is answered as it ends (a failure with its traceback),
    its claim left or released."""
    counting, provider = counted
    calls = [square.prepare(100 + i).to_bytes() for i in range(24)]
    calls += [square.prepare(100).to_bytes(), fails.prepare(7).to_bytes()]
    pending, entries, _ = ask_batch(lab, "req", calls)
    assert pending.status == "done"
    finals = {e["task_id"]: e for e in entries if e["type"] != "task_status"}
    for i in range(24):
        entry = finals[square.task_id(100 + i)]
        assert entry["type"] == "task_finished"
        record = shared.read_record(entry["record"].encode(), square.task_id(100 + i), "")
        assert record["node"] == lab.nodes["prov"].id
    error = finals[fails.task_id(7)]
    assert error["type"] == "task_failed" and error["error"]["message"] == "cannot take 7"
    assert "raise ValueError" in error["error"]["traceback"]
    assert counting.bundles == [3] * 8  # 24 squares: 24 // (2 * 4 threads) per bundle
    assert counting.groups == [1]  # fails alone: one Dask task
    assert RAN["square"] == 24
    assert_left(provider, [square.task_id(100 + i) for i in range(24)])
    assert provider.claims.read(fails.task_id(7)) is None  # failures are not results
    assert provider.in_progress() == 0


def test_a_bundled_call_that_fails_is_answered_with_its_own_frames_and_frees_its_claim(
        lab, counted):
    counting, provider = counted
    odd = remote_tasks.fails_if_odd
    pending, entries, _ = ask_batch(lab, "req", [odd.prepare(i).to_bytes()
                                                 for i in range(16)])
    assert pending.status == "done"
    assert counting.bundles == [2] * 8 and counting.groups == []
    finals = {e["task_id"]: e for e in entries if e["type"] != "task_status"}
    for i in range(0, 16, 2):
        assert finals[odd.task_id(i)]["type"] == "task_finished"
    for i in range(1, 16, 2):
        error = finals[odd.task_id(i)]["error"]
        assert finals[odd.task_id(i)]["type"] == "task_failed"
        assert (error["type"], error["message"]) == ("ValueError", f"{i} is odd")
        lines = error["traceback"].splitlines()  # from the task's frame on
        assert lines[1].startswith("  File ") and "remote_tasks.py" in lines[1]
        assert "kachery_tasks" not in error["traceback"]
        assert provider.claims.read(odd.task_id(i)) is None
        assert error["label"] == "prov"
    assert_left(provider, [odd.task_id(i) for i in range(0, 16, 2)])
    assert RAN["fails_if_odd"] == 16


def test_calls_too_long_for_a_bundle_go_out_one_by_one_and_the_task_is_no_longer_bundled(
        lab, counted, monkeypatch):
    """A bundle whose first call takes its whole budget hands the others back: they run
    as one Dask task each, each computed once; the task's next batch is not bundled."""
    monkeypatch.setattr(bundles, "BUDGET", 0.05)
    counting, provider = counted
    slow = remote_tasks.slow_square
    calls = [slow.prepare(600 + i, 0.1).to_bytes() for i in range(16)]
    pending, entries, _ = ask_batch(lab, "req", calls, timeout=30.0)
    assert pending.status == "done"
    assert counting.bundles == [2] * 8
    assert counting.groups == [1] * 8  # each bundle's second call, handed back
    finished = {e["task_id"] for e in entries if e["type"] == "task_finished"}
    assert finished == {slow.task_id(600 + i, 0.1) for i in range(16)}
    assert RAN["slow_square"] == 16
    calls = [slow.prepare(700 + i, 0.01).to_bytes() for i in range(16)]
    pending, entries, _ = ask_batch(lab, "req", calls, timeout=30.0)
    assert pending.status == "done"
    assert counting.bundles == [2] * 8 and counting.groups == [1] * 8 + [16]
    assert RAN["slow_square"] == 32 and provider.in_progress() == 0


def test_bundled_actions_run_once_and_bundled_queries_each_time(lab, counted):
    """An action's calls in bundles run once each (asked again, their outcomes are
    served, not run); a query's calls run for every request, in bundles too."""
    counting, provider = counted
    calls = [notify.prepare(f"note {i}").to_bytes() for i in range(16)]
    for round in range(2):
        pending, entries, _ = ask_batch(lab, "req", calls)
        assert pending.status == "done"
        finals = [e for e in entries if e["type"] != "task_status"]
        assert len(finals) == 16 and all(e["type"] == "task_finished" for e in finals)
        assert all(e["ran"] is (round == 0) for e in finals)
        assert RAN["notify"] == 16  # not again in the second round
    assert counting.bundles == [2] * 8
    pending, entries, _ = ask_batch(lab, "req", [clock.prepare().to_bytes()] * 16)
    assert pending.status == "done"
    assert len([e for e in entries if e["type"] == "task_finished"]) == 16
    assert RAN["clock"] == 16 and counting.bundles == [2] * 16
    assert provider.in_progress() == 0


def test_bundled_calls_run_their_nested_calls_through_the_cluster(lab, counted):
    """Calls of ``nested`` in bundles call ``square`` as nested calls (through the
    cluster, the bundle's thread waiting outside the worker's pool), as the provider's
    node: each square is computed once and recorded there."""
    counting, provider = counted
    calls = [nested.prepare(1000 + i).to_bytes() for i in range(16)]
    pending, entries, _ = ask_batch(lab, "req", calls)
    assert pending.status == "done"
    finals = [e for e in entries if e["type"] != "task_status"]
    assert len(finals) == 16 and all(e["type"] == "task_finished" for e in finals)
    assert counting.bundles == [2] * 8
    assert RAN["square"] == 16
    with lab.nodes["prov"]:  # the squares were recorded as the provider's node
        records = cache_mod.current().records
        assert all(records.result(square.task_id(1000 + i)) is not None for i in range(16))
    assert provider.in_progress() == 0


def test_calls_with_large_arguments_are_not_bundled(lab, counted):
    """16 calls of small arguments go in bundles; 2 whose array is over 64 KiB in memory
    (the requester's content, fetched by the provider) go one Dask task each."""
    import numpy as np

    counting, provider = counted
    store = lab.nodes["req"].store
    uris = []

    def store_bytes(data, label):  # and into the channel's bucket, where the provider looks
        uris.append(store.store_bytes(data, label=label))
        lab.remote("req").offer_content(store, uris[-1], progress=False)
        return uris[-1]

    big = [np.full(10_000, float(i)) for i in range(2)]  # 80 kB each
    calls = [square.prepare(900 + i).to_bytes() for i in range(16)]
    calls += [square.prepare(b).to_bytes(store_bytes) for b in big]
    assert len(uris) == 2
    pending, entries, _ = ask_batch(lab, "req", calls)
    assert pending.status == "done"
    finished = {e["task_id"] for e in entries if e["type"] == "task_finished"}
    assert finished == {square.task_id(900 + i) for i in range(16)} | {
        square.task_id(b) for b in big}
    assert counting.bundles == [2] * 8 and counting.groups == [2]
    assert RAN["square"] == 18 and provider.in_progress() == 0


@pytest.mark.timeout(60)  # calls left unanswered would be kept waiting by their statuses
def test_when_a_bundle_cannot_start_each_of_its_calls_fails_and_frees_its_claim(
        lab, counted, monkeypatch):
    from kachery_tasks.errors import ExecutorError

    counting, provider = counted
    started = []
    real = counting.executor.submit_bundle

    def submit_bundle(calls, mode="call", budget=None):
        if started:  # the first bundle starts, the cluster is gone for the others
            raise ExecutorError("the Dask cluster at inproc://x failed")
        started.append(calls)
        return real(calls, mode, budget)

    monkeypatch.setattr(counting.executor, "submit_bundle", submit_bundle)
    calls = [square.prepare(800 + i).to_bytes() for i in range(16)]
    pending, entries, _ = ask_batch(lab, "req", calls)
    assert pending.status == "done"
    finals = {e["task_id"]: e for e in entries if e["type"] != "task_status"}
    ran = {call.task_id for call in started[0]}
    assert len(ran) == 2 and RAN["square"] == 2
    for i in range(16):
        tid = square.task_id(800 + i)
        if tid in ran:
            assert finals[tid]["type"] == "task_finished"
            continue
        assert finals[tid]["type"] == "task_failed"
        assert "cluster" in finals[tid]["error"]["message"]
        assert provider.claims.read(tid) is None
    assert provider.in_progress() == 0


def test_two_providers_on_a_cluster_asked_the_same_batch_compute_each_id_once(
        lab, provided, threads_cluster):
    """What one provider claimed first the other waits for (a job thread of its own) and
    serves from the record; nothing runs twice."""
    from kachery_tasks.runtime.executors import DaskExecutor

    for name in ("prov", "prov2", "req", "req2"):
        lab.add(name)
    executor = DaskExecutor(threads_cluster)
    providers = [start_provider(lab, name, provided, executor=executor)
                 for name in ("prov", "prov2")]
    try:
        calls = [remote_tasks.slow_square.prepare(200 + i, 0.05).to_bytes() for i in range(12)]
        a, b = _in_threads(lambda: ask_batch(lab, "req", calls, "prov"),
                           lambda: ask_batch(lab, "req2", list(reversed(calls)), "prov2"))
        for pending, entries, _ in (a, b):
            assert pending.status == "done"
            finished = {e["task_id"] for e in entries if e["type"] == "task_finished"}
            assert len(finished) == 12
        assert RAN["slow_square"] == 12
    finally:
        for p in providers:
            p.close()


def test_a_waiting_batch_is_kept_alive_by_one_status_per_tick_not_one_per_call(
        lab, provided):
    """One job thread, a call of 2.5 s then 7 short ones: nothing changes for longer than
    the requester's patience (1.5 s) but the repeated status keeps the batch; the repeats
    name one call per tick, so a call queued behind the others hears only queued and
    running."""
    for name in ("prov", "req"):
        lab.add(name)
    try:
        start_provider(lab, "prov", provided, workers=1, status_every=0.3)
        slow = remote_tasks.slow_square
        calls = [slow.prepare(310, 2.5).to_bytes()]
        calls += [slow.prepare(311 + i, 0.05).to_bytes() for i in range(7)]
        pending, entries, _ = ask_batch(lab, "req", calls, timeout=1.5)
        assert pending.status == "done"
        assert len([e for e in entries if e["type"] == "task_finished"]) == 8
        last = slow.task_id(317, 0.05)
        heard = [e["status"] for e in entries if e["type"] == "task_status"
                 and e["task_id"] == last]
        assert heard and len(heard) <= 3, heard
        first = [e for e in entries if e["type"] == "task_status"
                 and e["task_id"] == slow.task_id(310, 2.5)]
        assert len(first) >= 4  # repeated while it ran
    finally:
        for p in lab.providers:
            p.close()


def test_calls_running_on_a_cluster_when_the_provider_closes_end_are_answered_and_free_claims(
        lab, provided, threads_cluster):
    from kachery_tasks.runtime.executors import DaskExecutor

    for name in ("prov", "req"):
        lab.add(name)
    provider = start_provider(lab, "prov", provided, executor=DaskExecutor(threads_cluster),
                              claim_ttl=0.6)
    calls = [remote_tasks.slow_square.prepare(400 + i, 1.0) for i in range(3)]
    heard: list = []
    asking = threading.Thread(
        target=lambda: heard.append(ask_batch(lab, "req", [c.to_bytes() for c in calls],
                                              timeout=20.0)), daemon=True)
    asking.start()
    deadline = time.monotonic() + 20
    while RAN["slow_square"] < 3:  # all three running on the cluster
        assert time.monotonic() < deadline
        time.sleep(0.02)
    provider.close()
    deadline = time.monotonic() + 20
    while any((h := provider.claims.read(c.task_id)) is not None and h.live(time.time())
              for c in calls):
        assert time.monotonic() < deadline, "a claim was kept renewed"
        time.sleep(0.1)
    bucket = lab.remote("req").bucket
    assert all(bucket.has_result_record(c.task_id) for c in calls)  # published all the same
    asking.join(30)
    pending, entries, _ = heard[0]  # and answered, though the provider had closed
    assert pending.status == "done"
    finished = {e["task_id"] for e in entries if e["type"] == "task_finished"}
    assert finished == {c.task_id for c in calls}


def test_a_claim_that_cannot_be_taken_fails_its_call_only(lab, provided, threads_cluster,
                                                          monkeypatch):
    from kachery_tasks.errors import TransferError
    from kachery_tasks.runtime.executors import DaskExecutor

    for name in ("prov", "req"):
        lab.add(name)
    provider = start_provider(lab, "prov", provided, executor=DaskExecutor(threads_cluster))
    try:
        broken = square.task_id(504)
        real = provider.claims.acquire

        def acquire(task_id, function, **kw):
            if task_id == broken:
                raise TransferError("the bucket did not answer")
            return real(task_id, function, **kw)

        monkeypatch.setattr(provider.claims, "acquire", acquire)
        calls = [square.prepare(500 + i).to_bytes() for i in range(10)]
        pending, entries, _ = ask_batch(lab, "req", calls)
        assert pending.status == "done"
        finals = {e["task_id"]: e for e in entries if e["type"] != "task_status"}
        assert finals[broken]["type"] == "task_failed"
        assert "did not answer" in finals[broken]["error"]["message"]
        others = [square.task_id(500 + i) for i in range(10) if 500 + i != 504]
        assert all(finals[t]["type"] == "task_finished" for t in others)
        assert_left(provider, others)
    finally:
        provider.close()


def test_a_task_ending_with_system_exit_is_answered_failed_and_frees_its_claim(two):
    lab, provider = two
    pending = ask(lab, "req", "prov", remote_tasks.exits.prepare(3))
    assert pending.final.type == "task_failed"
    assert pending.final.body["error"]["type"] == "SystemExit"
    assert provider.claims.read(remote_tasks.exits.task_id(3)) is None


def test_a_task_raising_on_a_cluster_sends_its_own_frames_only(lab, provided, threads_cluster):
    from kachery_tasks.runtime.executors import DaskExecutor

    for name in ("prov", "req"):
        lab.add(name)
    start_provider(lab, "prov", provided, executor=DaskExecutor(threads_cluster))
    pending = ask(lab, "req", "prov", fails.prepare(5))
    assert pending.final.type == "task_failed"
    text = pending.final.body["error"]["traceback"]
    lines = text.splitlines()  # not the provider's, Dask's or the worker's frames
    assert lines[1].startswith("  File ") and "remote_tasks.py" in lines[1], text
    assert lines[-1] == "ValueError: cannot take 5"
    assert "kachery_tasks" not in text and "distributed" not in text
