"""Shared fixtures: every test runs against its own fresh node directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def node_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty node directory used as KACHERY_TASKS_DIR for the test."""
    path = tmp_path / "node"
    monkeypatch.setenv("KACHERY_TASKS_DIR", str(path))
    monkeypatch.setenv("KACHERY_TASKS_PROGRESS", "0")
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
