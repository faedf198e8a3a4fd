"""The channel config: the owner-signed document that says who is in a channel.

A channel is named by its owner's public key and a name (``lab`` owned by key
O). Its config is a signed envelope (:mod:`kachery_tasks.envelopes`) of kind
``channel-config``, signed by the owner key, whose body is::

    {"name": "lab", "owner": "<O: 64 hex>", "version": 3,
     "bucket": "gs://lab/kt", "pubsub": "ws://labserver:7654",
     "time": 1767000000,
     "members": {"<node id>": {"label": "alice", "permissions": ["download", "upload"]}}}

Every field is checked when a config is read (:func:`open_config`); a node
trusts a config only when it verifies and its signer is the owner it expects
(from the invite). Who decides which version is current (never a lower one) is
:mod:`.store` (this node) and :mod:`.admission` (the broker).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from ...canonical import is_text
from ...envelopes import Envelope, open_envelope, seal
from ...errors import ChannelError, EnvelopeError, InvalidValueError
from ...keys import KeyPair

CONFIG_KIND = "channel-config"

PERMISSIONS = ("download", "upload", "request_tasks", "process_tasks", "read_feeds")
"""What a member may do; see docs/channels.md for the message types each one allows."""

MAX_CONFIG_BYTES = 48 * 1024
"""The largest config envelope (canonical JSON). It rides whole in a ``channel_config``
notice, which must fit in one pub/sub message (64 KiB on Ably and the embedded broker),
and in every admission token: 293 members with every permission and 5-character labels
fit (186 with 100-character labels)."""

MAX_VERSION = 2**53 - 1
MAX_LABEL = 100
MAX_URL = 1000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS = ("name", "owner", "version", "bucket", "pubsub", "time", "members")


@dataclass(frozen=True)
class MemberInfo:
    """One member of a channel: a label for people and what the node may do."""

    label: str
    permissions: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label,
                "permissions": ordered_permissions(self.permissions)}


@dataclass(frozen=True)
class ChannelConfig:
    """A channel's membership at one version (``envelope``: its signed form, once sealed)."""

    name: str
    owner: str
    version: int
    bucket: str
    pubsub: str
    time: int
    members: Mapping[str, MemberInfo]
    envelope: Envelope | None = field(default=None, compare=False, repr=False)

    @property
    def pubsub_name(self) -> str:
        """The pub/sub channel this channel's nodes talk on (see :func:`pubsub_channel_name`)."""
        return pubsub_channel_name(self.owner, self.name)

    def permissions_of(self, node: str) -> frozenset[str]:
        """What ``node`` may do (nothing when it is not a member)."""
        member = self.members.get(node)
        return member.permissions if member is not None else frozenset()

    def body(self) -> dict[str, Any]:
        """The JSON body that the owner signs."""
        return {
            "name": self.name, "owner": self.owner, "version": self.version,
            "bucket": self.bucket, "pubsub": self.pubsub, "time": self.time,
            "members": {node: m.to_json() for node, m in sorted(self.members.items())},
        }

    def to_bytes(self) -> bytes:
        """The signed envelope as stored in the bucket and the node directory."""
        if self.envelope is None:
            raise InvalidValueError(f"config version {self.version} of {self.name} is not signed")
        return self.envelope.to_bytes()


def pubsub_channel_name(owner: str, name: str) -> str:
    """``kt:<owner hex[:32]>:<name>``: two owners' channels named alike never share one."""
    return f"kt:{owner[:32]}:{name}"


def parse_pubsub_channel_name(text: str) -> tuple[str, str]:
    """The owner prefix (32 hex) and channel name of a pub/sub channel name; ChannelError else."""
    parts = text.split(":") if isinstance(text, str) else []
    if (len(parts) != 3 or parts[0] != "kt" or not re.fullmatch(r"[0-9a-f]{32}", parts[1])
            or not _NAME.match(parts[2])):
        raise ChannelError(f"{str(text)[:100]!r} is not a channel's pub/sub name "
                           "(kt:<owner hex[:32]>:<name>)")
    return parts[1], parts[2]


def ordered_permissions(permissions: Iterable[str]) -> list[str]:
    """``permissions`` in the order of :data:`PERMISSIONS` (how configs and listings show them)."""
    given = set(permissions)
    return [p for p in PERMISSIONS if p in given]


