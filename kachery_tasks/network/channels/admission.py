"""Broker admission for channels: who may connect to the embedded broker, and where.

:class:`ChannelAdmission` plugs into :class:`~kachery_tasks.network.broker.Broker`
(``kachery-tasks broker start`` does it by default)::

    admission = ChannelAdmission()
    broker = Broker(host, port, authorize=admission.authorize, observe=admission.observe)
    admission.on_removed = broker.disconnect

For each token (see :mod:`.tokens`) it checks the claim's signature, that its
time is within :data:`~.messages.WINDOW` seconds of the broker's clock, the
config's signature by the owner named in the pub/sub channel name, and that
the node is a member of the newest config the broker knows for that channel.
The client is admitted under its node id, to that one pub/sub channel (and
its ``name/...`` sub-channels).

The broker keeps, per channel, the highest config version it has seen, in
memory, and never goes back: it learns newer versions from tokens and from the
``channel_config`` notices it relays. When a newer version drops a member,
that member's open connections are closed (``on_removed``) and its tokens are
refused from then on.

A token with a stale time gets Ably's renewable error (the SDK asks its token
provider for a fresh one and reconnects, which is what happens when it reuses
an old token to reconnect); a node whose fresh token is stale again, or whose
time is ahead, has a clock that is off, and is refused for good with a message
saying so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ...errors import ChannelError, ChannelPermissionError
from ..broker import Grant, TokenExpired
from .config import ChannelConfig, open_config, parse_pubsub_channel_name
from .messages import WINDOW, parse_message
from .tokens import read_token

log = logging.getLogger("kachery_tasks.network.channels.admission")

MAX_CHANNELS = 1000
"""Channels one broker keeps a config for; tokens for more channels are refused (a config
is never forgotten, so that the broker never goes back to an older one)."""

RENEWAL_GRACE = 60.0
"""Seconds after telling a node to renew a stale token during which another stale token
from it means its clock is off (refused for good)."""


class ChannelAdmission:
    """The embedded broker's authorizer and observer for channels (see the module docstring).

    ``owners``: when given, only channels of these owner keys are served;
    ``max_channels``: how many channels at most (see :data:`MAX_CHANNELS`).
    ``on_removed(node, pubsub channel, reason)`` is called (from any thread)
    for each member a newer config drops.
    """

    def __init__(self, *, owners: Collection[str] | None = None, window: float = WINDOW,
                 clock: Callable[[], float] = time.time,
                 on_removed: Callable[[str, str, str], None] | None = None,
                 max_channels: int = MAX_CHANNELS) -> None:
        self.owners = frozenset(owners) if owners is not None else None
        self.max_channels = max_channels
        self.window = window
        self.clock = clock
        self.on_removed = on_removed
        self._configs: dict[str, ChannelConfig] = {}
        self._renewals: dict[str, float] = {}
        self._lock = threading.Lock()

    def config(self, channel: str) -> ChannelConfig | None:
        """The newest config known for pub/sub channel ``channel``."""
        with self._lock:
            return self._configs.get(channel)

    def authorize(self, token: str) -> Grant:
        """The grant for ``token``, or an exception saying why it is refused."""
        claim = read_token(token)
        config = claim.config
        if self.owners is not None and config.owner not in self.owners:
            raise ChannelPermissionError(
                f"this broker serves only the channels of chosen owners, not of "
                f"{config.owner[:16]}...")
        self._check_time(claim.node, claim.time)
        current = self.learn(config)
        if claim.node not in current.members:
            raise ChannelPermissionError(
                f"node {claim.node[:16]}... is not a member of channel {current.name} (config "
                f"version {current.version}): ask its owner to add it")
        return Grant(claim.node, frozenset({claim.channel}))

    def _check_time(self, node: str, claimed: int) -> None:
        now = self.clock()
        skew = claimed - now
        if skew > self.window:
            raise ChannelError(
                f"the token was signed {skew:.0f} s ahead of the broker's clock (allowed: "
                f"{self.window:g} s): check the clock of node {node[:16]}...")
        if -skew <= self.window:
            return
        with self._lock:
            for other in [n for n, t in self._renewals.items() if t < now - RENEWAL_GRACE]:
                del self._renewals[other]
            told = self._renewals.pop(node, None)
            if told is None:
                self._renewals[node] = now
        if told is not None:
            raise ChannelError(
                f"the token was signed {-skew:.0f} s ago although a fresh one was asked for "
                f"(allowed: {self.window:g} s): check the clock of node {node[:16]}...")
        raise TokenExpired(f"signed {-skew:.0f} s ago (allowed: {self.window:g} s)")

    def learn(self, config: ChannelConfig) -> ChannelConfig:
        """Take ``config`` (already verified) if it is newer than the one known; return the newest.

        Members it drops are reported to ``on_removed``.
        """
        channel = config.pubsub_name
        with self._lock:
            known = self._configs.get(channel)
            if known is not None and known.version >= config.version:
                return known
            if known is None and len(self._configs) >= self.max_channels:
                raise ChannelPermissionError(
                    f"this broker already serves {self.max_channels} channels: run another "
                    "(or serve chosen owners only: kachery-tasks broker start --owner KEY)")
            self._configs[channel] = config
        if known is not None:
            log.info("channel %s: config version %d (was %d)", config.name, config.version,
                     known.version)
            removed = sorted(set(known.members) - set(config.members))
            for node in removed:
                reason = (f"node {node[:16]}... was removed from channel {config.name} (config "
                          f"version {config.version})")
                log.warning("%s: closing its connections", reason)
                if self.on_removed is not None:
                    self.on_removed(node, channel, reason)
        return config

    def observe(self, client_id: str | None, channel: str, message: dict[str, Any]) -> None:
        """Learn from a ``channel_config`` notice relayed on ``channel`` (others are ignored)."""
        if message.get("name") != "channel_config":
            return
        try:
            prefix, name = parse_pubsub_channel_name(channel)
            data = message.get("data")
            if "json" in str(message.get("encoding") or "").split("/"):
                data = json.loads(data)
            notice = parse_message(data, "a channel_config notice")
            doc = notice.body.get("config") if isinstance(notice.body, dict) else None
            signer = doc.get("signer") if isinstance(doc, dict) else None
            if notice.channel != channel or not isinstance(signer, str) or not signer.startswith(
                    prefix):
                raise ChannelError("the notice is not for this channel or not by its owner")
            self.learn(open_config(doc, signer, name, "the config in a channel_config notice"))
        except (ChannelError, ValueError, TypeError) as e:  # MessageDropped included
            log.info("ignored a channel_config notice on %s from %r: %s", channel, client_id, e)
