"""The bucket layout is a format other nodes rely on: its keys must not drift."""

from kachery_tasks.storage import layout, sync


def test_keys_are_those_the_layout_documents():
    h = "ab" * 32
    assert layout.blob_key(h) == f"blobs/sha256/{h}"
    assert layout.chunk_key(h) == f"chunks/sha256/{h}"
    assert layout.manifest_key(h) == f"manifests/sha256/{h}.json"
    for key in (layout.blob_key(h), layout.chunk_key(h), layout.manifest_key(h)):
        assert key.split("/")[0] in layout.__doc__
    assert sync.blob_key is layout.blob_key  # still importable where it was
