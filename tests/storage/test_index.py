"""The store's index: what a row learns when the same content is recorded again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.storage.index import SHA1_PENDING, Index

_SHA1S = st.sampled_from([None, SHA1_PENDING, "a" * 40, "b" * 40])


@settings(max_examples=80, deadline=None)
@given(st.lists(_SHA1S, min_size=1, max_size=5))
def test_a_known_alias_is_never_lost_nor_a_wanted_one_forgotten(tmp_path_factory, recorded):
    """The first SHA-1 learned stays; 'still to compute' outlives 'no alias wanted'."""
    index = Index(tmp_path_factory.mktemp("index") / "index.db")
    for sha1 in recorded:
        index.record_blob("f" * 64, 10, sha1, None)
    known = [s for s in recorded if s]
    want = known[0] if known else (SHA1_PENDING if SHA1_PENDING in recorded else None)
    row = index.get("f" * 64)
    assert row.sha1 == want and row.sha1_pending == (want == SHA1_PENDING)
    index.set_sha1("f" * 64, "c" * 40)  # what a computation finds is kept only if pending
    assert index.get("f" * 64).sha1 == ("c" * 40 if want == SHA1_PENDING else want)
    index.close()


def test_pending_aliases_are_listed_oldest_first_without_manifests(tmp_path):
    index = Index(tmp_path / "index.db")
    index.record_blob("1" * 64, 1, SHA1_PENDING, None)
    index.record_blob("2" * 64, 1, "a" * 40, None)
    index.record_blob("3" * 64, 1, None, None, role="manifest")
    index.record_blob("4" * 64, 1, SHA1_PENDING, None)
    assert [r.sha256 for r in index.sha1_pending()] == ["1" * 64, "4" * 64]
    assert index.set_manifest("1" * 64, "3" * 64) and not index.set_manifest("9" * 64, "3" * 64)
    assert index.get("1" * 64).manifest == "3" * 64
    index.close()
