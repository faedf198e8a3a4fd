"""Parse and format content URIs.

``sha256://<64 hex>?label=<name>&size=<bytes>`` names content by the SHA-256 of
its bytes. The query parameters are hints for people and for progress bars,
never part of identity: two URIs with the same hash name the same content.

For compatibility with kachery and kachery-cloud, ``sha1://<40 hex>`` URIs (with
an optional ``/<name>`` path or query) are accepted where content is loaded;
they resolve through the SHA-1 alias index of the local store.

The grammar is written down in ``docs/uris.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, quote, urlencode

from .errors import InvalidURIError

_HEX = {"sha256": 64, "sha1": 40}
_URI_RE = re.compile(r"^(sha256|sha1)://([0-9a-fA-F]+)(/[^?#]*)?(?:\?([^#]*))?$")


@dataclass(frozen=True)
class ContentURI:
    """A parsed content URI: algorithm, lowercase hex digest and hints."""

    algorithm: str
    hex: str
    label: str | None = None
    size: int | None = None

    def __str__(self) -> str:
        return format_uri(self.hex, label=self.label, size=self.size, algorithm=self.algorithm)

    @property
    def bare(self) -> str:
        """The URI without hints: ``sha256://<hex>``."""
        return f"{self.algorithm}://{self.hex}"


@lru_cache(maxsize=65536)
def parse_uri(uri: str) -> ContentURI:
    """Parse a ``sha256://`` or ``sha1://`` URI; raise InvalidURIError naming the problem."""
    if not isinstance(uri, str):
        raise InvalidURIError(f"a content URI must be a string, not {type(uri).__name__}")
    m = _URI_RE.match(uri.strip())
    if not m:
        raise InvalidURIError(
            f"not a content URI: {uri!r} (expected sha256://<64 hex digits>, "
            "optionally followed by ?label=NAME&size=BYTES)"
        )
    algorithm, digest, path, query = m.groups()
    if len(digest) != _HEX[algorithm]:
        raise InvalidURIError(
            f"{uri!r}: a {algorithm} digest has {_HEX[algorithm]} hex digits, not {len(digest)}"
        )
    label = path[1:] if path and len(path) > 1 else None
    size = None
    for key, value in parse_qsl(query or "", keep_blank_values=True):
        if key == "label" and value:
            label = value
        elif key == "size":
            if not value.isdigit():
                raise InvalidURIError(f"{uri!r}: size must be a whole number of bytes")
            size = int(value)
    return ContentURI(algorithm, digest.lower(), label, size)


def format_uri(
    hex: str, label: str | None = None, size: int | None = None, algorithm: str = "sha256"
) -> str:
    """Format a content URI from a digest and optional hints."""
    params = []
    if label:
        params.append(("label", label))
    if size is not None:
        params.append(("size", str(size)))
    base = f"{algorithm}://{hex}"
    return f"{base}?{urlencode(params, quote_via=quote)}" if params else base


def is_content_uri(value: object) -> bool:
    """True for a string that parses as a content URI."""
    if not isinstance(value, str) or "://" not in value:
        return False
    try:
        parse_uri(value)
    except InvalidURIError:
        return False
    return True
