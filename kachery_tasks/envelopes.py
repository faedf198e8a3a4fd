"""Signed envelopes: the one way a node signs a document and a reader checks it.

An envelope is a JSON object::

    {"kind": "<what it is>", "signer": "<node id: 64 hex>", "body": <JSON value>,
     "signature": "<128 hex>"}

The signature is Ed25519, made by ``signer``'s private key, over the canonical
JSON (see :mod:`.canonical`) of ``{"body", "kind", "signer"}``. The kind is
part of what is signed, so a signature made for one purpose (a task result
record, say) cannot be presented as another (a channel message). Readers name
the kinds they accept; an envelope of any other kind is refused before its
signature is even checked.

Who may sign what is not decided here: a result record is trusted when its
signer is the node it names (or, in a channel, a member allowed to process
tasks); a channel config when its signer is the channel's owner. This module
only answers "did ``signer`` sign exactly this?".

Used by result records published to buckets, channel configs and channel
messages. Feed messages have a signed format of their own (the message bytes
themselves form the hash chain, see ``docs/feeds.md``) and use
:class:`~.keys.KeyPair` directly.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_json
from .errors import EnvelopeError, InvalidValueError
from .keys import KeyPair

#: The largest envelope a reader parses (bytes); larger documents are refused unread.
MAX_ENVELOPE_BYTES = 16 * 2**20

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Envelope:
    """A signed document: ``kind``, ``body``, who signed it and the signature."""

    kind: str
    signer: str
    body: Any
    signature: str

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return signed_bytes(self.kind, self.signer, self.body)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "signer": self.signer, "body": self.body,
                "signature": self.signature}

    def to_bytes(self) -> bytes:
        """The envelope as canonical JSON (what is stored and sent)."""
        return canonical_json(self.to_dict(), what=f"{self.kind} envelope")


def signed_bytes(kind: str, signer: str, body: Any) -> bytes:
    """Canonical JSON of ``{"body", "kind", "signer"}``: what an envelope's signature covers."""
    return canonical_json({"kind": kind, "signer": signer, "body": body},
                          what=f"{kind} envelope body")


def seal(kind: str, body: Any, key: KeyPair) -> Envelope:
    """Sign ``body`` as a document of ``kind`` with ``key`` (which needs its private half)."""
    if not isinstance(kind, str) or not kind:
        raise InvalidValueError(f"an envelope kind is a non-empty string, not {kind!r}")
    return Envelope(kind, key.public_hex, body, key.sign(signed_bytes(kind, key.public_hex, body)))


def open_envelope(
    data: bytes | bytearray | memoryview | str | Mapping[str, Any],
    kinds: str | Collection[str],
    source: str = "envelope",
) -> Envelope:
    """Parse and check a signed document; return it, or raise EnvelopeError saying why.

    ``kinds`` are the kinds the caller accepts. ``source`` names where the
    document came from ("results/ab12.json in gs://lab/kt", say) in errors.
    The signature is checked against the ``signer`` the document names:
    deciding whether that signer may sign it is the caller's job.
    """
    accepted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    doc = _parse(data, source)
    kind, signer, signature = doc.get("kind"), doc.get("signer"), doc.get("signature")
    if set(doc) != {"kind", "signer", "body", "signature"}:
        raise EnvelopeError(
            f"{source} is not a signed envelope: it has fields {sorted(doc)}, expected "
            "body, kind, signature, signer"
        )
    if kind not in accepted:
        raise EnvelopeError(f"{source} is a {kind!r} document, expected {' or '.join(accepted)}")
    if not _is_hex(signer, 64):
        raise EnvelopeError(f"{source}: signer is not a 64-digit hex node id")
    if not _is_hex(signature, 128):
        raise EnvelopeError(f"{source}: signature is not 128 hex digits")
    env = Envelope(kind, signer, doc["body"], signature)
    try:
        message = env.signed_bytes()
    except InvalidValueError as e:
        raise EnvelopeError(f"{source}: {e}") from None
    if not KeyPair(signer).verify(message, signature):
        raise EnvelopeError(f"{source}: the signature does not match its signer {signer[:16]}...")
    return env


def _parse(data: Any, source: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"{source} is {len(data)} bytes, over the envelope limit")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError(f"{source} is not UTF-8 JSON") from None
    elif isinstance(data, str):
        text = data
    else:
        raise EnvelopeError(f"{source}: expected JSON bytes, not {type(data).__name__}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(f"{source} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"{source} is not a JSON object")
    return doc


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX
