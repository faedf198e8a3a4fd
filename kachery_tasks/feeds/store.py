"""The node's feed database: ``<node>/feeds/feeds.db`` (SQLite, WAL).

Tables::

    feeds(feed, label, created)          feeds this node knows (created or imported)
    subfeeds(id, feed, name)             one small integer per (feed, subfeed)
    messages(sub, seq, hash, data)       signed bytes; primary key (sub, seq)

``messages`` is a WITHOUT ROWID table clustered on (sub, seq), i.e. the index
on (feed, subfeed, seq): the head of a subfeed, its length and any range of
it are found in O(log n), whatever the length of the log.

**Invariants.** For every subfeed the stored seqs are exactly 0..n-1 and each
message's ``prev`` is the stored hash of its predecessor. Every write (one
append, one ``append_many``, one import batch) is a single ``BEGIN IMMEDIATE``
transaction that reads the head and writes after it, so appends from several
processes of the node are serialised and the chain never forks; and a crash
at any moment leaves the database as it was before or after that
transaction, never in between (SQLite's atomic commit; ``synchronous=NORMAL``
in WAL mode may lose the last commits on power loss, never half of one).
Rows are never updated or deleted.

One :class:`FeedStore` per node directory and process; its connection is
shared by the threads of the process under a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import NodeDir
from ..db import connect, transaction
from ..errors import FeedVerificationError
from ..fsutil import ensure_dir
from ..listeners import Listeners
from .messages import MAX_SEQ, ChainReader, SignedMessage, verification_error

SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    feed TEXT PRIMARY KEY,
    label TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subfeeds (
    id INTEGER PRIMARY KEY,
    feed TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (feed, name)
);
CREATE TABLE IF NOT EXISTS messages (
    sub INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (sub, seq)
) WITHOUT ROWID;
"""

DAMAGED_ADVICE = (
    "move it aside with its -wal and -shm files (the private keys in feeds/keys/ are not in "
    "it) and import the feeds again from exports, snapshots or the bucket"
)

Row = tuple[int, str, bytes]
"""A stored message: (seq, hash hex, signed bytes)."""


BuildFn = Callable[[int, "str | None"], Sequence[SignedMessage]]


_INSERT_MESSAGE = "INSERT INTO messages (sub, seq, hash, data) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class FeedRow:
    """What the database records about a feed."""

    feed: str
    label: str | None
    created: float


@dataclass
class ExtendResult:
    """Outcome of :meth:`FeedStore.extend`: messages added and already present."""

    added: int = 0
    present: int = 0


