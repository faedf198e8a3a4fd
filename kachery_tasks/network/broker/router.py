"""Routing inside the broker: sessions, channels, messages and presence.

The :class:`Router` applies one validated client frame at a time (it runs on
the broker's event loop, so it never needs a lock) and puts what each
connection must receive into that connection's :class:`~.state.Outbox`;
the server's writer tasks send it. It knows nothing about websockets: the
server tells it when a transport is gone (:meth:`Router.transport_lost`) and
gives it a callback for a connection whose outbox overflowed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .limits import Limits
from .protocol import (
    ALL_MODES,
    BAD_REQUEST,
    CHANNEL_ACTIONS,
    CHANNEL_OPERATION_FAILED,
    HAS_PRESENCE,
    INVALID_CLIENT_ID,
    MAX_CHANNEL_NAME,
    MESSAGE_TOO_LARGE,
    NOT_PERMITTED,
    RESUMED,
    Action,
    PresenceAction,
    encode,
    error_info,
)
from .state import Channel, HistoryEntry, Session

log = logging.getLogger("kachery_tasks.network.broker")

_MESSAGE_FIELDS = ("name", "data", "encoding", "extras", "id")
_PRESENCE_FIELDS = ("data", "encoding", "extras")
_MAX_TOMBSTONES = 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


Observer = Callable[[str | None, str, dict[str, Any]], None]
"""``observe(client_id, channel, message)``: sees each message the broker relays.

