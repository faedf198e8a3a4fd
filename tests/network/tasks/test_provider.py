"""TaskProvider: request_task served on a channel (real broker, real ably SDK, file:// bucket)."""

from __future__ import annotations

import threading

import pytest

from kachery_tasks.network.channels.config import PERMISSIONS
from kachery_tasks.network.channels.membership import set_permissions
from kachery_tasks.network.channels.requests import Asker
from kachery_tasks.network.tasks import Provided, protocol
from kachery_tasks.network.tasks.provider import TaskProvider
from kachery_tasks.runtime import shared
from tests.network.channels.conftest import admitting_broker, lab  # noqa: F401 - fixtures
from tests.network.tasks import remote_tasks
from tests.network.tasks.remote_tasks import RAN, clock, fails, nested, notify, square

MODULE = "tests.network.tasks.remote_tasks"


@pytest.fixture
def provided():
    return Provided.from_modules([MODULE])


@pytest.fixture(autouse=True)
def fresh_counts():
    RAN.clear()


def start_provider(lab, name, provided, **options):  # noqa: F811
    session = lab.session(name, daemon=True)
    provider = TaskProvider(session, lab.nodes[name], provided, **options)
    lab.providers = [*getattr(lab, "providers", []), provider]
    return provider


@pytest.fixture
def two(lab, provided):  # noqa: F811
    """Nodes prov (a provider) and req (a requester) in channel lab."""
    lab.add("prov")
    lab.add("req")
    provider = start_provider(lab, "prov", provided)
    yield lab, provider
    for p in lab.providers:
        p.close()


def ask(lab, requester, provider_name, call, mode="call", timeout=20.0, statuses=None):  # noqa: F811
    """Ask provider ``provider_name`` for ``call`` from node ``requester``: the Pending."""
    session = lab.session(requester)
    asker = Asker(session)
    provider_id = lab.nodes[provider_name].id
    data = call.to_bytes(lab.nodes[requester].store.store_bytes)

    def seen(pending, msg):
        if statuses is not None:
            statuses.append(msg.body["status"])

    return asker.ask(protocol.TASK, protocol.request_body(provider_id, data, mode),
                     asked={provider_id}, online=1, timeout=timeout,
                     what=f"the call of {call.function}", on_progress=seen)


def test_a_pure_call_is_computed_published_and_answered(two):
    lab, _ = two
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
    assert "queued" in statuses and "running" in statuses
    assert RAN["square"] == 1
    # asked again: served from the shared record, not computed again
    again = ask(lab, "req", "prov", square.prepare(7))
    assert again.final.type == "task_finished" and again.final.body["record"] == body["record"]
    assert RAN["square"] == 1


def test_the_provider_records_who_asked(two):
    lab, _ = two
    ask(lab, "req", "prov", square.prepare(3))
    from kachery_tasks.runtime import cache

    asked = cache.for_node(lab.nodes["prov"]).records.requests_of(square.task_id(3))
    assert [(a["requester"], a["label"], a["channel"], a["outcome"]) for a in asked] == [
        (lab.nodes["req"].id, "req", "lab", "computed")]
