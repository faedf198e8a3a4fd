"""Signed envelopes: what is signed, and every way a document is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_tasks.canonical import canonical_json
from kachery_tasks.envelopes import Envelope, open_envelope, seal, signed_bytes
from kachery_tasks.errors import EnvelopeError, InvalidValueError
from kachery_tasks.keys import KeyPair

KEY = KeyPair.from_private_bytes(bytes(range(32)))
OTHER = KeyPair.from_private_bytes(bytes(range(1, 33)))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_a_sealed_body_round_trips_through_bytes(body):
    env = seal("result-record", body, KEY)
    back = open_envelope(env.to_bytes(), "result-record")
    assert back == env
    assert back.signer == KEY.public_hex


def test_the_signature_covers_kind_signer_and_body_in_canonical_json():
    env = seal("k", {"b": 1, "a": [1, 2]}, KEY)
    body = {"a": [1, 2], "b": 1}
    expected = canonical_json({"kind": "k", "signer": KEY.public_hex, "body": body})
    assert signed_bytes("k", KEY.public_hex, env.body) == expected
    assert KEY.verify(expected, env.signature)


def test_an_envelope_of_another_kind_is_refused_even_with_a_good_signature():
    env = seal("result-record", {"x": 1}, KEY)
    with pytest.raises(EnvelopeError, match="expected channel-message"):
        open_envelope(env.to_bytes(), "channel-message")
    either = open_envelope(env.to_dict(), ["channel-message", "result-record"])
    assert either.kind == "result-record"


def test_a_signature_cannot_be_moved_to_another_kind():
    env = seal("result-record", {"x": 1}, KEY)
    moved = {**env.to_dict(), "kind": "channel-message"}
    with pytest.raises(EnvelopeError, match="signature does not match"):
        open_envelope(moved, "channel-message")


@pytest.mark.parametrize("change", [
    lambda d: d.update(body={"x": 2}),
    lambda d: d.update(signer=OTHER.public_hex),
    lambda d: d.update(signature=OTHER.sign(b"x")),
])
def test_an_edited_envelope_is_refused(change):
    d = seal("k", {"x": 1}, KEY).to_dict()
    change(d)
    with pytest.raises(EnvelopeError, match="signature does not match"):
        open_envelope(json.dumps(d).encode(), "k")


def test_a_document_signed_by_another_key_verifies_as_that_signer():
    env = seal("k", {"node": KEY.public_hex}, OTHER)
    assert open_envelope(env.to_bytes(), "k").signer == OTHER.public_hex


@pytest.mark.parametrize("data,match", [
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"kind": "k"}', "not a signed envelope"),
    (json.dumps({"kind": "k", "signer": "zz", "body": 1, "signature": "00" * 64}).encode(),
     "signer is not"),
    (json.dumps({"kind": "k", "signer": "0" * 64, "body": 1, "signature": "0"}).encode(),
     "signature is not"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (12, "expected JSON bytes"),
])
def test_malformed_documents_are_refused_with_a_reason(data, match):
    with pytest.raises(EnvelopeError, match=match):
        open_envelope(data, "k", source="results/x.json")


def test_an_envelope_over_the_size_limit_is_refused_unread(monkeypatch):
    import kachery_tasks.envelopes as envelopes

    monkeypatch.setattr(envelopes, "MAX_ENVELOPE_BYTES", 100)
    data = seal("k", "x" * 200, KEY).to_bytes()
    with pytest.raises(EnvelopeError, match="over the envelope limit"):
        open_envelope(data, "k")


def test_sealing_needs_a_kind_and_a_json_body():
    with pytest.raises(InvalidValueError):
        seal("", {}, KEY)
    with pytest.raises(InvalidValueError):
        seal("k", {"x": float("nan")}, KEY)


def test_envelope_is_a_value():
    env = seal("k", [1], KEY)
    assert Envelope(**env.to_dict()) == env
