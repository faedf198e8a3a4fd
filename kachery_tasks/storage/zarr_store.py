"""A zarr v3 store over the content store: every value is a content-addressed blob.

Each zarr key (``zarr.json``, ``c/0/1``, ...) maps to the SHA-256 of a blob in
the node's store. The mapping itself is sealed into a small canonical-JSON
index, stored as a blob of its own, whose ``sha256://`` URI names the whole
hierarchy::

    {"format": "kachery-tasks/zarr/1", "keys": {"<zarr key>": "<sha256 hex>", ...}}

Two arrays that share chunk bytes share blobs, so storing an array with one
changed chunk adds one chunk blob (plus the new index).

* ``ContentStore(source=node)`` is writable: values are written to the
  content store as they are set, the key index is held in memory, and
  ``seal()`` stores the index and returns its URI.
* ``ContentStore.from_uri(uri, source)`` (or ``await ContentStore.open(uri,
  source=source)``, zarr's usual async constructor) is read-only and lazy:
  only the index is read up front; each value is fetched when zarr asks for
  it, through ``source.local_path`` (a node fetches what it lacks from its
  remotes).

The ``source`` is a :class:`ContentSource`: a store to write to and a way to
find content (a :class:`kachery_tasks.nodes.Node` is one).

zarr is imported here, so this module must only be imported by code that
needs zarr (``kachery_tasks`` itself does not import it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.common import concurrent_map

from .batch import BlobBatch
from .local import LocalStore
from .zarr_index import INDEX_FORMAT, encode_index, read_index

__all__ = ["INDEX_FORMAT", "ContentSource", "ContentStore", "read_index"]


class ContentSource(Protocol):
    """Where a ContentStore writes blobs (``store``) and finds them (``local_path``)."""

    @property
    def store(self) -> LocalStore: ...

    def local_path(self, uri: str) -> str:
        """The path of the content ``uri`` names, fetched if it is not here."""
        ...


def _blob_uri(sha256: str) -> str:
    return f"sha256://{sha256}"


def _slice(size: int, byte_range: ByteRequest | None) -> tuple[int, int]:
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(size - byte_range.suffix, 0), size
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")


class ContentStore(Store):
    """zarr v3 store whose values are blobs in the node's content store.

    ``on_write``, when set, is called with each key written (progress reports).
    """

    on_write: Callable[[str], object] | None = None
    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True
    supports_partial_writes: bool = False

    def __init__(
        self,
        uri: str | None = None,
        *,
        read_only: bool | None = None,
        keys: dict[str, str] | None = None,
        batch: BlobBatch | None = None,
        source: ContentSource,
    ) -> None:
        if read_only is None:
            read_only = uri is not None
        super().__init__(read_only=read_only)
        self.uri = uri
        self.source = source
        if keys is None:
            keys = read_index(uri, source) if uri is not None else {}
        self._keys: dict[str, str] = keys
        # values written and not yet sealed (shared with with_read_only copies)
        self._batch = batch if batch is not None else BlobBatch(source.store)

    @classmethod
    def from_uri(cls, uri: str, source: ContentSource) -> ContentStore:
        """A read-only store over the sealed index ``uri`` (synchronous)."""
        store = cls(uri, source=source)
        store._is_open = True
        return store

    # ----------------------------------------------------------- identity
    def with_read_only(self, read_only: bool = False) -> ContentStore:
        # Like MemoryStore: the copy shares the in-memory key index.
        return type(self)(self.uri, read_only=read_only, keys=self._keys, batch=self._batch,
                          source=self.source)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, type(self))
            and self._keys == other._keys
            and self.read_only == other.read_only
        )

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"kachery-zarr://{self.uri or hex(id(self._keys))}"

    def __repr__(self) -> str:
        return f"ContentStore('{self}')"

    def blobs(self) -> dict[str, str]:
        """A copy of the key → sha256 map."""
        return dict(self._keys)

    def seal(self) -> str:
        """Make every value written durable, store the key index and return its URI.

        Values are written to the content store as they are set but flushed to
        disk together here (see :mod:`kachery_tasks.storage.batch`); a store
        that is never sealed leaves nothing behind but temporary files.
        """
        self._batch.commit()
        return self._batch.store.store_bytes(encode_index(self._keys), label="zarr-index.json")

    def _blob_path(self, sha256: str) -> str:
        return self._batch.path(sha256) or self.source.local_path(_blob_uri(sha256))

    # ------------------------------------------------------------ reading
    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        sha256 = self._keys.get(key)
        if sha256 is None:
            return None
        with open(self._blob_path(sha256), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, end = _slice(size, byte_range)
            f.seek(start)
            return f.read(max(end - start, 0))

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        data = self._read(key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        await self._ensure_open()
        prototype = prototype or default_buffer_prototype()
        if key not in self._keys:
            return None
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        async def _get(key: str, byte_range: ByteRequest | None) -> Buffer | None:
            return await self.get(key, prototype=prototype, byte_range=byte_range)

        return await concurrent_map(key_ranges, _get, limit=None)

    async def exists(self, key: str) -> bool:
        return key in self._keys

    async def getsize(self, key: str) -> int:
        sha256 = self._keys.get(key)
        if sha256 is None:
            raise FileNotFoundError(key)
        path = await asyncio.to_thread(self._blob_path, sha256)
        return os.path.getsize(path)

    # ------------------------------------------------------------ writing
    def _write(self, key: str, value: Buffer) -> None:
        if not isinstance(value, Buffer):
            raise TypeError(
                f"ContentStore.set(): `value` must be a Buffer instance, not {type(value)}"
            )
        self._keys[key] = self._batch.add(value.as_buffer_like())
        if self.on_write is not None:
            self.on_write(key)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._check_writable()
        self._is_open = True
        self._write(key, value)

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self._ensure_open()
        if not isinstance(value, Buffer):
            raise TypeError(
                f"ContentStore.set(): `value` must be a Buffer instance, not {type(value)}"
            )
        await asyncio.to_thread(self._write, key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self._ensure_open()
        if key not in self._keys:
            await asyncio.to_thread(self._write, key, value)

    def delete_sync(self, key: str) -> None:
        # Only the index entry goes: the blob may be shared; gc reclaims it.
        self._check_writable()
        self._keys.pop(key, None)

    async def delete(self, key: str) -> None:
        self.delete_sync(key)

    async def clear(self) -> None:
        self._check_writable()
        self._keys.clear()

    # ------------------------------------------------------------ listing
    async def list(self) -> AsyncIterator[str]:
        for key in list(self._keys):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in list(self._keys):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        if prefix == "":
            names = {k.split("/")[0] for k in self._keys}
        else:
            names = {
                k.removeprefix(prefix + "/").split("/")[0]
                for k in self._keys
                if k.startswith(prefix + "/") and k != prefix
            }
        for name in names:
            yield name
