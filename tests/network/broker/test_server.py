"""The broker frame by frame, with a bare websocket client (see test_sdk.py for the real SDK)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from kachery_tasks.network.broker import TokenExpired
from kachery_tasks.network.broker.protocol import ATTACH_RESUME, HAS_PRESENCE, RESUMED, Action
from tests.network.broker.rawclient import RawClient, close_all
from tests.network.conftest import quick_limits


def run(coro, timeout: float = 60):
    async def main():
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            await close_all()

    return asyncio.run(main())


async def member_and_watcher(url: str) -> tuple[RawClient, RawClient]:
    """Client "a" present (data "x") on channel "room", and "b" attached there, having seen it."""
    a = await RawClient.open(url, clientId="a")
    b = await RawClient.open(url, clientId="b")
    await a.attach("room")
    await b.attach("room")
    await a.send({"action": 14, "channel": "room", "msgSerial": 0,
                  "presence": [{"action": 2, "data": "x"}]})
    entered = await b.expect(Action.PRESENCE)
    assert entered["presence"][0]["action"] == 2
    return a, b


def test_connected_frame_has_what_the_sdk_reads(broker):
    async def main():
        c = await RawClient.open(broker.url, clientId="alice")
        frame = c.connected
        assert frame["action"] == Action.CONNECTED and frame["connectionId"]
        details = frame["connectionDetails"]
        assert details["clientId"] == "alice"
        assert details["connectionKey"].startswith(frame["connectionId"])
        assert details["connectionStateTtl"] == 120_000
        assert details["maxIdleInterval"] == 15_000
        assert details["maxMessageSize"] == 64 * 1024
        assert "error" not in frame
        await c.close()

    run(main())


def test_publish_is_acked_and_fanned_out_to_every_attached_connection(broker):
    async def main():
        a, b, c = [await RawClient.open(broker.url, clientId=n) for n in ("a", "b", "c")]
        for client in (a, b, c):
            attached = await client.attach("room")
            assert attached["flags"] & HAS_PRESENCE == 0
        await a.publish("room", {"name": "e", "data": "one"}, {"name": "e", "data": "two"})
        for client in (a, b, c):  # the publisher too: echo is on by default
            got = await client.messages(2)
            assert [m["data"] for m in got] == ["one", "two"]
            assert {m["clientId"] for m in got} == {"a"}
            assert {m["connectionId"] for m in got} == {a.connection_id}
            assert got[0]["id"] == f"{a.connection_id}:0:0" and got[1]["id"].endswith(":0:1")
            assert all(isinstance(m["timestamp"], int) for m in got)
        await b.nothing()

    run(main())


def test_echo_false_keeps_a_publisher_from_its_own_messages(broker):
    async def main():
        a = await RawClient.open(broker.url, clientId="a", echo="false")
        b = await RawClient.open(broker.url, clientId="b")
        await a.attach("room")
        await b.attach("room")
        await a.publish("room", {"name": "e", "data": "x"})
        assert [m["data"] for m in await b.messages(1)] == ["x"]
        await a.nothing()

    run(main())


def test_a_message_with_another_client_id_is_nacked(broker):
    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        await a.send({"action": 15, "channel": "c", "msgSerial": 0,
                      "messages": [{"name": "e", "clientId": "mallory"}]})
        nack = await a.expect(Action.NACK)
        assert nack["msgSerial"] == 0 and nack["error"]["code"] == 40012

    run(main())


def test_a_message_above_the_limit_is_nacked_and_the_connection_goes_on(make_broker):
    broker = make_broker(limits=quick_limits(max_message_bytes=1000))

    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        await a.attach("c")
        await a.send({"action": 15, "channel": "c", "msgSerial": 0,
                      "messages": [{"name": "small", "data": "x"},
                                   {"name": "big", "data": "x" * 2000}]})
        nack = await a.expect(Action.NACK)
        assert nack["error"]["code"] == 40009 and "1000 bytes" in nack["error"]["message"]
        a.serial = 1
        await a.publish("c", {"name": "ok", "data": "y" * 900})
        assert [m["name"] for m in await a.messages(1)] == ["ok"]

    run(main())


def test_a_frame_above_the_frame_limit_closes_only_that_connection(make_broker):
    broker = make_broker(limits=quick_limits(max_message_bytes=1000, max_frame_bytes=4096))

    async def main():
        from websockets.exceptions import ConnectionClosed

        a = await RawClient.open(broker.url, clientId="a")
        b = await RawClient.open(broker.url, clientId="b")
        await a.ws.send("x" * 10_000)
        with pytest.raises(ConnectionClosed) as closed:
            await a.recv()
        assert closed.value.rcvd.code == 1009  # message too big
        await b.attach("c")
        await b.publish("c", {"name": "still", "data": "here"})
        assert (await b.messages(1))[0]["data"] == "here"

    run(main())


def test_heartbeat_with_an_id_is_echoed(broker):
    async def main():
        a = await RawClient.open(broker.url)
        await a.send({"action": 0, "id": "ping-1"})
        assert await a.recv() == {"action": 0, "id": "ping-1"}

    run(main())


def test_a_quiet_connection_gets_heartbeats(make_broker):
    broker = make_broker(limits=quick_limits(max_idle_interval=0.4))

    async def main():
        a = await RawClient.open(broker.url)
        assert a.connected["connectionDetails"]["maxIdleInterval"] == 400
        t0 = time.monotonic()
        assert await a.recv(timeout=2) == {"action": 0}
        assert await a.recv(timeout=2) == {"action": 0}
        assert time.monotonic() - t0 < 2

    run(main())


def test_a_malformed_frame_gets_an_error_and_the_connection_closes(broker):
    async def main():
        a = await RawClient.open(broker.url)
        await a.ws.send("{not json")
        error = await a.recv()
        assert error["action"] == Action.ERROR and error["error"]["code"] == 40000
        await asyncio.wait_for(a.ws.wait_closed(), 5)

    run(main())


def test_the_binary_protocol_is_refused(broker):
    async def main():
        a = await RawClient.open(broker.url, format="msgpack")
        assert a.connected["action"] == Action.ERROR
        assert "use_binary_protocol=False" in a.connected["error"]["message"]

    run(main())


def test_close_answers_closed_and_presence_leaves_at_once(broker):
    async def main():
        a, b = await member_and_watcher(broker.url)
        await a.send({"action": 7})
        assert (await a.expect(Action.CLOSED))["action"] == Action.CLOSED
        left = await b.expect(Action.PRESENCE, timeout=1)
        assert left["presence"][0]["action"] == 3 and left["presence"][0]["clientId"] == "a"
        assert left["presence"][0]["data"] == "x"
        assert broker.call(lambda: len(broker.broker.router.sessions)) == 1

    run(main())


def test_detach_stops_messages(broker):
    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        b = await RawClient.open(broker.url, clientId="b")
        await a.attach("room")
        await b.attach("room")
        await b.send({"action": 12, "channel": "room"})
        assert (await b.expect(Action.DETACHED))["channel"] == "room"
        await a.publish("room", {"name": "e", "data": "x"})
        await b.nothing()

    run(main())


def test_presence_enter_update_leave_and_sync_on_attach(broker):
    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        await a.attach("room")
        await a.send({"action": 14, "channel": "room", "msgSerial": 0,
                      "presence": [{"action": 2, "data": "v1"}]})
        event = (await a.expect(Action.PRESENCE))["presence"][0]
        assert (event["action"], event["data"], event["id"]) == (2, "v1", f"{a.connection_id}:0:0")
        await a.expect(Action.ACK)
        late = await RawClient.open(broker.url, clientId="late")
        attached = await late.attach("room")
        assert attached["flags"] & HAS_PRESENCE
        sync = await late.expect(Action.SYNC)
        members = [(p["clientId"], p["action"], p["data"]) for p in sync["presence"]]
        assert members == [("a", 1, "v1")]
        assert sync["channelSerial"].endswith(":")  # an empty cursor: the whole set at once
        # Entering again with the same data changes nothing; other data is an update.
        await a.send({"action": 14, "channel": "room", "msgSerial": 1,
                      "presence": [{"action": 2, "data": "v1"}]})
        await a.expect(Action.ACK)
        await late.nothing()
        await a.send({"action": 14, "channel": "room", "msgSerial": 2,
                      "presence": [{"action": 2, "data": "v2"}]})
        update = (await late.expect(Action.PRESENCE))["presence"][0]
        assert (update["action"], update["data"]) == (4, "v2")

    run(main())


def test_presence_needs_an_attached_channel_and_a_client_id(broker):
    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        await a.send({"action": 14, "channel": "room", "msgSerial": 0,
                      "presence": [{"action": 2}]})
        assert (await a.expect(Action.NACK))["error"]["code"] == 90001
        anonymous = await RawClient.open(broker.url)
        await anonymous.attach("room")
        await anonymous.send({"action": 14, "channel": "room", "msgSerial": 0,
                              "presence": [{"action": 2}]})
        assert (await anonymous.expect(Action.NACK))["error"]["code"] == 40012

    run(main())


def test_an_unknown_resume_key_gets_a_new_connection_and_error_80008(broker):
    async def main():
        a = await RawClient.open(broker.url, resume="nobody!secret")
        assert a.connected["action"] == Action.CONNECTED
        assert a.connected["error"]["code"] == 80008
        assert a.connected["error"]["statusCode"] == 400

    run(main())


def test_a_resumed_connection_gets_the_messages_it_missed(make_broker):
    broker = make_broker(limits=quick_limits())

    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        b = await RawClient.open(broker.url, clientId="b")
        await a.attach("room")
        await b.publish("room", {"name": "e", "data": "before"})
        first = await a.expect(Action.MESSAGE)
        serial = first["channelSerial"]
        a.ws.transport.abort()  # the network fails: no closing frame
        await asyncio.sleep(0.1)
        for i in range(5):
            await b.publish("room", {"name": "e", "data": f"missed {i}"})
        again = await RawClient.open(broker.url, clientId="a", resume=a.key)
        assert again.connection_id == a.connection_id and "error" not in again.connected
        attached = await again.attach("room", channelSerial=serial, flags=ATTACH_RESUME)
        assert attached["flags"] & RESUMED
        got = await again.messages(5)
        assert [m["data"] for m in got] == [f"missed {i}" for i in range(5)]
        await b.publish("room", {"name": "e", "data": "live"})
        assert [m["data"] for m in await again.messages(1)] == ["live"]
        await again.nothing()

    run(main())


def test_frames_resent_after_a_resume_are_acked_but_not_published_twice(make_broker):
    broker = make_broker(limits=quick_limits())

    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        b = await RawClient.open(broker.url, clientId="b")
        await b.attach("room")
        await a.publish("room", {"name": "e", "data": "once"})
        a.ws.transport.abort()
        again = await RawClient.open(broker.url, clientId="a", resume=a.key)
        again.serial = 0  # the SDK resends what it saw no ACK for, with the same msgSerial
        await again.publish("room", {"name": "e", "data": "once"})
        await again.publish("room", {"name": "e", "data": "new"})
        assert [m["data"] for m in await b.messages(2)] == ["once", "new"]
        await b.nothing()

    run(main())


def test_presence_of_a_dropped_connection_leaves_after_the_timeout(make_broker):
    broker = make_broker(limits=quick_limits(presence_timeout=1.0))

    async def main():
        a, b = await member_and_watcher(broker.url)
        t0 = time.monotonic()
        a.ws.transport.abort()
        await b.nothing(0.6)  # still present shortly after the drop
        left = await b.expect(Action.PRESENCE, timeout=3)
        assert left["presence"][0]["action"] == 3
        assert time.monotonic() - t0 >= 0.9
        assert not left["presence"][0]["id"].startswith(f"{a.connection_id}:")  # synthesized

    run(main())


def test_resuming_within_the_presence_timeout_keeps_the_member(make_broker):
    broker = make_broker(limits=quick_limits(presence_timeout=1.0))

    async def main():
        a, b = await member_and_watcher(broker.url)
        a.ws.transport.abort()
        await asyncio.sleep(0.3)
        again = await RawClient.open(broker.url, clientId="a", resume=a.key)
        attached = await again.attach("room", flags=ATTACH_RESUME)
        assert attached["flags"] & HAS_PRESENCE
        sync = await again.expect(Action.SYNC)
        assert [p["clientId"] for p in sync["presence"]] == ["a"]
        await b.nothing(1.5)  # no leave, ever

    run(main())


def test_a_connection_that_does_not_read_is_dropped_before_it_grows_the_broker(make_broker):
    limit = 256 * 1024
    broker = make_broker(limits=quick_limits(max_outbox_bytes=limit))

    async def main():
        from websockets.asyncio.client import connect

        slow_ws = await connect(f"{broker.url}/?clientId=slow&v=5", max_queue=1,
                                compression=None)
        RawClient.opened.append(slow_ws)
        connected = json.loads(await slow_ws.recv())
        await slow_ws.send(json.dumps({"action": 10, "channel": "room"}))
        fast = await RawClient.open(broker.url, clientId="fast")
        await fast.attach("room")
        pub = await RawClient.open(broker.url, clientId="pub")
        data = "x" * 30_000
        peak = 0
        n = 800  # 24 MB: more than the socket buffers hold
        received = asyncio.create_task(fast.messages(n, timeout=30))
        for i in range(n):
            await pub.publish("room", {"name": "e", "data": data})
            if i % 20 == 0:
                peak = max(peak, broker.call(lambda: broker.broker.stats()["max_outbox_bytes"]))
        assert len(await received) == n  # the fast subscriber got everything
        assert peak <= limit + 40_000
        key = connected["connectionDetails"]["connectionKey"]
        assert broker.call(lambda: key not in broker.broker.router._by_key)
        again = await RawClient.open(broker.url, clientId="slow", resume=key)
        assert again.connected["error"]["code"] == 80020
        assert "did not read its messages fast enough" in again.connected["error"]["message"]

    run(main(), timeout=120)


class Tokens:
    """An authorizer: 'good-<id>' admits client <id>, 'old-<id>' has expired."""

    def __call__(self, token: str) -> str:
        kind, _, client_id = token.partition("-")
        if kind == "old":
            raise TokenExpired("issued too long ago")
        if kind != "good":
            raise PermissionError("not a member of this channel")
        return client_id


@pytest.mark.parametrize("params, code", [
    ({"accessToken": "bad-alice"}, 40101),
    ({}, 40101),
    ({"accessToken": "old-alice"}, 40142),
    ({"accessToken": "good-alice", "clientId": "bob"}, 40102),
])
def test_a_refused_token_gets_an_error_and_no_connection(make_broker, params, code):
    broker = make_broker(authorize=Tokens())

    async def main():
        a = await RawClient.open(broker.url, **params)
        assert a.connected["action"] == Action.ERROR
        assert a.connected["error"]["code"] == code
        assert "alice" not in json.dumps(a.connected) or code == 40102  # the token is not echoed
        await a.close()
        assert broker.call(broker.broker.stats)["denials"] == 1
        assert broker.call(broker.broker.stats)["sessions"] == 0

    run(main())


def test_the_authorizer_names_the_client(make_broker):
    broker = make_broker(authorize=Tokens())

    async def main():
        a = await RawClient.open(broker.url, accessToken="good-alice")
        assert a.connected["connectionDetails"]["clientId"] == "alice"
        await a.send({"action": 17, "auth": {"accessToken": "good-alice"}})
        renewed = await a.expect(Action.CONNECTED)
        assert renewed["connectionId"] == a.connection_id
        await a.send({"action": 17, "auth": {"accessToken": "good-bob"}})
        assert (await a.expect(Action.ERROR))["error"]["code"] == 40102

    run(main())


def test_a_stopping_broker_says_disconnected_before_closing(make_broker):
    broker = make_broker()

    async def main():
        a = await RawClient.open(broker.url, clientId="a")
        await asyncio.get_running_loop().run_in_executor(None, broker.stop)
        frame = await a.expect(Action.DISCONNECTED)
        assert frame["error"]["code"] == 80003 and frame["error"]["statusCode"] == 400

    run(main())


def test_resuming_a_connection_that_is_still_open_closes_the_old_websocket(broker):
    async def main():
        from websockets.exceptions import ConnectionClosed

        a = await RawClient.open(broker.url, clientId="a")
        again = await RawClient.open(broker.url, clientId="a", resume=a.key)
        assert again.connection_id == a.connection_id
        with pytest.raises(ConnectionClosed):
            await a.recv(timeout=5)
        await again.attach("room")  # the resumed one works

    run(main())


def test_a_broker_thread_that_cannot_listen_leaves_no_thread_behind(broker):
    import threading

    from kachery_tasks.errors import PubSubError
    from kachery_tasks.network.broker import BrokerThread

    before = sum(t.name == "kachery-broker" for t in threading.enumerate())
    with pytest.raises(PubSubError, match="cannot listen"):
        BrokerThread(port=broker.broker.port).start()  # the port is taken
    time.sleep(0.05)
    assert sum(t.name == "kachery-broker" for t in threading.enumerate()) == before
