"""Feeds and subfeeds as Python objects: append, read, count, watch, replay, snapshot.

A :class:`Feed` is a handle on one feed id (the owner's public key); its
:class:`Subfeed` objects are the hash-chained logs. Only a node holding the
private key (``<node>/feeds/keys/<feed id>.key``, mode 0600) can append; any
node that has the messages can read them, and every read checks them
(see :mod:`.messages` for the invariant and the ``verify`` modes).

**Watching** polls the subfeed's length, an O(log n) indexed query of a few
microseconds, every ``poll_interval`` (5 ms by default): a watcher in another
process of the machine sees a message a few milliseconds after its append is
committed, and an idle watcher costs well under 1% of a core. A Feed's
methods without a subfeed name act on its default subfeed, ``"main"``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import (
    ConfigError,
    FeedNotFoundError,
    FeedPermissionError,
    FeedVerificationError,
    InvalidURIError,
    InvalidValueError,
)
from ..keys import KeyPair
from . import parallel
from .messages import (
    MAX_SEQ,
    TOO_DEEP_TO_DECODE,
    ChainReader,
    Message,
    decode_json,
    encode_and_decode_body,
    sign_message,
    stored_message,
)
from .store import FeedStore, Row, get_feed_store
from .uris import check_subfeed_name, format_feed_uri, is_feed_id, parse_feed_uri

if TYPE_CHECKING:
    from .store import FeedRow

DEFAULT_SUBFEED = "main"
WATCH_POLL_INTERVAL = 0.005
READ_PAGE_ROWS = 1000
READ_PAGE_BYTES = 16 << 20

Verify = Literal["chain", "full", "none"]
VERIFY_MODES = ("chain", "full", "none")
S = TypeVar("S")


@dataclass(frozen=True)
class FeedInfo:
    """A summary of one feed this node knows."""

    uri: str
    feed_id: str
    label: str | None
    writable: bool
    created: float
    subfeeds: dict[str, int]

    @property
    def messages(self) -> int:
        """Total number of messages over all subfeeds."""
        return sum(self.subfeeds.values())

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (what ``feed ls/info --json`` print)."""
        return {"uri": self.uri, "label": self.label, "writable": self.writable,
                "created": self.created, "subfeeds": self.subfeeds}


