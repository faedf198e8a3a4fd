"""Fixtures of the storage tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["file", "gs"])
def bucket_url(request, tmp_path):
    """A fresh bucket URL: a file:// directory, then a gs:// bucket in the emulator."""
    if request.param == "file":
        return f"file://{tmp_path}/bucket"
    return request.getfixturevalue("gcs_bucket_url")
