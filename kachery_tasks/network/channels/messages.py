"""Channel messages: signed envelopes that nodes send each other over pub/sub.

A message is an envelope of kind ``channel-message`` signed by the sender's
node key, whose body is::

    {"type": "request_file", "channel": "kt:<owner[:32]>:lab", "time": 1767000000,
     "nonce": "<32 hex>", "body": {"uri": "sha256://..."}}

The pub/sub service is only a transport: anyone who can publish on it (a
holder of the Ably key, a broker bug) can put anything there. So every
receiver checks every message with a :class:`MessageChecker` holding the
channel's current trusted config, and drops (logging why) a message that

* is not a well-formed, validly signed ``channel-message`` envelope;
* is for another channel;
* has a time more than :data:`WINDOW` seconds off this node's clock;
* comes from a node that is not a member of the current config;
* has a type this node does not know, or that needs a permission (see
  :data:`REQUIRED_PERMISSION`) the sender does not have;
* repeats a nonce the sender already used within the window (a replay).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...envelopes import Envelope, open_envelope, seal
from ...errors import ChannelError, EnvelopeError, InvalidValueError
from ...keys import KeyPair
from .config import ChannelConfig

log = logging.getLogger("kachery_tasks.network.channels")

MESSAGE_KIND = "channel-message"

WINDOW = 300
"""Seconds a message's time may differ from the receiver's clock (either way)."""

MAX_MESSAGE_BYTES = 60 * 1024
"""The largest message envelope; it must fit in one pub/sub message (64 KiB). Data
travels through the channel's bucket, not inline."""

MAX_NONCES_PER_SENDER = 100_000
"""Nonces remembered per sender within the window; a sender sending more is dropped."""

REQUIRED_PERMISSION: Mapping[str, str | None] = {
    "request_file": "download",
    "file_uploaded": "upload",
    "file_upload_progress": "upload",
    "file_absent": "upload",
    "feed_messages": None,
    "channel_config": None,
    "request_task": None,
    "task_status": "process_tasks",
    "task_finished": "process_tasks",
    "task_failed": "process_tasks",
    "task_declined": "process_tasks",
    "request_tasks": None,
    "tasks_progress": "process_tasks",
    "tasks_answered": "process_tasks",
    "tasks_declined": "process_tasks",
}
"""Each message type and the permission its sender needs (None: any member).

``request_task`` (and ``request_tasks``, a batch of calls) passes from any
member: the provider checks the ``request_tasks`` permission itself and
declines ``not_allowed``, so a member without it gets a clear answer instead of
silence.

``feed_messages`` is sent by the node that owns the feed (any member; the
receivers asked for it with ``read_feeds``). ``channel_config`` carries a
config whose own signature (the owner's) is what makes it trusted.
"""

ADDRESSED_BY: Mapping[str, str] = {
    **{t: "to" for t in ("file_uploaded", "file_upload_progress", "file_absent", "task_status",
                         "task_finished", "task_failed", "task_declined", "tasks_progress",
                         "tasks_answered", "tasks_declined")},
    "request_task": "provider",
    "request_tasks": "provider",
}
"""Message types meant for one member, and the body field naming it: the answers of an
exchange (``to``, the asker) and task requests (``provider``)."""


def addressed_elsewhere(type: str | None, data: Any, node_id: str) -> bool:
    """Whether the message ``data`` of ``type`` (not verified yet) names a member other than
    ``node_id`` as its only reader: the others skip it without checking its signature,
    which would cost them as much as the reader (a forged one is nobody's concern)."""
    field = ADDRESSED_BY.get(type or "")
    if field is None or not isinstance(data, Mapping):
        return False
    envelope_body = data.get("body")
    body = envelope_body.get("body") if isinstance(envelope_body, Mapping) else None
    reader = body.get(field) if isinstance(body, Mapping) else None
    return isinstance(reader, str) and reader != node_id


_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_NONCE = re.compile(r"[0-9a-f]{32}\Z")
_BODY_FIELDS = {"type", "channel", "time", "nonce", "body"}


@dataclass(frozen=True)
class ChannelMessage:
    """A message that verified: who sent it (``sender``, a node id), what and when."""

    type: str
    channel: str
    sender: str
    time: int
    nonce: str
    body: Any
    envelope: Envelope

    def to_dict(self) -> dict[str, Any]:
        """The envelope as the JSON object that is published."""
        return self.envelope.to_dict()


