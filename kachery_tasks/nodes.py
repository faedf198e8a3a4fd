"""The Node: one node directory's store, feeds, mutables and identity, and its remotes.

A node is a directory (see :mod:`.config`) plus the ordered list of
**remotes** through which it asks others for what it lacks and offers what
it has (see :mod:`.remotes`). Everything a node keeps is reached through its
:class:`Node` object, and every walk over the remotes happens here: when
content is not in the store, :meth:`Node.load_file` asks each remote in turn;
:meth:`Node.offer` offers content to every remote; feeds of other nodes are
pulled through the remotes by :meth:`Node.load_feed`; the runtime looks up and
publishes pure results through :meth:`Node.get_result_records` and
:meth:`Node.put_result_record`.

The module-level functions of the public API (``kachery.store_file``,
``kachery.create_feed``, task calls, ...) act on the **current node**: the
innermost ``with node:`` block of this thread (or asyncio task), else the
default node, ``$KACHERY_TASKS_DIR`` (or ``~/.kachery-tasks``) with the
remotes its configuration names. Several nodes work side by side in one
process; none of this reads or changes ``os.environ`` beyond finding the
default node's directory.

A node's remotes are given when it is opened (``kachery.node(path,
remotes=[...])``), or come from its directory: the bucket named by
``$KACHERY_TASKS_BUCKET`` or ``[bucket] url`` in ``config.toml``, then the
URLs listed in ``remotes.txt`` (one a line, in order; ``kachery-tasks channel
join`` adds ``channel:<owner[:16]>-<name>`` there and ``channel leave``
removes it).
"""

from __future__ import annotations

import contextvars
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ENV_DIR, NodeDir, default_path, node_dir
from .errors import ConfigError, ContentNotFoundError, InvalidValueError
from .feeds import feed as feed_mod
from .feeds import transfer as feed_transfer
from .feeds.bucket import FeedSyncReport
from .feeds.store import FeedStore, get_feed_store
from .feeds.uris import parse_feed_uri
from .fsutil import os_error, remove_quietly, temp_path, write_atomic
from .keys import KeyPair, node_keypair
from .remotes import Remote, open_remote
from .storage.buckets import configured_bucket_url
from .storage.local import LocalStore, get_store
from .storage.locks import hold
from .storage.mutables import Mutables, get_mutables

if TYPE_CHECKING:
    from .feeds.feed import Feed, FeedInfo, Subfeed
    from .feeds.transfer import ImportReport
    from .storage.local import FileInfo
    from .storage.sync import UploadReport

REMOTES_FILE = "remotes.txt"
_REMOTES_HEADER = (
    "# Remotes this node asks (in order, after its configured bucket) for what it lacks.\n"
    "# One URL a line; 'kachery-tasks channel join' adds channel:NAME, 'channel leave'\n"
    "# removes it.\n"
)


