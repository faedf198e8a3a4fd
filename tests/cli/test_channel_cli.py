"""kachery-tasks channel ...: create, invite, join, membership, ls, status (in-process)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from kachery_tasks.config import node_dir
from kachery_tasks.keys import node_keypair
from kachery_tasks.network.channels import ChannelSession, ChannelStore, parse_invite
from tests.cli.inprocess import assert_clean, run_main
from tests.network.channels.conftest import broker_with_admission
from tests.network.conftest import FAST

SUBCOMMANDS = ("create", "invite", "join", "leave", "add-node", "remove-node", "set-permissions",
               "ls", "status")


class Nodes:
    """Two node directories, 'owner' and 'member'; ``run(who, *argv)`` runs the CLI as one."""

    def __init__(self, root, monkeypatch) -> None:
        self.root, self.mp = root, monkeypatch

    def use(self, who: str):
        self.mp.setenv("KACHERY_TASKS_DIR", str(self.root / who))
        return node_dir()

    def run(self, who: str, *argv: str, ok: bool = True):
        self.use(who)
        r = run_main("channel", *argv)
        assert_clean(r)
        assert (r.status == 0) is ok, (r.status, r.stdout, r.stderr)
        return r

    def id(self, who: str) -> str:
        return node_keypair(self.use(who)).public_hex


@pytest.fixture
def nodes(tmp_path, monkeypatch):
    return Nodes(tmp_path, monkeypatch)


@pytest.fixture
def lab(nodes, tmp_path):
    """Channel lab, created on 'owner' (pub/sub: a port nobody listens on); its invite."""
    r = nodes.run("owner", "create", "lab", "--bucket", f"file://{tmp_path}/bucket",
                  "--pubsub", "ws://127.0.0.1:9", "--label", "boss")
    return r.stdout.decode().splitlines()[-1]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_command_has_help_with_an_example(sub):
    r = run_main("channel", sub, "--help")
    out = r.stdout.decode()
    assert r.status == 0 and "example:" in out and f"kachery-tasks channel {sub}" in out


def test_the_invite_help_says_it_holds_no_secret():
    assert "holds no secret" in run_main("channel", "invite", "--help").stdout.decode()


def test_create_prints_the_invite_and_keeps_the_owner_key_private(nodes, lab, tmp_path):
    invite = parse_invite(lab)
    assert invite.name == "lab" and invite.bucket == f"file://{tmp_path}/bucket"
    assert nodes.run("owner", "invite", "lab").stdout.decode().strip() == lab
    channel = ChannelStore(nodes.use("owner")).find("lab")
    assert stat.S_IMODE(os.stat(channel.path / "owner.key").st_mode) == 0o600
    out = nodes.run("owner", "ls").stdout.decode()
    assert out.startswith("lab  (") and "version 1, owner's node, member: download,upload," \
        "request_tasks,process_tasks,read_feeds" in out
    r = nodes.run("owner", "create", "lab", "--bucket", f"file://{tmp_path}/b2", "--pubsub",
                  "ably:", ok=False)
    assert "already owns a channel called lab" in r.stderr


def test_join_add_and_remove_a_member(nodes, lab):
    member = nodes.id("member")
    out = nodes.run("member", "join", lab).stdout.decode()
    assert "joined channel lab" in out and f"this node's id: {member}" in out
    assert f"kachery-tasks channel add-node lab {member} --label NAME" in out

    out = nodes.run("owner", "add-node", "lab", member, "--label", "alice", "--allow",
                    "download,upload", "--offline").stdout.decode()
    assert out.strip() == "channel lab: version 2 published to " + parse_invite(lab).bucket + \
        " (added alice, allowed: download,upload)"
    out = nodes.run("member", "join", lab).stdout.decode()
    assert "already joined channel lab" in out and "version 2" in out
    assert "this node is a member, allowed: download,upload" in out

    nodes.run("owner", "set-permissions", "lab", member, "--allow", "read_feeds", "--offline")
    status = json.loads(nodes.run("member", "status", "lab", "--json", "--offline").stdout)
    assert status["version"] == 2  # --offline: what the node trusts, the bucket not asked
    status = json.loads(nodes.run("member", "status", "lab", "--json").stdout)
    assert status["version"] == 3
    alice = next(m for m in status["members"] if m["node"] == member)
    assert alice == {"node": member, "label": "alice", "permissions": ["read_feeds"],
                     "online": None, "provides": []}
    assert "no broker answered at ws://127.0.0.1:9" in status["online_unknown_because"]

    nodes.run("owner", "remove-node", "lab", member, "--offline")
    out = nodes.run("member", "ls").stdout.decode()
    assert "version 3" in out and "member: read_feeds" in out  # not asked the bucket yet
    out = nodes.run("member", "status", "lab").stdout.decode()
    assert "version: 4" in out and "alice" not in out and "boss" in out


def test_membership_changes_are_for_the_owners_node_only(nodes, lab):
    nodes.run("member", "join", lab)
    r = nodes.run("member", "add-node", "lab", "ab" * 32, "--allow", "all", "--offline",
                  ok=False)
    assert "only the owner's node can change channel lab" in r.stderr


@pytest.mark.parametrize(("argv", "why"), [
    (("join", "kachery-channel:AAAA"), "the invite is damaged"),
    (("join", "lab"), "an invite starts with kachery-channel:"),
    (("invite", "nope"), "has not joined a channel called 'nope'"),
    (("status", "nope"), "has not joined a channel called 'nope'"),
    (("add-node", "lab", "xyz", "--allow", "download"), "64 lowercase hex digits"),
    (("add-node", "lab", "ab" * 32, "--allow", "root"), "unknown permission 'root'"),
    (("add-node", "lab", "ab" * 32), "the following arguments are required: --allow"),
    (("remove-node", "lab", "ab" * 32, "--offline"), "is not a member of lab"),
    (("create", "a b", "--bucket", "gs://b/p", "--pubsub", "ably:"), "a channel name is"),
    (("create", "x", "--bucket", "s3://b", "--pubsub", "ably:"), "a channel bucket is"),
    (("create", "x", "--bucket", "gs://b/p", "--pubsub", "http://h"), "a pub/sub URL is"),
])
def test_mistakes_are_one_line_errors(nodes, lab, argv, why):
    r = nodes.run("owner", *argv, ok=False)
    assert why in r.stderr and r.stderr.startswith("error: ")


def test_joining_a_channel_whose_bucket_has_no_config_records_nothing(nodes, lab, tmp_path):
    invite = parse_invite(lab)
    empty = str(type(invite)(invite.name, invite.owner, f"file://{tmp_path}/empty",
                             invite.pubsub))
    r = nodes.run("member", "join", empty, ok=False)
    assert "no config of channel lab signed by its owner" in r.stderr
    assert ChannelStore(nodes.use("member")).all() == []


@pytest.fixture
def broker():
    with broker_with_admission() as (running, _):
        yield running


def owner_and_alice(nodes, tmp_path, broker, allow: str) -> str:
    """Channel lab of node owner ("boss") on ``broker``, which member joined as alice,
    allowed ``allow``; the output of add-node."""
    r = nodes.run("owner", "create", "lab", "--bucket", f"file://{tmp_path}/bucket",
                  "--pubsub", broker.url, "--label", "boss")
    invite = r.stdout.decode().splitlines()[-1]
    nodes.run("member", "join", invite)
    return nodes.run("owner", "add-node", "lab", nodes.id("member"), "--label", "alice",
                     "--allow", allow).stdout.decode()


def test_status_shows_who_is_online(nodes, tmp_path, broker):
    out = owner_and_alice(nodes, tmp_path, broker, "download")
    assert f"members notified on {broker.url}" in out
    channel = ChannelStore(nodes.use("member")).find("lab")
    with ChannelSession(channel, node_keypair(nodes.use("member")), **FAST).start():
        status = json.loads(nodes.run("owner", "status", "lab", "--json").stdout)
        online = {m["label"]: m["online"] for m in status["members"]}
        assert online == {"alice": True, "boss": False}  # status itself does not enter
        text = nodes.run("owner", "status", "lab").stdout.decode()
        assert "online" in text and "offline" in text and "[this node owns it]" in text


def test_a_pubsub_that_cannot_be_reached_is_noted_in_one_line(nodes, lab, run_cli, tmp_path):
    """In a real process: the SDK's failed close task leaves no traceback on stderr."""
    r = run_cli("channel", "status", "lab", env={"KACHERY_TASKS_DIR": str(tmp_path / "owner")})
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert "online:  unknown (no broker answered at ws://127.0.0.1:9" in out
    assert err == ""


