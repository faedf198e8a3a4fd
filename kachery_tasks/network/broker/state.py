"""What the broker remembers: connections (sessions), channels, and each connection's outbox.

A :class:`Session` outlives its websocket for a while, so a client that lost
its connection can resume it (``resume=<connectionKey>``) and find its
channels, presence and message serials where it left them. A
:class:`Channel` keeps a bounded history of recent messages so a resumed
client gets what was published while it was away. An :class:`Outbox` holds
the frames waiting to be written to one websocket and merges neighbours when
they are taken (several messages of one channel into one MESSAGE frame,
consecutive ACKs into one ACK with a count), which is what lets one broker
process fan out thousands of messages per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import Action

# A batch of messages in one frame stays far below the 1 MiB frame limit of the
# SDK's websocket client.
MAX_BATCH_BYTES = 256 * 1024
MAX_BATCH_MESSAGES = 500

_MSG = 0
_ACK = 1
_FRAME = 2


class Outbox:
    """Frames waiting to be written to one connection, in order, counted in bytes."""

    def __init__(self) -> None:
        self._items: deque[list[Any]] = deque()
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def push_message(self, channel_json: str, serial_json: str, message_json: str) -> None:
        """Queue one message (already JSON) of the channel whose name is ``channel_json``."""
        self._items.append([_MSG, channel_json, serial_json, message_json])
        self.nbytes += len(message_json)

    def push_ack(self, serial: int) -> None:
        """Queue the ACK of ``serial``, merged into the previous ACK when consecutive."""
        if self._items:
            last = self._items[-1]
            if last[0] == _ACK and last[1] + last[2] == serial:
                last[2] += 1
                return
        self._items.append([_ACK, serial, 1])
        self.nbytes += 32

    def push_frame(self, text: str) -> None:
        """Queue a complete frame (JSON text)."""
        self._items.append([_FRAME, text])
        self.nbytes += len(text)

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    def take(self) -> str:
        """The next frame to write: one queued frame, or several queued items merged."""
        item = self._items.popleft()
        kind = item[0]
        if kind == _FRAME:
            self.nbytes -= len(item[1])
            return item[1]
        if kind == _ACK:
            self.nbytes -= 32
            return f'{{"action":{Action.ACK},"msgSerial":{item[1]},"count":{item[2]}}}'
        channel_json, serial_json, parts = item[1], item[2], [item[3]]
        size = len(item[3])
        items = self._items
        while (
            items and items[0][0] == _MSG and items[0][1] == channel_json
            and size + len(items[0][3]) <= MAX_BATCH_BYTES and len(parts) < MAX_BATCH_MESSAGES
        ):
            nxt = items.popleft()
            serial_json = nxt[2]
            parts.append(nxt[3])
            size += len(nxt[3])
        self.nbytes -= size
        return (
            f'{{"action":{Action.MESSAGE},"channel":{channel_json},'
            f'"channelSerial":{serial_json},"messages":[{",".join(parts)}]}}'
        )


@dataclass(eq=False)
class Session:
    """One client connection, kept across websocket drops until it expires.

    ``channels`` maps each attached channel to True when messages flow to the
    websocket, or False while the client has not re-attached it after a
    resume (it then gets the channel's history from its last channelSerial).
    """

    id: str
    key: str
    client_id: str | None
    echo: bool = True
    channels_allowed: frozenset[str] | None = None  # None: any channel (see Grant)
    ws: Any = None
    outbox: Outbox = field(default_factory=Outbox)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    channels: dict[str, bool] = field(default_factory=dict)
    last_serial: int = -1
    duplicate_limit: int = -1
    last_sent: float = field(default_factory=time.monotonic)
    presence_timer: asyncio.TimerHandle | None = None
    expiry_timer: asyncio.TimerHandle | None = None

    def may_use(self, channel: str) -> bool:
        """Whether this connection's grant covers ``channel`` (a granted name or ``name/...``)."""
        allowed = self.channels_allowed
        if allowed is None or channel in allowed:
            return True
        return any(channel.startswith(name + "/") for name in allowed)

    def cancel_timers(self) -> None:
        for timer in (self.presence_timer, self.expiry_timer):
            if timer is not None:
                timer.cancel()
        self.presence_timer = self.expiry_timer = None


@dataclass
class HistoryEntry:
    seq: int
    message_json: str
    connection_id: str
    time: float


@dataclass(eq=False)
class Channel:
    """A channel: its serial, recent history, live subscribers and presence members."""

    name: str
    instance: str
    name_json: str = ""
    seq: int = 0
    history: deque[HistoryEntry] = field(default_factory=deque)
    history_bytes: int = 0
    subscribers: dict[str, Session] = field(default_factory=dict)
    members: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def serial(self, seq: int | None = None) -> str:
        """The channelSerial of message ``seq`` (default: the last one): ``<instance>:<seq>``."""
        return f"{self.instance}:{self.seq if seq is None else seq}"

    def record(self, entry: HistoryEntry, max_messages: int, max_bytes: int) -> None:
        """Append ``entry`` to the history and drop the oldest beyond the limits."""
        self.history.append(entry)
        self.history_bytes += len(entry.message_json)
        while self.history and (
            len(self.history) > max_messages or self.history_bytes > max_bytes
        ):
            self.history_bytes -= len(self.history.popleft().message_json)

    def prune(self, oldest: float) -> None:
        """Forget history entries recorded before ``oldest`` (monotonic seconds)."""
        while self.history and self.history[0].time < oldest:
            self.history_bytes -= len(self.history.popleft().message_json)

    def since(self, seq: int) -> tuple[list[HistoryEntry], bool]:
        """History entries after ``seq``, and whether none in between was forgotten."""
        if seq >= self.seq:
            return [], seq == self.seq
        entries = [e for e in self.history if e.seq > seq]
        return entries, bool(entries) and entries[0].seq == seq + 1

    @property
    def idle(self) -> bool:
        """True when nobody is attached, present, or can still resume from the history."""
        return not self.subscribers and not self.members and not self.history