class FeedStore:
    """Messages of every feed the node knows, in one SQLite database."""

    def __init__(self, node: NodeDir) -> None:
        self.node = node
        self.root = node.ensure("feeds")
        self.keys_dir = self.root / "keys"
        if not self.keys_dir.exists():
            # Private keys: only their owner may list them (in a group-shared node,
            # the group may add its own; each key file itself is 0600).
            ensure_dir(self.keys_dir, node.shared)
            try:
                os.chmod(self.keys_dir, 0o2770 if node.shared else 0o700)
            except OSError:
                pass  # created by another user a moment ago
        self.path = self.root / "feeds.db"
        self.conn = connect(self.path, SCHEMA, node.shared, DAMAGED_ADVICE)
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self._sub_ids: dict[tuple[str, str], int] = {}
        # (seq, hash, signed bytes) of the head of each subfeed as this store last
        # signed or verified it: see append.
        self._trusted: dict[int, tuple[int, str, bytes]] = {}
        self._listeners = Listeners("feed store listener")

    # ---------------------------------------------------------------- feeds
    def add_feed(self, feed: str, label: str | None = None) -> None:
        """Record that this node knows ``feed`` (no-op if it does already)."""
        with self.lock:
            self.conn.execute(
                "INSERT OR IGNORE INTO feeds (feed, label, created) VALUES (?, ?, ?)",
                (feed, label, int(time.time() * 1000)),
            )

    def get_feed(self, feed: str) -> FeedRow | None:
        with self.lock:
            r = self.conn.execute(
                "SELECT feed, label, created FROM feeds WHERE feed = ?", (feed,)
            ).fetchone()
        return FeedRow(r[0], r[1], r[2] / 1000) if r else None

    def feeds(self) -> list[FeedRow]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT feed, label, created FROM feeds ORDER BY rowid"
            ).fetchall()
        return [FeedRow(r[0], r[1], r[2] / 1000) for r in rows]

    def key_path(self, feed: str) -> Path:
        """Where the private key of ``feed`` lives if this node owns it."""
        return self.keys_dir / f"{feed}.key"

    # ------------------------------------------------------------- subfeeds
    def sub_id(self, feed: str, name: str) -> int | None:
        """The integer id of a subfeed, or None if it has never had a message."""
        sid = self._sub_ids.get((feed, name))
        if sid is None:
            with self.lock:
                r = self.conn.execute(
                    "SELECT id FROM subfeeds WHERE feed = ? AND name = ?", (feed, name)
                ).fetchone()
            if r is None:
                return None
            sid = self._sub_ids[(feed, name)] = r[0]
        return sid

    def _create_sub(self, feed: str, name: str) -> int:
        """Id of the subfeed, creating it (call inside a write transaction)."""
        sid = self.sub_id(feed, name)
        if sid is None:
            self.conn.execute(
                "INSERT OR IGNORE INTO subfeeds (feed, name) VALUES (?, ?)", (feed, name)
            )
            sid = self.conn.execute(
                "SELECT id FROM subfeeds WHERE feed = ? AND name = ?", (feed, name)
            ).fetchone()[0]
        return sid

    def subfeeds(self, feed: str) -> list[tuple[str, int]]:
        """(name, message count) of each subfeed of ``feed``, by name."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT s.name, (SELECT max(seq) FROM messages m WHERE m.sub = s.id) "
                "FROM subfeeds s WHERE s.feed = ? ORDER BY s.name",
                (feed,),
            ).fetchall()
        return [(name, 0 if top is None else top + 1) for name, top in rows]

    def _head(self, sid: int) -> tuple[int, str | None]:
        """(number of messages, hash of the last one) of a subfeed."""
        r = self.conn.execute(
            "SELECT seq, hash FROM messages WHERE sub = ? ORDER BY seq DESC LIMIT 1", (sid,)
        ).fetchone()
        return (0, None) if r is None else (r[0] + 1, r[1])

    def count(self, feed: str, name: str) -> int:
        """Number of messages in a subfeed (0 if it has none); O(log n)."""
        sid = self.sub_id(feed, name)
        if sid is None:
            return 0
        with self.lock:
            r = self.conn.execute("SELECT max(seq) FROM messages WHERE sub = ?", (sid,)).fetchone()
        return 0 if r[0] is None else r[0] + 1

    # --------------------------------------------------------------- writing
    def append(self, feed: str, name: str, build: BuildFn) -> Sequence[SignedMessage]:
        """Append the messages ``build(next_seq, prev_hash)`` returns, in one transaction.

        ``build`` runs while the write lock is held, so the seq and prev it is
        given are the true head of the subfeed; nothing is written if it raises.

        The new messages' signatures vouch for the head they link to, so the
        head must be sound: a head this store signed or checked itself is
        written over only while it is still stored byte for byte as it was
        (one indexed read); any other head is checked in full first
        (:meth:`_checked_head`, one signature verification), and a damaged or
        forged one is refused with FeedVerificationError naming its seq.
        """
        with self.lock:
            try:
                with transaction(self.conn):
                    sid = self._create_sub(feed, name)
                    trusted = self._trusted.get(sid)
                    msgs = None
                    if trusted is not None and self._unchanged(sid, trusted):
                        msgs = build(trusted[0] + 1, trusted[1])
                        if not self._insert_next(sid, msgs):
                            msgs = None  # another writer appended after it
                    if msgs is None:
                        msgs = build(*self._checked_head(feed, name, sid))
                        self._insert(sid, msgs)
            except BaseException:
                self._forget_uncommitted(feed, name)
                raise
            if msgs:
                self._trusted[sid] = (msgs[-1].seq, msgs[-1].hash, msgs[-1].data)
        if msgs:
            self._committed()
        return msgs

    def _unchanged(self, sid: int, head: tuple[int, str, bytes]) -> bool:
        """Whether message ``head[0]`` of the subfeed is still stored exactly as ``head``."""
        r = self.conn.execute(
            "SELECT hash, CAST(data AS BLOB) FROM messages WHERE sub = ? AND seq = ?",
            (sid, head[0]),
        ).fetchone()
        return r is not None and r[0] == head[1] and r[1] == head[2]

    def _insert_next(self, sid: int, msgs: Sequence[SignedMessage]) -> bool:
        """Insert ``msgs``; False (nothing written) when their first seq is already taken."""
        if msgs:
            m = msgs[0]
            try:
                self.conn.execute(_INSERT_MESSAGE, (sid, m.seq, m.hash, m.data))
            except sqlite3.IntegrityError:  # another writer appended since
                return False
            if len(msgs) > 1:
                self._insert(sid, msgs[1:])
        return True

    def _checked_head(self, feed: str, name: str, sid: int) -> tuple[int, str | None]:
        """(next seq, hash of the last message) of a subfeed whose last message is sound.

        The last message must hash to its stored hash, decode to its place in
        the chain (feed, subfeed, seq, and ``prev`` equal to the stored hash of
        the message before it) and carry a valid signature; FeedVerificationError
        names the seq of the message that is not.
        """
        r = self.conn.execute(
            "SELECT seq, hash, CAST(data AS BLOB) FROM messages WHERE sub = ? "
            "ORDER BY seq DESC LIMIT 1",
            (sid,),
        ).fetchone()
        if r is None:
            return 0, None
        seq, hash_hex, data = r
        prev = None
        if seq > 0:
            p = self.conn.execute(
                "SELECT hash FROM messages WHERE sub = ? AND seq = ?", (sid, seq - 1)
            ).fetchone()
            prev = p[0] if p else None
        reader = ChainReader(feed, name, seq, prev, every_signature=True)
        try:
            if seq > 0 and prev is None:
                raise reader.error(seq - 1, "message is missing")
            reader.check(seq, hash_hex, data)
        except FeedVerificationError as e:
            raise FeedVerificationError(
                f"cannot append on top of a damaged subfeed, nothing was appended: {e}",
                feed=feed, subfeed=name, seq=e.seq,
            ) from None
        self._trusted[sid] = (seq, hash_hex, data)
        return seq + 1, hash_hex

    def _insert(self, sid: int, msgs: Sequence[SignedMessage]) -> None:
        rows = [(sid, m.seq, m.hash, m.data) for m in msgs]
        if len(rows) == 1:
            self.conn.execute(_INSERT_MESSAGE, rows[0])
        else:
            self.conn.executemany(_INSERT_MESSAGE, rows)

    def _forget_uncommitted(self, feed: str, name: str) -> None:
        # A subfeed id created in a rolled-back transaction does not exist.
        self._sub_ids.pop((feed, name), None)

    def extend(self, msgs: Iterable[SignedMessage]) -> ExtendResult:
        """Add verified messages received from elsewhere, in order, in one transaction.

        Each message must already have a valid signature and, within the batch,
        link to its predecessor. Here it is checked against what is stored: a
        message already present must be byte-identical (else it is a fork);
        a new one must be the next seq and link to the stored head. At the first
        message that fails, what came before it is committed and a
        FeedVerificationError names the message; nothing after it is written.
        """
        result = ExtendResult()
        error: FeedVerificationError | None = None
        heads: dict[tuple[str, str], tuple[int, int, str | None]] = {}
        created: list[tuple[str, str]] = []
        with self.lock:
            try:
                with transaction(self.conn) as conn:
                    for m in msgs:
                        key = (m.feed, m.subfeed)
                        head = heads.get(key)
                        if head is None:
                            self.add_feed(m.feed)
                            if self.sub_id(*key) is None:
                                created.append(key)
                            sid = self._create_sub(*key)
                            head = (sid, *self._head(sid))
                        sid, count, head_hash = head
                        if m.seq < count:
                            r = conn.execute(
                                "SELECT hash FROM messages WHERE sub = ? AND seq = ?", (sid, m.seq)
                            ).fetchone()
                            if r is not None and r[0] == m.hash:
                                result.present += 1
                                heads[key] = head
                                continue
                            error = verification_error(
                                m.feed,
                                m.subfeed,
                                m.seq,
                                "differs from the message with that seq already stored here "
                                "(a forged or forked message)",
                                "nothing from this message on was imported",
                            )
                            break
                        if m.seq > count:
                            error = verification_error(
                                m.feed,
                                m.subfeed,
                                m.seq,
                                f"messages {count}..{m.seq - 1} are missing before it",
                                "nothing from this message on was imported; import the whole feed",
                            )
                            break
                        if m.prev != head_hash:
                            error = verification_error(
                                m.feed,
                                m.subfeed,
                                m.seq,
                                "'prev' is not the hash of the stored message before it "
                                "(a forged or forked message)",
                                "nothing from this message on was imported",
                            )
                            break
                        self._insert(sid, [m])
                        heads[key] = (sid, count + 1, m.hash)
                        result.added += 1
            except BaseException:
                for key in created:
                    self._sub_ids.pop(key, None)
                raise
        if result.added:
            self._committed()
        if error is not None:
            error.partial = result
            raise error
        return result

    def on_commit(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after each write of this process that added messages.

        Writes of other processes are seen through SQLite's ``PRAGMA data_version``
        instead (the node daemon watches both). Returns the function that removes
        the callback.
        """
        return self._listeners.add(callback)

    def _committed(self) -> None:
        self._listeners()

    # --------------------------------------------------------------- reading
    def rows(
        self, feed: str, name: str, start: int, end: int | None, limit: int, max_bytes: int
    ) -> list[Row]:
        """Stored messages seq >= start (and < end), in order: at most ``limit`` rows,
        stopping after the row that brings the total past ``max_bytes``."""
        sid = self.sub_id(feed, name)
        if sid is None:
            return []
        hi = MAX_SEQ if end is None else end
        out: list[Row] = []
        total = 0
        with self.lock:
            cur = self.conn.execute(
                "SELECT seq, hash, CAST(data AS BLOB) FROM messages "
                "WHERE sub = ? AND seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
                (sid, start, hi, limit),
            )
            while len(out) < limit and total <= max_bytes:
                batch = cur.fetchmany(64)  # fewer calls than iterating row by row
                if not batch:
                    break
                for row in batch:
                    out.append(row)
                    total += len(row[2])
                    if total > max_bytes:
                        break
            cur.close()
        return out

    def hash_at(self, feed: str, name: str, seq: int) -> str | None:
        """The stored hash of message ``seq``, or None if there is none."""
        sid = self.sub_id(feed, name)
        if sid is None:
            return None
        with self.lock:
            r = self.conn.execute(
                "SELECT hash FROM messages WHERE sub = ? AND seq = ?", (sid, seq)
            ).fetchone()
        return r[0] if r else None


_stores: dict[str, FeedStore] = {}
_stores_lock = threading.Lock()


def get_feed_store(node: NodeDir) -> FeedStore:
    """The FeedStore of ``node``, one per process."""
    key = str(node.path)
    store = _stores.get(key)
    if store is None or store.pid != os.getpid() or not store.path.parent.exists():
        with _stores_lock:
            store = _stores.get(key)
            if store is None or store.pid != os.getpid() or not store.path.parent.exists():
                store = FeedStore(node)
                _stores[key] = store
    return store
