"""A contract test suite every :class:`~kachery_tasks.network.pubsub.base.PubSub` backend must pass.

Subclass :class:`PubSubContract` in a test module, name the subclass
``Test...`` and implement :meth:`PubSubContract.connect` (a client connected
as ``client_id`` to a fresh broker of the backend under test); pytest then runs
every ``test_`` method below against it::

    class TestEmbeddedBroker(PubSubContract):
        @pytest.fixture(autouse=True)
        def _broker(self):
            with BrokerThread() as broker:
                self.url = broker.url
                yield

        def connect(self, client_id):
            return connect_pubsub(self.url, client_id)

:class:`Inbox` is a thread-safe callback that records what it receives and
lets a test wait for it; it is useful beyond this suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..errors import InvalidValueError, PubSubError
from ..network.pubsub.base import Member, Message, PresenceEvent, PubSub

WAIT = 10.0


class Inbox:
    """A callback that keeps what it is called with; ``wait_for`` blocks until enough came."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> list[Any]:
        """The first ``n`` items; AssertionError if fewer arrive within ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= n, timeout):
                raise AssertionError(
                    f"expected {n} items within {timeout} s, got {len(self.items)}")
            return list(self.items[:n])

    def wait_until(self, predicate: Callable[[list[Any]], bool], timeout: float = WAIT) -> list:
        """The items once ``predicate(items)`` holds; AssertionError after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"condition not met within {timeout} s; got {self.items!r}")
            return list(self.items)

    def quiet(self, seconds: float) -> list[Any]:
        """What arrived after waiting ``seconds`` (for checking that nothing more comes)."""
        time.sleep(seconds)
        with self._cond:
            return list(self.items)


def wait_members(client: PubSub, channel: str, expected: dict[str, Any],
                 timeout: float = WAIT) -> list[Member]:
    """``client.members(channel)`` once it maps client ids to exactly ``expected`` data."""
    deadline = time.monotonic() + timeout
    while True:
        members = client.members(channel)
        if {m.client_id: m.data for m in members} == expected:
            return members
        if time.monotonic() > deadline:
            raise AssertionError(f"members of {channel!r}: {members!r}, expected {expected!r}")
        time.sleep(0.05)