def test_joining_makes_the_channel_a_remote_and_leaving_undoes_it(nodes, lab):
    from kachery_tasks.nodes import Node

    owner_dir = nodes.use("owner")
    key = ChannelStore(owner_dir).find("lab").key
    assert Node(owner_dir.path).listed_remote_urls() == [f"channel:{key}"]  # create did it
    member = nodes.id("member")
    nodes.run("member", "join", lab)
    member_dir = nodes.use("member")
    assert Node(member_dir.path).listed_remote_urls() == [f"channel:{key}"]
    nodes.run("owner", "add-node", "lab", member, "--allow", "download", "--offline")
    out = nodes.run("member", "leave", "lab").stdout.decode()
    assert out.startswith("left channel lab (owner ")
    assert f"until the owner runs 'kachery-tasks channel remove-node lab {member}'" in out
    assert Node(member_dir.path).listed_remote_urls() == []
    assert ChannelStore(member_dir).all() == []
    r = nodes.run("member", "leave", "lab", ok=False)
    assert "has not joined a channel called 'lab'" in r.stderr


def test_the_owners_node_cannot_leave_and_destroy_the_owner_key(nodes, lab):
    r = nodes.run("owner", "leave", "lab", ok=False)
    assert "holds the owner key of channel lab" in r.stderr
    assert ChannelStore(nodes.use("owner")).find("lab").is_owner


def test_status_shows_what_each_online_member_provides(nodes, tmp_path, broker):
    from kachery_tasks.network.tasks import Provided
    from tests.network.tasks.remote_tasks import square

    owner_and_alice(nodes, tmp_path, broker, "process_tasks")
    provides = Provided.from_modules(["tests.network.tasks.remote_tasks"]).describe()
    channel = ChannelStore(nodes.use("member")).find("lab")
    session = ChannelSession(channel, node_keypair(nodes.use("member")), **FAST)
    session.present(daemon=True, provides=provides)  # as a providing daemon does
    with session.start():
        status = json.loads(nodes.run("owner", "status", "lab", "--json").stdout)
        by_label = {m["label"]: m["provides"] for m in status["members"]}
        assert by_label == {"alice": provides, "boss": []}
        text = nodes.run("owner", "status", "lab").stdout.decode()
        assert f"{square.name} ({square.code_hash[:8]})" in text