class Node:
    """One node: its directory's store, feeds, mutables and key, and its remotes.

    ``with node:`` makes it the current node of the block (module-level
    functions and tasks use it). Open one with :func:`node`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 remotes: Sequence[Remote | str] | None = None) -> None:
        self.dir: NodeDir = node_dir(Path(path).expanduser() if path is not None else None)
        self._remotes: list[Remote] | None = (
            None if remotes is None
            else [open_remote(r, self) if isinstance(r, str) else r for r in remotes]
        )
        self._listed: tuple[tuple[int, int] | None, list[str]] = (None, [])
        self._key: KeyPair | None = None
        self._key_lock = threading.Lock()
        self._tokens: threading.local = threading.local()
        self.runtime_cache: Any = None  # kept by the runtime (kachery_tasks.runtime.cache)

    # ------------------------------------------------------------ its parts
    @property
    def path(self) -> Path:
        """The node directory."""
        return self.dir.path

    @property
    def config(self) -> Any:
        return self.dir.config

    @property
    def shared(self) -> bool:
        """Whether the directory is shared by a lab group (see :mod:`.fsutil`)."""
        return self.dir.shared

    def sub(self, *parts: str) -> Path:
        return self.dir.sub(*parts)

    def ensure(self, *parts: str) -> Path:
        return self.dir.ensure(*parts)

    @property
    def store(self) -> LocalStore:
        """The content store."""
        return get_store(self.dir)

    @property
    def feeds(self) -> FeedStore:
        """The feed store."""
        return get_feed_store(self.dir)

    @property
    def mutables(self) -> Mutables:
        return get_mutables(self.dir)

    @property
    def key(self) -> KeyPair:
        """The key this node (this user, on a group-shared node) signs with."""
        if self._key is None:
            with self._key_lock:  # creating the key file is not safe between threads
                if self._key is None:
                    self._key = node_keypair(self.dir)
        return self._key

    @property
    def id(self) -> str:
        """The node id: its public key, 64 hex digits."""
        return self.key.public_hex

    @property
    def remotes(self) -> list[Remote]:
        """Where this node looks for what it lacks, in order: the remotes it was opened
        with, else its configured bucket and then the URLs in ``remotes.txt``."""
        if self._remotes is not None:
            return self._remotes
        url = configured_bucket_url(self.config.bucket_url)
        found = [open_remote(url)] if url else []
        for listed in self.listed_remote_urls():
            if listed == url:
                continue
            try:
                found.append(open_remote(listed, self))
            except InvalidValueError as e:
                raise ConfigError(f"{self.sub(REMOTES_FILE)}: {e}") from e
        return found

    def listed_remote_urls(self) -> list[str]:
        """The remote URLs in ``remotes.txt`` (re-read when the file changes)."""
        path = self.sub(REMOTES_FILE)
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise os_error(e, f"cannot read {path}") from e
        stamp = (st.st_mtime_ns, st.st_size)
        if self._listed[0] != stamp:
            try:
                text = path.read_text()
            except FileNotFoundError:
                return []
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read {path}: {e}") from e
            urls = [line.strip() for line in text.splitlines()]
            self._listed = (stamp, [u for u in urls if u and not u.startswith("#")])
        return list(self._listed[1])

    def add_remote_url(self, url: str) -> bool:
        """List ``url`` in ``remotes.txt`` (after those listed); False if it was there."""
        return self._edit_listed(lambda urls: urls if url in urls else [*urls, url])

    def remove_remote_url(self, url: str) -> bool:
        """Take ``url`` out of ``remotes.txt``; False if it was not listed."""
        return self._edit_listed(lambda urls: [u for u in urls if u != url])

    def _edit_listed(self, change: Any) -> bool:
        path = self.sub(REMOTES_FILE)
        with hold(self.sub(f".{REMOTES_FILE}.lock")):
            self._listed = (None, [])
            before = self.listed_remote_urls()
            after = change(before)
            if after == before:
                return False
            text = "".join(f"{u}\n" for u in after)
            write_atomic(path, (_REMOTES_HEADER + text).encode(), shared=self.shared)
            self._listed = (None, [])
        return True

    def remote_urls(self) -> list[str] | None:
        """The URLs of the remotes given when it was opened (None: from its configuration)."""
        return None if self._remotes is None else [r.url for r in self._remotes]

    # ---------------------------------------------------------- activation
    def __enter__(self) -> Node:
        stack = getattr(self._tokens, "stack", None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.stack.pop())

    def __reduce__(self) -> tuple:
        # Another process (a Dask worker) opens the same directory with the same remotes.
        return (node, (str(self.path), self.remote_urls()))

    def __repr__(self) -> str:
        return f"Node({str(self.path)!r})"

    # ------------------------------------------------------------- content
    def load_file(self, uri: str, dest: str | os.PathLike[str] | None = None,
                  verify: bool = False, progress: bool | None = None) -> str:
        """The local path of the content ``uri`` names, fetched through the remotes if need be.

        With ``dest`` the content is copied there (atomically) and ``dest`` is
        returned. ``verify=True`` re-hashes local content first.
        """
        path = self.local_path(uri, verify, progress)
        if dest is None:
            return path
        return _copy_out(path, Path(dest))

    def local_path(self, uri: str, verify: bool = False, progress: bool | None = None) -> str:
        """The content's path in the store; fetched (verified) from the first remote with it."""
        try:
            return self.store.load_file(uri, verify=verify)
        except ContentNotFoundError as e:
            missing = e
        asked = []
        reasons = []
        for remote in self.remotes:
            try:
                return remote.fetch_content(self.store, uri, progress=progress)
            except ContentNotFoundError as e:
                asked.append(remote.url)
                missing = e
                if not str(e).startswith(f"{uri} is neither"):  # says more than "not there"
                    reasons.append(str(e))
        if len(asked) <= 1:
            raise missing
        raise ContentNotFoundError(
            f"{uri} is neither in this node's store nor in any of its remotes "
            f"({', '.join(asked)})" + "".join(f"; {r}" for r in reasons)
        )

    def fetch_members(self, uri: str, progress: bool | None = None) -> int:
        """Fetch every blob of the zarr array ``uri`` that is not here; how many.

        Each remote fetches what it has (in parallel, where it can); a blob the
        first remotes lack comes from a later one, and a blob found nowhere
        raises ContentNotFoundError naming every remote asked.
        """
        from .storage.zarr_index import missing_members

        missing = missing_members(self.local_path(uri, progress=False), uri, self.store.has)
        if not missing:
            return 0
        for remote in self.remotes:
            try:
                remote.fetch_members(self.store, uri, progress=progress)
                break
            except ContentNotFoundError:  # this remote lacks some: the next may have them
                continue
        for h in missing:  # what is still missing, through the walk (or its full error)
            self.local_path(f"sha256://{h}", progress=False)
        return len(missing)

    def offer(self, uri: str, progress: bool | None = None,
              repair: bool = False) -> list[tuple[Remote, UploadReport]]:
        """Make stored content available through every remote that takes content."""
        self.store.load_file(uri)  # here, or a clear error before anything moves
        reports = []
        for remote in self.remotes:
            report = remote.offer_content(self.store, uri, progress=progress, repair=repair)
            if report is not None:
                reports.append((remote, report))
        return reports

    def store_file(self, path: str | os.PathLike[str], label: str | None = None,
                   progress: bool | None = None) -> str:
        """Copy a file into the store (hashing it in the same pass); its URI."""
        return self.store.store_file(path, label=label, progress=progress)

    def link_file(self, path: str | os.PathLike[str], label: str | None = None,
                  progress: bool | None = None) -> str:
        """Register a file where it is, without copying; its URI."""
        return self.store.link_file(path, label=label, progress=progress)

    def store_bytes(self, data: bytes | bytearray | memoryview, label: str | None = None) -> str:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidValueError(f"store_bytes takes bytes, not {type(data).__name__}")
        return self.store.store_bytes(data, label=label)

    def load_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        self.local_path(uri)
        return self.store.load_bytes(uri, start, end)

    def load_file_info(self, uri: str) -> FileInfo:
        return self.store.info(uri)

    # --------------------------------------------------------------- feeds
    def create_feed(self, label: str | None = None) -> Feed:
        """A new feed whose private key stays in this node."""
        return feed_mod.create_feed(self.feeds, label)

    def load_feed(self, uri: str) -> Feed:
        """The feed ``feed://<id>``; a feed of another node is first pulled from the remotes."""
        parsed = parse_feed_uri(uri)
        if parsed.subfeed is None:  # (a subfeed URI is refused by load_feed below)
            self.pull_feed(parsed.feed_id)
        return feed_mod.load_feed(self.feeds, uri)

    def load_subfeed(self, uri: str) -> Subfeed:
        self.pull_feed(parse_feed_uri(uri).feed_id)
        return feed_mod.load_subfeed(self.feeds, uri)

    def list_feeds(self) -> list[FeedInfo]:
        return feed_mod.list_feeds(self.feeds)

    def import_messages(self, messages: Iterable[Any]) -> ImportReport:
        return feed_transfer.import_messages(self.feeds, messages)

    def import_feed(self, path: str | os.PathLike[str]) -> ImportReport:
        return feed_transfer.import_feed(self.feeds, path)

    def export_feed(self, uri: str, out: Any) -> int:
        return feed_transfer.export_feed(self.feeds, uri, out)

    def pull_feed(self, feed_id: str) -> FeedSyncReport:
        """Fetch (verified) what the remotes have of another node's feed that is not here.

        Nothing for a feed this node owns: only the key holder appends.
        """
        report = FeedSyncReport()
        if self.feeds.key_path(feed_id).exists():
            return report
        for remote in self.remotes:
            got = remote.pull_feed(self.feeds, feed_id)
            if got is not None:
                report.add(got)
        return report

    def sync_feeds(self) -> tuple[FeedSyncReport, FeedSyncReport]:
        """Push every feed held here to the remotes, then pull every feed they hold."""
        pushed, pulled = FeedSyncReport(), FeedSyncReport()
        feed_ids = [info.feed_id for info in self.list_feeds()]
        for remote in self.remotes:
            for feed_id in feed_ids:
                got = remote.push_feed(self.feeds, feed_id)
                if got is not None:
                    pushed.add(got)
            for feed_id in remote.feed_ids():
                got = remote.pull_feed(self.feeds, feed_id)
                if got is not None:
                    pulled.add(got)
        return pushed, pulled

    # ------------------------------------------------------------- results
    def get_result_records(self, task_ids: Iterable[str]) -> dict[str, list[tuple[Remote, bytes]]]:
        """Published result records (signed envelope bytes) of ``task_ids``, per task id,
        from every remote that has one, in remote order."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, list[tuple[Remote, bytes]]] = {}
        for remote in self.remotes:
            if not ids:
                break
            for tid, data in remote.get_result_records(ids).items():
                found.setdefault(tid, []).append((remote, data))
        return found

    # ----------------------------------------------------------- mutables
    def set_mutable(self, key: str, value: Any) -> None:
        self.mutables.set(key, value)

    def get_mutable(self, key: str, default: Any = None) -> Any:
        return self.mutables.get(key, default)

    def delete_mutable(self, key: str) -> bool:
        return self.mutables.delete(key)

    def list_mutables(self, prefix: str = "") -> dict[str, Any]:
        return self.mutables.list(prefix)

    def close(self) -> None:
        """Release the remotes' connections."""
        for remote in self.remotes:
            remote.close()


