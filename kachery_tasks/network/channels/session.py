"""A node's live connection to one channel: :class:`ChannelSession`.

A long-running node (the daemon, later) keeps one session per joined
channel. The session

* starts from the highest config it trusts, after adopting any newer version
  found in the channel's bucket;
* connects to the channel's pub/sub (to the embedded broker with a token
  signed by the node key that carries that config; to the Ably service with
  ``$ABLY_API_KEY``), enters presence with ``{"label", "node"}`` and
  subscribes;
* checks every incoming message with a :class:`~.messages.MessageChecker`
  (dropped ones are logged) and hands accepted ones to the handlers
  registered for their type (:meth:`ChannelSession.on`);
* adopts a newer config from a ``channel_config`` notice (owner-signed,
  higher version only), without restarting, and tells :meth:`on_config`
  handlers.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ...errors import ChannelError, ChannelPermissionError, KacheryError, PubSubAuthError
from ...keys import KeyPair
from ...storage.buckets import open_bucket
from ..pubsub import PubSub, connect_pubsub
from ..pubsub.base import Message, PresenceEvent
from .bucket import latest_config
from .config import ChannelConfig, open_config
from .messages import ChannelMessage, MessageChecker, addressed_elsewhere, seal_message
from .store import JoinedChannel
from .tokens import make_token

log = logging.getLogger("kachery_tasks.network.channels")

Handler = Callable[[ChannelMessage], None]


def connect_channel_pubsub(key: KeyPair, config: Callable[[], ChannelConfig],
                           **options: Any) -> PubSub:
    """A pub/sub client connected as node ``key`` to the pub/sub of ``config()``.

    To the embedded broker (``ws://``) the node presents a token made from
    ``config()`` each time the SDK asks for one (so a session that adopted a
    newer version presents it); to the Ably service, the SDK's own
    credentials (``$ABLY_API_KEY``).
    """
    _quiet_sdk_close_errors()
    url = config().pubsub
    provider = (lambda: make_token(key, config())) if url.startswith("ws://") else None
    return connect_pubsub(url, key.public_hex, provider, **options)


class _SdkCloseNoise(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for the SDK's own close task.

    ably 3.1.4 closes a transport in a task it never awaits; when the websocket
    is already gone (a broker that refused or closed the connection), that task
    fails and asyncio prints the traceback to stderr. Nothing is lost by
    dropping it: the failure itself is reported by the adapter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Task exception was never retrieved")
                    and "WebSocketTransport.close()" in text)


_NOISE_FILTER = _SdkCloseNoise()


def _quiet_sdk_close_errors() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if _NOISE_FILTER not in asyncio_log.filters:
        asyncio_log.addFilter(_NOISE_FILTER)


def refresh_config(channel: JoinedChannel) -> ChannelConfig:
    """The channel's trusted config after adopting the newest valid version in its bucket.

    Raises ChannelError when this node trusts no config and the bucket has none.
    """
    trusted = channel.trusted_config()
    found = latest_config(open_bucket(channel.bucket_url), channel.owner, channel.name,
                          above=trusted.version if trusted is not None else 0)
    if found is not None:
        try:
            channel.adopt(found)
        except ChannelError as e:  # another process adopted a newer one meanwhile
            log.info("%s", e)
    config = channel.trusted_config()
    if config is None:
        raise ChannelError(f"no config of channel {channel.name} in {channel.bucket_url}: is "
                           "the invite right, and did its owner publish it?")
    return config


class ChannelSession:
    """This node's connection to one channel (see the module docstring).

    ``with ChannelSession(channel, key).start() as s: ...``; ``options`` go to
    :func:`~kachery_tasks.network.pubsub.connect_pubsub` (timeouts, ...).
    ``presence=False`` makes a session that does not enter presence until
    :meth:`present` is called (a process that only asks, which others should
    not count as a member online to answer them).
    """

    def __init__(self, channel: JoinedChannel, key: KeyPair, *, label: str | None = None,
                 presence: bool = True, **options: Any) -> None:
        self.channel = channel
        self.key = key
        self.node_id = key.public_hex
        self._label = label
        self._presence = presence
        self._presence_extra: dict[str, Any] = {}
        self._options = options
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._config_handlers: list[Callable[[ChannelConfig], None]] = []
        self._presence_handlers: list[Callable[[PresenceEvent], None]] = []
        self._lock = threading.Lock()
        self._config: ChannelConfig | None = None
        self.checker: MessageChecker | None = None
        self.pubsub: PubSub | None = None

    @property
    def config(self) -> ChannelConfig:
        """The newest config this session trusts."""
        if self._config is None:
            raise ChannelError(f"the session of {self.channel.name} is not started")
        return self._config

    @property
    def pubsub_name(self) -> str:
        return self.channel.pubsub_name

    def start(self) -> ChannelSession:
        """Adopt the newest config, connect, subscribe and enter presence."""
        config = refresh_config(self.channel)
        if self.node_id not in config.members:
            raise ChannelPermissionError(
                f"this node ({self.node_id}) is not a member of {config.name} (config version "
                f"{config.version}): ask its owner to run 'kachery-tasks channel add-node "
                f"{config.name} {self.node_id}'")
        self._config = config
        self.checker = MessageChecker(config)
        self.pubsub = connect_channel_pubsub(self.key, lambda: self.config,
                                             **{"echo": False, **self._options})
        try:
            self.pubsub.subscribe(self.pubsub_name, self._on_message)
            if self._presence_handlers:
                self.pubsub.on_presence(self.pubsub_name, self._on_presence)
            if self._presence:
                self.pubsub.enter(self.pubsub_name, self.presence_data)
        except BaseException:
            self.close()
            raise
        log.info("joined %s as %s (config version %d)", config.name, self.label, config.version)
        return self

    @property
    def label(self) -> str:
        """How this node shows in presence: ``label``, else its label in the config, else
        the host name."""
        if self._label:
            return self._label
        member = self._config.members.get(self.node_id) if self._config else None
        return member.label if member is not None else socket.gethostname()

    @property
    def presence_data(self) -> dict[str, Any]:
        """What this session enters presence with: ``{"label", "node"}`` and what
        :meth:`present` added."""
        return {"label": self.label, "node": self.node_id, **self._presence_extra}

    def present(self, **extra: Any) -> None:
        """Enter presence (again) with ``extra`` added to the label and node id.

        ``extra`` replaces what an earlier call added; the daemon says which feeds
        its node follows this way (``watch=[feed ids]``). Entering again with other
        data is one presence update for the others.
        """
        self._presence_extra = dict(extra)
        self._presence = True
        if self.pubsub is None:
            return
        self.pubsub.enter(self.pubsub_name, self.presence_data)

    def absent(self) -> None:
        """Leave presence (until :meth:`present` is called again)."""
        self._presence = False
        self._presence_extra = {}
        if self.pubsub is not None:
            self.pubsub.leave(self.pubsub_name)

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up now (it repairs itself when it is not)."""
        pubsub = self.pubsub
        return pubsub is not None and getattr(pubsub, "state", "connected") == "connected"

    @property
    def failed(self) -> bool:
        """Whether the connection failed for good (the broker refused this node): only a
        new session can connect again."""
        pubsub = self.pubsub
        return pubsub is not None and getattr(pubsub, "state", "") in ("failed", "closed")

    def on(self, type: str, handler: Handler) -> None:
        """Call ``handler(message)`` for each accepted message of ``type`` (callback thread)."""
        with self._lock:
            self._handlers[type].append(handler)

    def off(self, type: str, handler: Handler) -> None:
        with self._lock:
            if handler in self._handlers.get(type, []):
                self._handlers[type].remove(handler)

    def on_presence(self, handler: Callable[[PresenceEvent], None]) -> None:
        """Call ``handler(event)`` for each change of who is present (callback thread).

        Register before :meth:`start`."""
        with self._lock:
            self._presence_handlers.append(handler)

    def _on_presence(self, event: PresenceEvent) -> None:
        with self._lock:
            handlers = list(self._presence_handlers)
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                log.exception("a presence handler of channel %s failed", self.channel.name)

    def on_config(self, handler: Callable[[ChannelConfig], None]) -> None:
        """Call ``handler(config)`` each time the session adopts a newer config."""
        with self._lock:
            self._config_handlers.append(handler)

    def publish(self, type: str, body: Any, *, timeout: float | None = None) -> ChannelMessage:
        """Sign and publish a message of ``type``; returns once the broker acknowledged it."""
        pubsub = self.pubsub  # once: a close in another thread sets it to None
        if pubsub is None:
            raise ChannelError(f"the session of {self.channel.name} is not started")
        self._check_member()
        envelope = seal_message(type, self.pubsub_name, body, self.key)
        try:
            pubsub.publish(self.pubsub_name, type, envelope.to_dict(), timeout=timeout)
        except PubSubAuthError:  # refused for good: was this node removed?
            try:
                self.adopt(refresh_config(self.channel))
            except KacheryError as e:
                log.info("could not read the config of %s: %s", self.channel.name, e)
            self._check_member()
            raise
        body = envelope.body
        return ChannelMessage(type=type, channel=body["channel"], sender=self.node_id,
                              time=body["time"], nonce=body["nonce"], body=body["body"],
                              envelope=envelope)

    def _check_member(self) -> None:
        config = self.config
        if self.node_id not in config.members:
            raise ChannelPermissionError(
                f"this node was removed from channel {config.name} (config version "
                f"{config.version})")

    def online(self) -> dict[str, Any]:
        """Who is present now: client (node) id -> the data it entered with."""
        if self.pubsub is None:
            raise ChannelError(f"the session of {self.channel.name} is not started")
        return {m.client_id: m.data for m in self.pubsub.members(self.pubsub_name)}

    def members(self) -> list[tuple[str, Any]]:
        """Everyone present: (node id, presence data), one entry per connection (a node's
        daemon and another of its processes are two)."""
        if self.pubsub is None:
            raise ChannelError(f"the session of {self.channel.name} is not started")
        return [(m.client_id, m.data) for m in self.pubsub.members(self.pubsub_name)]

    def adopt(self, config: ChannelConfig) -> bool:
        """Use ``config`` from now on if it is newer than this session's; True if it was."""
        try:
            self.channel.adopt(config)
        except ChannelError as e:  # the node directory trusts a newer one: take that
            log.info("%s", e)
            config = self.channel.trusted_config() or config
        with self._lock:
            if self._config is not None and config.version <= self._config.version:
                return False
            self._config = config
            if self.checker is not None:
                self.checker.config = config
            handlers = list(self._config_handlers)
        log.info("channel %s: now at config version %d", config.name, config.version)
        if self.node_id not in config.members:
            log.warning("this node was removed from channel %s (config version %d)",
                        config.name, config.version)
        for handler in handlers:
            try:
                handler(config)
            except Exception:
                log.exception("a config handler of channel %s failed", config.name)
        return True

    def _on_message(self, m: Message) -> None:
        checker = self.checker
        if checker is None or addressed_elsewhere(m.name, m.data, self.node_id):
            return
        msg = checker.check(m.data, f"message {m.name!r} from client {m.client_id!r}")
        if msg is None:
            return
        if msg.type == "channel_config":
            self._adopt_notice(msg)
        with self._lock:
            handlers = list(self._handlers.get(msg.type, ()))
        for handler in handlers:
            try:
                handler(msg)
            except Exception:
                log.exception("a %s handler of channel %s failed", msg.type, self.channel.name)

    def _adopt_notice(self, msg: ChannelMessage) -> None:
        doc = msg.body.get("config") if isinstance(msg.body, dict) else None
        try:
            config = open_config(doc if isinstance(doc, dict) else {}, self.channel.owner,
                                 self.channel.name, f"the config sent by {msg.sender[:16]}...")
        except ChannelError as e:
            log.warning("ignored a channel_config notice: %s", e)
            return
        self.adopt(config)

    def close(self) -> None:
        """Leave presence and disconnect (also on leaving a ``with`` block)."""
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            pubsub.close()

    def __enter__(self) -> ChannelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
