"""Fixtures of the runtime tests."""

from __future__ import annotations

import pytest

from kachery_tasks.storage.buckets import open_bucket


@pytest.fixture
def shared(tmp_path, monkeypatch, request):
    """A bucket shared by node directories: ``(use, bucket)``; ``use("a")`` switches node.

    Parametrize indirectly with ``"file"`` (a file:// bucket) or ``"gs"`` (the emulator).
    """
    url = (f"file://{tmp_path}/bucket" if request.param == "file"
           else request.getfixturevalue("gcs_bucket_url"))
    monkeypatch.setenv("KACHERY_TASKS_BUCKET", url)

    def use(name):
        monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / name))

    return use, open_bucket(url)
