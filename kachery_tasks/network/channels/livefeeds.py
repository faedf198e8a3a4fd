"""Live feeds over a channel: the owner's daemon pushes new messages to the nodes that follow.

**Who follows what.** A node follows every feed of another node that it
holds (it loaded it once with ``load_feed``: the feed is in its feed store,
without a key). Its daemon says so in its presence data, ``"watch": [feed
ids]`` (:func:`followed_feeds`; at most :data:`MAX_WATCHED`, the newest), so
nothing is broadcast to nobody, and a broker restart (members enter presence
again) loses nothing of it.

**The owner** (:class:`FeedAnnouncer`, one per channel in the owner node's
daemon) looks for new messages in its own feeds that a member allowed to
``read_feeds`` watches, each time another process of the node commits to the
feed store (:class:`FeedStorePoller`), and publishes

* ``feed_messages {"feed", "subfeed", "start", "count", "lines"}`` — the new
  messages' signed lines, when they fit in :data:`INLINE_MAX` bytes;
* ``feed_messages {"feed", "subfeed", "start", "count", "bucket": true}`` —
  after pushing them to the channel's bucket, when they do not.

When a member starts watching one of its feeds, the owner pushes the feed to
the bucket and announces each subfeed through it (``start`` 0). A few
seconds after each burst of appends it pushes the feed to the bucket too
(:data:`BUCKET_DELAY`), so a follower that missed an announcement (its daemon
was down, the broker restarted) finds the messages there.

**A follower** (:class:`FeedFollower`, in the daemon) imports the lines of
feeds it follows through :func:`~kachery_tasks.feeds.transfer.import_lines`
(every signature and the hash chain checked: lines from anyone but the
feed's key holder are refused), pulling from the bucket first when the
announcement starts after what it holds; a gap the bucket cannot fill yet is
retried for a while. A local ``subfeed.watch()`` in any process of the node
wakes as the messages land in its SQLite database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import FeedVerificationError, KacheryError
from ...feeds.feed import known_feed
from ...feeds.store import FeedStore
from ...feeds.transfer import import_lines
from ...remotes.bucket import BucketRemote
from .messages import ChannelMessage
from .session import ChannelSession

log = logging.getLogger("kachery_tasks.network.channels")

INLINE_MAX = 32 * 1024
"""New messages up to this many bytes of lines ride in the announcement."""

MAX_WATCHED = 500
"""Feeds a node asks for live in its presence data (64 hex each: 34 KiB)."""

BUCKET_DELAY = 2.0
"""Seconds after the last announced append before the owner pushes the feed to the bucket."""

GAP_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds between attempts to fill a gap from the bucket before giving up until the next
announcement."""

POLL_INTERVAL = 0.005
"""Seconds between two looks at whether another process committed to the feed store."""


def followed_feeds(feeds: FeedStore) -> list[str]:
    """The feeds of other nodes this node holds (newest last), at most :data:`MAX_WATCHED`."""
    rows = feeds.feeds()
    foreign = [r.feed for r in rows if not feeds.key_path(r.feed).exists()]
    return foreign[-MAX_WATCHED:]


def watchers(session: ChannelSession) -> dict[str, set[str]]:
    """Feed id -> the nodes present on the channel that watch it and may read feeds."""
    config = session.config
    found: dict[str, set[str]] = {}
    for node, data in session.members():
        if node == session.node_id or "read_feeds" not in config.permissions_of(node):
            continue
        watched = data.get("watch") if isinstance(data, dict) else None
        if isinstance(watched, list):
            for feed in watched:
                if isinstance(feed, str):
                    found.setdefault(feed, set()).add(node)
    return found


