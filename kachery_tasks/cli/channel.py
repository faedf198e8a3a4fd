"""Commands for channels: channel create, invite, join, leave, add-node, remove-node,
set-permissions, ls, status."""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from ..errors import ChannelError, KacheryError, PubSubError
from ..nodes import current_node
from .args import arg, json_flag
from .table import command

_PUBSUB_OPTIONS = {"connect_timeout": 5.0, "request_timeout": 5.0, "retry_interval": 0.5}

_CHANNEL_DETAILS = """\
A channel is a community of nodes: an owner key, a bucket where its signed
config lives, a pub/sub (ws://HOST:PORT for 'kachery-tasks broker start', or
ably: for the Ably service) and members with permissions: download, upload,
request_tasks, process_tasks, read_feeds. See docs/channels.md."""

_MEMBERSHIP_DETAILS = """\
Only on the owner's node (it holds the owner key). Publishes the next config
version to the channel's bucket, then sends a channel_config notice on its
pub/sub so running members adopt it within seconds (members not running read
it from the bucket when they start; a pub/sub that cannot be reached is only
noted). --offline skips the notice."""


def _permissions(text: str) -> frozenset[str]:
    from ..network.channels.config import parse_permissions

    try:
        return parse_permissions(text)
    except KacheryError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _find(name: str) -> Any:
    from ..network.channels import ChannelStore

    return ChannelStore(current_node().dir).find(name)


def _create(args: argparse.Namespace) -> int:
    from ..network.channels.membership import create_channel

    channel = create_channel(current_node().dir, args.name, args.bucket, args.pubsub,
                             args.label or socket.gethostname())
    config = channel.trusted_config()
    _use_as_remote(channel)
    print(f"created channel {channel.name} (owner key {channel.owner[:16]}..., kept in "
          f"{channel.path}), config version {config.version} in {config.bucket}")
    print("invite (give it to the nodes that should join; it holds no secret):")
    print(channel.invite)
    return 0


def _invite(args: argparse.Namespace) -> int:
    from ..network.channels import Invite

    channel = _find(args.name)
    config = channel.trusted_config()
    print(Invite.of(config) if config is not None else channel.invite)
    return 0


def _join(args: argparse.Namespace) -> int:
    from ..network.channels import ChannelStore, parse_invite
    from ..network.channels.bucket import latest_config
    from ..storage.buckets import open_bucket

    invite = parse_invite(args.invite)
    node = current_node().dir
    me = current_node().id
    config = latest_config(open_bucket(invite.bucket), invite.owner, invite.name)
    if config is None:
        raise ChannelError(f"no config of channel {invite.name} signed by its owner in "
                           f"{invite.bucket}: check the invite with the channel's owner")
    store = ChannelStore(node)
    joined_before = store.get(invite) is not None
    channel = store.add(invite, config)
    config = channel.trusted_config()
    _use_as_remote(channel)
    print(f"{'already joined' if joined_before else 'joined'} channel {channel.name} (owner "
          f"{channel.owner[:16]}...), config version {config.version}")
    print(f"this node's id: {me}")
    if me in config.members:
        print(f"this node is a member, allowed: {_perms(config.permissions_of(me))}")
    else:
        print("this node is not a member yet: ask the owner to run")
        print(f"  kachery-tasks channel add-node {channel.name} {me} --label NAME "
              "--allow download")
    return 0


def _use_as_remote(channel: Any) -> None:
    """Make the channel one of this node's remotes (``remotes.txt``)."""
    from ..network.channels.remote import channel_url

    current_node().add_remote_url(channel_url(channel))


def _leave(args: argparse.Namespace) -> int:
    from ..network.channels import ChannelStore
    from ..network.channels.remote import channel_url
    from ..network.channels.session import refresh_config

    channel = _find(args.name)
    try:
        config = refresh_config(channel)  # does the newest version list this node?
    except KacheryError:
        config = channel.trusted_config()
    ChannelStore(current_node().dir).remove(channel)
    current_node().remove_remote_url(channel_url(channel))
    me = current_node().id
    print(f"left channel {channel.name} (owner {channel.owner[:16]}...): this node no longer "
          "asks it for files, feeds or results, and its daemon stops serving it")
    if config is not None and me in config.members:
        print(f"this node is still listed as a member until the owner runs "
              f"'kachery-tasks channel remove-node {channel.name} {me}'")
    return 0


