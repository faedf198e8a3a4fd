"""Channels served by node daemons, across processes, with real parts only.

The embedded broker (``kachery-tasks broker start``, channel admission) in a
process, a file:// or gs:// (fake-gcs-server) bucket, three member nodes A,
B and C each running ``kachery-tasks node start``, the real ably SDK, and
the public ``kachery_tasks`` functions in further processes of the nodes:

* a file that only A holds is loaded by C, in a third process of C (a file://
  bucket);
* the broker is killed (SIGKILL) and restarted on the same port while A
  uploads a large file C asked for, and C's load still completes (a gs://
  bucket);
* a member without ``download`` that asks gets a clear error at once;
* a result record planted in the channel's bucket by a non-member is
  ignored (the task is computed), a member's is used;
* a feed message appended on A reaches a watcher on B.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kachery_tasks.config import init_node_dir
from kachery_tasks.keys import node_keypair
from kachery_tasks.network.channels import ChannelStore, Invite, parse_invite
from kachery_tasks.network.channels.config import PERMISSIONS
from kachery_tasks.network.channels.membership import add_node, change_members, create_channel
from kachery_tasks.network.channels.remote import channel_url
from kachery_tasks.nodes import Node
from tests.integration.test_channels_processes import Proc, env_for, procs  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ALL = frozenset(PERMISSIONS)
RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(procs, port: int, *options: str) -> Proc:  # noqa: F811
    broker = procs([sys.executable, "-m", "kachery_tasks", "broker", "start", "--port",
                    str(port), *options], env_for())
    broker.wait_for(lambda s: s.startswith("broker listening on "))
    return broker


def start_daemon(procs, path: Path) -> Proc:  # noqa: F811
    daemon = procs([sys.executable, "-m", "kachery_tasks", "node", "start"], env_for(path))
    daemon.wait_for(lambda s: s.startswith("node daemon of "))
    return daemon


def member_nodes(tmp_path: Path, bucket_url: str, pubsub_url: str,
                 permissions: dict[str, frozenset[str]]) -> dict[str, Path]:
    """Channel lab owned by the first node named; the others added with ``permissions``.
    Each node stores content in 1 MiB chunks and lists the channel among its remotes."""
    paths: dict[str, Path] = {}
    owner = None
    for name, perms in permissions.items():
        path = paths[name] = tmp_path / name
        path.mkdir()
        (path / "config.toml").write_text('[store]\nchunk_size = "1MiB"\n')
        node = init_node_dir(path)
        if owner is None:
            owner = joined = create_channel(node, "lab", bucket_url, pubsub_url, name)
        else:
            config = change_members(owner, add_node(node_keypair(node).public_hex, name, perms))
            joined = ChannelStore(node).add(Invite.of(config), config)
        Node(path).add_remote_url(channel_url(joined))
    return paths


def python_in(procs, path: Path, code: str, stdin: bool = False,  # noqa: F811
              **env: str) -> Proc:
    """A process of the node at ``path`` running ``code``."""
    return procs([sys.executable, "-c", code], {**env_for(path), **env}, stdin)


def load_in(procs, path: Path, uri: str) -> Proc:  # noqa: F811
    return procs([sys.executable, "-m", "tests.integration.channel_load_proc", uri],
                 env_for(path))


def store_in(path: Path, data: bytes) -> str:
    return Node(path).store_bytes(data)


def wait_online(path: Path, label: str, timeout: float = 60.0) -> None:
    """Until the node at ``path`` sees member ``label`` of channel lab online."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run([sys.executable, "-m", "kachery_tasks", "channel", "status", "lab",
                            "--json"], env=env_for(path), capture_output=True, text=True,
                           timeout=60)
        if r.returncode == 0 and any(m["label"] == label and m["online"]
                                     for m in json.loads(r.stdout)["members"]):
            return
        assert time.monotonic() < deadline, f"{label} did not come online: {r.stderr}"
        time.sleep(0.5)


