"""Feed messages: the signed, hash-chained unit every feed is made of.

The invariant (written down for other implementations in ``docs/feeds.md``)::

    unsigned = canonical_json({"body", "feed", "prev", "seq", "subfeed", "time"})
    signature = Ed25519-sign(private key of `feed`, unsigned)          # 128 hex
    signed   = canonical_json({...the six fields..., "signature"})     # the wire form
    hash     = sha256(signed)                                          # 64 hex

    seq  = 0, 1, 2, ... without gaps within one (feed, subfeed)
    prev = null for seq 0, else the hash of message seq-1 of the same subfeed

``feed`` is the owner's public key in hex, so a message names the key that
must have signed it. Because ``prev`` is inside the signed bytes, the
signature of message *n* also vouches for messages 0..n-1: editing, dropping,
reordering or inserting any earlier message breaks a hash link. A reader can
therefore authenticate a run of messages either by checking every signature
(``verify="full"``) or, far faster, by checking every hash link and the one
signature at the end of the run (``verify="chain"``); both reject the same
tampering by anyone who lacks the private key.

The signed bytes are canonical JSON (:mod:`kachery_tasks.canonical`) and are
stored and exported exactly as they were hashed, one message per line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..canonical import canonical_json
from ..errors import FeedVerificationError, InvalidValueError
from ..keys import KeyPair
from .uris import format_feed_uri, is_feed_id, is_subfeed_name

MAX_BODY_BYTES = 1 << 20
"""Largest body, in bytes of its canonical JSON encoding (1 MiB)."""

MAX_BODY_DEPTH = 100
"""Deepest nesting of arrays and objects in a body (``[[1]]`` is 2 levels).

