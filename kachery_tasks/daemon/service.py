"""The node daemon's channel services: :class:`NodeDaemon` (``kachery-tasks node start``).

While it runs, a node serves every channel it joined and is a member of:

* one :class:`~kachery_tasks.network.channels.ChannelSession` per channel,
  present with ``{"label", "node", "daemon": true, "watch": [feeds]}``
  (``watch``: the feeds of other nodes it follows, see
  :mod:`kachery_tasks.network.channels.livefeeds`);
* ``request_file``: answered when this node may ``upload`` (the message
  checker already dropped requests from members without ``download``), the
  content inline or through the bucket, with progress
  (:mod:`kachery_tasks.network.channels.files`);
* its own feeds' new messages announced to the members watching them, and
  the announced messages of feeds it follows imported (verified);
* ``request_task`` (``node start --provide MODULE...``): in each channel
  where this node may ``process_tasks``, a
  :class:`~kachery_tasks.network.tasks.provider.TaskProvider` runs the
  registered tasks for the members, and presence carries what it provides
  (``"provides"``: name, kind, version and code hash of each function);
* config notices adopted (by the session); a channel joined or left while it
  runs is picked up within :data:`RESCAN_EVERY` seconds (or at once through
  :meth:`NodeDaemon.reload_channels`); a session whose connection failed for
  good (the broker refused it) is started again, and one whose broker went
  away reconnects by itself (the SDK resumes, or re-attaches and enters
  presence again after a broker restart).

It holds ``<node>/daemon/pid`` while it runs (a second daemon on the same
node directory refuses to start) and logs what it does through the
``kachery_tasks.daemon`` logger, never a key or token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ChannelPermissionError, InvalidValueError, KacheryError
from ..listeners import Listeners
from ..nodes import Node
from ..remotes import open_remote
from ..remotes.bucket import BucketRemote
from ..sizes import format_size
from .pidfile import PidFile

log = logging.getLogger("kachery_tasks.daemon")

RESCAN_EVERY = 2.0
"""Seconds between two looks at the joined channels and the sessions' health."""

SESSION_OPTIONS = {"request_timeout": 10.0, "connect_timeout": 10.0, "retry_interval": 1.0}

Event = dict[str, Any]


