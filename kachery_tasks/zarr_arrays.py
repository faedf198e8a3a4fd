"""Chunked arrays in the content store, through zarr v3 (``pip install kachery-tasks[zarr]``).

``store_zarr`` writes an array chunk by chunk into the content store and
returns the ``sha256://`` URI of its key index (see
:mod:`kachery_tasks.storage.zarr_store`); ``load_zarr`` opens that URI as a
read-only, lazy ``zarr.Array`` that reads (and, with a bucket configured,
fetches) only the chunks a selection touches. Chunks with equal bytes are one
blob, so a new version of an array that changes one chunk costs one chunk.

zarr is imported inside the functions: ``import kachery_tasks`` does not need it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidValueError, StorageError

if TYPE_CHECKING:
    import zarr


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InvalidValueError(
            "zarr arrays need zarr>=3: pip install 'kachery-tasks[zarr]'"
        ) from e
    return zarr


def store_zarr(array: Any, chunks: Any = None, progress: bool | None = None) -> str:
    """Store a numpy or zarr array as a zarr v3 array in the content store; return its URI.

    ``chunks`` is a chunk shape (default: the chunking of a zarr array, else
    zarr's automatic choice). A zarr array is copied block by block, never
    loaded whole; its codecs (compression) and attributes are kept. An array
    from :func:`load_zarr` is already stored: its URI is returned at once.
    ``progress=None`` shows a bar counting chunks on a terminal for arrays
    over the progress threshold (100 MB by default).
    """
    zarr = _zarr()
    import numpy as np

    from .nodes import current_node
    from .storage.zarr_store import ContentStore

    if isinstance(array, zarr.Array) and _stored_as_is(array, chunks):
        return array.store.uri
    node = current_node()
    store = ContentStore(source=node)
    if isinstance(array, zarr.Array):
        # v3 codecs carry over; a v2 array's numcodecs do not, so it gets v3 defaults
        codecs: dict[str, Any] = {}
        if array.metadata.zarr_format == 3:
            codecs = {"compressors": array.compressors, "filters": array.filters}
        target = zarr.create_array(
            store,
            shape=array.shape,
            dtype=array.dtype,
            chunks=chunks or array.chunks,
            fill_value=array.fill_value,
            attributes=dict(array.attrs),
            zarr_format=3,
            **codecs,
        )

        def write() -> None:
            step = target.chunks
            blocks = [-(-s // c) for s, c in zip(array.shape, step, strict=True)]
            for block in np.ndindex(*blocks):
                sel = tuple(
                    slice(i * c, min((i + 1) * c, s))
                    for i, c, s in zip(block, step, array.shape, strict=True)
                )
                target[sel] = array[sel]
    else:
        data = np.asarray(array)
        if data.dtype.hasobject:
            raise InvalidValueError("store_zarr cannot store arrays of Python objects")
        try:
            target = zarr.create_array(
                store, shape=data.shape, dtype=data.dtype, chunks=chunks or "auto", zarr_format=3
            )
        except (TypeError, ValueError) as e:
            raise InvalidValueError(f"cannot store this array as zarr: {e}") from e

        def write() -> None:
            target[...] = data

    with _counting_chunks(store, target.nchunks, target.nbytes, progress,
                          node.config.progress_threshold):
        write()
    return store.seal()


@contextlib.contextmanager
def _counting_chunks(
    store: Any, nchunks: int, nbytes: int, progress: bool | None, threshold: int
) -> Iterator[None]:
    """A bar counting the chunks written into ``store`` (on a terminal, for large arrays)."""
    from .progress import progress_bar

    if progress is None and nbytes < threshold:
        progress = False
    written = [0]
    with progress_bar(nchunks, "store_zarr", 0, progress, unit="chunks") as bar:
        if bar is not None:

            def on_write(key: str) -> None:
                if key.startswith("c/"):
                    written[0] += 1
                    bar(1)

            store.on_write = on_write
        try:
            yield
            if bar is not None and written[0] < nchunks:
                bar(nchunks - written[0])  # chunks of fill values are not written at all
        finally:
            store.on_write = None


def _stored_as_is(array: zarr.Array, chunks: Any) -> bool:
    """Whether ``array`` is already a stored array that store_zarr would store unchanged."""
    from .storage.zarr_store import ContentStore

    store = array.store
    return (
        isinstance(store, ContentStore)
        and store.uri is not None
        and store.read_only
        and array.path == ""
        and (chunks is None or tuple(chunks) == tuple(array.chunks))
    )


def load_zarr(uri: str) -> zarr.Array:
    """The read-only zarr array stored under ``uri``; chunks are read when indexed."""
    zarr = _zarr()
    from .nodes import current_node
    from .storage.zarr_store import ContentStore

    store = ContentStore.from_uri(uri, current_node())
    try:
        return zarr.open_array(store, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise StorageError(f"{uri} does not hold a zarr v3 array: {e}") from e


@dataclass(frozen=True)
class ZarrInfo:
    """What a stored zarr hierarchy is, read from its index and root metadata only."""

    uri: str
    node_type: str  # "array" or "group"
    shape: tuple[int, ...] | None
    dtype: str | None
    chunks: tuple[int, ...] | None
    blobs: int  # values the index names (chunks and metadata)
    blobs_here: int  # of which this node holds
    bytes_here: int


def zarr_info(uri: str) -> ZarrInfo | None:
    """Describe the zarr hierarchy ``uri`` names, or None when it is not a zarr index.

    Reads the index and the root ``zarr.json`` only (no zarr import, no chunk);
    ``uri`` must be here (or in the configured bucket).
    """
    from .nodes import current_node
    from .storage.zarr_index import read_index_file

    node = current_node()
    keys = read_index_file(node.local_path(uri), uri)
    if keys is None:
        return None
    store = node.store
    here = _sizes_here(store, keys.values())
    meta: dict[str, Any] = {}
    if keys.get("zarr.json") in here:
        with open(store.blob_path(keys["zarr.json"]), "rb") as f:
            try:
                meta = json.loads(f.read())
            except ValueError:
                meta = {}
    grid = (meta.get("chunk_grid") or {}).get("configuration") or {}
    shape, chunks = meta.get("shape"), grid.get("chunk_shape")
    dtype = meta.get("data_type")
    return ZarrInfo(
        uri=uri,
        node_type=str(meta.get("node_type", "unknown")),
        shape=tuple(shape) if isinstance(shape, list) else None,
        dtype=dtype if isinstance(dtype, str) else None,
        chunks=tuple(chunks) if isinstance(chunks, list) else None,
        blobs=len(set(keys.values())),
        blobs_here=len(here),
        bytes_here=sum(here.values()),
    )


def missing_blobs(uri: str) -> list[str]:
    """The SHA-256s of the blobs the zarr index ``uri`` names that are not here."""
    from .nodes import current_node
    from .storage.zarr_index import read_index

    node = current_node()
    keys = set(read_index(uri, node).values())
    return sorted(keys - set(_sizes_here(node.store, keys)))


def _sizes_here(store: Any, hashes: Any) -> dict[str, int]:
    """Size of each blob of ``hashes`` in the store (one stat each; no use is recorded)."""
    sizes = {}
    for h in set(hashes):
        try:
            sizes[h] = os.stat(store.blob_path(h)).st_size
        except FileNotFoundError:
            pass
    return sizes