Decoding JSON recurses once per level, so a body nested close to Python's
recursion limit can be appended or imported yet not read back; bodies deeper
than this are refused at append and at import instead."""

MAX_TIME_MS = 2**53 - 1
MAX_SEQ = 2**63 - 1
FIELDS = frozenset(("body", "feed", "prev", "seq", "signature", "subfeed", "time"))

_HASH_RE = re.compile(r"[0-9a-f]{64}")
_SIG_RE = re.compile(r"[0-9a-f]{128}")
_SIG_KEY = b',"signature":"'
_SIG_FIELD_LEN = len(_SIG_KEY) + 128 + 1


@dataclass(frozen=True, slots=True)
class Message:
    """One verified feed message.

    ``time`` is seconds since the Unix epoch (the wire form carries whole
    milliseconds, ``time_ms``); ``body`` is the JSON value as decoded from the
    signed bytes; ``hash`` is the SHA-256 (hex) of the signed bytes, which the
    next message of the subfeed carries as its ``prev``.
    """

    feed: str
    subfeed: str
    seq: int
    prev: str | None
    time_ms: int
    body: Any
    signature: str
    hash: str

    @property
    def time(self) -> float:
        """Seconds since the Unix epoch at which the owner appended the message."""
        return self.time_ms / 1000.0

    @property
    def uri(self) -> str:
        """The URI of the message's subfeed."""
        return format_feed_uri(self.feed, self.subfeed)

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict (what :func:`import_messages` accepts)."""
        return {
            "body": self.body,
            "feed": self.feed,
            "prev": self.prev,
            "seq": self.seq,
            "signature": self.signature,
            "subfeed": self.subfeed,
            "time": self.time_ms,
        }

    def to_bytes(self) -> bytes:
        """The signed bytes (canonical JSON) whose SHA-256 is :attr:`hash`."""
        return canonical_json(self.to_dict())


class SignedMessage(NamedTuple):
    """A message in wire form, ready to store: its fields, signed bytes and hash."""

    feed: str
    subfeed: str
    seq: int
    prev: str | None
    time_ms: int
    signature: str
    hash: str
    data: bytes


def verification_error(
    feed: str | None, subfeed: str | None, seq: int | None, reason: str, advice: str = ""
) -> FeedVerificationError:
    """A FeedVerificationError that names the feed, subfeed and seq (also as attributes)."""
    where = f"feed://{feed}" if feed else "feed message"
    if subfeed is not None:
        where += f"/{subfeed}"
    if seq is not None:
        where += f" seq {seq}"
    return FeedVerificationError(
        f"{where}: {reason}" + (f"; {advice}" if advice else ""),
        feed=feed, subfeed=subfeed, seq=seq,
    )




_DECODE = json.JSONDecoder().decode
TOO_DEEP_TO_DECODE = (
    f"stored body is nested too deeply to decode (over {MAX_BODY_DEPTH} levels, stored "
    "before that limit was enforced)"
)


def decode_json(data: bytes) -> Any:
    """Decode stored UTF-8 JSON (ValueError if it is not), without json.loads's
    detection of other encodings, a measurable cost per message read."""
    return _DECODE(data.decode("utf-8"))


def _non_str_key(value: Any) -> Any:
    """A dict key anywhere in ``value`` that is not a string (``_NO_BAD_KEY`` if none).

    json.dumps turns such keys (10, 2.5, True, None) into strings, but sorts
    them as they were (10 after 9), so the bytes would not survive a decode
    and re-encode, and the message could not be imported elsewhere.
    """
    stack = [value]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue  # shared or circular (the encoder refuses circular values)
        seen.add(id(v))
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return k
                if isinstance(x, (dict, list, tuple)):
                    stack.append(x)
        else:
            stack.extend(x for x in v if isinstance(x, (dict, list, tuple)))
    return _NO_BAD_KEY


_NO_BAD_KEY = object()


def encode_body(body: Any) -> bytes:
    """The canonical JSON of a body; InvalidValueError if it is not JSON or too large."""
    if isinstance(body, (dict, list, tuple)):
        _refuse_non_str_keys(body)
    return _encode(body)


def encode_and_decode_body(body: Any) -> tuple[bytes, Any]:
    """The canonical JSON of a body and the value a reader decodes from it.

    Same checks as :func:`encode_body`. The decoded value is needed anyway (it
    is what an appended Message holds), and comparing it with ``body`` is far
    cheaper than walking the body for keys that are not strings: only a body
    that does not read back equal (non-string keys, tuples) is walked.
    """
    try:
        data = _encode(body)
    except InvalidValueError:
        if isinstance(body, (dict, list, tuple)):
            _refuse_non_str_keys(body)  # the clearer reason, when it is one
        raise
    decoded = decode_json(data)
    if decoded != body:
        _refuse_non_str_keys(body)
    return data, decoded


def _refuse_non_str_keys(body: Any) -> None:
    key = _non_str_key(body)
    if key is not _NO_BAD_KEY:
        raise InvalidValueError(
            f"message body has an object key that is not a string: {key!r}; JSON object "
            "keys are strings, so convert it (e.g. with str()) before appending"
        )


def _encode(body: Any) -> bytes:
    try:
        data = canonical_json(body, "message body")
    except InvalidValueError:
        if _too_deep(body):  # the encoder ran out of stack: say why
            raise _too_deep_error() from None
        raise
    if len(data) > MAX_BODY_BYTES:
        raise InvalidValueError(
            f"message body is {len(data)} bytes of JSON, over the limit of {MAX_BODY_BYTES} "
            "(1 MiB); store large data with kachery.store_json/store_file and append its URI"
        )
    # Each level opens with a bracket, so a body with few brackets is shallow
    # enough: only bodies with many are walked.
    if data.count(b"[") + data.count(b"{") > MAX_BODY_DEPTH and _too_deep(body):
        raise _too_deep_error()
    return data


def _too_deep_error() -> InvalidValueError:
    return InvalidValueError(
        f"message body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep, "
        "which readers could not decode; flatten it, or store it with kachery.store_json "
        "and append its URI"
    )


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests containers more than MAX_BODY_DEPTH levels deep."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if not isinstance(v, (dict, list, tuple)):
            continue
        if depth > MAX_BODY_DEPTH:
            return True
        stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _parts(
    feed: str, subfeed: str, seq: int, prev: str | None, time_ms: int, body_json: bytes
) -> tuple[bytes, bytes]:
    """The canonical JSON around the place where the signature goes (keys sorted)."""
    prev_json = b"null" if prev is None else b'"%s"' % prev.encode()
    head = b'{"body":%b,"feed":"%b","prev":%b,"seq":%d' % (body_json, feed.encode(), prev_json, seq)
    tail = b',"subfeed":"%b","time":%d}' % (subfeed.encode(), time_ms)
    return head, tail


def unsigned_bytes(
    feed: str, subfeed: str, seq: int, prev: str | None, time_ms: int, body_json: bytes
) -> bytes:
    """Canonical JSON of the six signed fields, built without re-encoding the body.

    Equal to ``canonical_json({...})`` of the same fields (the tests use it as
    the oracle for sign_message's byte building); valid only for a
    lowercase-hex ``feed``/``prev`` and a valid subfeed name, which need no
    escaping.
    """
    head, tail = _parts(feed, subfeed, seq, prev, time_ms, body_json)
    return head + tail


def sign_message(
    key: KeyPair, subfeed: str, seq: int, prev: str | None, time_ms: int, body_json: bytes
) -> SignedMessage:
    """Sign one message with the feed's key and return it in wire form with its hash."""
    feed = key.public_hex
    head, tail = _parts(feed, subfeed, seq, prev, time_ms, body_json)
    signature = key.sign(head + tail)
    data = b'%b,"signature":"%b"%b' % (head, signature.encode(), tail)
    return SignedMessage(
        feed, subfeed, seq, prev, time_ms, signature, hashlib.sha256(data).hexdigest(), data
    )


def split_signature(data: bytes) -> tuple[bytes, str]:
    """Split signed bytes into the unsigned bytes and the signature hex.

    The ``signature`` field sorts after ``body``, and the fields after it
    (``subfeed``, ``time``) cannot contain its key, so its last occurrence is
    the field itself. ValueError if there is none.
    """
    i = data.rindex(_SIG_KEY)
    end = i + _SIG_FIELD_LEN
    if data[end - 1 : end] != b'"':
        raise ValueError("malformed signature field")
    return data[:i] + data[end:], data[i + len(_SIG_KEY) : end - 1].decode("ascii")


def message_from_mapping(obj: Any) -> SignedMessage:
    """Validate a message received from elsewhere and return it in canonical wire form.

    Checks the structure (exactly the seven fields, each of the right type and
    form, a body within the size limit) and the signature. The chain (seq and
    prev against the neighbours) is the caller's to check. Raises
    FeedVerificationError naming the feed, subfeed and seq.
    """
    if not isinstance(obj, Mapping):
        raise verification_error(
            None, None, None, f"a message is a JSON object, not {type(obj).__name__}"
        )
    feed = obj.get("feed")
    subfeed = obj.get("subfeed")
    seq = obj.get("seq")
    feed_s = feed if isinstance(feed, str) else None
    sub_s = subfeed if isinstance(subfeed, str) else None
    seq_i = seq if isinstance(seq, int) and not isinstance(seq, bool) else None

    def bad(reason: str) -> FeedVerificationError:
        return verification_error(feed_s, sub_s, seq_i, reason)

    keys = set(obj)
    if keys != FIELDS:
        missing, extra = sorted(FIELDS - keys), sorted(map(str, keys - FIELDS))
        raise bad(f"wrong fields (missing {missing}, unexpected {extra})")
    if not is_feed_id(feed):
        raise bad("'feed' is not 64 lowercase hex digits")
    if not is_subfeed_name(subfeed):
        raise bad("'subfeed' is not a valid subfeed name")
    if seq_i is None or not 0 <= seq_i <= MAX_SEQ:
        raise bad("'seq' is not a whole number >= 0")
    prev = obj["prev"]
    if seq_i == 0:
        if prev is not None:
            raise bad("'prev' of the first message (seq 0) must be null")
    elif not (isinstance(prev, str) and _HASH_RE.fullmatch(prev)):
        raise bad("'prev' is not a SHA-256 hash (64 lowercase hex digits)")
    t = obj["time"]
    if not (isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TIME_MS):
        raise bad("'time' is not a whole number of milliseconds")
    signature = obj["signature"]
    if not (isinstance(signature, str) and _SIG_RE.fullmatch(signature)):
        raise bad("'signature' is not 128 lowercase hex digits")
    try:
        body_json = encode_body(obj["body"])
    except InvalidValueError as e:
        raise bad(str(e)) from None
    head, tail = _parts(feed, subfeed, seq_i, prev, t, body_json)
    if not verifier_for(feed).verify(head + tail, signature):
        raise bad("the signature does not match (forged or edited message)")
    data = b'%b,"signature":"%b"%b' % (head, signature.encode(), tail)
    return SignedMessage(
        feed, subfeed, seq_i, prev, t, signature, hashlib.sha256(data).hexdigest(), data
    )


_verifiers: dict[str, KeyPair] = {}


def verifier_for(feed: str) -> KeyPair:
    """A (cached) public-key-only KeyPair that verifies the feed's signatures."""
    kp = _verifiers.get(feed)
    if kp is None:
        if len(_verifiers) > 1024:
            _verifiers.clear()
        kp = _verifiers[feed] = KeyPair(feed)
    return kp


def stored_message(d: dict, hash_hex: str) -> Message:
    """The Message a decoded stored row holds (KeyError/TypeError if a field is missing)."""
    return Message(
        d["feed"], d["subfeed"], d["seq"], d["prev"], d["time"], d["body"], d["signature"],
        hash_hex,
    )


class ChainReader:
    """Turns stored rows of one subfeed, in order, into verified Messages.

    Every row is checked against the invariant except the signature:
    consecutive seq, stored hash equal to the SHA-256 of the stored bytes, the
    fields inside the bytes equal to the row's place, and ``prev`` equal to
    the previous message's hash. Signatures are checked on every message with
    ``every_signature=True``; otherwise the caller calls :meth:`seal` at the
    end of each run it hands out, which checks the last signature and thereby
    (through the links) the whole run.
    """

    __slots__ = (
        "_sealed", "deferred", "every_signature", "feed", "next_seq", "prev", "subfeed", "verifier"
    )

    def __init__(
        self, feed: str, subfeed: str, seq: int, prev: str | None, every_signature: bool
    ) -> None:
        self.feed = feed
        self.subfeed = subfeed
        self.next_seq = seq
        self.prev = prev
        self.every_signature = every_signature
        self.verifier = verifier_for(feed)
        self._sealed: tuple[int, bytes] | None = None
        # With every_signature, (seq, unsigned bytes, signature) to be checked by the
        # caller instead (see defer_signatures); None: checked here, one by one.
        self.deferred: list[tuple[int, bytes, str]] | None = None

    def defer_signatures(self) -> None:
        """Collect each message's signature in :attr:`deferred` instead of checking it.

        The caller must check them all (in bulk, elsewhere) before it hands out
        the messages they sign.
        """
        self.deferred = []

    def error(self, seq: int, reason: str) -> FeedVerificationError:
        return verification_error(
            self.feed,
            self.subfeed,
            seq,
            reason,
            "the local copy of this feed is damaged; move the node's feeds/feeds.db aside "
            "and import the feed again from an export or from its owner",
        )

    def check(self, seq: int, hash_hex: str, data: bytes) -> Message:
        """Check one row (seq, hash, signed bytes) and return its Message."""
        if seq != self.next_seq:
            raise self.error(self.next_seq, f"message is missing (found seq {seq} next)")
        if hashlib.sha256(data).hexdigest() != hash_hex:
            raise self.error(seq, "stored bytes do not match their hash (edited or corrupted)")
        try:
            d = decode_json(data)
            fields = (d["feed"], d["subfeed"], d["seq"], d["prev"])
            m = stored_message(d, hash_hex)
        except (ValueError, KeyError, TypeError):
            raise self.error(seq, "stored bytes are not a feed message") from None
        except RecursionError:
            raise self.error(seq, TOO_DEEP_TO_DECODE) from None
        if fields != (self.feed, self.subfeed, seq, self.prev):
            raise self.error(
                seq,
                "message does not link to the previous one (feed, subfeed, "
                "seq or prev differ from its place in the chain)",
            )
        if self.deferred is not None:
            self.deferred.append((seq, *self._split(seq, data)))
        elif self.every_signature:
            self._check_signature(seq, data)
        else:
            self._sealed = (seq, data)
        self.next_seq = seq + 1
        self.prev = hash_hex
        return m

    def seal(self) -> None:
        """Check the signature of the last message checked since the previous seal."""
        if self._sealed is not None:
            seq, data = self._sealed
            self._sealed = None
            self._check_signature(seq, data)

    def _split(self, seq: int, data: bytes) -> tuple[bytes, str]:
        try:
            return split_signature(data)
        except (ValueError, UnicodeDecodeError):
            raise self.error(seq, "stored message has no well-formed signature") from None

    def _check_signature(self, seq: int, data: bytes) -> None:
        unsigned, signature = self._split(seq, data)
        if not self.verifier.verify(unsigned, signature):
            raise self.bad_signature(seq)

    def bad_signature(self, seq: int) -> FeedVerificationError:
        """The error for a message whose signature does not match."""
        return self.error(seq, "the signature does not match (forged or edited message)")