class ChannelService:
    """One joined channel as the daemon serves it."""

    def __init__(self, daemon: NodeDaemon, channel: Any) -> None:
        self.daemon = daemon
        self.channel = channel
        self.session: Any = None
        self.responder: Any = None
        self.provider: Any = None
        self.announcer: Any = None
        self.detail = "starting"
        self._next_try = 0.0
        self._failures = 0

    @property
    def key(self) -> str:
        return self.channel.key

    def bucket(self) -> BucketRemote:
        remote = open_remote(self.session.config.bucket)
        assert isinstance(remote, BucketRemote)
        return remote

    def ensure(self) -> None:
        """Start the session if it is not running (or failed for good); quiet between tries."""
        session = self.session
        if session is not None and not session.failed:
            try:  # a config that granted or withdrew process_tasks since the last look
                self._provide()
            except KacheryError as e:
                log.warning("channel %s: could not change what this node provides: %s",
                            self.channel.name, e)
            return
        if time.monotonic() < self._next_try:
            return
        if session is not None:
            log.warning("channel %s: the connection failed for good; starting again",
                        self.channel.name)
            self.stop()
        try:
            self._start()
        except KacheryError as e:
            self._failures += 1
            self._next_try = time.monotonic() + min(30.0, 2.0 * self._failures)
            self.detail = str(e)
            level = logging.INFO if isinstance(e, ChannelPermissionError) else logging.WARNING
            log.log(level, "channel %s: not served: %s", self.channel.name, e)
            self.daemon.emit({"type": "channel", "name": self.channel.name,
                              "connected": False, "detail": self.detail})

    def _start(self) -> None:
        from ..network.channels import ChannelSession
        from ..network.channels.files import FILE
        from ..network.channels.livefeeds import FeedAnnouncer
        from ..network.channels.requests import Responder

        daemon = self.daemon
        session = ChannelSession(self.channel, daemon.node.key, label=daemon.label,
                                 **{**SESSION_OPTIONS, **daemon.session_options})
        session.present(**daemon.presence_extra())
        session.on_presence(lambda _event: self._presence_changed())
        session.on_config(lambda c: daemon.emit({"type": "config", "name": c.name,
                                                 "version": c.version}))
        self.session = session
        self.announcer = FeedAnnouncer(session, daemon.node.feeds, self.bucket, daemon.emit)
        daemon.follower.attach(session, self.bucket)
        self.responder = Responder(session, FILE, self._serve_file, events=daemon.emit)
        try:
            session.start()
            self._provide()
        except BaseException:
            self.stop()
            raise
        self._failures = 0
        self.detail = "connected"
        config = session.config
        log.info("channel %s: serving as %s (config version %d, pub/sub %s, bucket %s)",
                 config.name, session.label, config.version, config.pubsub, config.bucket)
        daemon.emit({"type": "channel", "name": config.name, "connected": True,
                     "version": config.version})
        daemon.poller.poke()

    def presence(self) -> dict[str, Any]:
        """What this channel's session adds to its presence data (see the daemon's)."""
        return self.daemon.presence_extra(provides=self.provider is not None)

    def _provide(self) -> None:
        """Serve ``request_task`` while this node may process tasks here (and provides some);
        presence says what it provides from the moment requests are served."""
        from ..network.tasks.provider import TaskProvider

        daemon, session = self.daemon, self.session
        if session is None or daemon.provided is None:
            return
        allowed = "process_tasks" in session.config.permissions_of(session.node_id)
        if allowed == (self.provider is not None):
            return
        if allowed:
            self.provider = TaskProvider(session, daemon.node, daemon.provided,
                                         executor=daemon.executor, claim_ttl=daemon.claim_ttl,
                                         events=daemon.emit)
            log.info("channel %s: providing %d task(s) from %s", session.channel.name,
                     len(daemon.provided), ", ".join(daemon.provided.modules))
        else:
            provider, self.provider = self.provider, None
            provider.close()
            log.info("channel %s: no longer providing tasks (this node lost process_tasks)",
                     session.channel.name)
        session.present(**self.presence())

    def _presence_changed(self) -> None:
        if self.announcer is not None:
            self.announcer.watchers_changed()
        self.daemon.poller.poke()
        self.daemon.emit({"type": "presence", "name": self.channel.name})

    def _serve_file(self, incoming: Any) -> None:
        from ..network.channels.files import serve_file_request

        session = self.session
        if "upload" not in session.config.permissions_of(session.node_id):
            incoming.status, incoming.detail = "ignored", "this node may not upload"
            return
        serve_file_request(incoming, self.daemon.node.store, self.bucket(),
                           inline_max=self.daemon.inline_max)
        log.info("channel %s: request_file %s from %s...: %s", session.channel.name,
                 incoming.body.get("uri"), incoming.sender[:16], incoming.detail)

    def status(self) -> dict[str, Any]:
        session = self.session
        config = None
        if session is not None and session.checker is not None:
            config = session.config
        config = config or self.channel.trusted_config()
        online: dict[str, Any] = {}
        connected = session is not None and session.connected
        if connected:
            try:
                online = dict(session.members())
            except KacheryError:
                connected = False
        members = []
        if config is not None:
            from ..network.channels.config import ordered_permissions
            from ..network.tasks.presence import provides_of

            for node, m in sorted(config.members.items(), key=lambda kv: kv[1].label):
                members.append({"node": node, "label": m.label,
                                "permissions": ordered_permissions(m.permissions),
                                "online": node in online,
                                "provides": provides_of(online.get(node))})
        return {"name": self.channel.name, "key": self.key, "owner": self.channel.owner,
                "version": config.version if config else None,
                "pubsub": config.pubsub if config else self.channel.invite.pubsub,
                "bucket": config.bucket if config else self.channel.invite.bucket,
                "connected": connected, "detail": self.detail, "members": members}

    def stop(self) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            provider.close()
        responder, self.responder = self.responder, None
        announcer, self.announcer = self.announcer, None
        session, self.session = self.session, None
        if responder is not None:
            responder.close()
        if announcer is not None:
            announcer.close()
        if session is not None:
            session.close()