class MessageDropped(ChannelError):
    """A message a receiver does not accept; ``reason`` is one word (see :data:`REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("malformed", "bad-signature", "wrong-channel", "stale", "not-member",
           "unknown-type", "permission", "replay", "flood")


def seal_message(type: str, channel: str, body: Any, key: KeyPair, *,
                 now: float | None = None, nonce: str | None = None) -> Envelope:
    """Sign a message of ``type`` for pub/sub channel ``channel`` with the node key ``key``.

    ``now`` and ``nonce`` default to the clock and a fresh random nonce (tests
    set them). Raises InvalidValueError for an unknown type or a message over
    :data:`MAX_MESSAGE_BYTES`.
    """
    if type not in REQUIRED_PERMISSION:
        raise InvalidValueError(f"unknown channel message type {type!r}: use one of "
                                f"{', '.join(REQUIRED_PERMISSION)}")
    envelope = seal(MESSAGE_KIND, {
        "type": type, "channel": channel, "time": int(time.time() if now is None else now),
        "nonce": nonce or secrets.token_hex(16), "body": body,
    }, key)
    size = len(envelope.to_bytes())
    if size > MAX_MESSAGE_BYTES:
        raise InvalidValueError(
            f"a {type} message of {size} bytes is over the limit of {MAX_MESSAGE_BYTES}: "
            "put the data in the channel's bucket and send its name")
    return envelope


def parse_message(data: Any, source: str = "channel message") -> ChannelMessage:
    """The message ``data`` holds (JSON object, text or bytes), its signature checked.

    Raises :class:`MessageDropped` (``malformed`` or ``bad-signature``) and
    nothing else, whatever ``data`` is.
    """
    if isinstance(data, bytes | bytearray | str) and len(data) > MAX_MESSAGE_BYTES:
        raise MessageDropped("malformed", f"{source} is over {MAX_MESSAGE_BYTES} bytes")
    if not isinstance(data, bytes | bytearray | str | Mapping):
        raise MessageDropped("malformed", f"{source} is a {type(data).__name__}, not a JSON "
                             "object")
    try:
        envelope = open_envelope(data, MESSAGE_KIND, source)
    except EnvelopeError as e:
        reason = "bad-signature" if "signature does not match" in str(e) else "malformed"
        raise MessageDropped(reason, str(e)) from None
    except (InvalidValueError, RecursionError) as e:  # a body canonical JSON refuses
        raise MessageDropped("malformed", f"{source}: {str(e)[:200]}") from None
    body = envelope.body
    problem = _body_problem(body)
    if problem:
        raise MessageDropped("malformed", f"{source}: {problem}")
    return ChannelMessage(type=body["type"], channel=body["channel"], sender=envelope.signer,
                          time=body["time"], nonce=body["nonce"], body=body["body"],
                          envelope=envelope)


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or set(body) != _BODY_FIELDS:
        return "the body must have exactly the fields body, channel, nonce, time, type"
    if not isinstance(body["type"], str) or not _TYPE.match(body["type"]):
        return "type must be a lowercase name"
    if not isinstance(body["channel"], str) or not 0 < len(body["channel"]) <= 200:
        return "channel must be a pub/sub channel name"
    if type(body["time"]) is not int or body["time"] < 0:
        return "time must be a whole number of seconds"
    if not isinstance(body["nonce"], str) or not _NONCE.match(body["nonce"]):
        return "nonce must be 32 hex digits"
    return None


class MessageChecker:
    """Accepts or drops the messages arriving on one channel, given its current config.

    :meth:`check` returns the message, or None after logging (at warning
    level, with the sender and the reason) why it was dropped; ``dropped``
    counts drops by reason. :attr:`config` may be replaced at any time (a
    newer version adopted); the nonces seen stay remembered. Thread-safe.
    """

    def __init__(self, config: ChannelConfig, *, window: float = WINDOW,
                 clock: Any = time.time) -> None:
        self.config = config
        self.window = window
        self.clock = clock
        self.dropped: Counter[str] = Counter()
        self._nonces: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def check(self, data: Any, source: str = "channel message") -> ChannelMessage | None:
        """The message if it is accepted, else None (the reason logged and counted)."""
        try:
            return self.accept(data, source)
        except MessageDropped as e:
            with self._lock:
                self.dropped[e.reason] += 1
            log.warning("dropped a message on %s (%s): %s", self.config.name, e.reason, e)
            return None

    def accept(self, data: Any, source: str = "channel message") -> ChannelMessage:
        """The message if it is accepted; :class:`MessageDropped` saying why not."""
        config = self.config
        msg = parse_message(data, source)
        who = f"{msg.type} from {msg.sender[:16]}..."
        if msg.channel != config.pubsub_name:
            raise MessageDropped("wrong-channel", f"{who} is for channel {msg.channel[:80]!r}, "
                                 f"not {config.pubsub_name!r}")
        now = self.clock()
        if abs(msg.time - now) > self.window:
            raise MessageDropped("stale", f"{who} was sent at {msg.time}, {msg.time - now:+.0f} "
                                 f"s from this node's clock (allowed: {self.window:g} s)")
        if msg.sender not in config.members:
            raise MessageDropped("not-member", f"{who}: the sender is not a member of "
                                 f"{config.name} (config version {config.version})")
        if msg.type not in REQUIRED_PERMISSION:
            raise MessageDropped("unknown-type", f"{who}: unknown message type")
        needed = REQUIRED_PERMISSION[msg.type]
        if needed is not None and needed not in config.permissions_of(msg.sender):
            raise MessageDropped("permission", f"{who}: the sender lacks the {needed} "
                                 f"permission in {config.name} (config version {config.version})")
        self._remember(msg, now, who)
        return msg

    def _remember(self, msg: ChannelMessage, now: float, who: str) -> None:
        """Record the message's nonce; MessageDropped if the sender used it already."""
        with self._lock:
            seen = self._nonces.setdefault(msg.sender, {})
            if msg.nonce in seen:
                raise MessageDropped("replay", f"{who} repeats nonce {msg.nonce[:8]}... "
                                     "(a replayed message)")
            if len(seen) >= MAX_NONCES_PER_SENDER // 2:  # forget what can no longer replay
                for nonce in [n for n, t in seen.items() if t < now - self.window]:
                    del seen[nonce]
            if len(seen) >= MAX_NONCES_PER_SENDER:
                raise MessageDropped("flood", f"{who}: the sender sent over "
                                     f"{MAX_NONCES_PER_SENDER} messages within the window")
            seen[msg.nonce] = msg.time

