"""kachery-tasks broker start: runs in the foreground, logs, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from kachery_tasks.network.pubsub import connect_pubsub
from kachery_tasks.testing.pubsub import Inbox


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kachery_tasks", "broker", "start", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )


def test_help_shows_an_example(run_cli):
    out = run_cli("broker", "start", "--help").stdout.decode()
    assert "kachery-tasks broker start --port 7654" in out and "--host" in out
    assert "broker" in run_cli("--help").stdout.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_a_signal_then_stops_cleanly(sig):
    proc = start("--port", "0", "--open")
    try:
        line = proc.stdout.readline()
        assert line.startswith("broker listening on ws://127.0.0.1:")
        url = line.split()[3]
        secret = "token-that-must-not-be-logged"
        with connect_pubsub(url, "alice", lambda: secret, connect_timeout=10) as client:
            inbox = Inbox()
            client.subscribe("room", inbox)
            client.publish("room", "m", "through the CLI broker")
            assert inbox.wait_for(1)[0].data == "through the CLI broker"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "broker stopped" in out
    assert "listening" not in err and "stopped" not in err  # said once, on stdout
    assert "opened for client 'alice'" in err
    assert "warning: --open: every client is admitted" in err
    assert secret not in out + err


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = start("--port", str(s.getsockname()[1]))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "error: cannot listen on 127.0.0.1" in err and "choose another --port" in err
    assert "Traceback" not in err


def test_by_default_only_channel_members_are_admitted(tmp_path):
    from kachery_tasks.errors import PubSubAuthError
    from kachery_tasks.keys import KeyPair
    from kachery_tasks.network.channels import make_token
    from tests.network.channels.conftest import ALL, config_of

    owner, member, stranger = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    proc = start("--port", "0", "--owner", owner.public_hex)
    try:
        url = proc.stdout.readline().split()[3]
        config = config_of(owner, {member.public_hex: ALL}, pubsub=url)
        with connect_pubsub(url, member.public_hex, lambda: make_token(member, config),
                            connect_timeout=10) as client:
            client.publish(config.pubsub_name, "m", "a member is admitted")
        with pytest.raises(PubSubAuthError, match="is not a member of channel lab"):
            connect_pubsub(url, stranger.public_hex, lambda: make_token(stranger, config),
                           connect_timeout=10)
        with pytest.raises(PubSubAuthError, match="not a channel admission token"):
            connect_pubsub(url, "alice", lambda: "some-token", connect_timeout=10)
        other = KeyPair.generate()  # a channel of another owner: not served here
        theirs = config_of(other, {member.public_hex: ALL}, pubsub=url)
        with pytest.raises(PubSubAuthError, match="only the channels of chosen owners"):
            connect_pubsub(url, member.public_hex, lambda: make_token(member, theirs),
                           connect_timeout=10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "--open" not in err and "denied a client" in err


def test_open_and_owner_do_not_mix(run_cli):
    r = run_cli("broker", "start", "--open", "--owner", "ab" * 32)
    assert r.returncode == 1 and "cannot be combined with --owner" in r.stderr.decode()
    r = run_cli("broker", "start", "--owner", "xyz")
    assert r.returncode == 1 and "64 lowercase hex digits" in r.stderr.decode()


def test_presence_timeout_is_how_long_a_dropped_member_stays_present():
    """With --presence-timeout 1 a member cut off leaves within seconds (the default
    keeps it 15 s)."""
    from tests.network.proxy import Proxy

    proc = start("--port", "0", "--open", "--presence-timeout", "1")
    proxy = None
    try:
        url = proc.stdout.readline().split()[3]
        proxy = Proxy(url).start()
        with connect_pubsub(proxy.url, "member", lambda: "t", connect_timeout=10) as member, \
                connect_pubsub(url, "watcher", lambda: "t", connect_timeout=10) as watcher:
            events = Inbox()
            watcher.on_presence("room", events)
            member.enter("room", "here")
            events.wait_for(1)
            proxy.cut()  # and it never comes back
            got = events.wait_for(2, timeout=8)
            assert (got[1].action, got[1].member.client_id) == ("leave", "member")
    finally:
        if proxy is not None:
            proxy.stop()
        proc.kill()
        proc.communicate(timeout=20)