class Feed:
    """A feed: an Ed25519 public key and its named subfeeds.

    Get one with :func:`create_feed` or :func:`load_feed`; it is writable when
    this node holds the private key.
    """

    def __init__(self, feed_id: str, store: FeedStore, label: str | None = None) -> None:
        if not is_feed_id(feed_id):
            raise InvalidValueError(f"a feed id is 64 lowercase hex digits, not {feed_id!r}")
        self.id = feed_id
        self.label = label
        self._store_ = store
        self._key: KeyPair | None = None
        self._key_lock = threading.Lock()

    @property
    def _store(self) -> FeedStore:
        s = self._store_
        if s.pid != os.getpid():  # forked: a SQLite connection must not cross a fork
            s = self._store_ = get_feed_store(s.node)
        return s

    @property
    def uri(self) -> str:
        """``feed://<feed id>``."""
        return format_feed_uri(self.id)

    @property
    def writable(self) -> bool:
        """True when this node holds the feed's private key (it can append)."""
        return self._key is not None or self._store.key_path(self.id).exists()

    def __repr__(self) -> str:
        label = f" {self.label!r}" if self.label else ""
        return f"<Feed {self.uri}{label}{'' if self.writable else ' read-only'}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Feed) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def subfeed(self, name: str) -> Subfeed:
        """The subfeed called ``name`` (it exists once it has a message)."""
        return Subfeed(self, check_subfeed_name(name))

    def subfeeds(self) -> dict[str, int]:
        """Name -> number of messages, for every subfeed that has messages."""
        return dict(self._store.subfeeds(self.id))

    def info(self, row: FeedRow | None = None) -> FeedInfo:
        """A summary: URI, label, writability and subfeed sizes (``row``: if already read)."""
        row = row or self._store.get_feed(self.id)
        return FeedInfo(
            uri=self.uri,
            feed_id=self.id,
            label=row.label if row else self.label,
            writable=self.writable,
            created=row.created if row else 0.0,
            subfeeds=self.subfeeds(),
        )

    def verify(self, every_signature: bool = True) -> dict[str, int]:
        """Re-check every stored message of every subfeed: signature, seq, prev, hash.

        Returns name -> number of messages checked; raises FeedVerificationError
        naming the first message that fails. ``every_signature=False`` checks
        the chain and one signature per page instead (about 15x faster, and as
        safe against anyone without the key; see :mod:`.messages`).
        """
        return {name: self.subfeed(name).verify(every_signature) for name in self.subfeeds()}

    def export(self, out: Any) -> int:
        """Write every subfeed as JSON lines to ``out`` (a path or binary file)."""
        from .lines import write_lines

        return write_lines(self.export_lines(), out)

    def export_lines(self) -> Iterator[bytes]:
        """The signed bytes of every message of every subfeed, subfeed by subfeed in name
        order, each from seq 0 (checked as they are read, ``verify="chain"``)."""
        for name in self.subfeeds():
            yield from self.subfeed(name).export_lines()

    def key(self) -> KeyPair:
        """The feed's key pair; FeedPermissionError when this node lacks the private key."""
        if self._key is None:
            with self._key_lock:
                if self._key is None:
                    self._key = _load_key(self._store, self.id)
        return self._key

    # The default subfeed, for feeds that need only one log.
    def append(self, body: Any) -> Message:
        """Append ``body`` to the default subfeed ("main")."""
        return self.subfeed(DEFAULT_SUBFEED).append(body)

    def append_many(self, bodies: Iterable[Any]) -> list[Message]:
        """Append several bodies to the default subfeed, atomically."""
        return self.subfeed(DEFAULT_SUBFEED).append_many(bodies)

    def read(
        self, start: int = 0, end: int | None = None, verify: Verify = "chain"
    ) -> Iterator[Message]:
        """Read the default subfeed (see :meth:`Subfeed.read`)."""
        return self.subfeed(DEFAULT_SUBFEED).read(start, end, verify)

    def count(self) -> int:
        """Number of messages in the default subfeed."""
        return self.subfeed(DEFAULT_SUBFEED).count()

    def watch(self, start: int | None = None, timeout: float | None = 5.0) -> list[Message]:
        """Wait for messages in the default subfeed (see :meth:`Subfeed.watch`)."""
        return self.subfeed(DEFAULT_SUBFEED).watch(start, timeout)

    async def awatch(self, start: int | None = None, timeout: float | None = 5.0) -> list[Message]:
        """Async form of :meth:`watch` for the default subfeed."""
        return await self.subfeed(DEFAULT_SUBFEED).awatch(start, timeout)

    def replay(self, reducer: Callable[[S, Message], S], initial: S) -> S:
        """Fold the default subfeed (see :meth:`Subfeed.replay`)."""
        return self.subfeed(DEFAULT_SUBFEED).replay(reducer, initial)

    def snapshot(self) -> str:
        """Store the default subfeed in the content store (see :meth:`Subfeed.snapshot`)."""
        return self.subfeed(DEFAULT_SUBFEED).snapshot()


