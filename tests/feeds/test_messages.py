"""Message format: canonical encoding, signing, hashing, verification of one message
and of a chain, and the test vector published in docs/feeds.md."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.canonical import canonical_json
from kachery_tasks.errors import FeedVerificationError, InvalidValueError
from kachery_tasks.feeds.messages import (
    MAX_BODY_BYTES,
    MAX_BODY_DEPTH,
    ChainReader,
    Message,
    encode_and_decode_body,
    encode_body,
    message_from_mapping,
    sign_message,
    split_signature,
    unsigned_bytes,
)
from kachery_tasks.keys import KeyPair

DOC = Path(__file__).resolve().parents[2] / "docs" / "feeds.md"
KEY = KeyPair.generate()
OTHER = KeyPair.generate()

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
names = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def _no_surrogates(value) -> bool:
    try:
        canonical_json(value)
    except (InvalidValueError, UnicodeEncodeError):
        return False
    return True


def _vector() -> dict[str, str]:
    block = re.search(r"```text\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block, "docs/feeds.md has no test vector block"
    return dict(line.split(": ", 1) for line in block.group(1).strip().splitlines())


def _chain(n: int, subfeed: str = "s", key: KeyPair = KEY) -> list:
    out, prev = [], None
    for i in range(n):
        m = sign_message(key, subfeed, i, prev, 1000 + i, encode_body({"i": i}))
        out.append(m)
        prev = m.hash
    return out


# ----------------------------------------------------------- test vector
def test_documented_test_vector():
    v = _vector()
    key = KeyPair.from_private_bytes(bytes.fromhex(v["private_key"]))
    assert key.public_hex == v["feed"]
    body0 = encode_body(json.loads(v["message_0_body"]))
    m0 = sign_message(key, v["subfeed"], 0, None, int(v["message_0_time"]), body0)
    assert (
        unsigned_bytes(
            key.public_hex, v["subfeed"], 0, None, int(v["message_0_time"]), body0
        ).decode()
        == v["message_0_unsigned"]
    )
    assert m0.signature == v["message_0_signature"]
    assert m0.hash == v["message_0_hash"]
    assert hashlib.sha256(m0.data).hexdigest() == v["message_0_hash"]
    m1 = sign_message(
        key,
        v["subfeed"],
        1,
        m0.hash,
        int(v["message_1_time"]),
        encode_body(json.loads(v["message_1_body"])),
    )
    assert m1.prev == v["message_1_prev"]
    assert m1.signature == v["message_1_signature"]
    assert m1.hash == v["message_1_hash"]


def test_documented_signed_line_is_message_0():
    v = _vector()
    line = re.search(r"```json\n(.*?)\n```", DOC.read_text(), re.DOTALL).group(1)
    m = message_from_mapping(json.loads(line))
    assert m.data.decode() == line
    assert m.hash == v["message_0_hash"]


# -------------------------------------------------------------- encoding
@settings(max_examples=200)
@given(
    json_values.filter(_no_surrogates),
    names,
    st.integers(0, 2**63 - 1),
    st.none() | hashes,
    st.integers(0, 2**53 - 1),
)
def test_fast_encoder_equals_canonical_json(body, subfeed, seq, prev, t):
    expected = canonical_json(
        {
            "body": body,
            "feed": KEY.public_hex,
            "prev": prev,
            "seq": seq,
            "subfeed": subfeed,
            "time": t,
        }
    )
    assert unsigned_bytes(KEY.public_hex, subfeed, seq, prev, t, encode_body(body)) == expected


@settings(max_examples=50, deadline=None)
@given(json_values.filter(_no_surrogates), names, st.integers(0, 10**6), st.none() | hashes)
def test_sign_parse_round_trip(body, subfeed, seq, prev):
    prev = None if seq == 0 else (prev or "0" * 64)
    m = sign_message(KEY, subfeed, seq, prev, 123, encode_body(body))
    wire = json.loads(m.data)
    assert m.data == canonical_json(wire)
    assert wire["signature"] == m.signature
    again = message_from_mapping(wire)
    assert again == m
    unsigned, signature = split_signature(m.data)
    assert signature == m.signature
    assert unsigned == unsigned_bytes(KEY.public_hex, subfeed, seq, prev, 123, encode_body(body))


def test_parser_accepts_any_json_spelling():
    m = _chain(1)[0]
    spaced = json.dumps(json.loads(m.data), indent=2, ensure_ascii=True)
    assert message_from_mapping(json.loads(spaced)).data == m.data


def test_body_size_limit():
    at_limit = "x" * (MAX_BODY_BYTES - 2)  # plus the two quotes
    assert len(encode_body(at_limit)) == MAX_BODY_BYTES
    with pytest.raises(InvalidValueError, match="over the limit"):
        encode_body(at_limit + "x")


@pytest.mark.parametrize(
    "body", [object(), {1, 2}, float("nan"), float("inf"), b"bytes", "\ud800", {"a": [1, object()]}]
)
def test_non_json_bodies_are_refused(body):
    with pytest.raises(InvalidValueError):
        encode_body(body)


any_keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
loose_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(any_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(loose_values)
def test_every_accepted_body_survives_decode_and_reencode(body):
    """What append accepts, another node must be able to re-encode to the same bytes
    (imports re-encode before checking the signature)."""
    try:
        data = encode_body(body)
    except InvalidValueError:
        return
    assert encode_body(json.loads(data)) == data


@pytest.mark.parametrize("body", [{10: "a", 9: "b"}, [{"a": {None: 1}}], {"x": [(1, {2.5: 0})]}])
def test_non_string_keys_are_refused(body):
    with pytest.raises(InvalidValueError, match="not a string"):
        encode_body(body)


def test_shared_substructures_are_fine():
    shared = {"a": 1}
    assert encode_body([shared, shared, {"s": shared}]) == b'[{"a":1},{"a":1},{"s":{"a":1}}]'


def test_circular_and_absurdly_deep_bodies_are_refused():
    circular: list = []
    circular.append(circular)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for body in (circular, deep):
        with pytest.raises(InvalidValueError):
            encode_body(body)


def test_message_helpers():
    m = _chain(1)[0]
    msg = Message(m.feed, m.subfeed, m.seq, m.prev, m.time_ms, {"i": 0}, m.signature, m.hash)
    assert msg.time == 1.0
    assert msg.to_bytes() == m.data
    assert msg.uri == f"feed://{KEY.public_hex}/s"


# -------------------------------------------------- one received message
def _wire(m) -> dict:
    return json.loads(m.data)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("body", {"i": 99}, "signature"),
        ("seq", 7, "signature"),
        ("time", 5, "signature"),
        ("subfeed", "other", "signature"),
        ("prev", "1" * 64, "signature"),
        ("signature", "0" * 128, "signature"),
        ("feed", OTHER.public_hex, "signature"),
        ("seq", True, "seq"),
        ("seq", -1, "seq"),
        ("seq", "1", "seq"),
        ("prev", None, "prev"),
        ("prev", "A" * 64, "prev"),
        ("time", 1.5, "time"),
        ("time", -1, "time"),
        ("signature", "ab", "signature"),
        ("feed", KEY.public_hex.upper(), "feed"),
        ("subfeed", "bad name", "subfeed"),
        ("body", "x" * MAX_BODY_BYTES, "limit"),
    ],
    ids=lambda v: f"{len(v)}-chars" if isinstance(v, str) and len(v) > 20 else None,  # keys vary
)
def test_tampered_or_malformed_message_is_rejected(field, value, reason):
    m = _chain(2)[1]
    wire = _wire(m)
    wire[field] = value
    with pytest.raises(FeedVerificationError, match=reason):
        message_from_mapping(wire)


def test_rejection_names_feed_subfeed_and_seq():
    wire = _wire(_chain(2)[1])
    wire["body"] = "forged"
    with pytest.raises(FeedVerificationError) as info:
        message_from_mapping(wire)
    e = info.value
    assert (e.feed, e.subfeed, e.seq) == (KEY.public_hex, "s", 1)
    assert f"feed://{KEY.public_hex}/s seq 1" in str(e)


def test_first_message_must_have_null_prev():
    wire = _wire(_chain(1)[0])
    wire["prev"] = "0" * 64
    with pytest.raises(FeedVerificationError, match="null"):
        message_from_mapping(wire)


@pytest.mark.parametrize("change", ["drop", "extra", "not a dict"])
def test_wrong_shape_is_rejected(change):
    wire = _wire(_chain(1)[0])
    if change == "drop":
        del wire["time"]
    elif change == "extra":
        wire["note"] = "x"
    else:
        wire = [wire]
    with pytest.raises(FeedVerificationError):
        message_from_mapping(wire)


# ---------------------------------------------------------- chain reader
def _rows(msgs) -> list[tuple[int, str, bytes]]:
    return [(m.seq, m.hash, m.data) for m in msgs]


def test_chain_reader_accepts_a_good_chain_in_both_modes():
    for every in (True, False):
        reader = ChainReader(KEY.public_hex, "s", 0, None, every)
        got = [reader.check(*row) for row in _rows(_chain(5))]
        reader.seal()
        assert [m.body for m in got] == [{"i": i} for i in range(5)]
        assert [m.seq for m in got] == list(range(5))


def test_chain_reader_can_start_mid_chain():
    msgs = _chain(5)
    reader = ChainReader(KEY.public_hex, "s", 3, msgs[2].hash, True)
    assert [reader.check(*r).seq for r in _rows(msgs[3:])] == [3, 4]


def test_chain_reader_detects_a_gap():
    rows = _rows(_chain(4))
    del rows[2]
    reader = ChainReader(KEY.public_hex, "s", 0, None, False)
    with pytest.raises(FeedVerificationError, match="missing") as info:
        for row in rows:
            reader.check(*row)
    assert info.value.seq == 2


def test_chain_reader_detects_bytes_that_do_not_match_their_hash():
    rows = _rows(_chain(3))
    seq, h, data = rows[1]
    rows[1] = (seq, h, data.replace(b'"i":1', b'"i":7'))
    reader = ChainReader(KEY.public_hex, "s", 0, None, False)
    with pytest.raises(FeedVerificationError, match="hash") as info:
        for row in rows:
            reader.check(*row)
    assert info.value.seq == 1


def test_chain_reader_detects_a_broken_link():
    a = _chain(2)
    other = sign_message(KEY, "s", 1, "f" * 64, 5, encode_body("x"))
    reader = ChainReader(KEY.public_hex, "s", 0, None, True)
    reader.check(*_rows(a)[0])
    with pytest.raises(FeedVerificationError, match="link") as info:
        reader.check(other.seq, other.hash, other.data)
    assert info.value.seq == 1


def test_seal_detects_a_forged_last_message():
    msgs = _chain(3)
    forged = sign_message(OTHER, "s", 2, msgs[1].hash, 1002, encode_body({"i": 2}))
    data = forged.data.replace(OTHER.public_hex.encode(), KEY.public_hex.encode())
    rows = [*_rows(msgs[:2]), (2, hashlib.sha256(data).hexdigest(), data)]
    reader = ChainReader(KEY.public_hex, "s", 0, None, False)
    for row in rows:
        reader.check(*row)  # hashes and links are fine ...
    with pytest.raises(FeedVerificationError, match="signature") as info:
        reader.seal()  # ... but the signature is not the owner's
    assert info.value.seq == 2


def test_chain_reader_rejects_bytes_that_are_not_a_message():
    data = b"not json"
    reader = ChainReader(KEY.public_hex, "s", 0, None, False)
    with pytest.raises(FeedVerificationError, match="not a feed message"):
        reader.check(0, hashlib.sha256(data).hexdigest(), data)


@settings(max_examples=300)
@given(loose_values)
def test_encode_and_decode_agrees_with_encode_body(body):
    """The append path's shortcut (compare the decoded value instead of walking the
    body) accepts and refuses exactly what encode_body does, with the same bytes."""
    try:
        expected = encode_body(body)
    except InvalidValueError as e:
        with pytest.raises(InvalidValueError, match=str(e).split(":")[0]):
            encode_and_decode_body(body)
        return
    data, decoded = encode_and_decode_body(body)
    assert data == expected and decoded == json.loads(expected)


@pytest.mark.parametrize("body", [{10: "a", 9: "b"}, [{"a": {None: 1}}], {"x": [(1, {2.5: 0})]}])
def test_non_string_keys_are_refused_on_the_append_path(body):
    with pytest.raises(InvalidValueError, match="not a string"):
        encode_and_decode_body(body)


# ----------------------------------------------------------------- nesting
def _nested(depth: int, leaf=1, kinds: str = "l"):
    """A value ``depth`` containers deep, alternating list/dict as ``kinds`` says."""
    value = leaf
    for i in range(depth):
        value = [value] if kinds[i % len(kinds)] == "l" else {"k": value}
    return value


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(0, MAX_BODY_DEPTH + 40),
    kinds=st.sampled_from(["l", "d", "ld", "dl"]),
    siblings=st.lists(json_scalars, max_size=3),
)
def test_bodies_nested_up_to_the_limit_are_accepted_and_deeper_refused(depth, kinds, siblings):
    body = [*siblings, _nested(depth, kinds=kinds)] if siblings else _nested(depth, kinds=kinds)
    levels = depth + (1 if siblings else 0)
    if levels <= MAX_BODY_DEPTH:
        data, decoded = encode_and_decode_body(body)
        assert json.loads(data) == decoded
        encode_body(body)
    else:
        for encode in (encode_and_decode_body, encode_body):
            with pytest.raises(InvalidValueError, match=f"more than {MAX_BODY_DEPTH} levels"):
                encode(body)


def test_many_shallow_brackets_are_not_too_deep():
    body = {"rows": [[i, {"a": [i]}] for i in range(2000)], "text": "[[[[{{{{" * 100}
    encode_and_decode_body(body)  # 6000+ brackets, 4 levels


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth  # built without recursion


@pytest.mark.parametrize("depth", [MAX_BODY_DEPTH + 1, 990, 5000])
def test_an_imported_message_nested_too_deeply_is_refused(depth):
    m = sign_message(KEY, "main", 0, None, 1000, _deep_json(depth))  # an older or hostile writer
    obj = {k: v for k, v in json.loads(m.data.replace(_deep_json(depth), b"0")).items()}
    obj["body"] = _nested(depth)
    with pytest.raises(FeedVerificationError, match=r"seq 0: .*more than 100 levels") as e:
        message_from_mapping(obj)
    assert "\n" not in str(e.value) and e.value.seq == 0


def test_reading_a_stored_message_too_deep_to_decode_names_it():
    m = sign_message(KEY, "main", 0, None, 1000, _deep_json(100_000))
    reader = ChainReader(KEY.public_hex, "main", 0, None, every_signature=True)
    with pytest.raises(FeedVerificationError, match="seq 0: stored body is nested too deeply"):
        reader.check(0, m.hash, m.data)
