"""Channels across processes: a real broker process, the real SDK, node processes, a bucket.

Three member nodes each run a ChannelSession in their own process. Envelopes
that were tampered with, replayed or are stale are dropped by every receiver;
a valid one is delivered. A membership change made with the CLI reaches a
running node within seconds, without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kachery_tasks.config import init_node_dir
from kachery_tasks.keys import node_keypair
from kachery_tasks.network.channels import ChannelStore, seal_message
from kachery_tasks.network.channels.config import PERMISSIONS
from kachery_tasks.network.channels.membership import add_node, change_members, create_channel

ALL = frozenset(PERMISSIONS)


class Proc:
    """A child process whose output lines are read by a thread into a queue."""

    def __init__(self, args: list[str], env: dict[str, str], stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 30.0, count: int = 1) -> str:
        """The ``count``-th line read (so far or from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if predicate(line)]
            if len(found) >= count:
                return found[count - 1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout} s; got {self.lines}")
            try:
                self.lines.append(self._queue.get(timeout=left))
            except queue.Empty:
                continue

    def settle(self, seconds: float) -> list[str]:
        """Every line read, after waiting ``seconds`` for more."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.lines.append(self._queue.get(timeout=left))
            except queue.Empty:
                pass
        return self.lines

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def env_for(node_path: Path | None = None) -> dict[str, str]:
    env = os.environ.copy()
    if node_path is not None:
        env["KACHERY_TASKS_DIR"] = str(node_path)
    return env


@contextlib.contextmanager
def started_procs() -> Iterator[Callable[..., Proc]]:
    """``start(args, env, stdin=False)``: a Proc, stopped when the block ends."""
    started: list[Proc] = []

    def start(args, env, stdin=False) -> Proc:
        p = Proc(args, env, stdin)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def procs():
    with started_procs() as start:
        yield start


@pytest.fixture
def broker_url(procs) -> str:
    """A broker process (kachery-tasks broker start: channel admission, the default)."""
    broker = procs([sys.executable, "-m", "kachery_tasks", "broker", "start", "--port", "0"],
                   env_for())
    line = broker.wait_for(lambda s: s.startswith("broker listening on "))
    return line.split()[3]


def lab_with_members(tmp_path: Path, bucket_url: str, pubsub_url: str, names: list[str]):
    """Channel 'lab' owned by node 'owner'; nodes ``names`` joined and added (every permission)."""
    owner = init_node_dir(tmp_path / "owner")
    lab = create_channel(owner, "lab", bucket_url, pubsub_url, "owner")
    nodes = {}
    for name in names:
        node = init_node_dir(tmp_path / name)
        config = change_members(lab, add_node(node_keypair(node).public_hex, name, ALL))
        ChannelStore(node).add(type(lab.invite).of(config), config)
        nodes[name] = node
    return lab, nodes


def start_node(procs, node) -> Proc:
    p = procs([sys.executable, "-m", "tests.integration.channel_node_proc", "lab"],
              env_for(node.path), stdin=True)
    p.wait_for(lambda s: s.startswith("ready "))
    return p


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "gs"])
def test_tampered_replayed_and_stale_envelopes_are_dropped_by_every_receiver(
        tmp_path, procs, broker_url, backend, request):
    bucket_url = (f"file://{tmp_path}/bucket" if backend == "file"
                  else request.getfixturevalue("gcs_bucket_url"))
    lab, nodes = lab_with_members(tmp_path, bucket_url, broker_url, ["a", "b", "c"])
    running = {name: start_node(procs, node) for name, node in nodes.items()}
    a_key = node_keypair(nodes["a"])
    channel = lab.pubsub_name

    valid = seal_message("request_file", channel, {"uri": "sha256://valid"}, a_key).to_dict()
    tampered = json.loads(json.dumps(valid))
    tampered["body"]["body"]["uri"] = "sha256://tampered"
    stale = seal_message("request_file", channel, {"uri": "sha256://stale"}, a_key,
                         now=time.time() - 600).to_dict()
    sender = running["a"]
    envelopes = (valid, tampered, valid, stale)  # the second valid one is a replay
    for count, envelope in enumerate(envelopes, 1):  # one at a time: their order is kept
        sender.send(f"raw request_file {json.dumps(envelope)}")
        sender.wait_for(lambda s: s == "done raw", count=count)
    sender.send('send request_file {"uri": "sha256://last"}')

    for name in ("b", "c"):
        receiver = running[name]
        receiver.wait_for(lambda s: "sha256://last" in s)
        lines = receiver.settle(0.5)
        delivered = [s for s in lines if s.startswith("delivered ")]
        assert delivered == [
            f'delivered request_file {a_key.public_hex[:8]} {{"uri": "sha256://valid"}}',
            f'delivered request_file {a_key.public_hex[:8]} {{"uri": "sha256://last"}}',
        ], lines
        drops = [s for s in lines if s.startswith("log: dropped")]
        assert [s.split("(")[1].split(")")[0] for s in drops] == [
            "bad-signature", "replay", "stale"], drops


@pytest.mark.slow
def test_a_running_node_adopts_a_membership_change_made_with_the_cli(tmp_path, procs,
                                                                      broker_url):
    _, nodes = lab_with_members(tmp_path, f"file://{tmp_path}/bucket", broker_url, ["b"])
    b = start_node(procs, nodes["b"])
    assert b.wait_for(lambda s: s.startswith("ready ")) == "ready 2"
    newcomer = node_keypair(init_node_dir(tmp_path / "d")).public_hex
    owner_env = env_for(tmp_path / "owner")
    cli = subprocess.run(
        [sys.executable, "-m", "kachery_tasks", "channel", "add-node", "lab", newcomer,
         "--label", "dora", "--allow", "download"],
        env=owner_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert f"members notified on {broker_url}" in cli.stdout
    assert b.wait_for(lambda s: s.startswith("config "), timeout=10) == "config 3"
    trusted = ChannelStore(nodes["b"]).find("lab").trusted_config()
    assert trusted.version == 3 and trusted.members[newcomer].label == "dora"
