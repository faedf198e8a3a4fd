"""The node's content-addressed store of whole files.

Layout under ``<node>/store``::

    sha256/ab/cd/<hex>      one read-only blob per content id (mode 0444)
    incoming/               temporary files being written (same filesystem)
    index.db                the index (see :mod:`.index`)

**Writing** (crash safety): content is copied into ``incoming/`` while it is
hashed in the same pass, fsynced, made read-only and renamed to its final
name, then the directory is fsynced, and only then is the index row written.
Storing computes only the SHA-256: the SHA-1 alias and the manifest of chunk
hashes are computed from the stored bytes when first needed (``info``,
``manifest`` for an upload, a ``sha1://`` lookup the index cannot answer),
after checking that those bytes still hash to their id, and recorded.
A crash at any point leaves no partial blob under a final name and no row
pointing at nothing; leftovers in ``incoming/`` are removed by ``gc``.
Several processes storing the same content race harmlessly: the last rename
wins and every copy has the same bytes.

**Reading**: ``load_file`` maps a URI to the blob's path without copying and
without touching the database on the hot path; last-use times for garbage
collection are written at most once a minute per blob and process.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..canonical import check_text, is_text
from ..config import NodeDir
from ..errors import (
    ContentNotFoundError,
    CorruptContentError,
    InvalidValueError,
    LinkedFileError,
    SourceFileError,
    StorageError,
)
from ..fsutil import TMP_PREFIX, ensure_dir, fsync_dir, os_error, temp_path, write_temp
from ..processes import pid_alive
from ..progress import progress_bar
from ..uris import format_uri, parse_uri
from . import locks, partials
from .hashing import Digest, ProgressFn, copy_and_hash, digest_bytes, digest_open_file, hash_file
from .index import SHA1_PENDING, Index, Link, Row
from .manifest import Manifest
from .zarr_index import read_index_file

TOUCH_INTERVAL = 60.0
STALE_TEMP_AGE = 3600.0
GC_GRACE = 60.0  # content used this recently is never evicted (a store may be returning it)


@dataclass(frozen=True)
class FileInfo:
    """What the store knows about one content id."""

    uri: str
    sha256: str
    size: int
    label: str | None
    path: str | None
    linked_path: str | None
    sha1: str | None
    manifest_uri: str | None
    chunks: int
    pinned: bool
    last_access: float


@dataclass
class VerifyReport:
    """Outcome of :meth:`LocalStore.verify`.

    ``manifests_rebuilt`` names the files whose manifest was missing or
    damaged and was made again from their intact bytes.
    """

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    adopted: int = 0
    dangling_rows: int = 0
    broken_links: list[str] = field(default_factory=list)
    vanished: int = 0  # blobs removed (by gc) while verify was running
    manifests_rebuilt: list[str] = field(default_factory=list)


@dataclass
class GcReport:
    """Outcome of :meth:`LocalStore.gc`."""

    evicted: int
    freed: int
    remaining: int
    pinned_bytes: int
    temp_removed: int
    kept_recent: int = 0  # blobs over the limit kept because they were just used
    partials_removed: int = 0  # abandoned partial downloads removed
    partial_bytes: int = 0  # the disk space they used


class LocalStore:
    """Content-addressed storage of whole files in one node directory."""

    def __init__(self, node: NodeDir) -> None:
        self.node = node
        self.root = node.ensure("store")
        self.blobs = node.ensure("store", "sha256")
        self.incoming = node.ensure("store", "incoming")
        self._gc_lock = self.root / "gc.lock"
        self._blob_root = str(self.blobs)
        self.index = Index(self.root / "index.db", node.shared)
        self._touched: dict[str, float] = {}
        self._sha1_search = threading.Lock()  # one search of missing SHA-1s at a time

    @property
    def chunk_size(self) -> int:
        return self.node.config.chunk_size

    # ----------------------------------------------------------------- paths
    def blob_path(self, sha256: str) -> str:
        """Where the blob with this id lives (whether or not it exists)."""
        return f"{self._blob_root}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def resolve(self, uri: str) -> str:
        """The SHA-256 hex of the content ``uri`` names (sha1:// through the alias index).

        A SHA-1 the index does not know may belong to content whose SHA-1 was
        not computed yet: those are hashed now (see :meth:`_search_sha1`).
        """
        cu = parse_uri(uri)
        if cu.algorithm == "sha256":
            return cu.hex
        row = self.index.by_sha1(cu.hex)
        sha256 = row.sha256 if row is not None else self._search_sha1(cu.hex)
        if sha256 is None:
            raise ContentNotFoundError(
                f"no content with SHA-1 {cu.hex} in this node's store ({self.root}); "
                "import a kachery storage directory with 'kachery-tasks import-kachery DIR' "
                "or store the file"
            )
        return sha256

    def _search_sha1(self, sha1: str) -> str | None:
        """Compute the SHA-1s the index is missing until one is ``sha1``; its SHA-256.

        Storing does not compute SHA-1 aliases, so a ``sha1://`` lookup the
        index cannot answer hashes every stored file whose SHA-1 is still
        unknown (each one is recorded, so this happens once per file; costly
        the first time in a large store, but only ``sha1://`` URIs of content
        stored here, not imported from kachery, ever need it). A blob that no
        longer hashes to its id is removed on the way, as ``load_file`` with
        ``verify`` would, and nothing is recorded about it.
        """
        with self._sha1_search:
            row = self.index.by_sha1(sha1)  # found by a search that ran meanwhile
            if row is not None:
                return row.sha256
            for row in self.index.sha1_pending():
                try:
                    digest = self._complete(row, sha1=True, chunks=False)
                except (ContentNotFoundError, CorruptContentError, LinkedFileError):
                    continue
                if digest.sha1 == sha1:
                    return row.sha256
        return None

    # --------------------------------------------------------------- writing
    def store_file(
        self,
        path: str | os.PathLike[str],
        label: str | None = None,
        progress: bool | None = None,
        expect_sha1: str | None = None,
    ) -> str:
        """Copy a file into the store in one pass and return its URI.

        With ``expect_sha1`` the content is only admitted if its SHA-1 matches
        (CorruptContentError otherwise, and nothing is stored).
        """
        path = Path(path)
        label = _label(path, label)
        src, st = _open_source(path)
        try:
            with progress_bar(
                st.st_size, f"store {label}", self.node.config.progress_threshold, progress
            ) as bar:
                digest = self._ingest_fd(src, st, bar, expect_sha1)
        finally:
            os.close(src)
        return self._finish(digest, label)

    def store_bytes(
        self, data: bytes | bytearray | memoryview, label: str | None = None,
        expect_sha256: str | None = None,
    ) -> str:
        """Store bytes held in memory and return their URI.

        With ``expect_sha256`` they are stored only if that is their hash
        (CorruptContentError otherwise): received bytes are hashed once.
        """
        label = _label(None, label)
        digest = digest_bytes(data, self.chunk_size, sha1=False, chunks=False)
        if expect_sha256 is not None and digest.sha256 != expect_sha256:
            raise CorruptContentError(
                f"content hashes to {digest.sha256}, not {expect_sha256}; nothing was stored"
            )
        self._write_blob(digest.sha256, data)
        return self._finish(digest, label)

    def link_file(
        self, path: str | os.PathLike[str], label: str | None = None, progress: bool | None = None
    ) -> str:
        """Register a file in place, without copying it, and return its URI.

        The original's size, modification and change times and inode are
        recorded; if any of them changes, loading the URI raises LinkedFileError
        instead of serving bytes that may no longer match the id. (The change
        time is set by the kernel on every write and cannot be set back, so
        content edited in place and given its old mtime again is still caught.)
        """
        path = Path(path).absolute()
        label = _label(path, label)
        if not is_text(str(path)):
            raise SourceFileError(
                f"cannot link {path}: its name is not UTF-8, which the index cannot record; "
                "rename it, or store a copy with 'kachery-tasks store'"
            )
        src, st = _open_source(path)
        try:
            with progress_bar(
                st.st_size, f"hash {label}", self.node.config.progress_threshold, progress
            ) as bar:
                digest = digest_open_file(src, self.chunk_size, bar)
            after = os.fstat(src)
        finally:
            os.close(src)
        if _identity(after) != _identity(st):
            raise SourceFileError(f"{path} changed while it was being linked; link it again")
        manifest = self.store_manifest(digest)
        self.index.record_link(
            digest.sha256, digest.size, digest.sha1, label, manifest,
            Link(str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
        )
        return format_uri(digest.sha256, label=label, size=digest.size)

    def _ingest_fd(
        self, src: int, before: os.stat_result, progress: ProgressFn | None,
        expect_sha1: str | None,
    ) -> Digest:
        tmp = temp_path(self.incoming)
        try:
            dst = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                digest = copy_and_hash(src, dst, progress, sha1=expect_sha1 is not None)
            finally:
                os.close(dst)
            after = os.fstat(src)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise SourceFileError(
                    "the file changed while it was being stored; nothing was stored, "
                    "store it again once it is complete"
                )
            if expect_sha1 is not None and digest.sha1 != expect_sha1:
                raise CorruptContentError(
                    f"content has SHA-1 {digest.sha1}, expected {expect_sha1}; not stored"
                )
            self.publish(tmp, digest.sha256)
        except OSError as e:
            _unlink_quietly(tmp)
            raise os_error(e, "cannot store the file") from e
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return digest

    def admit(
        self, tmp: Path, expected_sha256: str, label: str | None = None,
        digest: Digest | None = None,
    ) -> str:
        """Move a complete file from ``incoming/`` into the store if it has the expected id.

        ``digest`` is what the caller computed over exactly these bytes while
        writing them (a download hashes as chunks land); without it the file is
        digested here. On a mismatch the file is deleted and CorruptContentError
        raised, so nothing unverified enters the store.
        """
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
                if digest is None:
                    digest = digest_open_file(fd, self.chunk_size)
            finally:
                os.close(fd)
            if digest.sha256 != expected_sha256:
                _unlink_quietly(tmp)
                raise CorruptContentError(
                    f"downloaded content hashes to {digest.sha256}, not {expected_sha256}; "
                    "nothing was stored"
                )
            self.publish(tmp, digest.sha256)
        except OSError as e:
            raise os_error(e, "cannot store downloaded content") from e
        return self._finish(digest, label)

    def _write_blob(self, sha256: str, data: bytes | bytearray | memoryview) -> None:
        if self._claim(sha256):
            return
        tmp = temp_path(self.incoming)
        try:
            write_temp(tmp, data)
            self.publish(tmp, sha256)
        except OSError as e:
            _unlink_quietly(tmp)
            raise os_error(e, "cannot write to the store") from e

    def publish(self, tmp: Path, sha256: str, sync_dir: bool = True) -> Path:
        """Move a complete, fsynced temp file to its final name (read-only).

        Returns the blob's directory; with ``sync_dir=False`` flushing it is
        the caller's (a batch flushes each directory once).
        """
        final = self.blob_path(sha256)
        parent = Path(final).parent
        if self._claim(sha256):  # stored before: the same bytes, by its name
            _unlink_quietly(tmp)
            return parent
        os.chmod(tmp, 0o444)
        ensure_dir(parent, self.node.shared)
        os.replace(tmp, final)
        if sync_dir:
            fsync_dir(parent)
        return parent

    def _claim(self, sha256: str) -> bool:
        """True when the blob is in the store; it is then marked as used now.

        For ``gc`` the check and the mark are one step (both under the gc
        lock): either gc removed the blob first (False: the caller puts its
        own copy in place) or gc finds it just used and keeps it for
        :data:`GC_GRACE` seconds, long enough for the caller to return its URI.
        """
        path = self.blob_path(sha256)
        if not os.path.exists(path):
            return False  # nothing here for gc to take away
        with locks.hold(self._gc_lock, shared=True):
            if not os.path.exists(path):
                return False
            now = time.time()
            self.index.touch(sha256, now)
            self._touched[sha256] = now
            return True

    def store_manifest(self, digest: Digest) -> str | None:
        """Store and index the manifest of a large blob's digest; its id (None if no chunks)."""
        if not digest.chunks:
            return None
        data = Manifest.from_digest(digest).to_json()
        sha256 = hashlib.sha256(data).hexdigest()
        self._write_blob(sha256, data)
        self.index.record_blob(sha256, len(data), None, None, role="manifest")
        return sha256

    def _finish(self, digest: Digest, label: str | None) -> str:
        """Index a blob now in the store: what its digest learned; the rest comes later."""
        manifest = self.store_manifest(digest)
        sha1 = digest.sha1 if digest.sha1 is not None else SHA1_PENDING
        self.index.record_blob(digest.sha256, digest.size, sha1, label, "data", manifest)
        self._touched[digest.sha256] = time.time()
        return format_uri(digest.sha256, label=label, size=digest.size)

    def _complete(self, row: Row, sha1: bool, chunks: bool) -> Digest:
        """Compute and record what the index lacks about content held here.

        ``sha1``: its SHA-1 alias; ``chunks``: its manifest (made only when the
        content is larger than the chunk size). The bytes are hashed once, on
        two threads, their SHA-256 included: nothing is recorded about bytes
        that no longer match their id (CorruptContentError, and the blob is
        removed; LinkedFileError for a changed linked original).
        """
        path = self.load_file(f"sha256://{row.sha256}")
        digest = hash_file(path, self.chunk_size, sha1=sha1, chunks=chunks)
        if path == row.link_path:
            self._verify_link(row, digest.sha256)
        else:
            self._verify_blob(row.sha256, digest.sha256)
        if digest.sha1 is not None:
            self.index.set_sha1(row.sha256, digest.sha1)
        manifest = self.store_manifest(digest)
        if manifest is not None and not self.index.set_manifest(row.sha256, manifest):
            self._remove_blob(manifest)  # the file left the store meanwhile
        return digest

    def touch(self, sha256: str) -> None:
        """Mark content as used now (last in line for gc); written at most once a minute."""
        now = time.time()
        if now - self._touched.get(sha256, 0.0) > TOUCH_INTERVAL:
            self._touched[sha256] = now
            self.index.touch(sha256, now)

    # --------------------------------------------------------------- reading
    def load_file(self, uri: str, verify: bool = False) -> str:
        """Return the local path of the content ``uri`` names; never a copy, never None.

        With ``verify=True`` the bytes are re-hashed first; a blob that no longer
        matches its id is removed and CorruptContentError raised.
        """
        sha256 = self.resolve(uri)
        path = self.blob_path(sha256)
        if os.path.exists(path):
            self.touch(sha256)
            if verify:
                self._verify_blob(sha256)
            return path
        row = self.index.get(sha256)
        if row is not None and row.link_path:
            self._check_link(row)
            if verify:
                self._verify_link(row)
            return row.link_path
        raise ContentNotFoundError(
            f"{uri} is not in this node's store ({self.root}); store it with "
            "'kachery-tasks store FILE', or fetch it from a bucket with "
            "'kachery-tasks download URI'"
        )

    def has(self, uri: str) -> bool:
        """True when ``load_file(uri)`` would succeed without fetching anything."""
        try:
            self.load_file(uri)
        except (ContentNotFoundError, LinkedFileError):
            return False
        return True

    def load_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive, default: the end) of the content."""
        path = self.load_file(uri)
        start, end = check_range(start, end, os.path.getsize(path))
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def manifest(self, uri: str) -> Manifest | None:
        """The chunk manifest of a large file (None for files below the chunk size).

        Made from the file's bytes now when it was never made or its blob is
        gone or damaged. ContentNotFoundError when the file is not here.
        """
        sha256 = self.resolve(uri)
        self.load_file(f"sha256://{sha256}")  # raises when it is not here
        row = self.index.get(sha256)
        if row is None:
            return None  # not indexed (left by a crash): 'verify' adopts it
        manifest = self._read_manifest(row)
        if manifest is None and row.size > self.chunk_size:
            row = self._completed(row, sha1=False, chunks=True)
            manifest = self._read_manifest(row)
        return manifest

    def _read_manifest(self, row: Row) -> Manifest | None:
        """The manifest the row names, if it is here, intact and about this file.

        None otherwise, and the caller makes it again; a manifest blob whose
        bytes no longer match its id is removed.
        """
        if row.manifest is None:
            return None
        try:
            with open(self.blob_path(row.manifest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != row.manifest:
            self._remove_blob(row.manifest)
            return None
        try:
            manifest = Manifest.from_json(data)
        except CorruptContentError:
            return None  # intact, but not a manifest: the row names the wrong blob
        if (manifest.sha256, manifest.size) != (row.sha256, row.size):
            return None  # another file's manifest
        return manifest

    def _completed(self, row: Row, sha1: bool, chunks: bool) -> Row:
        """The row after :meth:`_complete` (the same row if it left the index meanwhile)."""
        self._complete(row, sha1, chunks)
        return self.index.get(row.sha256) or row

    def info(self, uri: str) -> FileInfo:
        """What the store knows about ``uri``; ContentNotFoundError when it is not here.

        A SHA-1 alias or manifest not computed yet is computed now (one pass).
        """
        sha256 = self.resolve(uri)
        path = self.load_file(f"sha256://{sha256}")
        row = self.index.get(sha256)
        label = parse_uri(uri).label or (row.label if row else None)
        size = row.size if row else os.path.getsize(path)
        chunks = 0
        if row is not None:
            manifest = self._read_manifest(row)
            need_chunks = manifest is None and row.size > self.chunk_size
            if need_chunks or row.sha1_pending:
                row = self._completed(row, sha1=row.sha1_pending, chunks=need_chunks)
                manifest = self._read_manifest(row)
            chunks = len(manifest.chunks) if manifest else 0
        return FileInfo(
            uri=format_uri(sha256, label=label, size=size),
            sha256=sha256,
            size=size,
            label=label,
            path=path,
            linked_path=row.link_path if row else None,
            sha1=row.sha1 if row else None,
            manifest_uri=f"sha256://{row.manifest}" if row and row.manifest else None,
            chunks=chunks,
            pinned=bool(row and row.pinned),
            last_access=row.accessed if row else 0.0,
        )

    def list(self) -> Iterator[Row]:
        """Every indexed content id of role 'data' (not manifests)."""
        return self.index.rows(role="data")

    # --------------------------------------------------------- verification
    def _check_link(self, row: Row) -> None:
        try:
            st = os.stat(row.link_path)
        except FileNotFoundError:
            raise LinkedFileError(
                f"the linked original of sha256://{row.sha256} is gone: {row.link_path}; "
                "link or store the file again"
            ) from None
        recorded = (row.link_size, row.link_mtime_ns, row.link_ino, row.link_ctime_ns)
        if row.link_ctime_ns is None:  # linked by a version that did not record it
            recorded = (*recorded[:3], st.st_ctime_ns)
        if _identity(st) != recorded:
            raise LinkedFileError(
                f"the linked original of sha256://{row.sha256} changed since it was linked: "
                f"{row.link_path}; it is not served. Link or store the file again"
            )

    def _verify_blob(self, sha256: str, actual: str | None = None) -> None:
        """Remove the blob and raise CorruptContentError unless it hashes to its id
        (``actual``: its hash, when the caller just computed it)."""
        if actual is None:
            actual = hash_file(self.blob_path(sha256), self.chunk_size, sha1=False,
                               chunks=False).sha256
        if actual != sha256:
            raise self.discard_corrupt(sha256, self.blob_path(sha256), f"hash to {actual}")

    def _verify_link(self, row: Row, actual: str | None = None) -> None:
        if actual is None:
            actual = hash_file(row.link_path, self.chunk_size, sha1=False, chunks=False).sha256
        if actual != row.sha256:
            raise self.discard_corrupt(row.sha256, row.link_path, f"hash to {actual}")

    def discard_corrupt(self, sha256: str, path: str, finding: str) -> StorageError:
        """Stop serving content whose bytes at ``path`` were found not to match its id.

        ``path`` is what :meth:`load_file` returned (the blob, or a linked
        original); ``finding`` says what was found ("hash to <hex>"). The
        blob is removed, or the link forgotten; returns the error to raise.
        """
        if path == self.blob_path(sha256):
            self._remove_blob(sha256)
            return CorruptContentError(
                f"the stored bytes of sha256://{sha256} {finding}: the blob was corrupted "
                "on disk and has been removed; store or fetch it again"
            )
        self.index.drop_link(sha256)
        return LinkedFileError(
            f"the linked original {path} no longer has the content sha256://{sha256} "
            f"(its bytes {finding}); the link was removed"
        )

    def _remove_blob(self, sha256: str) -> None:
        self.index.drop_blob(sha256)
        self._touched.pop(sha256, None)
        _unlink_quietly(Path(self.blob_path(sha256)))

    def verify(self, progress: bool | None = None) -> VerifyReport:
        """Re-hash every blob and linked original; remove what no longer matches.

        Blobs found without an index row (left by a crash) are adopted, and rows
        whose blob is missing are dropped. A large file whose manifest is
        missing or turns out damaged gets a new one, made from its bytes while
        they are hashed (manifests are checked first, so this happens in the
        same run); SHA-1 aliases not computed yet are computed on the way.
        """
        report = VerifyReport()
        indexed = {r.sha256: r for r in self.index.rows()}
        named = {r.manifest for r in indexed.values() if r.manifest}
        files = sorted(self._blob_sizes(), key=lambda f: f[0] not in named)  # manifests first
        present = {sha256 for sha256, _ in files}
        total = sum(size for _, size in files)
        with progress_bar(total, "verify", self.node.config.progress_threshold, progress) as bar:
            for sha256, size in files:
                row = indexed.pop(sha256, None)
                lost = self._manifest_lost(row, present, report.corrupt)
                try:
                    digest = hash_file(
                        self.blob_path(sha256), self.chunk_size,
                        sha1=row is None or row.sha1_pending, chunks=lost,
                    )
                except FileNotFoundError:  # evicted by gc meanwhile: nothing left to check
                    report.vanished += 1
                    continue
                finally:
                    if bar:
                        bar(size)
                report.checked += 1
                if digest.sha256 != sha256:
                    report.corrupt.append(sha256)
                    self._remove_blob(sha256)
                    continue
                if (row is None or not row.in_store) and self._adopt(digest):
                    report.adopted += 1
                self._record_found(sha256, digest, lost, report)
        for row in indexed.values():
            if row.link_path:
                try:
                    self._check_link(row)
                    lost = self._manifest_lost(row, present, report.corrupt)
                    digest = hash_file(
                        row.link_path, self.chunk_size, sha1=row.sha1_pending, chunks=lost
                    )
                    self._verify_link(row, digest.sha256)
                    report.checked += 1
                    self._record_found(row.sha256, digest, lost, report)
                except LinkedFileError:
                    report.broken_links.append(row.sha256)
                    self.index.drop_link(row.sha256)
            elif row.in_store and not os.path.exists(self.blob_path(row.sha256)):
                self.index.drop_blob(row.sha256)  # (unless stored again meanwhile)
                report.dangling_rows += 1
        return report

    @staticmethod
    def _manifest_lost(row: Row | None, present: set[str], removed: list[str]) -> bool:
        """True when the row names a manifest that is not in the store or was just removed."""
        return (
            row is not None and row.manifest is not None
            and (row.manifest not in present or row.manifest in removed)
        )

    def _record_found(
        self, sha256: str, digest: Digest, lost: bool, report: VerifyReport
    ) -> None:
        """Record the SHA-1 and the new manifest that verify computed for intact content."""
        if digest.sha1 is not None:
            self.index.set_sha1(sha256, digest.sha1)
        if lost:
            manifest = self.store_manifest(digest)
            if manifest is not None:
                self.index.set_manifest(sha256, manifest)
                report.manifests_rebuilt.append(sha256)

    def _adopt(self, digest: Digest) -> bool:
        """Index a blob found without a row, unless gc has just removed it (as gc sees it)."""
        with locks.hold(self._gc_lock, shared=True):
            if not os.path.exists(self.blob_path(digest.sha256)):
                return False
            self.index.record_blob(digest.sha256, digest.size, digest.sha1, None)
            return True

    def _blob_sizes(self) -> Iterator[tuple[str, int]]:
        """(id, size) of every blob file, skipping any that vanish while they are listed."""
        for dirpath, _dirs, names in os.walk(self.blobs):
            for name in names:
                if len(name) == 64 and not name.startswith(TMP_PREFIX):
                    try:
                        yield name, os.path.getsize(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue

    # ------------------------------------------------------------ lifecycle
    def pin(self, uri: str, pinned: bool = True) -> None:
        """Keep (or stop keeping) ``uri`` through garbage collection."""
        sha256 = self.resolve(uri)
        self.load_file(f"sha256://{sha256}")  # raises when it is not here
        if not self.index.set_pinned(sha256, pinned):
            path = self.blob_path(sha256)
            d = hash_file(path, self.chunk_size)
            self.index.record_blob(sha256, d.size, d.sha1, None)
            self.index.set_pinned(sha256, pinned)

    def gc(self, max_size: int | None = None, grace: float = GC_GRACE) -> GcReport:
        """Clean up leftovers, then evict least recently used blobs down to ``max_size`` bytes.

        Leftovers are temporary files of writers that are gone and partial
        downloads abandoned for a day; with ``max_size=None`` that is all gc
        does. Pinned content is never evicted (even if that leaves the store
        above the limit), nor are the chunks of a pinned zarr array, nor
        content used in the last ``grace`` seconds (a store of it may be
        returning its URI right now); a large file's manifest goes with its
        file, and linked originals are not the store's to delete and do not
        count.
        """
        temp_removed = self._remove_stale_temp()
        partials_removed, partial_bytes = partials.remove_abandoned(self.incoming)
        rows = list(self.index.rows(order="accessed"))
        in_store = [r for r in rows if r.in_store]
        total = sum(r.size for r in in_store)
        kept = self._kept_by_pins(r for r in in_store if r.pinned)
        pinned_bytes = sum(r.size for r in in_store if r.pinned or r.sha256 in kept)
        by_id = {r.sha256: r for r in rows}
        cutoff = time.time() - grace
        evicted = freed = kept_recent = 0
        for row in in_store:
            if max_size is None or total <= max_size:
                break
            if row.pinned or row.role != "data" or row.sha256 in kept:
                continue
            if row.accessed > cutoff:
                kept_recent += 1
                continue
            victims = [row]
            m = by_id.get(row.manifest) if row.manifest else None
            if m is not None and m.in_store and not m.pinned:
                victims.append(m)
            for v in self._evict(victims, cutoff):
                total -= v.size
                freed += v.size
                evicted += 1
        return GcReport(
            evicted, freed, total, pinned_bytes, temp_removed, kept_recent, partials_removed,
            partial_bytes,
        )

    def _evict(self, victims: list[Row], cutoff: float) -> list[Row]:
        """Remove the blobs of ``victims`` unless they were used after ``cutoff``; the removed.

        Each is looked up again under the gc lock, which a store that finds
        the blob present holds while it marks it used (see :meth:`_claim`).
        """
        removed = []
        with locks.hold(self._gc_lock):
            for v in victims:
                now = self.index.get(v.sha256)
                if now is None or not now.in_store or now.pinned or now.accessed > cutoff:
                    if v is victims[0]:
                        return []  # the file stays, and so does its manifest
                    continue
                self._remove_blob(v.sha256)
                removed.append(v)
        return removed

    def _kept_by_pins(self, pinned: Iterable[Row]) -> set[str]:
        """The blobs that pinned zarr indexes name (a pinned array keeps its chunks)."""
        kept: set[str] = set()
        for row in pinned:
            try:
                keys = read_index_file(self.blob_path(row.sha256), row.sha256)
            except (OSError, StorageError):
                continue  # not readable as an index: nothing more to keep
            kept.update((keys or {}).values())
        return kept

    def _remove_stale_temp(self) -> int:
        """Remove temporary files older than an hour whose writer is gone.

        A temporary file is named after the process writing it; one whose
        process still runs on this machine is kept however old (a long
        computation's array chunks wait there until the array is sealed).
        """
        removed = 0
        cutoff = time.time() - STALE_TEMP_AGE
        for entry in os.scandir(self.incoming):
            if entry.name.startswith(TMP_PREFIX) and not _writer_alive(entry.name):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        self.index.close()


def _writer_alive(temp_name: str) -> bool:
    """Whether the process named in a temporary file's name still runs here."""
    pid = temp_name[len(TMP_PREFIX) :].split("-", 1)[0]
    return pid.isdigit() and int(pid) > 0 and pid_alive(int(pid))


def _label(path: Path | None, label: str | None) -> str | None:
    """The label to record: ``label``, else the file's name (its stray bytes replaced)."""
    if label is None:
        return None if path is None else os.fsencode(path.name).decode("utf-8", "replace")
    return check_text(label, "a label")


def check_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """Validate a byte range of content of ``size`` bytes; the range clipped to the content."""
    if start < 0 or (end is not None and end < start):
        raise InvalidValueError(f"byte range {start}..{end} is invalid: need 0 <= start <= end")
    if start > size:
        raise InvalidValueError(f"start {start} is past the end of the content ({size} bytes)")
    return start, size if end is None else min(end, size)


def _open_source(path: Path) -> tuple[int, os.stat_result]:
    """Open a file to be stored, with a clear error for each way that can fail.

    Only regular files are opened: a named pipe would block the open (and the
    read) until something writes to it, a device may never end. The path is
    checked before the open, the open never blocks (O_NONBLOCK), and what was
    opened is checked again (the path may have been replaced in between).
    """
    try:
        _check_regular(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceFileError(f"no such file: {path}") from None
    except PermissionError:
        raise SourceFileError(
            f"cannot read {path}: permission denied; check its mode and owner"
        ) from None
    except OSError as e:
        raise SourceFileError(f"cannot open {path}: {e.strerror}") from None
    st = os.fstat(fd)
    try:
        _check_regular(path, st)
    except SourceFileError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd, st


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise SourceFileError(f"{path} is a directory; store the files in it one by one")
    kind = (
        "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
        else "a socket" if stat.S_ISSOCK(st.st_mode)
        else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "not a regular file"
    )
    raise SourceFileError(
        f"{path} is {kind}; only regular files can be stored (copy its content to a file first)"
    )


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must stay the same for a linked original to still hold what was hashed."""
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _unlink_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_stores: dict[Path, LocalStore] = {}
_stores_lock = threading.Lock()


def get_store(node: NodeDir) -> LocalStore:
    """The LocalStore of ``node``, shared per process."""
    store = _stores.get(node.path)
    if store is None or store.node is not node:
        with _stores_lock:
            store = _stores.get(node.path)
            if store is None or store.node is not node:
                store = LocalStore(node)
                _stores[node.path] = store
    return store
