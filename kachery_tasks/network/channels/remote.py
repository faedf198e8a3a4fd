"""A channel as a remote: ``channel:NAME`` (a channel this node joined).

Everything goes through the channel's bucket first, as with a
:class:`~kachery_tasks.remotes.bucket.BucketRemote` of that bucket; what the
bucket lacks is asked of the members:

* **content**: ``request_file`` to the members whose daemon is online and may
  upload (:mod:`.files`); the answer brings small content inline, larger
  content through the bucket (verified either way);
* **results**: records are read from the channel's bucket, and a record is
  used only when its signer is this node or a member allowed to
  ``process_tasks`` (:meth:`ChannelRemote.trusts_result_signer`): anyone able
  to write to the bucket cannot plant results;
* **feeds**: pushed and pulled through the bucket; a feed that is nowhere to
  be found is asked for live (this process enters presence watching it, and
  the owner's daemon pushes it to the bucket, see :mod:`.livefeeds`); once
  held, the node's daemon follows it.

The remote connects to the channel's pub/sub the first time it must ask the
members (a session that does not enter presence, so others do not count it
as a member that answers), and keeps the connection for the rest of the
process. One remote per URL, node directory and process
(:func:`kachery_tasks.remotes.open_remote`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ...errors import (
    ChannelError,
    ChannelPermissionError,
    ContentNotFoundError,
    InvalidURIError,
    InvalidValueError,
    KacheryError,
)
from ...remotes import open_remote
from ...remotes.base import Remote
from ...remotes.bucket import BucketRemote
from .config import ChannelConfig
from .files import DEFAULT_TIMEOUT, ask_for_file, content_sha256
from .messages import ChannelMessage
from .requests import Asker
from .session import ChannelSession, refresh_config
from .store import ChannelStore, JoinedChannel

if TYPE_CHECKING:
    from ...feeds.bucket import FeedSyncReport
    from ...feeds.store import FeedStore
    from ...nodes import Node
    from ...storage.local import LocalStore
    from ...storage.sync import UploadReport

log = logging.getLogger("kachery_tasks.network.channels")

SCHEME = "channel:"

FEED_ASK_TIMEOUT = 3.0
"""Seconds a process waits for the owner of a feed found nowhere to push it."""

CONFIG_REFRESH = 30.0
"""Seconds between two looks for a newer config in the bucket, while not connected."""

SESSION_OPTIONS = {"request_timeout": 10.0, "connect_timeout": 10.0, "retry_interval": 1.0}


def channel_url(channel: JoinedChannel) -> str:
    """The remote URL of a joined channel: ``channel:<owner[:16]>-<name>``."""
    return f"{SCHEME}{channel.key}"


class ChannelRemote(Remote):
    """The channel ``channel:NAME`` of a node (see the module docstring)."""

    per_node = True

    def __init__(self, url: str, node: Node, *, timeout: float = DEFAULT_TIMEOUT,
                 **session_options: Any) -> None:
        name = url[len(SCHEME):] if url.startswith(SCHEME) else ""
        if not name:
            raise InvalidValueError(f"a channel remote is channel:NAME, not {url!r}")
        self.url = url
        self.name = name
        self.node = node
        self.timeout = timeout
        self._options = {**SESSION_OPTIONS, **session_options}
        self._lock = threading.Lock()
        self._session: ChannelSession | None = None
        self._asker: Asker | None = None
        self._pid = os.getpid()
        self._closing_registered = False
        self._joined: JoinedChannel | None = None
        self._config: tuple[int | None, ChannelConfig] | None = None
        self._refreshed = -CONFIG_REFRESH

    # --------------------------------------------------------------- parts
    @property
    def channel(self) -> JoinedChannel:
        """The joined channel (ChannelNotFoundError once the node left it)."""
        joined = self._joined
        if joined is None or not joined.path.exists():
            joined = self._joined = ChannelStore(self.node.dir).find(self.name)
        return joined

    def config(self) -> ChannelConfig:
        """The newest config this node trusts (the session's, once connected).

        Without a session, a newer version in the bucket is adopted first, at most
        every :data:`CONFIG_REFRESH` seconds (a running daemon adopts notices at once).
        """
        session = self._session
        if session is not None and os.getpid() == self._pid:
            return session.config
        channel = self.channel
        if time.monotonic() >= self._refreshed + CONFIG_REFRESH:
            self._refreshed = time.monotonic()
            try:
                refresh_config(channel)
            except KacheryError as e:
                log.info("%s: could not read the channel's config from its bucket: %s",
                         self.url, e)
        path = channel.path / "config.json"
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is None or self._config is None or self._config[0] != stamp:
            config = channel.trusted_config()
            if config is None:
                raise ChannelError(f"this node trusts no config of channel {self.name} yet: "
                                   f"run 'kachery-tasks channel status {self.name}'")
            self._config = (stamp, config)
        return self._config[1]

    @property
    def bucket(self) -> BucketRemote:
        """The channel's bucket (its config's, which may change between versions)."""
        remote = open_remote(self.config().bucket)
        assert isinstance(remote, BucketRemote)
        return remote

    def session(self) -> tuple[ChannelSession, Asker]:
        """This process's connection to the channel (made on first use)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's threads are not here
                self._session, self._asker, self._pid = None, None, os.getpid()
            session = self._session
            if session is not None and session.failed:
                session.close()
                session = self._session = None
            if session is None:
                session = ChannelSession(self.channel, self.node.key, presence=False,
                                         **self._options).start()
                self._session, self._asker = session, Asker(session)
                if not self._closing_registered:
                    atexit.register(self._close_at_exit)
                    self._closing_registered = True
            assert self._asker is not None
            return session, self._asker

    # ------------------------------------------------------------- content
    def has_content(self, sha256: str) -> bool:
        bucket = self._bucket_or_none()
        return bucket is not None and bucket.has_content(sha256)

    def fetch_content(self, store: LocalStore, uri: str, progress: bool | None = None) -> str:
        try:
            bucket = self.bucket
        except ChannelError as e:
            raise ContentNotFoundError(f"{uri} cannot be asked of {self.url}: {e}") from e
        try:
            return bucket.fetch_content(store, uri, progress=progress)
        except ContentNotFoundError:
            pass
        try:
            content_sha256(uri)
        except InvalidURIError as e:
            raise ContentNotFoundError(str(e)) from None
        channel_name = self.channel.name
        try:
            _, asker = self.session()
        except KacheryError as e:  # not a member, no broker reachable, ...
            raise ContentNotFoundError(
                f"{uri} is not in the bucket of channel {channel_name}, and its members cannot "
                f"be asked: {e}") from e
        try:
            return ask_for_file(asker, bucket, store, uri, timeout=self.timeout,
                                progress=progress)
        except ChannelPermissionError as e:
            raise ContentNotFoundError(
                f"{uri} is not in the bucket of channel {channel_name}, and this node may not "
                f"ask its members: {e}") from e

    def offer_content(
        self, store: LocalStore, uri: str, progress: bool | None = None, repair: bool = False
    ) -> UploadReport:
        return self.bucket.offer_content(store, uri, progress=progress, repair=repair)

    def offer_data(self, store: LocalStore, uri: str, data: bytes) -> UploadReport | None:
        return self.bucket.offer_data(store, uri, data)

    def fetch_data(self, uri: str, max_size: int) -> bytes | None:
        bucket = self._bucket_or_none()
        return None if bucket is None else bucket.fetch_data(uri, max_size)

    def fetch_members(self, store: LocalStore, uri: str, progress: bool | None = None) -> int:
        try:
            return self.bucket.fetch_members(store, uri, progress=progress)
        except ContentNotFoundError:
            return super().fetch_members(store, uri, progress=progress)  # asks for each

    # ------------------------------------------------------------- results
    def has_result_record(self, task_id: str) -> bool:
        return self.bucket.has_result_record(task_id)

    def trusts_result_signer(self, signer: str) -> bool:
        """True for this node and the members allowed to process tasks, nobody else."""
        if signer == self.node.id:
            return True
        try:
            return "process_tasks" in self.config().permissions_of(signer)
        except KacheryError:
            return False

    def get_result_records(self, task_ids: Iterable[str]) -> dict[str, bytes]:
        bucket = self._bucket_or_none()
        return {} if bucket is None else bucket.get_result_records(task_ids)

    def put_result_record(self, task_id: str, data: bytes,
                          replaceable: Callable[[bytes], bool] | None = None) -> bool:
        return self.bucket.put_result_record(task_id, data, replaceable)

    # --------------------------------------------------------------- feeds
    def pull_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport | None:
        bucket = self._bucket_or_none()
        if bucket is None:
            return None
        report = bucket.pull_feed(feeds, feed_id)
        if feeds.get_feed(feed_id) is None and self._ask_for_feed(feed_id):
            report.add(bucket.pull_feed(feeds, feed_id))
        return report

    def _ask_for_feed(self, feed_id: str) -> bool:
        """Ask the members live for a feed found nowhere; True once its owner pushed it."""
        try:
            session, _ = self.session()
            me = session.node_id
            if "read_feeds" not in session.config.permissions_of(me):
                return False
            if not any(n != me for n, _ in session.members()):
                return False
            pushed = threading.Event()

            def announced(msg: ChannelMessage) -> None:
                if isinstance(msg.body, dict) and msg.body.get("feed") == feed_id \
                        and msg.body.get("bucket"):
                    pushed.set()

            session.on("feed_messages", announced)
            try:
                session.present(watch=[feed_id])
                found = pushed.wait(FEED_ASK_TIMEOUT)
            finally:
                session.off("feed_messages", announced)
                session.absent()
            return found
        except KacheryError as e:
            log.info("could not ask channel %s for feed %s...: %s", self.name, feed_id[:16], e)
            return False

    def push_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport | None:
        return self.bucket.push_feed(feeds, feed_id)

    def feed_ids(self) -> list[str]:
        bucket = self._bucket_or_none()
        return [] if bucket is None else bucket.feed_ids()

    # ---------------------------------------------------------------- rest
    def _bucket_or_none(self) -> BucketRemote | None:
        """The bucket, or None (logged) when the channel was left or has no config."""
        try:
            return self.bucket
        except ChannelError as e:  # ChannelNotFoundError included
            log.info("%s: %s", self.url, e)
            return None

    def _close_at_exit(self) -> None:
        """Say goodbye to the broker if it is there; a process exiting never waits for one
        that went away (the broker notices the dropped connection by itself)."""
        session = self._session
        if session is not None and session.connected:
            self.close()

    def close(self) -> None:
        with self._lock:
            session, self._session, self._asker = self._session, None, None
        if session is not None and self._pid == os.getpid():
            session.close()
