"""kachery.channel(...): calls that must run are asked of the channel's providers.

Real broker, real ably SDK, a file:// bucket; the provider is the test double in
fake_provider.py (the real provider is tested with its own module).
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

import kachery_tasks as kachery
from kachery_tasks.errors import (
    CallRejectedError,
    ChannelPermissionError,
    ChannelTimeoutError,
    NoProviderError,
    RemoteTaskError,
    TaskError,
)
from kachery_tasks.network.tasks.requester import choose_providers
from kachery_tasks.runtime import cache

from ..channels.conftest import admitting_broker, lab, wait_for  # noqa: F401 - fixtures
from . import requested_tasks as rt
from .fake_provider import FakeProvider

ALL_TASKS = [rt.double, rt.fails, rt.inner, rt.outer, rt.note, rt.count]


@pytest.fixture
def labs(lab):  # noqa: F811 - the fixture imported above
    """alice asks, bob and carol may provide (every permission)."""
    for name in ("alice", "bob", "carol"):
        lab.add(name)
    rt.RAN.clear()
    return lab


def provider(lab, name="bob", tasks=ALL_TASKS, **options) -> FakeProvider:  # noqa: F811
    made = FakeProvider(lab, name, tasks, **options)
    lab.daemons.append(made)  # stopped with the lab
    made.stop = made.close
    return made


def alice_records(lab):  # noqa: F811
    with lab.nodes["alice"]:
        return cache.current().records


def test_a_miss_is_computed_by_the_provider_and_then_served_here(labs):
    bob = provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert rt.double(21) == 42
        assert len(bob.requests) == 1
        row = cache.current().records.result(rt.double.task_id(21))
        assert row.node == labs.nodes["bob"].id  # computed there, recorded here as bob's
        cache.current().clear()  # not the memo: the local record serves it
        assert rt.double(21) == 42
    assert len(bob.requests) == 1


def test_a_result_already_shared_is_not_requested(labs):
    with labs.nodes["carol"]:
        assert rt.double(5) == 10  # carol computes it and publishes the record
    bob = provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert rt.double(5) == 10
        row = cache.current().records.result(rt.double.task_id(5))
    assert bob.requests == []
    assert row.node == labs.nodes["carol"].id


def test_no_provider_of_the_function_fails_at_once_naming_what_is_provided(labs):
    bob = provider(labs, tasks=[rt.inner])
    with labs.nodes["alice"], kachery.channel("lab", timeout=20), \
            pytest.raises(NoProviderError) as e:
        rt.double(3)
    text = str(e.value)
    assert "no provider of tests.network.tasks.requested_tasks.double" in text
    assert "channel lab" in text
    assert "bob provides tests.network.tasks.requested_tasks.inner" in text
    assert bob.requests == []
    assert "double(3)" not in rt.RAN


def test_fallback_local_runs_the_call_here(labs):
    provider(labs, tasks=[rt.inner])
    with labs.nodes["alice"], kachery.channel("lab", fallback="local", timeout=20):
        assert rt.double(4) == 8
        row = cache.current().records.result(rt.double.task_id(4))
    assert row.node == labs.nodes["alice"].id
    assert "double(4)" in rt.RAN


def test_a_remote_failure_raises_with_type_message_label_and_traceback(labs):
    provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        with pytest.raises(RemoteTaskError) as e:
            rt.fails(7)
        assert cache.current().records.result(rt.fails.task_id(7)) is None  # not served
    err = e.value
    assert err.remote_type == "ValueError" and err.remote_message == "cannot handle 7"
    assert err.label == "test-provider"
    assert "Traceback (most recent call last)" in err.remote_traceback
    assert 'raise ValueError(f"cannot handle {x}")' in str(err)
    assert str(err).splitlines()[0].endswith("ValueError: cannot handle 7")


def test_a_record_signed_by_a_non_member_is_refused(labs):
    provider(labs, forge=True)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        with pytest.raises(TaskError, match="no result record signed by a member"):
            rt.double(9)
        assert cache.current().records.result(rt.double.task_id(9)) is None


def test_a_timeout_names_who_was_asked_and_who_answered(labs):
    provider(labs, "bob", stall=True)
    provider(labs, "carol", silent=True)
    with labs.nodes["alice"], kachery.channel("lab", timeout=1.0), \
            pytest.raises(ChannelTimeoutError) as e:
        rt.double(11)
    text = str(e.value)
    assert "asked " in text and "bob (" in text and "carol (" in text
    assert "bob (" in text.split("answered:")[1].split("silent:")[0]
    assert "said 'running'" in text
    assert "carol (" in text.split("silent:")[1]


def test_a_busy_provider_is_passed_over_for_the_next(labs):
    provider(labs, "bob", decline=("busy", "shutting down"))
    provider(labs, "carol")
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert [rt.double(i) for i in range(4)] == [0, 2, 4, 6]


def test_every_provider_declining_raises_with_each_reason(labs):
    provider(labs, "bob", decline=("code_hash", "bob runs other code (hash abc)"))
    provider(labs, "carol", decline=("unknown", "carol does not know it"))
    with labs.nodes["alice"], kachery.channel("lab", timeout=20), \
            pytest.raises(CallRejectedError) as e:
        rt.double(12)
    assert "bob runs other code (hash abc)" in str(e.value)
    assert "carol does not know it" in str(e.value)


def test_not_allowed_by_every_provider_is_a_permission_error(labs):
    provider(labs, "bob", decline=("not_allowed", "alice lacks request_tasks"))
    with labs.nodes["alice"], kachery.channel("lab", timeout=20), \
            pytest.raises(ChannelPermissionError, match="alice lacks request_tasks"):
        rt.double(13)


def test_map_returns_futures_with_status_and_gather_collects(labs, monkeypatch, capfd):
    bob = provider(labs)
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "1")
    items = [*range(20), 3]  # a repeated item: one request
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        futures = rt.double.map(items)
        assert all(f.task_id == rt.double.task_id(i) for f, i in zip(futures, items))
        assert kachery.gather(futures) == [2 * i for i in items]
    assert {f.status for f in futures} == {"finished"}
    assert len(bob.requests) == 20
    assert len(bob.batches) == 1  # asked in one request_tasks
    assert sorted(r for r in rt.RAN if r.startswith("double")) == sorted(
        f"double({i})" for i in range(20))
    assert "tasks" in capfd.readouterr().err  # the progress bar


def test_submit_inside_the_block_goes_to_the_provider(labs):
    bob = provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        future = rt.double.submit(50)
        assert future.result() == 100
        assert future.status == "finished"
    assert len(bob.requests) == 1


def test_nested_calls_run_where_their_parent_runs(labs):
    bob = provider(labs, tasks=[rt.inner])  # inner is provided; outer is not
    with labs.nodes["alice"], kachery.channel("lab", fallback="local", timeout=20):
        assert rt.outer(1) == 20  # outer runs here; the inner call in it is not sent
        row = cache.current().records.result(rt.inner.task_id(1))
    assert bob.requests == []
    assert row.node == labs.nodes["alice"].id


def test_an_action_runs_on_the_provider_once_and_is_recorded_here(labs):
    bob = provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        first = rt.note("hello")
        second = rt.note("hello")
        row = cache.current().records.result(rt.note.task_id("hello"))
    assert first.ran and not second.ran
    assert row.node == labs.nodes["bob"].id and row.status == "success"
    assert len(bob.requests) == 1
    with labs.nodes["carol"], kachery.channel("lab", timeout=20):  # another member asks
        third = rt.note("hello")
        carol_row = cache.current().records.result(rt.note.task_id("hello"))
    assert len(bob.requests) == 2 and rt.RAN.count("note(hello)") == 1
    assert not third.ran and third.finished == first.finished == carol_row.finished


def test_an_action_another_provider_ran_is_recorded_as_that_providers(labs):
    carol = labs.nodes["carol"].id
    bob = provider(labs, ran_on=carol)  # answers from an outcome it says carol recorded
    with labs.nodes["bob"]:
        rt.note("once")  # so that bob serves the outcome rather than running it
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        outcome = rt.note("once")
        row = cache.current().records.result(rt.note.task_id("once"))
    assert not outcome.ran and len(bob.requests) == 1
    assert row.node == carol  # who ran it, not who answered
    bob.ran_on = "ab" * 32  # not a member: the answering provider is recorded instead
    with labs.nodes["carol"], kachery.channel("lab", timeout=20):
        rt.note("once")
        row = cache.current().records.result(rt.note.task_id("once"))
    assert row.node == labs.nodes["bob"].id


def test_a_query_runs_remotely_each_time_and_falls_back_when_unreachable(labs):
    bob = provider(labs)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        a, b = rt.count(), rt.count()
        assert b == a + 1
        assert len(bob.requests) == 2
    bob.close()
    provider(labs, "carol", tasks=[rt.inner])  # nobody provides count any more
    session, _ = labs.remote("alice").session()
    wait_for(lambda: labs.nodes["bob"].id not in {n for n, _ in session.members()},
             what="bob leaving")
    with labs.nodes["alice"], kachery.channel("lab", timeout=20), \
            pytest.warns(kachery.StaleResultWarning, match="no provider of .*count"):
        assert rt.count() == b


def test_with_fallback_local_calls_run_here_while_the_broker_cannot_be_reached(
        tmp_path, monkeypatch, caplog):
    from kachery_tasks.errors import PubSubError
    from kachery_tasks.network.channels import remote as remote_mod

    from ..channels.conftest import Lab

    monkeypatch.setitem(remote_mod.SESSION_OPTIONS, "connect_timeout", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    offline = Lab(tmp_path, f"ws://127.0.0.1:{port}")
    alice = offline.add("alice")
    rt.RAN.clear()
    try:
        with alice, kachery.channel("lab", timeout=20), pytest.raises(PubSubError):
            rt.double(4)  # without the fallback: the broker's error
        with alice, kachery.channel("lab", fallback="local", timeout=20):
            assert rt.double(4) == 8
            assert kachery.gather(rt.double.map([5, 6])) == [10, 12]
            assert rt.note("offline").ran
            row = cache.current().records.result(rt.double.task_id(4))
        assert row.node == alice.id
        assert sorted(rt.RAN) == ["double(4)", "double(5)", "double(6)", "note(offline)"]
        unreachable = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(unreachable) == 1  # said once, not tried again at every call
    finally:
        offline.close()


def test_with_fallback_local_calls_run_here_once_the_broker_went_away(
        labs, admitting_broker):  # noqa: F811 - the fixture imported above
    broker, _ = admitting_broker
    provider(labs)
    session, _ = labs.remote("alice").session()
    wait_for(lambda: labs.nodes["bob"].id in {n for n, _ in session.members()},
             what="bob in alice's presence")  # else the first call runs here too
    with labs.nodes["alice"], kachery.channel("lab", fallback="local", timeout=20):
        assert rt.double(70) == 140  # asked of bob
        broker.stop()
        wait_for(lambda: not session.connected, what="alice's connection dropping")
        assert rt.double(71) == 142  # the request cannot be sent: here
        assert rt.double(72) == 144
        rows = [cache.current().records.result(rt.double.task_id(x)) for x in (70, 71, 72)]
    assert [row.node for row in rows] == [labs.nodes["bob"].id] + [labs.nodes["alice"].id] * 2


def test_with_fallback_local_a_presence_that_cannot_be_listed_runs_the_call_here(
        labs, monkeypatch):
    """As when the SDK has suspended the channel (its broker gone for a while)."""
    from kachery_tasks.errors import PubSubError
    from kachery_tasks.network.channels import ChannelSession

    provider(labs)

    def suspended(*args, **kwargs):
        raise PubSubError("list the presence of 'lab' failed: Unable to get presence; "
                          "channel state = ChannelState.SUSPENDED (error 90001)")

    with labs.nodes["alice"], kachery.channel("lab", fallback="local", timeout=20):
        monkeypatch.setattr(ChannelSession, "members", suspended)
        assert kachery.gather(rt.double.map([76, 77])) == [152, 154]  # a batch
        assert rt.double(75) == 150
        rows = [cache.current().records.result(rt.double.task_id(x)) for x in (75, 76, 77)]
    assert [row.node for row in rows] == [labs.nodes["alice"].id] * 3


def test_with_fallback_local_a_request_the_broker_does_not_take_runs_here(labs, monkeypatch):
    from kachery_tasks.errors import PubSubError
    from kachery_tasks.network.channels.requests import Asker

    bob = provider(labs)

    def refused(*args, **kwargs):  # as a publish that timed out waiting for the broker
        raise PubSubError("publish on 'lab' timed out after 10 s")

    with labs.nodes["alice"], kachery.channel("lab", fallback="local", timeout=20):
        monkeypatch.setattr(Asker, "ask", refused)
        assert kachery.gather(rt.double.map([82, 83])) == [164, 166]  # a batch not sent
        assert rt.double(80) == 160
        rows = [cache.current().records.result(rt.double.task_id(x)) for x in (80, 82, 83)]
    assert [row.node for row in rows] == [labs.nodes["alice"].id] * 3 and bob.requests == []
    with labs.nodes["alice"], kachery.channel("lab", timeout=20), \
            pytest.raises(PubSubError, match="timed out"):
        rt.double(81)  # without the fallback: the broker's error


def test_a_provider_that_leaves_mid_call_is_passed_over_without_the_timeout(labs, monkeypatch):
    from kachery_tasks.network.channels import requests as requests_mod

    monkeypatch.setattr(requests_mod, "GONE_AFTER", 0.5)
    bob = provider(labs, "bob", stall=True)  # takes the call, then is killed
    carol = provider(labs, "carol")
    session, _ = labs.remote("alice").session()
    wait_for(lambda: {bob.node.id, carol.node.id} <= {n for n, _ in session.members()},
             what="both providers in alice's presence")
    members = session.members()
    x = next(x for x in range(1000, 1100)  # a call whose first provider is bob
             if choose_providers(rt.double.prepare(x), members, session.config)[0]
             == bob.node.id)
    with labs.nodes["alice"], kachery.channel("lab", timeout=300):
        future = rt.double.submit(x)
        wait_for(lambda: bob.requests, what="bob taking the call")
        bob.close()
        assert future.result(timeout=30) == 2 * x  # not the 300 s a silent one gets
    assert len(bob.requests) == 1 and len(carol.requests) == 1


def test_large_arguments_travel_through_the_bucket(labs):
    bob = provider(labs)
    big = np.arange(20_000, dtype=np.float64)  # 160 kB: too large for the message
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert np.array_equal(rt.double(big), 2 * big)
    assert len(bob.requests) == 1 and '"$content"' in bob.requests[0]["call"]


def test_providers_with_the_callers_code_hash_are_asked_first(labs):
    from kachery_tasks.network.tasks import Provided

    other_code = [{**entry, "code_hash": "0" * 64} for entry in Provided(ALL_TASKS).describe()]
    bob = provider(labs, "bob", announce=other_code)
    carol = provider(labs, "carol")
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert [rt.double(i) for i in range(100, 106)] == [2 * i for i in range(100, 106)]
    assert bob.requests == [] and len(carol.requests) == 6


def test_calls_are_spread_over_providers_by_task_id(labs):
    bob, carol = provider(labs, "bob"), provider(labs, "carol")
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        kachery.gather(rt.double.map(range(200, 220)))
    assert bob.requests and carol.requests  # both got some: 20 ids all on one: 2 ** -19
    assert len(bob.requests) + len(carol.requests) == 20


def test_a_member_without_request_tasks_may_not_ask(labs):
    labs.add("dave", permissions=frozenset({"download", "upload"}))
    bob = provider(labs)
    with labs.nodes["dave"], kachery.channel("lab", timeout=20), \
            pytest.raises(ChannelPermissionError, match="lacks the request_tasks permission") \
            as e:
        rt.double(300)
    assert bob.requests == []
    dave = labs.nodes["dave"].id  # the command keeps what dave may do already
    assert str(e.value).endswith(f"'kachery-tasks channel set-permissions lab {dave} "
                                 "--allow download,upload,request_tasks'")


def test_a_call_declined_in_a_batch_is_asked_of_the_next_provider(labs):
    bob = provider(labs, "bob", decline=("busy", "bob is shutting down"))
    carol = provider(labs, "carol")
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        assert kachery.gather(rt.double.map(range(300, 330))) == [2 * i for i in range(300, 330)]
    asked_bob = {json.loads(b["call"])["task_id"] for b in bob.requests}
    asked_carol = {json.loads(b["call"])["task_id"] for b in carol.requests}
    assert bob.batches and asked_bob  # its share was asked of bob first, in a batch
    assert asked_bob <= asked_carol and len(asked_carol) == 30


def test_calls_whose_answers_were_lost_in_a_batch_are_asked_again(labs):
    bob = provider(labs, "bob", lose=True)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        futures = rt.double.map(range(400, 410))
        first = futures[0].result(10)  # (a guard against a hang, not a measurement)
        rest = [f.result(1) for f in futures[1:]]
        assert [first, *rest] == [2 * i for i in range(400, 410)]
    assert len(bob.batches) == 1
    assert {f.status for f in futures} == {"finished"}


def test_a_batch_that_cannot_be_sent_ends_its_futures_with_the_error(labs, monkeypatch):
    from kachery_tasks.errors import PubSubError
    from kachery_tasks.network.channels.requests import Asker
    from kachery_tasks.network.tasks import protocol

    provider(labs)
    real = Asker.ask
    unsendable = rt.double.task_id(505)

    def ask(self, exchange, body, *args, **kwargs):
        if exchange is protocol.TASKS and any(unsendable in c for c in body["calls"]):
            raise PubSubError("the broker is away")
        return real(self, exchange, body, *args, **kwargs)

    monkeypatch.setattr(Asker, "ask", ask)
    monkeypatch.setattr(protocol, "BATCH_BYTES", 300)  # a message per call: 6 parts
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        futures = rt.double.map(range(500, 506))
        # (the timeouts guard against a hang; nothing is measured)
        assert [f.result(10) for f in futures[:5]] == [2 * i for i in range(500, 505)]
        with pytest.raises(PubSubError, match="the broker is away"):
            futures[5].result(10)


def test_gather_with_a_timeout_gives_up_on_channel_futures(labs):
    bob = provider(labs, "bob", stall=True)
    with labs.nodes["alice"], kachery.channel("lab", timeout=20):
        future = rt.double.submit(60)
        with pytest.raises(ChannelTimeoutError, match=r"not done after 0\.5 s"):
            kachery.gather([future], timeout=0.5)  # (the stalled call would wait 20 s)
    bob.release.set()
