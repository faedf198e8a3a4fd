"""Channels: status, members and permissions; the owner's changes; requests in flight.

The owner's changes go through :mod:`kachery_tasks.network.channels.membership`:
each publishes the next signed config version to the channel's bucket, then
sends the ``channel_config`` notice on its pub/sub so running members (and
the broker's admission) use it at once, and the channel services reload.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from ...network.channels import ChannelStore, JoinedChannel
from ...network.channels.config import PERMISSIONS, check_permissions, ordered_permissions
from . import daemon_of, node_of

router = APIRouter(tags=["channels"])

NAME = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,81}$", description=(
    "the channel's name, or <owner hex[:16]>-<name> when two joined channels share it"))]
NODE = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="a node id (64 hex digits)")]
CHANNEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Permission = Literal[PERMISSIONS]  # type: ignore[valid-type]


def _permission_list() -> Any:
    return Field(max_length=len(PERMISSIONS), json_schema_extra={"uniqueItems": True})


NOTICE_OPTIONS = {"connect_timeout": 5.0, "request_timeout": 5.0, "retry_interval": 0.5}


class NewChannel(BaseModel):
    name: str = Field(pattern=CHANNEL_NAME)
    bucket: str = Field(max_length=2000, description="gs://bucket/prefix or file:///path")
    pubsub: str = Field(max_length=2000, description="ws://HOST:PORT or ably:")
    label: str | None = Field(None, max_length=200, description="this node's label in it")


class NewMember(BaseModel):
    node: str = Field(pattern="^[0-9a-f]{64}$")
    label: str | None = Field(None, max_length=200)
    permissions: list[Permission] = _permission_list()


class Permissions(BaseModel):
    permissions: list[Permission] = _permission_list()
    label: str | None = Field(None, max_length=200)


def _live(request: Request) -> list[dict[str, Any]]:
    daemon = daemon_of(request)
    return daemon.status().get("channels", []) if daemon is not None else []


def _view(channel: JoinedChannel, me: str, live: list[dict[str, Any]]) -> dict[str, Any]:
    """What the hub shows of a channel: the trusted config, who is online if known, and
    what each online member provides (``node start --provide``)."""
    config = channel.trusted_config()
    now = next((c for c in live if c.get("name") == channel.name
                and c.get("owner") == channel.owner), None)
    online = {m.get("node"): m.get("online") for m in (now or {}).get("members", [])}
    provides = {m.get("node"): m.get("provides") or [] for m in (now or {}).get("members", [])}
    members = []
    if config is not None:
        for node, m in sorted(config.members.items(), key=lambda kv: kv[1].label):
            members.append({"node": node, "label": m.label,
                            "permissions": ordered_permissions(m.permissions),
                            "online": online.get(node) if now is not None else None,
                            "this_node": node == me,
                            "provides": provides.get(node, [])})
    return {
        "name": channel.name, "key": channel.key, "owner": channel.owner,
        "owner_node": channel.is_owner,
        "version": config.version if config else None,
        "bucket": config.bucket if config else channel.invite.bucket,
        "pubsub": config.pubsub if config else channel.invite.pubsub,
        "member": bool(config and me in config.members),
        "connected": bool(now and now.get("connected")),
        "members": members,
        "invite": str(channel.invite),
    }


def _store(request: Request) -> ChannelStore:
    return ChannelStore(node_of(request).dir)


@router.get("/channels", summary="The channels this node joined: members, permissions, "
            "who is online")
def list_channels(request: Request) -> dict:
    me, live = node_of(request).id, _live(request)
    return {"channels": [_view(c, me, live) for c in _store(request).all()],
            "permissions": list(PERMISSIONS)}


@router.get("/channels/{name}", summary="One joined channel")
def channel(request: Request, name: NAME) -> dict:
    return _view(_store(request).find(name), node_of(request).id, _live(request))


@router.post("/channels", summary="Create a channel owned by a new key kept on this node")
def create(request: Request, body: NewChannel) -> dict:
    import socket

    from ...network.channels.membership import create_channel

    node = node_of(request)
    joined = create_channel(node.dir, body.name, body.bucket, body.pubsub,
                            body.label or socket.gethostname())
    _reload(request, joined)
    return _view(joined, node.id, _live(request))


@router.post("/channels/{name}/members", summary="Owner: add a node to the channel")
def add_member(request: Request, name: NAME, body: NewMember) -> dict:
    from ...network.channels.membership import add_node

    label = body.label or f"node-{body.node[:8]}"
    return _change(request, name, add_node(body.node, label, check_permissions(body.permissions)))


@router.put("/channels/{name}/members/{node}",
            summary="Owner: give a member exactly these permissions (and maybe a new label)")
def set_member(request: Request, name: NAME, node: NODE, body: Permissions) -> dict:
    from ...network.channels.membership import set_permissions

    return _change(request, name, set_permissions(node, check_permissions(body.permissions),
                                                  body.label or None))


@router.delete("/channels/{name}/members/{node}", summary="Owner: remove a node")
def remove_member(request: Request, name: NAME, node: NODE) -> dict:
    from ...network.channels.membership import remove_node

    return _change(request, name, remove_node(node))


@router.get("/requests", summary="Requests in flight through the channels and the tasks "
            "requested through this API, with their status")
def requests(request: Request) -> dict:
    daemon = daemon_of(request)
    rows = daemon.status().get("requests", []) if daemon is not None else []
    return {"requests": [*rows, *request.app.state.task_requests.status()],
            "channel_services": daemon is not None}


def _change(request: Request, name: str, change: Any) -> dict:
    """Publish the change as the next version, tell the members, reload the services."""
    from ...network.channels.membership import announce, change_members

    node = node_of(request)
    joined = _store(request).find(name)
    config = change_members(joined, change)
    problem = announce(config, node.key, **NOTICE_OPTIONS)
    _reload(request, joined)
    return {"version": config.version, "notified": problem is None, "note": problem,
            "channel": _view(joined, node.id, _live(request))}


def _reload(request: Request, joined: JoinedChannel) -> None:
    daemon = daemon_of(request)
    if daemon is not None:
        daemon.reload_channels()
    config = joined.trusted_config()
    request.app.state.events.publish({"type": "config", "channel": joined.name,
                                      "version": config.version if config else None})