def _copy_out(path: str, dest: Path) -> str:
    try:
        is_dir, parent_exists = dest.is_dir(), dest.parent.exists()
    except OSError as e:  # a name too long, a loop of symlinks, ...
        raise InvalidValueError(f"cannot write {dest}: {e.strerror}") from e
    if is_dir:
        raise InvalidValueError(f"--dest {dest} is a directory; give a file name")
    if not parent_exists:
        raise InvalidValueError(f"cannot write {dest}: directory {dest.parent} does not exist")
    tmp = temp_path(dest.parent)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    except OSError as e:
        remove_quietly(tmp)
        raise os_error(e, f"cannot write {dest}") from e
    return str(dest)


# ---------------------------------------------------------- which node
_current: contextvars.ContextVar[Node | None] = contextvars.ContextVar(
    "kachery_node", default=None
)
_defaults: dict[tuple[str | None, int], Node] = {}
_opened: dict[tuple[Path, tuple[str, ...] | None, int], Node] = {}
_lock = threading.Lock()


def node(path: str | os.PathLike[str] | None = None,
         remotes: Sequence[Remote | str] | None = None) -> Node:
    """The node at ``path`` (created on first use), or the current node when no path is given.

    ``remotes`` (Remote objects or URLs such as ``"gs://lab/kt"``) replace the
    remotes the node's configuration names. One Node is kept per directory
    (and list of remote URLs) and process.
    """
    if path is None and remotes is None:
        return current_node()
    where = Path(path).expanduser().absolute() if path is not None else default_path()
    if remotes is not None and not all(isinstance(r, str) for r in remotes):
        return Node(where, remotes)
    urls = None if remotes is None else tuple(remotes)
    key = (where, urls, os.getpid())
    found = _opened.get(key)
    if found is None or not found.dir.config_path.exists():
        with _lock:
            found = _opened.get(key)
            if found is None or not found.dir.config_path.exists():
                found = _opened[key] = Node(where, urls)
    return found


def current_node() -> Node:
    """The node of the innermost ``with node:`` block, else the default node."""
    n = _current.get()
    return n if n is not None else default_node()


def default_node() -> Node:
    """The node ``$KACHERY_TASKS_DIR`` (or ``~/.kachery-tasks``) names, per process."""
    key = (os.environ.get(ENV_DIR), os.getpid())
    n = _defaults.get(key)
    if n is None:
        n = _defaults[key] = node(default_path())
    return n


def nodes_in_use() -> Iterator[Node]:
    """The nodes opened in this process (for tests and tools that close them)."""
    return iter(list(_opened.values()))