def grant_command(config: ChannelConfig, node: str, need: str) -> str:
    """The owner's command that gives ``node`` the ``need`` permission in ``config``'s
    channel and keeps the ones it has (``set-permissions`` replaces the whole list)."""
    allow = ordered_permissions(config.permissions_of(node) | {need})
    return (f"kachery-tasks channel set-permissions {config.name} {node} "
            f"--allow {','.join(allow)}")


# -- field checks -------------------------------------------------------------


def check_name(name: object) -> str:
    """A channel name: 1 to 64 letters, digits, ``.``, ``_`` or ``-``, not starting with a mark."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidValueError(
            f"a channel name is 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit), not {str(name)[:80]!r}")
    return name


def check_node_id(node: object, what: str = "node id") -> str:
    """A node id (or owner key): 64 lowercase hex digits."""
    if not isinstance(node, str) or not _HEX64.match(node):
        raise InvalidValueError(
            f"a {what} is 64 lowercase hex digits (see 'kachery-tasks node info'), "
            f"not {str(node)[:80]!r}")
    return node


def check_label(label: object) -> str:
    """A member label: 1 to 100 printable characters."""
    if (not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL or not is_text(label)
            or not label.isprintable()):
        raise InvalidValueError(
            f"a member label is 1 to {MAX_LABEL} printable characters, not {str(label)[:80]!r}")
    return label


def check_permissions(permissions: object) -> frozenset[str]:
    """A list of distinct permissions, each one of :data:`PERMISSIONS`."""
    if isinstance(permissions, str) or not isinstance(permissions, Iterable):
        raise InvalidValueError(f"permissions are a list of names from {', '.join(PERMISSIONS)}")
    items = list(permissions)
    unknown = [p for p in items if p not in PERMISSIONS]
    if unknown:
        raise InvalidValueError(
            f"unknown permission {str(unknown[0])[:40]!r}: use {', '.join(PERMISSIONS)}")
    if len(set(items)) != len(items):
        raise InvalidValueError("a permission is listed twice")
    return frozenset(items)


def parse_permissions(text: str) -> frozenset[str]:
    """``download,upload`` (or ``all``, or an empty string for none) as a permission set."""
    if text.strip() == "all":
        return frozenset(PERMISSIONS)
    return check_permissions([p.strip() for p in text.split(",") if p.strip()])


def check_bucket_url(url: object) -> str:
    """A channel bucket URL: ``file:///absolute/path`` or ``gs://bucket[/prefix]``."""
    ok = isinstance(url, str) and len(url) <= MAX_URL and is_text(url) and url.isprintable()
    if ok and url.startswith("file://"):
        ok = url[len("file://"):].startswith("/") and len(url) > len("file:///")
    elif ok and url.startswith("gs://"):
        ok = bool(url[len("gs://"):].split("/", 1)[0])
    else:
        ok = False
    if not ok:
        raise InvalidValueError(
            f"a channel bucket is file:///absolute/path or gs://bucket/prefix, not "
            f"{str(url)[:100]!r}")
    return url


def check_pubsub_url(url: object) -> str:
    """A pub/sub URL: ``ws://host:port`` (the embedded broker) or ``ably:[endpoint]``."""
    ok = isinstance(url, str) and len(url) <= MAX_URL and is_text(url) and url.isprintable()
    if ok and url.startswith("ws://"):
        try:
            parts = urlsplit(url)
            ok = bool(parts.hostname) and parts.port is not None
        except ValueError:  # a port that is not a number, or out of range
            ok = False
        ok = ok and parts.path in ("", "/") and not parts.query and not parts.fragment
    elif ok:
        ok = url.startswith("ably:") and " " not in url
    if not ok:
        raise InvalidValueError(
            f"a pub/sub URL is ws://HOST:PORT (the embedded broker) or ably: (the Ably "
            f"service), not {str(url)[:100]!r}")
    return url


