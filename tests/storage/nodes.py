"""Node directories for transfer tests: each with its own store and chunk size."""

from __future__ import annotations

from kachery_tasks.config import init_node_dir
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.local import LocalStore, get_store
from kachery_tasks.storage.sync import upload


def _node(tmp_path, name: str, chunk: str = "64KiB") -> LocalStore:
    path = tmp_path / name
    path.mkdir()
    (path / "config.toml").write_text(f'[store]\nchunk_size = "{chunk}"\n')
    return get_store(init_node_dir(path))


def _shared(tmp_path, bucket_url: str, data: bytes):
    """Nodes a and b, the bucket, and ``data`` stored by a and uploaded."""
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket(bucket_url)
    uri = a.store_bytes(data)
    upload(a, bucket, uri)
    return a, b, bucket, uri
