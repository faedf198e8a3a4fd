"""The adapter over the real ably SDK, against the embedded broker: the hard cases."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time

import pytest

from kachery_tasks.errors import InvalidValueError, PubSubAuthError, PubSubError
from kachery_tasks.network.broker import TokenExpired
from kachery_tasks.network.broker.protocol import MAX_CHANNEL_NAME
from kachery_tasks.network.pubsub import connect_pubsub, open_pubsub
from kachery_tasks.network.pubsub.ably_sdk import AblyPubSub
from kachery_tasks.testing.pubsub import Inbox, wait_members
from tests.network.conftest import FAST, quick_limits


class Tokens:
    """An authorizer: 'good-<id>' admits client <id> unless revoked; 'old-<id>' has expired."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.revoked: set[str] = set()

    def __call__(self, token: str) -> str:
        self.seen.append(token)
        kind, _, client_id = token.partition("-")
        if kind == "old":
            raise TokenExpired("issued too long ago")
        if kind != "good":
            raise PermissionError("not a member of this channel")
        if client_id in self.revoked:
            raise PermissionError("removed from the channel")
        return client_id


def sessions(broker) -> set[str]:
    return broker.call(lambda: set(broker.broker.router.sessions))


def sessions_end(broker, within: float = 10.0) -> set[str]:
    """The broker's sessions once none is left, or those still there after ``within``
    seconds (the broker drops a closed client's session when it reads the close)."""
    deadline = time.monotonic() + within
    while (left := sessions(broker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_refused_token_fails_at_once_and_is_not_retried(make_broker):
    tokens = Tokens()
    broker = make_broker(authorize=tokens)
    t0 = time.monotonic()
    with pytest.raises(PubSubAuthError, match=r"refused this client.*not a member") as refused:
        connect_pubsub(broker.url, "alice", lambda: "bad-alice", **FAST)
    assert refused.value.code == 40101
    assert time.monotonic() - t0 < FAST["connect_timeout"]
    time.sleep(3 * FAST["retry_interval"] + FAST["request_timeout"])  # time for retries
    assert tokens.seen == ["bad-alice"]
    assert broker.call(broker.broker.stats)["denials"] == 1


def test_an_expired_token_is_renewed_through_the_token_provider(make_broker, connect):
    tokens = Tokens()
    broker = make_broker(authorize=tokens)
    issued = iter(["old-alice", "good-alice"])
    client = connect(broker.url, "alice", lambda: next(issued))
    assert client.client_id == "alice" and client.state == "connected"
    assert tokens.seen == ["old-alice", "good-alice"]


def test_a_client_whose_connect_failed_can_connect_again(make_broker):
    broker = make_broker(authorize=Tokens())
    client = open_pubsub(broker.url, **FAST)
    with pytest.raises(PubSubAuthError):
        client.connect("alice", lambda: "bad-alice")
    with pytest.raises(PubSubError, match="not connected"):
        client.publish("room", "m", "x")
    client.connect("alice", lambda: "good-alice")
    inbox = Inbox()
    client.subscribe("room", inbox)
    client.publish("room", "m", "x")
    assert inbox.wait_for(1)[0].data == "x"
    client.close()


def test_a_token_for_another_client_is_refused(make_broker):
    broker = make_broker(authorize=Tokens())
    with pytest.raises(PubSubAuthError) as refused:
        connect_pubsub(broker.url, "alice", lambda: "good-bob", **FAST)
    assert refused.value.code == 40102


def test_a_failing_token_provider_is_reported(make_broker):
    broker = make_broker(authorize=Tokens())

    def provider() -> str:
        raise OSError("key file unreadable")

    with pytest.raises(PubSubAuthError, match="token provider raised OSError: key file"):
        connect_pubsub(broker.url, "alice", provider, **FAST)
    with pytest.raises(PubSubAuthError, match="returned no token"):
        connect_pubsub(broker.url, "alice", lambda: "", **FAST)


def test_no_broker_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    with pytest.raises(PubSubError, match=r"no broker answered at ws://127\.0\.0\.1"):
        connect_pubsub(f"ws://127.0.0.1:{port}", "alice", **{**FAST, "connect_timeout": 1.0})


def test_urls_and_options():
    with pytest.raises(InvalidValueError, match="unknown pub/sub URL"):
        open_pubsub("redis://localhost")
    with pytest.raises(InvalidValueError, match="ws://HOST:PORT"):
        open_pubsub("ws://localhost")
    with pytest.raises(InvalidValueError, match="no path"):
        open_pubsub("ws://localhost:7654/x")
    local = open_pubsub("ws://[::1]:7654")
    assert isinstance(local, AblyPubSub) and local._sdk_options["endpoint"] == "[::1]:7654"
    assert local._sdk_options["tls"] is False and local._sdk_options["fallback_hosts"] == []
    assert local._sdk_options["use_binary_protocol"] is False


def test_the_ably_service_needs_credentials(monkeypatch):
    monkeypatch.delenv("ABLY_API_KEY", raising=False)
    monkeypatch.delenv("ABLY_TOKEN", raising=False)
    with pytest.raises(PubSubAuthError, match="ABLY_API_KEY"):
        open_pubsub("ably:").connect("alice")
    monkeypatch.setenv("ABLY_TOKEN", "a-token")
    assert open_pubsub("ably:")._token == "a-token"
    monkeypatch.setenv("ABLY_API_KEY", "app.key:secret")
    service = open_pubsub("ably:main")
    assert service._key == "app.key:secret" and service._sdk_options["endpoint"] == "main"
    assert "secret" not in repr(service.__dict__.get("_sdk_options"))


def test_a_message_above_the_broker_limit_is_a_pubsub_error(make_broker, connect):
    broker = make_broker(limits=quick_limits(max_message_bytes=1000))
    client = connect(broker.url, "alice")
    with pytest.raises(PubSubError, match="larger than the broker's limit") as refused:
        client.publish("room", "big", "x" * 2000)
    assert refused.value.code == 40009
    client.publish("room", "small", "x" * 100)  # the connection goes on


def test_a_too_long_channel_name_is_refused_and_the_connection_goes_on(broker, connect):
    client = connect(broker.url, "alice")
    inbox = Inbox()
    client.subscribe("room", inbox)
    too_long = "x" * (MAX_CHANNEL_NAME + 1)
    with pytest.raises(PubSubError, match="longer than the broker's limit") as refused:
        client.publish(too_long, "m", "lost")
    assert refused.value.code == 40000
    with pytest.raises(PubSubError, match="longer than the broker's limit"):
        client.subscribe(too_long, Inbox())
    client.publish("room", "m", "still connected")
    assert inbox.wait_for(1)[0].data == "still connected" and client.state == "connected"


def test_echo_off(broker, connect):
    quiet = connect(broker.url, "quiet", echo=False)
    other = connect(broker.url, "other")
    own, theirs = Inbox(), Inbox()
    quiet.subscribe("room", own)
    other.subscribe("room", theirs)
    quiet.publish("room", "m", "x")
    assert theirs.wait_for(1)[0].data == "x"
    assert own.quiet(0.3) == []


def test_usage_errors(broker, connect):
    anonymous = connect(broker.url)
    with pytest.raises(PubSubError, match="connect with a client id"):
        anonymous.enter("room")
    with pytest.raises(PubSubError, match="already connected"):
        anonymous.connect("again")
    with pytest.raises(PubSubError, match="not connected"):
        open_pubsub(broker.url).publish("room", "m", "x")
    anonymous.leave("never-entered")  # nothing to do


def test_heartbeats_keep_a_quiet_connection(make_broker, connect, caplog):
    broker = make_broker(limits=quick_limits(max_idle_interval=0.5))
    client = connect(broker.url, "alice", request_timeout=0.5)
    before = sessions(broker)
    with caplog.at_level(logging.WARNING, logger="kachery_tasks.network.pubsub"):
        time.sleep(3)  # the SDK gives up on a connection silent for 0.5 + 0.5 s
    assert [r.message for r in caplog.records] == []
    assert client.state == "connected" and sessions(broker) == before


def publish_in_background(client, channel: str, n: int) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            client.publish(channel, "seq", {"i": i})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_dropped_connection_resumes_without_losing_messages(make_broker, connect, proxy_to):
    broker = make_broker(limits=quick_limits())
    proxy = proxy_to(broker.url)
    receiver = connect(proxy.url, "receiver")
    sender = connect(broker.url, "sender")
    inbox = Inbox()
    receiver.subscribe("room", inbox)
    before = sessions(broker)
    n = 400
    sending = publish_in_background(sender, "room", n)
    inbox.wait_for(50)
    proxy.cut()  # messages in flight and published meanwhile must not be lost
    time.sleep(0.5)
    proxy.restore()
    sending.join()
    got = inbox.wait_for(n, timeout=30)
    assert [m.data["i"] for m in got] == list(range(n))
    assert len(inbox.quiet(0.3)) == n  # and none twice
    assert sessions(broker) == before  # the same connection, resumed


def member_behind_a_proxy(make_broker, connect, proxy_to, presence_timeout: float, data):
    """A client present on "room" through a proxy, and a watcher that saw it enter."""
    broker = make_broker(limits=quick_limits(presence_timeout=presence_timeout))
    proxy = proxy_to(broker.url)
    member = connect(proxy.url, "member")
    watcher = connect(broker.url, "watcher")
    events = Inbox()
    watcher.on_presence("room", events)
    member.enter("room", data)
    events.wait_for(1)
    return proxy, watcher, events


def test_presence_survives_a_short_drop(make_broker, connect, proxy_to):
    proxy, watcher, events = member_behind_a_proxy(make_broker, connect, proxy_to, 1.5,
                                                   {"ready": True})
    proxy.cut()
    time.sleep(0.3)
    proxy.restore()
    assert [e.action for e in events.quiet(2.5)] == ["enter"]  # no leave, no re-enter
    wait_members(watcher, "room", {"member": {"ready": True}})


def test_presence_of_a_vanished_client_leaves_after_the_timeout(make_broker, connect, proxy_to):
    proxy, watcher, events = member_behind_a_proxy(make_broker, connect, proxy_to, 1.0, "x")
    proxy.cut()  # and it never comes back
    got = events.wait_for(2, timeout=5)
    assert (got[1].action, got[1].member.client_id) == ("leave", "member")
    wait_members(watcher, "room", {})


def test_connecting_takes_one_attempt(broker, caplog):
    with caplog.at_level(logging.WARNING, logger="ably"):
        client = connect_pubsub(broker.url, "alice", lambda: "token", **FAST)
        client.close()
    # Only the SDK's own records: an earlier test's leftovers are not this client's.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ably")] == []


def test_a_closed_client_that_the_sdk_revives_is_closed_again(broker):
    """ably 3.1.4 can fire its reconnection timer while its own close is under way: the
    closed client then connects again and, once its broker is gone, retries for ever
    (logging each attempt into whatever runs next in the process)."""
    from ably.types.connectionstate import ConnectionState

    client = connect_pubsub(broker.url, "alice", lambda: "token", **FAST)
    sdk = client._client
    client.close()
    assert sessions_end(broker) == set()

    async def retry_timer_fires() -> None:  # what the SDK's timer does when it fires
        sdk.connection.connection_manager.request_state(ConnectionState.CONNECTING)

    client._loop.run(retry_timer_fires(), 5)
    deadline = time.monotonic() + 10
    while sdk.connection.state != ConnectionState.CLOSED and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # time for a revived connection to settle in
    assert sdk.connection.state == ConnectionState.CLOSED
    assert sessions_end(broker) == set()


def test_a_client_refused_on_reconnection_fails_for_good(make_broker, connect, proxy_to):
    tokens = Tokens()
    broker = make_broker(authorize=tokens)
    proxy = proxy_to(broker.url)
    client = connect(proxy.url, "alice", lambda: "good-alice")
    client.publish("room", "m", "while a member")
    tokens.revoked.add("alice")
    proxy.cut()  # the SDK reconnects at once, and is refused
    proxy.restore()
    deadline = time.monotonic() + 10
    while client.state not in ("failed", "closed") and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(PubSubAuthError, match="removed from the channel"):
        client.publish("room", "m", "after removal")
    attempts = len(tokens.seen)
    time.sleep(3 * FAST["retry_interval"] + FAST["request_timeout"])
    assert len(tokens.seen) == attempts  # no retry loop


def test_a_stalled_subscriber_is_dropped_and_recovers(make_broker, connect, tmp_path):
    """A subscriber process that stops reading (SIGSTOP) is dropped at the outbox limit;
    when it runs again its SDK reconnects and is told it lost messages (80020)."""
    import os
    import signal
    import subprocess
    import sys

    limit = 256 * 1024
    broker = make_broker(limits=quick_limits(max_outbox_bytes=limit))
    out = open(tmp_path / "out.txt", "w+")  # noqa: SIM115 - read while the process runs
    proc = subprocess.Popen([sys.executable, "-m", "tests.network.pubsub.subscriber_proc",
                             broker.url], stdout=out, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    try:
        deadline = time.monotonic() + 30
        while "ready" not in (tmp_path / "out.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        sender, fast = connect(broker.url, "sender"), connect(broker.url, "fast")
        inbox = Inbox()
        fast.subscribe("room", inbox)
        peak, n = 0, 600  # 18 MB: more than the socket buffers hold
        for i in range(n):
            sender.publish("room", "big", "x" * 30_000)
            if i % 20 == 0:
                peak = max(peak, broker.call(lambda: broker.broker.stats()["max_outbox_bytes"]))
        assert len(inbox.wait_for(n, timeout=30)) == n
        assert peak <= limit + 40_000
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while "after" not in (tmp_path / "out.txt").read_text():
            assert time.monotonic() < deadline, (tmp_path / "out.txt").read_text()[-2000:]
            sender.publish("room", "small", "after")
            time.sleep(0.3)
        text = (tmp_path / "out.txt").read_text()
        assert "did not read its messages fast enough" in text and "80020" in text
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        out.close()


def test_the_sdk_refuses_a_message_above_64_kib_itself(broker, connect):
    client = connect(broker.url, "alice")
    with pytest.raises(PubSubError, match="Maximum size of messages") as refused:
        client.publish("room", "big", "x" * 70_000)
    assert refused.value.code == 40009


def test_a_websocket_broken_under_the_sdk_is_a_pubsub_error(broker, connect):
    """Between a socket breaking and the SDK noticing, its send raises websockets' own
    exception; the caller gets a PubSubError (and the SDK resends the message later)."""
    from websockets.exceptions import ConnectionClosedError

    client = connect(broker.url, "alice")

    async def broken(*_args):
        raise ConnectionClosedError(None, None)

    channel = client._loop.run(_sdk_channel(client, "room"), 5)
    channel.publish = broken
    with pytest.raises(PubSubError, match=r"broke.*may still be delivered"):
        client.publish("room", "m", "x")


async def _sdk_channel(client, name):
    return client._client.channels.get(name)


def test_closing_while_offline_does_not_try_to_leave(make_broker, connect, proxy_to, monkeypatch):
    """Offline, a leave could only time out; the broker's presence timeout does the job."""
    from ably.realtime.presence import RealtimePresence

    broker = make_broker(limits=quick_limits())
    proxy = proxy_to(broker.url)
    client = connect(proxy.url, "alice")
    client.enter("room", "x")
    proxy.cut()
    deadline = time.monotonic() + 10
    while client.state == "connected":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    leaves = []
    original = RealtimePresence.leave

    async def leave(self, *args):
        leaves.append(self.channel.name)
        return await original(self, *args)

    monkeypatch.setattr(RealtimePresence, "leave", leave)
    client.close()
    assert leaves == []


def test_a_refused_connection_is_reported_and_retried_at_once():
    """ably 3.1.4 alone notices a refused TCP connection only at its request timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {**FAST, "connect_timeout": 1.5, "request_timeout": 10.0}
    with pytest.raises(PubSubError, match=rf"cannot open a websocket to 127\.0\.0\.1:{port}"):
        connect_pubsub(f"ws://127.0.0.1:{port}", "alice", **options)


def test_a_connection_down_for_a_while_is_logged_once_not_at_each_attempt(
        make_broker, connect, proxy_to, caplog):
    broker = make_broker(limits=quick_limits(presence_timeout=30.0))
    proxy = proxy_to(broker.url)
    client = connect(proxy.url, "alice")
    caplog.set_level(logging.DEBUG, logger="kachery_tasks.network.pubsub")
    proxy.cut()  # refused for 3 s: a dozen attempts, retried every 0.2 s
    time.sleep(3.0)
    proxy.restore()
    deadline = time.monotonic() + 20
    while client.state != "connected":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    attempts = [r for r in caplog.records if r.levelno == logging.DEBUG
                and "reconnecting" in r.getMessage()]
    assert len(attempts) >= 3  # the later attempts, as debug records
    assert [w for w in warnings if "reconnecting" in w] == [warnings[0]]
    assert any(re.search(r"re-established after \d+ s", w) for w in warnings)
