"""Manifests: how a large file is cut into independently verifiable chunks.

A file larger than the chunk size travels between nodes as chunks. Its
manifest is a canonical-JSON document, stored as a blob of its own and indexed
by the file's id::

    {"format": "kachery-tasks/manifest/1",
     "sha256": "<file sha256>", "size": <bytes>, "chunk_size": <bytes>,
     "chunks": [{"offset": 0, "size": <bytes>, "sha256": "<chunk sha256>"}, ...]}

Chunks are contiguous, start at offset 0, all but the last have exactly
``chunk_size`` bytes, and together cover the file. See ``docs/storage.md``
(Manifests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..canonical import canonical_json
from ..errors import CorruptContentError
from .hashing import Chunk, Digest

FORMAT = "kachery-tasks/manifest/1"


@dataclass(frozen=True)
class Manifest:
    """The chunk list of one large file."""

    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[Chunk, ...]

    @classmethod
    def from_digest(cls, digest: Digest) -> Manifest:
        return cls(digest.sha256, digest.size, digest.chunk_size, tuple(digest.chunks))

    def to_json(self) -> bytes:
        """The canonical bytes that are stored (and hashed) as the manifest blob."""
        return canonical_json(
            {
                "format": FORMAT,
                "sha256": self.sha256,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "chunks": [
                    {"offset": c.offset, "size": c.size, "sha256": c.sha256} for c in self.chunks
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; raise CorruptContentError if it is inconsistent."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            chunks = tuple(Chunk(int(c["offset"]), int(c["size"]), str(c["sha256"]))
                           for c in doc["chunks"])
            m = cls(str(doc["sha256"]), int(doc["size"]), int(doc["chunk_size"]), chunks)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptContentError(f"not a valid manifest: {e}") from e
        m.check()
        return m

    def check(self) -> None:
        """Raise CorruptContentError unless the chunks tile the file exactly."""
        offset = 0
        for i, c in enumerate(self.chunks):
            last = i == len(self.chunks) - 1
            if c.offset != offset or not 0 < c.size <= self.chunk_size or (
                not last and c.size != self.chunk_size
            ):
                raise CorruptContentError(f"manifest of {self.sha256}: chunk {i} is misplaced")
            if len(c.sha256) != 64:
                raise CorruptContentError(f"manifest of {self.sha256}: chunk {i} has a bad hash")
            offset += c.size
        if offset != self.size:
            raise CorruptContentError(
                f"manifest of {self.sha256}: chunks cover {offset} bytes, file has {self.size}"
            )
