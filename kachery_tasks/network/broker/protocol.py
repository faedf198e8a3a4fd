"""The subset of Ably's realtime JSON protocol the embedded broker speaks.

Constants (actions, flags, error codes) carry the numbers the ``ably`` SDK
uses (``ably/transport/websockettransport.py``, ``ably/types/flags.py``), and
:func:`parse_frame` turns one websocket text frame from a client into a
validated dict or raises :class:`ProtocolError` — the broker never trusts a
client's frame further than this module checked it.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any


class Action(IntEnum):
    """``ProtocolMessage.action`` values (Ably protocol version 5)."""

    HEARTBEAT = 0
    ACK = 1
    NACK = 2
    CONNECT = 3
    CONNECTED = 4
    DISCONNECT = 5
    DISCONNECTED = 6
    CLOSE = 7
    CLOSED = 8
    ERROR = 9
    ATTACH = 10
    ATTACHED = 11
    DETACH = 12
    DETACHED = 13
    PRESENCE = 14
    MESSAGE = 15
    SYNC = 16
    AUTH = 17


class PresenceAction(IntEnum):
    """``PresenceMessage.action`` values."""

    ABSENT = 0
    PRESENT = 1
    ENTER = 2
    LEAVE = 3
    UPDATE = 4


# ATTACHED flags (bits of ProtocolMessage.flags).
HAS_PRESENCE = 1 << 0
RESUMED = 1 << 2
ATTACH_RESUME = 1 << 5
# Channel modes granted on attach: presence, publish, subscribe, presence_subscribe.
ALL_MODES = (1 << 16) | (1 << 17) | (1 << 18) | (1 << 19)

# Ably error codes the broker sends (https://ably.com/docs/platform/errors/codes).
BAD_REQUEST = 40000
MESSAGE_TOO_LARGE = 40009
INVALID_CLIENT_ID = 40012
INVALID_CREDENTIALS = 40101  # fatal for the SDK: the connection goes to FAILED
INCOMPATIBLE_CREDENTIALS = 40102
TOKEN_EXPIRED = 40142  # renewable: the SDK asks its auth callback for a new token
NOT_PERMITTED = 40160  # the token does not allow this channel
CONNECTION_DISCONNECTED = 80003  # with DISCONNECTED: the SDK reconnects at once
UNABLE_TO_RECOVER = 80008
CONTINUITY_LOST = 80020
CHANNEL_OPERATION_FAILED = 90001

# Actions a client may send, and the ones whose frames need a msgSerial (acked).
CLIENT_ACTIONS = frozenset(
    {Action.HEARTBEAT, Action.CLOSE, Action.ATTACH, Action.DETACH, Action.PRESENCE,
     Action.MESSAGE, Action.AUTH, Action.DISCONNECT}
)
ACKED_ACTIONS = frozenset({Action.MESSAGE, Action.PRESENCE})
# Actions whose frames name a channel (a string, checked by parse_frame).
CHANNEL_ACTIONS = frozenset({Action.ATTACH, Action.DETACH, Action.MESSAGE, Action.PRESENCE})

MAX_CHANNEL_NAME = 512
MAX_ID = 256


class ProtocolError(Exception):
    """A client frame that does not follow the protocol; ``code`` is the Ably error code."""

    def __init__(self, message: str, code: int = BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


def error_info(message: str, code: int, status: int | None = None) -> dict[str, Any]:
    """An Ably ``ErrorInfo``: ``{message, code, statusCode}``.

    The HTTP status is the code's first three digits for 4xxxx and 5xxxx
    codes and 400 for the others (connection and channel codes 8xxxx, 9xxxx),
    as Ably sends them. Never 500-504 for DISCONNECTED: the SDK would then
    look for fallback hosts.
    """
    if status is None:
        status = code // 100 if 40000 <= code < 60000 else 400
    return {"message": message, "code": code, "statusCode": status}


def encode(frame: dict[str, Any]) -> str:
    """A frame as compact JSON text."""
    return json.dumps(frame, separators=(",", ":"))


def parse_frame(raw: str | bytes) -> dict[str, Any]:
    """The validated frame ``raw`` holds; raises ProtocolError for anything malformed.

    Checks the shape the broker relies on: a JSON object with a known client
    action; a channel name where the action needs one; an integer msgSerial
    and a list of objects for MESSAGE and PRESENCE; string fields where
    strings are expected. Unknown extra fields are left alone.
    """
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not supported: use the JSON protocol")
    try:
        frame = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"frame is not JSON: {e}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame is not a JSON object")
    action = frame.get("action")
    if type(action) is not int or action not in CLIENT_ACTIONS:
        raise ProtocolError(f"unsupported action {action!r}")
    action = frame["action"] = Action(action)
    if action in CHANNEL_ACTIONS:
        check_channel_name(frame.get("channel"))
    if action in ACKED_ACTIONS:
        serial = frame.get("msgSerial")
        if type(serial) is not int or serial < 0:
            raise ProtocolError("msgSerial must be a non-negative integer")
        key = "messages" if action == Action.MESSAGE else "presence"
        items = frame.get(key)
        if not isinstance(items, list) or not items:
            raise ProtocolError(f"{key} must be a non-empty list")
        for item in items:
            _check_item(item, presence=action == Action.PRESENCE)
    if action == Action.ATTACH:
        flags = frame.get("flags")
        if flags is not None and type(flags) is not int:
            raise ProtocolError("flags must be an integer")
        _optional_str(frame, "channelSerial")
    if action == Action.HEARTBEAT:
        _optional_str(frame, "id")
    if action == Action.AUTH:
        auth = frame.get("auth")
        if not isinstance(auth, dict) or not isinstance(auth.get("accessToken"), str):
            raise ProtocolError("AUTH needs auth.accessToken")
    return frame


def check_channel_name(name: object) -> str:
    """``name`` if it is a non-empty string, else ProtocolError.

    A name longer than MAX_CHANNEL_NAME is well-formed: the router refuses
    that one operation (NACK or channel ERROR), not the whole connection.
    """
    if not isinstance(name, str) or not name:
        raise ProtocolError("channel must be a non-empty string")
    return name


def _check_item(item: object, *, presence: bool) -> None:
    if not isinstance(item, dict):
        raise ProtocolError("each message must be a JSON object")
    for key in ("name", "clientId", "encoding", "id"):
        _optional_str(item, key)
    if len(item.get("id") or "") > MAX_ID:
        raise ProtocolError(f"message id longer than {MAX_ID} characters")
    extras = item.get("extras")
    if extras is not None and not isinstance(extras, dict):
        raise ProtocolError("extras must be a JSON object")
    if presence:
        action = item.get("action")
        if action not in (PresenceAction.ENTER, PresenceAction.LEAVE, PresenceAction.UPDATE) or (
            type(action) is not int
        ):
            raise ProtocolError(f"unsupported presence action {action!r}")


def _optional_str(obj: dict, key: str) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
