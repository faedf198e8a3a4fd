"""Content over HTTP: streaming an upload into the store, and sending a blob (or a range).

**Upload**: the request body is written to a temporary file in the store's
``incoming/`` directory as it arrives, hashed on the way, never held in
memory; when the body is complete the file is flushed and admitted to the
store under its SHA-256 (:meth:`LocalStore.admit`). A body cut short (the
client went away) or a failure leaves nothing behind: the temporary file is
removed.

**Download**: :class:`BlobResponse` sends bytes ``[start, end)`` of a blob,
read with ``pread`` in pieces of :data:`PIECE` on a worker thread, so the
event loop never waits for the disk and memory per request stays bounded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..fsutil import os_error, temp_path, write_all
from ..storage.hashing import Digest
from ..storage.local import LocalStore

PIECE = 4 * 2**20


async def receive_upload(store: LocalStore, body: AsyncIterator[bytes],
                         label: str | None) -> str:
    """Store the streamed ``body`` as content; its URI. Nothing is left on failure."""
    tmp = temp_path(store.incoming)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    sha = hashlib.sha256()
    size = 0
    try:
        try:
            async for piece in body:
                if piece:
                    sha.update(piece)
                    size += len(piece)
                    await anyio.to_thread.run_sync(write_all, fd, piece)
        finally:
            os.close(fd)
        digest = Digest(sha.hexdigest(), None, size)
        return await anyio.to_thread.run_sync(store.admit, tmp, digest.sha256, label, digest)
    except OSError as e:
        raise os_error(e, "cannot store the upload") from e
    finally:
        try:
            os.unlink(tmp)  # admitted: renamed away already; else what was received
        except FileNotFoundError:
            pass


class BlobResponse(Response):
    """A response with bytes ``[start, end)`` of the file at ``path``."""

    media_type = "application/octet-stream"

    def __init__(self, path: str, start: int, end: int, status: int,
                 headers: Mapping[str, str]) -> None:
        self.path, self.start, self.end = path, start, end
        self.status_code = status
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.items()]
        self.raw_headers.append((b"content-length", str(end - start).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if scope.get("method") == "HEAD" or self.end == self.start:
            await send({"type": "http.response.body", "body": b""})
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pos = self.start
            while pos < self.end:
                n = min(PIECE, self.end - pos)
                data = await anyio.to_thread.run_sync(_read, fd, n, pos)
                pos += len(data)
                await send({"type": "http.response.body", "body": data,
                            "more_body": pos < self.end})
        finally:
            os.close(fd)


def _read(fd: int, n: int, pos: int) -> bytes:
    data = os.pread(fd, n, pos)
    if not data:
        raise OSError(f"the blob ended before byte {pos}")
    return data


def content_headers(sha256: str, size: int, span: tuple[int, int] | None,
                    label: str | None) -> dict[str, Any]:
    """The headers of a blob answer: type, ranges, caching (the content never changes)."""
    headers = {"content-type": "application/octet-stream", "accept-ranges": "bytes",
               "etag": f'"{sha256}"', "cache-control": "private, max-age=31536000, immutable"}
    if span is not None:
        headers["content-range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    if label:
        from urllib.parse import quote

        headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(label)}"
    return headers
