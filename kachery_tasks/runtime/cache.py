"""The per-node task cache of this process: records, store, and an in-memory memo.

The memo maps task id -> what a hit needs (see ``results.MemoEntry``), so a
hit of a task whose result this process has already seen costs an id
computation and a dict lookup, with no database query and no file read.
It is sound because results are immutable blobs; it stays correct across
processes through one shared file, ``<node>/tasks/invalidations``: every
``forget`` or ``recompute`` (in any process) appends a byte to it, and a
process whose memo was filled when the file had another size clears the
memo before serving from it (one ``stat`` per hit).

Small results (encoded size at most ``KACHERY_TASKS_INLINE_MAX`` bytes,
default 4096) are kept inline in the records database rather than as blobs:
storing a blob costs two fsyncs and a new file, which would dominate tiny
tasks. Their URI is the ``sha256://`` of the same bytes; :meth:`materialize`
writes them to the content store when they must be loaded as files or
travel to another node.

The memo is bounded (``KACHERY_TASKS_MEMO_BYTES``, default 256 MiB of held
values; oldest entries go first) and keyed by node directory, so switching
``KACHERY_TASKS_DIR`` switches caches.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContentNotFoundError, CorruptContentError, KacheryError, LinkedFileError
from ..fsutil import os_error, share_file
from ..nodes import Node, current_node
from ..uris import parse_uri
from . import results
from .records import Records, ResultRow

if TYPE_CHECKING:
    from ..storage.local import LocalStore

MISS = object()
ENV_MEMO = "KACHERY_TASKS_MEMO_BYTES"
ENV_INLINE = "KACHERY_TASKS_INLINE_MAX"
INLINE_MAX = 4096


class NodeCache:
    """Everything the runtime keeps for one node directory in this process."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pid = os.getpid()
        tasks_dir = node.ensure("tasks")
        self.records = Records(tasks_dir / "records.db", node.shared)
        self.memo: dict[str, results.MemoEntry] = {}
        self.memo_bytes = 0
        try:
            self.memo_limit = int(os.environ.get(ENV_MEMO, 256 * 2**20))
        except ValueError:
            self.memo_limit = 256 * 2**20
        self.inval_path = str(tasks_dir / "invalidations")
        try:
            os.close(os.open(self.inval_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666))
            share_file(Path(self.inval_path), node.shared)  # every member appends to it
            self.inval_seen = os.stat(self.inval_path).st_size
        except OSError as e:
            raise os_error(e, f"cannot use {self.inval_path}") from e
        self._lock = threading.Lock()
        self._node_id: str | None = None
        self._members: set[str] = set()
        try:
            self.inline_max = int(os.environ.get(ENV_INLINE, INLINE_MAX))
        except ValueError:
            self.inline_max = INLINE_MAX

    @property
    def store(self) -> LocalStore:
        return self.node.store

    @property
    def node_id(self) -> str:
        """This node's public key (hex): the producer named in its records."""
        if self._node_id is None:
            self._node_id = self.node.id
        return self._node_id

    def is_own(self, producer: str) -> bool:
        """Whether results signed by ``producer`` were computed on this node directory:
        by this user or, on a group-shared node, by another member.

        Members of a shared node can already change each other's stored results
        (the directory is group-writable), so their pickles are loaded like
        one's own; other nodes need :func:`~.results.allow_pickles_from`.
        """
        if producer == self.node_id:
            return True
        if not self.node.shared:
            return False
        if producer not in self._members:
            from ..keys import member_ids

            self._members = member_ids(self.node)  # a member who joined since
        return producer in self._members

    # --------------------------------------------------------------- memo
    def get(self, task_id: str) -> Any:
        """The memoised value of ``task_id``, or :data:`MISS`."""
        e = self.memo.get(task_id)
        if e is None or not self._fresh():
            return MISS
        return e[1] if e[0] is None else e[0](e[1])

    def has(self, task_id: str) -> bool:
        """Whether ``task_id`` is memoised (without building its value)."""
        return task_id in self.memo and self._fresh()

    def _fresh(self) -> bool:
        """False (and the memo cleared) once another process invalidated something."""
        try:
            fresh = os.stat(self.inval_path).st_size == self.inval_seen
        except OSError:
            fresh = False
        if not fresh:
            self.clear()
        return fresh

    def put(self, task_id: str, entry: results.MemoEntry) -> Any:
        """Remember ``entry`` for ``task_id`` and return the value it serves."""
        size = entry[2]
        if size <= self.memo_limit // 4:
            with self._lock:
                old = self.memo.pop(task_id, None)
                if old is not None:
                    self.memo_bytes -= old[2]
                while self.memo and self.memo_bytes + size > self.memo_limit:
                    oldest = next(iter(self.memo))
                    self.memo_bytes -= self.memo.pop(oldest)[2]
                self.memo[task_id] = entry
                self.memo_bytes += size
        return entry[1] if entry[0] is None else entry[0](entry[1])

    def clear(self) -> None:
        with self._lock:
            self.memo.clear()
            self.memo_bytes = 0
            try:
                self.inval_seen = os.stat(self.inval_path).st_size
            except OSError:
                self.inval_seen = -1

    def invalidate(self, task_id: str) -> None:
        """Drop ``task_id`` here and tell other processes to drop their memos."""
        with self._lock:
            old = self.memo.pop(task_id, None)
            if old is not None:
                self.memo_bytes -= old[2]
            expected = self.inval_seen
            fd = os.open(self.inval_path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            size = os.stat(self.inval_path).st_size
        if size != expected + 1:  # others invalidated too: our memo may be stale
            self.clear()
        else:
            self.inval_seen = size

    # ------------------------------------------------------------- loading
    def load(self, row: ResultRow) -> Any:
        """The value of a recorded result (memoised), or :data:`MISS` when it cannot be served.

        It cannot when its blob is gone, or when it is damaged: bytes read into
        memory (inline results, and blobs that are not memory-mapped or
        zarr) are hashed and must match the result's ``sha256://`` id (about
        0.6 ms per MB, once per process: later hits come from the memo), and
        the value must decode. A damaged result is dropped from the cache
        (its blob too, if the blob no longer matches its id) and noted, so the
        run that computes it again records why (reason ``damaged: ...``).
        Raises UntrustedPickleError for a pickle from a node not allowed.
        """
        if not self.is_own(row.node):
            results.check_trust(row.codec or "", row.node, self.node_id, row.task_id)
        codec = results.codec_named(row.codec or "")
        data = row.data
        try:
            if data is None:
                try:
                    path = self.store.load_file(row.result_uri)
                    if codec.decodes_from_path(os.path.getsize(path)):
                        # a zarr result's chunks may be gone while its index is here
                        return self.put(row.task_id, codec.memo(codec.decode(path), None))
                    data = _read(path)  # read once: decoded now, and kept for later hits
                except (ContentNotFoundError, LinkedFileError):
                    return MISS
            where = "kept in the records database" if row.data is not None else "blob"
            if hashlib.sha256(data).hexdigest() != parse_uri(row.result_uri).hex:
                raise _Damaged(f"the stored result ({where}) no longer matches its hash")
            value = codec.decode_bytes(data)
        except _Damaged as e:
            return self._discard(row, str(e))
        except KacheryError:
            raise
        except OSError as e:
            raise os_error(e, f"cannot read the result of {row.task_id}") from e
        except Exception as e:  # the codec could not decode it
            return self._discard(row, f"the stored result could not be decoded ({_brief(e)})")
        return self.put(row.task_id, codec.memo(value, data))

    def _discard(self, row: ResultRow, why: str) -> Any:
        """Stop serving a damaged result (see :meth:`load`); :data:`MISS`."""
        if row.data is None:
            try:  # re-hash the blob and remove it if it no longer matches its id
                self.store.load_file(row.result_uri, verify=True)
            except (CorruptContentError, ContentNotFoundError, LinkedFileError):
                pass
        self.records.discard_damaged(row, f"{why}: {row.result_uri}")
        return MISS

    def materialize(self, task_id: str) -> str | None:
        """Make sure the result of ``task_id`` is a blob in the content store; its URI.

        Small results live inline in the records database; this writes them to
        the store (same bytes, so the same ``sha256://`` id) for code that loads
        result URIs as files or sends them to other nodes.
        """
        row = self.records.result(task_id)
        if row is None or row.result_uri is None:
            return None
        if row.data is not None:
            from ..uris import parse_uri

            self.store.store_bytes(row.data, label=parse_uri(row.result_uri).label)
        return row.result_uri


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Damaged(Exception):
    """A stored result that is not what was stored (internal to :meth:`NodeCache.load`)."""


def _brief(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


_caches_lock = threading.Lock()


def current() -> NodeCache:
    """The cache of the current node (see :func:`kachery_tasks.nodes.current_node`)."""
    return for_node(current_node())


def for_node(node: Node) -> NodeCache:
    """The cache of ``node`` in this process (kept on the node object)."""
    c = node.runtime_cache
    if c is not None and c.pid == os.getpid():
        return c
    with _caches_lock:
        c = node.runtime_cache
        if c is None or c.pid != os.getpid():
            c = node.runtime_cache = NodeCache(node)
        return c