class Subfeed:
    """One hash-chained, append-only log of a feed."""

    def __init__(self, feed: Feed, name: str) -> None:
        self.feed = feed
        self.name = name

    @property
    def uri(self) -> str:
        """``feed://<feed id>/<name>``."""
        return format_feed_uri(self.feed.id, self.name)

    def __repr__(self) -> str:
        return f"<Subfeed {self.uri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subfeed) and (other.feed.id, other.name) == (
            self.feed.id,
            self.name,
        )

    def __hash__(self) -> int:
        return hash((self.feed.id, self.name))

    # --------------------------------------------------------------- writing
    def append(self, body: Any) -> Message:
        """Sign ``body`` as the next message and store it; return the message.

        ``body`` is any JSON value up to 1 MiB of canonical JSON
        (InvalidValueError otherwise). FeedPermissionError when this node does
        not hold the feed's private key.
        """
        body_json, decoded = encode_and_decode_body(body)
        key = self.feed.key()
        name = self.name

        def build(seq: int, prev: str | None) -> tuple:
            return (sign_message(key, name, seq, prev, time.time_ns() // 1_000_000, body_json),)

        (m,) = self.feed._store.append(self.feed.id, name, build)
        return Message(m.feed, name, m.seq, m.prev, m.time_ms, decoded, m.signature, m.hash)

    def append_many(self, bodies: Iterable[Any]) -> list[Message]:
        """Append several bodies in one transaction: all of them or, on error, none."""
        pairs = [encode_and_decode_body(b) for b in bodies]
        if not pairs:
            return []
        key = self.feed.key()
        name = self.name

        def build(seq: int, prev: str | None) -> list:
            t = time.time_ns() // 1_000_000
            out = []
            for i, (body_json, _) in enumerate(pairs):
                m = sign_message(key, name, seq + i, prev, t, body_json)
                prev = m.hash
                out.append(m)
            return out

        signed = self.feed._store.append(self.feed.id, name, build)
        return [
            Message(m.feed, name, m.seq, m.prev, m.time_ms, body, m.signature, m.hash)
            for m, (_, body) in zip(signed, pairs)
        ]

    # --------------------------------------------------------------- reading
    def count(self) -> int:
        """Number of messages (the next seq); O(log n) whatever the length of the log."""
        return self.feed._store.count(self.feed.id, self.name)

    def read(
        self, start: int = 0, end: int | None = None, verify: Verify = "chain"
    ) -> Iterator[Message]:
        """Iterate over messages ``start`` <= seq < ``end`` (default: to the current end).

        ``verify="chain"`` (default) checks every message's hash, seq and link
        to its predecessor and, for each page of up to 1000 messages, the
        signature of the page's last message, which through the links vouches
        for the whole page. ``"full"`` also checks every signature (5-10x
        slower; long reads use worker processes, see :mod:`.parallel`);
        ``"none"`` only decodes. A damaged message raises
        FeedVerificationError naming its seq, before it is returned.
        """
        _check_range(start, end)
        if verify not in VERIFY_MODES:
            raise InvalidValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
        return (m for m, _ in self._verified_rows(start, end, verify))

    def _verified_rows(
        self, start: int, end: int | None, verify: str
    ) -> Iterator[tuple[Message, bytes]]:
        """(message, signed bytes) for seq in [start, end), checked page by page."""
        store, feed, name = self.feed._store, self.feed.id, self.name
        prev = None
        if start > 0:
            prev = store.hash_at(feed, name, start - 1)
        reader = ChainReader(feed, name, start, prev, every_signature=verify == "full")
        if start > 0 and prev is None:
            if store.count(feed, name) <= start:
                return  # nothing at or after start yet
            raise reader.error(start - 1, "message is missing")
        if verify == "full":
            last = store.count(feed, name) if end is None else end
            pool = None
            if last - start >= parallel.MIN_MESSAGES:
                pool = parallel.Pool.acquire(parallel.worker_count())
            if pool is not None:
                try:
                    yield from self._rows_checked_in_parallel(reader, start, end, pool)
                finally:
                    pool.release()
                return
        pos = start
        while end is None or pos < end:
            rows = store.rows(feed, name, pos, end, READ_PAGE_ROWS, READ_PAGE_BYTES)
            if not rows:
                return
            if verify == "none":
                page = [(_decode(feed, name, row), row[2]) for row in rows]
            else:
                page_prev = reader.prev
                try:
                    page = [(reader.check(*row), row[2]) for row in rows]
                    reader.seal()
                except FeedVerificationError as e:
                    raise _locate(feed, name, pos, page_prev, rows) or e from None
            yield from page
            pos = rows[-1][0] + 1

    def _rows_checked_in_parallel(
        self, reader: ChainReader, start: int, end: int | None, pool: parallel.Pool
    ) -> Iterator[tuple[Message, bytes]]:
        """Like the full check, with each page's signatures checked by worker processes.

        While the workers check page n, this process decodes and chain-checks
        page n+1; page n is handed out only once all its signatures passed.
        A failure is raised after every message before it was handed out.
        """
        store, feed, name = self.feed._store, self.feed.id, self.name
        reader.defer_signatures()
        # Pages sent to the workers and not yet handed out, oldest first (at most two).
        queue: list[tuple[list[tuple[Message, bytes]], parallel.Batch]] = []
        failure: FeedVerificationError | None = None
        pos = start
        try:
            while failure is None and (end is None or pos < end):
                rows = store.rows(feed, name, pos, end, READ_PAGE_ROWS, READ_PAGE_BYTES)
                if not rows:
                    break
                page: list[tuple[Message, bytes]] = []
                try:
                    for row in rows:
                        page.append((reader.check(*row), row[2]))
                except FeedVerificationError as e:
                    failure = e  # raised once the messages before it are handed out
                items, reader.deferred = reader.deferred or [], []
                # queued behind the page being checked, so the workers never wait
                queue.append((page, pool.submit(feed, items)))
                if len(queue) > 1:
                    yield from _passed(reader, *queue[0])
                    queue.pop(0)
                pos = rows[-1][0] + 1
            while queue:
                yield from _passed(reader, *queue[0])
                queue.pop(0)
        finally:
            for _, batch in queue:
                batch.first_bad()  # read every answer the workers owe before the next read
        if failure is not None:
            raise failure

    def watch(
        self,
        start: int | None = None,
        timeout: float | None = 5.0,
        max_messages: int = 10_000,
        poll_interval: float = WATCH_POLL_INTERVAL,
    ) -> list[Message]:
        """Block until the subfeed has messages at or after ``start``, then return them.

        ``start`` defaults to the current count (wait for the next message);
        returns at most ``max_messages`` messages, or ``[]`` when ``timeout``
        seconds pass first (``None``: wait for ever).
        """
        waits = self._waits(start, timeout, max_messages, poll_interval)
        try:
            while True:
                time.sleep(next(waits))
        except StopIteration as done:
            return done.value

    async def awatch(
        self,
        start: int | None = None,
        timeout: float | None = 5.0,
        max_messages: int = 10_000,
        poll_interval: float = WATCH_POLL_INTERVAL,
    ) -> list[Message]:
        """The ``async`` form of :meth:`watch`: waits without blocking the event loop."""
        import asyncio  # here, not at import time: it costs ~20 ms

        waits = self._waits(start, timeout, max_messages, poll_interval)
        try:
            while True:
                await asyncio.sleep(next(waits))
        except StopIteration as done:
            return done.value

    def _waits(
        self, start: int | None, timeout: float | None, max_messages: int, poll_interval: float
    ) -> Generator[float, None, list[Message]]:
        """The waiting of watch/awatch: yields how long to sleep, returns the messages."""
        start = self.count() if start is None else start
        _check_watch(start, timeout, max_messages, poll_interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            n = self.count()
            if n > start:
                return list(self.read(start, min(n, start + max_messages)))
            if deadline is None:
                yield poll_interval
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            yield min(poll_interval, remaining)

    def follow(
        self, start: int = 0, poll_interval: float = WATCH_POLL_INTERVAL
    ) -> Iterator[Message]:
        """Yield every message from ``start`` on, waiting for new ones for ever."""
        pos = start
        while True:
            for m in self.watch(pos, timeout=None, poll_interval=poll_interval):
                yield m
                pos = m.seq + 1

    def replay(self, reducer: Callable[[S, Message], S], initial: S) -> S:
        """Fold the whole log: ``state = reducer(state, message)`` from seq 0 on.

        The log is the record of changes; replaying it reconstructs the state
        it records, on any node that has the messages.
        """
        state = initial
        for m in self.read(0):
            state = reducer(state, m)
        return state

    def snapshot(self) -> str:
        """Store the subfeed as it is now (JSON lines, the export format) in the
        content store and return its ``sha256://`` URI: an immutable copy that
        :func:`~kachery_tasks.feeds.import_feed` can load anywhere."""
        from ..storage.local import get_store

        data = b"".join(line + b"\n" for line in self.export_lines())
        label = f"feed-{self.feed.id[:12]}-{self.name}.jsonl"
        return get_store(self.feed._store.node).store_bytes(data, label=label)

    def export_lines(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The signed bytes of each message ``start`` <= seq < ``end`` (checked as by ``read``)."""
        _check_range(start, end)
        return (data for _, data in self._verified_rows(start, end, "chain"))

    def verify(self, every_signature: bool = True) -> int:
        """Re-check every message from seq 0 (signatures included); return how many.

        FeedVerificationError names the first message that fails.
        ``every_signature=False``: see :meth:`Feed.verify`.
        """
        n = 0
        for _ in self._verified_rows(0, None, "full" if every_signature else "chain"):
            n += 1
        return n


# ------------------------------------------------------------------ helpers
def _decode(feed: str, name: str, row: Row) -> Message:
    seq, hash_hex, data = row
    try:
        return stored_message(decode_json(data), hash_hex)
    except (ValueError, KeyError, TypeError):
        reason = "stored bytes are not a feed message"
    except RecursionError:
        reason = TOO_DEEP_TO_DECODE
    raise ChainReader(feed, name, seq, None, False).error(seq, reason)


def _passed(
    reader: ChainReader, page: list[tuple[Message, bytes]], batch: parallel.Batch
) -> Iterator[tuple[Message, bytes]]:
    """The messages of a page whose signatures the workers checked, once they passed."""
    bad = batch.first_bad()
    if bad is None:
        yield from page
        return
    yield from (m for m in page if m[0].seq < bad)
    raise reader.bad_signature(bad)


def _locate(
    feed: str, name: str, start: int, prev: str | None, rows: list[Row]
) -> FeedVerificationError | None:
    """The first failure in a page when every signature is checked (names the culprit)."""
    reader = ChainReader(feed, name, start, prev, every_signature=True)
    try:
        for row in rows:
            reader.check(*row)
    except FeedVerificationError as e:
        return e
    return None


def _check_range(start: int, end: int | None) -> None:
    if not isinstance(start, int) or not 0 <= start <= MAX_SEQ:
        raise InvalidValueError(f"start must be a whole number >= 0, not {start!r}")
    if end is not None and (not isinstance(end, int) or not start <= end <= MAX_SEQ):
        raise InvalidValueError(f"end must be a whole number >= start ({start}), not {end!r}")


def _check_watch(start: int, timeout: float | None, max_messages: int, poll: float) -> None:
    _check_range(start, None)
    if timeout is not None and timeout < 0:
        raise InvalidValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    if max_messages < 1:
        raise InvalidValueError(f"max_messages must be at least 1, not {max_messages!r}")
    if not 0 < poll <= 10:
        raise InvalidValueError(f"poll_interval must be in (0, 10] seconds, not {poll!r}")


def _load_key(store: FeedStore, feed_id: str) -> KeyPair:
    path = store.key_path(feed_id)
    if not path.exists():
        raise FeedPermissionError(
            f"this node has no private key for feed://{feed_id} (looked for {path}), so it "
            "can read the feed but not append to it; append on the node that created it"
        )
    key = KeyPair.load(path)  # refuses a key file other users can read
    if key.public_hex != feed_id:
        raise ConfigError(
            f"key file {path} holds the key of feed://{key.public_hex}, not of this feed; "
            "restore the right file or remove it"
        )
    return key


# ------------------------------------------------------------- public API
def _feed_from_row(store: FeedStore, feed_id: str, row: FeedRow | None) -> Feed:
    return Feed(feed_id, store, row.label if row else None)


def create_feed(store: FeedStore, label: str | None = None) -> Feed:
    """Create a feed in ``store``: a new Ed25519 key pair whose private key stays there.

    ``label`` is a local name shown by ``list_feeds``; it is not part of the
    feed's identity and does not travel with exports.
    """
    if label is not None and not isinstance(label, str):
        raise InvalidValueError(f"a feed label is a string, not {type(label).__name__}")
    key = KeyPair.generate()
    key.save(store.key_path(key.public_hex))  # atomic, mode 0600
    store.add_feed(key.public_hex, label)
    feed = Feed(key.public_hex, store, label)
    feed._key = key
    return feed


def load_feed(store: FeedStore, uri: str) -> Feed:
    """The feed ``feed://<id>`` if ``store`` knows it (created there or imported).

    The feed is writable only where its private key is. FeedNotFoundError for
    an unknown feed; InvalidURIError for a malformed URI or a subfeed URI
    (use :func:`load_subfeed`).
    """
    parsed = parse_feed_uri(uri)
    if parsed.subfeed is not None:
        raise InvalidURIError(
            f"{uri!r} names a subfeed; pass feed://{parsed.feed_id} to load_feed, or use "
            "load_subfeed for the subfeed"
        )
    return known_feed(store, parsed.feed_id)


def load_subfeed(store: FeedStore, uri: str) -> Subfeed:
    """The subfeed ``feed://<id>/<name>`` (``feed://<id>`` means its "main" subfeed)."""
    parsed = parse_feed_uri(uri)
    return known_feed(store, parsed.feed_id).subfeed(parsed.subfeed or DEFAULT_SUBFEED)


def known_feed(store: FeedStore, feed_id: str) -> Feed:
    """The copy of a feed ``store`` holds, as it is (no remote is consulted)."""
    row = store.get_feed(feed_id)
    if row is None:
        if not store.key_path(feed_id).exists():
            raise FeedNotFoundError(
                f"feed://{feed_id} is not known to this node ({store.node.path}); import it "
                "with 'kachery-tasks feed import FILE' or create feeds with create_feed"
            )
        store.add_feed(feed_id)  # key saved but the row was lost to a crash
    return _feed_from_row(store, feed_id, row)


def list_feeds(store: FeedStore) -> list[FeedInfo]:
    """Every feed ``store`` knows, in the order it learnt of them."""
    try:
        key_files = list(store.keys_dir.glob("*.key"))
    except OSError:  # a key directory this user may not list
        key_files = []
    known = {r.feed for r in store.feeds()}
    for path in key_files:
        if is_feed_id(path.stem) and path.stem not in known:
            store.add_feed(path.stem)  # its key was saved but a crash lost the row
    return [_feed_from_row(store, r.feed, r).info(r) for r in store.feeds()]
