"""Fixtures for the daemon: a node, a fake of the channel services, the app, a server; the
channel fixtures (a broker with channel admission, a lab of member nodes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")  # the daemon extra; installed by the dev extra

import kachery_tasks as kachery
from kachery_tasks.daemon.api import create_app
from kachery_tasks.daemon.http import HttpServer
from kachery_tasks.listeners import Listeners
from tests.network.channels.conftest import admitting_broker, lab  # noqa: F401

TOKEN = "test-token-" + "x" * 32


class FakeDaemon:
    """What the API uses of NodeDaemon (the channel services), driven by the test."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.online: set[str] = set()
        self.provides: dict[str, list[dict]] = {}  # node id -> what its presence announces
        self.connected = True
        self.requests: list[dict] = []
        self.reloads = 0
        self.provided: Any = None  # a Provided registry, as node start --provide gives
        self.executor: Any = None  # where provided tasks run (None: in-process)
        self._subs = Listeners("fake daemon subscriber")

    def status(self) -> dict:
        from kachery_tasks.network.channels import ChannelStore

        channels = []
        for c in ChannelStore(self.node.dir).all():
            config = c.trusted_config()
            channels.append({
                "name": c.name, "owner": c.owner, "version": config.version,
                "pubsub": config.pubsub, "bucket": config.bucket, "connected": self.connected,
                "members": [{"node": n, "label": m.label, "permissions": sorted(m.permissions),
                             "online": n in self.online, "provides": self.provides.get(n, [])}
                            for n, m in config.members.items()],
            })
        return {"node": {"id": self.node.id, "label": "fake-daemon", "path": str(self.node.path)},
                "channels": channels, "requests": list(self.requests)}

    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        return self._subs.add(callback)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def emit(self, event: dict) -> None:
        self._subs(event)

    def reload_channels(self) -> None:
        self.reloads += 1

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def node(node_path):
    return kachery.node(node_path)


@pytest.fixture
def daemon(node) -> FakeDaemon:
    return FakeDaemon(node)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def client(node, daemon) -> Iterator[Any]:
    """A TestClient of the node's API (lifespan running), sending the token."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(node, daemon, TOKEN, run_poll=0.05), headers=AUTH) as c:
        yield c


@pytest.fixture
def served(node, daemon) -> Iterator[HttpServer]:
    """The API served for real on 127.0.0.1 (uvicorn on a thread)."""
    with HttpServer(node, daemon) as server:
        yield server


def token_of(server: HttpServer) -> str:
    return (server.node.path / "daemon" / "token").read_text()


def sse_events(response: Any, keepalives: bool = False) -> Iterator[tuple[str, Any]]:
    """(event name, decoded data) for each server-sent event of a streaming httpx response;
    with ``keepalives``, ("keep-alive", None) for each comment line too (a reader that
    waits for an event can then see its deadline pass)."""
    import json

    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            if keepalives:
                yield "keep-alive", None
        elif line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def api_client(server: HttpServer, **kw: Any) -> Any:
    """An httpx client of a served API, sending its token."""
    import httpx

    return httpx.Client(base_url=server.url, timeout=kw.pop("timeout", 20),
                        headers={"Authorization": f"Bearer {token_of(server)}"}, **kw)