def _check_int(value: object, what: str, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= MAX_VERSION:
        raise InvalidValueError(f"{what} must be a whole number from {minimum}, not "
                                f"{str(value)[:40]!r}")
    return value


def make_config(name: str, owner: str, version: int, bucket: str, pubsub: str, time: int,
                members: Mapping[str, MemberInfo]) -> ChannelConfig:
    """An unsigned config, every field checked (InvalidValueError naming the bad one)."""
    for node, member in members.items():
        check_node_id(node, "member node id")
        check_label(member.label)
        check_permissions(member.permissions)
    return ChannelConfig(
        name=check_name(name), owner=check_node_id(owner, "channel owner key"),
        version=_check_int(version, "the config version", 1), bucket=check_bucket_url(bucket),
        pubsub=check_pubsub_url(pubsub), time=_check_int(time, "the config time", 0),
        members=dict(members),
    )


def parse_config_body(body: object, source: str = "channel config") -> ChannelConfig:
    """The config a body describes; ChannelError naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise ChannelError(f"{source}: the body is not a JSON object")
    missing = [f for f in _FIELDS if f not in body]
    extra = sorted(set(body) - set(_FIELDS))
    if missing or extra:
        raise ChannelError(
            f"{source}: " + (f"missing field {missing[0]!r}" if missing else
                             f"unknown field {extra[0][:40]!r} (made by a newer kachery-tasks?)"))
    raw_members = body["members"]
    try:
        if not isinstance(raw_members, dict):
            raise InvalidValueError("members must be a JSON object of node id -> member")
        members = {}
        for node, entry in raw_members.items():
            if not isinstance(entry, dict) or set(entry) != {"label", "permissions"}:
                raise InvalidValueError(
                    f"member {str(node)[:16]}... must be {{label, permissions}}")
            if not isinstance(entry["permissions"], list):
                raise InvalidValueError(f"the permissions of member {str(node)[:16]}... must be "
                                        "a list")
            members[node] = MemberInfo(check_label(entry["label"]),
                                       check_permissions(entry["permissions"]))
        return make_config(body["name"], body["owner"], body["version"], body["bucket"],
                           body["pubsub"], body["time"], members)
    except InvalidValueError as e:
        raise ChannelError(f"{source}: {e}") from None


def seal_config(config: ChannelConfig, owner_key: KeyPair) -> ChannelConfig:
    """``config`` signed by ``owner_key`` (which must be its owner's, with the private half)."""
    if owner_key.public_hex != config.owner:
        raise ChannelError(f"the key {owner_key.public_hex[:16]}... is not the owner key of "
                           f"channel {config.name} ({config.owner[:16]}...)")
    envelope = seal(CONFIG_KIND, config.body(), owner_key)
    size = len(envelope.to_bytes())
    if size > MAX_CONFIG_BYTES:
        raise ChannelError(
            f"the config of {config.name} would be {size} bytes with {len(config.members)} "
            f"members, over the limit of {MAX_CONFIG_BYTES} bytes: shorten labels or remove "
            "members")
    return replace(config, envelope=envelope)


def open_config(data: bytes | str | Mapping[str, Any], owner: str, name: str | None = None,
                source: str = "channel config") -> ChannelConfig:
    """Check a signed config and return it; ChannelError saying why it is not trusted.

    Trusted means: a well-formed ``channel-config`` envelope, at most
    :data:`MAX_CONFIG_BYTES`, signed by ``owner``, describing a channel of
    that owner (and named ``name`` when given).
    """
    if isinstance(data, bytes | str) and len(data) > MAX_CONFIG_BYTES:
        raise ChannelError(f"{source} is {len(data)} bytes, over the limit of "
                           f"{MAX_CONFIG_BYTES}")
    try:
        envelope = open_envelope(data, CONFIG_KIND, source)
    except EnvelopeError as e:
        raise ChannelError(str(e)) from None
    if envelope.signer != owner:
        raise ChannelError(f"{source} is signed by {envelope.signer[:16]}..., not by the "
                           f"channel's owner {owner[:16]}...: refused")
    if not isinstance(data, bytes | str) and len(envelope.to_bytes()) > MAX_CONFIG_BYTES:
        raise ChannelError(f"{source} is over the limit of {MAX_CONFIG_BYTES} bytes")
    config = parse_config_body(envelope.body, source)
    if config.owner != owner:
        raise ChannelError(f"{source} names owner {config.owner[:16]}... but is signed by "
                           f"{owner[:16]}...: refused")
    if name is not None and config.name != name:
        raise ChannelError(f"{source} is the config of channel {config.name!r}, not {name!r}")
    return replace(config, envelope=envelope)