def _change(args: argparse.Namespace, change: Any, what: str) -> int:
    from ..network.channels.membership import announce, change_members

    channel = _find(args.name)
    config = change_members(channel, change)
    print(f"channel {channel.name}: version {config.version} published to {config.bucket} "
          f"({what})")
    if args.offline:
        return 0
    problem = announce(config, current_node().key, **_PUBSUB_OPTIONS)
    if problem is None:
        print(f"members notified on {config.pubsub}")
    else:
        print(f"note: members were not notified on {config.pubsub} ({problem}); they read "
              f"version {config.version} from the bucket when they start")
    return 0


def _add_node(args: argparse.Namespace) -> int:
    from ..network.channels.membership import add_node

    label = args.label or f"node-{args.node_id[:8]}"
    return _change(args, add_node(args.node_id, label, args.allow),
                   f"added {label}, allowed: {_perms(args.allow)}")


def _remove_node(args: argparse.Namespace) -> int:
    from ..network.channels.membership import remove_node

    return _change(args, remove_node(args.node_id), f"removed {args.node_id[:16]}...")


def _set_permissions(args: argparse.Namespace) -> int:
    from ..network.channels.membership import set_permissions

    return _change(args, set_permissions(args.node_id, args.allow, args.label),
                   f"{args.node_id[:16]}... allowed: {_perms(args.allow)}")


def _perm_list(permissions: frozenset[str]) -> list[str]:
    from ..network.channels.config import ordered_permissions

    return ordered_permissions(permissions)


def _perms(permissions: frozenset[str]) -> str:
    return ",".join(_perm_list(permissions)) or "(nothing)"


