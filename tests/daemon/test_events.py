"""Live events: the channel services' events, new task runs and stored files reach the page."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

from kachery_tasks.daemon.events import EventHub, RunWatcher
from tests.daemon.conftest import OCTETS, api_client, sse_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import task_defs


def _first(events, wanted: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    for name, data in events:
        if name == wanted:
            return data
        assert time.monotonic() < deadline
    raise AssertionError(f"the stream ended before a {wanted} event")


def test_daemon_events_reach_an_event_stream_client(served, daemon, monkeypatch):
    from kachery_tasks.daemon.routes import info

    monkeypatch.setattr(info, "KEEPALIVE_SECONDS", 0.2)  # _first sees its deadline pass
    with api_client(served) as c, c.stream("GET", "/api/events") as r:
        events = sse_events(r, keepalives=True)
        assert next(events)[0] == "hello"
        assert daemon.subscribers == 1
        daemon.emit({"type": "presence", "channel": "lab", "node": "ab" * 32, "online": True})
        assert _first(events, "presence") == {"type": "presence", "channel": "lab",
                                              "node": "ab" * 32, "online": True}
    served.stop()
    assert daemon.subscribers == 0  # unsubscribed when the API stops


def test_new_runs_and_stored_files_are_events(served, node):
    with api_client(served) as c, c.stream("GET", "/api/events") as r:
        events = sse_events(r)
        next(events)
        time.sleep(0.7)  # the watcher's first look (its baseline) is over

        def work():
            with node:
                task_defs.add(5, 6)
        threading.Thread(target=work).start()
        run = _first(events, "run")
        assert run["function"] == "task_defs.add" and run["task_id"] == \
            task_defs.add.task_id(5, 6)
        with api_client(served) as other:
            uri = other.post("/api/files", content=b"x", headers=OCTETS).json()["uri"]
        assert _first(events, "file") == {"type": "file", "uri": uri}


def test_an_event_published_right_after_the_greeting_reaches_the_stream():
    """The page reloads its lists on hello: an event published once it has hello must come
    (the hub subscribed the stream before the greeting, not at the first wait after it)."""
    async def scenario():
        hub = EventHub()
        stream = hub.stream(greeting={"type": "hello"})
        assert await stream.__anext__() == {"type": "hello"}
        hub.publish({"type": "presence"})
        got = await asyncio.wait_for(stream.__anext__(), 2)
        await stream.aclose()
        return got, hub.subscribers

    assert asyncio.run(scenario()) == ({"type": "presence"}, 0)


def test_a_run_is_reported_when_it_starts_and_when_it_finishes():
    class Run:
        def __init__(self, run_id, status):
            self.run_id, self.status = run_id, status
            self.task_id, self.function = f"t{run_id}", "f"

    class Records:
        def __init__(self):
            self.rows = []

        def runs(self, limit):
            return list(reversed(self.rows))[:limit]

    hub = EventHub()
    sent: list = []
    hub.publish = sent.append  # type: ignore[method-assign]
    records = Records()
    watcher = RunWatcher(records, hub)
    records.rows = [Run(1, "success")]
    assert watcher.poll() == 0  # the baseline
    records.rows = [Run(1, "success"), Run(2, "running")]
    assert watcher.poll() == 1 and sent[-1]["status"] == "running"
    records.rows = [Run(1, "success"), Run(2, "success"), Run(3, "error")]
    assert watcher.poll() == 2 and [e["run_id"] for e in sent[-2:]] == [2, 3]
    assert watcher.poll() == 0


def test_a_client_that_falls_behind_is_told_and_let_go(monkeypatch):
    from kachery_tasks.daemon import events

    monkeypatch.setattr(events, "QUEUE_LIMIT", 3)
    hub = EventHub()

    async def run():
        stream = hub.stream()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)
        for i in range(10):
            hub.publish({"type": "x", "i": i})
        await asyncio.sleep(0.01)
        got = [await first]
        async for e in stream:
            got.append(e)
        return got

    got = asyncio.run(run())
    assert got[-1]["type"] == "overflow" and len(got) <= 4
    assert hub.subscribers == 0


def test_the_records_are_read_only_while_someone_listens():
    class Records:
        reads = 0

        def runs(self, limit):
            Records.reads += 1
            return []

    async def scenario():
        hub = EventHub()
        watcher = RunWatcher(Records(), hub, interval=0.01)
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.2)
        quiet = Records.reads
        stream = hub.stream(idle=0.01)
        await stream.__anext__()  # subscribed (an idle keep-alive comes back)
        await asyncio.sleep(0.2)
        listened = Records.reads - quiet
        await stream.aclose()
        task.cancel()
        return quiet, listened

    quiet, listened = asyncio.run(scenario())
    assert quiet == 0 and listened > 0
