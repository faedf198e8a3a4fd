"""Channels over HTTP: status with presence, the owner's changes, requests in flight."""

from __future__ import annotations

import pytest

from kachery_tasks.network.channels import ChannelStore, Invite
from kachery_tasks.network.channels.membership import create_channel
from tests.network.channels.conftest import make_node

X = "0a" * 32


@pytest.fixture(autouse=True)
def quick_notices(monkeypatch):
    """No broker listens at ws://127.0.0.1:9: give up on the notice quickly."""
    from kachery_tasks.daemon.routes import channels

    monkeypatch.setitem(channels.NOTICE_OPTIONS, "connect_timeout", 0.3)


@pytest.fixture
def lab(node, tmp_path):
    return create_channel(node.dir, "lab", f"file://{tmp_path}/bucket", "ws://127.0.0.1:9",
                          "owner-host")


def test_status_shows_members_permissions_and_who_is_online(client, lab, node, daemon):
    daemon.online = {node.id}
    square = {"name": "mylab.square", "kind": "pure", "version": None, "code_hash": "ab" * 32}
    daemon.provides = {node.id: [square]}
    r = client.get("/api/channels").json()
    assert r["permissions"] == ["download", "upload", "request_tasks", "process_tasks",
                                "read_feeds"]
    (c,) = r["channels"]
    assert (c["name"], c["version"], c["owner_node"], c["member"], c["connected"]) == (
        "lab", 1, True, True, True)
    assert c["members"] == [{"node": node.id, "label": "owner-host", "permissions":
                             r["permissions"], "online": True, "this_node": True,
                             "provides": [square]}]
    assert c["invite"] == str(lab.invite)
    assert client.get("/api/channels/lab").json() == c


def test_without_channel_services_nobody_is_known_to_be_online(node, lab):
    from fastapi.testclient import TestClient

    from kachery_tasks.daemon.api import create_app
    from tests.daemon.conftest import AUTH, TOKEN

    with TestClient(create_app(node, None, TOKEN), headers=AUTH) as c:
        (ch,) = c.get("/api/channels").json()["channels"]
        assert ch["connected"] is False and ch["members"][0]["online"] is None
        assert c.get("/api/requests").json() == {"requests": [], "channel_services": False}


def test_the_owner_adds_changes_and_removes_a_node(client, lab, daemon):
    r = client.post("/api/channels/lab/members",
                    json={"node": X, "label": "alice", "permissions": ["download"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2 and body["notified"] is False and body["note"]
    assert {m["label"]: m["permissions"] for m in body["channel"]["members"]}["alice"] \
        == ["download"]
    assert lab.trusted_config().members[X].permissions == frozenset({"download"})
    r = client.put(f"/api/channels/lab/members/{X}",
                   json={"permissions": ["download", "upload"], "label": "alicia"})
    assert r.json()["version"] == 3
    assert lab.trusted_config().members[X].label == "alicia"
    r = client.delete(f"/api/channels/lab/members/{X}")
    assert r.json()["version"] == 4 and X not in lab.trusted_config().members
    assert daemon.reloads == 3


@pytest.mark.parametrize(("method", "path", "payload", "status", "why"), [
    ("post", "/api/channels/lab/members", {"node": X, "permissions": ["fly"]}, 422,
     "permissions"),
    ("post", "/api/channels/nope/members", {"node": X, "permissions": []}, 404,
     "has not joined a channel"),
    ("delete", f"/api/channels/lab/members/{X}", None, 400, "is not a member"),
    ("post", "/api/channels/lab/members", {"node": "zz", "permissions": []}, 422, "node"),
])
def test_bad_changes_are_4xx_and_change_nothing(client, lab, method, path, payload, status,
                                                why):
    r = getattr(client, method)(path, **({"json": payload} if payload is not None else {}))
    assert r.status_code == status and why in r.json()["error"]
    assert lab.trusted_config().version == 1


def test_only_the_owners_node_may_change_members(client, lab, node, tmp_path):
    other, _ = make_node(tmp_path, "other")
    config = lab.trusted_config()
    from kachery_tasks.nodes import Node

    ChannelStore(other).add(Invite.of(config), config)
    from fastapi.testclient import TestClient

    from kachery_tasks.daemon.api import create_app
    from tests.daemon.conftest import AUTH, TOKEN

    with TestClient(create_app(Node(other.path), None, TOKEN), headers=AUTH) as c:
        r = c.post("/api/channels/lab/members", json={"node": X, "permissions": []})
    assert r.status_code == 403 and "only the owner's node" in r.json()["error"]


def test_create_a_channel(client, tmp_path, daemon, node):
    r = client.post("/api/channels", json={"name": "lab2", "bucket": f"file://{tmp_path}/b2",
                                           "pubsub": "ws://127.0.0.1:9", "label": "me"})
    assert r.status_code == 200, r.text
    assert r.json()["owner_node"] and r.json()["version"] == 1
    assert ChannelStore(node.dir).find("lab2").is_owner and daemon.reloads == 1
    again = client.post("/api/channels", json={"name": "lab2", "bucket": f"file://{tmp_path}/b2",
                                               "pubsub": "ws://127.0.0.1:9"})
    assert again.status_code == 400 and "already owns" in again.json()["error"]
    bad = client.post("/api/channels", json={"name": "x", "bucket": "s3://x", "pubsub": "?"})
    assert bad.status_code == 400 and "bucket" in bad.json()["error"]
    assert client.post("/api/channels", json={"name": "-x", "bucket": "s3://x",
                                              "pubsub": "?"}).status_code == 422


def test_requests_in_flight_come_from_the_channel_services(client, daemon):
    daemon.requests = [{"id": "r1", "type": "request_file", "channel": "lab", "from": "a" * 64,
                        "to": None, "status": "uploading", "started": 1.0,
                        "progress": {"bytes": 5, "total": 10}, "detail": ""}]
    assert client.get("/api/requests").json() == {"requests": daemon.requests,
                                                  "channel_services": True}