class PubSubContract:
    """The behaviour the rest of kachery-tasks relies on; see the module docstring."""

    def connect(self, client_id: str) -> PubSub:
        """A client of a fresh broker, connected as ``client_id`` (echo on)."""
        raise NotImplementedError

    @pytest.fixture
    def clients(self) -> Iterator[Callable[..., PubSub]]:
        """``clients("alice", "bob")`` -> connected clients, closed after the test."""
        opened: list[PubSub] = []

        def make(*ids: str) -> Any:
            made = [self.connect(i) for i in ids]
            opened.extend(made)
            return made[0] if len(made) == 1 else made

        yield make
        for client in opened:
            client.close()

    def test_publish_reaches_every_subscriber(self, clients):
        a, b, c = clients("alice", "bob", "carol")
        inboxes = {}
        for client in (a, b, c):
            inboxes[client.client_id] = inbox = Inbox()
            client.subscribe("room", inbox)
        a.publish("room", "text", "hello")
        b.publish("room", "binary", b"\x00\xff\x10")
        c.publish("room", "json", {"unit": 3, "labels": ["noise", "mua"], "ok": True})
        for client_id, inbox in inboxes.items():
            got = inbox.wait_until(lambda items: len(items) >= 3)
            assert len(got) == 3, client_id
            by_name = {m.name: m for m in got}
            assert by_name["text"].data == "hello" and by_name["text"].client_id == "alice"
            assert by_name["binary"].data == b"\x00\xff\x10"
            assert isinstance(by_name["binary"].data, bytes)
            assert by_name["binary"].client_id == "bob"
            assert by_name["json"].data == {"unit": 3, "labels": ["noise", "mua"], "ok": True}
            assert {m.channel for m in got} == {"room"}
            assert all(isinstance(m, Message) and m.id and m.timestamp for m in got)
        assert all(len(inbox.quiet(0.2)) == 3 for inbox in inboxes.values())

    def test_channels_are_separate(self, clients):
        a, b = clients("alice", "bob")
        one, two = Inbox(), Inbox()
        b.subscribe("one", one)
        b.subscribe("two", two)
        a.publish("one", "m", "for one")
        a.publish("two", "m", "for two")
        assert [m.data for m in one.wait_for(1)] == ["for one"]
        assert [m.data for m in two.wait_for(1)] == ["for two"]
        assert len(one.quiet(0.2)) == 1 and len(two.items) == 1

    def test_subscribe_to_one_event_name(self, clients):
        a, b = clients("alice", "bob")
        only, every = Inbox(), Inbox()
        b.subscribe("room", only, name="wanted")
        b.subscribe("room", every)
        a.publish("room", "other", "x")
        a.publish("room", "wanted", "y")
        assert [m.name for m in every.wait_for(2)] == ["other", "wanted"]
        assert [m.data for m in only.wait_for(1)] == ["y"]
        assert len(only.quiet(0.2)) == 1

    def test_publish_returns_after_the_ack(self, clients):
        a, b = clients("alice", "bob")
        inbox = Inbox()
        b.subscribe("room", inbox)
        for i in range(20):
            assert a.publish("room", "n", str(i)) is None
        assert [m.data for m in inbox.wait_for(20)] == [str(i) for i in range(20)]

    def test_bad_data_is_refused_before_sending(self, clients):
        a = clients("alice")
        with pytest.raises(InvalidValueError):
            a.publish("room", "x", 3.5)
        with pytest.raises(InvalidValueError):
            a.publish("room", "x", {"f": object()})
        with pytest.raises(InvalidValueError):
            a.publish("", "x", "data")

    def test_order_per_publisher(self, clients):
        a, b, c = clients("alice", "bob", "carol")
        inbox = Inbox()
        c.subscribe("room", inbox)
        n = 150

        def send(client: PubSub) -> None:
            for i in range(n):
                client.publish("room", "seq", {"from": client.client_id, "i": i})

        threads = [threading.Thread(target=send, args=(x,)) for x in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = inbox.wait_for(2 * n)
        for sender in ("alice", "bob"):
            seq = [m.data["i"] for m in got if m.data["from"] == sender]
            assert seq == list(range(n)), sender

    def test_callbacks_run_on_a_thread_of_the_client(self, clients):
        a, b = clients("alice", "bob")
        inbox = Inbox()
        b.subscribe("room", inbox)
        a.publish("room", "m", "x")
        inbox.wait_for(1)
        assert threading.current_thread().name not in inbox.threads
        assert len(inbox.threads) == 1

    def test_a_callback_may_publish(self, clients):
        a, b = clients("alice", "bob")
        answers = Inbox()
        a.subscribe("answers", answers)
        b.subscribe("questions", lambda m: b.publish("answers", "re", f"re: {m.data}"))
        a.publish("questions", "q", "why")
        assert answers.wait_for(1)[0].data == "re: why"

    def test_a_failing_callback_does_not_stop_delivery(self, clients):
        a, b = clients("alice", "bob")
        inbox = Inbox()

        def fails(message: Message) -> None:
            inbox(message)
            raise RuntimeError("callback bug")

        b.subscribe("room", fails)
        a.publish("room", "m", "1")
        a.publish("room", "m", "2")
        assert [m.data for m in inbox.wait_for(2)] == ["1", "2"]

    def test_unsubscribe(self, clients):
        a, b = clients("alice", "bob")
        kept, dropped = Inbox(), Inbox()
        b.subscribe("room", kept)
        b.subscribe("room", dropped)
        a.publish("room", "m", "before")
        dropped.wait_for(1)
        kept.wait_for(1)
        b.unsubscribe("room", dropped)
        a.publish("room", "m", "after")
        assert [m.data for m in kept.wait_for(2)] == ["before", "after"]
        assert [m.data for m in dropped.quiet(0.3)] == ["before"]
        b.unsubscribe("room")
        a.publish("room", "m", "last")
        assert len(kept.quiet(0.3)) == 2

    def test_resubscribe_after_unsubscribing_everything(self, clients):
        a, b = clients("alice", "bob")
        first, second = Inbox(), Inbox()
        b.subscribe("room", first)
        b.unsubscribe("room")
        b.subscribe("room", second)
        a.publish("room", "m", "x")
        assert [m.data for m in second.wait_for(1)] == ["x"]
        assert first.quiet(0.2) == []

    def test_presence_enter_update_leave(self, clients):
        a, b, c = clients("alice", "bob", "carol")
        events = Inbox()
        c.on_presence("room", events)
        a.enter("room", {"role": "worker"})
        b.enter("room", "bob's data")
        wait_members(c, "room", {"alice": {"role": "worker"}, "bob": "bob's data"})
        a.enter("room", {"role": "idle"})  # entering again updates the data
        wait_members(b, "room", {"alice": {"role": "idle"}, "bob": "bob's data"})
        a.leave("room")
        members = wait_members(c, "room", {"bob": "bob's data"})
        assert all(isinstance(m, Member) for m in members)
        got = events.wait_until(lambda items: len(items) >= 4)
        assert [(e.action, e.member.client_id) for e in got] == [
            ("enter", "alice"), ("enter", "bob"), ("update", "alice"), ("leave", "alice")]
        assert got[2].member.data == {"role": "idle"}
        assert all(isinstance(e, PresenceEvent) and e.channel == "room" for e in got)

    def test_members_seen_by_a_client_that_attaches_later(self, clients):
        a = clients("alice")
        a.enter("room", b"\x01\x02")
        late = clients("late")
        assert wait_members(late, "room", {"alice": b"\x01\x02"})[0].connection_id

    def test_off_presence(self, clients):
        a, b = clients("alice", "bob")
        events = Inbox()
        b.on_presence("room", events)
        a.enter("room")
        events.wait_for(1)
        b.off_presence("room", events)
        a.leave("room")
        assert len(events.quiet(0.3)) == 1

    def test_close_leaves_presence_and_stops_the_client(self, clients):
        a, b = clients("alice", "bob")
        events = Inbox()
        b.on_presence("room", events)
        a.enter("room", "here")
        wait_members(b, "room", {"alice": "here"})
        a.close()
        a.close()  # closing twice is fine
        wait_members(b, "room", {}, timeout=5)
        assert events.wait_for(2)[1].action == "leave"
        with pytest.raises(PubSubError):
            a.publish("room", "m", "x")
        with pytest.raises(PubSubError):
            a.members("room")

    def test_a_closed_client_gets_no_more_callbacks(self, clients):
        a, b = clients("alice", "bob")
        inbox = Inbox()
        b.subscribe("room", inbox)
        a.publish("room", "m", "1")
        inbox.wait_for(1)
        b.close()
        a.publish("room", "m", "2")
        assert len(inbox.quiet(0.3)) == 1
