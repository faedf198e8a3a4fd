"""Pub/sub clients, found by URL scheme through a small registry (imported only when used).

* ``ws://HOST:PORT`` — the embedded broker (``kachery-tasks broker start``);
* ``ably:`` or ``ably:ENDPOINT`` — the Ably service (token provider, or ``$ABLY_API_KEY``).

Both are served by one adapter over the ``ably`` SDK
(:class:`~.ably_sdk.AblyPubSub`). A new backend is one module with a factory
``(url, **options) -> PubSub`` and one line in ``_BACKENDS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...errors import InvalidValueError
from .base import Data, Member, Message, PresenceEvent, PubSub, TokenProvider

_BACKENDS = {
    "ws": "kachery_tasks.network.pubsub.ably_sdk:local_broker",
    "ably": "kachery_tasks.network.pubsub.ably_sdk:ably_service",
}


def open_pubsub(url: str, **options: Any) -> PubSub:
    """An unconnected client for the broker at ``url`` (options go to the backend)."""
    scheme = url.split(":", 1)[0] if ":" in url else ""
    target = _BACKENDS.get(scheme)
    if target is None:
        raise InvalidValueError(
            f"unknown pub/sub URL {url!r}: use ws://HOST:PORT (embedded broker) or ably:"
        )
    module, factory = target.split(":")
    return getattr(importlib.import_module(module), factory)(url, **options)


def connect_pubsub(url: str, client_id: str | None = None,
                   token_provider: TokenProvider | None = None, *,
                   timeout: float | None = None, **options: Any) -> PubSub:
    """A client connected to ``url`` as ``client_id`` (see :meth:`PubSub.connect`)."""
    pubsub = open_pubsub(url, **options)
    pubsub.connect(client_id, token_provider, timeout=timeout)
    return pubsub


__all__ = [
    "Data", "Member", "Message", "PresenceEvent", "PubSub", "TokenProvider",
    "connect_pubsub", "open_pubsub",
]