class FeedStorePoller:
    """Calls ``on_change()`` (in its own thread) each time another process commits to the
    feed store, when :meth:`poke` is called, and at least every ``idle_every`` seconds.

    It looks (SQLite's ``data_version``: one cheap query) every ``interval``
    seconds while ``busy()`` says a change is awaited (a member watches a feed of
    this node: its new messages are announced within ``interval``), else every
    ``idle_every`` seconds: an idle daemon does not wake 200 times a second.
    This process's own commits poke it either way.
    """

    def __init__(self, feeds: FeedStore, on_change: Callable[[], None],
                 interval: float = POLL_INTERVAL, idle_every: float = 0.5,
                 busy: Callable[[], bool] = lambda: True) -> None:
        self.feeds = feeds
        self.on_change = on_change
        self.interval = interval
        self.idle_every = idle_every
        self.busy = busy
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unhook: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="kachery-feed-poller",
                                        daemon=True)

    def start(self) -> FeedStorePoller:
        self._unhook = self.feeds.on_commit(self.poke)  # this process's writes
        self._thread.start()
        return self

    def poke(self) -> None:
        self._wake.set()

    def _version(self) -> int:
        with self.feeds.lock:
            return self.feeds.conn.execute("PRAGMA data_version").fetchone()[0]

    def _run(self) -> None:
        last = None
        called = 0.0
        while not self._stop.is_set():
            poked = self._wake.wait(self.interval if self.busy() else self.idle_every)
            self._wake.clear()
            try:
                version = self._version()
            except KacheryError as e:
                log.warning("cannot read the feed store: %s", e)
                time.sleep(1.0)
                continue
            now = time.monotonic()
            if version == last and not poked and now - called < self.idle_every:
                continue
            last, called = version, now
            try:
                self.on_change()
            except Exception:
                log.exception("handling a change of the feed store failed")

    def stop(self) -> None:
        if self._unhook is not None:
            self._unhook()
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)


class FeedAnnouncer:
    """The owner's side on one channel (see the module docstring).

    :meth:`check` runs on the poller's thread; bucket pushes run on a thread of
    their own, so a slow bucket never delays an inline announcement.
    """

    def __init__(self, session: ChannelSession, feeds: FeedStore,
                 bucket: Callable[[], BucketRemote],
                 events: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.session = session
        self.feeds = feeds
        self.bucket = bucket
        self.events = events
        self._announced: dict[tuple[str, str], int] = {}
        self._watched: dict[str, set[str]] = {}
        self._dirty = True
        self._push_due: dict[str, float] = {}
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="kachery-feed-push", daemon=True)
        self._worker.start()

    def watchers_changed(self) -> None:
        """Presence changed: recompute who watches what at the next :meth:`check`."""
        self._dirty = True

    def watching(self) -> bool:
        """Whether a member watches a feed of this node (or the next :meth:`check` is to
        find out): its new messages are then looked for often."""
        return self._dirty or bool(self._watched)

    def check(self) -> None:
        """Announce what is new in watched own feeds; push newly watched ones."""
        if self.session.pubsub is None:
            return
        if self._dirty:
            self._dirty = False
            try:
                now_watched = {f: n for f, n in watchers(self.session).items()
                               if self.feeds.key_path(f).exists()}
            except KacheryError as e:
                log.info("cannot list who watches feeds on %s: %s", self.session.channel.name, e)
                self._dirty = True
                return
            for feed in now_watched.keys() - self._watched.keys():
                log.info("channel %s: %d member(s) now follow feed %s...",
                         self.session.channel.name, len(now_watched[feed]), feed[:16])
                counts = dict(self.feeds.subfeeds(feed))
                for name, count in counts.items():
                    self._announced[(feed, name)] = count
                self._jobs.put(lambda f=feed, c=counts: self._push_and_announce(f, c, 0))
            for feed in self._watched.keys() - now_watched.keys():
                for key in [k for k in self._announced if k[0] == feed]:
                    del self._announced[key]
            self._watched = now_watched
        for feed in self._watched:
            for name, count in self.feeds.subfeeds(feed):
                start = self._announced.get((feed, name), 0)
                if count > start:
                    self._announce(feed, name, start, count)
                    self._announced[(feed, name)] = count
        now = time.monotonic()
        for feed, due in list(self._push_due.items()):
            if now >= due:
                del self._push_due[feed]
                self._jobs.put(lambda f=feed: self._push(f))

    def _announce(self, feed: str, name: str, start: int, end: int) -> None:
        lines = [line.decode() for line in
                 known_feed(self.feeds, feed).subfeed(name).export_lines(start, end)]
        size = sum(len(line) + 3 for line in lines)
        if size <= INLINE_MAX:
            self._publish({"feed": feed, "subfeed": name, "start": start, "count": len(lines),
                           "lines": lines})
        else:
            self._jobs.put(lambda: self._push_and_announce(feed, {name: end}, start))
        self._push_due[feed] = time.monotonic() + BUCKET_DELAY

    def _push(self, feed: str) -> None:
        try:
            self.bucket().push_feed(self.feeds, feed)
        except KacheryError as e:
            log.warning("could not push feed %s... to the bucket of %s: %s", feed[:16],
                        self.session.channel.name, e)

    def _push_and_announce(self, feed: str, counts: dict[str, int], start: int) -> None:
        self._push(feed)
        for name, count in counts.items():
            self._publish({"feed": feed, "subfeed": name, "start": start,
                           "count": count - start, "bucket": True})

    def _publish(self, body: dict[str, Any]) -> None:
        try:
            self.session.publish("feed_messages", body)
        except KacheryError as e:  # the follower fills the gap from the bucket later
            log.info("could not announce feed %s...: %s", body["feed"][:16], e)
            return
        if self.events is not None:
            self.events({"type": "feed", "channel": self.session.channel.name,
                         "feed": body["feed"], "subfeed": body["subfeed"],
                         "start": body["start"], "count": body["count"], "sent": True})

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("pushing a feed to the bucket failed")

    def close(self) -> None:
        self._jobs.put(None)


