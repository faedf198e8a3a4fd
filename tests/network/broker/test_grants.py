"""What an authorizer can say beyond a client id: the channels it may use, a message
observer, and closing a client's connections for good (through the real SDK)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from kachery_tasks.errors import PubSubAuthError, PubSubError
from kachery_tasks.network.broker import Grant, Limits
from kachery_tasks.network.broker.protocol import Action
from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.testing.pubsub import Inbox
from tests.network.broker.rawclient import RawClient
from tests.network.broker.test_server import run
from tests.network.conftest import FAST


def room_grants(token: str) -> Grant:
    """'<client>:<channel>' admits <client> to <channel> only."""
    client_id, _, channel = token.partition(":")
    return Grant(client_id, frozenset({channel}))


def wait_state(client, states, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.state not in states:
        assert time.monotonic() < deadline, client.state
        time.sleep(0.05)


def test_a_grant_limits_the_client_to_its_channels_and_their_sub_channels(make_broker, connect):
    broker = make_broker(authorize=room_grants)
    alice = connect(broker.url, "alice", lambda: "alice:room")
    inbox = Inbox()
    alice.subscribe("room", inbox)
    alice.subscribe("room/requests", inbox)
    alice.publish("room", "m", "in room")
    alice.publish("room/requests", "m", "in a sub-channel")
    assert [m.data for m in inbox.wait_for(2)] == ["in room", "in a sub-channel"]
    alice.enter("room", {"x": 1})
    with pytest.raises(PubSubError, match="may not use channel 'hall'") as refused:
        alice.publish("hall", "m", "elsewhere")
    assert refused.value.code == 40160
    with pytest.raises(PubSubError, match="may not use channel 'roomy'"):
        alice.subscribe("roomy", inbox)
    with pytest.raises(PubSubError, match="may not use channel 'hall'"):
        alice.enter("hall", {"x": 1})
    alice.publish("room", "m", "still connected")
    assert inbox.wait_for(3)[2].data == "still connected"


def test_the_observer_sees_each_relayed_message(make_broker, connect):
    seen = []
    broker = make_broker(observe=lambda client, channel, item: seen.append(
        (client, channel, item.get("name"), item.get("data"), item.get("encoding"))))
    alice = connect(broker.url, "alice")
    alice.publish("room", "note", {"a": 1})
    alice.publish("room", "text", "hello")
    assert seen == [("alice", "room", "note", '{"a": 1}', "json"),
                    ("alice", "room", "text", "hello", None)]


def test_a_failing_observer_does_not_stop_the_broker(make_broker, connect):
    def observe(*args):
        raise RuntimeError("observer bug")

    broker = make_broker(observe=observe)
    alice = connect(broker.url, "alice")
    inbox = Inbox()
    alice.subscribe("room", inbox)
    alice.publish("room", "m", "x")
    assert inbox.wait_for(1)[0].data == "x"


def test_disconnect_closes_a_clients_connections_for_good(make_broker, connect):
    tokens: list[str] = []

    def authorize(token: str) -> Grant:
        tokens.append(token)
        return room_grants(token)

    running = make_broker(authorize=authorize)
    alice_room = connect(running.url, "alice", lambda: "alice:room")
    alice_hall = connect(running.url, "alice", lambda: "alice:hall")
    bob = connect(running.url, "bob", lambda: "bob:room")
    inbox = Inbox()
    bob.subscribe("room", inbox)
    running.broker.disconnect("alice", "room", "alice was removed from room")
    wait_state(alice_room, ("failed", "closed"))
    with pytest.raises(PubSubAuthError, match="alice was removed from room") as refused:
        alice_room.publish("room", "m", "after removal")
    assert refused.value.code == 40101
    attempts = len(tokens)
    time.sleep(3 * FAST["retry_interval"] + 1)
    assert len(tokens) == attempts  # the SDK does not retry
    alice_hall.publish("hall", "m", "other channel: still connected")
    bob.publish("room", "m", "bob goes on")
    assert inbox.wait_for(1)[0].data == "bob goes on"
    clients = running.call(lambda: sorted(s.client_id for s in running.broker.router.sessions
                                          .values()))
    assert clients == ["alice", "bob"]  # alice's hall connection only


def test_disconnect_from_another_thread_before_start_or_after_stop_is_harmless(make_broker):
    from kachery_tasks.network.broker import Broker

    Broker().disconnect("x", None, "not started")
    running = make_broker()
    running.stop()
    errors = []

    def disconnect() -> None:
        try:
            running.broker.disconnect("x", None, "stopped")
        except BaseException as e:  # an exception in a thread would not fail the test
            errors.append(e)

    thread = threading.Thread(target=disconnect)
    thread.start()
    thread.join(10)
    assert errors == []


def test_a_resume_with_a_token_for_other_channels_gets_a_new_connection(make_broker):
    broker = make_broker(authorize=room_grants)

    async def main():
        a = await RawClient.open(broker.url, clientId="a", accessToken="a:room")
        b = await RawClient.open(broker.url, clientId="a", accessToken="a:hall",
                                 resume=a.key)
        assert b.connected["error"]["code"] == 80008 and b.connection_id != a.connection_id
        c = await RawClient.open(broker.url, clientId="a", accessToken="a:room", resume=a.key)
        assert "error" not in c.connected and c.connection_id == a.connection_id

    run(main())


def test_a_long_token_fits_the_request_line_limit(make_broker, connect):
    long_token = "alice:room:" + "x" * 60_000
    broker = make_broker(authorize=lambda t: Grant("alice", frozenset({"room"})))
    client = connect(broker.url, "alice", lambda: long_token)
    client.publish("room", "m", "admitted")
    # websockets' own limit (8 KiB) would have refused the handshake:
    short = make_broker(authorize=lambda t: "alice", limits=Limits(max_request_line=8192))
    from websockets import http11

    http11.MAX_LINE_LENGTH = 8192  # what it is in a process that started no other broker
    try:
        with pytest.raises(PubSubError):
            connect_pubsub(short.url, "alice", lambda: long_token,
                           **{**FAST, "connect_timeout": 2.0})
    finally:
        http11.MAX_LINE_LENGTH = Limits().max_request_line


def test_a_client_cut_off_first_gets_what_was_waiting_for_it(make_broker):
    broker = make_broker()

    async def main():
        from websockets.asyncio.client import connect

        # "slow" reads nothing for a while, so frames wait for it in the broker
        slow = await connect(f"{broker.url}/?clientId=slow&v=5", max_queue=1,
                             compression=None, max_size=None)
        RawClient.opened.append(slow)
        json.loads(await slow.recv())
        await slow.send(json.dumps({"action": 10, "channel": "room"}))
        pub = await RawClient.open(broker.url, clientId="pub")
        n = 200  # 6 MB: more than the socket buffers hold
        for _ in range(n):
            await pub.publish("room", {"name": "e", "data": "x" * 30_000})
        assert broker.call(lambda: broker.broker.stats()["max_outbox_bytes"]) > 0
        broker.broker.disconnect("slow", None, "slow was removed")
        got, last = 0, None
        while True:
            frame = json.loads(await asyncio.wait_for(slow.recv(), 10))
            if frame["action"] == Action.MESSAGE:
                got += len(frame["messages"])
            elif frame["action"] == Action.ERROR:
                last = frame
                break
        assert got == n and last["error"]["message"] == "slow was removed"

    run(main(), timeout=120)
