"""Clients of the embedded broker keep working when it is killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kachery_tasks.errors import PubSubError
from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.testing.pubsub import Inbox, wait_members
from tests.network.conftest import FAST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kachery_tasks", "broker", "start", "--port", str(port), "--quiet",
         "--open"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy(),
    )
    line = proc.stdout.readline()
    assert f"listening on ws://127.0.0.1:{port}" in line, line
    return proc


def wait_connected(clients, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(c.state != "connected" for c in clients):
        assert time.monotonic() < deadline, [c.state for c in clients]
        time.sleep(0.05)


@pytest.mark.slow
def test_clients_keep_publishing_and_receiving_after_a_broker_restart():
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    broker = start_broker(port)
    names = ("alice", "bob", "carol")
    clients = {n: connect_pubsub(url, n, **FAST) for n in names}
    inboxes = {n: Inbox() for n in names}
    try:
        for n, client in clients.items():
            client.subscribe("room", inboxes[n])
            client.enter("room", {"name": n})
        everyone = {n: {"name": n} for n in names}
        wait_members(clients["alice"], "room", everyone)
        clients["alice"].publish("room", "before", "x")
        for inbox in inboxes.values():
            inbox.wait_for(1)

        broker.send_signal(signal.SIGKILL)  # no goodbye: every socket just breaks
        broker.wait(10)
        with pytest.raises(PubSubError, match="may still be delivered"):
            clients["bob"].publish("room", "while-down", "y", timeout=0.5)
        broker = start_broker(port)  # a new broker, on the same port, that knows nobody

        wait_connected(clients.values())
        for client in clients.values():  # presence is entered again by each client
            wait_members(client, "room", everyone, timeout=20)
        for n, client in clients.items():
            client.publish("room", "after", f"from {n}")
        for inbox in inboxes.values():
            got = inbox.wait_until(
                lambda items: sum(m.name == "after" for m in items) == len(names), timeout=20)
            assert sorted(m.data for m in got if m.name == "after") == [
                f"from {n}" for n in names]
    finally:
        for client in clients.values():
            client.close()
        broker.terminate()
        broker.wait(10)