class FeedFollower:
    """The follower's side: imports announced messages of feeds this node follows."""

    def __init__(self, feeds: FeedStore, wanted: Callable[[str], bool],
                 events: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.feeds = feeds
        self.wanted = wanted
        self.events = events
        self._jobs: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="kachery-feed-import",
                                        daemon=True)
        self._thread.start()

    def attach(self, session: ChannelSession, bucket: Callable[[], BucketRemote]) -> None:
        """Import what ``session``'s members announce (through ``bucket()`` when needed)."""
        session.on("feed_messages", lambda m: self._jobs.put((m, session, bucket, 0)))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            msg, session, bucket, attempt = job
            try:
                self._take(msg, session, bucket, attempt)
            except Exception:
                log.exception("importing feed messages failed")

    def _take(self, msg: ChannelMessage, session: ChannelSession,
              bucket: Callable[[], BucketRemote], attempt: int) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        feed, name, start = body.get("feed"), body.get("subfeed"), body.get("start")
        if not (isinstance(feed, str) and isinstance(name, str) and type(start) is int):
            log.warning("ignored malformed feed_messages from %s...", msg.sender[:16])
            return
        if not self.wanted(feed):
            return
        lines = body.get("lines")
        have = self.feeds.count(feed, name)
        count = body.get("count") if type(body.get("count")) is int else 0
        if have >= start + count and count > 0:
            return  # nothing new
        try:
            if not isinstance(lines, list) or start > have:
                bucket().pull_feed(self.feeds, feed)
            if isinstance(lines, list) and start <= self.feeds.count(feed, name):
                import_lines(self.feeds, [line for line in lines if isinstance(line, str)])
        except FeedVerificationError as e:
            log.warning("refused feed messages from %s... on %s: %s", msg.sender[:16],
                        session.channel.name, e)
            return
        except KacheryError as e:
            log.info("could not fetch feed %s... from the bucket of %s: %s", feed[:16],
                     session.channel.name, e)
        got = self.feeds.count(feed, name)
        if got < start + count:
            if attempt < len(GAP_RETRIES):
                delay = GAP_RETRIES[attempt]
                timer = threading.Timer(
                    delay, lambda: self._jobs.put((msg, session, bucket, attempt + 1)))
                timer.daemon = True
                timer.start()
            else:
                log.warning("feed %s... subfeed %s: messages %d..%d announced by %s... are "
                            "not in the bucket of %s yet; waiting for the next announcement",
                            feed[:16], name, got, start + count - 1, msg.sender[:16],
                            session.channel.name)
            return
        if self.events is not None:
            self.events({"type": "feed", "channel": session.channel.name, "feed": feed,
                         "subfeed": name, "start": start, "count": count, "received": True})

    def close(self) -> None:
        self._jobs.put(None)