class NodeDaemon:
    """Serves every channel a node joined, until stopped (see the module docstring).

    ``label`` is how the node shows in presence (default: its label in each
    channel's config); ``session_options`` go to each channel's pub/sub
    client (timeouts); ``inline_max`` is the largest content sent inline in an
    answer. ``provided`` (a :class:`~kachery_tasks.network.tasks.Provided`)
    makes the node a provider of those tasks, run on ``executor`` (default
    in-process; the daemon closes it when it stops) with claims of
    ``claim_ttl`` seconds.
    """

    def __init__(self, node: Node, *, label: str | None = None,
                 session_options: dict[str, Any] | None = None,
                 inline_max: int | None = None, rescan_every: float = RESCAN_EVERY,
                 provided: Any = None, executor: Any = None,
                 claim_ttl: float | None = None) -> None:
        from ..network.channels.files import INLINE_MAX, MAX_INLINE
        from ..network.tasks.claims import DEFAULT_TTL

        if inline_max is not None and not 0 <= inline_max <= MAX_INLINE:
            raise InvalidValueError(
                f"content sent inline must be at most {format_size(MAX_INLINE)} (it travels in "
                f"one pub/sub message), not {format_size(inline_max)}")
        self.node = node
        self.label = label
        self.session_options = dict(session_options or {})
        self.inline_max = INLINE_MAX if inline_max is None else inline_max
        self.rescan_every = rescan_every
        self.provided = provided
        self.executor = executor
        self.claim_ttl = DEFAULT_TTL if claim_ttl is None else claim_ttl
        self.services: dict[str, ChannelService] = {}
        self.poller: Any = None
        self.follower: Any = None
        self._followed: list[str] = []
        self._subscribers = Listeners("daemon event subscriber")
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._pidfile = PidFile(node.sub("daemon", "pid"), node.shared)
        self.started: float | None = None

    # ------------------------------------------------------------- running
    def start(self) -> None:
        """Take the pid file, connect to every joined channel, and keep serving them."""
        from ..network.channels.livefeeds import FeedFollower, FeedStorePoller, followed_feeds

        self._pidfile.acquire()
        try:
            feeds = self.node.feeds
            self._followed = followed_feeds(feeds)
            self.follower = FeedFollower(feeds, self._follows, self.emit)
            self.poller = FeedStorePoller(feeds, self._feeds_changed, busy=self._announcing)
            self.reload_channels()
            self.poller.start()
        except BaseException:
            self.stop()
            raise
        self.started = time.time()
        self._supervisor = threading.Thread(target=self._supervise, name="kachery-daemon",
                                            daemon=True)
        self._supervisor.start()
        log.info("node %s... (%s): daemon started, %d channel(s)", self.node.id[:16],
                 self.node.path, len(self.services))

    def reload_channels(self) -> None:
        """Serve channels joined since the last look, stop serving the ones left."""
        from ..network.channels import ChannelStore

        joined = {c.key: c for c in ChannelStore(self.node.dir).all()}
        with self._lock:
            for key in self.services.keys() - joined.keys():
                log.info("channel %s: left; no longer served", self.services[key].channel.name)
                self.services.pop(key).stop()
            for key in joined.keys() - self.services.keys():
                self.services[key] = ChannelService(self, joined[key])
            services = list(self.services.values())
        for service in services:
            service.ensure()

    def _supervise(self) -> None:
        while not self._stop.wait(self.rescan_every):
            try:
                self.reload_channels()
            except Exception:
                log.exception("looking at the joined channels failed")

    def stop(self) -> None:
        """Leave every channel and stop; the pid file is removed."""
        self._stop.set()
        with self._lock:
            services, self.services = list(self.services.values()), {}
        for service in services:
            service.stop()
        if self.poller is not None:
            self.poller.stop()
        if self.follower is not None:
            self.follower.close()
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.close()
        self._pidfile.release()
        if self.started is not None:
            log.info("node %s...: daemon stopped", self.node.id[:16])
            self.started = None

    # --------------------------------------------------------------- feeds
    def presence_extra(self, provides: bool = False) -> dict[str, Any]:
        """What the daemon adds to its presence data: that it serves, what it follows and,
        where it serves ``request_task`` (``provides``), the tasks it provides."""
        from ..network.tasks.protocol import PRESENCE_KEY

        extra: dict[str, Any] = {"daemon": True}
        if self._followed:
            extra["watch"] = list(self._followed)
        if provides and self.provided is not None:
            extra[PRESENCE_KEY] = self.provided.describe()
        return extra

    def _follows(self, feed: str) -> bool:
        if feed in self._followed:
            return True
        feeds = self.node.feeds  # a feed imported since the last look (by this process)
        return feeds.get_feed(feed) is not None and not feeds.key_path(feed).exists()

    def _announcing(self) -> bool:
        """Whether a member of a served channel watches a feed of this node."""
        with self._lock:
            services = list(self.services.values())
        return any(s.announcer is not None and s.announcer.watching() for s in services)

    def _feeds_changed(self) -> None:
        from ..network.channels.livefeeds import followed_feeds

        followed = followed_feeds(self.node.feeds)
        with self._lock:
            services = list(self.services.values())
        if followed != self._followed:
            self._followed = followed
            log.info("following %d feed(s) of other nodes", len(followed))
            for service in services:
                if service.session is not None and service.session.pubsub is not None:
                    try:
                        service.session.present(**service.presence())
                    except KacheryError as e:
                        log.info("channel %s: could not update presence: %s",
                                 service.channel.name, e)
        for service in services:
            if service.announcer is not None:
                service.announcer.check()

    # ------------------------------------------------------------- reports
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each event (``{"type": "channel" | "presence" |
        "request" | "feed" | "config", ...}``); returns the function that unsubscribes."""
        return self._subscribers.add(callback)

    def emit(self, event: Event) -> None:
        self._subscribers(event)

    def status(self) -> dict[str, Any]:
        """What the daemon serves now, JSON-able (the shape is in the module docstring of
        the API)."""
        with self._lock:
            services = list(self.services.values())
        requests = []
        for service in services:
            if service.responder is not None:
                requests.extend(service.responder.status())
            if service.provider is not None:
                requests.extend(service.provider.status())
        label = self.label
        if label is None:
            labels = [s.session.label for s in services if s.session is not None]
            label = labels[0] if labels else None
        return {"node": {"id": self.node.id, "label": label, "path": str(self.node.path)},
                "channels": [s.status() for s in services],
                "requests": requests}