``message`` holds the fields the client sent (``name``, ``data``, ``encoding``,
...). Called on the broker's loop after the message went out, so it must be
quick; what it raises is logged and ignored.
"""


class Router:
    """Sessions and channels of one broker, and the effect of every client frame."""

    def __init__(self, limits: Limits, on_overflow: Callable[[Session], None],
                 observe: Observer | None = None) -> None:
        self.limits = limits
        self.observe = observe
        self.instance = secrets.token_hex(4)
        self.sessions: dict[str, Session] = {}
        self._by_key: dict[str, Session] = {}
        self.channels: dict[str, Channel] = {}
        self._channel_count = 0
        self._on_overflow = on_overflow
        self._leave_count = 0
        # connectionKey -> why the broker dropped it (told to a client that tries to resume).
        self.tombstones: OrderedDict[str, str] = OrderedDict()

    # -- sessions -------------------------------------------------------------

    def new_session(self, client_id: str | None, echo: bool) -> Session:
        """A fresh connection for ``client_id``."""
        session_id = secrets.token_urlsafe(9).replace(":", "_")
        session = Session(
            id=session_id, key=f"{session_id}!{secrets.token_urlsafe(18)}",
            client_id=client_id, echo=echo,
        )
        self.sessions[session.id] = session
        self._by_key[session.key] = session
        return session

    def lookup(self, key: str) -> Session | None:
        """The session whose connectionKey is ``key``, if it is still known."""
        return self._by_key.get(key)

    def resume(self, key: str, client_id: str | None) -> Session | None:
        """The dropped session ``key`` names, ready for a new transport; None if unknown."""
        session = self._by_key.get(key)
        if session is None or session.client_id != client_id:
            return None
        if session.ws is not None:  # the old transport is superseded
            self.transport_lost(session)
        session.cancel_timers()
        # Frames the client resends were maybe processed already: ack them, do not repeat them.
        session.duplicate_limit = session.last_serial
        return session

    def transport_lost(self, session: Session) -> None:
        """The websocket of ``session`` is gone: keep the session resumable for a while."""
        session.ws = None
        session.outbox.clear()
        for name in session.channels:
            session.channels[name] = False
            channel = self.channels.get(name)
            if channel is not None:
                channel.subscribers.pop(session.id, None)
        loop = asyncio.get_running_loop()
        session.cancel_timers()
        session.presence_timer = loop.call_later(
            self.limits.presence_timeout, self._leave_everywhere, session
        )
        session.expiry_timer = loop.call_later(
            self.limits.connection_ttl, self.close_session, session
        )

    def close_session(self, session: Session) -> None:
        """Forget ``session``: its presence members leave and its channels detach."""
        session.cancel_timers()
        self._leave_everywhere(session)
        for name in list(session.channels):
            self._detach(session, name)
        self.sessions.pop(session.id, None)
        self._by_key.pop(session.key, None)
        session.outbox.clear()

    def drop(self, session: Session, reason: str) -> None:
        """Forget ``session`` now; a client resuming it is told ``reason`` (continuity lost)."""
        self.tombstones[session.key] = reason
        while len(self.tombstones) > _MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)
        self.close_session(session)

    # -- frames -----------------------------------------------------------------

    def handle(self, session: Session, frame: dict[str, Any], size: int) -> None:
        """Apply one validated frame (of ``size`` bytes) from ``session``."""
        action = frame["action"]
        name = frame["channel"] if action in CHANNEL_ACTIONS else None
        if name is not None and len(name) > MAX_CHANNEL_NAME:
            self._refuse_channel(session, frame, f"channel name of {len(name)} characters is "
                                 f"longer than the broker's limit of {MAX_CHANNEL_NAME}",
                                 BAD_REQUEST)
        elif name is not None and not session.may_use(name):
            self._refuse_channel(session, frame, f"client {session.client_id!r} may not use "
                                 f"channel {name!r} (its token admits it to other channels "
                                 "only)", NOT_PERMITTED)
        elif action == Action.MESSAGE:
            self._publish(session, frame, size)
        elif action == Action.PRESENCE:
            self._presence(session, frame, size)
        elif action == Action.ATTACH:
            self._attach(session, frame)
        elif action == Action.DETACH:
            self._detach(session, name)
            self._send(session, encode({"action": Action.DETACHED, "channel": name}))
        elif action == Action.HEARTBEAT and frame.get("id") is not None:
            self._send(session, encode({"action": Action.HEARTBEAT, "id": frame["id"]}))

    def _check_serial(self, session: Session, serial: int) -> bool:
        """True if the frame with ``serial`` is new; a resent one is acked again only."""
        if serial <= session.duplicate_limit:
            session.outbox.push_ack(serial)
            self._wake(session)
            return False
        session.last_serial = max(session.last_serial, serial)
        return True

    def _refuse_channel(self, session: Session, frame: dict[str, Any], message: str,
                        code: int) -> None:
        """Refuse one frame for a channel (not granted, name too long); the connection goes on."""
        name, action = frame["channel"], frame["action"]
        if action in (Action.MESSAGE, Action.PRESENCE):
            if self._check_serial(session, frame["msgSerial"]):
                self._nack(session, frame["msgSerial"], message, code)
        elif action == Action.ATTACH:
            self._send(session, encode({"action": Action.ERROR, "channel": name,
                                        "error": error_info(message, code)}))
        else:
            self._send(session, encode({"action": Action.DETACHED, "channel": name}))

    def _nack(self, session: Session, serial: int, message: str, code: int) -> None:
        self._send(session, encode(
            {"action": Action.NACK, "msgSerial": serial, "count": 1,
             "error": error_info(message, code)}
        ))

    def _too_large(self, items: list[dict], size: int) -> int | None:
        """The size of the first item above the message limit, if any."""
        limit = self.limits.max_message_bytes
        if size <= limit:
            return None
        for item in items:
            n = len(encode(item))
            if n > limit:
                return n
        return None

    def _publish(self, session: Session, frame: dict[str, Any], size: int) -> None:
        serial = frame["msgSerial"]
        if not self._check_serial(session, serial):
            return
        items = frame["messages"]
        too_large = self._too_large(items, size)
        if too_large is not None:
            self._nack(session, serial, f"message of {too_large} bytes is larger than the broker's "
                       f"limit of {self.limits.max_message_bytes} bytes", MESSAGE_TOO_LARGE)
            return
        if any(item.get("clientId") not in (None, session.client_id) for item in items):
            self._nack(session, serial, f"messages may only carry this connection's clientId "
                       f"({session.client_id!r})", INVALID_CLIENT_ID)
            return
        channel = self._channel(frame["channel"])
        now_ms, now = _now_ms(), time.monotonic()
        limits = self.limits
        touched: dict[str, Session] = {}
        for index, item in enumerate(items):
            message = {k: item[k] for k in _MESSAGE_FIELDS if item.get(k) is not None}
            message.setdefault("id", f"{session.id}:{serial}:{index}")
            message["connectionId"] = session.id
            message["timestamp"] = now_ms
            if session.client_id is not None:
                message["clientId"] = session.client_id
            channel.seq += 1
            text = encode(message)
            serial_json = f'"{channel.serial()}"'
            channel.record(HistoryEntry(channel.seq, text, session.id, now),
                           limits.history_messages, limits.history_bytes)
            for sub_id, sub in channel.subscribers.items():
                if sub is session and not session.echo:
                    continue
                sub.outbox.push_message(channel.name_json, serial_json, text)
                touched[sub_id] = sub
        session.outbox.push_ack(serial)
        touched[session.id] = session
        for sub in touched.values():
            self._wake(sub)
        if self.observe is not None:
            for item in items:
                try:
                    self.observe(session.client_id, channel.name, item)
                except Exception:
                    log.exception("the broker's message observer failed (ignored)")

    def _attach(self, session: Session, frame: dict[str, Any]) -> None:
        name = frame["channel"]
        channel = self._channel(name)
        state = session.channels.get(name)
        replay: list[HistoryEntry] = []
        resumed = state is True
        if state is False:  # re-attach after a resume: send what the client missed
            seq = self._parse_serial(channel, frame.get("channelSerial"))
            if seq is not None:
                replay, resumed = channel.since(seq)
                if not resumed:
                    log.warning("connection %s lost messages of channel %r while away "
                                "(history holds too few)", session.id, name)
        session.channels[name] = True
        channel.subscribers[session.id] = session
        flags = ALL_MODES | (HAS_PRESENCE if channel.members else 0) | (RESUMED if resumed else 0)
        outbox = session.outbox
        outbox.push_frame(encode({"action": Action.ATTACHED, "channel": name,
                                  "channelSerial": channel.serial(), "flags": flags}))
        if channel.members:
            outbox.push_frame(encode({
                "action": Action.SYNC, "channel": name,
                "channelSerial": f"{secrets.token_hex(4)}:",
                "presence": list(channel.members.values()),
            }))
        for entry in replay:
            if session.echo or entry.connection_id != session.id:
                outbox.push_message(channel.name_json, f'"{channel.serial(entry.seq)}"',
                                    entry.message_json)
        self._wake(session)

    def _parse_serial(self, channel: Channel, serial: object) -> int | None:
        if not isinstance(serial, str):
            return None
        instance, _, seq = serial.rpartition(":")
        if instance != channel.instance or not seq.isdigit():
            return None
        return int(seq)

    def _detach(self, session: Session, name: str) -> None:
        session.channels.pop(name, None)
        channel = self.channels.get(name)
        if channel is None:
            return
        channel.subscribers.pop(session.id, None)
        self._leave(channel, session)
        self._collect(channel)

    def _presence(self, session: Session, frame: dict[str, Any], size: int) -> None:
        serial = frame["msgSerial"]
        if not self._check_serial(session, serial):
            return
        name, items = frame["channel"], frame["presence"]
        if session.channels.get(name) is not True:
            self._nack(session, serial, f"attach channel {name!r} before entering its presence",
                       CHANNEL_OPERATION_FAILED)
            return
        too_large = self._too_large(items, size)
        if too_large is not None:
            self._nack(session, serial, f"presence data of {too_large} bytes is larger than the "
                       f"limit of {self.limits.max_message_bytes} bytes", MESSAGE_TOO_LARGE)
            return
        if session.client_id is None or any(
            item.get("clientId") not in (None, session.client_id) for item in items
        ):
            self._nack(session, serial, "presence needs the clientId this connection was "
                       "admitted with", INVALID_CLIENT_ID)
            return
        channel = self.channels[name]
        now_ms = _now_ms()
        events = []
        for index, item in enumerate(items):
            key = (session.id, session.client_id)
            existing = channel.members.get(key)
            member = {"id": f"{session.id}:{serial}:{index}", "clientId": session.client_id,
                      "connectionId": session.id, "timestamp": now_ms}
            member.update({k: item[k] for k in _PRESENCE_FIELDS if item.get(k) is not None})
            if item["action"] == PresenceAction.LEAVE:
                if existing is not None:
                    del channel.members[key]
                    if "data" not in member:  # a leave without data reports the member's data
                        member.update({k: existing[k] for k in ("data", "encoding")
                                       if k in existing})
                    events.append({**member, "action": PresenceAction.LEAVE})
                continue
            if existing is not None and all(
                existing.get(k) == member.get(k) for k in _PRESENCE_FIELDS
            ):
                continue  # a re-enter after a resume: nothing changed
            action = PresenceAction.UPDATE if existing is not None else PresenceAction.ENTER
            channel.members[key] = {**member, "action": PresenceAction.PRESENT}
            events.append({**member, "action": action})
        self._broadcast_presence(channel, events)
        session.outbox.push_ack(serial)
        self._wake(session)

    def _leave(self, channel: Channel, session: Session) -> None:
        """Synthesized LEAVEs for every member ``session`` has on ``channel``."""
        events = []
        for key in [k for k in channel.members if k[0] == session.id]:
            member = channel.members.pop(key)
            self._leave_count += 1
            # An id that does not start with "<connectionId>:" marks a synthesized
            # leave; the SDK then orders it by timestamp.
            events.append({**member, "action": PresenceAction.LEAVE, "timestamp": _now_ms(),
                           "id": f"{session.id}-leave:{self._leave_count}:0"})
        self._broadcast_presence(channel, events)

    def _leave_everywhere(self, session: Session) -> None:
        session.presence_timer = None
        for name in list(session.channels):
            channel = self.channels.get(name)
            if channel is not None:
                self._leave(channel, session)
                self._collect(channel)

    def _broadcast_presence(self, channel: Channel, events: list[dict]) -> None:
        if not events:
            return
        text = encode({"action": Action.PRESENCE, "channel": channel.name, "presence": events})
        for sub in list(channel.subscribers.values()):
            self._send(sub, text)

    # -- channels and outboxes -----------------------------------------------

    def _channel(self, name: str) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            self._channel_count += 1
            channel = self.channels[name] = Channel(
                name=name, instance=f"{self.instance}.{self._channel_count}",
                name_json=json.dumps(name),
            )
        return channel

    def _collect(self, channel: Channel) -> None:
        if channel.idle and self.channels.get(channel.name) is channel:
            del self.channels[channel.name]

    def sweep(self) -> None:
        """Forget history older than the resume window and channels nobody uses."""
        oldest = time.monotonic() - self.limits.connection_ttl
        for channel in list(self.channels.values()):
            channel.prune(oldest)
            self._collect(channel)

    def _send(self, session: Session, text: str) -> None:
        session.outbox.push_frame(text)
        self._wake(session)

    def _wake(self, session: Session) -> None:
        if session.ws is None:
            session.outbox.clear()
            return
        if session.outbox.nbytes > self.limits.max_outbox_bytes:
            self._on_overflow(session)
            return
        session.wake.set()
