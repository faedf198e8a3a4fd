import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kachery_tasks.errors import CorruptContentError
from kachery_tasks.storage.hashing import digest_bytes
from kachery_tasks.storage.manifest import Manifest


@given(st.binary(min_size=1, max_size=3000), st.integers(min_value=1, max_value=700))
def test_manifest_round_trips(data, chunk_size):
    assume(len(data) > chunk_size)
    d = digest_bytes(data, chunk_size)
    m = Manifest.from_digest(d)
    assert Manifest.from_json(m.to_json()) == m


def _doc(**change):
    d = digest_bytes(b"x" * 2500, 1000)
    doc = json.loads(Manifest.from_digest(d).to_json())
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "bad",
    [b"not json", _doc(format="other"), _doc(size=2501), _doc(chunk_size=999),
     _doc(chunks=[{"offset": 0, "size": 2500, "sha256": "00" * 32}]), _doc(chunks=[])],
)
def test_inconsistent_manifests_are_rejected(bad):
    with pytest.raises(CorruptContentError):
        Manifest.from_json(bad)
