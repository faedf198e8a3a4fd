"""Feed URIs and subfeed names.

A feed is named ``feed://<feed id>``, where the feed id is the owner's Ed25519
public key as 64 lowercase hex digits (upper case is accepted and lowered). A
subfeed is named by appending ``/<subfeed name>``::

    feed://d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a
    feed://d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a/unit-labels

A subfeed name is 1 to 128 characters from ``A-Z a-z 0-9 . _ -`` that does not
begin with ``.`` or ``-``. The set is small on purpose: a name appears in URIs,
in bucket object paths and on command lines without any quoting, and inside a
signed message it needs no JSON escaping. The grammar is in ``docs/feeds.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidURIError, InvalidValueError

MAX_SUBFEED_NAME = 128
SCHEME = "feed://"

_FEED_ID_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_URI_RE = re.compile(r"feed://([0-9a-fA-F]+)(?:/(.*))?", re.DOTALL)

NAME_RULE = "1 to 128 characters from A-Z a-z 0-9 . _ - that do not begin with '.' or '-'"


@dataclass(frozen=True)
class FeedURI:
    """A parsed feed URI: the feed id and, for a subfeed URI, the subfeed name."""

    feed_id: str
    subfeed: str | None = None

    def __str__(self) -> str:
        return format_feed_uri(self.feed_id, self.subfeed)


def is_subfeed_name(name: object) -> bool:
    """True when ``name`` is a valid subfeed name."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def check_subfeed_name(name: object) -> str:
    """Return ``name`` if it is a valid subfeed name; raise InvalidValueError otherwise."""
    if not is_subfeed_name(name):
        raise InvalidValueError(f"invalid subfeed name {name!r}: a subfeed name is {NAME_RULE}")
    return name  # type: ignore[return-value]


def is_feed_id(value: object) -> bool:
    """True for 64 lowercase hex digits (the form feed ids are stored and signed in)."""
    return isinstance(value, str) and _FEED_ID_RE.fullmatch(value) is not None


def parse_feed_uri(uri: str) -> FeedURI:
    """Parse ``feed://<64 hex>[/<subfeed>]``; raise InvalidURIError naming the problem."""
    if not isinstance(uri, str):
        raise InvalidURIError(f"a feed URI must be a string, not {type(uri).__name__}")
    m = _URI_RE.fullmatch(uri.strip())
    if not m:
        raise InvalidURIError(
            f"not a feed URI: {uri!r} (expected feed://<64 hex digits>, optionally "
            "followed by /<subfeed name>)"
        )
    hex_id, name = m.groups()
    if len(hex_id) != 64:
        raise InvalidURIError(
            f"{uri!r}: a feed id is an Ed25519 public key of 64 hex digits, not {len(hex_id)}"
        )
    if name is not None and not is_subfeed_name(name):
        raise InvalidURIError(
            f"{uri!r}: invalid subfeed name {name!r}; a subfeed name is {NAME_RULE}"
        )
    return FeedURI(hex_id.lower(), name)


def format_feed_uri(feed_id: str, subfeed: str | None = None) -> str:
    """``feed://<feed id>`` or ``feed://<feed id>/<subfeed>``."""
    if not is_feed_id(feed_id):
        raise InvalidValueError(f"a feed id is 64 lowercase hex digits, not {feed_id!r}")
    if subfeed is None:
        return f"{SCHEME}{feed_id}"
    return f"{SCHEME}{feed_id}/{check_subfeed_name(subfeed)}"