def test_a_file_only_one_member_holds_is_loaded_by_another_in_its_own_process(
        tmp_path, procs):  # noqa: F811
    """The issue's flow, with the CLI: create, join, add-node, node start, load_file.
    On a bucket directory: the next test runs the same transfer through the GCS emulator."""
    bucket_url = f"file://{tmp_path}/bucket"
    port = free_port()
    start_broker(procs, port)
    paths = {name: tmp_path / name for name in "abc"}

    def cli(name: str, *argv: str) -> str:
        r = subprocess.run([sys.executable, "-m", "kachery_tasks", *argv],
                           env=env_for(paths[name]), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    invite = cli("a", "channel", "create", "lab", "--bucket", bucket_url, "--pubsub",
                 f"ws://127.0.0.1:{port}", "--label", "alice").splitlines()[-1]
    assert parse_invite(invite).name == "lab"
    for name, label in (("b", "bob"), ("c", "carol")):
        node_id = cli(name, "channel", "join", invite).split("this node's id: ")[1].split()[0]
        cli("a", "channel", "add-node", "lab", node_id, "--label", label, "--allow",
            "download,upload,read_feeds")
    for name in "abc":
        start_daemon(procs, paths[name])
    data = os.urandom(3 * 2**20 + 11)
    uri = store_in(paths["a"], data)
    code = f"import kachery_tasks as k; print(k.load_file({uri!r}))"
    loader = python_in(procs, paths["c"], code)
    assert loader.proc.wait(60) == 0, loader.settle(0.1)
    path = loader.wait_for(lambda s: s.startswith("/"))
    assert Path(path).read_bytes() == data
    assert str(paths["c"]) in path  # in C's store now
    status = json.loads(cli("b", "channel", "status", "lab", "--json"))
    assert sorted(m["label"] for m in status["members"] if m["online"]) == [
        "alice", "bob", "carol"]


def test_requests_survive_a_broker_killed_and_restarted_during_the_upload(
        tmp_path, procs, gcs_bucket_url):  # noqa: F811
    port = free_port()
    broker = start_broker(procs, port)
    paths = member_nodes(tmp_path, gcs_bucket_url, f"ws://127.0.0.1:{port}",
                         {"a": ALL, "c": ALL})
    start_daemon(procs, paths["a"])

    def kill_while_uploading(data: bytes) -> Proc:
        uri = store_in(paths["a"], data)
        loader = load_in(procs, paths["c"], uri)
        loader.wait_for(lambda s: "uploaded by" in s, timeout=60)  # A is uploading
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        assert not any(s.startswith("loaded ") for s in loader.lines)  # in the middle
        return loader

    def loaded(loader: Proc, data: bytes) -> None:
        done = loader.wait_for(lambda s: s.startswith(("loaded ", "error ")), timeout=120)
        assert done.startswith("loaded "), loader.lines
        assert Path(done.split(" ", 1)[1]).read_bytes() == data

    # 1. the broker is back at once (a new one on the same port, knowing nobody): the
    # upload goes on, and the answer reaches C
    first = os.urandom(64 * 2**20)  # 64 chunks: a second or more into the emulator
    loader = kill_while_uploading(first)
    broker = start_broker(procs, port)
    loaded(loader, first)
    # 2. the broker stays down until A has uploaded everything, so A's answer cannot be
    # delivered: C finds the content in the bucket anyway
    second = os.urandom(64 * 2**20)
    loader = kill_while_uploading(second)
    loaded(loader, second)
    broker = start_broker(procs, port)
    wait_online(paths["c"], "a")  # A's daemon reconnects in its own time
    # 3. after the restart, members answer again (small content: only through pub/sub)
    small = b"asked after the restart"
    loaded(load_in(procs, paths["c"], store_in(paths["a"], small)), small)


def test_a_member_without_download_gets_a_clear_error_not_a_hang(tmp_path, procs):  # noqa: F811
    port = free_port()
    start_broker(procs, port)
    paths = member_nodes(tmp_path, f"file://{tmp_path}/bucket", f"ws://127.0.0.1:{port}",
                         {"a": ALL, "c": ALL - {"download"}})
    start_daemon(procs, paths["a"])
    start_daemon(procs, paths["c"])
    uri = store_in(paths["a"], b"for members who may download")
    loader = load_in(procs, paths["c"], uri)
    assert loader.proc.wait(30) == 1
    line = loader.wait_for(lambda s: s.startswith("error "))
    assert line.startswith(f"error ContentNotFoundError: {uri} is not in the bucket of "
                           "channel lab, and this node may not ask its members: this node may "
                           "not ask channel lab for files (it lacks the download permission")


def test_a_record_planted_by_a_non_member_is_ignored_and_a_members_is_used(
        tmp_path, procs):  # noqa: F811
    bucket_url = f"file://{tmp_path}/bucket"
    paths = member_nodes(tmp_path, bucket_url, "ws://127.0.0.1:9", {"a": ALL, "c": ALL})
    (tmp_path / "eve").mkdir()

    def run_task(path: Path, call: str, **env: str) -> str:
        code = (f"import sys; sys.path.insert(0, {str(RUNTIME_TESTS)!r}); import task_defs; "
                f"r = task_defs.{call}; print(r, task_defs.calls['add'])")
        p = python_in(procs, path, code, **env)
        assert p.proc.wait(60) == 0, p.settle(0.1)
        return p.wait_for(lambda s: s and s[0].isdigit())

    # eve is no member but can write to the bucket: its signed record lands there
    assert run_task(tmp_path / "eve", "add(2, 3)", KACHERY_TASKS_BUCKET=bucket_url) == "5 1"
    assert list((tmp_path / "bucket" / "results").iterdir())
    assert run_task(paths["c"], "add(2, 3)") == "5 1"  # computed: eve's record was ignored
    signer = json.loads(next((tmp_path / "bucket" / "results").iterdir()).read_text())["signer"]
    assert signer == Node(paths["c"]).id  # c's record replaced eve's
    assert run_task(paths["a"], "add(4, 5)") == "9 1"  # a member allowed to process tasks
    assert run_task(paths["c"], "add(4, 5)") == "9 0"  # served from a's record


def test_a_feed_message_appended_on_a_reaches_a_watcher_on_b(tmp_path, procs):  # noqa: F811
    port = free_port()
    start_broker(procs, port)
    paths = member_nodes(tmp_path, f"file://{tmp_path}/bucket", f"ws://127.0.0.1:{port}",
                         {"a": ALL, "b": frozenset({"read_feeds"})})
    start_daemon(procs, paths["a"])
    start_daemon(procs, paths["b"])
    writer = python_in(procs, paths["a"], (
        "import sys, kachery_tasks as k\n"
        "f = k.create_feed('news'); f.subfeed('s').append({'n': 0}); print(f.uri, flush=True)\n"
        "for line in sys.stdin:\n"
        "    f.subfeed('s').append({'n': int(line)}); print('appended', line.strip(), "
        "flush=True)\n"), stdin=True)
    uri = writer.wait_for(lambda s: s.startswith("feed://"))
    watcher = python_in(procs, paths["b"], (
        "import kachery_tasks as k\n"
        f"s = k.load_feed({uri!r}).subfeed('s')\n"
        "print('have', s.count(), flush=True)\n"
        "n = s.count()\n"
        "while n < 4:\n"
        "    for m in s.watch(n, timeout=30):\n"
        "        print('got', m.body['n'], flush=True); n = m.seq + 1\n"))
    assert watcher.wait_for(lambda s: s.startswith("have ")) == "have 1"
    for n in (1, 2, 3):
        writer.send(str(n))
        assert watcher.wait_for(lambda s, n=n: s == f"got {n}", timeout=30)
    assert watcher.proc.wait(30) == 0
