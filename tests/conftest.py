"""Shared fixtures: every test runs against its own fresh node directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Generated tests check behaviour, never speed: on a loaded machine (the suite runs in
# several processes beside the servers it starts) an example may take seconds to draw or
# to run, which is not a failure.
settings.register_profile("kachery", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kachery")


@pytest.fixture(autouse=True)
def node_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty node directory used as KACHERY_TASKS_DIR for the test."""
    path = tmp_path / "node"
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(path))
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "0")
    monkeypatch.delenv("KACHERY_TASKS_BUCKET", raising=False)
    return path


@pytest.fixture
def run_cli(node_path: Path):
    """Run ``kachery-tasks`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*args: str, input: bytes | None = None, env: dict | None = None, check: bool = False):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "kachery_tasks", *args],
            input=input,
            capture_output=True,
            env=full_env,
            check=check,
            timeout=120,
        )

    return run


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A fake-gcs-server on 127.0.0.1 for the whole session."""
    from tests.gcs_emulator import Emulator

    emu = Emulator(tmp_path_factory.mktemp("gcs"))
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A factory of small real file systems, for full-disk tests: ``small_fs("1M")``
    mounts a tmpfs of that size on a fresh directory and returns it (unmounted after
    the test). Needs root (skipped otherwise)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mounts: list[Path] = []

    def mount(size: str = "1M") -> Path:
        where = tmp_path / f"small-fs-{len(mounts)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True, capture_output=True)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


_bucket_counter = iter(range(10**6))


@pytest.fixture
def gcs_bucket_url(gcs_emulator, monkeypatch) -> str:
    """A fresh, empty gs:// bucket (with a prefix) in the emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    name = f"test-bucket-{next(_bucket_counter)}"
    gcs_emulator.create_bucket(name)
    return f"gs://{name}/lab/kachery"