def _ls(args: argparse.Namespace) -> int:
    from ..network.channels import ChannelStore

    node = current_node().dir
    me = current_node().id
    rows = []
    for channel in ChannelStore(node).all():
        config = channel.trusted_config()
        rows.append({
            "name": channel.name, "key": channel.key, "owner": channel.owner,
            "version": config.version if config else None, "owner_node": channel.is_owner,
            "member": bool(config and me in config.members),
            "permissions": _perm_list(config.permissions_of(me)) if config else [],
            "pubsub": config.pubsub if config else channel.invite.pubsub,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no channels: create one with 'kachery-tasks channel create' or join one "
              "with 'kachery-tasks channel join INVITE'")
    for r in rows:
        role = "owner's node, " if r["owner_node"] else ""
        member = ("member: " + ",".join(r["permissions"])) if r["member"] else "not a member"
        print(f"{r['name']}  ({r['key']}, version {r['version']}, {role}{member})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..network.channels.session import connect_channel_pubsub, refresh_config

    channel = _find(args.name)
    key = current_node().key
    config = channel.trusted_config() if args.offline else refresh_config(channel)
    if config is None:
        raise ChannelError(f"this node trusts no config of {channel.name} yet: run without "
                           "--offline to read it from the bucket")
    from ..network.tasks.presence import provides_of, short

    online: dict[str, list[dict]] | None = None  # node -> what it provides
    why = "--offline"
    if not args.offline:
        try:
            with connect_channel_pubsub(key, lambda: config, **_PUBSUB_OPTIONS) as pubsub:
                online = {m.client_id: provides_of(m.data)
                          for m in pubsub.members(config.pubsub_name)}
        except PubSubError as e:
            why = str(e)
    info = {
        "name": config.name, "key": channel.key, "owner": config.owner,
        "owner_node": channel.is_owner, "version": config.version, "time": config.time,
        "bucket": config.bucket, "pubsub": config.pubsub, "this_node": key.public_hex,
        "online_unknown_because": None if online is not None else why,
        "members": [
            {"node": node, "label": m.label, "permissions": _perm_list(m.permissions),
             "online": None if online is None else node in online,
             "provides": (online or {}).get(node, [])}
            for node, m in sorted(config.members.items(), key=lambda kv: kv[1].label)
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(config.time))
    owned = "  [this node owns it]" if info["owner_node"] else ""
    print(f"channel: {config.name} ({channel.key}){owned}")
    print(f"owner:   {config.owner}")
    print(f"version: {config.version} (signed {stamp})")
    print(f"bucket:  {config.bucket}")
    print(f"pubsub:  {config.pubsub}")
    if online is None:
        print(f"online:  unknown ({why})")
    print(f"members: {len(config.members)}")
    for m in info["members"]:
        state = "" if m["online"] is None else ("  online" if m["online"] else "  offline")
        mine = "  (this node)" if m["node"] == key.public_hex else ""
        print(f"  {m['label']:<20} {m['node']}  {_perms(frozenset(m['permissions']))}"
              f"{state}{mine}")
        if m["provides"]:
            print(f"  {'':<20} provides: {', '.join(short(p) for p in m['provides'])}")
    return 0


_NAME_HELP = "the channel (NAME, or OWNER16-NAME when two share a name)"


def _node_args() -> list:
    return [
        arg("name", help=_NAME_HELP),
        arg("node_id", help="the node's id (64 hex; 'kachery-tasks node info' shows it)"),
        arg("--offline", action="store_true",
            help="do not send the channel_config notice on pub/sub"),
    ]


_ALLOW = arg("--allow", type=_permissions, required=True, metavar="PERMISSIONS",
             help="comma-separated: download, upload, request_tasks, process_tasks, "
                  "read_feeds; 'all'; or '' for none")


COMMANDS = (
    command(
        "channel", "Create, join and manage channels of nodes.", "kachery-tasks channel ls",
        _CHANNEL_DETAILS,
        actions=[
            command(
                "create", "Create a channel owned by a new key kept on this node.",
                "kachery-tasks channel create lab --bucket gs://lab-share/kt "
                "--pubsub ws://labserver:7654",
                "Makes an owner key (mode 0600, in <node>/channels/), writes config version 1\n"
                "(this node the one member, with every permission) to the bucket, and prints\n"
                "the invite to give to the nodes that should join.",
                args=[
                    arg("name", help="the channel's name (letters, digits, '.', '_', '-')"),
                    arg("--bucket", required=True,
                        help="where the config lives: gs://bucket/prefix or file:///shared/dir"),
                    arg("--pubsub", required=True,
                        help="ws://HOST:PORT (embedded broker) or ably:"),
                    arg("--label", help="this node's label (default: the host name)"),
                ],
                run=_create,
            ),
            command(
                "invite", "Print the invite string of a channel.",
                "kachery-tasks channel invite lab",
                "The invite says where the channel is (bucket, pub/sub) and whose it is\n"
                "(the owner's public key). It holds no secret: joining with it does not\n"
                "make a node a member; the owner adds the node with add-node.",
                args=[arg("name", help=_NAME_HELP)],
                run=_invite,
            ),
            command(
                "join", "Join a channel with its invite; says whether this node is a member yet.",
                "kachery-tasks channel join 'kachery-channel:eyJi...'",
                "Reads the channel's config from its bucket, checks the owner's signature\n"
                "and records the channel in this node's directory. Prints this node's id,\n"
                "for the owner to add it with 'kachery-tasks channel add-node'.",
                args=[arg("invite", help="the invite (kachery-channel:...)")],
                run=_join,
            ),
            command(
                "leave", "Stop using a channel on this node (its files are kept).",
                "kachery-tasks channel leave lab",
                "Forgets the channel on this node: it is no longer one of the node's remotes,\n"
                "and a running daemon stops serving it. The node stays in the channel's\n"
                "config until the owner removes it. Refused on the owner's node, which holds\n"
                "the owner key: leaving would destroy it.",
                args=[arg("name", help=_NAME_HELP)],
                run=_leave,
            ),
            command(
                "add-node", "Add a node to a channel (owner only).",
                "kachery-tasks channel add-node lab <node-id> --label alice "
                "--allow download,upload,request_tasks", _MEMBERSHIP_DETAILS,
                args=[*_node_args(),
                      arg("--label", help="a name for people (default: node-<first 8 digits>)"),
                      _ALLOW],
                run=_add_node,
            ),
            command(
                "remove-node", "Remove a node from a channel (owner only).",
                "kachery-tasks channel remove-node lab <node-id>",
                _MEMBERSHIP_DETAILS + "\nThe embedded broker closes the removed node's "
                "connections.",
                args=_node_args(),
                run=_remove_node,
            ),
            command(
                "set-permissions", "Set what a member may do (owner only).",
                "kachery-tasks channel set-permissions lab <node-id> --allow download,read_feeds",
                _MEMBERSHIP_DETAILS,
                args=[*_node_args(), _ALLOW,
                      arg("--label", help="also change the member's label")],
                run=_set_permissions,
            ),
            command(
                "ls", "List the channels this node has joined.", "kachery-tasks channel ls --json",
                args=[json_flag()],
                run=_ls,
            ),
            command(
                "status", "Show a channel's members, permissions, version and who is online.",
                "kachery-tasks channel status lab",
                "Adopts a newer config from the bucket first, then asks the pub/sub who is\n"
                "present (this node must be a member). --offline shows what this node\n"
                "trusts without asking the bucket or the pub/sub.",
                args=[arg("name", help=_NAME_HELP),
                      arg("--offline", action="store_true",
                          help="skip the bucket and the pub/sub"),
                      json_flag()],
                run=_status,
            ),
        ],
    ),
)
