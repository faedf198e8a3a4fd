"""The shipped contract suites run in a third party's test tree: no conftest of ours,
no fixture of ours, nothing imported from our tests/ but the toy backend under test."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from kachery_tasks.testing.buckets import BucketContract
from kachery_tasks.testing.executors import ExecutorContract

REPO = Path(__file__).resolve().parents[2]

THIRD_PARTY_TESTS = '''
import uuid

import pytest

import kachery_tasks
from kachery_tasks.runtime.executors import LocalExecutor
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.testing.buckets import BucketContract
from kachery_tasks.testing.executors import ExecutorContract

kachery_tasks.register_bucket("mem", "tests.storage.buckets.memory:MemoryBucket")


class TestMemoryBucket(BucketContract):
    @pytest.fixture
    def bucket(self):
        return open_bucket(f"mem://{uuid.uuid4().hex}")


class TestLocalExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self):
        return LocalExecutor()


class TestForgotTheFixture(BucketContract):
    pass
'''


def _run_elsewhere(tmp_path: Path) -> dict[str, list[ET.Element]]:
    """Run THIRD_PARTY_TESTS with pytest in a directory of its own: test cases by class."""
    where = tmp_path / "third-party"
    where.mkdir()
    (where / "pytest.ini").write_text("[pytest]\n")
    (where / "test_third_party.py").write_text(THIRD_PARTY_TESTS)
    not_a_dir = tmp_path / "not-a-node-dir"
    not_a_dir.write_text("a file: a test that used it as a node directory would fail\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "KACHERY_TASKS_DIR": str(not_a_dir),  # the executor suite must set its own
        "KACHERY_TASKS_BUCKET": "nosuch://bucket",  # and unset this
    }
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "test_third_party.py"],
        cwd=where, env=env, capture_output=True, text=True, timeout=600,
    )
    assert report.exists(), proc.stdout + proc.stderr
    cases: dict[str, list[ET.Element]] = {}
    for case in ET.parse(report).iter("testcase"):
        cases.setdefault(case.get("classname").rsplit(".", 1)[-1], []).append(case)
    return cases


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def _test_methods(cls: type) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls) if name.startswith("test_")]


def test_the_contract_suites_run_without_our_conftest(tmp_path):
    cases = _run_elsewhere(tmp_path)
    bucket, executor, forgot = (
        cases["TestMemoryBucket"], cases["TestLocalExecutor"], cases["TestForgotTheFixture"])
    details = {name: [(c.get("name"), _outcome(c)) for c in cs] for name, cs in cases.items()}
    assert {_outcome(c) for c in bucket} == {"passed"}, details
    assert {_outcome(c) for c in executor} == {"passed"}, details
    assert {c.get("name").split("[")[0] for c in bucket} == set(_test_methods(BucketContract))
    assert sorted(c.get("name") for c in executor) == sorted(_test_methods(ExecutorContract))
    # A subclass without the fixture is told what it lacks, in every test of the suite.
    assert len(forgot) == len(bucket)
    for case in forgot:
        assert "TestForgotTheFixture must define a 'bucket' fixture" in ET.tostring(
            case, encoding="unicode")
