"""The pub/sub interface the rest of kachery-tasks uses, whatever the backend.

A :class:`PubSub` is one client connection to a broker (the embedded one or
the Ably service). Its API is synchronous, for a package that uses threads
rather than asyncio; implementations run their network code elsewhere (the
Ably adapter: an asyncio loop in a background thread) and deliver callbacks
on one thread they own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Data = bytes | str | dict
"""What a message or a presence entry carries: bytes, text, or a JSON object."""

TokenProvider = Callable[[], str]
"""Returns a token that admits this client (called at connect, and for a new one when asked)."""


@dataclass(frozen=True)
class Message:
    """A message received on a channel.

    ``data`` has the type it was published with (bytes, str or dict);
    ``client_id`` is the publisher's client id as the broker admitted it (None
    for an anonymous client), ``connection_id`` its connection, ``id`` a
    broker-assigned unique id and ``timestamp`` the broker's time in ms.
    """

    channel: str
    name: str | None
    data: Data | None
    client_id: str | None
    connection_id: str | None
    id: str | None
    timestamp: int | None


@dataclass(frozen=True)
class Member:
    """A client present on a channel, with the data it entered with."""

    client_id: str
    connection_id: str | None
    data: Data | None


@dataclass(frozen=True)
class PresenceEvent:
    """A change of a channel's presence set: ``enter``, ``update`` or ``leave``.

    ``present`` reports a member already there when the client attached.
    """

    channel: str
    action: Literal["enter", "update", "leave", "present"]
    member: Member


MessageCallback = Callable[[Message], None]
PresenceCallback = Callable[[PresenceEvent], None]


class PubSub(ABC):
    """One client of a pub/sub broker: publish, subscribe, presence.

    Contract, for every implementation:

    * :meth:`connect` returns once the broker admitted the client, or raises
      :class:`~kachery_tasks.errors.PubSubAuthError` (credentials refused:
      not retried) or :class:`~kachery_tasks.errors.PubSubError` (no broker
      reached in time). After that the connection repairs itself: a dropped
      connection is resumed, channels are re-attached and presence entered
      again, without the caller doing anything.
    * :meth:`publish` returns once the broker acknowledged the message (it
      then reaches every subscriber attached at that moment); it raises
      PubSubError when the broker refused it (``code`` says why, e.g. 40009:
      too large) or did not acknowledge it within the timeout (the message may
      still arrive later).
    * Messages from one publisher on one channel arrive in the order they
      were published. Whether a client receives its own messages is the
      ``echo`` option of the backend (default: it does).
    * Callbacks run on one thread that the implementation owns (never the
      caller's, never the network thread), one at a time, in arrival order.
      A callback may call any method of the object, publish included; a slow
      callback delays later callbacks, not the network. An exception in a
      callback is logged and does not stop delivery.
    * After :meth:`close` (or leaving a ``with`` block) every method raises
      PubSubError; close itself may be called more than once.
    """

    @abstractmethod
    def connect(self, client_id: str | None = None, token_provider: TokenProvider | None = None,
                *, timeout: float | None = None) -> None:
        """Connect as ``client_id``, presenting ``token_provider()`` to the broker."""

    @abstractmethod
    def publish(self, channel: str, name: str, data: Data, *, timeout: float | None = None) -> None:
        """Publish event ``name`` with ``data`` on ``channel``; returns when acknowledged."""

    @abstractmethod
    def subscribe(self, channel: str, callback: MessageCallback, *,
                  name: str | None = None) -> None:
        """Call ``callback(message)`` for each message on ``channel`` (only events ``name``).

        Returns once the channel is attached: messages published after that reach the callback.
        """

    @abstractmethod
    def unsubscribe(self, channel: str, callback: MessageCallback | None = None) -> None:
        """Stop calling ``callback`` (every callback of ``channel`` when None).

        A callback removed here is not called again once this returns, except
        for a call already running on the callback thread.
        """

    @abstractmethod
    def enter(self, channel: str, data: Data | None = None) -> None:
        """Enter ``channel``'s presence (or update this client's data); needs a client id."""

    @abstractmethod
    def leave(self, channel: str) -> None:
        """Leave ``channel``'s presence."""

    @abstractmethod
    def members(self, channel: str) -> list[Member]:
        """Who is present on ``channel`` now, with their data."""

    @abstractmethod
    def on_presence(self, channel: str, callback: PresenceCallback) -> None:
        """Call ``callback(event)`` for each presence change on ``channel``."""

    @abstractmethod
    def off_presence(self, channel: str, callback: PresenceCallback | None = None) -> None:
        """Stop calling ``callback`` (every presence callback of ``channel`` when None)."""

    @abstractmethod
    def close(self) -> None:
        """Leave every presence this client entered and close the connection."""

    @property
    @abstractmethod
    def client_id(self) -> str | None:
        """The client id the broker admitted this client under."""

    def __enter__(self) -> PubSub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
